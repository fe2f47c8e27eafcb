"""MODEL patches on a UNet's self-attention, with ComfyUI's names, inputs and arithmetic:

* HyperTile (tfernd's HyperTile, comfy_extras.nodes_hypertile): the self-attentions at the
  latent's resolution (and max_depth halvings below it) attend within tiles of about tile_size
  pixels, chosen at random among the swap_size largest tilings.
* SelfAttentionGuidance (Hong et al. 2023, comfy_extras.nodes_sag): a post-CFG function that
  blurs the negative's prediction where the middle block's self-attention looks most, predicts
  the negative again from that, and pushes the result away from it.
* UNetSelfAttentionMultiply / UNetCrossAttentionMultiply (nodes_attention_multiply): the q, k, v
  and output projections of every self- or cross-attention scaled; CLIPAttentionMultiply the same
  for the CLIP text encoders' self-attention (clip_patches.py).
* TomePatchModel (Bolya and Hoffman's ToMe for SD, comfy_extras.nodes_tomesd): the full-resolution
  self-attentions merge `ratio` of their query tokens into similar ones.
"""
from __future__ import annotations

import math
import struct
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from .guiders import PostCfgArgs
from .types import ClipRef, ModelRef, NodeDef, register
from .unet_patches import attention_scaled, hypertile, middle_attention_recorded, tome


def require_unet(model: ModelRef, node: str) -> None:
    """One line for models whose network is not a UNet with transformer blocks."""
    family = model.pipe.family
    if "pag" not in family.adapters:  # the families whose UNet attention the hooks here know
        raise InvalidArgument(f"model: {node} patches a UNet's self-attention; it is not available for "
                              f"{family.label} models")


def step_generator(sigma: float) -> torch.Generator:
    """A generator seeded by the step's sigma, so a run repeats itself (ComfyUI draws from torch's
    global generator, which its noise seeding resets)."""
    return torch.Generator().manual_seed(struct.unpack("<q", struct.pack("<d", float(sigma)))[0] & (2 ** 63 - 1))


def step_draws(sigma: float):
    """draw(n) -> an int in [0, n) from step_generator(sigma)."""
    g = step_generator(sigma)
    return lambda n: int(torch.randint(0, n, (1,), generator=g))


def tome_patch_model(call, model, ratio):
    require_unet(model, "TomePatchModel")

    def patch(unet, sigma: float):
        draw = step_generator(sigma)
        return tome(unet, ratio, lambda hs, ws: torch.randint(4, (hs, ws), generator=draw))
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "TomePatchModel", tome_patch_model,
    {"model": ("MODEL", {}), "ratio": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("MODEL",), category="_for_testing", module="comfy_extras.nodes_tomesd"))


def hyper_tile(call, model, tile_size, swap_size, max_depth, scale_depth):
    require_unet(model, "HyperTile")

    def patch(unet, sigma: float):
        return hypertile(unet, tile_size, swap_size, max_depth, scale_depth, step_draws(sigma))
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "HyperTile", hyper_tile,
    {"model": ("MODEL", {}), "tile_size": ("INT", {"default": 256, "min": 1, "max": 2048}),
     "swap_size": ("INT", {"default": 2, "min": 1, "max": 128}),
     "max_depth": ("INT", {"default": 0, "min": 0, "max": 10}),
     "scale_depth": ("BOOLEAN", {"default": False})},
    ("MODEL",), category="model_patches/unet", module="comfy_extras.nodes_hypertile"))


# --- SelfAttentionGuidance ----------------------------------------------------------------------

def gaussian_blur(x: torch.Tensor, sigma: float, size: int = 9) -> torch.Tensor:
    """Each channel blurred by a size x size Gaussian, edges reflected (SAG's). Sigma 0 is no blur
    (ComfyUI's kernel would be 0/0 there)."""
    if sigma <= 0:
        return x
    t = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size)
    k1 = torch.exp(-0.5 * (t / sigma) ** 2)
    k1 = (k1 / k1.sum()).to(x)
    kernel = (k1[:, None] @ k1[None, :]).expand(x.shape[1], 1, size, size)
    pad = size // 2
    return F.conv2d(F.pad(x, [pad] * 4, mode="reflect"), kernel, groups=x.shape[1])


