"""The nodes Krita AI Diffusion needs beyond ComfyUI's own (nodes_tooling.py, nodes_inpaint_ops.py,
mask_filters.py, image_cache.py), each against an independent computation: OpenCV's morphology
and filters (BORDER_REFLECT_101 is torch's "reflect", kornia's default border) and numpy."""
from __future__ import annotations

import base64
import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from opensd.errors import InvalidArgument
from opensd.workflows import nodes_inpaint_ops as ops
from opensd.workflows import nodes_tooling as tooling
from opensd.workflows.image_cache import ImageCache


def _mask(seed=0, h=48, w=40) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        y, x = rng.integers(4, h - 8), rng.integers(4, w - 8)
        m[y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = 1.0
    return m


def _t(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(m)[None]


def _gauss_cv(a: np.ndarray, size: int) -> np.ndarray:
    return cv2.GaussianBlur(a, (size, size), 0.3 * (size - 1) + 0.8, borderType=cv2.BORDER_REFLECT_101)


def _dilate_cv(m, r):
    return cv2.dilate(m, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _erode_cv(m, r):
    return cv2.erode(m, np.ones((2 * r + 1, 2 * r + 1), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=1)


def test_expand_mask_is_dilation_then_gaussian_blur():
    m = _mask()
    (out,) = ops.expand_mask(None, _t(m), grow=3, blur=6, blur_type="gaussian")  # blur 6 -> 7
    want = _gauss_cv(_dilate_cv(m, 3), 7)
    assert out.shape == (1, 48, 40)
    assert np.allclose(out[0].numpy(), want, atol=1e-5)


def test_expand_mask_linear_and_box_kernels():
    m = _mask(1)
    h = 4  # size 9: a tent of h steps from 1/h to (h-1)/h, 1, and back
    ramp = np.linspace(1 / h, (h - 1) / h, h)
    tent = np.concatenate([ramp, [1.0], ramp[::-1]]).astype(np.float32)
    tent /= tent.sum()
    (lin,) = ops.expand_mask(None, _t(m), grow=2, blur=8, blur_type="linear")
    want = cv2.sepFilter2D(_dilate_cv(m, 2), -1, tent, tent, borderType=cv2.BORDER_REFLECT_101)
    assert np.allclose(lin[0].numpy(), want, atol=1e-5)
    (box,) = ops.expand_mask(None, _t(m), grow=0, blur=5, blur_type="box")
    assert np.allclose(box[0].numpy(), cv2.blur(m, (5, 5), borderType=cv2.BORDER_REFLECT_101), atol=1e-5)
    (same,) = ops.expand_mask(None, _t(m), grow=0, blur=1, blur_type="gaussian")  # a size under 3: no blur
    assert torch.equal(same[0], torch.from_numpy(m))


def test_shrink_mask_erodes_with_the_outside_set():
    m = _mask(2)
    m[:, :6] = 1.0  # touching the border: stays set there (outside counts as 1)
    (out,) = ops.shrink_mask(None, _t(m), shrink=2, blur=0, blur_type="gaussian")
    assert np.array_equal(out[0].numpy(), _erode_cv(m, 2))
    assert out[0, 20, 0] == 1.0


def test_stabilize_and_compositing_masks():
    m = torch.tensor([[[0.0, 0.5, 0.985, 0.995, 1.0]]])
    assert torch.equal(ops.stabilize_mask(None, m, 0.01)[0], torch.tensor([[[0.0, 0.5, 0.985, 1.0, 1.0]]]))
    (c,) = ops.denoise_to_compositing_mask(None, m, 0.1, 0.2)
    assert torch.allclose(c, ((m - 0.1) / 0.1).clamp(0, 1))
    with pytest.raises(InvalidArgument, match="above offset"):
        ops.denoise_to_compositing_mask(None, m, 0.5, 0.2)


def test_masked_fill_neutral_and_opencv():
    rng = np.random.default_rng(5)
    img = rng.random((1, 40, 40, 3), dtype=np.float32)
    m = np.zeros((40, 40), np.float32)
    m[5:35, 8:36] = 1.0
    (out,) = ops.masked_fill(None, torch.from_numpy(img), _t(m), "neutral", 0)
    alpha = _erode_cv(m, 10)[..., None]
    assert np.allclose(out[0].numpy(), (img[0] - 0.5) * (1 - alpha) + 0.5, atol=1e-6)
    assert np.allclose(out[0].numpy()[alpha[..., 0] > 0], 0.5)  # fully grey inside the eroded area
    (tel,) = ops.masked_fill(None, torch.from_numpy(img), _t(m), "telea", 0)
    want = cv2.inpaint((255 * img[0]).astype(np.uint8), (255 * alpha[..., 0]).astype(np.uint8), 3, cv2.INPAINT_TELEA)
    want = img[0] * (1 - alpha) + want.astype(np.float32) / 255 * alpha
    assert np.allclose(tel[0].numpy(), want, atol=1e-6)


def test_masked_blur_replaces_only_the_masked_area():
    rng = np.random.default_rng(6)
    img = rng.random((1, 32, 36, 3), dtype=np.float32)
    m = np.zeros((32, 36), np.float32)
    m[10:20, 12:30] = 1.0
    (out,) = ops.masked_blur(None, torch.from_numpy(img), _t(m), 10, 0)  # blur 10 -> 11
    blurred = _gauss_cv(img[0], 11)
    want = img[0] + (blurred - img[0]) * m[..., None]
    assert np.allclose(out[0].numpy(), want, atol=1e-5)


def test_inpaint_preprocessor_marks_masked_pixels():
    img = torch.rand(2, 16, 16, 3)
    m = torch.zeros(1, 8, 8)
    m[0, 2:6, 2:6] = 1.0
    (out,) = ops.inpaint_preprocessor(None, img, m)
    marked = torch.nn.functional.interpolate(m[:, None], size=(16, 16), mode="bilinear")[0, 0] > 0.5
    assert torch.all(out[:, marked] == -1.0) and torch.equal(out[:, ~marked], img[:, ~marked])
    (black,) = ops.inpaint_preprocessor(None, img, m, black_pixel_for_xinsir_cn=True)
    assert torch.all(black[:, marked] == 0.0)


def test_color_match_moves_mean_and_spread_outside_the_excluded_area():
    rng = np.random.default_rng(7)
    target = torch.from_numpy(rng.random((1, 20, 20, 3), dtype=np.float32) * 0.4)
    reference = torch.from_numpy(0.3 + rng.random((1, 24, 24, 3), dtype=np.float32) * 0.5)
    (out,) = ops.color_match(None, target, reference, 1.0)
    for a, b in ((out, reference),):
        assert torch.allclose(a.mean(dim=(1, 2)), b.mean(dim=(1, 2)), atol=1e-4)
        assert torch.allclose(a.std(dim=(1, 2), unbiased=False), b.std(dim=(1, 2), unbiased=False), atol=1e-4)
    assert torch.equal(ops.color_match(None, target, reference, 0.0)[0], target)
    excl = torch.zeros(1, 20, 20)
    excl[0, :10] = 1.0
    spoiled = target.clone()
    spoiled[:, :10] = 1.0  # what the excluded area holds does not count
    with pytest.raises(InvalidArgument, match="3 channels for 1 target image"):
        ops.color_match(None, torch.rand(1, 4, 4, 4), reference, 1.0)
    a = ops.color_match(None, spoiled, reference, 1.0, excl)[0][:, 10:]
    b = ops.color_match(None, target, reference, 1.0, excl)[0][:, 10:]
    assert torch.allclose(a, b, atol=1e-6)


def _b64(image: Image.Image, fmt="PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_load_image_base64_alpha_is_the_mask():
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 51
    image, mask = tooling.load_image_base64(None, _b64(Image.fromarray(rgba)))
    assert image.shape == (1, 6, 5, 3) and torch.allclose(image[..., 0], torch.tensor(200 / 255))
    assert torch.allclose(mask, torch.full((1, 6, 5), 0.2))
    _, opaque = tooling.load_image_base64(None, "data:image/png;base64," + _b64(Image.new("RGB", (3, 2))))
    assert torch.equal(opaque, torch.ones(1, 2, 3))


def test_load_mask_base64_grey_or_red():
    grey = Image.fromarray(np.array([[0, 255], [128, 64]], np.uint8))
    (m,) = tooling.load_mask_base64(None, _b64(grey))
    assert torch.allclose(m, torch.tensor([[[0, 1], [128 / 255, 64 / 255]]]))
    (red,) = tooling.load_mask_base64(None, _b64(Image.new("RGB", (2, 2), (255, 9, 9)), "WEBP"))
    assert red.shape == (1, 2, 2) and torch.all(red > 0.95)


@pytest.mark.parametrize("data, match", [("", "expected a base64"), ("%%%", "invalid base64"),
                                         (base64.b64encode(b"not an image").decode(), "not a readable image")])
def test_bad_base64_images_are_refused_in_words(data, match):
    with pytest.raises(InvalidArgument, match=match):
        tooling.load_image_base64(None, data)


def test_oversized_base64_image_is_refused(monkeypatch):
    monkeypatch.setattr(tooling, "MAX_PIXELS", 100)
    with pytest.raises(InvalidArgument, match="too large: 20x10 pixels"):
        tooling.load_mask_base64(None, _b64(Image.new("L", (20, 10))))


def test_load_image_cache_channels(monkeypatch):
    cache = ImageCache()
    monkeypatch.setattr(tooling, "IMAGES", cache)
    for key, img in {"g": Image.new("L", (3, 2), 100), "rgb": Image.new("RGB", (3, 2), (10, 20, 30)),
                     "rgba": Image.new("RGBA", (3, 2), (10, 20, 30, 40))}.items():
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        cache.put(key, buf.getvalue(), "image/png")
    image, mask = tooling.load_image_cache(None, "g")
    assert image.shape == (1, 2, 3, 3) and torch.allclose(mask, torch.full((1, 2, 3), 100 / 255))
    assert torch.allclose(tooling.load_image_cache(None, "rgb")[1], torch.full((1, 2, 3), 10 / 255))
    assert torch.allclose(tooling.load_image_cache(None, "rgba")[1], torch.full((1, 2, 3), 40 / 255))
    with pytest.raises(InvalidArgument, match="no image 'nope'"):
        tooling.load_image_cache(None, "nope")


def test_apply_mask_to_image():
    img = torch.rand(2, 4, 5, 3)
    m = torch.rand(1, 4, 5)
    (out,) = tooling.apply_mask_to_image(None, img, m)
    assert out.shape == (2, 4, 5, 4) and torch.equal(out[..., :3], img) and torch.equal(out[1, ..., 3], m[0])
    with pytest.raises(InvalidArgument, match="does not match"):
        tooling.apply_mask_to_image(None, img, torch.rand(1, 5, 4))


def test_translate_passes_english_and_refuses_the_rest():
    assert tooling.translate_text("a cat,  lang:en  a dog ") == "a cat, a dog"
    assert tooling.translate_text("lang:en") == ""
    with pytest.raises(InvalidArgument, match="cannot translate from 'de'"):
        tooling.translate_text("a cat lang:de ein Hund")


def test_image_cache_bounds():
    cache = ImageCache(max_bytes=10, max_entry=8, keep_s=0.0)
    cache.put("a", b"12345", "x")
    cache.put("b", b"12345", "x")
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", b"123", "x")
    assert "b" not in cache and "a" in cache and "c" in cache
    with pytest.raises(InvalidArgument, match="more than the 8"):
        cache.put("d", b"123456789", "x")
    with pytest.raises(InvalidArgument, match="not an image id"):
        cache.put("../x", b"1", "x")
    kept = ImageCache(max_bytes=6, keep_s=60.0)
    kept.put("a", b"12345", "x")
    kept.put("b", b"12345", "x")
    assert "a" in kept and "b" in kept  # fresh results wait for their client, up to twice the bound
    with pytest.raises(InvalidArgument, match="the image store is full"):
        kept.put("c", b"12345", "x")  # a flood of fresh entries is refused, not held
    assert "c" not in kept and kept.get("b") is not None


def test_tile_layout_grid_extract_and_merge():
    from opensd.workflows import nodes_tiles as tiles

    image = torch.rand(1, 96, 128, 3)
    (layout,) = tiles.create_layout(None, image, 64, 16, 8, 8)
    # per axis: count = size // (64 - 32); tile = ceil((size + (count - 1) 32) / count) up to a multiple of 8
    assert layout.count == (3, 4) and layout.tile == (56, 56) and layout.total == 12
    covered = torch.zeros(96, 128)
    for i in range(layout.total):
        (tile,) = tiles.extract_image_tile(None, image, layout, i)
        ys, xs = layout.rect(i)
        assert torch.equal(tile, image[:, ys, xs])
        covered[ys, xs] += 1
        (same,) = tiles.merge_image_tile(None, image, layout, i, tile)
        assert torch.allclose(same, image)  # a tile merged back over itself changes nothing
    assert covered.min() >= 1
    assert layout.rect(1) == (slice(24, 80), slice(0, 56))  # index runs down the rows first
    (mask_tile,) = tiles.extract_mask_tile(None, image[..., 0], layout, 5)
    assert torch.equal(mask_tile, image[:, 48:96, 24:80, 0])  # row 5 % 3, column 5 // 3
    with pytest.raises(InvalidArgument, match="index: 12 is not a tile"):
        tiles.extract_image_tile(None, image, layout, 12)
    with pytest.raises(InvalidArgument, match="must exceed twice the padding"):
        tiles.create_layout(None, image, 64, 32, 8, 8)
    with pytest.raises(InvalidArgument, match="multiples of 8"):
        tiles.create_layout(None, torch.rand(1, 90, 128, 3), 64, 16, 8, 8)


def test_tile_masks_own_the_inside_and_blend_the_edges():
    from opensd.workflows import nodes_tiles as tiles

    (layout,) = tiles.create_layout(None, torch.rand(1, 96, 128, 3), 64, 16, 8, 8)
    (hard,) = tiles.generate_tile_mask(None, layout, 4)  # row 1, column 1: neighbours on every side
    want = np.zeros((56, 56), np.float32)
    want[8:48, 8:48] = 1.0  # padding 16 less blending 8 toward each neighbour
    assert torch.equal(hard[0], torch.from_numpy(want))
    (corner,) = tiles.generate_tile_mask(None, layout, 0)  # the image's corner: owned up to its edges
    assert corner[0, 0, 0] == 1.0 and corner[0, -1, -1] == 0.0
    (soft,) = tiles.generate_tile_mask(None, layout, 4, blend=True)
    inner = np.zeros((56, 56), np.float32)
    inner[16:40, 16:40] = 1.0
    # kornia's box blur: an even window reaches one pixel further after the centre (anchor 3 of 8)
    blurred = cv2.blur(inner, (8, 8), anchor=(3, 3), borderType=cv2.BORDER_REFLECT_101)
    assert np.allclose(soft[0].numpy(), blurred, atol=1e-6)


def test_wide_kernels_and_radii_cost_the_same_and_stay_exact():
    """A blur over 64 pixels goes through the FFT, a dilation or erosion through window sums: same
    values as OpenCV's direct filters, and a radius of thousands on a small mask takes no time."""
    m = _mask(3, 120, 110)
    (wide,) = ops.expand_mask(None, _t(m), grow=0, blur=101, blur_type="gaussian")
    assert np.allclose(wide[0].numpy(), _gauss_cv(m, 101), atol=1e-5)
    (grown,) = ops.expand_mask(None, _t(m), grow=8000, blur=0)
    assert torch.equal(grown, torch.ones(1, 120, 110))
    (shrunk,) = ops.shrink_mask(None, _t(m), shrink=8000, blur=0)
    assert torch.equal(shrunk, torch.zeros(1, 120, 110))
    assert np.array_equal(ops.shrink_mask(None, _t(m), 7, 0)[0][0].numpy(), _erode_cv(m, 7))
    with pytest.raises(InvalidArgument, match="too wide for a 110x120 image"):
        ops.expand_mask(None, _t(m), grow=0, blur=8001)
    with pytest.raises(InvalidArgument, match="too wide"):
        ops.masked_blur(None, torch.rand(1, 120, 110, 3), _t(m), 8191, 0)
