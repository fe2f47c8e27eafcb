"""How a checkpoint says what it predicts and on which noise schedule, when shapes cannot: marker
tensors the ecosystem adds to the state dict (the keys ComfyUI reads and its checkpoint saver
writes), and our own metadata keys that carry the same in a file we wrote.

* "v_pred": v-prediction (NoobAI-XL v-pred, Illustrious v-pred); with "ztsnr" besides it the
  1000-step schedule is rescaled to zero terminal SNR.
* "edm_vpred.sigma_max" (and optionally "edm_vpred.sigma_min"), scalars: continuous-time EDM
  v-prediction between those sigmas (CosXL, CosXL Edit).
* "edm_mean" / "edm_std": Playground v2.5: continuous EDM with the denoiser output F ("edm"
  prediction), sigma_data 0.5, sigmas 0.002..80, and its latents normalised per channel with these
  statistics (scale 0.5), as ComfyUI's SDXL_Playground_2_5 latent format.

Only the two sigma values need tensor data (Playground's statistics are the published ones, as
ComfyUI and diffusers take them, whatever precision the file stores them in); `marker_metadata` copies them into metadata entries
before detection, which otherwise works on shapes alone (a safetensors header is enough to tell
the kind, and the default bounds stand in for unread values)."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Mapping

from ..errors import CheckpointError
from ..models import config as C

V_PRED = "v_pred"
ZTSNR = "ztsnr"
EDM_SIGMA_MAX = "edm_vpred.sigma_max"
EDM_SIGMA_MIN = "edm_vpred.sigma_min"
PLAYGROUND = ("edm_mean", "edm_std")
KEYS = (V_PRED, ZTSNR, EDM_SIGMA_MAX, EDM_SIGMA_MIN, *PLAYGROUND)  # not weights of any module

# Our metadata keys for the same facts (files we write, and the sigma values read from the tensors).
META_ZSNR = "opensd.zero_terminal_snr"
META_EDM_MIN = "opensd.edm_sigma_min"
META_EDM_MAX = "opensd.edm_sigma_max"
META_EDM_DATA = "opensd.edm_sigma_data"
META_LATENTS_MEAN = "opensd.vae_latents_mean"  # comma-separated, one value per latent channel
META_LATENTS_STD = "opensd.vae_latents_std"

# Playground v2.5 (ComfyUI's SDXL_Playground_2_5 and its EDM model type; diffusers' folder says the same).
PLAYGROUND_EDM = C.ContinuousEDM(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)
PLAYGROUND_SCALING = 0.5
PLAYGROUND_MEAN = (-1.6574, 1.886, -1.383, 2.5155)
PLAYGROUND_STD = (8.4927, 5.9022, 6.5498, 5.2299)


def marker_metadata(sd: Mapping) -> dict[str, str]:
    """The EDM sigma bounds the state dict's marker tensors hold, as metadata entries."""
    out = {}
    for key, meta in ((EDM_SIGMA_MAX, META_EDM_MAX), (EDM_SIGMA_MIN, META_EDM_MIN)):
        t = sd.get(key)
        if t is not None and t.numel() == 1:
            out[meta] = repr(float(t.float().item()))
    return out


def _floats(values) -> str:
    return ",".join(repr(float(v)) for v in values)


def marker_prediction(shapes: Mapping) -> C.Prediction | None:
    """What the markers say the network predicts, else None (the file does not say)."""
    if all(k in shapes for k in PLAYGROUND):
        return "edm"
    return "v" if V_PRED in shapes or EDM_SIGMA_MAX in shapes else None


def with_sampling(cfg: C.ModelConfig, shapes: Mapping, metadata: Mapping[str, str], path: str) -> C.ModelConfig:
    """`cfg` with the schedule its markers (or our metadata) name: zero terminal SNR, or continuous
    EDM and its bounds, and the latent statistics of Playground v2.5. The prediction is the caller's
    to settle (marker_prediction first)."""
    playground = all(k in shapes for k in PLAYGROUND)
    if playground or META_LATENTS_MEAN in metadata:
        cfg = replace(cfg, vae=_latent_stats(cfg, metadata, path, playground))
    if ZTSNR in shapes or str(metadata.get(META_ZSNR, "")).lower() == "true":
        cfg = replace(cfg, zsnr=True)
    if EDM_SIGMA_MAX in shapes or META_EDM_MAX in metadata or playground:
        cfg = replace(cfg, edm=_edm_bounds(metadata, path, PLAYGROUND_EDM if playground else C.ContinuousEDM()))
    return cfg


def _latent_stats(cfg: C.ModelConfig, metadata: Mapping[str, str], path: str, playground: bool) -> C.VAEConfig:
    """The VAE config with the per-channel statistics (Playground's published ones, or our metadata's)."""
    try:
        mean = tuple(float(v) for v in metadata[META_LATENTS_MEAN].split(",")) if META_LATENTS_MEAN in metadata else PLAYGROUND_MEAN
        std = tuple(float(v) for v in metadata[META_LATENTS_STD].split(",")) if META_LATENTS_STD in metadata else PLAYGROUND_STD
    except ValueError:
        raise CheckpointError(path, "latent statistics (edm_mean/edm_std) are not numbers") from None
    channels = cfg.vae.embed_dim
    if len(mean) != channels or len(std) != channels:
        raise CheckpointError(path, f"latent statistics have {len(mean)} means and {len(std)} deviations for "
                                    f"{channels} latent channels")
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise CheckpointError(path, "latent statistics must be finite, with positive deviations")
    vae = replace(cfg.vae, latents_mean=mean, latents_std=std)
    return replace(vae, scaling_factor=PLAYGROUND_SCALING) if playground else vae


def _edm_bounds(metadata: Mapping[str, str], path: str, default: C.ContinuousEDM) -> C.ContinuousEDM:
    try:
        lo = float(metadata.get(META_EDM_MIN, default.sigma_min))
        hi = float(metadata.get(META_EDM_MAX, default.sigma_max))
        data = float(metadata.get(META_EDM_DATA, default.sigma_data))
    except ValueError:
        raise CheckpointError(path, "EDM sigma bounds in its metadata are not numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise CheckpointError(path, f"EDM sigma bounds {lo}..{hi}: need 0 < sigma_min < sigma_max")
    if not (math.isfinite(data) and data > 0):
        raise CheckpointError(path, f"EDM sigma_data {data}: must be positive")
    return C.ContinuousEDM(sigma_min=lo, sigma_max=hi, sigma_data=data)


def metadata_of(cfg: C.ModelConfig) -> dict[str, str]:
    """The metadata entries that carry `cfg`'s schedule in a file we write (see with_sampling)."""
    out = {META_ZSNR: "true"} if cfg.zsnr else {}
    if cfg.edm is not None:
        out |= edm_metadata(cfg.edm)
    return out | latent_stats_metadata(cfg.vae)


def edm_metadata(edm: C.ContinuousEDM) -> dict[str, str]:
    return {META_EDM_MIN: repr(edm.sigma_min), META_EDM_MAX: repr(edm.sigma_max), META_EDM_DATA: repr(edm.sigma_data)}


def latent_stats_metadata(vae: C.VAEConfig) -> dict[str, str]:
    if not vae.latents_mean:
        return {}
    return {META_LATENTS_MEAN: _floats(vae.latents_mean), META_LATENTS_STD: _floats(vae.latents_std)}
