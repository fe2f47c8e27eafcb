"""LatentInterpolate, LatentConcat, LatentCut, LatentBatchSeedBehavior and the latent operations
(ComfyUI's comfy_extras.nodes_latent) against their arithmetic written out here."""
import numpy as np
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.workflows import nodes_latent_ops as LO
from opensd.workflows.ksampler import prepare_noise


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_latent_interpolate_blends_directions_and_lengths_per_pixel():
    a, b = rand(2, 4, 3, 5), rand(2, 4, 3, 5, seed=1)
    (out,) = LO.latent_interpolate(None, {"samples": a}, {"samples": b}, 0.3)
    an, bn = a.numpy(), b.numpy()
    for i in range(2):
        for y in range(3):
            for x in range(5):
                u, v = an[i, :, y, x], bn[i, :, y, x]
                mu, mv = np.linalg.norm(u), np.linalg.norm(v)
                t = 0.3 * u / mu + 0.7 * v / mv
                want = t / np.linalg.norm(t) * (0.3 * mu + 0.7 * mv)
                np.testing.assert_allclose(out["samples"][i, :, y, x].numpy(), want, rtol=1e-5, atol=1e-6)
    assert torch.allclose(LO.latent_interpolate(None, {"samples": a}, {"samples": b}, 1.0)[0]["samples"], a, atol=1e-6)
    zero = LO.latent_interpolate(None, {"samples": torch.zeros(1, 4, 2, 2)}, {"samples": torch.zeros(1, 4, 2, 2)}, 0.5)
    assert torch.equal(zero[0]["samples"], torch.zeros(1, 4, 2, 2))  # 0/0 is 0, as nan_to_num makes it


def test_latent_concat_and_cut():
    a, b = rand(1, 4, 2, 3), rand(1, 4, 2, 5, seed=1)
    def concat(dim):
        return LO.latent_concat(None, {"samples": a}, {"samples": b}, dim)[0]["samples"]
    assert torch.equal(concat("x"), torch.cat([a, b], -1)) and torch.equal(concat("-x"), torch.cat([b, a], -1))
    c = rand(2, 4, 6, 3, seed=2)
    (tall,) = LO.latent_concat(None, {"samples": c}, {"samples": a}, "y")
    assert torch.equal(tall["samples"], torch.cat([c, a.repeat(2, 1, 1, 1)], -2))  # a repeated to the batch
    with pytest.raises(InvalidArgument, match=r"^samples2: a \(4, 2, 5\) latent cannot be joined along y"):
        LO.latent_concat(None, {"samples": a}, {"samples": b}, "y")
    big = torch.zeros(1, 1, 1, 1).expand(1, 4, 4096, 4096)  # a view: no memory
    with pytest.raises(InvalidArgument, match="^LatentConcat: 4096 x 4 x 4096 x 4096 is"):
        LO.latent_concat(None, {"samples": torch.zeros(4096, 4, 1, 1)}, {"samples": big}, "x")
    with pytest.raises(InvalidArgument, match="^dim: -t is a video latent's time axis"):
        LO.latent_concat(None, {"samples": a}, {"samples": a}, "-t")
    s = rand(1, 4, 5, 7)
    cut = lambda dim, index, amount: LO.latent_cut(None, {"samples": s}, dim, index, amount)[0]["samples"]  # noqa: E731
    assert torch.equal(cut("x", 2, 3), s[..., 2:5])
    assert torch.equal(cut("x", 5, 10), s[..., 5:])  # clipped to what is there
    assert torch.equal(cut("y", -2, 5), s[:, :, 3:])  # from the end
    assert torch.equal(cut("y", 99, 1), s[:, :, 4:])
    assert torch.equal(cut("x", -99, 2), s[..., :2])
    (kept,) = LO.latent_cut(None, {"samples": s, "pixel_size": (56, 40)}, "x", 0, 4)
    assert kept["pixel_size"] == (32, 40)


