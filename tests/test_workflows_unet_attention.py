"""HyperTile and SelfAttentionGuidance (ComfyUI's comfy_extras.nodes_hypertile / nodes_sag) on the
tiny UNet: the patched attention against the same arithmetic written out here, whole samplings,
and nothing left behind."""
import math
from types import SimpleNamespace

import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.errors import InvalidArgument
from opensd.families import FLUX
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_unet_attention as A
from opensd.workflows.types import ModelRef
from opensd.workflows.unet_patches import hypertile, random_divisor


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("attn"))


def _attn1_calls(unet, run):
    """(module, input, output) of every self-attention call while run() runs."""
    seen, handles = [], []
    for block in unet.modules():
        if hasattr(block, "attn1"):
            handles.append(block.attn1.register_forward_hook(
                lambda m, args, out: seen.append((m, args[0].clone(), out.clone()))))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _tiled_by_hand(attn, x, nh, nw, h, w):
    """ComfyUI's HyperTile on one attention: queries in nh x nw tiles of the h x w grid read from
    the raster tokens, tile t attending to the t-th run of n / (nh nw) keys/values."""
    b, n, c = x.shape
    th, tw, tiles = h // nh, w // nw, nh * nw
    heads = attn.heads
    d = attn.to_q.weight.shape[0] // heads
    grid = x.reshape(b, h, w, c)
    out = torch.empty(b, n, attn.to_out[0].weight.shape[0])
    for bi in range(b):
        for i in range(nh):
            for j in range(nw):
                t = i * nw + j
                qx = grid[bi, i * th:(i + 1) * th, j * tw:(j + 1) * tw].reshape(th * tw, c)
                run = x[bi, t * (n // tiles):(t + 1) * (n // tiles)]
                q, k, v = attn.to_q(qx), attn.to_k(run), attn.to_v(run)
                heads_out = []
                for hd in range(heads):
                    s = slice(hd * d, (hd + 1) * d)
                    p = torch.softmax(q[:, s] @ k[:, s].T / math.sqrt(d), dim=-1)
                    heads_out.append(p @ v[:, s])
                o = attn.to_out(torch.cat(heads_out, dim=-1)).reshape(th, tw, -1)
                out[bi].view(h, w, -1)[i * th:(i + 1) * th, j * tw:(j + 1) * tw] = o
    return out


def test_random_divisor_counts_tiles_as_comfyui():
    never = lambda n: pytest.fail("no draw with one option")  # noqa: E731
    assert random_divisor(16, 4, 1, never) == 4  # 16 // 4
    assert random_divisor(3, 4, 2, never) == 1  # min clipped to the value itself
    assert random_divisor(16, 4, 3, lambda n: n - 1) == 2  # options 4, 2, 1 (divisors 4, 8, 16): randint(0, 2)
    assert random_divisor(12, 4, 2, lambda n: 0 if n == 1 else pytest.fail()) == 3  # options 3, 2: draws in [0, 1)


def test_hypertile_tiles_the_full_resolution_queries_as_comfyui(env):
    _, model, pos, _ = env
    unet = model.pipe.model.unet
    x = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(3))
    t, ctx = torch.tensor([500.0, 500.0]), pos[0][0].repeat(2, 1, 1)
    plain = _attn1_calls(unet, lambda: unet(x, t, ctx))
    # tile_size 32 -> 4 latent pixels: the 8 x 12 grid (read as ComfyUI's 12 x 8) in 3 x 2 tiles
    with hypertile(unet, 32, 1, 0, False, lambda n: pytest.fail("one option")):
        tiled = _attn1_calls(unet, lambda: unet(x, t, ctx))
    full = [i for i, (_, inp, _) in enumerate(tiled) if inp.shape[1] == 96]
    assert full and len(tiled) == len(plain)
    for i, (attn, inp, out) in enumerate(tiled):
        if i in full:
            want = _tiled_by_hand(attn, inp, 3, 2, 12, 8)
            assert torch.allclose(out, want, atol=1e-5)
            assert not torch.allclose(out, attn(inp), atol=1e-4)
        elif i < full[0]:
            assert torch.equal(out, plain[i][2])  # before the first tiled one nothing differs
    assert "forward" not in tiled[0][0].__dict__ and not unet.input_blocks[0]._forward_pre_hooks
    # a tile as large as the latent: nothing is tiled
    with hypertile(unet, 2048, 2, 3, True, lambda n: 0):
        whole = _attn1_calls(unet, lambda: unet(x, t, ctx))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(whole, plain))


def test_hypertile_node_samples_repeatably_and_differently(env):
    _, model, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    kw = dict(seed=5, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal")
    (tiled,) = A.hyper_tile(None, model, 64, 2, 1, True)
    a = K.sample(tiled, pos, neg, latent, **kw)["samples"]
    assert torch.equal(a, K.sample(tiled, pos, neg, latent, **kw)["samples"])
    assert not torch.allclose(a, K.sample(model, pos, neg, latent, **kw)["samples"])


def test_unet_attention_patches_are_refused_without_a_unet():
    flux = ModelRef(SimpleNamespace(family=FLUX), "flux")
    with pytest.raises(InvalidArgument, match="^model: HyperTile patches a UNet's self-attention; .* Flux"):
        A.hyper_tile(None, flux, 256, 2, 0, False)
