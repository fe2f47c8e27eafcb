"""Our ControlNet equals diffusers' ControlNetModel on the same random weights (SD1, SDXL), loaded
through both file formats, and its residuals drive our UNet exactly as diffusers' UNet is driven
by down_block_additional_residuals / mid_block_additional_residual."""
import inspect
from dataclasses import replace

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from opensd.checkpoints.controlnet_files import (
    PREFIX, controlnet_from_diffusers, controlnet_to_diffusers, detect_controlnet, read_controlnet,
    unet_config_from_diffusers_keys)
from opensd.checkpoints.files import save_safetensors
from opensd.checkpoints.keymap_unet import unet_from_diffusers
from opensd.models import config as C
from opensd.models.controlnet import ControlNet, ControlNetConfig, from_unet
from opensd.models.unet import UNetModel, timestep_embedding
from reference import assert_close_scaled, diffusers_unet_kwargs, randomize_

TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, context_dim=48)
CONFIGS = {
    "sd1": C.UNetConfig(**TINY, transformer_depth=(1, 1), num_heads=2, num_head_channels=-1),
    "sdxl": replace(C.UNetConfig(**TINY, transformer_depth=(0, 2), transformer_depth_middle=2,
                                 num_head_channels=16, use_linear_in_transformer=True,
                                 adm_in_channels=40 + 6 * 256), num_res_blocks=2),
}


def diffusers_controlnet_kwargs(cfg: C.UNetConfig, **extra) -> dict:
    kw = diffusers_unet_kwargs(cfg)
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    kw = {k: v for k, v in kw.items() if k in accepted}
    kw.update(extra)
    return kw


def _inputs(cfg, size=16, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    hint = torch.rand(batch, 3, size * 8, size * 8, generator=g)
    t = torch.tensor([999, 17])[:batch]
    ctx = torch.randn(batch, 7, cfg.context_dim, generator=g)
    pooled = torch.randn(batch, 40, generator=g)
    time_ids = torch.tensor([[1024, 1024, 0, 0, 1024, 1024], [768, 512, 32, 16, 512, 768]])[:batch].float()
    y = None
    if cfg.adm_in_channels:
        y = torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(batch, -1)], dim=1)
    return x, hint, t, ctx, pooled, time_ids, y


def _refs(name, seed=3):
    cfg = CONFIGS[name]
    cn = randomize_(ControlNetModel(**diffusers_controlnet_kwargs(cfg)), seed=seed).eval()
    unet = randomize_(UNet2DConditionModel(**diffusers_unet_kwargs(cfg)), seed=seed + 1).eval()
    return cfg, cn, unet


def _run_ref(cn, unet, cfg, x, hint, t, ctx, pooled, time_ids, scale=1.0):
    extra = {}
    if cfg.adm_in_channels:
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        down, mid = cn(x, t, ctx, controlnet_cond=hint, conditioning_scale=scale, return_dict=False, **extra)
        out = unet(x, t, ctx, down_block_additional_residuals=down, mid_block_additional_residual=mid,
                   **extra).sample
    return [*down, mid], out


