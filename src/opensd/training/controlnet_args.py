"""The flags of ControlNet training, shared by `opensd train-controlnet` and
`python -m opensd.training.controlnet_train`; no torch here, so building the `opensd` parser stays fast."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..library.models_dir import BUILTIN_CHECKPOINT

# Timestep sampling: "cubic" draws t = (1 - u^3) * T, favouring high noise, where an image's layout is
# decided (T2I-Adapter's non-uniform sampling); "uniform" is the usual diffusion choice.
T_SAMPLING = ("cubic", "uniform")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", type=Path, default=BUILTIN_CHECKPOINT, help="base model (default: the built-in model)")
    p.add_argument("--data", type=Path, default=Path("data/emoji"),
                   help="with --conditioning-dir: your images (and .txt captions); else the emoji dataset folder")
    p.add_argument("--conditioning-dir", "--conditioning-data-dir", dest="conditioning_dir", type=Path,
                   help="control images with the same names as the images in --data (trains on your triples)")
    p.add_argument("--resolution", type=int, help="with --conditioning-dir: training size (default: the model's)")
    p.add_argument("--caption", default="", help="with --conditioning-dir: caption for images without a .txt")
    p.add_argument("--run", "--run-dir", dest="run", type=Path, default=Path("runs/controlnet"),
                   help="run folder (resumable); under torchrun spell it --run-dir (torchrun takes --run for its own)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--t-sampling", choices=T_SAMPLING, default="cubic")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--until", type=int, default=None, help="stop at this step (resume later)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="export path (default: RUN/controlnet-canny.safetensors)")
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--no-progress", action="store_true")
