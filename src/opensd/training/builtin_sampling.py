"""Helpers of the built-in model's training (opensd.training.builtin): tokenizing captions, DDIM
progress samples and image grids."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..models import config as C
from ..models.stable_diffusion import StableDiffusion
from ..models.unet import guidance_embedding
from ..sampling.schedules import scaled_linear_alphas_cumprod
from ..text.tokenizer import default_tokenizer


def tokenize(captions: list[str], cfg: C.TextEncoderConfig) -> torch.Tensor:
    return default_tokenizer()(list(captions), max_length=cfg.max_length, pad_token=cfg.pad_token)


@torch.no_grad()
def sample(model: StableDiffusion, prompts, steps: int = 20, cfg_scale: float = 5.0, seed: int = 0) -> torch.Tensor:
    """DDIM (eta 0) with classifier-free guidance, for progress grids; returns images in [-1, 1]."""
    model.eval()
    c = model.config
    te = c.text_encoders[0]
    dev = next(model.parameters()).device
    cond = model.cond_stage_model(tokenize(list(prompts), te).to(dev)).hidden
    guided = c.unet.guidance_embed  # guidance-distilled: one call on the prompt at the scale, no uncond
    if not guided:
        uncond = model.cond_stage_model(tokenize([""] * len(prompts), te).to(dev)).hidden
        ctx = torch.cat([uncond, cond])
    alphas = scaled_linear_alphas_cumprod().float()
    ts = torch.linspace(len(alphas) - 1, 0, steps).round().long()
    side = c.resolution // c.vae.downscale
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), c.latent_channels, side, side, generator=g).to(dev)
    for i, t in enumerate(ts):
        a = alphas[t]
        a_prev = alphas[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        if guided:
            y = guidance_embedding(torch.full((len(x),), cfg_scale, device=dev), c.unet.adm_in_channels)
            eps = model.unet(x, t.repeat(len(x)).to(dev), cond, y).float()
        else:
            eu, ec = model.unet(torch.cat([x, x]), t.repeat(2 * len(x)).to(dev), ctx).float().chunk(2)
            eps = eu + cfg_scale * (ec - eu)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return model.first_stage_model.decode(x / c.vae.scaling_factor).clamp(-1, 1)


def save_grid(images: torch.Tensor, path: Path, cols: int = 4) -> None:
    from PIL import Image
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
