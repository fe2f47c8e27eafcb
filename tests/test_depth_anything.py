"""Depth Anything V2: our model against transformers' DepthAnythingForDepthEstimation on the same
random weights, both file layouts, the three released sizes' key sets on the meta device, and the
preprocessor faces (function, ComfyUI node, A1111 module) with a missing file's error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from opensd.adapters import depth_anything as DA
from opensd.adapters import depth_anything_files as DAF
from opensd.adapters import preprocessor_files as PF

transformers = pytest.importorskip("transformers")

TINY = DA.DepthConfig(dim=32, depth=4, heads=2, features=16, out_channels=(8, 16, 32, 32), taps=(0, 1, 2, 3), grid=4)


def _hf_config(dim, depth, heads, features, out_channels, taps, grid):
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                            intermediate_size=4 * dim, image_size=grid * 14, patch_size=14,
                            out_indices=[t + 1 for t in taps], apply_layernorm=True, reshape_hidden_states=False,
                            layerscale_value=1.0)
    return DepthAnythingConfig(backbone_config=backbone, fusion_hidden_size=features, neck_hidden_sizes=list(out_channels),
                               reassemble_hidden_size=dim, head_hidden_size=32)


def _hf_tiny(seed=0):
    from transformers import DepthAnythingForDepthEstimation

    torch.manual_seed(seed)
    ref = DepthAnythingForDepthEstimation(_hf_config(TINY.dim, TINY.depth, TINY.heads, TINY.features,
                                                     TINY.out_channels, TINY.taps, TINY.grid)).eval()
    with torch.no_grad():  # random everything, not transformers' init (layer scales 1, zero biases)
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return ref


def _ours(ref) -> DA.DepthAnythingV2:
    sd = DAF.to_authors_layout(ref.state_dict())
    net = DA.DepthAnythingV2(TINY)
    net.load_state_dict(sd, strict=True)
    return net.eval()


def _original_pos_interpolation(self, embeddings, height, width):
    """DINOv2's own resize of the position grid (scale factor (n + 0.1) / grid), which the released
    weights were made with; transformers resizes to the size instead, a slightly different grid."""
    pos = self.position_embeddings
    g = int((pos.shape[1] - 1) ** 0.5)
    rows, cols = height // 14, width // 14
    if rows == cols == g:
        return pos
    grid = pos[:, 1:].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=((rows + 0.1) / g, (cols + 0.1) / g), mode="bicubic")
    return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)], dim=1)


def test_matches_transformers_at_the_native_grid():
    ref = _hf_tiny()
    net = _ours(ref)
    x = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        want = ref(pixel_values=x).predicted_depth
        got = net(x)
    assert got.shape == want.shape == (2, 56, 56)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size", [(42, 70), (84, 56)])
def test_matches_transformers_on_other_grids(size, monkeypatch):
    """Non-square inputs: rows and columns kept apart through every reshape (the position grid resized
    the original DINOv2 way on both sides)."""
    ref = _hf_tiny(1)
    monkeypatch.setattr(type(ref.backbone.embeddings), "interpolate_pos_encoding", _original_pos_interpolation)
    net = _ours(ref)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        want = ref(pixel_values=x).predicted_depth
        got = net(x)
    assert got.shape == (1, *size)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _hub_names(sd):
    """transformers' layout as the "-hf" hub files spell it (transformers 5 renames on load)."""
    out = {}
    for k, v in sd.items():
        for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                         ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense")):
            k = k.replace(new, old)
        out[k] = v
    return out


@pytest.fixture
def tiny_variant(monkeypatch):
    monkeypatch.setitem(DA.VARIANTS, "tiny", TINY)


@pytest.mark.parametrize("layout", ["authors_pth", "authors_fp16_safetensors", "hf_safetensors", "hf_hub_names"])
def test_files_of_each_layout_load_to_the_same_model(layout, tiny_variant, tmp_path):
    from opensd.checkpoints.files import save_safetensors

    ref = _hf_tiny(2)
    authors = DAF.to_authors_layout(ref.state_dict())
    if layout == "authors_pth":
        path = tmp_path / "depth_anything_v2_vits.pth"
        torch.save(authors, path)
    elif layout == "authors_fp16_safetensors":
        path = tmp_path / "depth_anything_v2_vits_fp16.safetensors"
        save_safetensors({k: v.half() for k, v in authors.items()}, path)
    else:
        path = tmp_path / "model.safetensors"
        sd = ref.state_dict() if layout == "hf_safetensors" else _hub_names(ref.state_dict())
        save_safetensors({k: v.contiguous() for k, v in sd.items()}, path)
    net = DAF.load_depth_anything(path, "cpu")
    assert net.cfg == TINY
    if "fp16" in layout:  # the file's values, read into fp32
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.half().float())
    x = torch.randn(1, 3, 56, 42)
    with torch.no_grad():
        torch.testing.assert_close(net(x), _ours(ref)(x), rtol=1e-5, atol=1e-5)


