"""Our Flux equals diffusers' FluxTransformer2DModel on tiny random configs (dev with guidance,
schnell without), loaded through our diffusers key map: on latents packed and unpacked by diffusers'
FluxPipeline helpers, and on tokens with arbitrary 3-axis RoPE ids. Full-size dev and schnell build
on meta, map key for key, and diffusers' own BFL converter accepts our state dict."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

import opensd.models.flux as flux_mod
from opensd.checkpoints.keymap_flux import flux_from_diffusers, flux_to_diffusers
from opensd.errors import InvalidArgument
from opensd.models.attention import attention
from opensd.models.config_dit import FLUX_DEV, FLUX_SCHNELL, FluxConfig
from opensd.models.flux import Flux
from reference import assert_close_scaled, randomize_

DEV = FluxConfig(vec_in_dim=24, context_in_dim=40, hidden_size=32, num_heads=2, depth=2, depth_single_blocks=2,
                 axes_dim=(4, 6, 6))
VARIANTS = {"dev": DEV, "schnell": replace(DEV, guidance_embed=False)}


def _diffusers_kwargs(cfg: FluxConfig) -> dict:
    return dict(patch_size=1, in_channels=cfg.in_channels, num_layers=cfg.depth,
                num_single_layers=cfg.depth_single_blocks, attention_head_dim=cfg.head_dim,
                num_attention_heads=cfg.num_heads, joint_attention_dim=cfg.context_in_dim,
                pooled_projection_dim=cfg.vec_in_dim, guidance_embeds=cfg.guidance_embed,
                axes_dims_rope=cfg.axes_dim)


def _pair(cfg: FluxConfig, seed: int):
    ref = randomize_(FluxTransformer2DModel(**_diffusers_kwargs(cfg)), seed=seed, std=0.1).eval()
    ours = Flux(cfg).eval()
    ours.load_state_dict(flux_from_diffusers(ref.state_dict(), cfg), strict=True)
    return ours, ref


def _conditioning(cfg: FluxConfig, text_len: int = 5):
    g = torch.Generator().manual_seed(11)
    guidance = torch.tensor([3.5, 1.0]) if cfg.guidance_embed else None
    return (torch.tensor([0.7, 0.05]), torch.randn(2, text_len, cfg.context_in_dim, generator=g),
            torch.randn(2, cfg.vec_in_dim, generator=g), guidance)


@pytest.mark.parametrize("variant", VARIANTS)
@torch.no_grad()
def test_matches_diffusers_on_latents(variant):
    cfg = VARIANTS[variant]
    ours, ref = _pair(cfg, seed=1)
    t, ctx, y, guidance = _conditioning(cfg)
    latents = torch.randn(2, 16, 8, 6, generator=torch.Generator().manual_seed(3))
    packed = FluxPipeline._pack_latents(latents, 2, 16, 8, 6)
    img_ids = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    out = ref(hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
              img_ids=img_ids, txt_ids=torch.zeros(5, 3), guidance=guidance).sample
    want = FluxPipeline._unpack_latents(out, 8 * 8, 6 * 8, 8)  # sizes in pixels, 8 per latent pixel
    assert_close_scaled(ours(latents, t, ctx, y, guidance), want, 1e-5)


@torch.no_grad()
def test_matches_diffusers_on_tokens_with_arbitrary_position_ids():
    # Kontext-style ids: every axis used, text ids not all zero.
    ours, ref = _pair(DEV, seed=2)
    t, ctx, y, guidance = _conditioning(DEV, text_len=6)
    g = torch.Generator().manual_seed(5)
    img = torch.randn(2, 10, DEV.in_channels, generator=g)
    img_ids, txt_ids = torch.randint(0, 40, (10, 3), generator=g), torch.randint(0, 3, (6, 3), generator=g)
    want = ref(hidden_states=img, encoder_hidden_states=ctx, pooled_projections=y, timestep=t,
               img_ids=img_ids.float(), txt_ids=txt_ids.float(), guidance=guidance).sample
    assert_close_scaled(ours.forward_tokens(img, img_ids, ctx, txt_ids, t, y, guidance), want, 1e-5)


def test_keymap_round_trip_and_unknown_keys():
    _, ref = _pair(DEV, seed=3)
    sd = ref.state_dict()
    back = flux_to_diffusers(flux_from_diffusers(sd, DEV), DEV)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    # a dev file read with schnell's table: the guidance embedder is a key schnell does not have
    with pytest.raises(KeyError, match="guidance_embedder"):
        flux_from_diffusers(sd, VARIANTS["schnell"])


def test_every_attention_goes_through_the_seam(monkeypatch):
    ours, ref = _pair(DEV, seed=4)
    calls = []

    def spy(q, k, v, heads, mask=None, scale=None):
        calls.append(q.shape[1])
        return attention(q, k, v, heads, mask, scale)

    monkeypatch.setattr(flux_mod, "attention", spy)
    t, ctx, y, guidance = _conditioning(DEV)
    with torch.no_grad():
        ours(torch.randn(2, 16, 4, 4), t, ctx, y, guidance)
    assert calls == [5 + 4] * 4  # 2 double + 2 single blocks over 5 text + 2x2 image tokens


def test_dev_without_guidance_leaves_the_embedding_out_and_odd_sizes_are_refused():
    """No guidance (ComfyUI's FluxDisableGuidance): the guidance embedding adds nothing, as if its
    output layer were zero."""
    ours = Flux(DEV).eval()
    t, ctx, y, _ = _conditioning(DEV)
    x = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        without = ours(x, t, ctx, y)
        assert not torch.allclose(without, ours(x, t, ctx, y, torch.ones(2)))
        for p in ours.guidance_in.out_layer.parameters():
            p.zero_()
        torch.testing.assert_close(ours(x, t, ctx, y, torch.full((2,), 3.5)), without)
    with torch.no_grad(), pytest.raises(InvalidArgument, match="size: latent sides must be even"):
        ours(torch.randn(2, 16, 5, 4), t, ctx, y, torch.ones(2))


@pytest.mark.parametrize("cfg", [FLUX_DEV, FLUX_SCHNELL])
def test_released_sizes_on_meta(cfg):
    with torch.device("meta"):
        ours = Flux(cfg)
        ref = FluxTransformer2DModel(**_diffusers_kwargs(cfg))
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in flux_from_diffusers(ref.state_dict(), cfg).items()} == shapes
    # diffusers' converter of BFL files reads our state dict as such a file
    converted = convert_flux_transformer_checkpoint_to_diffusers(dict(ours.state_dict()))
    assert {k: tuple(v.shape) for k, v in converted.items()} == want
    n = sum(p.numel() for p in ours.parameters())
    assert abs(n / 1e9 - (11.901 if cfg.guidance_embed else 11.891)) < 0.001, n
