"""Morphology, RGB/YUV, ImageQuantize, ImageColorToMask and the alpha compositing nodes
(ComfyUI's nodes_morphology, nodes_post_processing, nodes_mask, nodes_compositing) against
their arithmetic written out here."""
import numpy as np
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.workflows import nodes_alpha as AL
from opensd.workflows import nodes_image_filters as IF


def _window_by_hand(img: np.ndarray, k: int, pick) -> np.ndarray:
    """kornia's flat-kernel dilation/erosion: the window k//2 before and k-k//2-1 after each pixel,
    outside pixels ignored."""
    h, w = img.shape
    out = np.empty_like(img)
    for i in range(h):
        for j in range(w):
            rows = slice(max(0, i - k // 2), min(h, i + k - k // 2))
            cols = slice(max(0, j - k // 2), min(w, j + k - k // 2))
            out[i, j] = pick(img[rows, cols])
    return out


@pytest.mark.parametrize("k", [3, 4, 7])
def test_morphology_operations_as_kornia_computes_them(k):
    g = np.random.default_rng(k)
    img = g.random((2, 9, 11, 3)).astype(np.float32)
    t = torch.from_numpy(img)
    dil = np.stack([np.stack([_window_by_hand(img[b, ..., c], k, np.max) for c in range(3)], -1) for b in range(2)])
    ero = np.stack([np.stack([_window_by_hand(img[b, ..., c], k, np.min) for c in range(3)], -1) for b in range(2)])
    (d,) = IF.morphology(None, t, "dilate", k)
    (e,) = IF.morphology(None, t, "erode", k)
    np.testing.assert_allclose(d.numpy(), dil, atol=0)
    np.testing.assert_allclose(e.numpy(), ero, atol=0)
    np.testing.assert_allclose(IF.morphology(None, t, "gradient", k)[0].numpy(), dil - ero, atol=1e-7)
    opened = IF.morphology(None, e, "dilate", k)[0]
    closed = IF.morphology(None, d, "erode", k)[0]
    assert torch.equal(IF.morphology(None, t, "open", k)[0], opened)
    assert torch.equal(IF.morphology(None, t, "close", k)[0], closed)
    assert torch.allclose(IF.morphology(None, t, "top_hat", k)[0], t - opened)
    assert torch.allclose(IF.morphology(None, t, "bottom_hat", k)[0], closed - t)


def test_morphology_with_a_kernel_larger_than_the_image_is_the_global_extreme():
    t = torch.rand(1, 5, 6, 3)
    (d,) = IF.morphology(None, t, "dilate", 999)
    assert torch.equal(d, t.amax(dim=(1, 2), keepdim=True).expand_as(t))


def test_rgb_yuv_round_trip_with_kornias_constants():
    rgb = torch.tensor([[[[1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]]])
    y, u, v = IF.rgb_to_yuv(None, rgb)
    assert y.shape == rgb.shape and torch.allclose(y[0, 0, 0], torch.full((3,), 0.299))
    assert torch.allclose(u[0, 0, 0, 0], torch.tensor(0.5 - 0.299 * 0.564))
    assert torch.allclose(v[0, 0, 1, 0], torch.tensor((0.2 - 0.363) * 0.713 + 0.5))  # y = 0.0598 + 0.2348 + 0.0684
    (back,) = IF.yuv_to_rgb(None, y, u, v)
    assert torch.allclose(back, rgb, atol=2e-3)  # kornia's rounded constants do not invert exactly


def test_bayer_matrices_and_quantize():
    assert np.allclose(IF.bayer_matrix(1), np.array([[0, 2], [3, 1]]) / 4 - 0.375)
    b4 = IF.bayer_matrix(2)
    assert sorted((b4 * 16 + 7.5).ravel().tolist()) == list(range(16))  # each threshold once
    two = torch.zeros(1, 6, 8, 3)
    two[:, :, 4:] = torch.tensor([1.0, 0.5, 0.0])
    truncated = (two * 255).to(torch.uint8).float() / 255  # 0.5 -> 127, as ComfyUI's bytes
    for dither in IF.DITHERS:
        (q,) = IF.image_quantize(None, two, 2, dither)
        if dither in ("none", "floyd-steinberg"):
            assert torch.equal(q, truncated), dither  # already 2 colours
        else:  # Bayer offsets of up to +-0.47 x 256 / 2 colours move pixels across, onto the same 2
            colours = {tuple(c) for c in q.reshape(-1, 3).tolist()}
            assert colours <= {tuple(c) for c in truncated.reshape(-1, 3).tolist()} and len(colours) == 2
    noisy = torch.rand(2, 16, 16, 4, generator=torch.Generator().manual_seed(0))
    (q,) = IF.image_quantize(None, noisy, 4, "floyd-steinberg")
    for i in range(2):
        assert len(torch.unique(q[i, ..., :3].reshape(-1, 3), dim=0)) <= 4
    assert torch.equal(q[..., 3], noisy[..., 3])  # alpha untouched
    (b,) = IF.image_quantize(None, noisy[..., :3], 4, "bayer-4")
    assert len(torch.unique(b[0].reshape(-1, 3), dim=0)) <= 4


def test_image_color_to_mask_matches_rounded_bytes():
    img = torch.tensor([[[[1.0, 0.5, 0.0], [1.0, 0.49, 0.0], [0.0, 0.0, 0.0]]]])
    (m,) = IF.image_color_to_mask(None, img, 0xFF8000)  # 0.5 * 255 = 127.5 rounds to 128
    assert m.tolist() == [[[1.0, 0.0, 0.0]]]
    assert IF.image_color_to_mask(None, img, 0)[0].tolist() == [[[0.0, 0.0, 1.0]]]


def _const(value, h=2, w=3, c=3):
    return torch.full((1, h, w, c), float(value))


@pytest.mark.parametrize("mode,alpha,colour", [
    # source colour 0.8 at alpha 0.6, destination 0.2 at alpha 0.5 (masks 0.4 and 0.5)
    ("SRC_OVER", 0.6 + 0.4 * 0.5, (0.8 * 0.6 + 0.4 * 0.2 * 0.5) / 0.8),
    ("DST_OVER", 0.5 + 0.5 * 0.6, (0.2 * 0.5 + 0.5 * 0.8 * 0.6) / 0.8),
    ("SRC_IN", 0.3, 0.8 * 0.6 * 0.5 / 0.3),
    ("XOR", 0.5 * 0.6 + 0.4 * 0.5, (0.5 * 0.48 + 0.4 * 0.1) / 0.5),
    ("MULTIPLY", 0.3, 0.48 * 0.1 / 0.3),
    ("ADD", 1.0, 0.58),
    ("CLEAR", 0.0, 0.0),
    ("LIGHTEN", 0.8, (0.5 * 0.48 + 0.4 * 0.1 + 0.48) / 0.8),
])
def test_porter_duff_modes_through_premultiplied_alpha(mode, alpha, colour):
    image, mask = AL.porter_duff_image_composite(None, _const(0.8), _const(0.4, c=1)[..., 0], _const(0.2),
                                                 _const(0.5, c=1)[..., 0], mode)
    assert torch.allclose(mask, torch.full((1, 2, 3), 1 - alpha))
    assert torch.allclose(image, torch.full((1, 2, 3, 3), min(1.0, colour)))


def test_porter_duff_fits_the_source_to_the_destination_and_refuses_channel_mismatch():
    image, mask = AL.porter_duff_image_composite(None, _const(0.8, 4, 6), torch.zeros(1, 4, 6), _const(0.2, 2, 3),
                                                 torch.zeros(1, 2, 3), "SRC_OVER")
    assert image.shape == (1, 2, 3, 3) and torch.allclose(image, torch.full_like(image, 0.8))
    with pytest.raises(InvalidArgument, match="^source: 4 channels cannot be composited onto 3"):
        AL.porter_duff_image_composite(None, _const(0.8, c=4), torch.zeros(1, 2, 3), _const(0.2),
                                       torch.zeros(1, 2, 3), "SRC")


def test_split_and_join_alpha():
    rgba = torch.rand(2, 4, 5, 4)
    rgb, mask = AL.split_image_with_alpha(None, rgba)
    assert torch.equal(rgb, rgba[..., :3]) and torch.allclose(mask, 1 - rgba[..., 3])
    assert torch.equal(AL.split_image_with_alpha(None, rgb)[1], torch.zeros(2, 4, 5))
    (joined,) = AL.join_image_with_alpha(None, rgb, mask)
    assert torch.allclose(joined, rgba)
    (stretched,) = AL.join_image_with_alpha(None, rgb, torch.tensor([[[0.0, 1.0]]]))  # 1 x 2 mask, one image
    assert stretched.shape == (1, 4, 5, 4)
    assert torch.allclose(stretched[0, :, 0, 3], torch.ones(4)) and torch.allclose(stretched[0, :, -1, 3], torch.zeros(4))
