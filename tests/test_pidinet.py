"""PiDiNet soft edges (adapters/pidinet.py, table5_pidinet.pth): our net, whose pixel-difference layers are
rewritten as vanilla convs at load, equals a reference forward written here that computes the
differences directly (cd / ad / rd on unfolded neighbourhoods) from the file-form weights; the full file's
key names and shapes (listed here from the original "carv4" definition) load on meta; post-processing
and the safe step against numpy; the restricted unpickler; a missing file named; the A1111 modules, CLI
and ComfyUI nodes."""
from __future__ import annotations

import os
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from opensd.adapters import pidinet as PD
from opensd.errors import CheckpointError, InvalidArgument

TINY = {"width": 4, "dil": 3}


# --- reference: pixel differences computed directly -------------------------------------------------
def _neighbours(x, k):
    """(B, C, k*k, H, W): each pixel's k x k neighbourhood (zero padded), row-major."""
    b, c, h, w = x.shape
    return F.unfold(x, k, padding=k // 2).view(b, c, k * k, h, w)


def pdc(x, w, kind):
    """Depthwise (w: (C, 1, 3, 3)) or full (w: (O, C, 3, 3)) pixel-difference convolution, from its
    definition: cd sum_i w_i (x_i - x_c); ad sum_i w_i (x_i - x_j), j the tap after i going clockwise
    round the ring (the centre pairs with itself); rd sum over the 8 rays w_i (x_outer - x_inner)."""
    if kind == "cv":
        return F.conv2d(x, w, padding=1, groups=x.shape[1] if w.shape[1] == 1 else 1)
    if kind == "rd":
        n = _neighbours(x, 5)
        outer, inner = [0, 2, 4, 10, 14, 20, 22, 24], [6, 7, 8, 11, 13, 16, 17, 18]
        diff = torch.zeros_like(n[:, :, :9])
        diff[:, :, 1:] = n[:, :, outer] - n[:, :, inner]  # ray i pairs with 3x3 tap i (tap 0 unused)
    else:
        n = _neighbours(x, 3)
        # clockwise ring of the 3x3 taps: 0 1 2 5 8 7 6 3; ad pairs each tap with the next one
        ring = [0, 1, 2, 5, 8, 7, 6, 3]
        nxt = {ring[i]: ring[(i + 1) % 8] for i in range(8)}
        nxt[4] = 4
        other = n[:, :, 4:5].expand_as(n) if kind == "cd" else n[:, :, [nxt[t] for t in range(9)]]
        diff = n - other
    wf = w.flatten(2)  # (O, Cin/groups, 9)
    if w.shape[1] == 1:  # depthwise
        return torch.einsum("bckhw,ck->bchw", diff, wf[:, 0])
    return torch.einsum("bckhw,ock->bohw", diff, wf)


def reference(sd, x, kinds=PD.CARV4):
    """PiDiNet's forward from the file-form state dict `sd`, as published (carv4, dilation module, attention)."""
    def conv(h, name, **kw):
        return F.conv2d(h, sd[name + ".weight"], sd.get(name + ".bias"), **kw)

    h, size, maps, layer = pdc(x, sd["init_block.weight"], kinds[0]), x.shape[-2:], [], 1
    for s, n in enumerate((3, 4, 4, 4), 1):
        for b in range(1, n + 1):
            name = f"block{s}_{b}"
            if s > 1 and b == 1:
                h = F.max_pool2d(h, 2, 2)
            y = conv(F.relu(pdc(h, sd[name + ".conv1.weight"], kinds[layer])), name + ".conv2")
            h = y + (conv(h, name + ".shortcut") if s > 1 and b == 1 else h)
            layer += 1
        i = s - 1
        d = conv(F.relu(h), f"dilations.{i}.conv1")
        d = sum(conv(d, f"dilations.{i}.conv2_{k}", dilation=r, padding=r) for k, r in zip(range(1, 5), (5, 7, 9, 11)))
        a = d * torch.sigmoid(conv(conv(F.relu(d), f"attentions.{i}.conv1"), f"attentions.{i}.conv2", padding=1))
        e = conv(a, f"conv_reduces.{i}.conv")
        maps.append(F.interpolate(e, size=size, mode="bilinear", align_corners=False))
    return torch.sigmoid(conv(torch.cat(maps, 1), "classifier"))


def file_keys(width=60, dil=24):
    """table5_pidinet.pth's keys and shapes (without "module."), from the original definition."""
    keys = {"init_block.weight": (width, 3, 3, 3)}
    ch = width
    for s, n in enumerate((3, 4, 4, 4), 1):
        for b in range(1, n + 1):
            name, cout = f"block{s}_{b}", ch
            if s > 1 and b == 1:
                cout = ch * 2 if s < 4 else ch
                keys[name + ".shortcut.weight"], keys[name + ".shortcut.bias"] = (cout, ch, 1, 1), (cout,)
            keys[name + ".conv1.weight"] = (ch, 1, 3, 3)
            keys[name + ".conv2.weight"] = (cout, ch, 1, 1)
            ch = cout
        i = s - 1
        keys[f"dilations.{i}.conv1.weight"], keys[f"dilations.{i}.conv1.bias"] = (dil, ch, 1, 1), (dil,)
        for k in range(1, 5):
            keys[f"dilations.{i}.conv2_{k}.weight"] = (dil, dil, 3, 3)
        keys[f"attentions.{i}.conv1.weight"], keys[f"attentions.{i}.conv1.bias"] = (4, dil, 1, 1), (4,)
        keys[f"attentions.{i}.conv2.weight"] = (1, 4, 3, 3)
        keys[f"conv_reduces.{i}.conv.weight"], keys[f"conv_reduces.{i}.conv.bias"] = (1, dil, 1, 1), (1,)
    keys["classifier.weight"], keys["classifier.bias"] = (1, 4, 1, 1), (1,)
    return keys


def random_file_sd(seed=0, **config):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.3 for k, shape in file_keys(**config).items()}


