"""Chroma: Flux.1's network (models/flux.py) whose blocks take their adaLN modulation from one
approximator instead of computing it.

Keys as released (chroma-unlocked-v*, Chroma1-HD, ComfyUI's naming): Flux's `img_in`, `txt_in`,
`double_blocks.*`, `single_blocks.*` without `*_mod.lin` / `modulation.lin`, `final_layer.linear`
without `adaLN_modulation`, and `distilled_guidance_layer.{in_proj, layers.N.{in_layer,out_layer},
norms.N.scale, out_proj}`.

The approximator reads, per modulation vector, [embed(t), embed(guidance = 0), embed(index)] and
maps it through in_proj, residual RMS-normed SiLU MLPs and out_proj to one hidden-wide vector. The
vectors are laid out single blocks first (3 each: shift, scale, gate), then the double blocks'
image modulations (6 each), their text modulations (6 each), then the final layer's shift and scale.
"""
from __future__ import annotations

import torch
from torch import nn

from .config_dit import ChromaConfig
from .flux import TIME_FACTOR, Flux, MLPEmbedder
from .norms import RMSNorm
from .unet import timestep_embedding


class Approximator(nn.Module):
    def __init__(self, cfg: ChromaConfig):
        super().__init__()
        width = cfg.approximator_hidden
        self.in_proj = nn.Linear(cfg.approximator_in_dim, width)
        self.layers = nn.ModuleList(MLPEmbedder(width, width) for _ in range(cfg.approximator_layers))
        self.norms = nn.ModuleList(RMSNorm(width, param="scale") for _ in range(cfg.approximator_layers))
        self.out_proj = nn.Linear(width, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        for layer, norm in zip(self.layers, self.norms):
            x = x + layer(norm(x))
        return self.out_proj(x)


def approximator_input(t: torch.Tensor, cfg: ChromaConfig, dtype: torch.dtype) -> torch.Tensor:
    """(B, mod_vectors, in_dim): each vector's time, guidance (0) and index features."""
    quarter, n = cfg.approximator_in_dim // 4, cfg.mod_vectors
    time = timestep_embedding(t * TIME_FACTOR, quarter)
    guidance = timestep_embedding(torch.zeros_like(t), quarter)
    index = timestep_embedding(torch.arange(n, device=t.device) * TIME_FACTOR, 2 * quarter)
    shared = torch.cat((time, guidance), dim=-1)[:, None].expand(-1, n, -1)
    return torch.cat((shared, index[None].expand(len(t), -1, -1)), dim=-1).to(dtype)


class Chroma(Flux):
    def __init__(self, cfg: ChromaConfig):
        super().__init__(cfg)
        self.distilled_guidance_layer = Approximator(cfg)

    def modulations(self, timesteps: torch.Tensor, dtype: torch.dtype):
        """mods(kind, i) over the approximator's vectors for timesteps t (B,) in [0, 1]."""
        vectors = self.distilled_guidance_layer(approximator_input(timesteps, self.cfg, dtype)).unbind(1)
        singles, doubles = 3 * self.cfg.depth_single_blocks, 6 * self.cfg.depth

        def mods(kind: str, i: int):
            if kind == "single":
                return vectors[3 * i:3 * i + 3]
            if kind == "double":
                img = singles + 6 * i
                return vectors[img:img + 6], vectors[img + doubles:img + doubles + 6]
            return vectors[-2:]

        return mods

    def forward_tokens(self, img, img_ids, txt, txt_ids, timesteps, y=None, guidance=None, control=None, mask=None):
        """Flux.forward_tokens' signature; the pooled text `y` and `guidance` are not inputs of Chroma."""
        img = self.img_in(img)
        return self.run_blocks(img, img_ids, txt, txt_ids, self.modulations(timesteps, img.dtype), control, mask)
