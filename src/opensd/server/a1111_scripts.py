"""A1111 scripts: what `script_name` and `alwayson_scripts` may name, and what /sdapi/v1/scripts
and /sdapi/v1/script-info list.

A1111 has two kinds. A selectable script (X/Y/Z plot, prompt matrix, ...) takes over a request
named by `script_name`, with `script_args`; an always-on script (ControlNet, ...) runs beside every
request that lists it in `alwayson_scripts`. Names match A1111's titles without regard to case.
A name A1111 would not find is refused as A1111 refuses it: 422, "Script 'name' not found", in
A1111's error body.

Add a script with `register(Script(...))`. A selectable script's `run(state, job, ctl)` replaces
the plain generation of its job (same contract as a job runner: returns (stored result, live
value)); it finds its arguments in the job's request ("script_args"). Its `prepare` checks them
when the request arrives. An always-on script is handled where its arguments are read (ControlNet:
a1111_controlnet). A1111's own selectable scripts are in a1111_script_runs.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi.responses import JSONResponse

from ..errors import OpenSDError
from .a1111_soft_inpaint import SCRIPT_ARGS as _SOFT_INPAINTING_ARGS
from .a1111_unsupported import A1111_ALWAYSON


@dataclass(frozen=True)
class Script:
    title: str                                    # A1111's title ("X/Y/Z plot"); its name is the lower case
    alwayson: bool
    modes: tuple[str, ...] = ("txt2img", "img2img")
    args: tuple[dict, ...] = ()                   # /script-info's ScriptArg entries
    run: Callable | None = field(default=None, compare=False)  # selectable scripts only
    # prepare(state, req, payload) -> payload: checks the script's arguments before the job is queued
    # (422 naming the bad one) and the work its generations add up to (work_budget), and sets
    # payload["images"] to how many images the job saves; None: the request's own work is checked
    prepare: Callable | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.title.lower()

    def info(self, mode: str) -> dict:
        return {"name": self.name, "is_alwayson": self.alwayson, "is_img2img": mode == "img2img",
                "args": list(self.args)}


class ScriptError(OpenSDError):
    """A request names a script as A1111 would not accept it; answered with A1111's 422 body."""

    def response(self) -> JSONResponse:
        detail = str(self)
        return JSONResponse({"error": "HTTPException", "detail": detail, "body": "", "errors": f"422: {detail}"},
                            status_code=422)


# A1111's always-on "Refiner" script: [enabled, checkpoint, switch_at] (read in a1111_refiner)
_REFINER_ARGS = ({"label": "Refiner", "value": False, "minimum": None, "maximum": None, "step": None, "choices": None},
                 {"label": "Checkpoint", "value": "", "minimum": None, "maximum": None, "step": None, "choices": None},
                 {"label": "Switch at", "value": 0.8, "minimum": 0.01, "maximum": 1.0, "step": 0.01, "choices": None})
# Hypertile (built-in extension) takes no arguments: its settings (hypertile_*) drive it, a1111_apply.
SCRIPTS: list[Script] = [Script("ControlNet", alwayson=True), Script("Refiner", alwayson=True, args=_REFINER_ARGS),
                         Script("Hypertile", alwayson=True),
                         Script("Soft Inpainting", alwayson=True, modes=("img2img",), args=_SOFT_INPAINTING_ARGS)]


def register(script: Script) -> None:
    if any(s.name == script.name for s in SCRIPTS):
        raise ValueError(f"a script named {script.name!r} is already registered")
    SCRIPTS.append(script)


def listing() -> dict:
    """GET /sdapi/v1/scripts."""
    return {mode: [s.name for s in SCRIPTS if mode in s.modes] for mode in ("txt2img", "img2img")}


def script_info() -> list[dict]:
    """GET /sdapi/v1/script-info: one entry per script and mode, as A1111 lists them."""
    return [s.info(mode) for mode in ("txt2img", "img2img") for s in SCRIPTS if mode in s.modes]


def find(name: str, mode: str) -> Script:
    for s in SCRIPTS:
        if mode in s.modes and s.name == name.lower():
            return s
    raise ScriptError(f"Script '{name}' not found")


def selected(req, mode: str) -> Script | None:
    """The selectable script `script_name` names (None for none); checks `alwayson_scripts` too,
    in A1111's order: the selectable script first."""
    script = None
    if req.script_name:
        script = find(req.script_name, mode)
        if script.alwayson:  # A1111 looks script_name up among the selectable scripts only
            raise ScriptError(f"Script '{req.script_name}' not found")
    for name in req.alwayson_scripts or {}:
        if name.lower() in A1111_ALWAYSON:
            continue  # A1111 has it; a1111_unsupported reports it as not applied
        if find(name, mode).alwayson is False:
            raise ScriptError("Cannot have a selectable script in the always on scripts params")
    return script