def test_latent_cut_to_batch_stacks_slices_image_by_image():
    s = torch.arange(2 * 1 * 2 * 5, dtype=torch.float32).reshape(2, 1, 2, 5)
    (out,) = LO.latent_cut_to_batch(None, {"samples": s, "pixel_size": (40, 16)}, "x", 2)
    # the fifth column is dropped; image 0's two slices, then image 1's
    want = torch.stack([s[0, :, :, 0:2], s[0, :, :, 2:4], s[1, :, :, 0:2], s[1, :, :, 2:4]])
    assert torch.equal(out["samples"], want) and out["pixel_size"] == (16, 16)
    (rows,) = LO.latent_cut_to_batch(None, {"samples": s}, "y", 1)
    assert torch.equal(rows["samples"], torch.stack([s[0, :, 0:1], s[0, :, 1:2], s[1, :, 0:1], s[1, :, 1:2]]))
    (whole,) = LO.latent_cut_to_batch(None, {"samples": s}, "x", 9)  # a slice wider than the latent: one slice
    assert torch.equal(whole["samples"], s)
    latent = {"samples": s}
    assert LO.latent_cut_to_batch(None, latent, "t", 2)[0] is latent  # an image latent has no time axis


def test_latent_batch_seed_behavior_picks_the_noise():
    s = torch.zeros(3, 4, 2, 2)
    (fixed,) = LO.latent_batch_seed_behavior(None, {"samples": s, "batch_index": [4, 5, 6]}, "fixed")
    assert fixed["batch_index"] == [4, 4, 4]
    noise = prepare_noise(s, 9, fixed["batch_index"])
    alone = prepare_noise(torch.zeros(5, 4, 2, 2), 9)
    assert all(torch.equal(noise[i], alone[4]) for i in range(3))
    (rand_,) = LO.latent_batch_seed_behavior(None, {"samples": s, "batch_index": [4, 5, 6]}, "random")
    assert "batch_index" not in rand_
    assert LO.latent_batch_seed_behavior(None, {"samples": s}, "fixed")[0]["batch_index"] == [0, 0, 0]


def test_tonemap_reinhard_compresses_lengths():
    x = rand(2, 4, 6, 6) * 3
    (op,) = (LO.tonemap_reinhard(1.5),)
    (out,) = LO.latent_apply_operation(None, {"samples": x}, op)
    n = x.numpy()
    for i in range(2):
        length = np.linalg.norm(n[i], axis=0) + 1e-10
        top = (length.std(ddof=1) * 5 + length.mean()) * 1.5
        want = n[i] / length * (length / top / (length / top + 1) * top)
        np.testing.assert_allclose(out["samples"][i].numpy(), want, rtol=1e-5, atol=1e-6)


def test_sharpen_acts_on_unit_vectors_and_keeps_lengths():
    x = rand(1, 4, 7, 8)
    assert torch.allclose(LO.sharpen(2, 1.0, 0.0)(x), x, atol=1e-5)  # alpha 0: the kernel is a delta
    out = LO.sharpen(1, 1.0, 0.5)(x).numpy()
    g = np.exp(-np.add.outer(np.linspace(-1, 1, 3) ** 2, np.linspace(-1, 1, 3) ** 2) / 2)
    k = g / g.sum() * -5
    k[1, 1] += 1 - k.sum()
    n = x.numpy()[0]
    length = np.linalg.norm(n, axis=0) + 1e-6
    unit = np.pad(n / length, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    want = np.zeros_like(n)
    for y in range(7):
        for xx in range(8):
            want[:, y, xx] = (unit[:, y:y + 3, xx:xx + 3] * k).sum(axis=(1, 2)) * length[y, xx]
    np.testing.assert_allclose(out[0], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidArgument, match="^sharpen_radius: 9 needs a latent larger than 9"):
        LO.sharpen(9, 1.0, 0.1)(x)


def test_an_operation_runs_in_a_graph_and_only_an_operation_fits_its_input(tmp_path):
    from workflow_fixtures import Loader, make_ctx, make_models

    from opensd.workflows import GraphError, execute, validate_prompt
    folders = make_models(tmp_path / "models")
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    graph = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
             "2": {"class_type": "LatentOperationSharpen", "inputs": {"sharpen_radius": 2, "sigma": 1.0, "alpha": 0.5}},
             "3": {"class_type": "LatentApplyOperation", "inputs": {"samples": ["1", 0], "operation": ["2", 0]}},
             "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "op"}}}
    execute(graph, ctx)
    assert len(list((tmp_path / "output").glob("op*.latent"))) == 1
    graph["3"]["inputs"]["operation"] = ["1", 0]
    with pytest.raises(GraphError):
        validate_prompt(graph)
