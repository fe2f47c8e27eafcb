"""APG, TCFG, Mahiro and FreSca (ComfyUI's comfy_extras nodes_apg / nodes_tcfg / nodes_mahiro / nodes_fresca) against the
formulas written out here on small tensors, and in KSampler graphs on the tiny model."""
import math

import pytest
import torch
from workflow_fixtures import sampling_env

from opensd.workflows.guiders import PostCfgArgs, PreCfgArgs
from opensd.workflows.nodes_guidance_cfg import apg_function, fresca_function, mahiro_function, tcfg_function
from opensd.workflows.types import NODES


def _pre(cond, uncond, sigma, image=0, scale=3.0, x=None, negative=True):
    return PreCfgArgs([cond, uncond], [[], [] if negative else None], scale, x if x is not None else cond * 0,
                      torch.tensor([sigma]), image)


def _apg_batched(conds, unconds, sigmas, scale, eta, threshold, momentum):
    """ComfyUI's APG over a whole batch at once (its running average a (B, C, H, W) tensor), the
    guided result uncond + scale * (modified cond - uncond) per step."""
    avg, out = None, []
    for cond, uncond, _ in zip(conds, unconds, sigmas):
        g = cond - uncond
        if momentum > 0:
            avg = g if avg is None else momentum * avg + g
            g = avg
        if threshold > 0:
            norms = torch.sqrt((g ** 2).sum(dim=(1, 2, 3), keepdim=True))
            g = g * torch.clamp(threshold / norms, max=1.0)
        unit = cond / torch.sqrt((cond ** 2).sum(dim=(1, 2, 3), keepdim=True))
        along = (g * unit).sum(dim=(1, 2, 3), keepdim=True) * unit
        modified = (g - along) + eta * along
        new_cond = uncond + modified + (cond - uncond) / scale
        out.append(uncond + scale * (new_cond - uncond))
    return out


def test_apg_per_image_equals_comfyuis_batched_running_average():
    g = torch.Generator().manual_seed(0)
    steps, sigmas = 3, [5.0, 2.0, 0.5]
    conds = [torch.randn(2, 4, 3, 3, generator=g) for _ in range(steps)]
    unconds = [torch.randn(2, 4, 3, 3, generator=g) for _ in range(steps)]
    for eta, threshold, momentum in ((0.3, 2.0, 0.5), (1.0, 0.0, 0.0), (-2.0, 50.0, 0.9)):
        fn = apg_function(eta, threshold, momentum)
        want = _apg_batched(conds, unconds, sigmas, 3.0, eta, threshold, momentum)
        for step in range(steps):  # the images of a batch in turn, as the sampler calls them
            for i in range(2):
                cond, uncond = conds[step][i:i + 1], unconds[step][i:i + 1]
                new_cond, same_uncond = fn(_pre(cond, uncond, sigmas[step], image=i))
                assert same_uncond is uncond
                torch.testing.assert_close(uncond + 3.0 * (new_cond - uncond), want[step][i:i + 1])
        # a new sampling (sigma up again) starts a new average
        first = fn(_pre(conds[0][:1], unconds[0][:1], 5.0))[0]
        torch.testing.assert_close(unconds[0][:1] + 3.0 * (first - unconds[0][:1]), want[0][:1])


def test_tcfg_keeps_the_negative_score_along_the_top_singular_direction():
    g = torch.Generator().manual_seed(1)
    x, cond, uncond = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    new_cond, new_uncond = tcfg_function(_pre(cond, uncond, 1.0, x=x))
    assert new_cond is cond
    for b in range(2):  # the top eigenvector of the 2 x 2 Gram matrix gives the singular direction
        m = torch.stack([(x - uncond)[b].reshape(-1), (x - cond)[b].reshape(-1)]).double()
        vals, vecs = torch.linalg.eigh(m @ m.T)
        v1 = m.T @ vecs[:, -1] / math.sqrt(vals[-1])
        kept = (m[0] @ v1) * v1
        torch.testing.assert_close((x - new_uncond)[b].reshape(-1).double(), kept, rtol=1e-4, atol=1e-5)
    assert tcfg_function(_pre(cond, uncond, 1.0, x=x, negative=False)) == [cond, uncond]  # cfg 1: as it is


def test_mahiro_by_hand():
    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(1, 3, 2, 2, generator=g), torch.randn(1, 3, 2, 2, generator=g)
    scale = 4.0
    denoised = uncond + scale * (cond - uncond)
    got = mahiro_function(PostCfgArgs(denoised, cond, uncond, scale, cond * 0, torch.tensor([1.0]), [], None, None))

    def root(t):
        return math.copysign(math.sqrt(abs(t)), t)
    sims = []
    for i in range(2):
        for j in range(2):
            u = [root(float(uncond[0, c, i, j]) * scale) for c in range(3)]
            m = [root((float(cond[0, c, i, j]) * scale + float(denoised[0, c, i, j])) / 2) for c in range(3)]
            sims.append(sum(a * b for a, b in zip(u, m)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in m)))
    s = 2 * (sum(sims) / 4 + 1)
    want = (s * denoised + (4 - s) * cond * scale) / 4
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- in KSampler ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return sampling_env(tmp_path_factory.mktemp("guidecfg"))


def _sample(env, model, cfg: float) -> torch.Tensor:
    call, _, pos, neg = env
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    return NODES["KSampler"].fn(call, model=model, seed=3, steps=2, cfg=cfg, sampler_name="euler",
                                scheduler="normal", positive=pos, negative=neg, latent_image=latent,
                                denoise=1.0)[0]["samples"]


