"""Soft inpainting (A1111's built-in extension): its formulas against plain references written
from A1111's soft_inpainting.py, and the pipeline's inpainting with it on and off."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline import images as I
from opensd.pipeline import soft_inpaint as SI
from opensd.pipeline.params import Params
from opensd.pipeline.pipeline import load
from opensd.pipeline.soft_inpaint_settings import SoftInpainting


def test_defaults_are_a1111s_ui_defaults():
    s = SoftInpainting()
    assert (s.schedule_bias, s.preservation_strength, s.transition_contrast_boost, s.mask_influence,
            s.difference_threshold, s.difference_contrast) == (1, 0.5, 4, 0, 0.5, 2)


def test_step_blend_equals_a1111s_formula_pixel_by_pixel():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 4, 2, 3, generator=g), torch.randn(1, 4, 2, 3, generator=g)
    nmask = torch.tensor([[[[0.0, 0.25, 0.5], [0.75, 0.9, 1.0]]]])
    s = SoftInpainting(schedule_bias=1.5, preservation_strength=0.7, transition_contrast_boost=3.0)
    sigma = 2.5
    out = SI.blend(s, a, b, nmask, torch.tensor([sigma, sigma]))
    for y in range(2):
        for x in range(3):
            t = float(nmask[0, 0, y, x]) ** (sigma ** 1.5 * 0.7)  # get_modified_nmask
            va, vb = a[0, :, y, x].double().tolist(), b[0, :, y, x].double().tolist()
            mixed = [pa * (1 - t) + pb * t for pa, pb in zip(va, vb)]
            length = math.sqrt(sum(v * v for v in mixed)) + 0.00001
            la, lb = math.sqrt(sum(v * v for v in va)), math.sqrt(sum(v * v for v in vb))
            wanted = (la ** 3 * (1 - t) + lb ** 3 * t) ** (1 / 3)
            expected = [v * wanted / length for v in mixed]
            assert out[0, :, y, x].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # fully masked: the denoised latent, fully kept: the original (each up to the 1e-5 length guard)
    assert torch.allclose(out[..., 1, 2], b[..., 1, 2], rtol=1e-4)
    assert torch.allclose(out[..., 0, 0], a[..., 0, 0], rtol=1e-4)


def _reference_histogram_filter(img, kernel, low, high, min_width=1.0):
    """A1111's weighted_histogram_filter, one pixel at a time as it walks it."""
    out = img.copy()
    c = kernel.shape[0] // 2
    h, w = img.shape
    for y in range(h):
        for x in range(w):
            items = [(float(img[yy, xx]), kernel[yy - y + c, xx - x + c])
                     for yy in range(max(0, y - c), min(h, y + c + 1)) for xx in range(max(0, x - c), min(w, x + c + 1))]
            items.sort(key=lambda e: e[0])
            bounds, total = [], 0.0
            for _, weight in items:
                bounds.append((total, total + weight))
                total += weight
            lo, hi = total * low, total * high
            if hi - lo < min_width:
                centre = (lo + hi) / 2
                lo, hi = centre - min_width / 2, centre + min_width / 2
                if hi > total:
                    lo, hi = total - min_width, total
                if lo < 0:
                    lo, hi = 0, min_width
            value = weight = 0.0
            for (v, _), (s, e) in zip(items, bounds):
                if lo >= e:
                    continue
                if hi <= s:
                    break
                part = min(hi, e) - max(lo, s)
                value += v * part
                weight += part
            out[y, x] = value / weight if weight else 0
    return out


def test_gaussian_kernel_and_histogram_filter_equal_a1111s():
    kernel = SI._gaussian_kernel()
    zero = math.exp(-9 / 2.25)
    assert kernel.shape == (5, 5) and kernel[2, 2] == pytest.approx(1.0)
    assert kernel[0, 0] == pytest.approx((math.exp(-8 / 2.25) - zero) / (1 - zero))
    img = np.random.default_rng(3).random((7, 6)).astype(np.float32)
    img[2, 2] = img[2, 3]  # a tie
    for low, high in ((0.9, 1.0), (0.25, 0.75), (0.0, 0.05)):
        got = SI.weighted_histogram_filter(img, kernel, low, high)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _reference_histogram_filter(img, kernel, low, high))


