"""The rectified-flow training loss of the DiT families (Flux.1, FLUX.2, SD3/3.5, Z-Image, Qwen-Image), as kohya's
sd-scripts/musubi-tuner and diffusers' flow-matching trainers compute it:

    x_t = (1 - t) x0 + t noise,   target = noise - x0 (the velocity),   loss = MSE(prediction, target)

x0 is the model latent exactly as our sampling sees it (the pipeline's VAE encode: shift/scale or
FLUX.2's 2x2 patches and batch-norm statistics), the prediction is the family's own `net_fn` at the
network time the family's sampling feeds for sigma t (`FlowSampling.timestep`: SD3 t * 1000, the
others t; Z-Image's net_fn turns the network's 1 - t and minus velocity into ours), so training and
sampling share one convention. Flux.1 [dev] sees guidance 1.0 (kohya's `--guidance_scale 1.0`).

Time t: u ~ N(0, 1), t = sigmoid(u) shifted by s (t' = s t / (1 + (s - 1) t)), one default per family:

* Flux.1: kohya sd-scripts' recommended `--timestep_sampling shift --discrete_flow_shift 3.1582`;
* FLUX.2: musubi-tuner's `flux2_shift`, s = exp(mu), mu linear in the latent cells h * w
  (0.5 at 256, 1.15 at 4096: our `flux_mu`);
* SD3/3.5: diffusers' train_dreambooth_lora_sd3 default (`--weighting_scheme logit_normal`, mean 0,
  std 1, on its scheduler's shift-3.0 sigmas): s = the model's shift;
* Z-Image: musubi-tuner's `shift` sampling at the model's own shift (Turbo's scheduler: 3.0);
* Qwen-Image: musubi-tuner's `qwen_shift` (its documented choice), s = exp(mu), mu linear in the
  image's tokens (0.5 at 256, 0.9 at 8192: the pipeline's own dynamic shift).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument
from ..sampling.flow import flux_mu, sd3_shift

KOHYA_FLUX_SHIFT = 3.1582  # sd-scripts' README command for Flux.1 LoRAs: --discrete_flow_shift 3.1582
FLUX_TRAIN_GUIDANCE = 1.0  # sd-scripts' --guidance_scale for training Flux.1 [dev]
SAMPLING_NAMES = {"flux": "shift", "flux2": "flux2_shift", "sd3": "logit_normal", "z_image": "shift",
                  "qwen_image": "qwen_shift"}


def training_shift(family: str, model_shift: float | None, latent_hw: tuple[int, int]) -> float:
    """The shift s of the family's default time sampling for latents of `latent_hw` (model latent cells)."""
    if family == "flux":
        return KOHYA_FLUX_SHIFT
    if family == "flux2":
        h, w = latent_hw
        return math.exp(flux_mu(h * w))
    if family in ("sd3", "z_image"):
        return float(model_shift)
    if family == "qwen_image":  # its 16-channel latent's 2x2 patches are the tokens
        h, w = latent_hw
        return math.exp(flux_mu((h // 2) * (w // 2), 0.5, 0.9, 256, 8192))
    raise InvalidArgument(f"model: LoRA training has no time sampling for {family!r} models")


def draw_sigmas(n: int, shift: float, g: torch.Generator) -> torch.Tensor:
    """n times in (0, 1): sigmoid of a standard normal, shifted by `shift`."""
    return sd3_shift(shift, torch.sigmoid(torch.randn(n, generator=g, dtype=torch.float64))).float()


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x0.dim() - 1))).to(x0)
    return (1 - s) * x0 + s * noise


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def flow_loss(net, multiplier: float, batch: dict) -> torch.Tensor:
    """MSE between `net(x_t, t * multiplier, context, y)` and noise - x0, per row then averaged (times
    the batch's data-parallel weight). `batch`: x0, noise, sigma, context, y."""
    x0, noise, sigma = batch["x0"], batch["noise"], batch["sigma"]
    pred = net(noised(x0, noise, sigma), sigma * multiplier, batch["context"], batch["y"]).float()
    per = F.mse_loss(pred, velocity(x0, noise), reduction="none").flatten(1).mean(dim=1)
    return per.mean() * batch.get("weight", 1.0)
