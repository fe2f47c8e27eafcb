"""The released SD3/SD3.5 and Flux.1 layouts, built on the meta device with their real key names, are
detected from shapes alone (original single files with their encoders, the network alone as BFL and
ComfyUI ship it, diffusers' transformer files) and every key is consumed."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from opensd import families
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.families import what_else
from opensd.errors import CheckpointError
from opensd.checkpoints.keymap_flux import flux_to_diffusers
from opensd.checkpoints.keymap_mmdit import mmdit_to_diffusers
from opensd.models import config_dit as C
from opensd.models.config import TextEncoderConfig
from opensd.models.dit_models import FluxModel, SD3Model

CLIP_L = TextEncoderConfig(projection_dim=768, skip=2, final_norm=False, pooled=True)
CLIP_G = TextEncoderConfig(width=1280, layers=32, heads=20, act="gelu", projection_dim=1280, skip=2,
                           final_norm=False, pad_token=0, pooled=True)
SD3 = {
    "sd3_medium": C.SD3ModelConfig(C.SD3_MEDIUM, C.SD3_VAE, CLIP_L, CLIP_G, C.T5_XXL),
    "sd3.5_large": C.SD3ModelConfig(C.SD35_LARGE, C.SD3_VAE, CLIP_L, CLIP_G, C.T5_XXL),
    "sd3.5_medium": C.SD3ModelConfig(C.SD35_MEDIUM, C.SD3_VAE, CLIP_L, CLIP_G, C.T5_XXL),
}
FLUX_CLIP_L = replace(CLIP_L, projection_dim=0)


def _meta(module) -> dict[str, torch.Tensor]:
    return dict(module.state_dict())


def _shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _consumed(family, cfg, sd) -> None:
    """Every key of the file is a key of the model the family builds, and the other way round."""
    with torch.device("meta"):
        expected = family.build(cfg).state_dict()
    got = family.canonical(sd, cfg)
    assert set(got) == set(expected)
    assert all(tuple(got[k].shape) == tuple(v.shape) for k, v in expected.items())


@pytest.mark.parametrize("name", SD3)
def test_sd3_single_files_with_their_encoders(name):
    cfg = SD3[name]
    with torch.device("meta"):
        sd = _meta(SD3Model(cfg))
    family, found = families.detect(_shapes(sd), {}, name)
    assert family.name == "sd3" and found == cfg
    _consumed(family, found, sd)


@pytest.mark.parametrize("name", SD3)
def test_sd3_network_alone_bare_or_prefixed_or_in_diffusers_naming(name):
    cfg = SD3[name]
    with torch.device("meta"):
        net = _meta(SD3Model(cfg).network)
    for sd in (net, {DD.NET + k: v for k, v in net.items()}, mmdit_to_diffusers(net, cfg.mmdit)):
        family, found = families.detect(_shapes(sd), {}, name)
        assert family.name == "sd3" and found.mmdit == cfg.mmdit
        assert (found.clip_l, found.clip_g, found.t5) == (None, None, None)
        assert set(family.canonical(sd, found)) == {DD.NET + k for k in net}


@pytest.mark.parametrize("variant,flux", [("dev", C.FLUX_DEV), ("schnell", C.FLUX_SCHNELL)])
def test_flux_in_bfl_comfyui_and_diffusers_layouts(variant, flux):
    cfg = C.FluxModelConfig(flux, C.FLUX_VAE, FLUX_CLIP_L, C.T5_XXL)
    with torch.device("meta"):
        whole = _meta(FluxModel(cfg))
    net = {k[len(DD.NET):]: v for k, v in whole.items() if k.startswith(DD.NET)}
    family, found = families.detect(_shapes(whole), {}, "flux1-" + variant)  # ComfyUI's whole checkpoint
    assert family.name == "flux" and found == cfg
    _consumed(family, found, whole)
    for sd in (net, flux_to_diffusers(net, flux)):  # BFL's flux1-dev.safetensors; diffusers' transformer
        family, found = families.detect(_shapes(sd), {}, "flux1-" + variant)
        assert found.flux == flux and found.flux.guidance_embed == (variant == "dev")
        assert set(family.canonical(sd, found)) == {DD.NET + k for k in net}


def test_released_full_size_t5_and_clip_configs():
    with torch.device("meta"):
        sd = _meta(SD3Model(SD3["sd3_medium"]))
    shapes = _shapes(sd)
    assert DD.t5_config(shapes, DD.T5) == C.T5_XXL
    assert DD.clip_config(shapes, DD.CLIP_G, big=True, projected=True) == CLIP_G


def test_other_dit_families_are_still_named_and_sd3_files_refused_where_only_unets_go():
    flux2 = {"double_stream_modulation_img.lin.weight": (1, 1), "double_blocks.0.img_attn.qkv.weight": (3, 1),
             "img_in.weight": (1, 64)}
    with pytest.raises(CheckpointError, match="an incomplete FLUX.2 network: no double_blocks.0.img_attn.norm"):
        families.detect(flux2, {}, "flux2.safetensors")  # FLUX.2 is run now: a fragment of one is named
    message = what_else({"model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (6, 2)},
                        "model.diffusion_model.")
    assert message.startswith("this is a Stable Diffusion 3 model; this works on Stable Diffusion 1.x")
