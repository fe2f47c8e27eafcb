"""Random-weight checkpoints in the real single-file layout, for tests, benchmarks and the quick
start until the built-in model ships. They produce noise images, by design."""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints import detect as D
from ..checkpoints.files import save_safetensors
from ..models import config as C
from ..models.stable_diffusion import StableDiffusion

TINY = C.ModelConfig(
    family="small",
    unet=C.UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(1, 1),
                      transformer_depth_middle=1, context_dim=64),
    vae=C.VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
    text_encoders=(C.TextEncoderConfig(width=64, layers=2, heads=1),),
    resolution=64,
)


@torch.no_grad()
def random_state_dict(cfg: C.ModelConfig = TINY, seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """Every tensor of an original-layout checkpoint for `cfg`, filled with seeded random values."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in StableDiffusion(cfg).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(s, generator=g) * std for k, s in shapes.items()}
    for k, v in sd.items():  # norms near 1 keep activations alive through deep stacks
        if k.endswith(".weight") and v.ndim == 1:
            v.add_(1.0)
    return sd


def write_random_checkpoint(path, cfg: C.ModelConfig = TINY, seed: int = 0,
                            dtype: torch.dtype = torch.float16) -> Path:
    path = Path(path)
    sd = {k: v.to(dtype) for k, v in random_state_dict(cfg, seed).items()}
    meta = D.metadata_for(cfg) | {"opensd.note": "random weights: a test model that generates noise"}
    save_safetensors(sd, path, metadata=meta)
    return path