def test_a_pickle_with_code_is_refused(tmp_path):
    import os
    import pickle

    from opensd.errors import CheckpointError

    class Boom:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    path = tmp_path / "depth_anything_v2_vits.pth"
    path.write_bytes(pickle.dumps({"pretrained.pos_embed": Boom()}))
    with pytest.raises(CheckpointError):
        DAF.load_depth_anything(path, "cpu")


@pytest.mark.parametrize("name", ["vits", "vitb", "vitl"])
def test_full_size_keys_and_shapes_match_transformers_on_meta(name):
    """Each released size: transformers' model of that size (its published config), converted to our
    names, is detected as that size and has exactly our keys and shapes."""
    from transformers import DepthAnythingForDepthEstimation

    cfg = DA.VARIANTS[name]
    with torch.device("meta"):
        ref = DepthAnythingForDepthEstimation(_hf_config(cfg.dim, cfg.depth, cfg.heads, cfg.features,
                                                         cfg.out_channels, cfg.taps, cfg.grid))
        ours = DA.DepthAnythingV2(cfg)
    sd = DAF.to_authors_layout(ref.state_dict())
    assert DAF.detect_variant(sd) == name
    want = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in sd.items()} == want
    assert want["pretrained.pos_embed"] == (1, 1370, cfg.dim)
    params = sum(v.numel() for v in ours.state_dict().values())
    assert {"vits": 24.8e6, "vitb": 97.5e6, "vitl": 335.3e6}[name] == pytest.approx(params, rel=0.01)


def test_wrong_files_are_named():
    from opensd.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a Depth Anything V2 model"):
        DAF.build({"model.diffusion_model.x": torch.zeros(1)})
    with torch.device("meta"):
        sd = DA.DepthAnythingV2(DA.VARIANTS["vits"]).state_dict()
    del sd["depth_head.scratch.output_conv1.weight"]
    with pytest.raises(CheckpointError, match="missing depth_head.scratch.output_conv1.weight"):
        DAF.build(sd)


# --- the faces: preprocess(), the ComfyUI node, the A1111 module ---------------------------------

def test_input_size_follows_the_authors_lower_bound_resize():
    assert DA.input_size(518, 518) == (518, 518)
    assert DA.input_size(1000, 1000) == (518, 518)
    assert DA.input_size(400, 600) == (518, 784)     # 777 -> 55.5 patches rounds to 56
    assert DA.input_size(600, 400) == (784, 518)
    assert DA.input_size(300, 301) == (518, 518)     # 519.7 rounds to 518, not below
    assert DA.input_size(100, 7) == (7406, 518)
    from opensd.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="7x100 is too long and thin .* at most 12 times"):
        DA.estimate_depth(DA.DepthAnythingV2(TINY), np.zeros((100, 7, 3), np.uint8))


@pytest.fixture
def tiny_file(tiny_variant, tmp_path):
    """A models folder holding a tiny random model under controlnet_aux's vitl name."""
    folder = tmp_path / "models" / "ControlNetPreprocessor" / "depth-anything"
    folder.mkdir(parents=True)
    sd = DAF.to_authors_layout(_hf_tiny(3).state_dict())
    # a map above the final ReLU everywhere, not zeros where the random weights' large values go negative
    sd["depth_head.scratch.output_conv2.2.weight"] *= 1e-3
    sd["depth_head.scratch.output_conv2.2.bias"] += 5.0
    torch.save(sd, folder / "depth_anything_v2_vitl.pth")
    PF._network.clear()
    return tmp_path / "models"


def _photo(w=90, h=60):
    g = np.random.default_rng(0)
    return Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_preprocess_gives_the_normalised_depth_near_bright(tiny_file):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders

    image = _photo()
    out = preprocess("depth_anything_v2", image, folders=ModelFolders(tiny_file))
    assert out.size == image.size and out.mode == "RGB"
    grey = np.asarray(out)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    # the network's own output, resized back: largest (nearest) is white, smallest black
    net = DAF.load_depth_anything(tiny_file / "ControlNetPreprocessor" / "depth-anything" / "depth_anything_v2_vitl.pth")
    import cv2
    # 90x60 -> short side 518; the long side's 777 is 55.5 patches, rounded to 56
    x = cv2.resize(np.asarray(image, np.float32) / 255.0, (784, 518), interpolation=cv2.INTER_CUBIC)
    x = (x - np.array(DA.MEAN, np.float32)) / np.array(DA.STD, np.float32)
    with torch.no_grad():
        raw = net(torch.from_numpy(x.transpose(2, 0, 1).copy())[None])[:, None]
    raw = torch.nn.functional.interpolate(raw, (60, 90), mode="bilinear", align_corners=True)[0, 0].numpy()
    want = np.round((raw - raw.min()) / (raw.max() - raw.min()) * 255)
    assert np.abs(grey[..., 0].astype(float) - want).max() <= 1
    assert grey.max() == 255 and grey.min() == 0


