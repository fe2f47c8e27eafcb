"""ComfyUI's EasyCache and LazyCache (comfy_extras.nodes_easycache) on tiny random SD1, SDXL, SD3,
Flux and Chroma models: /object_info as ComfyUI's; at threshold 0 nothing is skipped and the latent
is the unpatched model's, bit for bit; at a high one the network runs fewer times and the latent
stays near the unpatched one; steps outside start/end percent always run; conditioning lists in
separate calls skip together; images of a batch cache apart; the MODEL the node got is untouched.
The skip rule itself is checked against a sequence worked by hand."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_fixtures import Loader, default_graph, make_ctx, make_models
from workflow_models import write_sdxl

from dit_fixtures import chroma_parts, flux_parts, load_tiny, sd3_parts
from opensd.library.models_dir import BUILTIN_DIR
from opensd.pipeline.pipeline import load
from opensd.workflows import GraphError, execute, object_info
from opensd.workflows import ksampler as K
from opensd.workflows.guiders import CFGGuider
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.nodes_easycache import easy_cache, lazy_cache
from opensd.workflows.step_cache import NetworkCache, PredictionCache, StepCache
from opensd.workflows.types import ClipRef, ModelRef, SamplerRef

NODES = {"EasyCache": easy_cache, "LazyCache": lazy_cache}
FAMILIES = ["sd1", "sdxl", "sd3", "flux", "chroma"]
STEPS, SIZE = 12, 16  # latent cells


def _comfy_spec(name: str) -> dict:
    """ComfyUI's object_info entry for the node (its V3 schema), as JSON."""
    def percent(default, which):
        return ["FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01,
                          "tooltip": f"The relative sampling step to {which} use of {name}.", "advanced": True}]
    description = "Native EasyCache implementation." if name == "EasyCache" else (
        "A homebrew version of EasyCache - even 'easier' version of EasyCache to implement. Overall works worse "
        "than EasyCache, but better in some rare cases AND universal compatibility with everything in ComfyUI.")
    return {
        "input": {"required": {
            "model": ["MODEL", {"tooltip": f"The model to add {name} to."}],
            "reuse_threshold": ["FLOAT", {"default": 0.2, "min": 0.0, "max": 3.0, "step": 0.01,
                                          "tooltip": "The threshold for reusing cached steps.", "advanced": True}],
            "start_percent": percent(0.15, "begin"), "end_percent": percent(0.95, "end"),
            "verbose": ["BOOLEAN", {"default": False, "tooltip": "Whether to log verbose information.",
                                    "advanced": True}]}},
        "input_order": {"required": ["model", "reuse_threshold", "start_percent", "end_percent", "verbose"]},
        "output": ["MODEL"], "output_is_list": [False], "output_name": ["MODEL"], "name": name,
        "display_name": name, "description": description, "python_module": "comfy_extras.nodes_easycache",
        "category": "advanced/debug", "output_node": False, "experimental": True,
    }


@pytest.mark.parametrize("name", list(NODES))
def test_object_info_is_comfyuis(name):
    assert object_info(node_class=name) == {name: _comfy_spec(name)}


# --- the rule, by hand ---------------------------------------------------------------------------

ALWAYS = SimpleNamespace(percent_to_sigma=lambda p: 1e9 if p <= 0 else 0.0)  # cache every step


def test_lazy_cache_skips_while_the_estimated_change_stays_under_the_threshold():
    """Input x = 1, 2, 3, 4, 5 (constant latents), guided output 3x. Step 1 measures, step 2 learns
    k = |6 - 3| / |2 - 1| = 3; step 3 estimates 3 * 1 / mean|6| = 0.5 < 0.6: reused, 3 + (6 - 2) = 7;
    step 4 adds 3 * |4 - 2| / 6 = 1 (1.5): runs, the sum restarts, k = |12 - 6| / 2 = 3; step 5
    estimates 3 * 1 / 12 = 0.25: reused, 5 + (12 - 4) = 13."""
    cache = PredictionCache(StepCache("LazyCache", 0.6, 0.0, 1.0), ALWAYS)
    calls = []

    def guided(x, sigma):
        calls.append(float(x.mean()))
        return 3 * x, 3 * x - 1

    outs = [cache.both(guided, torch.full((1, 4, 16, 16), float(v)), torch.tensor(10.0 - v)) for v in range(1, 6)]
    assert calls == [1, 2, 4]
    assert [float(g.mean()) for g, _ in outs] == [3, 6, 7, 12, 13]
    assert [float(u.mean()) for _, u in outs] == [2, 5, 6, 11, 12]  # the unconditional: its own difference
    assert cache.skipped == 2


