"""The most work one request may ask for, so one request cannot hold the server for days.

Work is counted in megapixel-steps: for every image, its pixels times its sampling steps, for
each pass (a hires fix's second pass counts at its own size and steps). The limit (--work-budget,
default 10,000) lets a local user run e.g. 8 x 4 images of 1024x1024 at 50 steps (1,678) with room
to spare, and refuses 64 x 100 images (at 1024x1024 and 20 steps: 134,218) before any work, with
the cost and the flag that raises it.
"""
from __future__ import annotations

from ..errors import InvalidArgument
from ..pipeline.params import Hires
from ..upscale.names import latent_mode

LATENT_SOURCES = ("EmptyLatentImage", "EmptySD3LatentImage")
PRIMITIVES = ("PrimitiveInt",)  # nodes whose output is their literal "value"
# sampler node -> the input linked to the node holding its steps (None: its own "steps"):
# SamplerCustom's are those of its scheduler node (BasicScheduler, PolyexponentialScheduler...)
SAMPLERS = {"KSampler": None, "KSamplerAdvanced": None, "SamplerCustom": "sigmas", "SamplerCustomAdvanced": "sigmas"}


def check(cost: float, what: str, budget: float) -> None:
    if cost > budget:
        raise InvalidArgument(
            f"work: this request asks for {cost:,.0f} megapixel-steps ({what}), more than this server's "
            f"budget of {budget:,.0f}; ask for fewer or smaller images or fewer steps, or start the server "
            f"with a larger `opensd serve --work-budget`")


def a1111_cost(kw: dict, n_iter: int, first_pass: tuple[int, int] | None = None) -> tuple[float, str]:
    """(megapixel-steps, description) of an A1111 request from its planned pipeline kwargs.
    `first_pass`: the size of a given firstpass_image, which a latent hires upscaler VAE-encodes at
    its own size for every image (as A1111 does), counted as one step at that size."""
    images = kw["batch_size"] * n_iter
    passes = [(kw["width"], kw["height"], kw["steps"])]
    hires = kw.get("hires")
    if hires:
        w, h = Hires(scale=hires["scale"], width=hires["width"], height=hires["height"]).target(kw["width"], kw["height"])
        passes.append((w, h, hires["steps"] or kw["steps"]))
    words = [f"{w}x{h} x {s} steps" for w, h, s in passes]
    if hires and first_pass is not None and latent_mode(hires["upscaler"]) is not None:
        passes.append((*first_pass, 1))
        words.append("a {}x{} firstpass_image encoded".format(*first_pass))
    cost = images * sum(w * h * s for w, h, s in passes) / 1e6
    return cost, f"{kw['batch_size']} x {n_iter} images of {' + '.join(words)}"


def _node_at(graph: dict, link) -> tuple[str | None, dict]:
    """(class_type, inputs) of the node `link` points to; (None, {}) for a literal."""
    node = graph.get(link[0]) if isinstance(link, list) else None
    return (node["class_type"], node["inputs"]) if node else (None, {})


def _linked(graph: dict, inputs: dict, name: str) -> tuple[str | None, dict]:
    return _node_at(graph, inputs.get(name))


def _known(graph: dict, value):
    """A literal, or the value of the primitive node (PrimitiveInt) it is linked to; else None."""
    if isinstance(value, list):
        kind, inputs = _node_at(graph, value)
        return inputs.get("value") if kind in PRIMITIVES else None
    return value


def _growth(graph: dict, inputs: dict) -> float:
    """How much a custom sampler enlarges the latent's sides as it goes (SamplerLCMUpscale's
    scale_ratio; counted as if every step ran at the final size, an upper bound), else 1."""
    kind, options = _linked(graph, inputs, "sampler")
    ratio = options.get("scale_ratio") if kind == "SamplerLCMUpscale" else None
    return max(1.0, ratio) if isinstance(ratio, float) else 1.0


def comfy_cost(graph: dict) -> tuple[float, str]:
    """(megapixel-steps, description) of the samplers of a validated ComfyUI graph (check_prompt's
    normalized one: numbers converted, so "10000" counts as 10000; links as [str id, slot]) whose
    latent comes straight from an empty-latent node (other sources have sizes known only when the
    graph runs)."""
    cost, parts = 0.0, []
    for node_id, node in graph.items():
        if node["class_type"] not in SAMPLERS:
            continue
        inputs = node["inputs"]
        source, size = _linked(graph, inputs, "latent_image")
        if source == "RebatchLatents":  # the same images in other batches: the sampler runs on all of them
            source, size = _linked(graph, size, "latents")
        if source not in LATENT_SOURCES:
            continue
        steps_from = SAMPLERS[node["class_type"]]
        steps = (inputs if steps_from is None else _linked(graph, inputs, steps_from)[1]).get("steps")
        values = [_known(graph, v) for v in (size.get("width"), size.get("height"), size.get("batch_size", 1), steps)]
        if not all(isinstance(v, int) and v > 0 for v in values):
            continue  # known only when the graph runs (a link), or refused then (a primitive's -5)
        w, h, batch, steps = values
        growth = _growth(graph, inputs)
        cost += w * h * batch * steps * growth ** 2 / 1e6
        parts.append(f"node {node_id}: {batch} images of {w}x{h} x {steps} steps"
                     + (f", enlarged up to {growth:g}x" if growth > 1 else ""))
    return cost, "; ".join(parts)