def test_missing_weights_name_the_folder_and_file(tmp_path):
    from opensd.adapters.preprocessors import preprocess
    from opensd.errors import InvalidArgument
    from opensd.library.models_dir import ModelFolders

    (tmp_path / "models").mkdir()
    with pytest.raises(InvalidArgument, match=r"depth_anything_v2_vitl\.pth is not installed: put it in "
                                              r"models/ControlNetPreprocessor/.*Depth-Anything-V2-Large"):
        preprocess("depth_anything_v2", _photo(), folders=ModelFolders(tmp_path / "models"))
    with pytest.raises(InvalidArgument, match=r"depth_anything_v2_vits\.pth is not installed.*V2-Small"):
        DAF.find_weights(ModelFolders(tmp_path / "models"), "depth_anything_v2_vits.pth")


def _graph(ckpt="depth_anything_v2_vitl.pth", resolution=64):
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "2": {"class_type": "DepthAnythingV2Preprocessor",
                  "inputs": {"image": ["1", 0], "ckpt_name": ckpt, "resolution": resolution}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "depth"}}}


def _ctx(models, tmp_path):
    from opensd.library.models_dir import ModelFolders
    from opensd.workflows import ExecutionContext

    inputs = tmp_path / "input"
    inputs.mkdir(exist_ok=True)
    _photo().save(inputs / "photo.png")
    return ExecutionContext(folders=ModelFolders(models), load_pipeline=None, outputs_dir=tmp_path / "out",
                            inputs_dir=inputs, device="cpu")


def test_comfyui_node_has_controlnet_aux_inputs_and_makes_the_requested_size(tiny_file, tmp_path):
    from opensd.workflows import execute, object_info

    info = object_info(None, "DepthAnythingV2Preprocessor")["DepthAnythingV2Preprocessor"]
    assert list(info["input"]["required"]) == ["image"]
    names, opts = info["input"]["optional"]["ckpt_name"]
    assert names == ["depth_anything_v2_vitg.pth", "depth_anything_v2_vitl.pth", "depth_anything_v2_vitb.pth",
                     "depth_anything_v2_vits.pth"] and opts["default"] == "depth_anything_v2_vitl.pth"
    assert list(info["input"]["optional"]["resolution"]) == ["INT", {"default": 512, "min": 64, "max": 16384, "step": 64}]
    execute(_graph(resolution=128), _ctx(tiny_file, tmp_path))
    saved = list((tmp_path / "out").rglob("depth*.png"))
    assert len(saved) == 1
    out = Image.open(saved[0])
    assert out.size == (192, 128)  # 90x60 with its short side at 128
    grey = np.asarray(out.convert("RGB"))
    assert grey.max() >= 250 and grey.min() <= 5


def test_comfyui_node_without_the_file_says_where_to_put_it(tmp_path):
    from opensd.workflows import execute

    (tmp_path / "models").mkdir()
    with pytest.raises(Exception, match=r"depth_anything_v2_vitb\.pth is not installed: put it in models/ControlNetPreprocessor/"):
        execute(_graph("depth_anything_v2_vitb.pth"), _ctx(tmp_path / "models", tmp_path))
    (tmp_path / "models" / "depthanything").mkdir()
    (tmp_path / "models" / "depthanything" / "depth_anything_v2_vits_fp16.safetensors").write_bytes(b"")
    with pytest.raises(Exception, match=r"vitb\.pth is not installed \(installed: depth_anything_v2_vits_fp16"):
        execute(_graph("depth_anything_v2_vitb.pth"), _ctx(tmp_path / "models", tmp_path))


