"""The manga line extractor (erika.pth, lineart_anime_denoise / Manga2Anime_LineArt_Preprocessor): equal to
a reference forward written with plain torch ops from MangaLineExtraction's res_skip description; the
file's keys and shapes on meta (with or without batch-norm step counters); preprocessor, A1111 module
and node."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from opensd.adapters import lineart as L
from opensd.adapters.lineart_manga import MangaLineNet
from preprocessor_graphs import node_ctx, run_node

ENC = [(24, 2), (48, 3), (96, 5), (192, 7), (384, 12)]


def _pre(sd, p, x, stride=1, up=False):
    """BN (eps 1e-3, running stats) -> LeakyReLU 0.2 -> conv (same padding) [-> nearest x2]."""
    x = F.batch_norm(x, sd[p + ".model.0.running_mean"], sd[p + ".model.0.running_var"], sd[p + ".model.0.weight"],
                     sd[p + ".model.0.bias"], training=False, eps=1e-3)
    w = sd[p + ".model.2.weight"]
    x = F.conv2d(F.leaky_relu(x, 0.2), w, sd[p + ".model.2.bias"], stride=stride, padding=w.shape[-1] // 2)
    return F.interpolate(x, scale_factor=2, mode="nearest") if up else x


def _short(sd, p, x, y, stride=1, up=False):
    if p + ".model.0.weight" not in sd:
        return x + y
    s = F.conv2d(x, sd[p + ".model.0.weight"], sd[p + ".model.0.bias"], stride=stride)
    return (F.interpolate(s, scale_factor=2, mode="nearest") if up else s) + y


def _stage(sd, p, x, units, down=False, up=False):
    for i in range(units):
        stride = 2 if down and i == units - 1 else 1
        u = f"{p}.model.{i}"
        y = _pre(sd, u + ".residual", _pre(sd, u + ".conv1", x, stride, up and i == 0))
        x = _short(sd, u + ".shortcut", x, y, stride, up and i == 0)
    return x


def reference(sd, x):
    skips = []
    for i, (_, n) in enumerate(ENC):
        x = _stage(sd, f"block{i}", x, n, down=i > 0)
        skips.append(x)
    for i, (_, n) in enumerate(reversed(ENC[:-1])):
        x = skips[3 - i] + _stage(sd, f"block{5 + i}", x, n, up=True)
    return _pre(sd, "conv15", _stage(sd, "block9", x, 2))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = MangaLineNet().eval()
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in net.named_parameters():
            if ".model.0." in name and p.dim() == 1:  # BN affine
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.1)
    return net


def test_equals_the_reference_forward(net):
    x = torch.rand(1, 1, 32, 48) * 255
    assert torch.allclose(net(x), reference(net.state_dict(), x), atol=1e-3, rtol=1e-4)


def _expected_keys():
    """From res_skip's definition: pre-activated convs (BN + conv), 1x1 shortcut convs when the width or
    stride changes (upsampling units: when the width changes), identity res1..res4."""
    keys = {}

    def pre(p, cin, cout, k=3):
        keys.update({f"{p}.model.0.weight": (cin,), f"{p}.model.0.bias": (cin,), f"{p}.model.0.running_mean": (cin,),
                     f"{p}.model.0.running_var": (cin,), f"{p}.model.0.num_batches_tracked": (),
                     f"{p}.model.2.weight": (cout, cin, k, k), f"{p}.model.2.bias": (cout,)})

    def stage(p, cin, cout, n, down):
        for i in range(n):
            c = cin if i == 0 else cout
            pre(f"{p}.model.{i}.conv1", c, cout)
            pre(f"{p}.model.{i}.residual", cout, cout)
            if c != cout or (down and i == n - 1):
                keys.update({f"{p}.model.{i}.shortcut.model.0.weight": (cout, c, 1, 1),
                             f"{p}.model.{i}.shortcut.model.0.bias": (cout,)})

    cin = 1
    for i, (w, n) in enumerate(ENC):
        stage(f"block{i}", cin, w, n, down=i > 0)
        cin = w
    for i, (w, n) in enumerate(reversed(ENC[:-1])):
        stage(f"block{5 + i}", cin, w, n, down=False)
        cin = w
    stage("block9", 24, 16, 2, down=False)
    pre("conv15", 16, 1, k=1)
    return keys


def test_file_keys_and_shapes_on_meta():
    with torch.device("meta"):
        net = MangaLineNet()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == _expected_keys()


@pytest.fixture()
def models(tmp_path, net):
    root = tmp_path / "models" / "ControlNetPreprocessor"
    root.mkdir(parents=True)
    # as published: "module."-prefixed, no batch-norm step counters (a pre-0.4.1 file)
    torch.save({"module." + k: v for k, v in net.state_dict().items() if "num_batches" not in k},
               root / "erika.pth")
    return tmp_path / "models"


def _photo(w=90, h=60):
    im = Image.new("RGB", (w, h), (230, 230, 230))
    ImageDraw.Draw(im).line([5, 5, 80, 50], fill=(0, 0, 0), width=2)
    return im


def test_preprocessor_a1111_module_and_node(models, tmp_path, net):
    import cv2

    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    got = np.asarray(preprocess("lineart_anime_denoise", _photo(), folders=ModelFolders(models), device="cpu"))
    grey = cv2.cvtColor(np.pad(np.asarray(_photo()), ((0, 4), (0, 38), (0, 0)), mode="edge"), cv2.COLOR_RGB2GRAY)
    ref = reference(net.state_dict(), torch.from_numpy(grey).float()[None, None])[0, 0, :60, :90]
    want = 255 - ref.clamp(0, 255).numpy().astype(np.uint8)
    assert np.abs(got[..., 0].astype(int) - want).max() <= 1
    assert AC.MODULES["lineart_anime_denoise"] == ("lineart_manga", True)
    assert AC._weights("lineart_manga", ModelFolders(models), "unit").endswith("erika.pth")
    assert L.detect_resolution("manga", 300) == 512 and L.detect_resolution("anime", 300) == 300
    out = run_node(node_ctx(models, tmp_path, _photo()), "Manga2Anime_LineArt_Preprocessor", resolution=64)
    assert out.shape == (64, 96, 3)
