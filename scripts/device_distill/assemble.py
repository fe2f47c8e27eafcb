"""unet.safetensors (the GPU run's student UNet) + the shipped teacher's text encoder and VAE -> one
built-in file, as `python -m opensd.training.builtin --out` would have written on the GPU machine."""
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

TEACHER = "runs/v1/opensd-emoji-v1.safetensors"  # v1: its text encoder and VAE are the student's
unet, out = Path(sys.argv[1]), Path(sys.argv[2])
with safe_open(unet, "pt") as f:
    meta = dict(f.metadata())
    sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
with safe_open(TEACHER, "pt") as f:
    sd |= {k: f.get_tensor(k) for k in f.keys() if not k.startswith("model.diffusion_model.")}  # noqa: SIM118 (safe_open is not iterable)
for key in ("opensd.distilled_from", "opensd.unet_init_from"):
    if key in meta:
        meta[key] = "opensd-emoji.safetensors (v1)"
out.parent.mkdir(parents=True, exist_ok=True)
save_file(sd, out, metadata=meta)
print(out, len(sd), "tensors")