def test_easy_cache_measures_the_first_entry_and_the_steps_other_calls_follow():
    """Two entries in separate calls per step, as conditioning lists of different context lengths
    run: entry a (measured) sees x, outputs 3x; entry b outputs x + 1. The numbers of the lazy
    test: a's call at step 3 is reused, and b's call of that step follows without being measured."""
    cache = NetworkCache(StepCache("EasyCache", 0.6, 0.0, 1.0), ALWAYS)
    a, b = object(), object()
    seen = []

    def net(entry, fn):
        def unet(x, t):
            seen.append(entry)
            return fn(x)
        return unet

    got = {}
    for v in range(1, 4):
        x, sigma = torch.full((1, 4, 16, 16), float(v)), torch.tensor(10.0 - v)
        cache.new_step()
        got[v] = [float(cache.wrap(net("a", lambda z: 3 * z), sigma, [a])(x, sigma).mean()),
                  float(cache.wrap(net("b", lambda z: z + 1), sigma, [b])(x, sigma).mean())]
    assert seen == ["a", "b", "a", "b"]
    assert got[3] == [3 + (6 - 2), 3 + 1]
    assert cache.skipped == 1


# --- on the tiny models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("easycache")
    pipes = {"sd1": load(make_models(tmp / "sd1").resolve("checkpoints", "tiny.safetensors")),
             "sdxl": load(write_sdxl(tmp / "tiny_xl.safetensors"))}
    for name, parts in (("sd3", sd3_parts()), ("flux", flux_parts()), ("chroma", chroma_parts())):
        pipes[name] = load_tiny(tmp / name, name, parts)
    out = {}
    for name, pipe in pipes.items():
        clip = ClipRef(pipe, name)
        pos, neg = (clip_text_encode(None, t, clip)[0] for t in ("a photo of a cat", "blurry"))
        out[name] = (ModelRef(pipe, name), pos, neg)
    return out


class Calls:
    """The network's calls (their row counts), counted by a forward pre-hook."""

    def __init__(self, model: ModelRef):
        self.rows: list[int] = []
        self.network = model.pipe.family.network(model.pipe.model)

    def __enter__(self):
        self.hook = self.network.register_forward_pre_hook(lambda m, args: self.rows.append(args[0].shape[0]))
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def _sample(model, pos, neg, seed=1, steps=STEPS, sampler="euler", on_step=None):
    latent = {"samples": torch.zeros(1, model.pipe.config.latent_channels, SIZE, SIZE)}
    return K.sample(model, pos, neg, latent, seed=seed, steps=steps, cfg=4.0, sampler_name=sampler,
                    scheduler="normal", on_step=on_step)["samples"]


def _patched(node, model, threshold, start=0.15, end=0.95):
    return NODES[node](None, model, threshold, start, end, False)[0]


_BASE: dict = {}


def _baseline(models, family):
    """The unpatched model's latent, its network calls and another seed's latent."""
    if family not in _BASE:
        model, pos, neg = models[family]
        with Calls(model) as calls:
            base = _sample(model, pos, neg)
        _BASE[family] = (base, len(calls.rows), _sample(model, pos, neg, seed=2))
    return _BASE[family]


def _cached_run(models, family, node, threshold):
    """(the patched model's latent and network calls, the unpatched latent and calls, another seed's latent)."""
    model, pos, neg = models[family]
    with Calls(model) as calls:
        got = _sample(_patched(node, model, threshold), pos, neg)
    return (got, len(calls.rows), *_baseline(models, family))


FAMILY_NODE = pytest.mark.parametrize("family, node", [(f, n) for f in FAMILIES for n in NODES])


@FAMILY_NODE
def test_threshold_zero_skips_nothing_and_is_the_unpatched_model(models, family, node):
    got, n_calls, base, n_base, _ = _cached_run(models, family, node, 0.0)
    assert n_calls == n_base
    assert torch.equal(got, base)


@FAMILY_NODE
def test_a_high_threshold_calls_the_network_less_and_stays_near(models, family, node):
    got, n_calls, base, n_base, other_seed = _cached_run(models, family, node, 0.5)
    assert n_calls <= n_base - 2
    moved = float((got - base).abs().mean())
    assert 0 < moved < 0.5 * float((other_seed - base).abs().mean())  # far nearer than another image


def _called_steps(model, pos, neg) -> list[bool]:
    """Whether each sampling step called the network."""
    with Calls(model) as calls:
        marks = [0]
        _sample(model, pos, neg, on_step=lambda i, n, d: marks.append(len(calls.rows)))
    return [b > a for a, b in zip(marks, marks[1:])]


@pytest.mark.parametrize("node", list(NODES))
@pytest.mark.parametrize("family", ["sd1", "flux"])
def test_steps_outside_start_and_end_percent_run_in_full(models, family, node):
    model, pos, neg = models[family]
    start, end = 0.3, 0.7
    ms = K.sampling_of(model)
    sigmas = K.comfy_sigmas(ms.schedule, "euler", "normal", STEPS)[:-1]
    hi, lo = ms.percent_to_sigma(start), ms.percent_to_sigma(end)
    called = _called_steps(_patched(node, model, 3.0, start, end), pos, neg)
    inside = [lo < float(s) <= hi for s in sigmas]
    assert all(c for c, i in zip(called, inside) if not i)
    assert sum(inside) >= 4 and not all(c for c, i in zip(called, inside) if i)
    # the first in-range step, and for EasyCache also the second, measure: they run
    first = inside.index(True)
    assert all(called[first:first + (2 if node == "EasyCache" else 1)])