def test_apg_without_projection_or_cap_is_cfg_one_higher_and_others_steer(env):
    """eta 1, no cap, no momentum: the modified positive makes plain CFG at scale s give
    cond + s (cond - uncond), which is CFG at s + 1."""
    call, model, _, _ = env
    (apg,) = NODES["APG"].fn(call, model=model, eta=1.0, norm_threshold=0.0, momentum=0.0)
    torch.testing.assert_close(_sample(env, apg, 2.0), _sample(env, model, 3.0), rtol=1e-4, atol=1e-4)
    plain = _sample(env, model, 2.0)
    assert not torch.allclose(_sample(env, apg, 2.0), plain, atol=1e-3)
    for name, inputs in (("TCFG", {}), ("Mahiro", {}), ("APG", {"eta": 0.0, "norm_threshold": 5.0, "momentum": 0.5})):
        (patched,) = NODES[name].fn(call, model=model, **inputs)
        assert not torch.equal(_sample(env, patched, 2.0), plain), name  # wired in (arithmetic: above)
    assert model.pre_cfg_functions == () and model.post_cfg_functions == ()  # the input MODEL is untouched


def _low_band(n: int, cutoff: int) -> set[int]:
    """Rows (or columns) ComfyUI's [n//2 - cutoff : n//2 + cutoff] covers, Python's slice rule written out."""
    start, stop = n // 2 - cutoff, n // 2 + cutoff
    start = max(start + n, 0) if start < 0 else start
    return set(range(start, min(stop, n)))


@pytest.mark.parametrize("shape,cutoff", [((1, 4, 16, 12), 3), ((2, 4, 8, 8), 20), ((1, 4, 16, 16), 10)])
def test_fresca_scales_the_guidance_spectrum_by_band(shape, cutoff):
    """By hand with numpy: the shifted spectrum times 0.5 in the low band, 1.5 outside. (16, 10) is
    ComfyUI's slice quirk: start -2 keeps only the last two rows/columns low."""
    import numpy as np

    g = torch.Generator().manual_seed(2)
    cond, uncond = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    new_cond, same = fresca_function(0.5, 1.5, cutoff)(_pre(cond, uncond, 1.0))
    assert same is uncond
    h, w = shape[-2:]
    rows, cols = _low_band(h, cutoff), _low_band(w, cutoff)
    scale = np.array([[0.5 if r in rows and c in cols else 1.5 for c in range(w)] for r in range(h)])
    spectrum = np.fft.fftshift(np.fft.fft2((cond - uncond).numpy()), axes=(-2, -1)) * scale
    want = uncond.numpy() + np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1))).real
    np.testing.assert_allclose(new_cond.numpy(), want, atol=1e-5)
    assert _low_band(16, 10) == {14, 15}


def test_fresca_with_one_scale_everywhere_is_cfg_times_that_scale(env):
    call, model, _, _ = env
    (same,) = NODES["FreSca"].fn(call, model=model, scale_low=1.0, scale_high=1.0, freq_cutoff=20)
    torch.testing.assert_close(_sample(env, same, 2.0), _sample(env, model, 2.0), rtol=1e-5, atol=1e-5)
    (double,) = NODES["FreSca"].fn(call, model=model, scale_low=2.0, scale_high=2.0, freq_cutoff=2)
    torch.testing.assert_close(_sample(env, double, 2.0), _sample(env, model, 4.0), rtol=1e-4, atol=1e-4)
    (banded,) = NODES["FreSca"].fn(call, model=model, scale_low=1.0, scale_high=2.0, freq_cutoff=2)
    assert not torch.allclose(_sample(env, banded, 2.0), _sample(env, model, 2.0), atol=1e-3)
    assert model.pre_cfg_functions == ()


def test_latent_apply_operation_cfg_runs_the_operation_on_the_guidance(env):
    """LatentApplyOperationCFG: op(cond - uncond) + uncond with two predictions, op(cond) with more;
    doubling the guidance at CFG 2 is CFG 4, and a real operation (Reinhard) reaches the sampler."""
    from opensd.workflows.nodes_latent_ops import operation_cfg_function, tonemap_reinhard

    g = torch.Generator().manual_seed(4)
    cond, uncond, third = (torch.randn(1, 4, 3, 3, generator=g) for _ in range(3))
    op = tonemap_reinhard(0.5)
    out = operation_cfg_function(op)(_pre(cond, uncond, 1.0))
    torch.testing.assert_close(out[0], op(cond - uncond) + uncond)
    assert out[1] is uncond
    three = PreCfgArgs([cond, uncond, third], [[], [], []], 3.0, cond * 0, torch.tensor([1.0]), 0)
    torch.testing.assert_close(operation_cfg_function(op)(three)[0], op(cond))

    call, model, _, _ = env
    (double,) = NODES["LatentApplyOperationCFG"].fn(call, model=model, operation=lambda latent: latent * 2)
    torch.testing.assert_close(_sample(env, double, 2.0), _sample(env, model, 4.0), rtol=1e-4, atol=1e-4)
    (reinhard,) = NODES["LatentApplyOperationCFG"].fn(call, model=model, operation=op)
    assert not torch.allclose(_sample(env, reinhard, 2.0), _sample(env, model, 2.0), atol=1e-3)
    assert model.pre_cfg_functions == ()
