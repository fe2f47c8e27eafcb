"""ComfyUI's latent nodes, each against its definition computed here independently (loops, numpy,
hand-made cases), not by calling the code under test twice."""
import math

import numpy as np
import torch

from opensd.workflows import nodes_latent as L


def lat(x, **extra):
    return {"samples": x, **extra}


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _bilinear_1d(values: np.ndarray, new: int) -> np.ndarray:
    """Half-pixel-centre linear resampling along the last axis, clamped at the edges."""
    old = values.shape[-1]
    out = np.zeros(values.shape[:-1] + (new,))
    for j in range(new):
        p = max((j + 0.5) * old / new - 0.5, 0.0)
        lo = min(int(math.floor(p)), old - 1)
        hi = min(lo + 1, old - 1)
        r = p - lo
        out[..., j] = values[..., lo] * (1 - r) + values[..., hi] * r
    return out


def test_upscale_by_nearest_repeats_cells_and_bilinear_matches_the_formula():
    x = rand(1, 4, 3, 5)
    (out,) = L.latent_upscale_by(None, lat(x, noise_mask=torch.ones(1, 1, 8, 8)), "nearest-exact", 2.0)
    assert out["samples"].shape == (1, 4, 6, 10) and "noise_mask" in out
    assert torch.equal(out["samples"], x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    (out,) = L.latent_upscale_by(None, lat(x), "bilinear", 1.5)  # 3x5 -> round(4.5)=4 x round(7.5)=8
    assert out["samples"].shape == (1, 4, 4, 8)
    ref = _bilinear_1d(_bilinear_1d(x.double().numpy(), 8).swapaxes(2, 3), 4).swapaxes(2, 3)
    np.testing.assert_allclose(out["samples"].numpy(), ref, rtol=1e-5, atol=1e-5)


def _slerp(a, b, r):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    ua, ub = a / na, b / nb
    dot = float(ua @ ub)
    if dot > 1 - 1e-5:
        return a
    if dot < 1e-5 - 1:
        return a * (1 - r) + b * r
    om = math.acos(dot)
    return (math.sin((1 - r) * om) * ua + math.sin(r * om) * ub) / math.sin(om) * (na * (1 - r) + nb * r)


def _bislerp_1d(x: np.ndarray, new: int) -> np.ndarray:
    """(C, H, W) -> (C, H, new): each output pixel slerps its two bilinear neighbours' vectors."""
    c, h, old = x.shape
    out = np.zeros((c, h, new))
    for j in range(new):
        p = max((j + 0.5) * old / new - 0.5, 0.0)
        lo = min(int(math.floor(p)), old - 1)
        hi = min(lo + 1, old - 1)
        for i in range(h):
            out[:, i, j] = _slerp(x[:, i, lo], x[:, i, hi], p - lo)
    return out


def test_bislerp_slerps_latent_vectors_and_keeps_their_length():
    x = rand(1, 4, 3, 4, seed=3)
    (out,) = L.latent_upscale_by(None, lat(x), "bislerp", 2.0)
    ref = _bislerp_1d(_bislerp_1d(x[0].double().numpy(), 8).swapaxes(1, 2), 6).swapaxes(1, 2)
    np.testing.assert_allclose(out["samples"][0].numpy(), ref, rtol=1e-4, atol=1e-5)
    # halfway between two orthogonal unit vectors: unit length (bilinear would give 0.707)
    two = torch.zeros(1, 4, 1, 2)
    two[0, 0, 0, 0], two[0, 1, 0, 1] = 1.0, 1.0
    (mid,) = L.latent_upscale_by(None, lat(two), "bislerp", 2.0)  # positions -0.25, 0.25, 0.75, 1.25
    norms = mid["samples"][0, :, 0].norm(dim=0)
    torch.testing.assert_close(norms, torch.ones(4))


def test_add_subtract_multiply_fit_the_second_latent_to_the_first():
    s1 = rand(2, 4, 6, 6)
    s2 = torch.arange(4.0).reshape(1, 4, 1, 1).expand(1, 4, 3, 3).clone()  # constant per channel: any resize keeps it
    expect = torch.arange(4.0).reshape(1, 4, 1, 1)
    (a,) = L.latent_add(None, lat(s1, batch_index=[3, 4]), lat(s2))
    assert torch.allclose(a["samples"], s1 + expect) and a["batch_index"] == [3, 4]
    (d,) = L.latent_subtract(None, lat(s1), lat(s2))
    assert torch.allclose(d["samples"], s1 - expect)
    (m,) = L.latent_multiply(None, lat(s1), -2.5)
    assert torch.equal(m["samples"], s1 * -2.5)


def test_composite_pastes_and_feathers_only_the_inner_edges():
    to, src = torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 4, 4)
    (plain,) = L.latent_composite(None, lat(to), lat(src), 16, 8, 0)  # cells (x=2, y=1)
    expect = torch.zeros(8, 8)
    expect[1:5, 2:6] = 1
    assert torch.equal(plain["samples"][0, 0], expect)
    (f,) = L.latent_composite(None, lat(to), lat(src), 8, 0, 16)  # x=1 cell, y=0, feather 2 cells
    # y == 0: no fade on top; the bottom (row 3 < 8), left (x != 0) and right (1 + 4 < 8) edges fade 0.5, 1
    ramp = torch.tensor([0.5, 1.0, 1.0, 1.0])
    mask = torch.outer(ramp.flip(0), ramp * ramp.flip(0))
    expect = torch.zeros(8, 8)
    expect[0:4, 1:5] = mask
    assert torch.allclose(f["samples"][0, 0], expect)
    (clipped,) = L.latent_composite(None, lat(to), lat(torch.ones(1, 1, 6, 6)), 32, 32, 0)  # runs off the edge
    assert clipped["samples"][0, 0, 4:, 4:].eq(1).all() and clipped["samples"][0, 0, :4].eq(0).all()


