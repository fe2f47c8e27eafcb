"""How a checkpoint says what it predicts and on which noise schedule, when shapes cannot: marker
tensors the ecosystem adds to the state dict (the keys ComfyUI reads and its checkpoint saver
writes), and our own metadata keys that carry the same in a file we wrote.

* "v_pred": v-prediction (NoobAI-XL v-pred, Illustrious v-pred); with "ztsnr" besides it the
  1000-step schedule is rescaled to zero terminal SNR.
* "edm_vpred.sigma_max" (and optionally "edm_vpred.sigma_min"), scalars: continuous-time EDM
  v-prediction between those sigmas (CosXL, CosXL Edit).
* "edm_mean" / "edm_std": Playground v2.5's EDM model with its own latent statistics; recognised,
  not run (its latent format is not in our VAE configs yet), so loading it is refused clearly.

Only the two sigma values need tensor data; `marker_metadata` copies them into metadata entries
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


def marker_metadata(sd: Mapping) -> dict[str, str]:
    """The EDM sigma bounds the state dict's marker tensors hold, as metadata entries."""
    out = {}
    for key, meta in ((EDM_SIGMA_MAX, META_EDM_MAX), (EDM_SIGMA_MIN, META_EDM_MIN)):
        t = sd.get(key)
        if t is not None and t.numel() == 1:
            out[meta] = repr(float(t.float().item()))
    return out


def marker_prediction(shapes: Mapping) -> C.Prediction | None:
    """"v" when a marker says so, else None (the file does not say)."""
    return "v" if V_PRED in shapes or EDM_SIGMA_MAX in shapes else None


def with_sampling(cfg: C.ModelConfig, shapes: Mapping, metadata: Mapping[str, str], path: str) -> C.ModelConfig:
    """`cfg` with the schedule its markers (or our metadata) name: zero terminal SNR, or continuous
    EDM and its bounds. The prediction is the caller's to settle (marker_prediction first)."""
    if all(k in shapes for k in PLAYGROUND):
        raise CheckpointError(path, "is a Playground v2.5 model (edm_mean/edm_std markers): its EDM sampling "
                                    "and latent format are not supported yet")
    if ZTSNR in shapes or str(metadata.get(META_ZSNR, "")).lower() == "true":
        cfg = replace(cfg, zsnr=True)
    if EDM_SIGMA_MAX in shapes or META_EDM_MAX in metadata:
        cfg = replace(cfg, edm=_edm_bounds(metadata, path))
    return cfg


def _edm_bounds(metadata: Mapping[str, str], path: str) -> C.ContinuousEDM:
    default = C.ContinuousEDM()
    try:
        lo = float(metadata.get(META_EDM_MIN, default.sigma_min))
        hi = float(metadata.get(META_EDM_MAX, default.sigma_max))
    except ValueError:
        raise CheckpointError(path, "EDM sigma bounds in its metadata are not numbers") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise CheckpointError(path, f"EDM sigma bounds {lo}..{hi}: need 0 < sigma_min < sigma_max")
    return replace(default, sigma_min=lo, sigma_max=hi)


def metadata_of(cfg: C.ModelConfig) -> dict[str, str]:
    """The metadata entries that carry `cfg`'s schedule in a file we write (see with_sampling)."""
    out = {META_ZSNR: "true"} if cfg.zsnr else {}
    if cfg.edm is not None:
        out |= {META_EDM_MIN: repr(cfg.edm.sigma_min), META_EDM_MAX: repr(cfg.edm.sigma_max)}
    return out
