"""A1111's token merging (tomesd with A1111's arguments) and Hypertile (its built-in extension) on
the tiny UNet and VAE: the patched layers against the arithmetic written out here, the pipeline's
settings against the same patches applied by hand, and off meaning exactly off."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from workflow_fixtures import module_calls

from opensd.library.synthetic import write_random_checkpoint
from opensd.models.hypertile import hypertile_unet, hypertile_vae, random_divisor, token_grid
from opensd.models.token_merging import tome_blocks
from opensd.pipeline.params import Hires
from opensd.pipeline.pipeline import load
from opensd.pipeline.speedups import HyperTile, Speedups


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("speedups") / "tiny.safetensors"))


def _blocks(unet):
    return [m for m in unet.modules() if hasattr(m, "attn1") and hasattr(m, "norm1")]


def _tomesd_by_hand(block, x, context, h, w, r):
    """tomesd's block (merge_attn only, use_rand False) for one image: the top-left token of each
    2x2 cell a destination; each other token's best destination by cosine on x; the r best-matched
    sources averaged (with it) into their destination; self-attention over the merged set (order
    does not matter: it has no positions); a merged token gets its destination's output."""
    n = x.shape[0]
    dst = [i * w + j for i in range(0, h // 2 * 2, 2) for j in range(0, w // 2 * 2, 2)]
    src = [t for t in range(n) if t not in dst]
    unit = x / x.norm(dim=-1, keepdim=True)
    match = {s: max(dst, key=lambda d: float(unit[s] @ unit[d])) for s in src}
    best = {s: float(unit[s] @ unit[match[s]]) for s in src}
    merged = sorted(src, key=lambda s: -best[s])[:r]
    y = block.norm1(x)
    group = {t: [t] for t in src if t not in merged} | {d: [d] + [s for s in merged if match[s] == d] for d in dst}
    order = list(group)
    tokens = torch.stack([y[group[t]].mean(0) for t in order])
    out = block.attn1(tokens[None])[0]
    where = {t: i for i, t in enumerate(order)} | {s: order.index(match[s]) for s in merged}
    x = x + out[[where[t] for t in range(n)]]
    x = x + block.attn2(block.norm2(x)[None], context[None])[0]
    return x + block.ff(block.norm3(x))


def test_token_merging_is_tomesd_with_a1111s_arguments(pipe):
    unet = pipe.model.unet
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(2, 4, 6, 8, generator=g), torch.tensor([400.0, 400.0])
    context = torch.randn(2, 77, pipe.config.unet.context_dim, generator=g)
    blocks = _blocks(unet)
    plain = module_calls(blocks, lambda: unet(x, t, context))
    with tome_blocks(unet, 0.4):
        merged = module_calls(blocks, lambda: unet(x, t, context))
    full = [i for i, (_, inp, _) in enumerate(merged) if inp.shape[1] == 48]
    assert full and len(full) < len(merged)
    for i, (block, inp, out) in enumerate(merged):
        if i not in full:  # lower resolutions run as they are
            torch.testing.assert_close(out, block(inp, context), rtol=0, atol=0)
            continue
        for b in range(2):  # each image (row of the batch) merges by its own similarities
            by_hand = _tomesd_by_hand(block, inp[b], context[b], 6, 8, int(48 * 0.4))
            torch.testing.assert_close(out[b], by_hand, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(merged[full[0]][2], plain[full[0]][2], atol=1e-4)
    with tome_blocks(unet, 0.0):
        same = module_calls(blocks, lambda: unet(x, t, context))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(same, plain))
    assert not any("forward" in b.__dict__ for b in blocks)


def test_hypertile_draws_and_grids_are_a1111s():
    # the `max_options` smallest divisors >= 16 of 64 are 16, 32, 64: 4, 2 or 1 tiles, picked by randint
    rng, ref = random.Random(5), random.Random(5)
    assert [random_divisor(64, 16, 3, rng) for _ in range(6)] == [[4, 2, 1][ref.randint(0, 2)] for _ in range(6)]
    assert random_divisor(8, 16, 3, random.Random(1)) == 1  # a side under the tile is one tile
    ref = random.Random(2)
    ref.randint(0, 0)
    rng = random.Random(2)
    random_divisor(8, 16, 3, rng)  # a single option still draws, as A1111's randint does
    assert rng.random() == ref.random()
    assert token_grid(64 * 96, 768 / 512) == (96, 64)  # h follows the width (A1111's arithmetic)
    assert token_grid(15, 1.0) == (5, 3)  # no rounding fits: the divisor pair nearest the aspect
    assert token_grid(12, 1.0) == (3, 4)


@pytest.mark.parametrize("width, height, grid, nh, nw", [(256, 256, (32, 32), 2, 2), (256, 128, (32, 16), 2, 1)])
def test_hypertile_unet_attends_within_tiles(pipe, width, height, grid, nh, nw):
    """Max tile 128 (16 latent pixels): the depth-0 layer A1111 names (input_blocks.1.1) sees the
    full-size latent, its tokens read as A1111's grid (for 256x128 the raster's 16 rows of 32 read
    as 32 rows of 16) and, with swap size 1, cut into tiles of 16 of those rows and columns; the
    middle block (depth 3: tiles of 128) stays whole; layers the table does not name are untouched."""
    unet = pipe.model.unet
    g = torch.Generator().manual_seed(4)
    x, t = torch.randn(1, 4, height // 8, width // 8, generator=g), torch.tensor([500.0])
    context = torch.randn(1, 77, pipe.config.unet.context_dim, generator=g)
    attns = [b.attn1 for b in _blocks(unet)]
    plain = module_calls(attns, lambda: unet(x, t, context))
    with hypertile_unet(unet, width, height, random.Random(0), max_tile=128, swap_size=1):
        tiled = module_calls(attns, lambda: unet(x, t, context))
    named = unet.input_blocks[1][1].transformer_blocks[0].attn1
    th, tw = grid[0] // nh, grid[1] // nw
    for (attn, inp, out), (_, _, before) in zip(tiled, plain):
        if attn is not named:
            torch.testing.assert_close(out, attn(inp), rtol=0, atol=0)
            continue
        rows, got = inp.reshape(*grid, -1), out.reshape(*grid, -1)
        for i in range(nh):
            for j in range(nw):
                part = (slice(th * i, th * i + th), slice(tw * j, tw * j + tw))
                torch.testing.assert_close(got[part].reshape(1, th * tw, -1),
                                           attn(rows[part].reshape(1, th * tw, -1)), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(out, before, atol=1e-4)
    assert not any("forward" in a.__dict__ for a in attns)


def test_hypertile_vae_attends_within_tiles(pipe):
    vae = pipe.model.vae
    attn = vae.decoder.mid.attn_1
    z = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    plain = module_calls([attn], lambda: vae.decode(z))
    with hypertile_vae(vae, 256, 256, random.Random(0), max_tile=128, swap_size=1):
        tiled = module_calls([attn], lambda: vae.decode(z))
    (_, inp, out), = tiled
    for i in range(2):
        for j in range(2):
            part = (..., slice(16 * i, 16 * i + 16), slice(16 * j, 16 * j + 16))
            torch.testing.assert_close(out[part], attn(inp[part].contiguous()), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out, plain[0][2], atol=1e-4)
    assert "forward" not in attn.__dict__


def _px(image):
    return np.asarray(image).astype(np.int16)


KW = dict(steps=3, seed=7, width=128, height=128)


def test_token_merging_setting_is_the_patched_unet(pipe):
    off = _px(pipe.txt2img("a red apple", **KW)[0])
    on = _px(pipe.txt2img("a red apple", token_merging=0.5, **KW)[0])
    with tome_blocks(pipe.model.unet, 0.5):
        by_hand = _px(pipe.txt2img("a red apple", **KW)[0])
    assert np.array_equal(on, by_hand) and np.abs(on - off).mean() > 0.01
    assert np.array_equal(off, _px(pipe.txt2img("a red apple", token_merging=0.0, **KW)[0]))
    # the hires pass merges at its own ratio (0: the first pass's), the first pass at its own
    hires = dict(KW, hires=Hires(scale=1.5, steps=2))
    plain = _px(pipe.txt2img("a red apple", **hires)[0])
    second = _px(pipe.txt2img("a red apple", **dict(hires, hires=Hires(scale=1.5, steps=2, token_merging=0.5)))[0])
    assert np.abs(second - plain).mean() > 0.01


def test_hypertile_setting_is_the_patched_unet_and_vae(pipe):
    kw = dict(KW, width=256, height=256)
    off = _px(pipe.txt2img("a red apple", **kw)[0])
    unet = HyperTile(unet=True, unet_max_tile=128)
    on = _px(pipe.txt2img("a red apple", hypertile=unet, **kw)[0])
    with hypertile_unet(pipe.model.unet, 256, 256, random.Random(7), max_tile=128):
        by_hand = _px(pipe.txt2img("a red apple", **kw)[0])
    assert np.array_equal(on, by_hand) and np.abs(on - off).mean() > 0.01
    vae = HyperTile(vae=True)
    rng = random.Random(7)
    with hypertile_vae(pipe.model.vae, 256, 256, rng):
        decoded = _px(pipe.txt2img("a red apple", **kw)[0])
    assert np.array_equal(_px(pipe.txt2img("a red apple", hypertile=vae, **kw)[0]), decoded)
    assert np.array_equal(off, _px(pipe.txt2img("a red apple", hypertile=HyperTile(), **kw)[0]))


def test_hires_pass_seeds_hypertile_again_unless_the_first_pass_tiled():
    for first, reseeded in ((False, True), (True, False)):
        s = Speedups(HyperTile(unet=first, unet_hires=True), 11, 64, 64, False)
        s.rng.random()
        s.before_hires(128, 96)
        assert s.size == (128, 96)
        assert (s.rng.random() == random.Random(11).random()) is reseeded


@pytest.mark.parametrize("kw, named", [
    ({"token_merging": 0.95}, "token_merging"), ({"token_merging": -0.1}, "token_merging"),
    ({"hires": Hires(token_merging=2.0)}, "hires token_merging"),
    ({"hypertile": HyperTile(unet_swap_size=0)}, "hypertile.unet_swap_size"),
    ({"hypertile": HyperTile(unet_max_depth=4)}, "hypertile.unet_max_depth")])
def test_bad_values_are_refused_naming_them(pipe, kw, named):
    from opensd.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match=f"^{named}: "):
        pipe.txt2img("x", steps=1, **kw)


def test_token_merging_infotext_round_trip_through_the_cli(pipe, tmp_path):
    from opensd.cli import main
    from opensd.pipeline.infotext import parse_infotext, read_infotext

    ckpt = pipe.loaded.path
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    fast = ["-m", str(ckpt), "--steps", "2", "--seed", "3", "--hires", "--hires-scale", "1.5", "--hires-steps", "2"]
    assert main(["generate", "a red apple", *fast, "--token-merging", "0.5", "-o", str(first)]) == 0
    params = parse_infotext(read_infotext(first))[2]
    # A1111 writes the hires pass's ratio too: its own, or else the first pass's
    assert params["Token merging ratio"] == "0.5" and params["Token merging ratio hr"] == "0.5"
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(again)]) == 0
    assert np.array_equal(_px(Image.open(first)), _px(Image.open(again)))
    assert main(["generate", "a red apple", *fast, "--hires-token-merging", "0.3", "-o", str(plain)]) == 0
    params = parse_infotext(read_infotext(plain))[2]
    assert "Token merging ratio" not in params and params["Token merging ratio hr"] == "0.3"
    assert not np.array_equal(_px(Image.open(first)), _px(Image.open(plain)))


def test_a1111_token_merging_keys_read_back():
    from opensd.pipeline.infotext import parse_infotext
    from opensd.pipeline.infotext_params import recorded

    text = ("a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.7, "
            "Token merging ratio: 0.3, Token merging ratio hr: 0.6, Hires upscale: 2, Hires upscaler: Latent")
    rec = recorded(*parse_infotext(text))
    assert rec.settings["token_merging"] == 0.3 and rec.hires["token_merging"] == 0.6


def test_cli_flags_make_the_settings():
    from opensd.cli import build_parser
    from opensd.cli.generate import generation_kwargs
    args = build_parser().parse_args(["generate", "x", "--token-merging", "0.4", "--hypertile", "--hypertile-vae",
                                      "--hires", "--hires-hypertile", "--hires-token-merging", "0.2"])
    kw = generation_kwargs(args)
    assert kw["token_merging"] == 0.4 and kw["hires"].token_merging == 0.2
    assert kw["hypertile"] == HyperTile(unet=True, unet_hires=True, vae=True)
    assert "hypertile" not in generation_kwargs(build_parser().parse_args(["generate", "x"]))


def test_a_compiled_unet_is_refused_naming_the_setting(pipe):
    from opensd.errors import InvalidArgument
    unet = pipe.model.unet
    unet._compiled_call_impl = lambda *a, **k: pytest.fail("not run")
    try:
        for kw, named in (({"token_merging": 0.5}, "token_merging"), ({"hypertile": HyperTile(vae=True)}, "hypertile")):
            with pytest.raises(InvalidArgument, match=f"^{named}: it patches the UNet's PyTorch attention"):
                pipe.txt2img("x", steps=1, **kw)
    finally:
        unet._compiled_call_impl = None
