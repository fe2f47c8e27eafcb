"""Upscaler names as A1111 spells them: the classic resamplers, the hires fix's latent modes, and how
a model upscaler is named (its file name without the extension)."""
from __future__ import annotations

from pathlib import PurePath

from ..library.models_dir import WEIGHT_SUFFIXES

NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
CLASSIC = (NONE, LANCZOS, NEAREST)

# A1111's latent upscale modes: name -> (torch interpolate mode, antialias)
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}

_KNOWN = {n.lower(): n for n in (*CLASSIC, *LATENT_MODES)}


def known(name: str) -> str | None:
    """The A1111 spelling of a classic or latent upscaler name (any case), else None."""
    return _KNOWN.get(name.strip().lower()) if isinstance(name, str) else None


def latent_mode(name: str) -> tuple[str, bool] | None:
    """(interpolate mode, antialias) for a latent upscale mode name, else None."""
    return LATENT_MODES.get(known(name) or "")


def model_name(file_name: str) -> str:
    """How A1111 names an upscaler model: its file name without folder or extension."""
    return PurePath(file_name.replace("\\", "/")).stem


def label(name: str) -> str:
    """The name an infotext records: A1111's spelling, or a model's name (a path given on the
    command line is recorded by its file name, so the image reproduces with a models folder)."""
    spelled = known(name)
    if spelled:
        return spelled
    if "/" in name or "\\" in name or PurePath(name).suffix.lower() in WEIGHT_SUFFIXES:
        return model_name(name)
    return name
