"""The most work one request may ask for, so one request cannot hold the server for days.

Work is counted in megapixel-steps: for every image, its pixels times its sampling steps, for
each pass (a hires fix's second pass counts at its own size and steps); a VAE decode or encode
counts as one step at its image's size. The limit (--work-budget,
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


# VAE nodes -> their input, whose size their output has (counted as work in comfy_cost)
_CODECS = {"VAEDecode": "samples", "VAEDecodeTiled": "samples", "VAEEncode": "pixels",
           "VAEEncodeTiled": "pixels", "VAEEncodeForInpaint": "pixels"}
# nodes whose output image or latent has the size of one input's (followed to find a size)
_SAME_SIZE = {**_CODECS, "RebatchLatents": "latents", "SetLatentNoiseMask": "samples", "LatentMultiply": "samples",
              "LatentAdd": "samples1", "LatentSubtract": "samples1", "LatentBlend": "samples1",
              "LatentComposite": "samples_to", "ImageInvert": "image"}
_REPEATS = {"RepeatLatentBatch": "samples", "RepeatImageBatch": "image"}  # batch times their "amount"
_MAX_HOPS = 200  # a longer chain of resizes counts as unknown (as a size only known when it runs)

Size = tuple[float, float, int]  # pixel width, height, batch


def _number(graph: dict, value) -> float | None:
    value = _known(graph, value)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def _resized(graph: dict, inner: Size | None, inputs: dict, least: int) -> Size | None:
    """LatentUpscale's / ImageScale's size: its width and height, 0 keeping the inner aspect ratio.
    With an inner size unknown (a loaded image) both sides given count as one image."""
    w, h = _number(graph, inputs.get("width")), _number(graph, inputs.get("height"))
    if w is None or h is None:
        return None
    if w == 0 and h == 0:
        return inner
    if w and h:
        return (max(least, w), max(least, h), inner[2] if inner else 1)
    if inner is None:
        return None
    if w == 0:
        h = max(least, h)
        return (max(least, inner[0] * h / inner[1]), h, inner[2])
    w = max(least, w)
    return (w, max(least, inner[1] * w / inner[0]), inner[2])


def _size(graph: dict, link, hops: int = 0) -> Size | None:
    """The pixel size of the latent or image `link` carries, where the graph alone tells it (empty
    latents and images, resizes by a size or factor, samplers' enlargement, VAE codecs); else None."""
    kind, inputs = _node_at(graph, link)
    if kind is None or hops > _MAX_HOPS:
        return None

    def inner(name: str) -> Size | None:
        return _size(graph, inputs.get(name), hops + 1)

    if kind in LATENT_SOURCES or kind == "EmptyImage":
        values = [_known(graph, inputs.get(k, 1)) for k in ("width", "height", "batch_size")]
        return tuple(values) if all(isinstance(v, int) and v > 0 for v in values) else None
    if kind in _SAME_SIZE:
        return inner(_SAME_SIZE[kind])
    if kind in _REPEATS:
        size, amount = inner(_REPEATS[kind]), _known(graph, inputs.get("amount"))
        return size and isinstance(amount, int) and amount > 0 and (size[0], size[1], size[2] * amount) or None
    if kind in SAMPLERS:
        size, growth = inner("latent_image"), _growth(graph, inputs)
        return size and (size[0] * growth, size[1] * growth, size[2])
    if kind in ("LatentUpscaleBy", "ImageScaleBy"):
        size, scale = inner("samples" if kind == "LatentUpscaleBy" else "image"), _number(graph, inputs.get("scale_by"))
        return size and scale and (size[0] * scale, size[1] * scale, size[2])
    if kind == "LatentUpscale":
        return _resized(graph, inner("samples"), inputs, 64)
    if kind == "ImageScale":
        return _resized(graph, inner("image"), inputs, 1)
    if kind == "ImageScaleToTotalPixels":
        size, mp = inner("image"), _number(graph, inputs.get("megapixels"))
        side = mp ** 0.5 * 1024 if mp else None
        return side and (side, side, size[2] if size else 1)
    return None


def comfy_cost(graph: dict) -> tuple[float, str]:
    """(megapixel-steps, description) of a validated ComfyUI graph (check_prompt's normalized one:
    numbers converted, so "10000" counts as 10000; links as [str id, slot]): its samplers' steps at
    their latents' sizes, and every VAE decode or encode as one step at its image's size (as
    a1111_cost counts a firstpass_image's encode), where the graph alone tells those sizes (_size:
    a loaded image's is known only when the graph runs, and is not counted)."""
    cost, parts = 0.0, []
    for node_id, node in graph.items():
        kind, inputs = node["class_type"], node["inputs"]
        if kind in _CODECS:
            size = _size(graph, inputs.get(_CODECS[kind]))
            if size:
                w, h, batch = size
                cost += w * h * batch / 1e6
                what = "decoded" if kind.startswith("VAEDecode") else "encoded"
                parts.append(f"node {node_id}: {batch} images of {w:.0f}x{h:.0f} {what}")
            continue
        if kind not in SAMPLERS:
            continue
        size = _size(graph, inputs.get("latent_image"))
        steps_from = SAMPLERS[kind]
        steps = _known(graph, (inputs if steps_from is None else _linked(graph, inputs, steps_from)[1]).get("steps"))
        if not size or not (isinstance(steps, int) and steps > 0):
            continue  # known only when the graph runs (a link), or refused then (a primitive's -5)
        w, h, batch = size
        growth = _growth(graph, inputs)
        cost += w * h * batch * steps * growth ** 2 / 1e6
        parts.append(f"node {node_id}: {batch} images of {w:.0f}x{h:.0f} x {steps} steps"
                     + (f", enlarged up to {growth:g}x" if growth > 1 else ""))
    return cost, "; ".join(parts)
