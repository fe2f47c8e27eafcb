"""Union ControlNets (xinsir's ControlNet++): our model, loaded through our file reader from
diffusers' ControlNetUnionModel weights (folder, single diffusers-keyed file, ComfyUI's attention
names, our own original-layout file), gives diffusers' residuals for a chosen control type, and with
no type the plain hint path plus the all-zeros type embedding (ComfyUI's "auto")."""
import inspect
from dataclasses import replace

import pytest
import torch
from diffusers import ControlNetUnionModel

from opensd.checkpoints.controlnet_files import read_controlnet, save_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.models import config as C
from opensd.models.controlnet import ControlNet, ControlNetConfig
from reference import assert_close_scaled, diffusers_unet_kwargs, randomize_
from test_controlnet import CONFIGS, _inputs


def union_kwargs(cfg: C.UNetConfig, types: int, type_dim: int) -> dict:
    accepted = inspect.signature(ControlNetUnionModel.__init__).parameters
    kw = {k: v for k, v in diffusers_unet_kwargs(cfg).items() if k in accepted}
    mc = cfg.model_channels
    kw.update(conditioning_embedding_out_channels=(16, 32, 96, 256), num_control_type=types,
              num_trans_channel=mc, num_trans_head=4, num_proj_channel=mc)
    kw.setdefault("addition_time_embed_dim", type_dim)
    return kw


def _reference(name: str, types: int = 6, seed: int = 5) -> ControlNetUnionModel:
    cfg = CONFIGS[name]
    ref = randomize_(ControlNetUnionModel(**union_kwargs(cfg, types, 16)), seed=seed).eval()
    with torch.no_grad():  # big enough that a wrong type or a skipped fusion shows
        ref.task_embedding.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
        ref.spatial_ch_projs.weight.mul_(10)
    return ref


def _run_reference(ref, cfg, x, hint, t, ctx, pooled, time_ids, control_type: int):
    onehot = torch.zeros(len(x), ref.config.num_control_type)
    onehot[:, control_type] = 1
    extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}} if cfg.adm_in_channels else {}
    with torch.no_grad():
        down, mid = ref(x, t, ctx, controlnet_cond=[hint], control_type=onehot, control_type_idx=[control_type],
                        return_dict=False, **extra)
    return [*down, mid]


def _files(ref, tmp_path) -> list:
    folder = tmp_path / "union_folder"
    ref.save_pretrained(folder, safe_serialization=True)
    single = tmp_path / "diffusion_pytorch_model_promax.safetensors"
    save_safetensors(ref.state_dict(), single)
    comfy = tmp_path / "union_comfy_names.safetensors"
    save_safetensors({k.replace(".attn.in_proj_", ".attn.in_proj."): v for k, v in ref.state_dict().items()}, comfy)
    return [folder, single, comfy]


def _load(path, cfg, **union) -> ControlNet:
    """Our ControlNet read from `path`, with the UNet's head split of `cfg` (no shape shows it)."""
    sd, family, ccfg = read_controlnet(path)
    ccfg = replace(ccfg, unet=replace(ccfg.unet, num_heads=cfg.num_heads, num_head_channels=cfg.num_head_channels),
                   **union)
    net = ControlNet(ccfg).eval()
    net.load_state_dict(sd, strict=True)
    return net


