"""ComfyUI's mask nodes (and LoadImageMask, ImageCompositeMasked), each against hand-computed or
independently computed results."""
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image

from opensd.workflows import nodes_mask as M


def test_load_image_mask_reads_a_channel_and_inverts_alpha(tmp_path):
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0] = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20  # red
    rgba[..., 3] = 51  # alpha 0.2
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "rgb.png")
    call = SimpleNamespace(ctx=SimpleNamespace(inputs_dir=tmp_path))
    (alpha,) = M.load_image_mask(call, "m.png", "alpha")
    assert alpha.shape == (1, 3, 4) and torch.allclose(alpha, torch.full((1, 3, 4), 0.8))
    (red,) = M.load_image_mask(call, "m.png", "red")
    assert torch.allclose(red[0], torch.arange(12.0).reshape(3, 4) * 20 / 255)
    (opaque,) = M.load_image_mask(call, "rgb.png", "alpha")  # no alpha: opaque, nothing masked
    assert opaque.eq(0).all()


def test_mask_image_conversions_solid_invert_crop():
    mask = torch.rand(2, 3, 5, generator=torch.Generator().manual_seed(0))
    (img,) = M.mask_to_image(None, mask)
    assert img.shape == (2, 3, 5, 3) and all(torch.equal(img[..., c], mask) for c in range(3))
    rgba = torch.rand(1, 3, 5, 4)
    (a,) = M.image_to_mask(None, rgba, "alpha")
    (g,) = M.image_to_mask(None, rgba, "green")
    assert torch.equal(a, rgba[..., 3]) and torch.equal(g, rgba[..., 1])
    (solid,) = M.solid_mask(None, 0.25, 7, 3)
    assert solid.shape == (1, 3, 7) and solid.eq(0.25).all()
    (inv,) = M.invert_mask(None, mask)
    assert torch.equal(inv, 1 - mask)
    (crop,) = M.crop_mask(None, mask[0], 1, 2, 3, 9)  # a lone (H, W) mask; height runs off the end
    assert torch.equal(crop, mask[:1, 2:, 1:4])


def test_mask_composite_operations_clip_at_the_edge_and_clamp():
    dest = torch.full((1, 4, 4), 0.6)
    src = torch.full((1, 3, 3), 0.7)
    (mul,) = M.mask_composite(None, dest, src, 2, 1, "multiply")
    expect = torch.full((1, 4, 4), 0.6)
    expect[:, 1:4, 2:4] = 0.42
    assert torch.allclose(mul, expect)
    (add,) = M.mask_composite(None, dest, src, 0, 0, "add")
    assert add[0, :3, :3].eq(1.0).all() and add[0, 3].eq(0.6).all()  # 1.3 clamped to 1
    (sub,) = M.mask_composite(None, dest, src, 0, 0, "subtract")
    assert sub[0, :3, :3].eq(0.0).all()  # -0.1 clamped to 0
    low = torch.full((1, 3, 3), 0.4)  # rounds to 0
    assert M.mask_composite(None, dest, low, 0, 0, "and")[0][0, :3, :3].eq(0).all()
    assert M.mask_composite(None, dest, low, 0, 0, "or")[0][0, :3, :3].eq(1).all()
    assert M.mask_composite(None, dest, src, 0, 0, "xor")[0][0, :3, :3].eq(0).all()


def _grey_morph_reference(m: np.ndarray, grow: bool, tapered: bool) -> np.ndarray:
    """Max (grow) / min over the 3x3 square or cross around each pixel, the border pixel repeated."""
    h, w = m.shape
    out = np.empty_like(m)
    for i in range(h):
        for j in range(w):
            vals = [m[min(max(i + dy, 0), h - 1), min(max(j + dx, 0), w - 1)]
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1) if not (tapered and dy and dx)]
            out[i, j] = max(vals) if grow else min(vals)
    return out


def test_grow_mask_is_grey_dilation_and_erosion():
    dot = torch.zeros(1, 7, 7)
    dot[0, 3, 3] = 1
    (cross,) = M.grow_mask(None, dot, 1, True)
    assert int(cross.sum()) == 5 and cross[0, 2:5, 3].eq(1).all() and cross[0, 2, 2] == 0
    (square,) = M.grow_mask(None, dot, 1, False)
    assert int(square.sum()) == 9 and square[0, 2:5, 2:5].eq(1).all()
    (diamond,) = M.grow_mask(None, dot, 2, True)
    assert int(diamond.sum()) == 13
    (back,) = M.grow_mask(None, square, -1, False)
    assert torch.equal(back, dot)
    grey = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(4))
    for expand, tapered in [(2, True), (1, False), (-2, True), (-1, False)]:
        (out,) = M.grow_mask(None, grey, expand, tapered)
        for b in range(2):
            ref = grey[b].numpy()
            for _ in range(abs(expand)):
                ref = _grey_morph_reference(ref, expand > 0, tapered)
            np.testing.assert_array_equal(out[b].numpy(), ref)
    (same,) = M.grow_mask(None, grey[0], 0, True)
    assert torch.equal(same, grey[:1])


def test_feather_mask_ramps_including_comfyuis_index_zero_quirk():
    (out,) = M.feather_mask(None, torch.ones(1, 4, 6), 2, 0, 3, 0)
    # left ramp: col 0 x 1/2, col 1 x 1; right ramp over i = 0..2 hits columns -0 (= col 0!), -1, -2
    cols = torch.tensor([0.5 / 3, 1.0, 1.0, 1.0, 1.0, 2 / 3])
    assert torch.allclose(out[0], cols.expand(4, 6))
    (out,) = M.feather_mask(None, torch.ones(1, 5, 3), 0, 2, 0, 9)  # bottom clipped to the height, 5
    rows = torch.tensor([0.5 * 1 / 5, 1.0, 4 / 5, 3 / 5, 2 / 5])
    assert torch.allclose(out[0], rows[:, None].expand(5, 3))


def test_image_composite_masked_pastes_at_pixel_offsets():
    dest = torch.zeros(1, 6, 6, 3)
    src = torch.ones(1, 4, 4, 3)
    mask = torch.zeros(1, 4, 4)
    mask[:, :, :2] = 1
    (out,) = M.image_composite_masked(None, dest, src, 3, 1, False, mask)
    expect = torch.zeros(1, 6, 6, 3)
    expect[:, 1:5, 3:5] = 1  # mask's left two columns, starting at x=3
    assert torch.equal(out, expect) and dest.eq(0).all()
    (rgba,) = M.image_composite_masked(None, dest, torch.ones(1, 2, 2, 4), 0, 0, False)  # RGB <- RGBA
    assert rgba.shape == (1, 6, 6, 3) and rgba[0, :2, :2].eq(1).all()
    (padded,) = M.image_composite_masked(None, torch.zeros(1, 6, 6, 4), src, 0, 0, True)  # RGBA <- RGB
    assert padded.shape == (1, 6, 6, 4) and padded.eq(1).all()  # the pasted source is opaque


def test_threshold_mask_keeps_what_lies_strictly_above():
    mask = torch.tensor([[[0.0, 0.5, 0.51], [1.0, 0.49, 0.7]]])
    (out,) = M.threshold_mask(None, mask, 0.5)
    assert torch.equal(out, torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 1.0]]]))
    assert torch.equal(M.threshold_mask(None, mask, 0.0)[0], (mask != 0).float())
