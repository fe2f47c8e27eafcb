"""controlnet_aux's non-learned preprocessor nodes (Canny, HED safe, fake scribble, tile, colour grid)
against controlnet_aux's algorithms written out here with numpy/cv2; the nodes' inputs, output sizes,
AIO_Preprocessor's routing and error, ImageGenResolutionFromImage and PixelPerfectResolution."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.adapters import preprocessors as P
from opensd.adapters.hed import WEIGHTS, hed_edges
from opensd.errors import InvalidArgument
from preprocessor_graphs import node_ctx, run_node

needs_hed = pytest.mark.skipif(not WEIGHTS.is_file(), reason="HED weights not converted")


def _photo(w=150, h=100):
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(90, 160, (h, w, 3), dtype=np.uint8))
    d = ImageDraw.Draw(im)
    d.ellipse([20, 10, 90, 80], fill=(20, 30, 200))
    d.rectangle([100, 20, 140, 90], fill=(240, 240, 30))
    d.line([0, 95, 149, 5], fill=(0, 0, 0), width=3)
    return im


def ref_safe_step(x, step=2):
    y = x.astype(np.float32) * float(step + 1)
    return y.astype(np.int32).astype(np.float32) / float(step)


def ref_nms(x, t, s):
    x = cv2.GaussianBlur(x.astype(np.float32), (0, 0), s)
    y = np.zeros_like(x)
    for f in ([[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
              [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]]):
        np.putmask(y, cv2.dilate(x, kernel=np.array(f, np.uint8)) == x, x)
    z = np.zeros_like(y, dtype=np.uint8)
    z[y > t] = 255
    return z


def _a(im):
    return np.asarray(im)


def test_safe_step_is_the_original_quantisation():
    x = np.random.default_rng(1).random((40, 40)).astype(np.float64)
    x[0, :4] = [0.0, 1 / 3, 2 / 3, 1.0]
    assert np.array_equal(P.safe_step(x), ref_safe_step(x))
    assert set(np.unique(P.safe_step(x))) <= {0.0, 0.5, 1.0, 1.5}


@needs_hed
def test_hed_safe_and_fake_scribble_follow_controlnet_aux():
    im = _photo()
    edges = hed_edges(im)
    plain = (edges * 255.0).clip(0, 255).astype(np.uint8)
    safe = (ref_safe_step(edges) * 255.0).clip(0, 255).astype(np.uint8)
    assert np.array_equal(_a(P.softedge(im))[..., 0], plain)
    assert np.array_equal(_a(P.softedge(im, safe=True))[..., 0], safe)
    for src, on in ((safe, True), (plain, False)):
        ref = cv2.GaussianBlur(ref_nms(src, 127, 3.0), (0, 0), 3.0)
        ref[ref > 4] = 255
        ref[ref < 255] = 0
        got = _a(P.scribble(im, safe=on))
        assert np.array_equal(got[..., 0], ref) and np.array_equal(got[..., 2], ref)
    assert _a(P.scribble(im)).max() == 255


@pytest.mark.parametrize("iters", [1, 3])
def test_tile_is_the_pyrup_blur(iters):
    rgb = _a(_photo(150, 100))
    h, w = int(np.round(100 / 64.0)) * 64, int(np.round(150 / 64.0)) * 64
    ref = cv2.resize(rgb, (w // 2 ** iters, h // 2 ** iters), interpolation=cv2.INTER_AREA)
    for _ in range(iters):
        ref = cv2.pyrUp(ref)
    assert np.array_equal(_a(P.tile(_photo(150, 100), iters)), ref)
    with pytest.raises(InvalidArgument, match="pyrUp_iters"):
        P.tile(_photo(), 0)


def test_color_is_the_64_pixel_grid():
    rgb = _a(_photo(150, 100))
    cells = cv2.resize(rgb, (150 // 64, 100 // 64), interpolation=cv2.INTER_CUBIC)
    ref = cv2.resize(cells, (150, 100), interpolation=cv2.INTER_NEAREST)
    assert np.array_equal(_a(P.color(_photo(150, 100))), ref)
    with pytest.raises(InvalidArgument, match="at least 64"):
        P.color(_photo(60, 100))


@pytest.mark.parametrize("sigma,threshold", [(6.0, 8), (2.0, 0)])
def test_lineart_standard_is_the_original(sigma, threshold):
    x = _a(_photo()).astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), sigma)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    intensity /= max(16, np.median(intensity[intensity > threshold]))
    intensity *= 127
    ref = intensity.clip(0, 255).astype(np.uint8)
    assert np.array_equal(_a(P.lineart_standard(_photo(), sigma, threshold))[..., 1], ref)
    flat = Image.new("RGB", (64, 64), (100, 100, 100))  # nothing darker than its surround: all black
    assert _a(P.lineart_standard(flat)).max() == 0
    with pytest.raises(InvalidArgument, match="guassian_sigma"):
        P.lineart_standard(_photo(), 0.0)


def test_scribble_xdog_plain_scribble_and_binary_are_the_originals():
    rgb = _a(_photo())
    g1 = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(rgb.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    for thr in (32, 8):
        ref = np.zeros_like(rgb)
        ref[2 * (255 - dog) > thr] = 255  # uint8 arithmetic, as theirs
        assert np.array_equal(_a(P.scribble_xdog(_photo(), thr)), ref)
    ref = np.zeros_like(rgb)
    ref[np.min(rgb, axis=2) < 127] = 255
    assert np.array_equal(_a(P.scribble_threshold(_photo())), 255 - ref)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for thr in (0, 100):
        if thr == 0:
            _, inv = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
        else:
            _, inv = cv2.threshold(grey, thr, 255, cv2.THRESH_BINARY_INV)
        assert np.array_equal(_a(P.binary(_photo(), thr))[..., 0], 255 - inv)


def _run(tmp_path, node, **inputs):
    return run_node(node_ctx(tmp_path / "models", tmp_path, _photo()), node, **inputs)


def test_canny_node_runs_canny_at_the_detect_resolution(tmp_path):
    from opensd.workflows import object_info

    info = object_info(None, "CannyEdgePreprocessor")["CannyEdgePreprocessor"]
    assert info["category"] == "ControlNet Preprocessors/Line Extractors"
    assert list(info["input"]["optional"]) == ["low_threshold", "high_threshold", "resolution"]
    got = _run(tmp_path, "CannyEdgePreprocessor", low_threshold=50, high_threshold=150, resolution=128)
    small = cv2.resize(_a(_photo()), (192, 128), interpolation=cv2.INTER_CUBIC)
    ref = cv2.Canny(small, 50, 150)
    assert got.shape == (128, 192, 3)
    assert np.array_equal(got[..., 0], ref)


@pytest.mark.parametrize("node,inputs,size", [
    pytest.param("HEDPreprocessor", {"safe": "disable"}, (64, 96, 3), marks=needs_hed),
    pytest.param("FakeScribblePreprocessor", {"safe": "enable"}, (64, 96, 3), marks=needs_hed),
    ("TilePreprocessor", {"pyrUp_iters": 2}, (256, 384, 3)),
    ("ColorPreprocessor", {}, (128, 192, 3)),
    ("LineartStandardPreprocessor", {"guassian_sigma": 3.0}, (96, 144, 3)),
    ("ScribblePreprocessor", {}, (64, 96, 3)),
    ("Scribble_XDoG_Preprocessor", {"threshold": 20}, (64, 96, 3)),
    ("BinaryPreprocessor", {"bin_threshold": 0}, (64, 96, 3)),
])
def test_nodes_make_the_requested_size(tmp_path, node, inputs, size):
    res = size[0]
    out = _run(tmp_path, node, resolution=res, **inputs)
    assert out.shape == size
    if node == "ColorPreprocessor":  # 64-pixel cells of one colour each
        assert len(np.unique(out[:64, :64].reshape(-1, 3), axis=0)) == 1


def test_aio_routes_by_node_name_and_names_the_supported_ones(tmp_path):
    from opensd.workflows import object_info
    from opensd.workflows.nodes_preprocessors import aio

    names = object_info(None, "AIO_Preprocessor")["AIO_Preprocessor"]["input"]["optional"]["preprocessor"][0]
    assert names[0] == "none" and {"CannyEdgePreprocessor", "LineArtPreprocessor", "TilePreprocessor"} <= set(names)
    got = _run(tmp_path, "AIO_Preprocessor", preprocessor="CannyEdgePreprocessor", resolution=128)
    small = cv2.resize(_a(_photo()), (192, 128), interpolation=cv2.INTER_CUBIC)
    assert np.array_equal(got[..., 0], cv2.Canny(small, 100, 200))
    image = torch.rand(1, 8, 8, 3)
    assert aio(None, image, "none")[0] is image
    with pytest.raises(InvalidArgument, match=r"'MiDaS-DepthMapPreprocessor' is not supported here; the supported "
                                              r"ones are none, CannyEdgePreprocessor"):
        aio(None, image, "MiDaS-DepthMapPreprocessor")


def test_generation_and_pixel_perfect_resolution():
    from opensd.workflows.nodes_preprocessors import gen_resolution, pixel_perfect

    image = torch.zeros(1, 300, 400, 3)
    assert gen_resolution(None, image) == (400, 300)
    # the extension's formula: k = max (min for Resize and Fill) of the two scales, times the short side
    assert pixel_perfect(None, image, 1024, 512, "Just Resize") == (round(max(512 / 300, 1024 / 400) * 300),)
    assert pixel_perfect(None, image, 1024, 512, "Resize and Fill") == (512,)
    with pytest.raises(InvalidArgument, match="resize_mode"):
        pixel_perfect(None, image, 512, 512, "Stretch")