def _ours(sd, cfg):
    net = ControlNet(ControlNetConfig(cfg)).eval()
    net.load_state_dict(sd, strict=True)
    return net


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_residuals_and_unet_output_match_diffusers_both_formats(name, tmp_path):
    cfg, cn, unet = _refs(name)
    x, hint, t, ctx, pooled, time_ids, y = _inputs(cfg)
    ref_res, ref_out = _run_ref(cn, unet, cfg, x, hint, t, ctx, pooled, time_ids)
    ours_unet = UNetModel(cfg).eval()
    ours_unet.load_state_dict(unet_from_diffusers(unet.state_dict(), cfg), strict=True)

    original = controlnet_from_diffusers(cn.state_dict(), cfg)
    # round trip through our key map
    assert controlnet_to_diffusers(original, cfg).keys() == cn.state_dict().keys()
    # files: diffusers folder, diffusers-keyed single file, original with and without prefix
    folder = tmp_path / "cn_diffusers"
    cn.save_pretrained(folder, safe_serialization=True)
    single = tmp_path / "cn_diffusers_single.safetensors"
    save_safetensors(cn.state_dict(), single)
    orig_file = tmp_path / "control_tiny.safetensors"
    save_safetensors({PREFIX + k: v for k, v in original.items()}, orig_file)
    bare_file = tmp_path / "control_bare.safetensors"
    save_safetensors(original, bare_file)
    for path in (folder, single, orig_file, bare_file):
        sd, family, ccfg = read_controlnet(path)
        assert family == "small"
        ccfg = replace(ccfg, unet=replace(ccfg.unet, num_heads=cfg.num_heads,
                                          num_head_channels=cfg.num_head_channels))
        assert ccfg.unet == cfg, path
        net = _ours(sd, ccfg.unet)
        with torch.no_grad():
            res = net(x, hint, t, ctx, y)
            out = ours_unet(x, t, ctx, y, control=res)
        assert len(res) == len(ref_res)
        for a, b in zip(res, ref_res):
            assert_close_scaled(a, b)
        assert_close_scaled(out, ref_out)


def test_diffusers_keys_infer_the_config():
    for cfg in CONFIGS.values():
        cn = ControlNetModel(**diffusers_controlnet_kwargs(cfg))
        got = unet_config_from_diffusers_keys({k: tuple(v.shape) for k, v in cn.state_dict().items()})
        assert replace(got, num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels) == cfg


def test_unet_without_control_unchanged_and_zero_control_is_noop():
    cfg = CONFIGS["sd1"]
    unet = randomize_(UNetModel(cfg), seed=2).eval()
    x, hint, t, ctx, *_ = _inputs(cfg)
    net = from_unet(unet)
    with torch.no_grad():
        plain = unet(x, t, ctx)
        res = net(x, hint, t, ctx)
        controlled = unet(x, t, ctx, control=res)
    assert all(r.abs().max() == 0 for r in res)  # zero convs start at zero
    assert torch.equal(plain, controlled)
    # encoder weights are the UNet's
    assert torch.equal(net.input_blocks[1][0].in_layers[2].weight, unet.input_blocks[1][0].in_layers[2].weight)


@pytest.mark.parametrize("name,base,extra", [
    ("sd15", C.SD1_UNET, {}),
    ("sd21", C.SD2_UNET, {}),
    ("sdxl", C.SDXL_UNET, {}),
])
def test_full_size_layouts_on_meta(name, base, extra):
    with torch.device("meta"):
        ref = ControlNetModel(**diffusers_controlnet_kwargs(base, **extra))
        ours = ControlNet(ControlNetConfig(base))
    mapped = controlnet_from_diffusers(ref.state_dict(), base)
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected  # every key consumed, shapes equal
    family, cfg = detect_controlnet(expected)
    assert family == {"sd15": "sd1", "sd21": "sd2", "sdxl": "sdxl"}[name]
    assert cfg.unet == base
    # the original layout, as in lllyasviel's files, detects the same
    family2, cfg2 = detect_controlnet({k: v for k, v in expected.items()})
    assert (family2, cfg2) == (family, cfg)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_original_layout_is_what_diffusers_single_file_converter_reads(name):
    """Our attribute names with lllyasviel's `control_model.` prefix go through diffusers' own
    converter for original ControlNet files, and both models then agree."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    cfg, cn, unet = _refs(name)
    ours = randomize_(ControlNet(ControlNetConfig(cfg)), seed=11).eval()
    original = {PREFIX + k: v for k, v in ours.state_dict().items()}
    converted = convert_controlnet_checkpoint(original, dict(cn.config))
    if cfg.adm_in_channels:  # diffusers' converter has no label_emb row (SDXL ControlNets ship as diffusers)
        converted.update({k: v for k, v in controlnet_to_diffusers(ours.state_dict(), cfg).items()
                          if k.startswith("add_embedding.")})
    cn.load_state_dict(converted, strict=True)
    x, hint, t, ctx, pooled, time_ids, y = _inputs(cfg)
    ref_res, _ = _run_ref(cn, unet, cfg, x, hint, t, ctx, pooled, time_ids)
    with torch.no_grad():
        res = ours(x, hint, t, ctx, y)
    for a, b in zip(res, ref_res):
        assert_close_scaled(a, b)


def test_guess_mode_scales_match_diffusers_shape_of_schedule():
    """diffusers' guess mode scales residuals geometrically from shallow to deep (logspace -1..0); ours
    follows lllyasviel's 0.825**(n-1-i): both increase monotonically and end at 1 for the middle block."""
    from opensd.adapters.controlnet import GUESS_MODE_DECAY
    s = [GUESS_MODE_DECAY ** (12 - i) for i in range(13)]
    assert s[-1] == 1.0 and all(a < b for a, b in zip(s, s[1:])) and s[0] < 0.1


