"""Core nodes: loaders, text encoding, sampling and the VAE (ComfyUI's names, inputs and defaults)."""
from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..pipeline import vae_codec
from ..sampling.names import SAMPLER_LABELS
from . import ksampler
from .loras import activate
from .nodes_conditioning import set_values
from .nodes_dit import conditioner_for
from .types import (
    MAX_SEED,
    Choices,
    ClipRef,
    LoraEntry,
    ModelRef,
    NodeDef,
    VaeRef,
    check_size,
    register,
)

# ComfyUI's lists, in its order, restricted to what our samplers and schedules implement.
_COMFY_SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
                   "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
                   "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
                   "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
                   "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep",
                   "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                   "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2", "seeds_3", "sa_solver",
                   "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
SAMPLERS = [s for s in _COMFY_SAMPLERS if s.removesuffix("_gpu") in SAMPLER_LABELS]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
              "kl_optimal"]


# --- loaders -------------------------------------------------------------------------------------

def checkpoint_loader(call, ckpt_name):
    pipe = call.ctx.load_pipeline(ckpt_name)
    return ModelRef(pipe, ckpt_name), ClipRef(pipe, ckpt_name), VaeRef(pipe, ckpt_name)


register(NodeDef(
    "CheckpointLoaderSimple", checkpoint_loader, {"ckpt_name": (Choices("checkpoints"), {})},
    ("MODEL", "CLIP", "VAE"), category="loaders", display_name="Load Checkpoint",
    description="Loads a diffusion model checkpoint; its UNet, text encoder and VAE."))


def lora_loader(call, model, clip, lora_name, strength_model, strength_clip):
    path = call.ctx.folders.resolve("loras", lora_name)
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    entry = LoraEntry(path, float(strength_model), float(strength_clip))
    return replace(model, loras=model.loras + (entry,)), replace(clip, loras=clip.loras + (entry,))


_STRENGTH = ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01})
register(NodeDef(
    "LoraLoader", lora_loader,
    {"model": ("MODEL", {}), "clip": ("CLIP", {}), "lora_name": (Choices("loras"), {}),
     "strength_model": _STRENGTH, "strength_clip": _STRENGTH},
    ("MODEL", "CLIP"), category="loaders", display_name="Load LoRA",
    description="Applies a LoRA to the model and the text encoder with separate strengths."))


# --- conditioning --------------------------------------------------------------------------------

def clip_text_encode(call, text, clip):
    activate(clip, part="te")
    c = conditioner_for(clip).encode(text)
    pooled = None if c.pooled is None else c.pooled.float().cpu()
    return ([[c.context.float().cpu(), {"pooled_output": pooled}]],)


register(NodeDef(
    "CLIPTextEncode", clip_text_encode,
    {"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP", {})},
    ("CONDITIONING",), category="conditioning", display_name="CLIP Text Encode (Prompt)",
    description="Encodes a prompt ((word:1.2) emphasis, BREAK, embeddings) for the sampler."))


def clip_set_last_layer(call, clip, stop_at_clip_layer):
    """-1 = last layer, -2 = penultimate (A1111's "Clip skip" 2). SD1-style encoders only; SD2 and
    SDXL keep their own layer, as our prompt conditioner does for A1111's setting."""
    return (replace(clip, clip_skip=-stop_at_clip_layer),)


