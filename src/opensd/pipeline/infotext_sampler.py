"""Sampler options in the infotext: written under A1111's keys where A1111 has them ("Eta", "Eta DDIM",
"Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise", "UniPC order", ...), the others under
their own names ("max_order", "rtol", ...), and read back for `opensd generate --from`.

A1111 writes an option only when it differs from A1111's default, and so do we. The defaults are
the sampler functions' (k-diffusion's), except eta for DPM fast and DPM adaptive: A1111 gives every
k-diffusion sampler that takes eta its "eta_ancestral" setting, 1, where k-diffusion's default is 0.
So an image without "Eta" made by DPM fast means eta 1 (A1111's run), and ours at eta 0 says
"Eta: 0".
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import InvalidArgument
from ..sampling.samplers import sampler_options

_KEYS = {"eta": "Eta", "s_churn": "Sigma churn", "s_tmin": "Sigma tmin", "s_tmax": "Sigma tmax",
         "s_noise": "Sigma noise"}
_UNIPC_KEYS = {"order": "UniPC order", "variant": "UniPC variant", "lower_order_final": "UniPC lower order final"}
A1111_ETA = {"dpm_fast": 1.0, "dpm_adaptive": 1.0}  # where A1111's default eta is not the function's


def option_key(sampler: str, name: str) -> str:
    if name == "eta" and sampler == "ddim":
        return "Eta DDIM"
    if sampler == "uni_pc" and name in _UNIPC_KEYS:
        return _UNIPC_KEYS[name]
    return _KEYS.get(name, name)


def defaults(sampler: str) -> dict[str, Any]:
    """The options `sampler` takes, with the defaults an infotext leaves unsaid."""
    taken = sampler_options(sampler)
    if sampler in A1111_ETA:
        taken["eta"] = A1111_ETA[sampler]
    return taken


def written(sampler: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """{infotext key: value} for the options `sampler` runs with that differ from those defaults."""
    plain = sampler_options(sampler)
    used = {**plain, **{k: v for k, v in options.items() if k in plain}}
    return {option_key(sampler, k): v for k, v in used.items() if v != defaults(sampler)[k]}


def read(sampler: str, params: Mapping[str, str], where: str = "from") -> dict[str, Any]:
    """The options an infotext's keys give `sampler` (the unsaid ones at A1111's defaults, when
    those are not the function's)."""
    plain = sampler_options(sampler)
    out = {k: v for k, v in defaults(sampler).items() if v != plain[k]}
    for name, default in plain.items():
        key = option_key(sampler, name)
        if key in params:
            out[name] = _parse(params[key], default, f"{where}: {key}")
    return out


def _parse(text: str, default: Any, what: str) -> Any:
    try:
        if isinstance(default, bool):
            if text not in ("True", "False"):
                raise ValueError
            return text == "True"
        if isinstance(default, int):
            return int(text)
        return float(text) if isinstance(default, float) else text
    except ValueError:
        raise InvalidArgument(f"{what}: {text!r} is not a valid value") from None