def test_composite_masked_stretches_the_mask_over_the_source():
    dest, src = torch.zeros(2, 4, 6, 6), torch.full((1, 4, 2, 2), 3.0)
    mask = torch.zeros(16, 16)
    mask[:, :8] = 1  # left half: bilinear down to 2x2 samples pixel centres 3.5 and 11.5 -> 1, 0
    (out,) = L.latent_composite_masked(None, lat(dest), lat(src), 8, 16, False, mask)
    expect = torch.zeros(2, 4, 6, 6)
    expect[:, :, 2:4, 1] = 3.0
    assert torch.equal(out["samples"], expect) and dest.eq(0).all()
    (whole,) = L.latent_composite_masked(None, lat(dest), lat(src), 0, 0, True)  # resized to 6x6, no mask
    assert whole["samples"].eq(3.0).all()


def test_blend_weights_the_first_latent_by_the_factor():
    s1, s2 = rand(1, 4, 4, 4), rand(1, 4, 4, 4, seed=1)
    (out,) = L.latent_blend(None, lat(s1), lat(s2), 0.3)
    assert torch.allclose(out["samples"], 0.3 * s1 + 0.7 * s2)


def test_from_batch_and_repeat_track_batch_indices_and_masks():
    x = rand(4, 4, 2, 2)
    masks = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 3, 3)
    (one,) = L.latent_from_batch(None, lat(x, noise_mask=masks), 2, 5)
    assert torch.equal(one["samples"], x[2:]) and one["batch_index"] == [2, 3]
    assert one["noise_mask"][:, 0, 0, 0].tolist() == [0.0, 1.0]  # masks repeated to the batch: 0,1,0,1
    (last,) = L.latent_from_batch(None, lat(x), 9, 1)  # index past the end: the last one
    assert torch.equal(last["samples"], x[3:]) and last["batch_index"] == [3]
    (rep,) = L.repeat_latent_batch(None, one, 3)
    assert torch.equal(rep["samples"], x[2:].repeat(3, 1, 1, 1))
    assert rep["batch_index"] == [2, 3, 4, 5, 6, 7] and rep["noise_mask"].shape[0] == 6


def test_rotate_flip_crop():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)  # [[0 1 2], [3 4 5]]
    (r,) = L.latent_rotate(None, lat(x), "90 degrees")
    assert r["samples"][0, 0].tolist() == [[3, 0], [4, 1], [5, 2]]  # clockwise
    (r,) = L.latent_rotate(None, lat(x), "270 degrees")
    assert r["samples"][0, 0].tolist() == [[2, 5], [1, 4], [0, 3]]
    (r,) = L.latent_rotate(None, lat(x), "180 degrees")
    assert r["samples"][0, 0].tolist() == [[5, 4, 3], [2, 1, 0]]
    (f,) = L.latent_flip(None, lat(x), "x-axis: vertically")
    assert f["samples"][0, 0].tolist() == [[3, 4, 5], [0, 1, 2]]
    (f,) = L.latent_flip(None, lat(x), "y-axis: horizontally")
    assert f["samples"][0, 0].tolist() == [[2, 1, 0], [5, 4, 3]]
    big = rand(1, 4, 12, 16)
    (c,) = L.latent_crop(None, lat(big), 64, 32, 16, 8)
    assert torch.equal(c["samples"], big[:, :, 1:5, 2:10])
    (c,) = L.latent_crop(None, lat(big), 64, 64, 200, 200)  # x, y pulled back to leave 8 cells
    assert torch.equal(c["samples"], big[:, :, 4:12, 8:16])


def test_size_changes_keep_an_empty_latents_pixel_size_in_step():
    from opensd.workflows.nodes_image import empty_latent
    (empty,) = empty_latent(None, 64, 48)
    (up,) = L.latent_upscale_by(None, empty, "nearest-exact", 1.5)
    assert up["samples"].shape[2:] == (9, 12) and up["pixel_size"] == (96, 72)
    (same,) = L.latent_multiply(None, empty, 2.0)
    assert same["pixel_size"] == (64, 48)


def test_latent_batch_resizes_the_second_and_keeps_each_halfs_noise():
    from opensd.workflows.ksampler import prepare_noise
    a, b = rand(2, 4, 4, 6), rand(1, 4, 2, 3, seed=1)
    (both,) = L.latent_batch(None, lat(a, noise_mask=torch.ones(1, 1, 32, 48)), lat(b, batch_index=[5]))
    s = both["samples"]
    assert s.shape == (3, 4, 4, 6) and torch.equal(s[:2], a)
    # b stretched (bilinear) to a's size
    assert torch.allclose(s[2], torch.from_numpy(
        _bilinear_1d(_bilinear_1d(b[0].numpy(), 6).swapaxes(-1, -2), 4).swapaxes(-1, -2)).float(), atol=1e-6)
    assert both["batch_index"] == [0, 1, 5] and both["noise_mask"].shape == (1, 1, 32, 48)
    # the batched images draw the noise they would draw alone: index 5 is the 6th draw of the seed
    noise = prepare_noise(s, 7, both["batch_index"])
    alone = prepare_noise(torch.zeros(6, 4, 4, 6), 7)
    assert torch.equal(noise[2], alone[5]) and torch.equal(noise[:2], alone[:2])
