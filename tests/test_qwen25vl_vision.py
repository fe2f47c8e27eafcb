"""Qwen2.5-VL's vision tower (models/qwen25vl_vision) equals transformers'
Qwen2_5_VisionTransformerPretrainedModel on tiny random weights: images of several sizes (windows cut
short at the edges, a two-frame clip), full-attention layers at the config's indexes; the still-image
2-D patch embedding equals the Conv3d over the frame repeated; the full-size key table maps on meta."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

from opensd.models.qwen25vl_vision import QWEN25_VL_7B_VISION, QwenVisionConfig, QwenVisionTower

TINY = QwenVisionConfig(depth=4, hidden_size=32, intermediate_size=48, num_heads=2, patch_size=4,
                        window_size=16, out_hidden_size=24, fullatt_block_indexes=(1, 3))


def hf_vision(cfg: QwenVisionConfig = TINY, seed: int = 0) -> Qwen2_5_VisionTransformerPretrainedModel:
    hf_cfg = Qwen2_5_VLVisionConfig(
        depth=cfg.depth, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_heads=cfg.num_heads,
        patch_size=cfg.patch_size, window_size=cfg.window_size, out_hidden_size=cfg.out_hidden_size,
        fullatt_block_indexes=list(cfg.fullatt_block_indexes), temporal_patch_size=cfg.temporal_patch_size,
        spatial_merge_size=cfg.spatial_merge_size)
    hf_cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    ref = Qwen2_5_VisionTransformerPretrainedModel(hf_cfg)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(1 + 0.3 * torch.randn_like(p) if "norm" in name or "ln_q" in name else 0.2 * torch.randn_like(p))
    return ref.eval()


@pytest.fixture(scope="module")
def pair():
    ref = hf_vision()
    ours = QwenVisionTower(TINY).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


GRIDS = [(1, 6, 10), (1, 8, 4), (2, 4, 6), (1, 2, 2), (1, 12, 8)]


@pytest.mark.parametrize("grids", [GRIDS[:1], GRIDS[1:3], GRIDS])
def test_equal_to_transformers(pair, grids):
    ref, ours = pair
    n = sum(t * h * w for t, h, w in grids)
    g = torch.Generator().manual_seed(len(grids))
    patches = torch.randn(n, TINY.patch_values, generator=g)
    grid = torch.tensor(grids)
    with torch.no_grad():
        want = ref(patches, grid_thw=grid).pooler_output
        got = ours(patches, grid)
    assert got.shape == (n // 4, TINY.out_hidden_size)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_window_layers_matter(pair):
    """A model whose every layer attends to the whole image differs: the windows are in use."""
    ref, ours = pair
    full = QwenVisionTower(QwenVisionConfig(**{**TINY.__dict__, "fullatt_block_indexes": (0, 1, 2, 3)})).eval()
    full.load_state_dict(ours.state_dict())
    patches = torch.randn(96, TINY.patch_values)
    with torch.no_grad():
        assert not torch.allclose(full(patches, [(1, 8, 12)]), ours(patches, [(1, 8, 12)]), atol=1e-3)


def test_still_image_is_the_frame_twice(pair):
    """The processor repeats a still image over the kernel's 2 frames; embedding one frame with the
    kernel summed over time gives the same."""
    _, ours = pair
    c, p = TINY.in_channels, TINY.patch_size
    frame = torch.randn(60, c, 1, p, p)
    twice = frame.expand(60, c, 2, p, p).reshape(60, -1)
    with torch.no_grad():
        torch.testing.assert_close(ours(frame.reshape(60, -1), [(1, 6, 10)], still=True), ours(twice, [(1, 6, 10)]),
                                   atol=1e-5, rtol=1e-5)


def test_bad_grids(pair):
    _, ours = pair
    with pytest.raises(ValueError, match="multiples"):
        ours(torch.randn(15, TINY.patch_values), [(1, 3, 5)])
    with pytest.raises(ValueError, match="patches for grids"):
        ours(torch.randn(10, TINY.patch_values), [(1, 2, 2)])


def test_full_size_keys_on_meta():
    """Qwen2.5-VL-7B's vision tower: depth 32, 1280 wide, 16 heads, feed-forward 3420, merged to 3584;
    its keys and shapes as in the released files under visual. (transformers' own model on meta)."""
    hf_cfg = Qwen2_5_VLVisionConfig(hidden_size=1280, out_hidden_size=3584)
    with torch.device("meta"):
        ours = QwenVisionTower(QWEN25_VL_7B_VISION)
        ref = Qwen2_5_VisionTransformerPretrainedModel(hf_cfg)
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert mine == theirs
    assert mine["patch_embed.proj.weight"] == (1280, 3, 2, 14, 14)
    assert mine["merger.mlp.2.weight"] == (3584, 5120)
    assert len([k for k in mine if k.endswith("attn.qkv.weight")]) == 32


def test_file_layouts(pair):
    """ComfyUI's / Qwen's `visual.` and transformers' `model.visual.` read alike; the full-size
    config comes from the shapes; a file without the tower or of another size is refused."""
    from opensd.checkpoints.keymap_qwen25vl import qwen25vl_state_dict
    from opensd.checkpoints.keymap_qwen25vl_vision import (has_qwen25vl_vision, qwen25vl_vision_config,
                                                           qwen25vl_vision_state_dict)
    from opensd.errors import CheckpointError
    ref, ours = pair
    sd = ref.state_dict()
    text = {"model.layers.0.self_attn.k_proj.bias": torch.zeros(2)}
    for head in ("visual.", "model.visual.", "te.visual."):
        pre = "te." if head.startswith("te.") else ""
        whole = {**{pre + k: v for k, v in text.items()}, **{head + k: v for k, v in sd.items()}}
        assert has_qwen25vl_vision(whole, pre)
        got = qwen25vl_vision_state_dict(whole, pre)
        QwenVisionTower(TINY).load_state_dict(got, strict=True)
        assert set(qwen25vl_state_dict(whole, pre)[1]) == {k[len(pre):] for k in whole if "visual." in k}
    with torch.device("meta"):
        full = {"visual." + k: v for k, v in QwenVisionTower().state_dict().items()}
    assert qwen25vl_vision_config(full) == QWEN25_VL_7B_VISION
    with pytest.raises(CheckpointError, match="no Qwen2.5-VL vision tower"):
        qwen25vl_vision_config(text)
    with pytest.raises(CheckpointError, match="not Qwen2.5-VL's layout"):
        qwen25vl_vision_config({"visual." + k: v for k, v in sd.items()})  # 32 wide: not heads of 80
    # damaged files (hostile input): were bare ValueErrors / KeyErrors, which the text encoder's reader
    # does not take for 'a tower opensd cannot build' (left out with a warning)
    with torch.device("meta"):
        tower = QwenVisionTower(replace(TINY, hidden_size=160, num_heads=2))
        fine = {"visual." + k: v for k, v in tower.state_dict().items()}
    for key, value, message in (("visual.patch_embed.proj.weight", torch.zeros(7), r"is \(7,\), not a 3-D patch"),
                                ("visual.merger.mlp.2.weight", None, "an incomplete or damaged vision tower")):
        damaged = {k: v for k, v in fine.items() if k != key} | ({} if value is None else {key: value})
        with pytest.raises(CheckpointError, match=message):
            qwen25vl_vision_config(damaged)
    small = QwenVisionConfig(depth=8, hidden_size=160, num_heads=2, intermediate_size=48, out_hidden_size=24)
    with torch.device("meta"):
        shapes = {"visual." + k: v for k, v in QwenVisionTower(small).state_dict().items()}
    assert qwen25vl_vision_config(shapes) == replace(small, fullatt_block_indexes=(1, 3, 5, 7))
