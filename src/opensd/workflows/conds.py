"""Several conditioning entries in one sampling step, as ComfyUI composes them (its process_conds
and calc_cond_batch), so that area and mask conditioning confine each prompt to its region.

Preparation, once per sampling run (:func:`prepare`):

* "area" (h, w, y, x) in latent cells, or ("percentage", h, w, y, x) as fractions of the latent;
* "mask" resized (bilinear) to the latent; with "set_area_to_bounds" its bounding box (at least 8
  cells a side; (8, 8, 0, 0) for an empty mask) becomes the area;
* "start_percent"/"end_percent" become sigma bounds: the entry sits out steps whose sigma is above
  the start's or below the end's (ModelSampling.percent_to_sigma);
* SDXL's "y" per entry from its pooled text and its own "width", "height", "crop_w", "crop_h",
  "target_width", "target_height" and "aesthetic_score" (defaults: the latent's pixel size, no crop,
  score 6, or 2.5 for negative-type lists);
* every entry with an area gets a partner of the same area in each other list (the smallest entry
  there whose area holds it supplies the text), unless one with exactly that area exists;
* ControlNetApply's hints ("control_apply_to_uncond") go to the negative entries without area
  when none of those has a hint of its own;
* for inpainting models, "concat_latent_image" and "concat_mask" (InpaintModelConditioning), for edit
  models "concat_latent_image" alone (InstructPixToPixConditioning), are the
  entry's own extra input channels, in place of those the sampler derives from the latent.

Per step (:func:`calc_cond_batch`), for each list: every active entry runs the model on its crop of
x; its prediction is weighted by mult = strength x (mask x mask_strength), or by strength ramped
down over 8 cells along the area's edges that lie inside the latent when there is no mask; the
list's prediction is sum(mult x prediction) / sum(mult) per position (1e-37 where nothing covers
it, which leaves 0 there). Entries run batched when their crops, ControlNet hints and context
lengths agree; contexts of different lengths run in separate calls (ComfyUI batches them by
repeating the shorter context, which leaves attention's result unchanged).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..pipeline.conditioning import pooled_width, size_vector
from ..pipeline.instruct_pix2pix import takes_scaled_image
from ..pipeline.unclip import unclip_vector

FEATHER = 8  # cells over which an area's inner edges fade in
MAX_REFERENCE_PIXELS = 16_000_000  # ReferenceLatent's images, all together: 16 times Kontext's sizes


@dataclass(frozen=True, eq=False)
class Entry:
    context: torch.Tensor                       # (1, T, D) on the model's device
    y: torch.Tensor | None = None               # (1, adm) SDXL's pooled text and size ids
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) latent cells
    mask: torch.Tensor | None = None            # (Bm, H, W) at the latent's size
    strength: float = 1.0
    mask_strength: float = 1.0
    sigma_start: float | None = None
    sigma_end: float | None = None
    control: Any = None                         # nodes_controlnet.ControlHint
    control_to_uncond: bool = False
    guidance: float | None = None               # distilled guidance (FluxGuidance; None: the model's default)
    concat: torch.Tensor | None = None          # (B, 5, H, W) an inpainting model's [mask, masked image] channels
    references: tuple | None = None             # ReferenceLatent's latents, model-scaled (Kontext)
    reference_method: str = "offset"            # where the model places them (FluxKontextMultiReferenceLatentMethod)
    gligen: tuple | None = None                 # (Gligen, boxes): GLIGENTextBoxApply's grounding (gligen_patch.py)
    negative: bool = False                      # from a negative-kind list (ComfyUI's cond_or_uncond): IP-Adapter
                                                # gives it the uncond tokens, regions skip it

    def active(self, sigma: float) -> bool:
        return not ((self.sigma_start is not None and sigma > self.sigma_start)
                    or (self.sigma_end is not None and sigma < self.sigma_end))


def check_widths(named: dict[str, list], pipe) -> None:
    """Each conditioning list of a guider as wide as the network's text context: one from another
    model's CLIP (SDXL's with an SD 1.5 MODEL) is one line here, not a matmul error mid-sampling."""
    width = pipe.family.context_width(pipe.config)
    for k, conds in named.items():
        for context, _ in conds:
            if context.shape[-1] != width:
                raise InvalidArgument(f"{k}: a conditioning {context.shape[-1]} wide does not fit the model, which "
                                      f"takes {width} (is it from another model's CLIP?)")


def prepare(named: dict[str, list], shape, pipe, sampling, negative_kinds=("negative",),
            seed: int = 0) -> dict[str, list[Entry]]:
    """Each conditioning list of a guider (by name: "positive", "negative", ...) as Entries for a
    latent batch of `shape` (B, C, H, W); `seed`: the sampler's (unCLIP's embedding noise)."""
    out = {k: [_entry(ctx, extra or {}, k in negative_kinds, shape, pipe, sampling, seed) for ctx, extra in conds]
           for k, conds in named.items()}
    for k in out:
        for e in out[k]:
            for other in out:
                if other != k:
                    _add_same_area(out[other], e)
    if "positive" in out:
        for k in out:
            if k != "positive":
                _hints_to(out["positive"], out[k])
    return out


def _own_reference_method(pipe) -> str:
    own = getattr(pipe.family, "default_reference_method", None)  # a model's own (Qwen-Image-Edit-2511's)
    return own(pipe.config) if own else getattr(pipe.family, "reference_method", "offset")


def _entry(context: torch.Tensor, extra: dict, negative: bool, shape, pipe, sampling, seed: int = 0) -> Entry:
    h, w = shape[2:]
    area = extra.get("area")
    if area is not None and area[0] == "percentage":
        _, ph, pw, py, px = area
        area = (max(1, round(ph * h)), max(1, round(pw * w)), round(py * h), round(px * w))
    mask = extra.get("mask")
    if mask is not None:
        mask = mask.float().to(pipe.device)
        mask = mask[None] if mask.ndim == 2 else mask.reshape(-1, mask.shape[-2], mask.shape[-1])
        if tuple(mask.shape[1:]) != (h, w):
            mask = F.interpolate(mask[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        if extra.get("set_area_to_bounds"):
            area = _bounds(mask)
    start, end = extra.get("start_percent"), extra.get("end_percent")
    references = _references(extra, pipe)
    method = extra.get("reference_latents_method") or (  # the model family's own placement by default
        _own_reference_method(pipe) if references else "offset")  # asked only then: stand-in pipes have no family
    return Entry(
        context=context.to(pipe.device, torch.float32), y=_adm(extra, negative, shape, pipe, seed),
        area=None if area is None else tuple(int(v) for v in area), mask=mask,
        strength=float(extra.get("strength", 1.0)), mask_strength=float(extra.get("mask_strength", 1.0)),
        sigma_start=None if start is None else sampling.percent_to_sigma(start),
        sigma_end=None if end is None else sampling.percent_to_sigma(end),
        control=extra.get("control"), control_to_uncond=bool(extra.get("control_apply_to_uncond")),
        guidance=extra.get("guidance"), concat=_concat(extra, shape, pipe), references=references,
        reference_method=method,
        gligen=_gligen(extra), negative=negative)


def _gligen(extra: dict) -> tuple | None:
    """GLIGENTextBoxApply's ("position", GLIGEN, boxes) as (the model, the boxes)."""
    value = extra.get("gligen")
    return None if value is None else (value[1].model, list(value[2]))


