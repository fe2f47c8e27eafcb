"""Our UNet equals diffusers' UNet2DConditionModel on the same random weights, through both key paths."""
from dataclasses import replace

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from opensd.checkpoints.keymap_unet import unet_from_diffusers, unet_to_diffusers
from opensd.models import config as C
from opensd.models.unet import UNetModel, timestep_embedding
from reference import assert_close_scaled, diffusers_unet_kwargs, randomize_

TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, context_dim=48)
CONFIGS = {
    # SD1: conv proj_in/out, fixed head count.
    "sd1": C.UNetConfig(**TINY, transformer_depth=(1, 1), num_heads=2, num_head_channels=-1),
    # SD2: linear proj_in/out, fixed head width.
    "sd2": C.UNetConfig(**TINY, transformer_depth=(1, 0), num_head_channels=16,
                        use_linear_in_transformer=True),
    # SDXL: no attention at level 0, deeper transformers, pooled-text/size "y" vector.
    "sdxl": replace(C.UNetConfig(**TINY, transformer_depth=(0, 2), transformer_depth_middle=2,
                                 num_head_channels=16, use_linear_in_transformer=True,
                                 adm_in_channels=40 + 6 * 256), num_res_blocks=2),
    "inpaint": C.UNetConfig(**TINY, in_channels=9, transformer_depth=(1, 1), num_heads=2,
                            num_head_channels=-1),
}


def _inputs(cfg, size=16, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    t = torch.tensor([999, 17])[:batch]
    ctx = torch.randn(batch, 7, cfg.context_dim, generator=g)
    pooled = torch.randn(batch, 40, generator=g)
    time_ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024], [768, 512, 32, 16, 512, 768]])[:batch].float()
    return x, t, ctx, pooled, time_ids


def _reference(name):
    cfg = CONFIGS[name]
    ref = randomize_(UNet2DConditionModel(**diffusers_unet_kwargs(cfg)), seed=3).eval()
    return cfg, ref


def _run_ref(ref, cfg, x, t, ctx, pooled, time_ids):
    extra = {}
    if cfg.adm_in_channels:
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        return ref(x, t, ctx, **extra).sample


def _run_ours(ours, cfg, x, t, ctx, pooled, time_ids):
    y = None
    if cfg.adm_in_channels:
        y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(len(x), -1)], dim=1)
    with torch.no_grad():
        return ours(x, t, ctx, y)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers_through_our_key_map(name):
    cfg, ref = _reference(name)
    ours = UNetModel(cfg).eval()
    ours.load_state_dict(unet_from_diffusers(ref.state_dict(), cfg), strict=True)
    inputs = _inputs(cfg)
    assert_close_scaled(_run_ours(ours, cfg, *inputs), _run_ref(ref, cfg, *inputs))


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_original_layout_is_what_diffusers_single_file_loader_reads(name):
    """Our attribute names, prefixed as in a real file, go through diffusers' own converter."""
    cfg, ref = _reference(name)
    ours = randomize_(UNetModel(cfg), seed=5).eval()
    original = {f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}
    converted = convert_ldm_unet_checkpoint(original, dict(ref.config))
    ref.load_state_dict(converted, strict=True)
    inputs = _inputs(cfg, size=24)
    assert_close_scaled(_run_ours(ours, cfg, *inputs), _run_ref(ref, cfg, *inputs))


def test_odd_latent_size_keeps_skip_shapes_aligned():
    cfg = CONFIGS["sd1"]
    ours = UNetModel(replace(cfg, channel_mult=(1, 1, 2), transformer_depth=(1, 0, 1))).eval()
    x = torch.randn(1, 4, 15, 13)  # not a multiple of 2**levels
    with torch.no_grad():
        out = ours(x, torch.tensor([10]), torch.randn(1, 5, cfg.context_dim))
    assert out.shape == x.shape


def test_sdxl_unet_without_y_is_refused():
    cfg = CONFIGS["sdxl"]
    x, t, ctx, *_ = _inputs(cfg)
    with pytest.raises(ValueError, match="'y'"):
        UNetModel(cfg)(x, t, ctx)


@pytest.mark.parametrize("name,cfg", [("sd1", C.SD1_UNET), ("sd2", C.SD2_UNET), ("sdxl", C.SDXL_UNET),
                                      ("refiner", C.SDXL_REFINER_UNET),
                                      ("sd1-inpaint", replace(C.SD1_UNET, in_channels=9))])
def test_full_size_key_map_on_meta(name, cfg):
    with torch.device("meta"):
        ref = UNet2DConditionModel(**diffusers_unet_kwargs(cfg, sample_size=64))
        ours = UNetModel(cfg)
    mapped = unet_from_diffusers(ref.state_dict(), cfg)
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    assert unet_to_diffusers(mapped, cfg).keys() == ref.state_dict().keys()
