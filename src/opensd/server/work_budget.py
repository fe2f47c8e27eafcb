"""The most work one request may ask for, so one request cannot hold the server for days.

Work is counted in megapixel-steps: for every image, its pixels times its sampling steps, for
each pass (a hires fix's second pass counts at its own size and steps). The limit (--work-budget,
default 10,000) lets a local user run e.g. 8 x 4 images of 1024x1024 at 50 steps (1,678) with room
to spare, and refuses 64 x 100 images (at 1024x1024 and 20 steps: 134,218) before any work, with
the cost and the flag that raises it.
"""
from __future__ import annotations

from ..errors import InvalidArgument

LATENT_SOURCES = ("EmptyLatentImage", "EmptySD3LatentImage")
SAMPLERS = ("KSampler", "KSamplerAdvanced")


def check(cost: float, what: str, budget: float) -> None:
    if cost > budget:
        raise InvalidArgument(
            f"work: this request asks for {cost:,.0f} megapixel-steps ({what}), more than this server's "
            f"budget of {budget:,.0f}; ask for fewer or smaller images or fewer steps, or start the server "
            f"with a larger `opensd serve --work-budget`")


def a1111_cost(kw: dict, n_iter: int) -> tuple[float, str]:
    """(megapixel-steps, description) of an A1111 request from its planned pipeline kwargs."""
    images = kw["batch_size"] * n_iter
    passes = [(kw["width"], kw["height"], kw["steps"])]
    hires = kw.get("hires")
    if hires:
        scale = hires["scale"]
        w = hires["width"] or round(kw["width"] * scale / 8) * 8
        h = hires["height"] or round(kw["height"] * scale / 8) * 8
        passes.append((w, h, hires["steps"] or kw["steps"]))
    cost = images * sum(w * h * s for w, h, s in passes) / 1e6
    what = " + ".join(f"{w}x{h} x {s} steps" for w, h, s in passes)
    return cost, f"{kw['batch_size']} x {n_iter} images of {what}"


def comfy_cost(graph: dict) -> tuple[float, str]:
    """(megapixel-steps, description) of the samplers of a ComfyUI API graph whose latent comes
    straight from an empty-latent node (other sources have sizes known only when the graph runs)."""
    cost, parts = 0.0, []
    for node_id, node in graph.items():
        if not isinstance(node, dict) or node.get("class_type") not in SAMPLERS:
            continue
        inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else {}
        link = inputs.get("latent_image")
        source = graph.get(link[0]) if isinstance(link, list) and link and isinstance(link[0], str) else None
        if not isinstance(source, dict) or source.get("class_type") not in LATENT_SOURCES:
            continue
        size = source.get("inputs") if isinstance(source.get("inputs"), dict) else {}
        values = [size.get("width"), size.get("height"), size.get("batch_size", 1), inputs.get("steps")]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            continue  # links or bad values: the graph's own validation reports those
        w, h, batch, steps = values
        cost += w * h * batch * steps / 1e6
        parts.append(f"node {node_id}: {batch} images of {w}x{h} x {steps} steps")
    return cost, "; ".join(parts)
