"""Depth Anything V2: our model against transformers' DepthAnythingForDepthEstimation on the same
random weights, both file layouts, the three released sizes' key sets on the meta device, and the
preprocessor faces (function, ComfyUI node, A1111 module) with a missing file's error."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opensd.adapters import depth_anything as DA
from opensd.adapters import depth_anything_files as DAF

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