def _ours(ref, cfg, tmp_path) -> ControlNet:
    path = tmp_path / "union.safetensors"
    save_safetensors(ref.state_dict(), path)
    return _load(path, cfg, union_heads=ref.config.num_trans_head)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_union_residuals_match_diffusers_for_each_file_layout(name, tmp_path):
    cfg = CONFIGS[name]
    ref = _reference(name)
    x, hint, t, ctx, pooled, time_ids, y = _inputs(cfg, batch=1)
    expected = {k: _run_reference(ref, cfg, x, hint, t, ctx, pooled, time_ids, k) for k in (0, 3, 5)}
    paths = _files(ref, tmp_path)
    for path in paths:
        net = _load(path, cfg)
        assert (net.config.union_types, net.config.union_type_dim, net.config.union_layers) == \
            (6, ref.config.addition_time_embed_dim, 1)
        for k, ref_res in expected.items():
            with torch.no_grad():
                res = net(x, hint, t, ctx, y, control_type=k)
            for a, b in zip(res, ref_res, strict=True):
                assert_close_scaled(a, b)
    # the folder's config.json gives the type transformer's head count
    assert _load(paths[0], cfg).config.union_heads == 4
    # types differ from each other
    assert (expected[0][0] - expected[3][0]).abs().max() > 1e-3
    # our own writer's original layout reads back the same
    net = _load(paths[1], cfg, union_heads=4)
    out = tmp_path / "ours.safetensors"
    save_controlnet(net, out, "small", dtype=torch.float32)
    again = _load(out, cfg)
    assert again.config.union_heads == 4
    with torch.no_grad():
        for a, b in zip(again(x, hint, t, ctx, y, control_type=3), expected[3]):
            assert_close_scaled(a, b)


def test_batch_rows_are_independent_and_each_matches_diffusers(tmp_path):
    """Each sample's token attends to itself only, so a batch equals its rows run one by one."""
    cfg = CONFIGS["sdxl"]
    ref = _reference("sdxl", types=8)
    x, hint, t, ctx, pooled, time_ids, y = _inputs(cfg, batch=2)
    net = _ours(ref, cfg, tmp_path)
    with torch.no_grad():
        both = net(x, hint, t, ctx, y, control_type=7)
    for r in range(2):
        row = slice(r, r + 1)
        ref_res = _run_reference(ref, cfg, x[row], hint[row], t[row], ctx[row], pooled[row], time_ids[row], 7)
        for a, b in zip(both, ref_res):
            assert_close_scaled(a[row], b)


def test_unset_type_is_the_plain_hint_with_the_zero_type_embedding(tmp_path):
    """ComfyUI's "auto": no fusion, and the type MLP fed all zeros. diffusers cannot leave the type
    unset, but with spatial_ch_projs at zero its fusion adds nothing, and an all-zeros type vector
    is the same embedding: the two must then agree."""
    cfg = CONFIGS["sd1"]
    ref = _reference("sd1")
    x, hint, t, ctx, pooled, time_ids, y = _inputs(cfg, batch=1)
    net = _ours(ref, cfg, tmp_path)
    with torch.no_grad():
        unset = net(x, hint, t, ctx, y)
        typed = net(x, hint, t, ctx, y, control_type=2)
        ref.spatial_ch_projs.weight.zero_()
        ref.spatial_ch_projs.bias.zero_()
        down, mid = ref(x, t, ctx, controlnet_cond=[hint], control_type=torch.zeros(1, 6), control_type_idx=[2],
                        return_dict=False)
    for a, b in zip(unset, [*down, mid], strict=True):
        assert_close_scaled(a, b)
    assert (unset[0] - typed[0]).abs().max() > 1e-3


def test_type_out_of_range_or_on_a_plain_controlnet_is_refused():
    cfg = CONFIGS["sd1"]
    x, hint, t, ctx, *_ = _inputs(cfg, batch=1)
    union = ControlNet(ControlNetConfig(cfg, union_types=6, union_width=32, union_type_dim=16)).eval()
    with pytest.raises(ValueError, match="6 control types"):
        union(x, hint, t, ctx, control_type=6)
    with pytest.raises(ValueError, match="not a Union ControlNet"):
        ControlNet(ControlNetConfig(cfg)).eval()(x, hint, t, ctx, control_type=0)


