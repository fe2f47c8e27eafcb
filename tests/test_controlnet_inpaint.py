"""ControlNet 1.1's inpaint model driven as sd-webui-controlnet's inpaint preprocessors drive it
(adapters/controlnet_inpaint.py, controlnet_lama.py): the hint's masked pixels are -1, inpaint_only
keeps the rest of the image, inpaint_only+lama fills the masked area with LaMa first."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from lama_files import tiny_lama
from opensd.adapters import controlnet_inpaint as CI
from opensd.adapters.controlnet import ControlApplier, ControlSpec, load_controlnet
from opensd.adapters.controlnet_lama import LAMA_FILE, lama_file, lama_fill
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.pipeline.pipeline import load
from opensd.sampling.cfg_pp import with_uncond
from reference import randomize_

FAST = dict(steps=3, seed=5, cfg=5.0, width=64, height=64)


def scene(size=64) -> Image.Image:
    """A horizontal colour ramp with a dark block: every pixel told apart from the painted ones."""
    ramp = np.linspace(30, 230, size, dtype=np.float32)
    arr = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 128.0)], -1)
    arr[6:size // 2, 4:size // 2] = (20, 40, 200)
    return Image.fromarray(arr.astype(np.uint8))


def hole(size=64, box=(24, 24, 40, 44)) -> Image.Image:
    m = Image.new("L", (size, size), 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def cn(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("cn") / "control_v11p_sd15_inpaint.safetensors"
    save_controlnet(randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=3, std=0.1), path, "small",
                    dtype=torch.float32)
    return load_controlnet(path, pipe)


def _px(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_hint_marks_exactly_the_masked_pixels(cn):
    image, mask = scene(), hole()
    applier = ControlApplier([ControlSpec(cn, image, mask=mask, inpaint="global")], 64, 64, "cpu", torch.float32)
    hint = applier.items[0][1][0]
    masked = torch.from_numpy(np.asarray(mask) > 127)
    assert bool((hint[:, masked] == -1).all())
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(hint[:, ~masked], rgb[:, ~masked])
    # at another size the mask is fitted as the image is; "resize and fill" masks its padding (outpainting)
    wide = ControlApplier([ControlSpec(cn, image, mask=Image.new("L", (64, 64), 0), inpaint="global",
                                       resize_mode="resize and fill")], 96, 64, "cpu", torch.float32).items[0][1][0]
    assert bool((wide[:, :, :16] == -1).all()) and bool((wide[:, :, -16:] == -1).all())
    assert bool((wide[:, :, 16:80] >= 0).all())


def test_restore_keeps_the_original_latent_outside_the_mask():
    class Pipe:  # what restoring reads: the VAE encoder, the latent downscale, the device
        device = torch.device("cpu")

        class config:
            class vae:
                downscale = 8

        @staticmethod
        def encode_tensor(pixels):
            return torch.nn.functional.avg_pool2d(pixels, 8).repeat(1, 2, 1, 1)[:, :4] + 0.5

    spec = ControlSpec(None, scene(), mask=hole(), inpaint="only", weight=1.0)
    original = Pipe.encode_tensor(CI.control_image(scene(), 64, 64) * 2 - 1)
    d = torch.randn(1, 4, 8, 8)
    wrapped = CI.restoring(lambda x, sigma: d, [spec], Pipe, 64, 64)
    guided, uncond = with_uncond(wrapped, torch.zeros(1, 4, 8, 8), torch.tensor(1.0))
    m = CI.latent_mask(CI.fit_mask(hole(), 64, 64), 8)
    assert 0 < m.sum() < 64 and torch.equal(m, (m > 0).float())
    m = m.expand(1, 4, 8, 8)
    assert torch.allclose(guided[m == 0], original[m == 0]) and torch.equal(guided[m == 1], d[m == 1])
    assert torch.equal(guided, uncond)
    half = CI.restoring(lambda x, sigma: d, [ControlSpec(None, scene(), mask=hole(), inpaint="only", weight=0.5)],
                        Pipe, 64, 64)(torch.zeros(1, 4, 8, 8), torch.tensor(1.0))
    assert torch.allclose(half[m == 0], (d + 0.5 * (original - d))[m == 0])
    # the latent mask is a little wider than the pixel mask: every pixel-masked cell is in it
    pixel = torch.nn.functional.max_pool2d(CI.fit_mask(hole(), 64, 64), 8).expand(1, 4, 8, 8)
    assert bool((m[pixel > 0] == 1).all()) and m.sum() > pixel.sum()


def test_inpaint_only_keeps_the_pixels_outside_the_mask(pipe, cn):
    image, mask = scene(), hole()
    out = pipe.txt2img("a box", controls=[ControlSpec(cn, image, mask=mask, inpaint="only")], **FAST)[0]
    grown = CI.paste_mask(CI.fit_mask(mask, 64, 64))[0, 0].numpy()
    far = grown == 0  # beyond the paste's dilation and blur: the original comes back
    assert far.sum() > 2000
    assert np.abs(_px(out) - _px(image))[far].max() <= 1
    inside = np.asarray(mask) > 127
    assert np.abs(_px(out) - _px(image))[inside].mean() > 5  # the masked part is painted anew
    # inpaint (global harmonious) gives the same hint but keeps nothing
    free = pipe.txt2img("a box", controls=[ControlSpec(cn, image, mask=mask, inpaint="global")], **FAST)[0]
    assert np.abs(_px(free) - _px(image))[far].mean() > 5


def test_paste_blends_over_the_grown_mask():
    image, mask = scene(), hole()
    painted = Image.new("RGB", (64, 64), (0, 255, 0))
    spec = ControlSpec(None, image, mask=mask, inpaint="only")
    out = _px(CI.pasted(painted, [spec]))
    inside = np.asarray(mask) > 127
    assert (out[inside] == (0, 255, 0)).all()  # the masked pixels are the generated ones
    assert np.array_equal(out[:, :14], _px(image)[:, :14])
    edge = out[30, 41 + 2]  # 2 px right of the mask: inside the dilation, a blend
    assert edge[1] > _px(image)[30, 43][1]


def test_lama_fill_paints_only_the_masked_area():
    model = tiny_lama(seed=2)
    seen = []
    run = model.model.forward

    def spy(image, mask):
        seen.append((image.clone(), mask.clone()))
        return run(image, mask)

    model.model.forward = spy
    image, mask = scene(96).resize((96, 80)), hole(96, (30, 20, 60, 50)).resize((96, 80), Image.NEAREST)
    filled = lama_fill(model, image, mask)
    (shown, m), = seen
    assert shown.shape[-2:] == (256, 320) and m.shape == (1, 1, 256, 320)  # 256-px short side, 64-px multiples
    assert set(m.unique().tolist()) == {0.0, 1.0} and 0 < m.mean() < 0.5
    keep = np.asarray(mask) == 0
    assert np.array_equal(_px(filled)[keep], _px(image)[keep])  # what is not masked stays as it was
    inside = np.asarray(mask) == 255
    assert np.abs(_px(filled) - _px(image))[inside].mean() > 1  # LaMa's paint where masked


def test_lama_variant_starts_from_the_filled_latent(pipe, cn):
    image, mask = scene(), hole()
    filled = lama_fill(tiny_lama(seed=2), image, mask)
    spec = ControlSpec(cn, filled, mask=mask, inpaint="only+lama")
    noise = torch.randn(1, 4, 8, 8)
    start = CI.start_noise(pipe, [spec], noise, 64, 64)
    x0 = pipe.encode_tensor(CI.control_image(filled, 64, 64) * 2 - 1)
    s = pipe.schedule.sigma_max
    assert torch.allclose(start, (x0 + s * noise) / (1 + s * s) ** 0.5, atol=1e-5)
    assert torch.equal(CI.start_noise(pipe, [ControlSpec(cn, filled, mask=mask, inpaint="only")], noise, 64, 64),
                       noise)
    lama = pipe.txt2img("a box", controls=[spec], **FAST)[0]
    only = pipe.txt2img("a box", controls=[ControlSpec(cn, filled, mask=mask, inpaint="only")], **FAST)[0]
    assert not np.array_equal(_px(lama), _px(only))


def test_missing_mask_and_lama_file_are_named(pipe, cn, tmp_path):
    with pytest.raises(InvalidArgument, match="a mask is required"):
        pipe.txt2img("a box", controls=[ControlSpec(cn, scene(), inpaint="only")], **FAST)
    with pytest.raises(InvalidArgument, match="not one of"):
        pipe.txt2img("a box", controls=[ControlSpec(cn, scene(), mask=hole(), inpaint="outside")], **FAST)
    folders = ModelFolders(tmp_path)
    with pytest.raises(InvalidArgument, match=f"{LAMA_FILE} is not installed.*ControlNetPreprocessor"):
        lama_file(folders)
    (tmp_path / "inpaint").mkdir()
    (tmp_path / "inpaint" / "big-lama.pt").write_bytes(b"x")
    assert lama_file(ModelFolders(tmp_path)).name == "big-lama.pt"
    (tmp_path / "ControlNetPreprocessor" / "lama").mkdir(parents=True)
    (tmp_path / "ControlNetPreprocessor" / "lama" / LAMA_FILE).write_bytes(b"x")
    assert lama_file(ModelFolders(tmp_path)).name == LAMA_FILE


def test_only_masked_img2img_crops_the_control_image_to_its_region(pipe, cn, monkeypatch):
    import opensd.adapters.controlnet as C

    seen = []
    real = C.ControlApplier.__init__

    def spy(self, specs, *args, **kw):
        seen.append(specs)
        real(self, specs, *args, **kw)

    monkeypatch.setattr(C.ControlApplier, "__init__", spy)
    image, mask = scene(), hole(64, (40, 40, 50, 50))
    spec = ControlSpec(cn, image, mask=mask, inpaint="global")
    pipe.img2img(image, "a box", mask=mask, inpaint_full_res=True, inpaint_full_res_padding=4, mask_blur=0,
                 controls=[spec], strength=0.5, **FAST)
    (used,) = seen[0]
    box = (36, 36, 55, 55)  # the mask's box (40..50) and 4 px of padding, square as the output
    assert used.image.size == (19, 19) and np.array_equal(_px(used.image), _px(image.crop(box)))
    assert np.array_equal(np.asarray(used.mask) > 127, np.asarray(mask.crop(box)) > 127)
    assert used.resize_mode == "just resize" and spec.image is image  # the caller's spec is left as it was
