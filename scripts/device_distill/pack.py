"""Export the EMA student and return only its UNet (fp16, ~12 MB: under the 16 MB per returned file);
scripts/device_distill/assemble.py puts it back together with the real teacher's text encoder and VAE."""
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from opensd.training.builtin import export_from_runs

runs, out = Path(sys.argv[1]), Path(sys.argv[2])
full = export_from_runs(runs, Path("/tmp/student-full.safetensors"))
with safe_open(full, "pt") as f:
    meta = f.metadata()
    sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}  # noqa: SIM118 (safe_open is not iterable)
save_file(sd, out / "unet.safetensors", metadata=meta)
state = torch.load(runs / "unet" / "state.pt", map_location="cpu", weights_only=True)
losses = state.get("losses") or []
info = {"step": state["step"], "planned": state["config"]["steps"], "meta": meta,
        "loss_per_500": [sum(losses[i:i + 500]) / len(losses[i:i + 500]) for i in range(0, len(losses), 500)]}
(out / "info.json").write_text(json.dumps(info, indent=1))
if (runs / "unet" / "plan.json").is_file():
    (out / "plan.json").write_text((runs / "unet" / "plan.json").read_text())
print("packed", state["step"], "steps")
