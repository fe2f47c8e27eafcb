"""Preprocessors (Canny, HED soft edge with the shipped weights, scribble, lineart, passthrough,
invert/binary), control-image fitting, and the CLI: `opensd preprocess` and `generate --control`."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.adapters.hed import WEIGHTS, hed_edges
from opensd.adapters.preprocessors import PREPROCESSORS, fit_image, preprocess
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.cli import main
from opensd.cli.control import parse_control, resolve_controlnet
from opensd.errors import InvalidArgument
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from reference import randomize_


def _scene(w=96, h=80):
    im = Image.new("RGB", (w, h), (200, 180, 150))
    d = ImageDraw.Draw(im)
    d.rectangle([20, 20, 70, 60], fill=(30, 60, 120))
    return im


def _a(im):
    return np.asarray(im.convert("L")).astype(np.int32)


def test_canny_marks_the_rectangle_outline():
    e = _a(preprocess("canny", _scene(), low=50, high=150))
    assert e.shape == (80, 96)
    assert e[19:22, 30:60].max() == 255 and e[40, 18:23].max() == 255  # top and left sides
    assert e[35:45, 35:55].max() == 0 and e[70:, :].max() == 0  # flat inside and background
    with pytest.raises(InvalidArgument, match="low"):
        preprocess("canny", _scene(), low=200, high=100)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="HED weights not converted")
def test_hed_soft_edges_are_a_sensible_edge_map():
    edges = hed_edges(_scene())
    assert edges.shape == (80, 96) and 0 <= edges.min() and edges.max() <= 1
    border = max(edges[20, 45], edges[19, 45], edges[21, 45])
    assert border > 0.8  # the outline is an edge
    assert edges[40, 45] < 0.05 and edges[75, 90] < 0.1  # flat areas are not
    s = _a(preprocess("scribble", _scene()))
    assert set(np.unique(s)) <= {0, 255} and s[20, 45] == 255 and s[40, 45] == 0
    soft = _a(preprocess("softedge", _scene()))
    assert soft[20, 45] > 200


def test_lineart_passthrough_invert_binary():
    line = _a(preprocess("lineart", _scene()))
    assert line.max() > 128 and line[40, 45] == 0
    depth = Image.linear_gradient("L").resize((32, 24))
    assert np.array_equal(_a(preprocess("depth", depth)), _a(depth))
    sketch = Image.new("L", (16, 16), 255)
    ImageDraw.Draw(sketch).line([0, 8, 15, 8], fill=0)
    inv = _a(preprocess("invert", sketch))
    assert inv[8].min() == 255 and inv[0].max() == 0
    assert set(np.unique(_a(preprocess("binary", depth, threshold=100)))) == {0, 255}
    with pytest.raises(InvalidArgument, match="preprocessor"):
        preprocess("nope", sketch)
    assert {"canny", "softedge", "scribble", "lineart", "depth", "pose", "invert", "binary"} <= set(PREPROCESSORS)


@pytest.mark.parametrize("mode", ["just resize", "crop and resize", "resize and fill"])
def test_fit_image_modes(mode):
    im = Image.new("RGB", (100, 50), (255, 255, 255))
    out = fit_image(im, 64, 64, mode)
    assert out.size == (64, 64)
    a = np.asarray(out)
    if mode == "resize and fill":  # padded with black: no structure outside the picture
        assert a[0].max() == 0 and a[32].min() == 255
    else:
        assert a.min() == 255


def test_parse_control_and_resolve(tmp_path):
    s = parse_control("canny,edges.png,weight=0.5,start=0.1,end=0.8,pre=canny,guess,resize=crop")
    assert s == dict(model="canny", image="edges.png", weight=0.5, start=0.1, end=0.8, pre="canny",
                     guess_mode=True, resize_mode="crop and resize")
    for bad, match in (("only-model", "needs a model"), ("a,b,weight=x", "control weight"),
                       ("a,b,color=1", "unknown option"), ("a,b,c", "unexpected")):
        with pytest.raises(InvalidArgument, match=match):
            parse_control(bad)
    (tmp_path / "control_v11p_sd15_canny.safetensors").write_bytes(b"x")
    assert resolve_controlnet("canny", tmp_path).name == "control_v11p_sd15_canny.safetensors"
    with pytest.raises(InvalidArgument, match="not found"):
        resolve_controlnet("depth", tmp_path)


def test_cli_preprocess_and_generate_with_control(tmp_path, capsys):
    src = tmp_path / "in.png"
    _scene().save(src)
    edges = tmp_path / "edges.png"
    assert main(["preprocess", "canny", str(src), "-o", str(edges), "--low", "50", "--high", "150",
                 "--width", "64", "--height", "64"]) == 0
    assert Image.open(edges).size == (64, 64)
    assert main(["preprocess", "canny", str(tmp_path / "missing.png"), "-o", str(edges)]) == 2
    model = write_random_checkpoint(tmp_path / "tiny.safetensors")
    cn_dir = tmp_path / "controlnets"
    cn_dir.mkdir()
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=1)
    save_controlnet(net, cn_dir / "tiny_canny.safetensors", "small", dtype=torch.float32)
    out = tmp_path / "out.png"
    assert main(["generate", "a box", "--model", str(model), "--steps", "2", "--seed", "1", "-o", str(out),
                 "--controlnet-dir", str(cn_dir), "--control", f"canny,{src},pre=canny,weight=0.7"]) == 0
    assert Image.open(out).size == (64, 64)
    assert main(["generate", "a box", "--model", str(model), "--steps", "2", "-o", str(out),
                 "--controlnet-dir", str(cn_dir), "--control", f"canny,{src},weight=nan"]) == 2
    assert "control weight" in capsys.readouterr().err
    assert main(["generate", "a box", "--model", str(model), "--steps", "2", "-o", str(out),
                 "--control", f"{cn_dir}/tiny_canny.safetensors,{tmp_path}/nope.png"]) == 2
    assert "control image" in capsys.readouterr().err
    # a Union ControlNet's type: steers (differs from unset); on a plain ControlNet it is an error
    union = randomize_(ControlNet(ControlNetConfig(TINY.unet, union_types=6, union_width=TINY.unet.model_channels,
                                                   union_type_dim=16)), seed=2)
    save_controlnet(union, cn_dir / "tiny_union.safetensors", "small", dtype=torch.float32)
    images = {}
    for kind in ("auto", "depth"):
        images[kind] = tmp_path / f"{kind}.png"
        assert main(["generate", "a box", "--model", str(model), "--steps", "2", "--seed", "1", "-o", str(images[kind]),
                     "--controlnet-dir", str(cn_dir), "--control", f"tiny_union,{src},type={kind}"]) == 0
    pixels = [np.asarray(Image.open(p), dtype=np.float32) for p in images.values()]
    assert np.abs(pixels[0] - pixels[1]).mean() > 0.1
    capsys.readouterr()
    assert main(["generate", "a box", "--model", str(model), "--steps", "2", "-o", str(out),
                 "--controlnet-dir", str(cn_dir), "--control", f"tiny_canny,{src},type=depth"]) == 2
    assert "tiny_canny is not a Union ControlNet" in capsys.readouterr().err


def test_shipped_canny_controlnet_resolves_loads_and_steers_the_builtin_model():
    from opensd.adapters.controlnet import ControlSpec, load_controlnet
    from opensd.adapters.preprocessors import preprocess
    from opensd.pipeline.pipeline import load

    path = resolve_controlnet("canny", None)  # no --controlnet-dir: the built-in one
    assert path.name == "opensd-emoji-canny.safetensors"
    pipe = load(Path(__file__).resolve().parents[1] / "src/opensd/assets/builtin/opensd-emoji.safetensors")
    net = load_controlnet(path, pipe)
    edges = preprocess("canny", _scene().resize((64, 64)))
    kw = dict(steps=4, seed=3, cfg=5)
    plain = np.asarray(pipe.txt2img("", **kw)[0], dtype=np.float32)
    steered = np.asarray(pipe.txt2img("", controls=[ControlSpec(net, edges, weight=1.0)], **kw)[0], dtype=np.float32)
    assert np.abs(plain - steered).mean() > 2.0  # the ControlNet's residuals are not zero any more