@pytest.mark.parametrize("influence", [0.0, 1.0])
def test_adaptive_mask_of_a_uniform_change_is_a1111s_formula(influence):
    s = SoftInpainting(difference_threshold=0.75, difference_contrast=3.0, mask_influence=influence)
    init = torch.zeros(1, 4, 4, 5)
    latents = torch.zeros(1, 4, 4, 5)
    latents[:, 0], latents[:, 1] = 0.3, 0.4   # moved by 0.5 everywhere
    nmask = torch.full((1, 1, 4, 5), 0.64)
    mask = SI.adaptive_masks(s, nmask, init, latents, 40, 32)[0]
    assert mask.mode == "L" and mask.size == (40, 32)
    scalar = 1 - np.float32(0.64) ** np.float32(0.25)  # mask ** (preservation strength / 2)
    scalar = np.float32(0.5 * (1 - influence) + scalar * influence)
    scalar = scalar / (np.float32(1.00001) - scalar)
    x = np.float32(0.5) / (0.75 * scalar)
    y = 1 / (1 + x ** 3)
    expected = int(255 * (1 - y * y * y * (y * (6 * y - 15) + 10)))
    assert 0 < expected < 255
    assert set(np.asarray(mask).ravel().tolist()) == {expected}


def test_composite_lays_the_original_over_with_the_inverted_mask():
    original = Image.new("RGB", (8, 4), (200, 0, 0))
    generated = Image.new("RGB", (8, 4), (0, 0, 200))
    mask = Image.new("L", (8, 4), 0)
    mask.paste(255, (4, 0, 8, 4))
    mask.paste(128, (2, 0, 4, 4))
    out = np.asarray(SI.composite(generated, original, mask, None))
    assert out[0, 0].tolist() == [200, 0, 0] and out[0, 7].tolist() == [0, 0, 200]
    assert 90 < out[0, 2, 0] < 110 and 90 < out[0, 2, 2] < 110  # half and half
    big = Image.new("RGB", (20, 10), (200, 0, 0))
    out = np.asarray(SI.composite(generated, big, mask, (10, 2, 18, 6)))
    assert out[0, 0].tolist() == [200, 0, 0] and out[5, 17].tolist() == [0, 0, 200]  # crop put back


@pytest.mark.parametrize("settings,field", [
    ({"schedule_bias": -1}, "soft_inpainting.schedule_bias"),
    ({"transition_contrast_boost": 0.5}, "soft_inpainting.transition_contrast_boost"),
    ({"mask_influence": float("nan")}, "soft_inpainting.mask_influence"),
    ({"difference_contrast": "2"}, "soft_inpainting.difference_contrast"),
    ({"sharpness": 1}, "soft_inpainting.sharpness"),
])
def test_bad_settings_name_the_setting(settings, field):
    with pytest.raises(InvalidArgument, match=field):
        Params.of(width=64, height=64, soft_inpainting=settings).validate()


# --- the pipeline ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


