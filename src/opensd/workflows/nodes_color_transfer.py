"""ComfyUI's ColorTransfer (comfy_extras/nodes_post_processing.py): image_target's colours matched to
image_ref's by Reinhard's Lab statistics, Monge-Kantorovich linearisation in Lab, or RGB histograms
(the arithmetic in pipeline.color_transfer, Lab computed as kornia does, without kornia).

source_stats says whose statistics the map starts from: per_frame (each target frame its own, matched
to the reference frame of its index, or to all reference frames pooled when there is one reference
for Lab methods), uniform (all target frames pooled, all reference frames pooled: one map for every
frame) or target_frame (one chosen target frame, all reference frames pooled: one map). strength
interpolates from the image (0) to the match (1) and beyond, in Lab for the Lab methods."""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from ..pipeline import color_transfer as ct
from .dynamic_combo import DynamicCombo, Option
from .types import NodeDef, register

METHODS = ["reinhard_lab", "mkl_lab", "histogram"]


def _flat(image: torch.Tensor, i: int) -> torch.Tensor:
    """Frame i of an IMAGE (B, H, W, C) as (C, H*W) float32."""
    return image[i].to(torch.float32).permute(2, 0, 1).reshape(image.shape[-1], -1)


def _lab_flat(image: torch.Tensor, i: int) -> torch.Tensor:
    frame = image[i:i + 1].to(torch.float32).permute(0, 3, 1, 2)
    return ct.rgb_to_lab(frame).reshape(3, -1)


def _lab_map(target, ref, mode, index, reinhard):
    """fn(lab_flat, i) -> the frame's matched Lab pixels."""
    ref_frames = [_lab_flat(ref, i) for i in range(ref.shape[0])]
    pooled_ref = ct.pooled_stats(ref_frames, reinhard) if len(ref_frames) == 1 or mode != "per_frame" else None

    def affine(s_mean, s_sc, r_mean, r_sc):
        if reinhard:
            scale = r_sc / s_sc
            return lambda flat: flat * scale + (r_mean - scale * s_mean)
        t = ct.mkl_matrix(s_sc, r_sc)
        return lambda flat: t @ flat + (r_mean - t @ s_mean)

    if mode != "per_frame":
        if mode == "target_frame":
            s_stats = ct.channel_stats(_lab_flat(target, min(index, target.shape[0] - 1)), reinhard)
        else:
            s_stats = ct.pooled_stats([_lab_flat(target, i) for i in range(target.shape[0])], reinhard)
        one = affine(*s_stats, *pooled_ref)
        return lambda flat, i: one(flat)

    def per_frame(flat, i):
        r_stats = pooled_ref or ct.channel_stats(ref_frames[min(i, len(ref_frames) - 1)], reinhard)
        return affine(*ct.channel_stats(flat, reinhard), *r_stats)(flat)
    return per_frame


def _histogram_lut(target, ref, mode, index):
    """fn(i) -> the (C, 256) table frame i is looked up in."""
    ref_frames = [_flat(ref, i) for i in range(ref.shape[0])]
    if mode == "per_frame":
        return lambda i: ct.histogram_lut(ct.cumulative_histogram([_flat(target, i)]),
                                          ct.cumulative_histogram([ref_frames[min(i, len(ref_frames) - 1)]]))
    sources = ([min(index, target.shape[0] - 1)] if mode == "target_frame" else range(target.shape[0]))
    lut = ct.histogram_lut(ct.cumulative_histogram([_flat(target, i) for i in sources]),
                           ct.cumulative_histogram(ref_frames))
    return lambda i: lut


def _check(image_target, image_ref, method):
    for name, image in (("image_target", image_target), ("image_ref", image_ref)):
        if image.ndim != 4 or 0 in image.shape:
            raise InvalidArgument(f"ColorTransfer: {name} must be an IMAGE (B, H, W, C), got shape "
                                  f"{tuple(image.shape)}")
    channels = image_target.shape[-1], image_ref.shape[-1]
    if method != "histogram" and channels != (3, 3):
        raise InvalidArgument(f"ColorTransfer: {method} works on RGB images (3 channels); image_target has "
                              f"{channels[0]}, image_ref {channels[1]}")
    if channels[0] != channels[1]:
        raise InvalidArgument(f"ColorTransfer: image_target has {channels[0]} channels but image_ref "
                              f"{channels[1]}")


def color_transfer(call, image_target, method, source_stats, strength=1.0, image_ref=None):
    if strength == 0 or image_ref is None:
        return (image_target,)
    _check(image_target, image_ref, method)
    mode, index = source_stats["source_stats"], source_stats.get("target_index") or 0
    b, h, w, c = image_target.shape
    out = torch.empty(b, h, w, c, dtype=torch.float32)
    if method == "histogram":
        lut = _histogram_lut(image_target, image_ref, mode, index)
        for i in range(b):
            src = _flat(image_target, i)
            matched = ct.apply_lut(lut(i), src)
            result = matched if strength == 1.0 else torch.lerp(src, matched, strength)
            out[i] = result.reshape(c, h, w).permute(1, 2, 0).clamp(0, 1)
    else:
        transform = _lab_map(image_target, image_ref, mode, index, method == "reinhard_lab")
        for i in range(b):
            src = _lab_flat(image_target, i)
            lab = transform(src, i)
            if strength != 1.0:
                lab = torch.lerp(src, lab, strength)
            out[i] = ct.lab_to_rgb(lab.reshape(1, 3, h, w))[0].permute(1, 2, 0).clamp(0, 1)
    return (out,)


register(NodeDef(
    "ColorTransfer", color_transfer,
    {"image_target": ("IMAGE", {"tooltip": "Image(s) to apply the color transform to."}),
     "method": (METHODS, {}),
     "source_stats": (DynamicCombo((
         Option("per_frame"), Option("uniform"),
         Option("target_frame", {"target_index": ("INT", {
             "default": 0, "min": 0, "max": 10000,
             "tooltip": "Frame index used as the source baseline for computing the transform to image_ref"})}),
     )), {"tooltip": "per_frame: each frame matched to image_ref individually. uniform: pool stats across all "
                     "source frames as baseline, match to image_ref. target_frame: use one chosen frame as the "
                     "baseline for the transform to image_ref, applied uniformly to all frames (preserves relative "
                     "differences)"}),
     "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})},
    ("IMAGE",), output_names=("image",),
    optional={"image_ref": ("IMAGE", {"tooltip": "Reference image(s) to match colors to. If not provided, "
                                                 "processing is skipped"})},
    category="image/postprocessing", description="Match the colors of one image to another using various algorithms.",
    module="comfy_extras.nodes_post_processing"))
