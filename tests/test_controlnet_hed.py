"""controlnet_aux's HED (lllyasviel's ControlNetHED.pth, adapters/hed.py ControlNetHED): the net equals a
reference forward written here with plain torch ops; the file's keys and shapes on meta; with the file
installed, softedge / the HED and fake scribble nodes / the A1111 module use it and equal controlnet_aux's
detector written out with numpy/cv2 (padding to 64, cv2 bilinear, mean, sigmoid, safe step, ridges)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from opensd.adapters import hed as H
from opensd.adapters import preprocessors as P
from preprocessor_graphs import node_ctx, run_node
from test_aux_preprocessors import ref_nms, ref_safe_step

CONVS = (2, 2, 3, 3, 3)


def reference_sides(sd, x):
    """x - norm; block 1: convs (3x3, pad 1) + ReLU; blocks 2-5: 2x2 max-pool first; 1x1 projection each."""
    h, out = x - sd["norm"], []
    for i, n in enumerate(CONVS, 1):
        if i > 1:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        for j in range(n):
            h = F.relu(F.conv2d(h, sd[f"block{i}.convs.{j}.weight"], sd[f"block{i}.convs.{j}.bias"], padding=1))
        out.append(F.conv2d(h, sd[f"block{i}.projection.weight"], sd[f"block{i}.projection.bias"]))
    return out


def reference_detector(sd, rgb, safe):
    """controlnet_aux's HEDdetector after its resize: edge-pad to 64, sides resized by cv2 bilinear, mean,
    sigmoid (float64), safe step, uint8; the padded map (cropped by the caller)."""
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")
    x = torch.from_numpy(padded).float().permute(2, 0, 1)[None]
    ph, pw = padded.shape[:2]
    edges = [cv2.resize(e[0, 0].numpy().astype(np.float32), (pw, ph), interpolation=cv2.INTER_LINEAR)
             for e in reference_sides(sd, x)]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(edges, axis=2), axis=2).astype(np.float64)))
    if safe:
        edge = ref_safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _photo(w=90, h=70):
    im = Image.new("RGB", (w, h), (180, 170, 160))
    d = ImageDraw.Draw(im)
    d.ellipse([10, 10, 60, 60], fill=(20, 30, 90))
    d.rectangle([62, 5, 85, 65], fill=(250, 240, 40))
    return im


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = H.ControlNetHED().eval()
    with torch.no_grad():
        net.norm.copy_(torch.tensor([120.0, 115.0, 105.0]).view(1, 3, 1, 1))
        x = torch.from_numpy(np.array(_photo())).float().permute(2, 0, 1)[None]
        spread = torch.stack([F.interpolate(s, size=(70, 90)) for s in net(x)]).mean(0).std()
        for i in range(1, 6):  # logits of a few units' spread, so the sigmoid map is not flat
            getattr(net, f"block{i}").projection.weight.mul_(3.0 / spread)
    return net


def test_net_equals_the_reference_forward(net):
    x = torch.rand(1, 3, 64, 96) * 255
    for got, want in zip(net(x), reference_sides(net.state_dict(), x)):
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-5)


def test_file_keys_and_shapes_on_meta():
    with torch.device("meta"):
        net = H.ControlNetHED()
    want = {"norm": (1, 3, 1, 1)}
    chans = [(3, 64), (64, 128), (128, 256), (256, 512), (512, 512)]
    for i, ((cin, cout), n) in enumerate(zip(chans, CONVS), 1):
        for j in range(n):
            want[f"block{i}.convs.{j}.weight"] = (cout, cin if j == 0 else cout, 3, 3)
            want[f"block{i}.convs.{j}.bias"] = (cout,)
        want[f"block{i}.projection.weight"] = (1, cout, 1, 1)
        want[f"block{i}.projection.bias"] = (1,)
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == want


@pytest.fixture()
def models(tmp_path, net):
    root = tmp_path / "models" / "controlnet_aux"
    root.mkdir(parents=True)
    torch.save(net.state_dict(), root / "ControlNetHED.pth")
    return tmp_path / "models"


def test_installed_file_is_used_and_equals_controlnet_aux(models, net):
    from opensd.library.models_dir import ModelFolders

    rgb = np.asarray(_photo())
    folders = ModelFolders(models)
    soft = reference_detector(net.state_dict(), rgb, safe=False)
    assert len(np.unique(soft)) > 20  # a real gradation, not a flat map
    got = np.asarray(P.preprocess("softedge", _photo(), folders=folders, device="cpu"))
    assert np.abs(got[..., 0].astype(int) - soft[:70, :90]).max() <= 1
    safe = reference_detector(net.state_dict(), rgb, safe=True)
    ref = cv2.GaussianBlur(ref_nms(safe, 127, 3.0), (0, 0), 3.0)
    ref[ref > 4] = 255
    ref[ref < 255] = 0
    scribble = np.asarray(P.preprocess("scribble_hed", _photo(), folders=folders, device="cpu"))[..., 0]
    assert (scribble != ref[:70, :90]).mean() < 0.002 and scribble.max() == 255


def test_nodes_and_a1111_module_use_the_file(models, tmp_path, net):
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    ctx = node_ctx(models, tmp_path, _photo())
    out = run_node(ctx, "HEDPreprocessor", safe="disable", resolution=70)
    want = reference_detector(net.state_dict(), np.asarray(_photo()), safe=False)[:70, :90]
    assert out.shape == (70, 90, 3) and np.abs(out[..., 0].astype(int) - want).max() <= 1
    weights = AC._weights("softedge_safe", ModelFolders(models), "unit")
    assert weights.endswith("ControlNetHED.pth")
    (tmp_path / "none").mkdir()
    assert AC._weights("softedge", ModelFolders(tmp_path / "none"), "unit") is None
