"""HyperTile and SelfAttentionGuidance (ComfyUI's comfy_extras.nodes_hypertile / nodes_sag) on the
tiny UNet: the patched attention against the same arithmetic written out here, whole samplings,
and nothing left behind."""
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from workflow_fixtures import module_calls, sampling_env

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
    return module_calls([block.attn1 for block in unet.modules() if hasattr(block, "attn1")], run)


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
    with pytest.raises(InvalidArgument, match="^model: SelfAttentionGuidance patches a UNet's self-attention"):
        A.self_attention_guidance(None, flux, 0.5, 2.0)


# --- SelfAttentionGuidance ----------------------------------------------------------------------

def _blur_by_hand(x: np.ndarray, sigma: float) -> np.ndarray:
    t = np.arange(9) - 4.0
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k2 = np.outer(k, k) / k.sum() ** 2
    padded = np.pad(x, ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    out = np.zeros_like(x)
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            out[:, :, i, j] = (padded[:, :, i:i + 9, j:j + 9] * k2).sum(axis=(2, 3))
    return out


def test_sag_blurs_where_the_keys_receive_more_than_one_query_in_total():
    x0 = torch.randn(1, 2, 8, 12, generator=torch.Generator().manual_seed(4))
    # 2 heads over a 2 x 3 middle grid (the 8 x 12 latent halved twice: ComfyUI's ratio 4)
    p = torch.full((2, 6, 6), 0.1)
    p[:, :, 1] += 0.25  # key 1 receives 6 x 0.35 = 2.1 from the queries
    p[0, :, 4] += 0.15  # key 4: 1.5 in head 0, 0.6 in head 1, 1.05 on average
    p[1, :, 5] += 0.12  # key 5: 0.6 and 1.32, 0.96 on average: not blurred
    out = A.sag_blurred(x0, p, 1.5).numpy()
    blurred = _blur_by_hand(x0.numpy(), 1.5)
    want = x0.numpy().copy()
    for key in (1, 4):
        r, c = divmod(key, 3)
        want[:, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = blurred[:, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
    np.testing.assert_allclose(out, want, atol=1e-5)
    assert torch.equal(A.sag_blurred(x0, p, 0.0), x0)  # sigma 0: no blur
    with pytest.raises(InvalidArgument, match="cannot place the middle block's 5 tokens on the 8x12 latent"):
        A.sag_blurred(x0, p[:, :5, :5], 1.0)


def _middle_probabilities_by_hand(unet, run):
    """The middle block's first self-attention's probabilities, per head, written out here."""
    attn = next(b.attn1 for b in unet.middle_block.modules() if hasattr(b, "attn1"))
    seen = []

    def hook(m, args, out):
        x = args[0][0]
        d = m.to_q.weight.shape[0] // m.heads
        q, k = m.to_q(x), m.to_k(x)
        seen.append(torch.stack([torch.softmax(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].T / math.sqrt(d), -1)
                                 for h in range(m.heads)]))
    handle = attn.register_forward_hook(hook)
    try:
        return run(), seen
    finally:
        handle.remove()


def test_sag_guides_each_step_as_written_out_here(env):
    _, model, pos, neg = env
    unet = model.pipe.model.unet
    checked = []
    state = {}

    def before(args):
        state["cfg"] = args.denoised
        return args.denoised

    def check(args):
        uncond, probs = _middle_probabilities_by_hand(unet, lambda: args.predict(neg))
        assert torch.allclose(uncond, args.uncond_denoised, rtol=1e-5, atol=1e-4)  # batched alone here
        x0 = uncond.numpy()
        taken = (probs[0].mean(0).sum(0) > 1.0).reshape(6, 8).float()
        mask = taken.repeat_interleave(2, 0).repeat_interleave(2, 1).numpy()
        degraded = torch.from_numpy(_blur_by_hand(x0, 2.0) * mask + x0 * (1 - mask)).float()
        sag = args.predict(neg, degraded + args.input - uncond)
        assert torch.allclose(args.denoised, state["cfg"] + (degraded - sag) * 0.7, rtol=1e-5, atol=1e-4)
        checked.append(float(mask.mean()))
        return args.denoised

    (sag_model,) = A.self_attention_guidance(None, model, 0.7, 2.0)
    patched = replace(sag_model, post_cfg_functions=(before, *sag_model.post_cfg_functions, check))
    latent = {"samples": torch.zeros(1, 4, 12, 16)}
    kw = dict(seed=6, steps=3, cfg=5.0, sampler_name="euler", scheduler="normal")
    out = K.sample(patched, pos, neg, latent, **kw)["samples"]
    assert len(checked) == 3 and all(0 < m < 1 for m in checked)  # part of the latent blurred
    assert not torch.allclose(out, K.sample(model, pos, neg, latent, **kw)["samples"])
    (none,) = A.self_attention_guidance(None, model, 0.0, 2.0)
    assert torch.allclose(K.sample(none, pos, neg, latent, **kw)["samples"],
                          K.sample(model, pos, neg, latent, **kw)["samples"], atol=1e-6)


def test_sag_needs_a_negative_and_skips_tiny_latents(env):
    call, model, pos, _ = env
    (sag_model,) = A.self_attention_guidance(None, model, 0.5, 2.0)
    kw = dict(seed=1, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal")
    tiny = {"samples": torch.zeros(1, 4, 4, 8)}
    assert torch.equal(K.sample(sag_model, pos, pos, tiny, **kw)["samples"],
                       K.sample(model, pos, pos, tiny, **kw)["samples"])
    with pytest.raises(InvalidArgument, match="^model: SelfAttentionGuidance needs a negative conditioning"):
        A.sag_function(0.5, 2.0)(SimpleNamespace(denoised=torch.zeros(1, 4, 8, 8), uncond=None))


# --- UNetSelfAttentionMultiply / UNetCrossAttentionMultiply ------------------------------------

@pytest.mark.parametrize("which", ["attn1", "attn2"])
def test_attention_multiply_equals_scaled_weights(env, which):
    import copy

    from opensd.workflows.unet_patches import attention_scaled
    _, model, pos, _ = env
    unet = model.pipe.model.unet
    scaled = copy.deepcopy(unet)
    factors = {"to_q": 1.3, "to_k": 0.7, "to_v": 1.0, "to_out": 0.5}
    for block in scaled.modules():
        if hasattr(block, "attn1"):
            attn = getattr(block, which)
            with torch.no_grad():
                attn.to_q.weight.mul_(1.3)
                attn.to_k.weight.mul_(0.7)
                attn.to_out[0].weight.mul_(0.5)
                attn.to_out[0].bias.mul_(0.5)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(8)), torch.tensor([300.0])
    with torch.no_grad():
        want = scaled(x, t, pos[0][0])
        with attention_scaled(unet, which, factors):
            got = unet(x, t, pos[0][0])
        plain = unet(x, t, pos[0][0])
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-4)
    assert not unet.input_blocks[1][1].transformer_blocks[0].attn1.to_q._forward_hooks


def test_attention_multiply_nodes(env):
    _, model, pos, neg = env
    (same,) = A.unet_self_attention_multiply(None, model, 1.0, 1.0, 1.0, 1.0)
    assert same is model
    flux = ModelRef(SimpleNamespace(family=FLUX), "flux")
    assert A.unet_cross_attention_multiply(None, flux, 2.0, 1.0, 1.0, 1.0)[0] is flux  # no attn1/attn2 keys
    (patched,) = A.unet_cross_attention_multiply(None, model, 1.0, 1.0, 2.0, 1.0)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=2, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal")
    assert not torch.allclose(K.sample(patched, pos, neg, latent, **kw)["samples"],
                              K.sample(model, pos, neg, latent, **kw)["samples"])


# --- TomePatchModel -------------------------------------------------------------------------------

def _tome_by_hand(attn, x, h, w, r, pick):
    """ToMe on one self-attention, written per token: destinations (one per 2x2 cell, `pick`
    raster within the cell), each source matched to its most similar destination, the r best
    matches averaged into their destination, attention for the remaining queries, merged tokens
    given their destination's output."""
    (n, c), out_dim = x.shape[1:], attn.to_out[0].weight.shape[0]
    dst = [(2 * i + p // 2) * w + 2 * j + p % 2 for i in range(h // 2) for j in range(w // 2)
           for p in [int(pick[i, j])]]
    src = [t for t in range(n) if t not in dst]
    unit = x[0] / x[0].norm(dim=-1, keepdim=True)
    match = {s: max(dst, key=lambda d: float(unit[s] @ unit[d])) for s in src}
    best = {s: float(unit[s] @ unit[match[s]]) for s in src}
    merged = sorted(src, key=lambda s: -best[s])[:r]
    kept = [s for s in src if s not in merged]
    tokens = {t: x[0, t] for t in kept}
    for d in dst:
        group = [x[0, d]] + [x[0, s] for s in merged if match[s] == d]
        tokens[d] = torch.stack(group).mean(0)
    order = kept + dst
    q = attn.to_q(torch.stack([tokens[t] for t in order]))[None]
    from opensd.models.attention import attention
    o = attn.to_out(attention(q, attn.to_k(x), attn.to_v(x), attn.heads))[0]
    result = {t: o[i] for i, t in enumerate(order)}
    return torch.stack([result[t] if t in result else result[match[t]] for t in range(n)]).reshape(1, n, out_dim)


def test_tome_merges_full_resolution_queries_as_written_out(env):
    from opensd.workflows.unet_patches import tome
    _, model, pos, _ = env
    unet = model.pipe.model.unet
    x = torch.randn(1, 4, 6, 8, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([400.0])
    pick = torch.randint(4, (3, 4), generator=torch.Generator().manual_seed(1))
    plain = _attn1_calls(unet, lambda: unet(x, t, pos[0][0]))
    with tome(unet, 0.4, lambda hs, ws: pick):
        merged = _attn1_calls(unet, lambda: unet(x, t, pos[0][0]))
    full = [i for i, (_, inp, _) in enumerate(merged) if inp.shape[1] == 48]
    assert full and all(merged[i][1].shape[1] != 48 for i in range(len(merged)) if i not in full)
    for i in full:
        attn, inp, out = merged[i]
        assert torch.allclose(out, _tome_by_hand(attn, inp, 6, 8, int(48 * 0.4), pick), atol=1e-5)
    assert not torch.allclose(merged[full[0]][2], plain[full[0]][2], atol=1e-4)
    with tome(unet, 0.0, lambda hs, ws: pick):  # nothing to merge
        same = _attn1_calls(unet, lambda: unet(x, t, pos[0][0]))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(same, plain))
    assert "forward" not in unet.input_blocks[1][1].transformer_blocks[0].attn1.__dict__


def test_tome_node_samples_repeatably(env):
    _, model, pos, neg = env
    (merged,) = A.tome_patch_model(None, model, 0.5)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = dict(seed=3, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal")
    a = K.sample(merged, pos, neg, latent, **kw)["samples"]
    assert torch.equal(a, K.sample(merged, pos, neg, latent, **kw)["samples"])
    assert not torch.allclose(a, K.sample(model, pos, neg, latent, **kw)["samples"])
    with pytest.raises(InvalidArgument, match="^model: TomePatchModel patches a UNet's self-attention"):
        A.tome_patch_model(None, ModelRef(SimpleNamespace(family=FLUX), "f"), 0.3)