def _references(extra: dict, pipe) -> tuple | None:
    """ReferenceLatent's latents, scaled as the model's own (ComfyUI's process_latent_in), for a
    model that takes them (Flux Kontext, FLUX.2 [klein]); others ignore them, as in ComfyUI."""
    refs = extra.get("reference_latents")
    if not refs or not getattr(pipe.family, "reference_latents", False):
        return None
    channels = pipe.config.latent_channels
    for r in refs:
        if not isinstance(r, torch.Tensor) or r.ndim != 4 or r.shape[1] != channels or min(r.shape) < 1:
            shape = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
            raise InvalidArgument(f"reference_latents: a reference latent must be (batch, {channels}, height, width) "
                                  f"for this model, got {shape} (is it from another model's VAE?)")
    pixels = sum(r.shape[-2] * r.shape[-1] for r in refs) * pipe.config.vae.downscale ** 2
    if pixels > MAX_REFERENCE_PIXELS:  # every step attends over them: the work budget counts only the image
        raise InvalidArgument(f"reference_latents: the reference latents add up to {pixels / 1e6:.1f} megapixels, "
                              f"more than the {MAX_REFERENCE_PIXELS / 1e6:.0f} one sampling takes (Kontext's "
                              f"sizes are about 1; FluxKontextImageScale fits an image to one)")
    return tuple(pipe.config.vae.scaled(r.float()).to(pipe.device) for r in refs)


