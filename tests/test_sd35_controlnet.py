"""Stability's SD3.5 ControlNets (sd3.5_large_controlnet_{blur,canny,depth}: no text stream, the base
model's patch embedding): read from the single-file layout (built here from diffusers' weights by the
inverse of diffusers' conversion script) and from diffusers' folder, our residuals equal diffusers'
SD3ControlNetModel configured as the SD3.5 variant, a txt2img run equals StableDiffusion3ControlNetPipeline
step by step, the full-size key set loads on meta, and the image is prepared per the file's tag."""
from __future__ import annotations

import pytest
import torch
from diffusers import SD3ControlNetModel

from dit_fixtures import META_SD3, SD3_HEAD, sd3_parts
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.files import save_safetensors
from opensd.checkpoints.keymap_mmdit import mmdit_from_diffusers
from opensd.checkpoints.sd3_controlnet_files import compatible_sd3_controlnet, read_sd3_controlnet
from opensd.models.mmdit import MMDiT
from opensd.models.sd3_controlnet import SD35ControlNet
from reference import assert_close_scaled, randomize_

RENAMES = ((".attn.to_out.0.", ".attn.proj."), (".ff.net.0.proj.", ".mlp.fc1."), (".ff.net.2.", ".mlp.fc2."),
           (".norm1.linear.", ".adaLN_modulation.1."))


def sd35_controlnet(layers=1, **kw) -> SD3ControlNetModel:
    """A tiny SD3.5-style ControlNet for sd3_parts()'s transformer, as diffusers' conversion script configures it."""
    size = dict(sample_size=16, attention_head_dim=SD3_HEAD, num_attention_heads=2, caption_projection_dim=2 * SD3_HEAD,
                pooled_projection_dim=96) | kw
    net = SD3ControlNetModel(patch_size=2, in_channels=16, num_layers=layers, joint_attention_dim=None, out_channels=16,
                             pos_embed_max_size=None, pos_embed_type=None, use_pos_embed=False,
                             force_zeros_for_pooled_projection=False, **size)
    return net if kw else randomize_(net, seed=4, std=0.1).eval()


def single_file(sd: dict, control_type: int) -> dict:
    """diffusers' SD3.5 ControlNet state dict -> Stability's file layout (the conversion script reversed)."""
    out = {"control_type": torch.tensor(float(control_type), device="cpu")}
    for k, v in sd.items():
        if ".attn.to_q." in k:
            k_, v_ = sd[k.replace("to_q", "to_k")], sd[k.replace("to_q", "to_v")]
            out[k.replace(".to_q.", ".qkv.")] = torch.cat([v, k_, v_])
        elif ".attn.to_k." not in k and ".attn.to_v." not in k:
            for a, b in RENAMES:
                k = k.replace(a, b)
            out[k] = v
    return out


def _ours(sd):
    ours_sd, cfg = read_sd3_controlnet(sd, SD3_HEAD)
    net = SD35ControlNet(cfg)
    net.load_state_dict(ours_sd, strict=True)
    return net.eval(), cfg


def _mmdit(transformer):
    tsd = dict(transformer.state_dict())
    cfg = DD.mmdit_config_diffusers({k: tuple(v.shape) for k, v in tsd.items()}, "", META_SD3)
    mmdit = MMDiT(cfg)
    mmdit.load_state_dict(mmdit_from_diffusers(tsd, cfg), strict=True)
    return mmdit.eval()


def test_residuals_and_controlled_mmdit_equal_diffusers():
    ref = sd35_controlnet(2)
    from_file, cfg = _ours(single_file(dict(ref.state_dict()), 1))
    from_folder, _ = _ours(dict(ref.state_dict()))
    assert cfg.control_type == 1 and cfg.mmdit.depth == 2
    transformer = sd3_parts()["transformer"]
    ref.pos_embed = ref._get_pos_embed_from_transformer(transformer)  # as the pipeline does
    mmdit = _mmdit(transformer)
    g = torch.Generator().manual_seed(2)
    x, cond = torch.randn(2, 16, 8, 8, generator=g), torch.randn(2, 16, 8, 8, generator=g)
    ctx, y, t = torch.randn(2, 6, 128, generator=g), torch.randn(2, 96, generator=g), torch.tensor([700.0, 300.0])
    with torch.no_grad():
        want = ref(x, cond, pooled_projections=y, timestep=t, return_dict=False)[0]
        for ours in (from_file, from_folder):
            got = ours(mmdit.image_tokens(x), t, y, cond)
            assert len(got) == len(want) == 2
            for a, b in zip(got, want):
                assert_close_scaled(a, b, rel=1e-5)
        out = mmdit(x, t, ctx, y, control=[list(got)])
        controlled = transformer(x, ctx, y, t, block_controlnet_hidden_states=want, return_dict=False)[0]
        plain = transformer(x, ctx, y, t, return_dict=False)[0]
    assert_close_scaled(out, controlled, rel=1e-5)
    assert (controlled - plain).abs().max() > 0.01 * plain.abs().max()