def sag_blurred(x0: torch.Tensor, scores: torch.Tensor, sigma: float, threshold: float = 1.0) -> torch.Tensor:
    """x0 blurred where the middle block's self-attention (scores: (b * heads, n, n)) gives a key
    more than `threshold` of attention summed over the queries, averaged over the heads; the
    middle block's grid is found as ComfyUI finds it (the latent halved a power of two times)."""
    b, _, lh, lw = x0.shape
    n = scores.shape[1]
    received = scores.reshape(b, -1, n, n).mean(1).sum(1) > threshold
    ratio = 2 ** (math.ceil(math.sqrt(lh * lw / n)) - 1).bit_length()
    mid = (math.ceil(lh / ratio), math.ceil(lw / ratio))
    if mid[0] * mid[1] != n:
        raise InvalidArgument(f"model: SelfAttentionGuidance cannot place the middle block's {n} tokens on the "
                              f"{lh}x{lw} latent")
    mask = F.interpolate(received.reshape(b, 1, *mid).to(x0.dtype), (lh, lw))
    return gaussian_blur(x0, sigma) * mask + x0 * (1 - mask)


def sag_function(scale: float, blur_sigma: float):
    """The negative predicted again (recording its attention), blurred where it attended most,
    noised back and predicted once more; the result pushed away from that by `scale`."""
    def fn(args: PostCfgArgs) -> torch.Tensor:
        if min(args.denoised.shape[2:]) <= 4:  # too small for the blur's padding (ComfyUI's skip)
            return args.denoised
        if args.uncond is None:
            raise InvalidArgument("model: SelfAttentionGuidance needs a negative conditioning to guide with")
        with middle_attention_recorded(args.network) as scores:
            uncond = args.predict(args.uncond)
        if not scores:
            return args.denoised  # no entry of the negative was active at this step
        heads = scores[0].shape[0] // args.input.shape[0]
        degraded = sag_blurred(uncond, scores[0][:heads * args.input.shape[0]], blur_sigma)
        sag = args.predict(args.uncond, degraded + args.input - uncond)
        return args.denoised + (degraded - sag) * scale
    return fn


def self_attention_guidance(call, model, scale, blur_sigma):
    require_unet(model, "SelfAttentionGuidance")
    return (replace(model, post_cfg_functions=model.post_cfg_functions + (sag_function(scale, blur_sigma),)),)


register(NodeDef(
    "SelfAttentionGuidance", self_attention_guidance,
    {"model": ("MODEL", {}), "scale": ("FLOAT", {"default": 0.5, "min": -2.0, "max": 5.0, "step": 0.01}),
     "blur_sigma": ("FLOAT", {"default": 2.0, "min": 0.0, "max": 10.0, "step": 0.1})},
    ("MODEL",), category="_for_testing", display_name="Self-Attention Guidance", module="comfy_extras.nodes_sag",
    experimental=True))


# --- attention multiply --------------------------------------------------------------------------

def _attention_multiply(which: str):
    def node(call, model, q, k, v, out):
        """Scaled projections; on networks without a UNet's attn1/attn2 (SD3, Flux) ComfyUI's key
        match finds nothing and so the model is returned as it is."""
        if "pag" not in model.pipe.family.adapters or (q, k, v, out) == (1.0, 1.0, 1.0, 1.0):
            return (model,)
        factors = {"to_q": q, "to_k": k, "to_v": v, "to_out": out}

        def patch(unet, sigma: float):
            return attention_scaled(unet, which, factors)
        return (replace(model, network_patches=model.network_patches + (patch,)),)
    return node


unet_self_attention_multiply = _attention_multiply("attn1")
unet_cross_attention_multiply = _attention_multiply("attn2")
_FACTORS = {name: ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}) for name in ("q", "k", "v", "out")}
for _name, _fn in (("UNetSelfAttentionMultiply", unet_self_attention_multiply),
                   ("UNetCrossAttentionMultiply", unet_cross_attention_multiply)):
    register(NodeDef(
        _name, _fn, {"model": ("MODEL", {}), **_FACTORS}, ("MODEL",), category="_for_testing/attention_experiments",
        module="comfy_extras.nodes_attention_multiply", experimental=True))


def clip_attention_multiply(call, clip: ClipRef, q, k, v, out):
    """A CLIP whose encoders' self-attention projections are scaled when it encodes (after the LoRAs
    stacked on it: ComfyUI's order when they were loaded before this node, the usual graph)."""
    if (q, k, v, out) == (1.0, 1.0, 1.0, 1.0):
        return (clip,)
    before = clip.attention or (1.0, 1.0, 1.0, 1.0)
    return (replace(clip, attention=tuple(float(a * b) for a, b in zip(before, (q, k, v, out)))),)


register(NodeDef(
    "CLIPAttentionMultiply", clip_attention_multiply, {"clip": ("CLIP", {}), **_FACTORS}, ("CLIP",),
    category="_for_testing/attention_experiments", module="comfy_extras.nodes_attention_multiply", experimental=True))