def _photo(w=90, h=60):
    im = Image.new("RGB", (w, h), (200, 190, 180))
    ImageDraw.Draw(im).ellipse([20, 10, 70, 50], fill=(30, 40, 60))
    ImageDraw.Draw(im).line([0, 55, 90, 5], fill=(250, 20, 20), width=3)
    return im


@pytest.mark.parametrize("kind", ["cd", "ad", "rd"])
def test_each_difference_kind_equals_its_vanilla_kernel(kind):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 5, 9, 11, generator=g), torch.randn(5, 1, 3, 3, generator=g)
    v = PD.to_vanilla(w, kind)
    got = F.conv2d(x, v, padding=v.shape[-1] // 2, groups=5)
    torch.testing.assert_close(got, pdc(x, w, kind), atol=1e-5, rtol=1e-5)
    w3 = torch.randn(6, 3, 3, 3, generator=g)  # the init conv: a full (not depthwise) PDC
    v3 = PD.to_vanilla(w3, kind)
    torch.testing.assert_close(F.conv2d(x[:, :3], v3, padding=v3.shape[-1] // 2), pdc(x[:, :3], w3, kind),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kinds", [PD.CARV4, ("rd", "cd", "ad", "cv") * 4])
def test_network_equals_the_direct_pixel_difference_reference(kinds):
    sd = random_file_sd(**TINY)
    net = PD.build({"module." + k: v for k, v in sd.items()}, kinds=kinds, **TINY)
    x = torch.rand(1, 3, 37, 50, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(net(x), reference(sd, x, kinds), atol=1e-5, rtol=1e-4)


def test_full_size_file_keys_and_shapes_load_on_meta():
    assert PD.file_shapes(PD.PiDiNet()) == file_keys()
    with torch.device("meta"):
        sd = {"module." + k: torch.empty(s) for k, s in file_keys().items()}
        net = PD.build(sd)
    assert net.block1_2.conv1.weight.shape == (60, 1, 5, 5)  # layer 2 is rd: a 5x5 kernel once converted
    assert sum(p.numel() for p in net.parameters()) > 700_000
    bad = dict(sd)
    bad.pop("module.classifier.bias")
    with pytest.raises(CheckpointError, match=r"not the PiDiNet soft-edge model \(table5_pidinet\.pth\): missing "
                                              r"classifier\.bias"):
        with torch.device("meta"):
            PD.build(bad)


@pytest.fixture()
def models(tmp_path):
    """A models folder with a tiny-valued full-size table5_pidinet.pth, nested as the original saves it."""
    root = tmp_path / "models" / "ControlNetPreprocessor" / "pidinet"
    root.mkdir(parents=True)
    sd = {"module." + k: v * 0.75 for k, v in random_file_sd(seed=5).items()}  # a map spread over 0..1
    torch.save({"epoch": 14, "state_dict": sd}, root / PD.FILE)
    return tmp_path / "models"


def _want(models, image, safe=False):
    """The published pipeline written with numpy: pad edge to 64, BGR / 255, fused sigmoid, safe step
    floor(x * 3) / 2, x 255 truncated to uint8, crop."""
    from opensd.checkpoints.files import read_state_dict

    sd = {k.removeprefix("module."): v.float() for k, v in read_state_dict(models / "ControlNetPreprocessor" /
                                                                           "pidinet" / PD.FILE).items()}
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")[:, :, ::-1].astype(np.float32) / 255
    with torch.no_grad():
        edge = reference(sd, torch.from_numpy(padded.copy()).permute(2, 0, 1)[None])[0, 0].numpy()
    if safe:
        edge = np.floor(edge * 3.0) / 2.0
    return np.clip(edge * 255.0, 0, 255).astype(np.uint8)[:h, :w]


def test_preprocessors_match_the_published_post_processing(models):
    from opensd.adapters.preprocessors import preprocess, thin_lines
    from opensd.library.models_dir import ModelFolders

    folders = ModelFolders(models)
    for name, safe in (("softedge_pidinet", False), ("softedge_pidisafe", True)):
        got = np.asarray(preprocess(name, _photo(), folders=folders, device="cpu"))
        assert got.shape == (60, 90, 3) and (got[..., 0] == got[..., 2]).all()
        want = _want(models, _photo(), safe)
        assert np.abs(got[..., 0].astype(int) - want).max() <= 1
        assert (np.abs(got[..., 0].astype(int) - want) > 0).mean() < 0.01
    assert set(np.unique(np.asarray(preprocess("softedge_pidisafe", _photo(), folders=folders)))) <= {0, 127, 255}
    import cv2
    strokes = cv2.GaussianBlur(thin_lines(_want(models, _photo()), 127, 3.0), (0, 0), 3.0)
    got = np.asarray(preprocess("scribble_pidinet", _photo(), folders=folders, device="cpu"))[..., 0]
    assert (got == np.where(strokes > 4, 255, 0)).mean() > 0.99
    got = np.asarray(preprocess("t2ia_sketch_pidi", _photo(), folders=folders, device="cpu"))[..., 0]
    assert (got == np.where(_want(models, _photo()) > 127, 255, 0)).mean() > 0.99 and 0 < (got == 255).mean() < 1


def test_a_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / PD.FILE
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"init_block.weight": Evil()}}, f)
    with pytest.raises(CheckpointError):
        PD.load(path, "cpu")


def test_missing_file_is_named(tmp_path):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match=r"table5_pidinet\.pth is not installed: put it in "
                                              r"models/ControlNetPreprocessor/.*lllyasviel/Annotators"):
        preprocess("softedge_pidinet", _photo(), folders=ModelFolders(tmp_path / "empty"))
    with pytest.raises(InvalidArgument, match=r"unit: softedge_pidisafe: table5_pidinet\.pth is not installed"):
        AC._weights("softedge_pidisafe", ModelFolders(tmp_path / "empty"), "unit")


