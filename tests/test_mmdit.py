"""Our MMDiT equals diffusers' SD3Transformer2DModel on tiny random configs of SD3 (no QK norm),
SD3.5 Large (RMS QK norm) and SD3.5 Medium (QK norm + image-only attention in the first blocks):
loaded through our diffusers key map, and loaded by diffusers from our state dict through its own
single-file converter (which proves our names are the original file's). The released sizes are
built on the meta device and map key for key."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import SD3Transformer2DModel
from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

import opensd.models.mmdit as mmdit_mod
from opensd.checkpoints.keymap_mmdit import mmdit_from_diffusers, mmdit_to_diffusers
from opensd.errors import InvalidArgument
from opensd.models.attention import attention
from opensd.models.config_dit import SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM, MMDiTConfig
from opensd.models.mmdit import MMDiT
from reference import assert_close_scaled, randomize_

SD3 = MMDiTConfig(depth=3, num_heads=2, head_dim=16, adm_in_channels=24, context_dim=40, pos_embed_max_size=8)
VARIANTS = {
    "sd3": SD3,
    "sd35_large": replace(SD3, qk_norm=True),
    "sd35_medium": replace(SD3, qk_norm=True, x_block_self_attn_layers=(0, 1)),
}


def _diffusers_kwargs(cfg: MMDiTConfig) -> dict:
    return dict(sample_size=16, patch_size=cfg.patch_size, in_channels=cfg.in_channels, num_layers=cfg.depth,
                attention_head_dim=cfg.head_dim, num_attention_heads=cfg.num_heads,
                joint_attention_dim=cfg.context_dim, caption_projection_dim=cfg.hidden_size,
                pooled_projection_dim=cfg.adm_in_channels, out_channels=cfg.out_channels,
                pos_embed_max_size=cfg.pos_embed_max_size, dual_attention_layers=cfg.x_block_self_attn_layers,
                qk_norm="rms_norm" if cfg.qk_norm else None)


def _reference(cfg: MMDiTConfig, seed: int) -> SD3Transformer2DModel:
    ref = randomize_(SD3Transformer2DModel(**_diffusers_kwargs(cfg)), seed=seed, std=0.1)
    with torch.no_grad():  # a random table, so a wrong crop cannot hide in a smooth sin-cos one
        ref.pos_embed.pos_embed.copy_(torch.randn(ref.pos_embed.pos_embed.shape,
                                                  generator=torch.Generator().manual_seed(seed)))
    return ref.eval()


def _inputs(cfg: MMDiTConfig, h: int = 12, w: int = 10):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(2, cfg.in_channels, h, w, generator=g), torch.tensor([700.0, 35.0]),
            torch.randn(2, 7, cfg.context_dim, generator=g), torch.randn(2, cfg.adm_in_channels, generator=g))


@torch.no_grad()
def _compare(ours: MMDiT, ref: SD3Transformer2DModel, cfg: MMDiTConfig) -> None:
    x, t, ctx, y = _inputs(cfg)
    want = ref(hidden_states=x, encoder_hidden_states=ctx, pooled_projections=y, timestep=t).sample
    assert_close_scaled(ours(x, t, ctx, y), want, 1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_diffusers_via_keymap(variant):
    cfg = VARIANTS[variant]
    ref = _reference(cfg, seed=1)
    ours = MMDiT(cfg).eval()
    ours.load_state_dict(mmdit_from_diffusers(ref.state_dict(), cfg), strict=True)
    _compare(ours, ref, cfg)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_diffusers_loading_our_state_dict_as_an_original_file(variant):
    cfg = VARIANTS[variant]
    ours = randomize_(MMDiT(cfg), seed=2, std=0.1).eval()
    with torch.no_grad():
        ours.pos_embed.normal_(generator=torch.Generator().manual_seed(2))
    original = {f"model.diffusion_model.{k}": v.clone() for k, v in ours.state_dict().items()}
    ref = SD3Transformer2DModel(**_diffusers_kwargs(cfg)).eval()
    ref.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(original), strict=True)
    _compare(ours, ref, cfg)


def test_keymap_round_trip_and_unknown_keys():
    cfg = VARIANTS["sd35_medium"]
    sd = _reference(cfg, seed=3).state_dict()
    back = mmdit_to_diffusers(mmdit_from_diffusers(sd, cfg), cfg)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(KeyError, match="transformer_blocks.0.bogus.weight"):
        mmdit_from_diffusers({**sd, "transformer_blocks.0.bogus.weight": torch.zeros(1)}, cfg)
    partial = {k: v for k, v in sd.items() if k != "transformer_blocks.1.attn.to_k.weight"}
    with pytest.raises(KeyError, match="attn.qkv.weight needs transformer_blocks.1.attn.to_k.weight"):
        mmdit_from_diffusers(partial, cfg)


def test_every_attention_goes_through_the_seam(monkeypatch):
    cfg = VARIANTS["sd35_medium"]
    ref = _reference(cfg, seed=4)
    ours = MMDiT(cfg).eval()
    ours.load_state_dict(mmdit_from_diffusers(ref.state_dict(), cfg))
    calls = []

    def spy(q, k, v, heads, mask=None, scale=None):
        calls.append(q.shape[1])
        return attention(q, k, v, heads, mask, scale)

    monkeypatch.setattr(mmdit_mod, "attention", spy)
    _compare(ours, ref, cfg)
    # joint attention over 7 text + 6*5 image tokens in each of 3 blocks, image-only in blocks 0 and 1
    assert sorted(calls) == [30, 30, 37, 37, 37]


def test_sizes_beyond_the_position_table_or_off_the_patch_grid_are_refused():
    ours = MMDiT(SD3).eval()
    with torch.no_grad(), pytest.raises(InvalidArgument, match="size: at most 16 latent pixels a side"):
        ours(*_inputs(SD3, h=18, w=10))
    with torch.no_grad(), pytest.raises(InvalidArgument, match="multiples of 2"):
        ours(*_inputs(SD3, h=11, w=10))


# Tensors in the file, the position table included: the published 2.5 B and 8.1 B.
@pytest.mark.parametrize("cfg,billions", [(SD3_MEDIUM, 2.085), (SD35_MEDIUM, 2.470), (SD35_LARGE, 8.146)])
def test_released_sizes_on_meta(cfg, billions):
    with torch.device("meta"):
        ours = MMDiT(cfg)
        ref = SD3Transformer2DModel(**{**_diffusers_kwargs(cfg), "sample_size": 128})
    got = {k: tuple(v.shape) for k, v in mmdit_from_diffusers(ref.state_dict(), cfg).items()}
    assert got == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    n = sum(t.numel() for t in ours.state_dict().values())
    assert abs(n / 1e9 - billions) < 0.001, n
