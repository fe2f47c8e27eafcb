"""Build the reference (diffusers) counterparts of our configs. Test-only: src/ never imports this."""
from __future__ import annotations

import torch

from opensd.models.config import UNetConfig


def diffusers_unet_kwargs(cfg: UNetConfig, sample_size: int = 8) -> dict:
    channels = [cfg.model_channels * m for m in cfg.channel_mult]
    # diffusers' "attention_head_dim" is a head COUNT for SD1 (a historical misnomer), so give
    # per-level head counts explicitly for both conventions.
    heads = [cfg.heads_for(c) for c in channels]
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in cfg.transformer_depth]
    up = ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(cfg.transformer_depth)]
    kw = dict(
        sample_size=sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(channels),
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        cross_attention_dim=cfg.context_dim,
        attention_head_dim=tuple(heads),
        use_linear_projection=cfg.use_linear_in_transformer,
        transformer_layers_per_block=_layers_per_block(cfg),
        norm_num_groups=32,
    )
    if cfg.adm_in_channels:
        kw.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=cfg.adm_in_channels)
    return kw


def _layers_per_block(cfg: UNetConfig) -> tuple[int, ...]:
    # diffusers takes the middle block's depth from the last level's entry.
    layers = [max(d, 1) for d in cfg.transformer_depth]
    if cfg.transformer_depth[-1] == 0:
        layers[-1] = cfg.transformer_depth_middle
    assert layers[-1] == cfg.transformer_depth_middle, "diffusers cannot express this middle depth"
    return tuple(layers)


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Give every parameter random values, so a wrong mapping cannot hide behind default inits.

    Norm scales sit near 1 and query/key weights are larger: with everything tiny the softmax is
    nearly flat and a swapped q/k would go unnoticed.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * noise)
            elif any(part in name for part in ("to_q", "to_k", "q_proj", "k_proj")):
                p.copy_(0.3 * noise)
            else:
                p.copy_(std * noise)
    return module


def assert_close_scaled(ours: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    scale = ref.abs().max().item()
    diff = (ours.float() - ref.float()).abs().max().item()
    assert diff <= rel * max(scale, 1e-6), f"max abs diff {diff:.3e} vs output scale {scale:.3e}"


@torch.no_grad()
def assert_vae_matches(ours, ref, size: int, rel: float = 1e-5) -> None:
    """Our AutoencoderKL against a diffusers VAE: posterior mean and log-variance of random images,
    and the decode of a random latent, each within `rel` of the reference's output scale."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, size, size, generator=g) * 2 - 1
    side = size // ours.cfg.downscale
    z = torch.randn(2, ours.cfg.embed_dim, side, side, generator=g)
    post = ref.encode(x).latent_dist
    mean, logvar = ours.encode(x)
    assert mean.shape == (2, ours.cfg.embed_dim, side, side)
    assert_close_scaled(mean, post.mean, rel)
    assert_close_scaled(logvar, post.logvar, rel)
    assert_close_scaled(ours.decode(z), ref.decode(z).sample, rel)