register(NodeDef(
    "CLIPSetLastLayer", clip_set_last_layer,
    {"clip": ("CLIP", {}), "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1})},
    ("CLIP",), category="conditioning", display_name="CLIP Set Last Layer",
    description="Which text-encoder layer conditions the model (CLIP skip)."))


# --- sampling ------------------------------------------------------------------------------------

def step_reporter(call, model):
    def on_step(i, n, denoised):
        call.progress(i, n)
        if call.ctx.previews:
            image = model.pipe.preview(denoised)
            if image is not None:
                call.emit("preview", image)
    return on_step


def ksampler_node(call, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                  denoise=1.0):
    out = ksampler.sample(model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                          sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                          on_step=step_reporter(call, model), should_stop=call.ctx.should_stop)
    return (out,)


_SEED = ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True})
_STEPS = ("INT", {"default": 20, "min": 1, "max": 10000})
_CFG = ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01})
register(NodeDef(
    "KSampler", ksampler_node,
    {"model": ("MODEL", {}), "seed": _SEED, "steps": _STEPS, "cfg": _CFG,
     "sampler_name": (SAMPLERS, {}), "scheduler": (SCHEDULERS, {}), "positive": ("CONDITIONING", {}),
     "negative": ("CONDITIONING", {}), "latent_image": ("LATENT", {}),
     "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("LATENT",), category="sampling", description="Denoises the latent image with the model and prompts."))


def ksampler_advanced(call, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                      latent_image, start_at_step, end_at_step, return_with_leftover_noise):
    out = ksampler.sample(model, positive, negative, latent_image, seed=noise_seed, steps=steps, cfg=cfg,
                          sampler_name=sampler_name, scheduler=scheduler, add_noise=add_noise == "enable",
                          start_step=start_at_step, last_step=end_at_step,
                          force_full_denoise=return_with_leftover_noise != "enable",
                          on_step=step_reporter(call, model), should_stop=call.ctx.should_stop)
    return (out,)


register(NodeDef(
    "KSamplerAdvanced", ksampler_advanced,
    {"model": ("MODEL", {}), "add_noise": (["enable", "disable"], {}), "noise_seed": _SEED, "steps": _STEPS,
     "cfg": _CFG, "sampler_name": (SAMPLERS, {}), "scheduler": (SCHEDULERS, {}),
     "positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "latent_image": ("LATENT", {}),
     "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
     "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
     "return_with_leftover_noise": (["disable", "enable"], {})},
    ("LATENT",), category="sampling", description="KSampler with control over the step range and the noise."))


# --- VAE -----------------------------------------------------------------------------------------

def _vae_params(pipe):
    return next(pipe.model.vae.parameters())


@torch.no_grad()
def vae_decode_tensor(pipe, latents: torch.Tensor, tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """Raw latents (B, C, h, w) -> IMAGE (B, H, W, 3) in 0..1, one image at a time; in tiles above
    the pipeline's size threshold (pipeline/vae_codec.py), or always in `tiles` ((tile, overlap)
    in latent pixels)."""
    vae, images, down = pipe.model.vae, [], pipe.config.vae.downscale
    if latents.ndim != 4 or latents.shape[1] != pipe.config.vae.embed_dim:  # an SD3/Flux latent for an SD VAE...
        raise InvalidArgument(f"samples: a latent of shape {tuple(latents.shape)} does not fit this VAE, which decodes "
                              f"{pipe.config.vae.embed_dim}-channel latents (is it another model family's?)")
    check_size("VAEDecode", latents.shape[0], 3, latents.shape[-2] * down, latents.shape[-1] * down)
    tiling = True if tiles else pipe.vae_tiling
    for z in latents:
        z = z[None].to(pipe.device)
        x = vae_codec.decode(vae.decode, z.to(_vae_params(pipe).dtype), down, tiling, tiles)
        if not torch.isfinite(x).all() and _vae_params(pipe).dtype != torch.float32:
            vae.float()  # fp16 VAEs overflow; the pipeline's own fallback
            x = vae_codec.decode(vae.decode, z.float(), down, tiling, tiles)
        images.append(((x.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu())
    return torch.cat(images)


@torch.no_grad()
def vae_encode_tensor(pipe, pixels: torch.Tensor, tiles: tuple[int, int] | None = None) -> torch.Tensor:
    """IMAGE (B, H, W, C) in 0..1 -> raw latents (B, C, h, w) (posterior mean); tiled as the
    pipeline tiles, or always in `tiles` ((tile, overlap) in pixels)."""
    out = []
    for px in pixels[..., :3]:
        x = px.permute(2, 0, 1)[None] * 2.0 - 1.0
        out.append(pipe.config.vae.unscaled(pipe.encode_tensor(x, tiles).float().cpu()))
    return torch.cat(out)


def _crop_to_multiple(pixels: torch.Tensor, down: int, mask: torch.Tensor | None = None):
    h, w = (pixels.shape[1] // down) * down, (pixels.shape[2] // down) * down
    if h == 0 or w == 0:  # ComfyUI's crop leaves nothing for the VAE to encode
        raise InvalidArgument(f"pixels: a {pixels.shape[2]}x{pixels.shape[1]} image is smaller than the VAE's "
                              f"{down}x{down}-pixel cell")
    if (h, w) != tuple(pixels.shape[1:3]):
        top, left = (pixels.shape[1] % down) // 2, (pixels.shape[2] % down) // 2
        pixels = pixels[:, top:top + h, left:left + w, :]
        if mask is not None:
            mask = mask[:, :, top:top + h, left:left + w]
    return pixels, mask


def vae_decode(call, samples, vae):
    return (vae_decode_tensor(vae.pipe, samples["samples"]),)


def vae_encode(call, pixels, vae):
    pixels, _ = _crop_to_multiple(pixels, vae.pipe.config.vae.downscale)
    return ({"samples": vae_encode_tensor(vae.pipe, pixels)},)


def _tile_overlap(tile_size: int, overlap: int) -> int:
    # ComfyUI's rule: an overlap over a quarter of the tile becomes a quarter
    return tile_size // 4 if tile_size < overlap * 4 else overlap


def vae_decode_tiled(call, samples, vae, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
    down = vae.pipe.config.vae.downscale  # temporal_*: for video VAEs, which opensd does not have
    tiles = (max(1, tile_size // down), _tile_overlap(tile_size, overlap) // down)
    return (vae_decode_tensor(vae.pipe, samples["samples"], tiles),)


def vae_encode_tiled(call, pixels, vae, tile_size, overlap, temporal_size=64, temporal_overlap=8):
    pixels, _ = _crop_to_multiple(pixels, vae.pipe.config.vae.downscale)
    return ({"samples": vae_encode_tensor(vae.pipe, pixels, (tile_size, _tile_overlap(tile_size, overlap)))},)


def _tiled_inputs(image: dict, verb: str, tile_step: int) -> dict:
    frames = "Only used for video VAEs: Amount of frames to"
    return {**image, "vae": ("VAE", {}),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": tile_step}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            "temporal_size": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 4,
                                      "tooltip": f"{frames} {verb} at a time."}),
            "temporal_overlap": ("INT", {"default": 8, "min": 4, "max": 4096, "step": 4,
                                         "tooltip": f"{frames} overlap."})}


def _greyed(pixels: torch.Tensor, mask: torch.Tensor, down: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels with the masked area neutral grey, and the mask (B, 1, H, W) resized to the
    pixels, both cropped to the VAE's multiple."""
    mask = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(),
                         size=tuple(pixels.shape[1:3]), mode="bilinear")
    if mask.shape[0] not in (1, pixels.shape[0]):
        raise InvalidArgument(f"mask: {mask.shape[0]} masks for {pixels.shape[0]} images (give one, or one per image)")
    pixels, mask = _crop_to_multiple(pixels, down, mask)
    keep = (1.0 - mask.round())[:, 0, :, :, None]
    return (pixels[..., :3] - 0.5) * keep + 0.5, mask


def vae_encode_for_inpaint(call, pixels, vae, mask, grow_mask_by=6):
    pixels, mask = _greyed(pixels, mask, vae.pipe.config.vae.downscale)
    if grow_mask_by > 0:
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        grown = F.conv2d(mask.round(), kernel, padding=math.ceil((grow_mask_by - 1) / 2)).clamp(0, 1)
    else:
        grown = mask
    latents = vae_encode_tensor(vae.pipe, pixels)
    return ({"samples": latents, "noise_mask": grown[:, :, :pixels.shape[1], :pixels.shape[2]].round()},)


def inpaint_model_conditioning(call, positive, negative, vae, pixels, mask, noise_mask=True):
    """For inpainting models: both conditionings carry the greyed image's latent and the mask, which
    the model's extra input channels see (conds.py); the latent is the whole image's."""
    greyed, mask = _greyed(pixels, mask, vae.pipe.config.vae.downscale)
    extras = {"concat_latent_image": vae_encode_tensor(vae.pipe, greyed), "concat_mask": mask}
    (latent,) = vae_encode(call, pixels, vae)
    if noise_mask:
        latent["noise_mask"] = mask
    return set_values(positive, **extras), set_values(negative, **extras), latent


def instruct_pix2pix_conditioning(call, positive, negative, vae, pixels):
    """For InstructPix2Pix (edit) models: both conditionings carry the image's raw latent, which the
    model's extra input channels see (conds.py); the latent to sample is an empty one of its size.
    Image guidance as ComfyUI: DualCFGGuider(cond1 = positive, cond2 = this negative, negative =
    the negative without the image)."""
    (latent,) = vae_encode(call, pixels, vae)
    image = latent["samples"]
    return (set_values(positive, concat_latent_image=image), set_values(negative, concat_latent_image=image),
            {"samples": torch.zeros_like(image)})


register(NodeDef("VAEDecode", vae_decode, {"samples": ("LATENT", {}), "vae": ("VAE", {})}, ("IMAGE",),
                 category="latent", display_name="VAE Decode", description="Latents to images."))
register(NodeDef("VAEEncode", vae_encode, {"pixels": ("IMAGE", {}), "vae": ("VAE", {})}, ("LATENT",),
                 category="latent", display_name="VAE Encode", description="Images to latents."))
register(NodeDef("VAEDecodeTiled", vae_decode_tiled, _tiled_inputs({"samples": ("LATENT", {})}, "decode", 32),
                 ("IMAGE",), category="_for_testing", display_name="VAE Decode (Tiled)"))
register(NodeDef("VAEEncodeTiled", vae_encode_tiled, _tiled_inputs({"pixels": ("IMAGE", {})}, "encode", 64),
                 ("LATENT",), category="_for_testing", display_name="VAE Encode (Tiled)"))
register(NodeDef(
    "VAEEncodeForInpaint", vae_encode_for_inpaint,
    {"pixels": ("IMAGE", {}), "vae": ("VAE", {}), "mask": ("MASK", {}),
     "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})},
    ("LATENT",), category="latent/inpaint", display_name="VAE Encode (for Inpainting)",
    description="Encodes the image with the masked area greyed out and sets the grown mask as noise mask."))
register(NodeDef(
    "InpaintModelConditioning", inpaint_model_conditioning,
    {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "vae": ("VAE", {}), "pixels": ("IMAGE", {}),
     "mask": ("MASK", {}),
     "noise_mask": ("BOOLEAN", {"default": True, "tooltip": "Add a noise mask to the latent so sampling will only "
                                "happen within the mask. Might improve results or completely break things "
                                "depending on the model."})},
    ("CONDITIONING", "CONDITIONING", "LATENT"), output_names=("positive", "negative", "latent"),
    category="conditioning/inpaint"))
register(NodeDef(
    "InstructPixToPixConditioning", instruct_pix2pix_conditioning,
    {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "vae": ("VAE", {}), "pixels": ("IMAGE", {})},
    ("CONDITIONING", "CONDITIONING", "LATENT"), output_names=("positive", "negative", "latent"),
    category="conditioning/instructpix2pix"))