def _concat(extra: dict, shape, pipe) -> torch.Tensor | None:
    """InpaintModelConditioning's mask and greyed-image latent as an inpainting model's extra input
    channels, fitted to the latent (bilinear), as ComfyUI's concat_cond: a latent-size mask (the
    UNets') rounded, a pixel-size one (Flux Fill's) as it is. Other models have no such channels
    and ignore them."""
    latent, mask = extra.get("concat_latent_image"), extra.get("concat_mask")
    if latent is not None and pipe.config.edit:  # InstructPixToPixConditioning: the raw latent (CosXL Edit: scaled)
        fitted = F.interpolate(latent.float(), size=shape[2:], mode="bilinear") \
            if tuple(latent.shape[2:]) != tuple(shape[2:]) else latent.float()
        return (pipe.config.vae.scaled(fitted) if takes_scaled_image(pipe.config) else fitted).to(pipe.device)
    if latent is None or mask is None or not pipe.config.inpainting:
        return None
    h, w = shape[2:]
    scale = pipe.family.inpaint_mask_scale(pipe.config)
    latent = pipe.config.vae.scaled(latent.float())
    mask = mask.float().reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if tuple(latent.shape[2:]) != (h, w):
        latent = F.interpolate(latent, size=(h, w), mode="bilinear")
    if tuple(mask.shape[2:]) != (h * scale, w * scale):
        mask = F.interpolate(mask, size=(h * scale, w * scale), mode="bilinear")
    n = max(len(latent), len(mask))
    pick = torch.arange(n)
    mask = mask.round() if scale == 1 else mask
    return pipe.family.inpainting_channels(mask[pick % len(mask)], latent[pick % len(latent)]).to(pipe.device)