def _picture(size=64):
    image = Image.new("RGB", (size, size), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((6, 6, size * 5 // 8, size * 3 // 4), fill=(20, 180, 60))
    return image


def _px(image):
    return np.asarray(image).astype(np.int16)


def test_off_or_without_a_mask_is_plain_img2img(pipe):
    init = _picture()
    plain = _px(pipe.img2img(init, "x", strength=0.6, steps=3, seed=4)[0])
    soft = _px(pipe.img2img(init, "x", strength=0.6, steps=3, seed=4, soft_inpainting=SoftInpainting())[0])
    assert np.array_equal(plain, soft)  # A1111's script acts only when inpainting


def test_a_full_mask_is_plain_inpainting(pipe):
    init, mask = _picture(), Image.new("L", (64, 64), 255)
    plain = _px(pipe.img2img(init, "x", mask=mask, strength=0.9, steps=3, seed=2)[0])
    soft = _px(pipe.img2img(init, "x", mask=mask, strength=0.9, steps=3, seed=2, soft_inpainting=SoftInpainting())[0])
    assert np.abs(soft - plain).max() <= 2  # the blend's 1e-5 length guard aside, the same latents


@pytest.fixture
def spy(monkeypatch):
    """What soft inpainting composites: the generated image and its adaptive mask; and the latents
    sampled, with the original's."""
    seen = {}
    composite, adaptive_masks = SI.composite, SI.adaptive_masks

    def masks(s, nmask, init, latents, width, height):
        seen.update(init=init, latents=latents)
        return adaptive_masks(s, nmask, init, latents, width, height)

    def spying(image, original, m, crop):
        seen.update(generated=_px(image), mask=np.asarray(m))
        return composite(image, original, m, crop)

    monkeypatch.setattr(SI, "composite", spying)
    monkeypatch.setattr(SI, "adaptive_masks", masks)
    return seen


def test_binary_mask_far_from_the_edge_is_plain_inpainting_and_the_edge_soft(pipe, spy):
    init = _picture(192)
    mask = Image.new("L", (192, 192), 0)
    ImageDraw.Draw(mask).rectangle((64, 64, 127, 127), fill=255)
    kw = dict(mask=mask, mask_blur=0, strength=1.0, steps=3, seed=2, width=192, height=192)
    plain = _px(pipe.img2img(init, "x", **kw)[0])
    soft = _px(pipe.img2img(init, "x", soft_inpainting=SoftInpainting(), **kw)[0])
    orig = _px(init)
    # the adaptive mask reaches ~2 latents past the mask (its local-maximum filter), and blurs
    inside, outside = (slice(80, 112), slice(80, 112)), (slice(0, 16), slice(0, 192))
    # the new content (the network sees the softer edge too, so close, not equal), and the original
    assert np.abs(soft[inside] - plain[inside]).mean() < 0.25 * np.abs(plain[inside] - orig[inside]).mean()
    assert spy["mask"][inside].min() == 255 and spy["mask"][outside].max() == 0
    assert np.array_equal(soft[outside], orig[outside])
    # across the mask's edge the original and the new content mix: pixels strictly between them
    band = np.zeros((192, 192), bool)
    band[40:152, 40:152] = True
    band[88:104, 88:104] = False
    gen = spy["generated"]
    apart = band[..., None] & (np.abs(gen - orig) > 30)
    between = (np.minimum(gen, orig) < soft) & (soft < np.maximum(gen, orig))
    assert (between & apart).sum() > 0.3 * apart.sum()
    assert set(np.unique(spy["mask"][band])) - {0, 255}  # grey levels in the adaptive mask


def test_preservation_strength_keeps_grey_areas_nearer_the_original(pipe, spy):
    init, grey = _picture(), Image.new("L", (64, 64), 128)
    far = {}
    for strength in (0.0, 8.0):
        pipe.img2img(init, "x", mask=grey, mask_blur=0, strength=1.0, steps=3, seed=2,
                     soft_inpainting=SoftInpainting(preservation_strength=strength, transition_contrast_boost=1))
        far[strength] = (spy["latents"] - spy["init"]).abs().mean()
    assert far[8.0] < 0.1 * far[0.0]  # strength 0: mask^0 = 1, all new; 8: mask^(8 sigma), the original


def test_soft_inpainting_conditions_inpainting_models_with_the_grey_mask(pipe):
    grey = Image.new("L", (64, 64), 128)
    assert pipe.config.inpainting is False  # the channels are built the same way for any model
    hard = pipe.inpainting_cond(_picture(), grey)
    soft = pipe.inpainting_cond(_picture(), grey, soft=True)
    assert not torch.equal(hard, soft)


def test_a_masks_partial_transparency_is_kept_not_rounded(pipe, spy):
    """A1111's soft inpainting turns the alpha mask's rounding off: a half-transparent mask is a
    half mask (rounded, it would be all 'keep', and sampling would not touch the latents)."""
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 100))
    pipe.img2img(_picture(), "x", mask=mask, mask_blur=0, strength=1.0, steps=3, seed=2,
                 soft_inpainting=SoftInpainting())
    assert (spy["latents"] - spy["init"]).abs().mean() > 0.1


def test_the_original_laid_back_is_resized_by_the_resize_mode(pipe):
    """A1111 rebuilds the overlay from the init image resized as the generation's (here cropped)."""
    init = Image.new("RGB", (192, 128), (10, 200, 30))
    ImageDraw.Draw(init).rectangle((0, 0, 30, 127), fill=(250, 250, 0))  # cropped away, or stretched in
    mask = Image.new("L", (192, 128), 0)
    mask.paste(255, (88, 48, 104, 80))
    out = _px(pipe.img2img(init, "x", mask=mask, mask_blur=0, strength=0.8, steps=2, seed=1, width=128,
                           height=128, resize_mode="crop and resize", soft_inpainting=SoftInpainting())[0])
    fitted = _px(I.resize(init, 128, 128, "crop and resize"))
    assert np.array_equal(out[:, :8], fitted[:, :8])  # far from the mask: the cropped original