def test_txt2img_with_a_blur_file_equals_diffusers_step_by_step(tmp_path, monkeypatch):
    from test_sd3_controlnet import SEED, SIZE, STEPS, diffusers_steps, ours_steps
    parts = sd3_parts()
    cn = sd35_controlnet(1)
    file = tmp_path / "sd3.5_large_controlnet_blur.safetensors"
    save_safetensors({k: v.contiguous() for k, v in single_file(dict(cn.state_dict()), 0).items()}, file)
    seen, ours = ours_steps(tmp_path, monkeypatch, parts, file)
    want = diffusers_steps(tmp_path, monkeypatch, parts, cn, ours.noise([SEED], SIZE // 8, SIZE // 8))
    assert len(seen) == len(want) == STEPS
    for a, b in zip(seen, want):
        assert_close_scaled(a, b, rel=1e-4)


@pytest.mark.parametrize("tag,pixels", [(0, lambda h: h * 2 - 1), (1, lambda h: h * 127.5 + 0.5),
                                        (2, lambda h: 1 - 2 * h)])
def test_the_files_tag_prepares_the_control_image(tmp_path, monkeypatch, tag, pixels):
    """Canny as Stability's reference code feeds the VAE, depth inverted as ComfyUI does, blur as usual."""
    from dit_fixtures import write_diffusers_folder
    from opensd.adapters.controlnet import load_controlnet
    from opensd.pipeline.pipeline import load
    ours = load(write_diffusers_folder(tmp_path / "model", "sd3", sd3_parts()), precision="fp32", device="cpu")
    file = tmp_path / "cn.safetensors"
    sd = single_file(dict(sd35_controlnet(1).state_dict()), tag)
    save_safetensors({k: v.contiguous() for k, v in sd.items()}, file)
    loaded = load_controlnet(file, ours)
    seen = []
    real = type(ours).encode_tensor
    monkeypatch.setattr(type(ours), "encode_tensor",
                        lambda self, px, *a, **k: seen.append(px) or real(self, px, *a, **k))
    hint = torch.rand(1, 3, 64, 64)
    x, t, y = torch.randn(2, 16, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 96)
    with torch.no_grad():
        loaded.residuals(x, hint, t, torch.randn(2, 6, 128), y, cache={})
    assert len(seen) == 1 and torch.allclose(seen[0], pixels(hint))


def test_a_diffusers_folder_loads_as_the_file_does(tmp_path):
    """diffusers' conversion saved as a folder: untagged, the same weights as Stability's file."""
    from dit_fixtures import write_diffusers_folder
    from opensd.adapters.controlnet import load_controlnet
    from opensd.pipeline.pipeline import load
    ours = load(write_diffusers_folder(tmp_path / "model", "sd3", sd3_parts()), precision="fp32", device="cpu")
    cn = sd35_controlnet(2)
    cn.save_pretrained(tmp_path / "cn")
    file = tmp_path / "cn.safetensors"
    save_safetensors({k: v.contiguous() for k, v in single_file(dict(cn.state_dict()), 0).items()}, file)
    folder, single = load_controlnet(tmp_path / "cn", ours), load_controlnet(file, ours)
    assert isinstance(folder.net, SD35ControlNet) and folder.net.config.control_type == -1
    a, b = folder.net.state_dict(), single.net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_listed_and_refused_on_a_model_of_another_width(tmp_path):
    from opensd.errors import CheckpointError
    from opensd.library.model_catalog import _controlnet as describe
    from opensd.models.config_dit import SD3_MEDIUM
    sd = single_file(dict(sd35_controlnet(2).state_dict()), 1)
    shapes = {k: {"shape": list(v.shape)} for k, v in sd.items()}
    assert describe(shapes, {}, tmp_path / "cn.safetensors") == ("sd3", "SD3.5 ControlNet (2 blocks)")
    _, cfg = read_sd3_controlnet(sd, SD3_HEAD)
    with pytest.raises(CheckpointError, match="does not fit the loaded model: its width 32 .*; its pooled width 96"):
        compatible_sd3_controlnet(cfg, SD3_MEDIUM)


def test_large_size_key_set_loads_on_meta():
    """sd3.5_large_controlnet_*'s shape: 19 blocks of SD3.5 Large's width (38 heads of 64), pooled 2048."""
    from opensd.models.config_dit import SD35_LARGE
    with torch.device("meta"):
        ref = sd35_controlnet(19, sample_size=128, attention_head_dim=64, num_attention_heads=38,
                              caption_projection_dim=2048, pooled_projection_dim=2048)
        sd = single_file(dict(ref.state_dict()), 2)
    assert "transformer_blocks.18.attn.qkv.weight" in sd and "pos_embed_input.proj.weight" in sd
    ours_sd, cfg = read_sd3_controlnet(sd)
    assert (cfg.mmdit.depth, cfg.mmdit.hidden_size, cfg.control_type) == (19, 2432, 2)
    compatible_sd3_controlnet(cfg, SD35_LARGE)
    with torch.device("meta"):
        ours = SD35ControlNet(cfg)
    ours.load_state_dict(ours_sd, strict=True, assign=True)
    assert sum(t.numel() for t in ref.state_dict().values()) == sum(t.numel() for t in ours.state_dict().values())
