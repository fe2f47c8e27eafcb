"""ImageAddNoise, ResizeAndPadImage and ImageScaleToMaxDimension (ComfyUI's comfy_extras
.nodes_images) against their arithmetic written out here."""
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.workflows import nodes_image_resize as R
from opensd.workflows.nodes_image import upscale


def test_image_add_noise_draws_from_the_seed_and_clips():
    image = torch.full((2, 3, 4, 3), 0.5)
    (out,) = R.image_add_noise(None, image, 11, 0.25)
    torch.manual_seed(11)  # ComfyUI's generator: the default one, seeded
    want = (image + 0.25 * torch.randn(image.size())).clip(0, 1)
    assert torch.equal(out, want)
    assert torch.equal(R.image_add_noise(None, image, 11, 0.0)[0], image)
    assert R.image_add_noise(None, image, 0xFFFFFFFFFFFFFFFF, 1.0)[0].shape == image.shape  # the largest seed


def test_resize_and_pad_fits_and_centres():
    image = torch.rand(1, 10, 20, 3)
    (out,) = R.resize_and_pad_image(None, image, 16, 16, "black", "bilinear")  # scale 0.8: 16 x 8
    assert out.shape == (1, 16, 16, 3)
    inner = upscale(image.movedim(-1, 1), 16, 8, "bilinear", "disabled").movedim(1, -1)
    assert torch.equal(out[:, 4:12], inner) and out[:, :4].eq(0).all() and out[:, 12:].eq(0).all()
    (white,) = R.resize_and_pad_image(None, image, 31, 5, "white", "nearest-exact")  # scale 0.5: 10 x 5 at x 10
    inner = upscale(image.movedim(-1, 1), 10, 5, "nearest-exact", "disabled").movedim(1, -1)
    assert white.shape == (1, 5, 31, 3) and torch.equal(white[:, :, 10:20], inner)
    assert white[:, :, :10].eq(1).all() and white[:, :, 20:].eq(1).all()


@pytest.mark.parametrize("h,w,size,want", [(10, 20, 8, (4, 8)), (30, 10, 9, (9, 3)), (7, 7, 5, (5, 5)),
                                           (3, 1000, 10, (1, 10))])
def test_scale_to_max_dimension(h, w, size, want):
    (out,) = R.image_scale_to_max_dimension(None, torch.rand(1, h, w, 3), "area", size)
    assert out.shape[1:3] == want


def test_scale_to_max_dimension_zero_is_one_line():
    with pytest.raises(InvalidArgument, match="^largest_size: must be at least 1 pixel$"):
        R.image_scale_to_max_dimension(None, torch.rand(1, 4, 4, 3), "area", 0)


def test_huge_canvases_are_refused_before_allocating():
    from opensd.workflows import nodes_alpha as AL
    with pytest.raises(InvalidArgument, match="^ResizeAndPadImage: 64 x 16384 x 16384 x 3 is"):
        R.resize_and_pad_image(None, torch.rand(64, 2, 2, 3), 16384, 16384, "white", "area")
    with pytest.raises(InvalidArgument, match="^JoinImageWithAlpha: 4096 x 16384 x 16384 is"):
        AL.join_image_with_alpha(None, torch.zeros(1, 1, 1, 3).expand(1, 16384, 16384, 3),  # a view: no memory
                                 torch.zeros(4096, 1, 1))
