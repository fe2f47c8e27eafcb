"""Golden image: the shipped built-in model, one fixed prompt, seed and step count, against a stored
64x64 PNG. Any change to what a user's first `opensd generate` computes (sampler, schedule, noise,
text encoder, guidance, UNet, VAE or its scaling) shows up here as changed pixels.

Tolerance, measured (values of 0..255): run to run on one machine the image is identical. Other
kernels, stood in for on an AVX512 box by ATEN_CPU_CAPABILITY=avx2 or default, ONEDNN_MAX_CPU_ISA=
AVX2 or SSE41, oneDNN convolutions off, or 2 threads instead of 1: at most 1 level in 1 or 2 of the
12288 values (mean 0.0001). Small real changes move far more: the VAE scaling factor off by 1%
mean 0.27 (max 3), every Euler step 1% short mean 0.48 (max 9), the "normal" schedule ending at
timestep 1 instead of 0 mean 0.12 (max 3); the Karras schedule for Euler mean 1.4 (max 38); the
penultimate CLIP layer mean 22; noise from seed + 1 mean 8. So the bounds are mean < 0.1 (1000x the
kernel drift) and max < 8 (8x it).

After an intended change, regenerate the reference (and say why in the commit):
    python tests/test_golden_builtin.py --write
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.pipeline.pipeline import load

GOLDEN = Path(__file__).parent / "golden" / "builtin-cat-face-seed1-12steps.png"
PROMPT, SEED, STEPS, CFG = "cat face", 1, 12, 7.0
MEAN_LIMIT, MAX_LIMIT = 0.1, 8  # of 255


def generate() -> Image.Image:
    """fp32 on one CPU thread: the most reproducible setting across machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = load(BUILTIN_CHECKPOINT, device="cpu", precision="fp32")
        return pipe.txt2img(PROMPT, seed=SEED, steps=STEPS, cfg=CFG)[0]
    finally:
        torch.set_num_threads(threads)


def test_builtin_model_reproduces_its_golden_image():
    got = np.asarray(generate().convert("RGB"), dtype=np.float64)
    want = np.asarray(Image.open(GOLDEN).convert("RGB"), dtype=np.float64)
    assert got.shape == want.shape == (64, 64, 3)
    diff = np.abs(got - want)
    assert diff.mean() < MEAN_LIMIT and diff.max() < MAX_LIMIT, (
        f"mean abs diff {diff.mean():.3f}, max {diff.max():.0f} (of 255) against {GOLDEN.name}; "
        "if the change is intended, regenerate it: python tests/test_golden_builtin.py --write")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_golden_builtin.py --write")
    GOLDEN.parent.mkdir(exist_ok=True)
    generate().save(GOLDEN, optimize=True)
    print(f"wrote {GOLDEN}")
