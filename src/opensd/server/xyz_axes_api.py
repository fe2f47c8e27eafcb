"""GET /opensd/v1/xyz-axes: the X/Y/Z plot's axis types for each mode, from the scripts package's own
table (scripts/xyz_axes.py, so `index` is what `x_type` takes, as in A1111), each with its value
choices where A1111's UI offers a dropdown (the names this server has: samplers, checkpoints, styles...).
The web UI builds its X/Y/Z form from it; A1111's API has no route that lists the axes."""
from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from pydantic import BaseModel, Field

from ..errors import InvalidArgument
from ..library.network_models import whole_models
from ..sampling.names import SAMPLER_LABELS, SCHEDULER_LABELS
from ..scripts.xyz_axes import RNG_SOURCES, AxisType, axis_types
from ..upscale.names import LATENT_MODES
from .opensd_api import PREFIX


class AxisInfo(BaseModel):
    index: int = Field(description="the axis as script_args' x_type/y_type/z_type take it (A1111's index)")
    label: str
    kind: str = Field(description="how values are read: int, float (both take ranges such as 1-5 [3]), "
                                  "text, order (the words of the prompt, every order)")
    available: bool
    reason: str = Field("", description="why an unavailable axis does nothing here")
    choices: list[str] | None = Field(None, description="the values to pick from (script_args' *_values_dropdown "
                                                        "takes a list of them); null for typed values")


class XyzAxes(BaseModel):
    txt2img: list[AxisInfo]
    img2img: list[AxisInfo]


def choice_lists(state) -> dict[str, Callable[[], list[str]]]:
    """Axis label -> the names its dropdown offers (what the axis accepts here)."""
    def checkpoints():
        return [m.name for m in whole_models(state.folders)]

    def samplers():
        return list(SAMPLER_LABELS.values())

    def styles():
        try:
            return list(state.styles())
        except InvalidArgument:  # a damaged styles file: typed values still reach the axis, which names it
            return []

    return {
        "Sampler": samplers, "Hires sampler": samplers, "Checkpoint name": checkpoints,
        "Refiner checkpoint": lambda: ["None", *checkpoints()],
        "Schedule type": lambda: list(SCHEDULER_LABELS.values()),
        "Hires upscaler": lambda: [*LATENT_MODES, *state.cache.upscalers.names()],
        "VAE": lambda: ["Automatic", "None", *(m.name for m in state.folders.list("vae"))],
        "Styles": styles, "RNG source": lambda: list(RNG_SOURCES),
        "Always discard next-to-last sigma": lambda: ["True", "False"],  # A1111's boolean_choice(reverse=True)
        "SGM noise multiplier": lambda: ["True", "False"],
    }


def _info(index: int, axis: AxisType, lists: dict) -> AxisInfo:
    lister = lists.get(axis.label) if axis.choices and not axis.missing else None
    return AxisInfo(index=index, label=axis.label, kind=axis.kind, available=not axis.missing, reason=axis.missing,
                    choices=lister() if lister else None)


def router(state) -> APIRouter:
    api = APIRouter(prefix=PREFIX, tags=["opensd"])

    @api.get("/xyz-axes")
    def xyz_axes() -> XyzAxes:
        """The X/Y/Z plot's axis types per mode, in A1111's order, with their dropdown choices."""
        lists = choice_lists(state)
        return XyzAxes(**{mode: [_info(i, a, lists) for i, a in enumerate(axis_types(mode == "img2img"))]
                          for mode in ("txt2img", "img2img")})

    return api
