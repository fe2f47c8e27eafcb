"""unCLIP's image conditioning: CLIP image embeddings, noise-augmented, as the network's "y" vector
(Stable unCLIP 2.1) or in place of SDXL's pooled text (SDXL "ReVision"), as ComfyUI computes it
(comfy/model_base.py unclip_adm, CLIPEmbeddingNoiseAugmentation of comfy/ldm).

Each unit is (image_embeds (B, D), strength, noise_augmentation). Every image of every unit is noised
on its own: the level is round(999 * noise_augmentation) on the 1000-step "squaredcos_cap_v2"
schedule (Nichol & Dhariwal's cosine: alpha_bar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2, betas
capped at 0.999), z = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) noise, and becomes
[z, timestep_embedding(level, D)] x strength. The embedding statistics ComfyUI normalises by are
zeros and ones (it loads none), so x is the embedding as it is. With more than one image in all,
their vectors are summed and the sum's first D values noised again at the `merge` level.

The noise is what ComfyUI draws on the CPU: for each image, randn of (1, D) right after
torch.manual_seed(seed); for the merge, the next draw of that generator (seed: the sampler's seed
minus 10).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..models.unet import timestep_embedding

MAX_NOISE_LEVEL = 1000


@lru_cache(maxsize=1)
def noise_schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) per level, float32 from float64 arithmetic."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    n = MAX_NOISE_LEVEL
    betas = np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)])
    alphas_cumprod = np.cumprod(1.0 - betas)
    return (torch.tensor(np.sqrt(alphas_cumprod), dtype=torch.float32),
            torch.tensor(np.sqrt(1.0 - alphas_cumprod), dtype=torch.float32))


def noise_level(augmentation: float) -> int:
    return round((MAX_NOISE_LEVEL - 1) * augmentation)


def augment(embed: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
    """[noised embed, the level's embedding]: (1, D) -> (1, 2D)."""
    keep, add = noise_schedule()
    z = keep[level] * embed + add[level] * noise.to(embed)
    return torch.cat([z, timestep_embedding(torch.tensor([level]), embed.shape[-1]).to(embed)], dim=1)


def unclip_vector(units: list[tuple[torch.Tensor, float, float]], seed: int, merge: float) -> torch.Tensor:
    """The (1, 2D) vector of `units`, each (image_embeds (B, D), strength, noise_augmentation)."""
    generator = torch.Generator()
    parts = []
    for embeds, strength, augmentation in units:
        for embed in embeds.float().reshape(-1, embeds.shape[-1]):
            generator.manual_seed(seed)
            noise = torch.randn((1, embed.shape[-1]), generator=generator)
            parts.append(augment(embed[None], noise_level(augmentation), noise) * strength)
    if len(parts) == 1:
        return parts[0]
    total = torch.stack(parts).sum(0)
    width = total.shape[1] // 2
    noise = torch.randn((1, width), generator=generator)
    return augment(total[:, :width], noise_level(merge), noise)
