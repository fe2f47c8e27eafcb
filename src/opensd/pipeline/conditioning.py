"""Prompts -> the tensors the UNet is conditioned on, for every family."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.config import ModelConfig
from ..models.stable_diffusion import StableDiffusion
from ..models.unet import timestep_embedding
from ..text.tokenizer import CLIPTokenizer


@dataclass
class Conditioning:
    context: torch.Tensor              # (B, T, context_dim) cross-attention input
    pooled: torch.Tensor | None = None  # (B, P) SDXL's pooled text vector

    def cat(self, other: "Conditioning") -> "Conditioning":
        pooled = None if self.pooled is None else torch.cat([self.pooled, other.pooled])
        return Conditioning(torch.cat([self.context, other.context]), pooled)


@torch.no_grad()
def encode_prompts(model: StableDiffusion, tokenizer: CLIPTokenizer, prompts: list[str],
                   device: torch.device) -> Conditioning:
    hidden, pooled = [], None
    for enc, cfg in zip(model.text_encoders, model.config.text_encoders):
        ids = tokenizer(prompts, max_length=cfg.max_length, pad_token=cfg.pad_token).to(device)
        out = enc(ids)
        hidden.append(out.hidden)
        if cfg.pooled:
            pooled = out.pooled
    return Conditioning(torch.cat(hidden, dim=-1), pooled)


def size_vector(cfg: ModelConfig, pooled: torch.Tensor, width: int, height: int,
                aesthetic_score: float = 6.0) -> torch.Tensor:
    """SDXL's "y": pooled text + 256-d Fourier embeddings of original size, crop and target size
    (base) or original size, crop and aesthetic score (refiner)."""
    if cfg.family == "sdxl_refiner":
        ids = [height, width, 0, 0, aesthetic_score]
    else:
        ids = [height, width, 0, 0, height, width]
    per_value = (cfg.unet.adm_in_channels - pooled.shape[1]) // len(ids)
    emb = timestep_embedding(torch.tensor(ids, dtype=torch.float32), per_value).reshape(1, -1)
    return torch.cat([pooled.float(), emb.to(pooled.device).expand(len(pooled), -1)], dim=1)