def _bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    found = mask.abs().amax(0).nonzero()
    if len(found) == 0:
        return (8, 8, 0, 0)
    (y0, x0), (y1, x1) = found.amin(0).tolist(), found.amax(0).tolist()
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def _adm(extra: dict, negative: bool, shape, pipe, seed: int = 0) -> torch.Tensor | None:
    cfg = pipe.config
    unet = getattr(cfg, "unet", None)  # the DiT families have none
    if unet is not None and unet.unclip:  # Stable unCLIP: the image embedding (zeros without one)
        if "unclip_conditioning" not in extra:
            return torch.zeros(1, unet.adm_in_channels, device=pipe.device)
        merge = extra.get("unclip_noise_augment_merge", 0.05)
        return _unclip(extra, unet.adm_in_channels // 2, seed, merge, "this Stable unCLIP model").to(pipe.device)
    if not cfg.size_conditioned:  # DiT families take the pooled text as it is (unCLIP images: ignored, as ComfyUI)
        pooled = extra.get("pooled_output")
        return pooled.float().to(pipe.device) if cfg.pooled_y and pooled is not None else None
    pooled = extra.get("pooled_output")
    if "unclip_conditioning" in extra:  # SDXL "ReVision": the image embedding in place of the pooled text
        width = pooled_width(cfg)  # 1280, ComfyUI's sdxl_pooled
        pooled = _unclip(extra, width, seed, 0.0, "SDXL")[:, :width]
    if pooled is None:
        raise ValueError("conditioning: this SDXL-type model needs the pooled text vector; encode the "
                         "prompt with this model's CLIP")
    down = cfg.vae.downscale
    negative = extra.get("prompt_type", "negative" if negative else "positive") == "negative"
    y = size_vector(cfg, pooled.float(), extra.get("width", shape[3] * down), extra.get("height", shape[2] * down),
                    extra.get("aesthetic_score", 2.5 if negative else 6.0), extra.get("crop_w", 0),
                    extra.get("crop_h", 0), extra.get("target_width"), extra.get("target_height"))
    return y.to(pipe.device)


def _unclip(extra: dict, width: int, seed: int, merge: float, model: str) -> torch.Tensor:
    """unCLIPConditioning's entries as the (1, 2 x width) vector of pipeline.unclip (noise from seed - 10)."""
    units = []
    for unit in extra["unclip_conditioning"]:
        embeds = unit["clip_vision_output"].image_embeds
        if embeds.ndim != 2 or embeds.shape[1] != width:
            raise InvalidArgument(f"unCLIPConditioning: {model} takes CLIP image embeddings {width} wide; the "
                                  f"clip_vision_output has {tuple(embeds.shape)} (from another CLIP vision model?)")
        units.append((embeds, float(unit["strength"]), float(unit["noise_augmentation"])))
    return unclip_vector(units, seed - 10, merge)


def _inside(a: tuple, b: tuple) -> bool:
    """Area a lies within area b."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def _add_same_area(entries: list[Entry], e: Entry) -> None:
    if e.area is None:
        return
    smallest = None
    for x in entries:
        if x.area is None:
            smallest = x if smallest is None else smallest
        elif _inside(e.area, x.area) and (smallest is None or smallest.area is None
                                          or smallest.area[0] * smallest.area[1] > x.area[0] * x.area[1]):
            smallest = x
    if smallest is None or smallest.area == e.area:
        return
    entries.append(replace(e, context=smallest.context, y=smallest.y, negative=smallest.negative))


def _hints_to(positive: list[Entry], other: list[Entry]) -> None:
    hints = [e.control for e in positive if e.control_to_uncond and e.area is None and e.control is not None]
    if any(e.area is None and e.control is not None for e in other):
        return
    free = [i for i, e in enumerate(other) if e.area is None]
    for n, hint in enumerate(hints):
        if free:
            i = free[n % len(free)]
            other[i] = replace(other[i], control=hint)


# --- one step ----------------------------------------------------------------------------------

def region(t: torch.Tensor, area) -> torch.Tensor:
    if area is None:
        return t
    h, w, y, x = area
    return t[:, :, y:y + h, x:x + w]


def _area_and_mult(e: Entry, x: torch.Tensor, image: int):
    H, W = x.shape[2:]
    area = e.area
    if area is not None:
        area = (min(H - area[2], area[0]), min(W - area[3], area[1]), area[2], area[3])
    h, w = (H, W) if area is None else area[:2]
    if e.mask is not None:
        m = e.mask[image % e.mask.shape[0]][None, None]
        return area, region(m, area) * e.mask_strength * e.strength
    mult = torch.full((1, 1, h, w), e.strength, device=x.device)
    if area is not None:
        for t in range(min(FEATHER, h)):
            ramp = (t + 1) / FEATHER
            if area[2] != 0:
                mult[:, :, t] *= ramp
            if area[0] + area[2] < H:
                mult[:, :, h - 1 - t] *= ramp
        for t in range(min(FEATHER, w)):
            ramp = (t + 1) / FEATHER
            if area[3] != 0:
                mult[:, :, :, t] *= ramp
            if area[1] + area[3] < W:
                mult[:, :, :, w - 1 - t] *= ramp
    return area, mult


def calc_cond_batch(run, sets: list[list[Entry] | None], x: torch.Tensor, sigma: torch.Tensor,
                    image: int = 0) -> list[torch.Tensor]:
    """The denoised prediction of each list of entries (None: not evaluated, zeros) for image
    `image` of the batch, x (1, C, H, W). run(crops, sigma, entries, areas) evaluates the model."""
    s = float(sigma.reshape(-1)[0])
    outs = [torch.zeros_like(x) for _ in sets]
    counts = [torch.full_like(x, 1e-37) for _ in sets]
    groups: dict[tuple, list] = {}
    for i, entries in enumerate(sets):
        for e in entries or ():
            if not e.active(s):
                continue
            area, mult = _area_and_mult(e, x, image)
            shape = tuple(region(x, area).shape)
            # one model call per group: same crop size, ControlNet hint and context shape, no GLIGEN
            key = (shape, id(e.control), tuple(e.context.shape), e.y is None, e.guidance, id(e.references),
                   e.reference_method,
                   None if e.gligen is None else id(e))  # a grounded entry runs alone, as in ComfyUI
            groups.setdefault(key, []).append((i, e, area, mult))
    for group in groups.values():
        crops = torch.cat([region(x, area) for _, _, area, _ in group])
        denoised = run(crops, sigma, [e for _, e, _, _ in group], [area for _, _, area, _ in group])
        for (i, _, area, mult), d in zip(group, denoised.split(1)):
            region(outs[i], area).add_(d * mult)
            region(counts[i], area).add_(mult.expand_as(d))
    return [o / c for o, c in zip(outs, counts)]