def test_a1111_modules_are_exact_and_sized(models):
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    for module, pre in (("softedge_pidinet", "softedge_pidinet"), ("pidinet", "softedge_pidinet"),
                        ("softedge_pidisafe", "softedge_pidisafe"), ("pidinet_safe", "softedge_pidisafe"),
                        ("scribble_pidinet", "scribble_pidinet"), ("pidinet_scribble", "scribble_pidinet"),
                        ("t2ia_sketch_pidi", "t2ia_sketch_pidi"), ("pidinet_sketch", "t2ia_sketch_pidi")):
        assert AC.MODULES[module] == (pre, True)
        req = SimpleNamespace(alwayson_scripts={"controlnet": {"args": [{"module": module}]}})
        assert AC.unsupported(req) == []  # no longer listed as approximated
    weights = AC._weights("softedge_pidinet", ModelFolders(models), "unit")
    assert weights.endswith(PD.FILE)
    for pre in ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet", "t2ia_sketch_pidi"):
        assert AC.preprocess_image(_photo(), pre, 64, -1, -1, 10**7, weights).size == (96, 64)


@pytest.mark.parametrize("node", ["PiDiNetPreprocessor", "Scribble_PiDiNet_Preprocessor"])
def test_comfyui_nodes_make_the_requested_size(models, tmp_path, node):
    from preprocessor_graphs import node_ctx, run_node

    from opensd.workflows.nodes_preprocessors import AIO_NAMES, NODES

    assert NODES[node].optional["safe"] == (["enable", "disable"], {"default": "enable"})
    assert NODES[node].category == "ControlNet Preprocessors/Line Extractors" and node in AIO_NAMES
    out = run_node(node_ctx(models, tmp_path, _photo()), node, safe="disable", resolution=128)
    assert out.shape == (128, 192, 3)
    (tmp_path / "aio").mkdir()
    out = run_node(node_ctx(models, tmp_path / "aio", _photo()), "AIO_Preprocessor", preprocessor=node, resolution=64)
    assert out.shape == (64, 96, 3)


def test_pidinet_node_equals_the_preprocessor_at_its_resolution(models, tmp_path):
    from preprocessor_graphs import node_ctx, run_node

    from opensd.adapters.preprocessors import fit_image, preprocess
    from opensd.library.models_dir import ModelFolders

    got = run_node(node_ctx(models, tmp_path, _photo()), "PiDiNetPreprocessor", safe="enable", resolution=128)
    want = np.asarray(preprocess("softedge_pidisafe", fit_image(_photo(), 192, 128), folders=ModelFolders(models)))
    assert np.abs(got.astype(int) - want).max() <= 1


def test_cli_preprocess(models, tmp_path, capsys):
    from opensd.cli import main

    src, out = tmp_path / "in.png", tmp_path / "edges.png"
    _photo().save(src)
    for kind in ("softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"):
        assert main(["preprocess", kind, str(src), "-o", str(out), "--models-dir", str(models)]) == 0
        assert Image.open(out).size == (90, 60)
    (tmp_path / "bare").mkdir()
    assert main(["preprocess", "softedge_pidinet", str(src), "-o", str(out), "--models-dir", str(tmp_path / "bare")]) == 2
    assert "table5_pidinet.pth is not installed" in capsys.readouterr().err
