"""ComfyUI's ControlNet nodes (ControlNetLoader, ControlNetApply, ControlNetApplyAdvanced) on a tiny
random model and a tiny random ControlNet: effect, ComfyUI semantics, caching, validation."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from reference import randomize_
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.adapters.controlnet import ControlApplier, ControlSpec, load_controlnet
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.library.synthetic import TINY
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.workflows import GraphError, execute, object_info, validate_prompt
from opensd.workflows.nodes_controlnet import (
    ControlHint,
    ControlNetRef,
    RowControl,
    center_resize,
)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wfcn")
    folders = make_models(tmp / "models")
    (tmp / "models" / "controlnet").mkdir()
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=1)
    save_controlnet(net, tmp / "models" / "controlnet" / "tiny_canny.safetensors", "small", dtype=torch.float32)
    union = randomize_(ControlNet(ControlNetConfig(TINY.unet, union_types=6, union_width=TINY.unet.model_channels,
                                                   union_type_dim=16)), seed=2)
    save_controlnet(union, tmp / "models" / "controlnet" / "tiny_union.safetensors", "small", dtype=torch.float32)
    return tmp, folders, Loader(folders)


@pytest.fixture
def ctx(env, tmp_path):
    _, folders, loader = env
    c = make_ctx(folders, loader, tmp_path)
    c.inputs_dir.mkdir(parents=True)
    im = Image.new("RGB", (64, 64))
    d = ImageDraw.Draw(im)
    d.rectangle((10, 12, 40, 50), outline=(255, 255, 255), width=2)
    d.ellipse((30, 5, 60, 35), outline=(255, 255, 255), width=2)
    im.save(c.inputs_dir / "edges.png")
    return c


def cn_graph(strength=1.0, start=0.0, end=1.0, old=False, name="tiny_canny.safetensors"):
    g = default_graph()
    g["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
    if old:
        g["12"] = {"class_type": "ControlNetApply", "inputs": {
            "conditioning": ["6", 0], "control_net": ["10", 0], "image": ["11", 0], "strength": strength}}
        g["3"]["inputs"]["positive"] = ["12", 0]
    else:
        g["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0],
            "strength": strength, "start_percent": start, "end_percent": end, "vae": ["4", 2]}}
        g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["12", 0], ["12", 1]
    return g


def pixels(prompt, ctx) -> np.ndarray:
    out = execute(copy.deepcopy(prompt), ctx)
    (entry,) = out["9"]["images"]
    return np.asarray(Image.open(ctx.outputs_dir / entry["subfolder"] / entry["filename"]), dtype=np.float32)


def test_strength_zero_is_no_controlnet_and_one_changes_the_image(ctx):
    plain = pixels(default_graph(), ctx)
    assert np.array_equal(pixels(cn_graph(0.0), ctx), plain)
    steered = pixels(cn_graph(1.0), ctx)
    assert np.abs(steered - plain).mean() > 0.5
    # an empty window (start = end = 1: sigma between 0 and 0) never runs
    assert np.array_equal(pixels(cn_graph(1.0, start=1.0, end=1.0), ctx), plain)
    # a part of the window runs on some steps only
    part = pixels(cn_graph(1.0, start=0.0, end=0.5), ctx)
    assert not np.array_equal(part, plain) and not np.array_equal(part, steered)


def test_old_apply_hints_the_negative_too_and_equals_advanced_over_the_whole_range(ctx):
    assert np.array_equal(pixels(cn_graph(0.8, old=True), ctx), pixels(cn_graph(0.8), ctx))


def test_cache_reuses_the_loader_and_reruns_what_changed(ctx):
    execute(cn_graph(0.6), ctx)
    events = []
    execute(cn_graph(0.7), ctx, lambda kind, data: events.append((kind, data)))
    ran = [d["node"] for k, d in events if k == "executing" and d["node"]]
    assert ran == ["12", "3", "8", "9"]


def test_hints_reach_the_negative_as_comfyui_passes_them():
    from types import SimpleNamespace

    from opensd.workflows.conds import prepare
    ref = ControlNetRef(None, "x")
    a, b = ControlHint(ref, torch.zeros(1, 3, 8, 8), 1.0), ControlHint(ref, torch.zeros(1, 3, 8, 8), 0.5)
    ctx_ = torch.zeros(1, 2, 4)
    pipe = SimpleNamespace(device=torch.device("cpu"), config=SimpleNamespace(size_conditioned=False, pooled_y=False))

    def hints(positive, negative):
        out = prepare({"positive": positive, "negative": negative}, (1, 4, 8, 8), pipe, None)
        return [e.control for e in out["negative"]] + [e.control for e in out["positive"]]

    pos_old = [[ctx_, {"control": a, "control_apply_to_uncond": True}]]
    pos_adv = [[ctx_, {"control": a, "control_apply_to_uncond": False}]]
    neg = [[ctx_, {}]]
    assert hints(pos_old, neg) == [a, a]       # ControlNetApply: the negative gets the positive's hint
    assert hints(pos_adv, neg) == [None, a]    # an advanced hint on the positive only stays there
    assert hints(pos_old, [[ctx_, {"control": b}]]) == [b, a]
    # two negatives without hints: each of the positive's ControlNetApply hints goes to one, round robin
    assert hints(pos_old + pos_old, neg + neg) == [a, a, a, a]


def test_row_control_equals_the_pipeline_control_applier(env, ctx):
    _, folders, loader = env
    pipe = loader("tiny.safetensors")
    path = folders.resolve("controlnet", "tiny_canny")
    edges = Image.open(ctx.inputs_dir / "edges.png").convert("RGB")
    image = torch.from_numpy(np.asarray(edges, dtype=np.float32) / 255.0)[None].movedim(-1, 1)
    hint = ControlHint(ControlNetRef(path, "tiny"), image, 0.7)
    ours = RowControl(pipe, [hint, hint], 0, 64, 64)
    theirs = ControlApplier([ControlSpec(load_controlnet(path, pipe), edges, weight=0.7)], 64, 64, pipe.device, pipe.dtype)
    g = torch.Generator().manual_seed(0)
    x, ctx_ = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    t = torch.tensor([500.0])
    for a, b in zip(ours(x, t, ctx_, None, 0.0).outputs, theirs(x, t, ctx_, None, 0.0).outputs):
        assert torch.allclose(a, b, atol=1e-5)


def test_center_resize_crops_to_the_aspect_then_scales():
    img = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(1, 2, 4, 8)
    out = center_resize(img, 4, 4)
    assert out.shape == (1, 2, 4, 4) and torch.equal(out, img[..., 2:6])


def test_bad_control_net_names_are_node_errors(ctx):
    for name in ("nope.safetensors", "../checkpoints/tiny.safetensors"):
        with pytest.raises(GraphError) as e:
            validate_prompt(cn_graph(name=name), ctx)
        (err,) = e.value.payload["node_errors"]["10"]["errors"]
        assert err["type"] == "value_not_in_list" and "control_net_name" in err["details"]
    assert validate_prompt(cn_graph(), ctx) == {}


def test_object_info_lists_the_nodes(ctx):
    info = object_info(ctx)
    assert info["ControlNetLoader"]["input"]["required"]["control_net_name"][0] == ["tiny_canny.safetensors",
                                                                                  "tiny_union.safetensors"]
    assert info["ControlNetLoader"]["output"] == ["CONTROL_NET"]
    adv = info["ControlNetApplyAdvanced"]
    assert adv["output_name"] == ["positive", "negative"] and "vae" in adv["input"]["optional"]
    assert adv["input"]["required"]["end_percent"][1]["default"] == 1.0
    assert info["ControlNetApply"]["output"] == ["CONDITIONING"]


def test_builtin_model_and_builtin_canny_controlnet(tmp_path):
    from opensd.library.models_dir import ModelFolders

    folders = ModelFolders(None)  # only the built-in model and its ControlNet
    c = make_ctx(folders, Loader(folders), tmp_path)
    c.inputs_dir.mkdir(parents=True)
    im = Image.new("RGB", (64, 64))
    ImageDraw.Draw(im).ellipse((12, 12, 52, 52), outline=(255, 255, 255), width=2)
    im.save(c.inputs_dir / "edges.png")
    names = [m.name for m in folders.list("controlnet")]
    assert "opensd-emoji-canny.safetensors" in names

    def graph(strength):
        g = cn_graph(strength, name="opensd-emoji-canny.safetensors")
        g["4"]["inputs"]["ckpt_name"] = "opensd-emoji.safetensors"
        g["3"]["inputs"].update(steps=4, cfg=5)
        return g

    plain = pixels(graph(0.0), c)
    steered = pixels(graph(1.0), c)
    assert np.abs(plain - steered).mean() > 2.0


def test_the_prompts_hint_still_applies_at_cfg_one_where_the_negative_row_is_not_run(ctx):
    def at_cfg_one(g):
        g["3"]["inputs"]["cfg"] = 1.0
        return g

    hinted = at_cfg_one(cn_graph(1.0))
    hinted["3"]["inputs"]["negative"] = ["7", 0]  # the hint on the prompt's entry only
    assert np.abs(pixels(hinted, ctx) - pixels(at_cfg_one(default_graph()), ctx)).mean() > 0.5


def test_a_hint_on_an_area_entry_is_fitted_to_the_areas_crop(ctx):
    from opensd.workflows.guiders import ModelRun
    from opensd.workflows.model_sampling import default_sampling
    from opensd.workflows.types import ModelRef
    pipe = ctx.load_pipeline("tiny.safetensors")
    ref = ControlNetRef(ctx.folders.resolve("controlnet", "tiny_canny.safetensors"), "tiny_canny")
    hint = ControlHint(ref, torch.rand(1, 3, 64, 128), 1.0)
    control = ModelRun(ModelRef(pipe, "tiny"), default_sampling(pipe), None, 0)._control(hint, torch.zeros(2, 4, 8, 4))
    assert control.hints[id(hint)].shape == (1, 3, 64, 32)  # the 8x4-cell crop's pixels, as ComfyUI fits it
    g = cn_graph(1.0)
    g["20"] = {"class_type": "ConditioningSetArea", "inputs": {"conditioning": ["6", 0], "width": 64, "height": 64,
                                                                "x": 0, "y": 0, "strength": 1.0}}
    g["12"]["inputs"]["positive"] = ["20", 0]
    g["5"]["inputs"]["width"] = 128
    plain = copy.deepcopy(g)
    plain["3"]["inputs"]["positive"], plain["3"]["inputs"]["negative"] = ["20", 0], ["7", 0]
    assert np.abs(pixels(g, ctx) - pixels(plain, ctx)).mean() > 0.5


def test_deep_shrink_beside_a_controlnet_is_one_error_line(ctx):
    from opensd.workflows import NodeError
    g = cn_graph(1.0)
    g["20"] = {"class_type": "PatchModelAddDownscale", "inputs": {
        "model": ["4", 0], "block_number": 1, "downscale_factor": 2.0, "start_percent": 0.0, "end_percent": 0.35,
        "downscale_after_skip": True, "downscale_method": "bicubic", "upscale_method": "bicubic"}}
    g["3"]["inputs"]["model"] = ["20", 0]
    with pytest.raises(NodeError) as e:
        execute(g, ctx)
    assert e.value.exception_message == ("model: PatchModelAddDownscale resizes the UNet's skips, which a "
                                         "ControlNet's residuals cannot follow")


# --- SetUnionControlNetType ----------------------------------------------------------------------

# ComfyUI's list, in its order (comfy/cldm/control_types.py), after "auto"
COMFY_UNION_TYPES = ["auto", "openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd",
                     "normal", "segment", "tile", "repaint"]


def union_graph(kind, name="tiny_union.safetensors"):
    g = cn_graph(1.0, name=name)
    g["13"] = {"class_type": "SetUnionControlNetType", "inputs": {"control_net": ["10", 0], "type": kind}}
    g["12"]["inputs"]["control_net"] = ["13", 0]
    return g


def test_set_union_type_node_lists_comfyuis_types_and_picks_the_index(ctx):
    from opensd.workflows.nodes_controlnet import set_union_controlnet_type

    info = object_info(ctx)["SetUnionControlNetType"]
    assert info["input"]["required"]["type"][0] == COMFY_UNION_TYPES
    assert info["output"] == ["CONTROL_NET"] and info["category"] == "conditioning/controlnet"
    ref = ControlNetRef(ctx.folders.resolve("controlnet", "tiny_union"), "tiny_union")
    for index, kind in enumerate(COMFY_UNION_TYPES):
        (out,) = set_union_controlnet_type(None, ref, kind)
        assert out.control_type == (None if kind == "auto" else index - 1) and out.path == ref.path
    assert ref.control_type is None  # the input is left as it was (ComfyUI copies it)
    with pytest.raises(GraphError) as e:
        validate_prompt(union_graph("sketch"), ctx)
    (err,) = e.value.payload["node_errors"]["13"]["errors"]
    assert err["type"] == "value_not_in_list" and "type" in err["details"]


def test_union_type_reaches_the_network_and_equals_the_pipeline_applier(env, ctx):
    auto, canny = pixels(union_graph("auto"), ctx), pixels(union_graph("canny/lineart/anime_lineart/mlsd"), ctx)
    assert np.array_equal(auto, pixels(cn_graph(1.0, name="tiny_union.safetensors"), ctx))  # auto = no node
    assert np.abs(auto - canny).mean() > 0.1
    _, folders, loader = env
    pipe = loader("tiny.safetensors")
    path = folders.resolve("controlnet", "tiny_union")
    edges = Image.open(ctx.inputs_dir / "edges.png").convert("RGB")
    image = torch.from_numpy(np.asarray(edges, dtype=np.float32) / 255.0)[None].movedim(-1, 1)
    hint = ControlHint(ControlNetRef(path, "tiny_union", control_type=3), image, 0.7)
    ours = RowControl(pipe, [hint, hint], 0, 64, 64)
    spec = ControlSpec(load_controlnet(path, pipe), edges, weight=0.7, control_type="canny")
    theirs = ControlApplier([spec], 64, 64, pipe.device, pipe.dtype)
    g = torch.Generator().manual_seed(0)
    x, ctx_ = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    t = torch.tensor([500.0])
    for a, b in zip(ours(x, t, ctx_, None, 0.0).outputs, theirs(x, t, ctx_, None, 0.0).outputs, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_union_type_on_a_plain_controlnet_is_ignored_and_a_missing_type_fails(ctx):
    """As ComfyUI: a plain ControlNet takes no type and ignores it; "tile" needs the 8-type ProMax file."""
    from opensd.workflows import NodeError

    assert np.array_equal(pixels(union_graph("depth", name="tiny_canny.safetensors"), ctx), pixels(cn_graph(1.0), ctx))
    with pytest.raises(NodeError) as e:
        execute(union_graph("tile"), ctx)
    assert "tile (6) is out of range for tiny_union.safetensors, which has 6 control types; use the ProMax" \
        in e.value.exception_message