def test_sdxl_small_controlnet_fits_sdxl_base_only():
    """diffusers' "small" SDXL ControlNets have fewer transformer blocks than the base: still SDXL."""
    from opensd.checkpoints.controlnet_files import compatible_config
    from opensd.errors import CheckpointError

    small = replace(C.SDXL_UNET, transformer_depth=(0, 0, 1), transformer_depth_middle=1)
    with torch.device("meta"):
        ref = ControlNetModel(**diffusers_controlnet_kwargs(small))
        ours = ControlNet(ControlNetConfig(small))
    mapped = controlnet_from_diffusers(ref.state_dict(), small)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    family, cfg = detect_controlnet({k: tuple(v.shape) for k, v in mapped.items()})
    assert family == "sdxl" and cfg.unet.transformer_depth == (0, 0, 1)
    assert compatible_config(cfg, family, C.sdxl()).hint_downscale == 8
    with pytest.raises(CheckpointError, match="ControlNet is for SDXL models but the loaded model is SD1"):
        compatible_config(cfg, family, C.sd1())


def test_mismatch_between_two_small_models_names_the_difference():
    """Two small models differ in shape, not family: the message says which shapes differ."""
    from opensd.checkpoints.controlnet_files import compatible_config
    from opensd.errors import CheckpointError
    from opensd.library.synthetic import TINY

    cn = ControlNetConfig(replace(TINY.unet, context_dim=96, model_channels=64))
    with pytest.raises(CheckpointError) as e:
        compatible_config(cn, "small", TINY, "cn.safetensors")
    msg = str(e.value)
    assert f"text context width {96} (the model's is {TINY.unet.context_dim})" in msg, msg
    assert f"model channels 64 (the model's are {TINY.unet.model_channels})" in msg, msg
    assert "for small models but the loaded model is small" not in msg
    with pytest.raises(CheckpointError, match=r"ControlNet is for SDXL models but the loaded model is SD1.*text context width 2048 \(the model's is 768\)"):
        compatible_config(ControlNetConfig(C.SDXL_UNET), "sdxl", C.sd1())


def test_diffusers_controlnet_folder_links_out_and_unsupported_fields_are_refused(tmp_path):
    import json

    from opensd.errors import CheckpointError
    cn = ControlNetModel(**diffusers_controlnet_kwargs(CONFIGS["sd1"]))
    folder = tmp_path / "cn"
    cn.save_pretrained(folder, safe_serialization=True)
    read_controlnet(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.rename(tmp_path / "elsewhere.safetensors")
    weights.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(CheckpointError, match="outside the model folder"):
        read_controlnet(folder)
    weights.unlink()
    (tmp_path / "elsewhere.safetensors").rename(weights)
    j = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**j, "resnet_time_scale_shift": "scale_shift"}))
    with pytest.raises(CheckpointError, match="resnet_time_scale_shift = 'scale_shift' is not supported"):
        read_controlnet(folder)