def test_conditioning_lists_in_separate_calls_skip_together(models):
    """A negative of another context length runs in its own call: each step calls both or neither."""
    model, pos, neg = models["sd1"]
    long_neg = [[torch.cat([neg[0][0], neg[0][0]], dim=1), neg[0][1]]]
    with Calls(model) as calls:
        marks = [0]
        _sample(_patched("EasyCache", model, 1.0), pos, long_neg,
                on_step=lambda i, n, d: marks.append(len(calls.rows)))
    per_step = [b - a for a, b in zip(marks, marks[1:])]
    assert set(per_step) == {0, 2} and calls.rows == [1] * sum(per_step)


@pytest.mark.parametrize("node", list(NODES))
def test_each_image_of_a_batch_keeps_its_own_cache(models, node):
    """Image 0 of the batches [a, b] and [a, c] samples the same: what b or c do decides nothing for a."""
    model, pos, neg = models["sd1"]
    patched = _patched(node, model, 1.0)
    ms = K.sampling_of(patched)
    sigmas = K.comfy_sigmas(ms.schedule, "euler", "normal", STEPS)
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(1, 4, SIZE, SIZE, generator=g) for _ in range(3))
    zeros = torch.zeros(2, 4, SIZE, SIZE)
    outs = [K.run(CFGGuider(patched, pos, neg, 4.0), torch.cat([a, o]), zeros, SamplerRef("euler"), sigmas, 0)[0]
            for o in (b, 10 * c)]
    assert torch.equal(outs[0][0], outs[1][0]) and not torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("node", list(NODES))
def test_cfg_pp_samplers_get_a_cached_unconditional_estimate(models, node):
    model, pos, neg = models["sd1"]
    base = _sample(model, pos, neg, sampler="euler_cfg_pp")
    assert torch.equal(_sample(_patched(node, model, 0.0), pos, neg, sampler="euler_cfg_pp"), base)
    with Calls(model) as calls:
        got = _sample(_patched(node, model, 1.0), pos, neg, sampler="euler_cfg_pp")
    assert len(calls.rows) < STEPS and torch.isfinite(got).all() and not torch.equal(got, base)


def test_the_model_the_node_got_samples_as_before(models):
    model, pos, neg = models["flux"]
    base, n_base, _ = _baseline(models, "flux")
    for node in NODES:
        patched = _patched(node, model, 1.0)
        assert patched.step_cache.name == node and model.step_cache is None
        _sample(patched, pos, neg)
    network = model.pipe.family.network(model.pipe.model)
    assert "forward" not in vars(network) and not network._forward_pre_hooks and not network._forward_hooks
    with Calls(model) as calls:
        assert torch.equal(_sample(model, pos, neg), base)
    assert len(calls.rows) == n_base


def test_in_a_comfyui_graph(tmp_path):
    """Checkpoint -> EasyCache -> KSampler: threshold 0 saves the unpatched graph's image; a
    threshold above ComfyUI's maximum of 3 is refused before anything runs."""
    folders = make_models(tmp_path / "models")
    ctx = make_ctx(folders, Loader(folders), tmp_path)

    def image(graph):
        saved = execute(graph, ctx)["9"]["images"][0]
        return np.asarray(Image.open(ctx.outputs_dir / saved["subfolder"] / saved["filename"]))

    plain = image(default_graph(steps=6))
    graph = default_graph(steps=6, model=["10", 0])
    graph["10"] = {"class_type": "EasyCache", "inputs": {"model": ["4", 0], "reuse_threshold": 0.0,
                                                         "start_percent": 0.15, "end_percent": 0.95, "verbose": True}}
    assert np.array_equal(image(graph), plain)
    graph["10"]["inputs"]["reuse_threshold"] = 3.5
    with pytest.raises(GraphError) as err:
        execute(graph, ctx)
    assert "reuse_threshold" in str(err.value.payload)


def test_on_a_guidance_distilled_model_lazy_cache_keeps_its_own_guidance():
    """The built-in model guides itself in one row per step; LazyCache caches that prediction as it
    is, while EasyCache, a patch of the network's calls, samples with ComfyUI's CFG (two rows)."""
    pipe = load(BUILTIN_DIR / "opensd-emoji.safetensors")
    model, clip = ModelRef(pipe, "builtin"), ClipRef(pipe, "builtin")
    pos, neg = (clip_text_encode(None, t, clip)[0] for t in ("a red heart", ""))
    runs = {}
    for name, m in (("plain", model), ("LazyCache", _patched("LazyCache", model, 0.0)),
                    ("EasyCache", _patched("EasyCache", model, 0.0))):
        with Calls(m) as calls:
            runs[name] = (_sample(m, pos, neg, steps=6), calls.rows)
    assert runs["plain"][1] == runs["LazyCache"][1] == [1] * 6 and runs["EasyCache"][1] == [2] * 6
    assert torch.equal(runs["LazyCache"][0], runs["plain"][0])
