"""MODEL patch nodes with ComfyUI's names, inputs and arithmetic: ModelSamplingDiscrete (another
parameterisation or zero-terminal-SNR schedule), ModelSamplingContinuousEDM / V (continuous
sigmas), RescaleCFG (Lin et al. 2023), FreeU and FreeU_V2 (Si et al. 2023), PerpNeg (Armandpour
et al. 2023), DifferentialDiffusion (Levin and Fried 2023) and PatchModelAddDownscale (Kohya's deep
shrink).
Each returns a new ModelRef; the checkpoint and the other branches of the graph are untouched."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import torch

from ..checkpoints.markers import PLAYGROUND_EDM, PLAYGROUND_MEAN, PLAYGROUND_SCALING, PLAYGROUND_STD
from ..sampling.model_sampling import continuous_sampling
from ..sampling.schedules import DiscreteSchedule
from .guiders import CfgArgs, perp_neg
from .ksampler import sampling_of
from .model_sampling import model_sampling
from .nodes_image import upscale
from .types import NodeDef, register
from .unet_patches import deep_shrink


def model_sampling_discrete(call, model, sampling, zsnr):
    model.pipe.family.require("discrete_sampling", "model")
    # from the file's own schedule, as ComfyUI: zsnr False undoes a "ztsnr" checkpoint's rescale
    trained = DiscreteSchedule(model.pipe.trained_alphas_cumprod)
    return (replace(model, sampling=model_sampling(trained, sampling, zsnr)),)


register(NodeDef(
    "ModelSamplingDiscrete", model_sampling_discrete,
    {"model": ("MODEL", {}), "sampling": (["eps", "v_prediction", "lcm", "x0"], {}),
     "zsnr": ("BOOLEAN", {"default": False})},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))


def model_sampling_continuous_edm(call, model, sampling, sigma_max, sigma_min):
    """Sampling in EDM's time (0.25 log sigma); Playground v2.5's is EDM's F-prediction with
    sigma_data 0.5 and its own latent format."""
    model.pipe.family.require("continuous_sampling", "model")
    if sampling == "edm_playground_v2.5":
        vae = model.pipe.config.vae  # the VAE config is also the latent format (scaled / unscaled)
        return (replace(model, sampling=continuous_sampling("edm", "edm", sigma_min, sigma_max, PLAYGROUND_EDM.sigma_data),
                        latent_format=replace(vae, scaling_factor=PLAYGROUND_SCALING, latents_mean=PLAYGROUND_MEAN,
                                              latents_std=PLAYGROUND_STD)),)
    prediction = {"eps": "eps", "v_prediction": "v"}[sampling]
    return (replace(model, sampling=continuous_sampling("edm", prediction, sigma_min, sigma_max)),)


def model_sampling_continuous_v(call, model, sampling, sigma_max, sigma_min):
    """v-prediction in the time atan(sigma) 2 / pi."""
    model.pipe.family.require("continuous_sampling", "model")
    return (replace(model, sampling=continuous_sampling("v", "v", sigma_min, sigma_max)),)


def _bound(default: float):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1000.0, "step": 0.001, "round": False})


register(NodeDef(
    "ModelSamplingContinuousEDM", model_sampling_continuous_edm,
    {"model": ("MODEL", {}), "sampling": (["v_prediction", "edm_playground_v2.5", "eps"], {}),
     "sigma_max": _bound(120.0), "sigma_min": _bound(0.002)},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))
register(NodeDef(
    "ModelSamplingContinuousV", model_sampling_continuous_v,
    {"model": ("MODEL", {}), "sampling": (["v_prediction"], {}), "sigma_max": _bound(500.0),
     "sigma_min": _bound(0.03)},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))


def rescale_cfg_function(multiplier: float):
    """CFG on the v-prediction the model's outputs imply, rescaled towards the conditional
    prediction's standard deviation by `multiplier` (0 = plain CFG)."""
    def fn(args: CfgArgs) -> torch.Tensor:
        x_orig, cond, uncond = args.input, args.cond, args.uncond
        sigma = args.sigma.reshape(-1)[:1].to(x_orig).view(-1, 1, 1, 1)
        x = x_orig / (sigma * sigma + 1.0)
        v_cond = ((x - (x_orig - cond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        v_uncond = ((x - (x_orig - uncond)) * (sigma ** 2 + 1.0) ** 0.5) / sigma
        v_cfg = v_uncond + args.cond_scale * (v_cond - v_uncond)
        ro_pos = torch.std(v_cond, dim=(1, 2, 3), keepdim=True)
        ro_cfg = torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
        v_final = multiplier * v_cfg * (ro_pos / ro_cfg) + (1.0 - multiplier) * v_cfg
        return x_orig - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)
    return fn


def rescale_cfg(call, model, multiplier):
    return (replace(model, cfg_function=rescale_cfg_function(multiplier)),)


register(NodeDef(
    "RescaleCFG", rescale_cfg,
    {"model": ("MODEL", {}), "multiplier": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("MODEL",), category="advanced/model", module="comfy_extras.nodes_model_advanced"))


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest frequencies (a (2 threshold)^2 square around the centre of the shifted
    spectrum) of each channel by `scale`."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    mask = torch.ones(freq.shape, device=x.device)
    mask[..., h // 2 - threshold:h // 2 + threshold, w // 2 - threshold:w // 2 + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_v2_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float):
    """FreeU v2 on the up blocks whose hidden state has 4x / 2x the model's base channels: the
    first half of h's channels amplified by up to b (most where the channel mean is highest), the
    skip connection's low frequencies scaled by s."""
    scales = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}

    def patch(h: torch.Tensor, skip: torch.Tensor):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        mean = h.mean(1, keepdim=True)
        flat = mean.view(mean.shape[0], -1)
        lo, hi = flat.amin(-1)[:, None, None, None], flat.amax(-1)[:, None, None, None]
        mean = (mean - lo) / (hi - lo)
        half = h.shape[1] // 2
        h[:, :half] = h[:, :half] * ((scale[0] - 1) * mean + 1)
        return h, fourier_filter(skip, 1, scale[1])

    return patch


def freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float):
    """FreeU (v1) on the same up blocks: the first half of h's channels multiplied by b
    throughout, the skip connection's low frequencies scaled by s."""
    scales = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}

    def patch(h: torch.Tensor, skip: torch.Tensor):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        half = h.shape[1] // 2
        h[:, :half] = h[:, :half] * scale[0]
        return h, fourier_filter(skip, 1, scale[1])

    return patch


def _freeu_node(make_patch):
    def node(call, model, b1, b2, s1, s2):
        model.pipe.family.require("freeu", "model")
        patch = make_patch(model.pipe.config.unet.model_channels, b1, b2, s1, s2)
        return (replace(model, output_block_patches=model.output_block_patches + (patch,)),)
    return node


freeu = _freeu_node(freeu_patch)
freeu_v2 = _freeu_node(freeu_v2_patch)


def _factor(default: float):
    # today's comfy_extras/nodes_freelunch.py (V3 schema) marks the factors advanced
    return ("FLOAT", {"default": default, "min": 0.0, "max": 10.0, "step": 0.01, "advanced": True})


register(NodeDef(
    "FreeU", freeu,
    {"model": ("MODEL", {}), "b1": _factor(1.1), "b2": _factor(1.2), "s1": _factor(0.9), "s2": _factor(0.2)},
    ("MODEL",), category="model_patches/unet", module="comfy_extras.nodes_freelunch"))


register(NodeDef(
    "FreeU_V2", freeu_v2,
    {"model": ("MODEL", {}), "b1": _factor(1.3), "b2": _factor(1.4), "s1": _factor(0.9), "s2": _factor(0.2)},
    ("MODEL",), category="model_patches/unet", module="comfy_extras.nodes_freelunch"))


def perp_neg_node(call, model, empty_conditioning, neg_scale):
    def fn(args: CfgArgs) -> torch.Tensor:
        nocond = args.predict(empty_conditioning)
        return args.input - perp_neg(args.cond_denoised, args.uncond_denoised, nocond, neg_scale, args.cond_scale)
    return (replace(model, cfg_function=fn),)


register(NodeDef(
    "PerpNeg", perp_neg_node,
    {"model": ("MODEL", {}), "empty_conditioning": ("CONDITIONING", {}),
     "neg_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})},
    ("MODEL",), category="_for_testing", display_name="Perp-Neg (DEPRECATED by PerpNegGuider)",
    module="comfy_extras.nodes_perpneg"))


def differential_mask(strength: float):
    """Differential diffusion's per-step mask: a soft noise mask's value v says how late a position
    joins the repainting. The threshold falls from 1 at the run's first sigma to 0 at its last (or
    the model's smallest) one, linearly in the network's timestep; each step repaints where
    v >= threshold. A strength below 1 blends that binary mask with the soft one (ComfyUI treats 0
    as 1: its test is `strength and strength < 1`)."""
    def fn(sigma, mask: torch.Tensor, sampling, sigmas: torch.Tensor) -> torch.Tensor:
        sigma_to = max(float(sigmas[-1]), float(sampling.sigma_min))
        ts_from, ts_to, now = (sampling.timestep(torch.tensor([float(s)]))[0]
                               for s in (sigmas[0], sigma_to, torch.as_tensor(sigma).reshape(-1)[0]))
        binary = (mask >= (now - ts_to) / (ts_from - ts_to)).to(mask.dtype)
        return strength * binary + (1 - strength) * mask if strength and strength < 1 else binary
    return fn


def differential_diffusion(call, model, strength=1.0):
    return (replace(model, denoise_mask_function=differential_mask(strength)),)


register(NodeDef(
    "DifferentialDiffusion", differential_diffusion, {"model": ("MODEL", {})}, ("MODEL",),
    optional={"strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    category="_for_testing", display_name="Differential Diffusion",
    module="comfy_extras.nodes_differential_diffusion"))


SHRINK_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def patch_model_add_downscale(call, model, block_number, downscale_factor, start_percent, end_percent,
                              downscale_after_skip, downscale_method, upscale_method):
    """The UNet works at 1/downscale_factor of the size from input block `block_number` down and
    back up, while the step's sigma lies in [sigma(end_percent), sigma(start_percent)]."""
    model.pipe.family.require("deep_shrink", "model")
    ms = sampling_of(model)
    sigma_start, sigma_end = ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent)

    def patch(unet, sigma: float):
        if not sigma_end <= sigma <= sigma_start:
            return nullcontext()
        return deep_shrink(unet, block_number, downscale_factor, downscale_after_skip,
                           lambda x, w, h: upscale(x, w, h, downscale_method, "disabled"),
                           lambda x, w, h: upscale(x, w, h, upscale_method, "disabled"))
    patch.resizes_skips = True  # a ControlNet's residuals cannot follow (guiders.ModelRun refuses)
    return (replace(model, network_patches=model.network_patches + (patch,)),)


register(NodeDef(
    "PatchModelAddDownscale", patch_model_add_downscale,
    {"model": ("MODEL", {}), "block_number": ("INT", {"default": 3, "min": 1, "max": 32, "step": 1}),
     "downscale_factor": ("FLOAT", {"default": 2.0, "min": 0.1, "max": 9.0, "step": 0.001}),
     "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
     "end_percent": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.001}),
     "downscale_after_skip": ("BOOLEAN", {"default": True}),
     "downscale_method": (SHRINK_METHODS, {}), "upscale_method": (SHRINK_METHODS, {})},
    ("MODEL",), category="model_patches/unet", display_name="PatchModelAddDownscale (Kohya Deep Shrink)",
    module="comfy_extras.nodes_model_downscale"))