@pytest.mark.parametrize("types", [6, 8])
def test_full_size_sdxl_union_keys_on_meta(types):
    """xinsir's SDXL union files (6 types; promax 8) map onto our full-size model key for key."""
    from opensd.checkpoints.controlnet_files import controlnet_from_diffusers, detect_controlnet, split_union

    base = C.SDXL_UNET
    with torch.device("meta"):
        ref = ControlNetUnionModel(**union_kwargs(base, types, 256))
        ours = ControlNet(ControlNetConfig(base, union_types=types))
    plain, union = split_union(ref.state_dict())
    mapped = {**controlnet_from_diffusers(plain, base), **union}
    expected = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in mapped.items()} == expected
    family, cfg = detect_controlnet(expected)
    assert family == "sdxl" and cfg.union_types == types and cfg.union_type_dim == 256 and cfg.union_width == 320


# --- type names, shared by the faces -----------------------------------------------------------

@pytest.mark.parametrize("value, index", [
    ("openpose", 0), ("depth", 1), ("hed/pidi/scribble/ted", 2), ("canny/lineart/anime_lineart/mlsd", 3),
    ("normal", 4), ("segment", 5), ("tile", 6), ("repaint", 7),          # ComfyUI's names
    ("OpenPose", 0), ("Soft Edge", 2), ("Hard Edge", 3), ("Normal Map", 4), ("Segmentation", 5),
    ("Inpaint", 7),                                                       # sd-webui-controlnet's
    ("canny", 3), ("scribble", 2), ("lineart", 3), ("softedge", 2), (5, 5),
    ("auto", None), ("Unknown", None), (None, None), ("", None),
])
def test_control_type_names(value, index):
    from opensd.adapters.union_types import control_type_index

    assert control_type_index(value) == index


@pytest.mark.parametrize("value", ["sketch", 8, -1, True, 2.0])
def test_unknown_control_type_is_a_clear_error(value):
    from opensd.adapters.union_types import control_type_index
    from opensd.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=r"unknown control type .*use auto or one of openpose, depth"):
        control_type_index(value)


def test_control_spec_and_cli_check_the_type_against_the_controlnet():
    from pathlib import Path

    from PIL import Image

    from opensd.adapters.controlnet import ControlSpec, LoadedControlNet
    from opensd.cli.control import parse_control
    from opensd.errors import InvalidArgument

    assert parse_control("u.safetensors,edges.png,type=canny,weight=0.5") == {
        "model": "u.safetensors", "image": "edges.png", "control_type": 3, "weight": 0.5}
    assert parse_control("u,e.png,type=Soft Edge")["control_type"] == 2
    with pytest.raises(InvalidArgument, match="unknown control type 'pencil'"):
        parse_control("u,e.png,type=pencil")
    cfg = CONFIGS["sd1"]
    image = Image.new("RGB", (64, 64))
    union = LoadedControlNet(ControlNet(ControlNetConfig(cfg, union_types=6, union_width=32, union_type_dim=16)),
                             "small", Path("union.safetensors"))
    plain = LoadedControlNet(ControlNet(ControlNetConfig(cfg)), "small", Path("canny.safetensors"))
    ControlSpec(union, image, control_type="depth").validate()
    ControlSpec(plain, image).validate()
    with pytest.raises(InvalidArgument, match="canny.safetensors is not a Union ControlNet"):
        ControlSpec(plain, image, control_type="depth").validate()
    with pytest.raises(InvalidArgument, match=r"repaint \(7\) is out of range for union.safetensors, which has 6 control types"):
        ControlSpec(union, image, control_type="repaint").validate()


def test_broken_union_files_are_clear_errors(tmp_path):
    import json

    from opensd.errors import CheckpointError

    ref = _reference("sd1")
    folder = tmp_path / "union"
    ref.save_pretrained(folder, safe_serialization=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"num_trans_head": 3}))
    with pytest.raises(CheckpointError, match="num_trans_head 3 does not divide the type transformer's width 32"):
        read_controlnet(folder)
    partial = tmp_path / "partial.safetensors"
    save_safetensors({k: v for k, v in ref.state_dict().items() if k != "task_embedding"}, partial)
    with pytest.raises(CheckpointError, match="a Union ControlNet without its task_embedding"):
        read_controlnet(partial)
