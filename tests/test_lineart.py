"""Learned line-art nets (adapters/lineart.py): each equals a reference forward written here with plain
torch ops from the published architectures (informative-drawings generator, pix2pix U-Net) on tiny
random weights; the real files' key names and shapes (built on the meta device from the original
modules' definitions, listed here); the restricted unpickler; the preprocessors, A1111 modules and
ComfyUI nodes, and a missing file's message."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from opensd.adapters import lineart as L
from opensd.errors import CheckpointError, InvalidArgument


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net.eval()


def _inorm(x):
    return F.instance_norm(x, eps=1e-5)


def _conv(x, sd, name, **kw):
    return F.conv2d(x, sd[name + ".weight"], sd.get(name + ".bias"), **kw)


def _convt(x, sd, name, **kw):
    return F.conv_transpose2d(x, sd[name + ".weight"], sd.get(name + ".bias"), **kw)


def sketch_reference(sd, x, n_blocks=3):
    """Informative drawings: reflect-pad 3, conv7 -> IN -> ReLU; 2 x (conv3 s2 p1 -> IN -> ReLU); residual
    blocks (reflect 1, conv3, IN, ReLU, reflect 1, conv3, IN, plus the input); 2 x (convT3 s2 p1 op1 ->
    IN -> ReLU); reflect 3, conv7, sigmoid."""
    h = F.relu(_inorm(_conv(F.pad(x, (3,) * 4, mode="reflect"), sd, "model0.1")))
    for i in (0, 3):
        h = F.relu(_inorm(_conv(h, sd, f"model1.{i}", stride=2, padding=1)))
    for b in range(n_blocks):
        r = F.relu(_inorm(_conv(F.pad(h, (1,) * 4, mode="reflect"), sd, f"model2.{b}.conv_block.1")))
        h = h + _inorm(_conv(F.pad(r, (1,) * 4, mode="reflect"), sd, f"model2.{b}.conv_block.5"))
    for i in (0, 3):
        h = F.relu(_inorm(_convt(h, sd, f"model3.{i}", stride=2, padding=1, output_padding=1)))
    return torch.sigmoid(_conv(F.pad(h, (3,) * 4, mode="reflect"), sd, "model4.1"))


def unet_reference(sd, x, levels=8):
    """pix2pix U-Net, recursively: level k's down conv (4, s2, p1) after LeakyReLU 0.2 (none on the
    outermost), IN (not on the outer/innermost), the inner levels, ReLU, up convT (4, s2, p1), IN (tanh on
    the outermost); all but the outermost concatenate their input in front of their output."""
    def level(h, prefix, depth):
        outer, inner = depth == 0, depth == levels - 1
        d = h if outer else F.leaky_relu(h, 0.2)
        d = _conv(d, sd, prefix + (".model.0" if outer else ".model.1"), stride=2, padding=1)
        if inner:
            u = _inorm(_convt(F.relu(d), sd, prefix + ".model.3", stride=2, padding=1))
        elif outer:
            u = torch.tanh(_convt(F.relu(level(d, prefix + ".model.1", 1)), sd, prefix + ".model.3",
                                  stride=2, padding=1))
        else:
            sub = level(_inorm(d), prefix + ".model.3", depth + 1)
            u = _inorm(_convt(F.relu(sub), sd, prefix + ".model.5", stride=2, padding=1))
        return u if outer else torch.cat([h, u], 1)
    return level(x, "model", 0)


def test_sketch_generator_equals_the_reference_forward():
    net = _randomise(L.SketchGenerator(base=8))
    x = torch.rand(2, 3, 24, 20)
    sd = net.state_dict()
    assert torch.allclose(net(x), sketch_reference(sd, x), atol=1e-5)


def test_anime_unet_equals_the_reference_forward():
    net = _randomise(L.AnimeGenerator(levels=6, base=4), seed=1)
    x = torch.rand(1, 3, 64, 128) * 2 - 1
    assert torch.allclose(net(x), unet_reference(net.state_dict(), x, levels=6), atol=1e-5)


def _sketch_keys(n_blocks=3):
    """sk_model.pth / sk_model2.pth: Generator(3, 1, 3) of the original (convs only; IN has no weights)."""
    keys = {"model0.1": (64, 3, 7, 7), "model1.0": (128, 64, 3, 3), "model1.3": (256, 128, 3, 3),
            "model3.0": (256, 128, 3, 3), "model3.3": (128, 64, 3, 3), "model4.1": (1, 64, 7, 7)}
    for b in range(n_blocks):
        keys |= {f"model2.{b}.conv_block.1": (256, 256, 3, 3), f"model2.{b}.conv_block.5": (256, 256, 3, 3)}
    return {f"{k}.weight": v for k, v in keys.items()} | {f"{k}.bias": (v[1] if k.startswith("model3") else v[0],)
                                                        for k, v in keys.items()}


def _unet_keys():
    """netG.pth: UnetGenerator(3, 1, 8, 64, InstanceNorm) — bias on every conv (instance norm)."""
    chans = [(1, 64, 3), (64, 128, None), (128, 256, None), (256, 512, None)] + [(512, 512, None)] * 4
    keys, prefix = {}, "model"
    for depth, (outer, inner, cin) in enumerate(chans):
        kind = "outer" if depth == 0 else "inner" if depth == len(chans) - 1 else "mid"
        down, sub, up = {"outer": (0, 1, 3), "inner": (1, None, 3), "mid": (1, 3, 5)}[kind]
        keys[f"{prefix}.model.{down}.weight"] = (inner, cin or outer, 4, 4)
        keys[f"{prefix}.model.{down}.bias"] = (inner,)
        keys[f"{prefix}.model.{up}.weight"] = (inner if kind == "inner" else inner * 2, outer, 4, 4)
        keys[f"{prefix}.model.{up}.bias"] = (outer,)
        prefix = f"{prefix}.model.{sub}"
    return keys


@pytest.mark.parametrize("kind", ["realistic", "anime"])
def test_full_size_keys_and_shapes_on_meta(kind):
    with torch.device("meta"):
        net = L.AnimeGenerator() if kind == "anime" else L.SketchGenerator()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert got == (_unet_keys() if kind == "anime" else _sketch_keys())


def _save(net, path, prefix=""):
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)


@pytest.fixture()
def models(tmp_path):
    """A models folder with tiny-valued full-architecture files (random weights)."""
    root = tmp_path / "models" / "ControlNetPreprocessor"
    root.mkdir(parents=True)
    _save(_randomise(L.SketchGenerator()), root / "sk_model.pth")
    _save(_randomise(L.SketchGenerator(), seed=2), root / "sk_model2.pth")
    _save(_randomise(L.AnimeGenerator(), seed=3), root / "netG.pth", prefix="module.")
    return tmp_path / "models"


def _photo(w=90, h=60):
    im = Image.new("RGB", (w, h), (200, 190, 180))
    ImageDraw.Draw(im).ellipse([20, 10, 70, 50], fill=(30, 40, 60))
    return im


def test_files_load_through_the_restricted_unpickler_and_run(models):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders

    folders = ModelFolders(models)
    for name in ("lineart_realistic", "lineart_coarse", "lineart_anime"):
        out = preprocess(name, _photo(), folders=folders, device="cpu")
        assert out.size == (90, 60) and out.mode == "RGB"
    # the loaded net is the file's: the realistic map equals the reference forward's, inverted
    net = L.load(models / "ControlNetPreprocessor" / "sk_model.pth", "realistic", "cpu")
    x = torch.from_numpy(np.pad(np.asarray(_photo()), ((0, 4), (0, 38), (0, 0)), mode="edge")).float() / 255
    ref = sketch_reference(net.state_dict(), x.permute(2, 0, 1)[None])[0, 0, :60, :90]
    want = 255 - (ref * 255).clamp(0, 255).numpy().astype(np.uint8)
    got = np.asarray(preprocess("lineart_realistic", _photo(), folders=folders, device="cpu"))[..., 0]
    assert np.abs(got.astype(int) - want).max() <= 1


def test_a_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "sk_model.pth"
    with open(path, "wb") as f:
        pickle.dump({"model0.1.weight": Evil()}, f)
    with pytest.raises(CheckpointError):
        L.load(path, "realistic", "cpu")


def test_wrong_file_and_missing_file_are_named(tmp_path, models):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders

    with pytest.raises(CheckpointError, match=r"not the anime line-art model \(netG\.pth\): missing"):
        L.build(L.SketchGenerator().state_dict(), "anime")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match=r"sk_model2\.pth is not installed: put it in "
                                              r"models/ControlNetPreprocessor/.*lllyasviel/Annotators"):
        preprocess("lineart_coarse", _photo(), folders=ModelFolders(tmp_path / "empty"))


def test_a1111_modules_use_the_learned_nets(models):
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    for module, pre in (("lineart_realistic", "lineart_realistic"), ("lineart_coarse", "lineart_coarse"),
                        ("lineart_anime", "lineart_anime")):
        name, exact = AC.MODULES[module]
        assert (name, exact) == (pre, True)
        weights = AC._weights(name, ModelFolders(models), "unit")
        assert weights.endswith(L.FILES[pre.split("_")[1]])
        out = AC.preprocess_image(_photo(), name, 64, -1, -1, 10**7, weights)
        assert out.size == (96, 64)
    (models.parent / "nothing").mkdir()
    with pytest.raises(InvalidArgument, match=r"unit: lineart_anime: netG\.pth is not installed"):
        AC._weights("lineart_anime", ModelFolders(models.parent / "nothing"), "unit")


@pytest.mark.parametrize("node,inputs", [("LineArtPreprocessor", {"coarse": "enable"}),
                                         ("AnimeLineArtPreprocessor", {})])
def test_comfyui_nodes_make_the_requested_size(models, tmp_path, node, inputs):
    from preprocessor_graphs import node_ctx, run_node

    out = run_node(node_ctx(models, tmp_path, _photo()), node, resolution=128, **inputs)
    assert out.shape == (128, 192, 3)


def test_cli_preprocess_finds_the_file_or_names_it(models, tmp_path, capsys):
    from opensd.cli import main

    src, out = tmp_path / "in.png", tmp_path / "lines.png"
    _photo().save(src)
    assert main(["preprocess", "lineart_coarse", str(src), "-o", str(out), "--models-dir", str(models)]) == 0
    assert Image.open(out).size == (90, 60)
    (tmp_path / "bare").mkdir()
    assert main(["preprocess", "lineart_anime", str(src), "-o", str(out), "--models-dir", str(tmp_path / "bare")]) == 2
    assert "netG.pth is not installed" in capsys.readouterr().err