def test_a1111_module_depth_anything_v2(tiny_file):
    from opensd.errors import InvalidArgument
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    (tiny_file / "ControlNet").mkdir()
    assert "depth_anything_v2" in AC.module_list()
    assert AC._module("depth_anything_v2", "module") == ("depth_anything_v2", True)
    weights = AC._weights("depth_anything_v2", ModelFolders(tiny_file), "module")
    assert weights.endswith("depth_anything_v2_vitl.pth")
    out = AC.preprocess_image(_photo(), "depth_anything_v2", 96, -1, -1, 1 << 24, weights)
    assert out.size == (144, 96)  # the short side at processor_res
    assert np.asarray(out).max() == 255
    with pytest.raises(InvalidArgument, match="args.module: depth_anything_v2: depth_anything_v2_vitl.pth is not "
                                              "installed: put it in models/ControlNetPreprocessor/"):
        AC._weights("depth_anything_v2", ModelFolders(tiny_file / "ControlNet"), "args.module")


def test_a1111_detect_route(tiny_file, tmp_path):
    """/controlnet/detect with module depth_anything_v2: the map at processor_res; without the file a
    422 naming where to put it."""
    import base64
    import io

    import requests
    from server_live import LiveServer

    from opensd.server.settings import Settings

    buf = io.BytesIO()
    _photo().save(buf, "PNG")
    body = {"controlnet_module": "depth_anything_v2", "controlnet_input_images": [base64.b64encode(buf.getvalue()).decode()],
            "controlnet_processor_res": 64}
    with LiveServer(Settings(models_dir=tiny_file, outputs_dir=tmp_path / "outputs")) as live:
        r = requests.post(f"{live.url}/controlnet/detect", json=body, timeout=60)
        assert r.status_code == 200, r.text
        out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert out.size == (96, 64)
    (tmp_path / "bare").mkdir()
    with LiveServer(Settings(models_dir=tmp_path / "bare", outputs_dir=tmp_path / "outputs2")) as live:
        r = requests.post(f"{live.url}/controlnet/detect", json=body, timeout=60)
        assert r.status_code == 422 and "models/ControlNetPreprocessor/" in r.text, r.text


def test_cli_preprocess_depth_anything_v2(tiny_file, tmp_path, capsys):
    from opensd.cli import main

    src, out = tmp_path / "in.png", tmp_path / "depth.png"
    _photo().save(src)
    assert main(["preprocess", "depth_anything_v2", str(src), "-o", str(out), "--models-dir", str(tiny_file)]) == 0
    assert Image.open(out).size == (90, 60)
    weights = tiny_file / "ControlNetPreprocessor" / "depth-anything" / "depth_anything_v2_vitl.pth"
    assert main(["preprocess", "depth_anything_v2", str(src), "-o", str(out), "--weights", str(weights)]) == 0
    (tmp_path / "bare").mkdir()
    assert main(["preprocess", "depth_anything_v2", str(src), "-o", str(out), "--models-dir", str(tmp_path / "bare")]) == 2
    assert "models/ControlNetPreprocessor/" in capsys.readouterr().err


def test_a1111_unit_weights_cross_the_wire_by_name(tiny_file):
    """A planned unit's preprocessor file travels to a remote worker as its name in the preprocessor
    folders, and is shipped with the job's files."""
    from opensd.distributed import wire
    from opensd.library.models_dir import ModelFolders

    folders = ModelFolders(tiny_file)
    cn = tiny_file / "ControlNet"
    cn.mkdir()
    (cn / "control_depth.safetensors").write_bytes(b"")
    weights = tiny_file / "ControlNetPreprocessor" / "depth-anything" / "depth_anything_v2_vitl.pth"
    unit = {"index": 0, "path": str(cn / "control_depth.safetensors"), "module": "depth_anything_v2",
            "weights": str(weights)}
    sent = wire._unit_to_wire(folders, unit)
    assert sent["weights"] == "depth-anything/depth_anything_v2_vitl.pth" and "path" not in sent
    assert wire._unit_from_wire(folders, sent)["weights"] == str(weights.resolve())


def test_weights_are_found_by_controlnet_aux_names(tmp_path):
    from opensd.library.models_dir import ModelFolders

    root = tmp_path / "models"
    for rel in ("controlnet_aux/depth-anything/Depth-Anything-V2-Small/depth_anything_v2_vits.pth",
                "depthanything/depth_anything_v2_vitl_fp16.safetensors",
                "depthanything/depth_anything_v2_vitl_fp32.safetensors",
                "ControlNetPreprocessor/depth_anything_v2_vitb.safetensors"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    folders = ModelFolders(root)
    assert DAF.find_weights(folders, "depth_anything_v2_vits.pth").name == "depth_anything_v2_vits.pth"
    assert DAF.find_weights(folders, "depth_anything_v2_vitb.pth").name == "depth_anything_v2_vitb.safetensors"
    assert DAF.find_weights(folders, "depth_anything_v2_vitl.pth").name == "depth_anything_v2_vitl_fp32.safetensors"
    assert DAF.installed_weights(folders).name == "depth_anything_v2_vitl_fp32.safetensors"
