"""The condition image for Qwen-Image-Edit: text/qwen_vl_image equals transformers'
Qwen2VLImageProcessor (pixel_values, image_grid_thw) with Qwen2.5-VL's released settings, bit for bit
in the resize, on images of several sizes (up, down, unchanged, over max_pixels); pipeline/
qwen_edit_image fits the image as QwenImageEditPipeline does (calculate_dimensions, Lanczos)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize as hf_resize

from opensd.errors import InvalidArgument
from opensd.pipeline.qwen_edit_image import edit_size, fit_edit_image
from opensd.text.qwen_vl_image import MAX_PIXELS, MIN_PIXELS, merged_tokens, smart_resize, vl_patches


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(100, 60), (333, 517), (56, 56), (30, 40), (812, 1240)])
def test_equal_to_processor(size):
    proc = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    img = _image(*size)
    want = proc(images=[img], return_tensors="pt")
    got, grid = vl_patches(img)
    assert grid == tuple(want["image_grid_thw"][0].tolist())
    torch.testing.assert_close(got, want["pixel_values"], atol=1e-6, rtol=0)
    assert merged_tokens(grid) == got.shape[0] // 4


def test_over_max_pixels():
    proc = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=28 * 28 * 20)
    img = _image(300, 200)
    want = proc(images=[img], return_tensors="pt")
    got, grid = vl_patches(img, max_pixels=28 * 28 * 20)
    assert grid == tuple(want["image_grid_thw"][0].tolist())
    torch.testing.assert_close(got, want["pixel_values"], atol=1e-6, rtol=0)


def test_smart_resize_table():
    for h, w in [(1, 150), (1000, 7), (4000, 3000), (29, 29), (10, 10), (1024, 1536)]:
        assert smart_resize(h, w) == hf_resize(h, w, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    with pytest.raises(InvalidArgument, match="aspect ratio"):
        smart_resize(1, 300)


@pytest.mark.parametrize("size", [(640, 480), (1000, 1000), (333, 1517), (1920, 1080)])
def test_fit_as_edit_pipeline(size):
    img = _image(*size, seed=3)
    w, h, _ = calculate_dimensions(1024 * 1024, size[0] / size[1])
    assert edit_size(*size) == (w, h)
    want = VaeImageProcessor(vae_scale_factor=16).resize(img, h, w)
    got = fit_edit_image(img)
    assert got.size == (w, h)
    assert np.array_equal(np.asarray(got), np.asarray(want))
