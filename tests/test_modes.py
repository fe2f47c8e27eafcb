"""img2img, inpainting (latent-mask and 9-channel models), outpainting, hires fix, variation seeds."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.errors import InvalidArgument
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.pipeline import images as I
from opensd.pipeline.params import Hires
from opensd.pipeline.pipeline import Interrupted, load


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def inpaint_pipe(tmp_path_factory):
    cfg = replace(TINY, unet=replace(TINY.unet, in_channels=9))
    return load(write_random_checkpoint(tmp_path_factory.mktemp("i") / "tiny-inpainting.safetensors", cfg))


def _px(image):
    return np.asarray(image).astype(np.int16)


def _picture(w=64, h=64):
    image = Image.new("RGB", (w, h), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((10, 10, 40, 50), fill=(20, 180, 60))
    return image


def _mask(w=64, h=64, box=(24, 24, 48, 48)):
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def test_img2img_strength_controls_distance_from_the_init(pipe):
    init = _picture()
    recon = _px(pipe.decode(pipe.encode(init))[0])
    near = _px(pipe.img2img(init, "x", strength=0.1, steps=10, seed=1)[0])
    far = _px(pipe.img2img(init, "x", strength=0.9, steps=10, seed=1)[0])
    assert np.abs(near - recon).mean() < np.abs(far - recon).mean()
    again = _px(pipe.img2img(init, "x", strength=0.9, steps=10, seed=1)[0])
    assert np.array_equal(far, again)


def test_img2img_progress_counts_the_steps_actually_run(pipe):
    seen = []
    pipe.img2img(_picture(), "x", strength=0.5, steps=10, seed=1, progress=lambda i, n: seen.append((i, n)))
    assert seen[-1] == (6, 6)  # A1111: int(0.5 * 10) + 1 steps of the 10-step schedule


def test_inpainting_keeps_unmasked_pixels_exactly(pipe):
    init, mask = _picture(), _mask()
    out = _px(pipe.img2img(init, "x", mask=mask, mask_blur=0, strength=1.0, steps=3, seed=2)[0])
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], _px(init)[keep])
    assert not np.array_equal(out[~keep], _px(init)[~keep])


@pytest.mark.parametrize("mode", ["crop and resize", "resize and fill"])
def test_inpainting_resizes_the_mask_and_the_kept_pixels_by_the_resize_mode(pipe, mode):
    """As A1111: the mask is resized with the image by the resize mode, and the pixels outside it are
    the init image resized by that mode (they were the mask stretched and the init image stretched)."""
    init, mask = _picture(96, 64), _mask(96, 64, (40, 20, 56, 44))
    out = _px(pipe.img2img(init, "x", mask=mask, mask_blur=0, resize_mode=mode, width=64, height=64, strength=1.0,
                           steps=2, seed=2)[0])
    keep = np.asarray(I.resize(mask, 64, 64, mode)) == 0
    assert np.array_equal(out[keep], _px(I.resize(init, 64, 64, mode))[keep])
    assert not np.array_equal(out[~keep], _px(I.resize(init, 64, 64, mode))[~keep])


@pytest.mark.parametrize("fill", ["fill", "original", "latent noise", "latent nothing"])
def test_masked_content_modes_run_and_differ(pipe, fill):
    out = pipe.img2img(_picture(), "x", mask=_mask(), inpainting_fill=fill, strength=0.6, steps=3, seed=3)[0]
    assert out.size == (64, 64)


def test_masked_content_modes_give_different_results(pipe):
    outs = [_px(pipe.img2img(_picture(), "x", mask=_mask(), inpainting_fill=f, strength=0.5, steps=3, seed=3)[0])
            for f in ("original", "latent nothing")]
    assert not np.array_equal(*outs)


def test_only_masked_inpaints_a_crop_and_pastes_it_back(pipe):
    init = _picture(128, 96)
    mask = _mask(128, 96, (90, 60, 100, 70))
    out = _px(pipe.img2img(init, "x", mask=mask, mask_blur=0, inpaint_full_res=True, inpaint_full_res_padding=8,
                           width=64, height=64, strength=1.0, steps=2, seed=4)[0])
    assert out.shape == (96, 128, 3)  # the original size, not the generation size
    assert np.array_equal(out[:, :60], _px(init)[:, :60])  # far from the crop: untouched


def test_inverted_mask_repaints_the_other_side(pipe):
    init, mask = _picture(), _mask()
    out = _px(pipe.img2img(init, "x", mask=mask, invert_mask=True, mask_blur=0, strength=1.0, steps=2, seed=5)[0])
    inside = np.asarray(mask) > 0
    assert np.array_equal(out[inside], _px(init)[inside])


def test_mask_of_another_size_is_stretched_to_the_image_as_a1111(pipe):
    small = _mask(32, 32, (12, 12, 24, 24))  # A1111 resizes the mask with the image, never refuses it
    args = dict(mask_blur=0, strength=1.0, steps=2, seed=3)
    out = _px(pipe.img2img(_picture(), "x", mask=small, **args)[0])
    same = _px(pipe.img2img(_picture(), "x", mask=small.resize((64, 64), Image.LANCZOS), **args)[0])
    assert np.array_equal(out, same)
    keep = np.asarray(small.resize((64, 64), Image.LANCZOS)) == 0
    assert np.array_equal(out[keep], _px(_picture())[keep])


def test_outpainting_grows_the_canvas_and_keeps_the_centre(pipe):
    init = _picture()
    out = _px(pipe.outpaint(init, "x", left=16, right=16, top=8, steps=2, seed=6, mask_blur=0)[0])
    assert out.shape == (72, 96, 3)
    centre = out[8 + 8:8 + 64 - 8, 16 + 8:16 + 64 - 8]  # inside the 8-px repainted seam
    assert np.array_equal(centre, _px(init)[8:56, 8:56])


def test_nine_channel_inpainting_model(inpaint_pipe):
    assert inpaint_pipe.config.inpainting
    (txt,) = inpaint_pipe.txt2img("x", steps=2, seed=1)
    (inp,) = inpaint_pipe.img2img(_picture(), "x", mask=_mask(), mask_blur=0, strength=1.0, steps=2, seed=1)
    keep = np.asarray(_mask()) == 0
    assert np.array_equal(_px(inp)[keep], _px(_picture())[keep])
    assert txt.size == inp.size == (64, 64)


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_doubles_the_size_and_runs_both_passes(pipe, upscaler):
    seen = []
    (out,) = pipe.txt2img("x", steps=4, seed=1, hires=Hires(scale=2, upscaler=upscaler, steps=4, denoise=0.5),
                          progress=lambda i, n: seen.append((i, n)))
    assert out.size == (128, 128)
    assert seen[-1] == (4 + 4, 4 + 4)  # A1111 runs the hires pass's steps exactly (of a 4 / 0.5 schedule)


@pytest.mark.parametrize("steps, hires_steps, denoise, total, run", [(10, 0, 0.5, 20, 10), (6, 4, 0.7, 5, 4),
                                                                      (6, 3, 1.0, 3, 3)])
def test_the_hires_pass_samples_a1111s_schedule_tail(pipe, monkeypatch, steps, hires_steps, denoise, total, run):
    """A1111's setup_img2img_steps with the steps it hands the hires pass: exactly that many steps,
    the tail of a schedule int(steps / denoise) long (it was int(denoise * steps) + 1 of `steps`)."""
    seen = []
    sample = pipe._sample
    monkeypatch.setattr(pipe, "_sample", lambda p, x, sigmas, *a, **k: (seen.append(sigmas), sample(p, x, sigmas, *a, **k))[1])
    pipe.txt2img("x", steps=steps, seed=1, hires=Hires(scale=1.5, steps=hires_steps or None, denoise=denoise))
    full = pipe.sigmas(pipe._params("x", "", dict(steps=steps, width=96, height=96)), total)
    assert len(seen[1]) == run + 1 and torch.equal(seen[1], full[total - run:])


def test_img2img_fix_steps_runs_exactly_the_steps(pipe, monkeypatch):
    seen = []
    sample = pipe._sample
    monkeypatch.setattr(pipe, "_sample", lambda p, x, sigmas, *a, **k: (seen.append(sigmas), sample(p, x, sigmas, *a, **k))[1])
    for fix in (False, True):
        pipe.img2img(_picture(), "x", strength=0.4, steps=5, seed=2, fix_steps=fix)
    plain, fixed = seen
    assert torch.equal(plain, pipe.sigmas(pipe._params("x", "", dict(steps=5)), 5)[5 - 3:])  # int(0.4 * 5) + 1
    assert torch.equal(fixed, pipe.sigmas(pipe._params("x", "", dict(steps=5)), 12)[12 - 5:])  # 5 of int(5 / 0.4)


def test_variation_seed_at_full_strength_is_the_variation_seeds_image(pipe):
    a = _px(pipe.txt2img("x", steps=2, seed=10, subseed=99, subseed_strength=1.0)[0])
    b = _px(pipe.txt2img("x", steps=2, seed=99)[0])
    assert np.array_equal(a, b)  # Euler draws no per-step noise, so only the initial noise matters
    half = _px(pipe.txt2img("x", steps=2, seed=10, subseed=99, subseed_strength=0.5)[0])
    assert not np.array_equal(half, a) and not np.array_equal(half, _px(pipe.txt2img("x", steps=2, seed=10)[0]))


def test_interrupt_stops_within_a_step(pipe):
    seen = []

    def progress(i, n):
        seen.append(i)
        pipe.interrupt()

    with pytest.raises(Interrupted):
        pipe.txt2img("x", steps=10, seed=1, progress=progress)
    assert seen == [1]
    assert pipe.txt2img("x", steps=1, seed=1)  # the next generation runs normally


def test_resize_modes():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 20, 100))  # blue left strip
    assert I.resize(wide, 64, 64, "just resize").size == (64, 64)
    crop = I.resize(wide, 64, 64, "crop and resize")
    assert crop.size == (64, 64) and crop.getpixel((0, 32))[0] > 200  # the blue strip was cropped away
    fill = I.resize(wide, 64, 64, "resize and fill")
    assert fill.size == (64, 64) and fill.getpixel((32, 0)) == fill.getpixel((32, 20))  # borders stretched
    with pytest.raises(InvalidArgument, match="^resize_mode"):
        I.resize(wide, 64, 64, "zoom")


def test_fill_takes_colours_from_the_surroundings():
    image = Image.new("RGB", (64, 64), (250, 10, 10))
    image.paste((0, 0, 0), (20, 20, 44, 44))
    filled = np.asarray(I.fill_masked(image, _mask(64, 64, (20, 20, 43, 43))))
    assert filled[32, 32, 0] > 200 and filled[32, 32, 1] < 50  # red, not the black that was there


@pytest.mark.parametrize("hires, size, upscaled", [
    (Hires(scale=1.9), (512, 512), (972, 972, 0, 0)),      # int(512 * 1.9) = 972: 121 latents, 968 pixels
    (Hires(width=100), (64, 72), (100, 112, 0, 0)),         # the other side rounded down (100 * 72 // 64)
    (Hires(width=768, height=512), (512, 512), (768, 768, 0, 32)),  # cover, then cut the excess rows
    (Hires(width=512, height=768), (512, 512), (768, 768, 32, 0)),
    (Hires(width=96, height=96), (64, 80), (96, 120, 0, 3)),
])
def test_hires_sizes_are_a1111s(hires, size, upscaled):
    up_w, up_h, cut_x, cut_y = hires.upscaled(*size)
    assert (up_w, up_h, cut_x, cut_y) == upscaled
    assert hires.target(*size) == ((up_w // 8 - cut_x) * 8, (up_h // 8 - cut_y) * 8)
    assert Hires(scale=1.9).target(512, 512) == (968, 968)


def test_a_covering_hires_resize_cuts_the_upscaled_latents_centred(pipe, monkeypatch):
    """Both sides of another aspect: A1111 upscales to cover them and cuts the excess off the
    latents, half each side (the image is not stretched)."""
    import torch.nn.functional as F

    seen = []
    noised = pipe._noised
    monkeypatch.setattr(pipe, "_noised", lambda p, sigma, noise, latent=None, *a, **k:
                        (seen.append(latent), noised(p, sigma, noise, latent, *a, **k))[1])
    first = _picture().resize((64, 64))
    (image,) = pipe.txt2img("x", steps=2, seed=1, width=64, height=64, first_pass=first,
                            hires=Hires(upscaler="Latent", width=96, height=64, denoise=0.5))
    assert image.size == (96, 64)
    covered = F.interpolate(pipe.encode(first), size=(12, 12), mode="bilinear")  # 96 x 96, then rows cut
    assert torch.equal(seen[-1], covered[:, :, 2:10, :])


def test_a_blurred_mask_lays_the_result_over_doubled_as_a1111():
    from opensd.pipeline.images import paste_back
    result, original = Image.new("RGB", (4, 1), (200, 200, 200)), Image.new("RGB", (4, 1), (0, 0, 0))
    mask = Image.frombytes("L", (4, 1), bytes([0, 50, 128, 255]))  # a blurred edge
    out = np.asarray(paste_back(result, original, mask, None))[0, :, 0]
    assert out.tolist() == [0, 78, 200, 200]  # A1111's mask_for_overlay: clip(mask * 2): 0, 100, 255, 255
