"""The A1111 refiner through the API: the request's `refiner_checkpoint` / `refiner_switch_at`, or
its always-on "Refiner" script's args [enabled, checkpoint, switch_at] (A1111's script takes
precedence, as its setup() sets the fields), with the `hires_fix_refiner_pass` setting. Planned
before queueing (an unknown checkpoint is a 422, as A1111 fails on it) and loaded by the job, held
in the model cache beside the main model (pipeline/refiner.py does the switching). The other model
a job may run beside the main one, the hires fix's own checkpoint (`hr_checkpoint_name`), is
planned and loaded the same way."""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgument
from ..pipeline.refiner import Refiner

_OFF = (None, "", "None", "none")
_SAME_CHECKPOINT = (None, "", "Use same checkpoint")  # A1111's "off" values of hr_checkpoint_name
DEFAULT_SWITCH = 0.8  # A1111's slider default, what its script passes when the request gives none


def _script_args(req) -> list | None:
    for name, value in (req.alwayson_scripts or {}).items():
        if name.lower() == "refiner":
            args = value.get("args") if isinstance(value, dict) else None
            if not isinstance(args, list):
                raise InvalidArgument("alwayson_scripts.Refiner.args: expected [enabled, checkpoint, switch_at]")
            return args
    return None


def _requested(req) -> tuple:
    """(checkpoint, switch_at, the field naming the checkpoint) as the request sets them."""
    checkpoint, switch, field = req.refiner_checkpoint, req.refiner_switch_at, "refiner_checkpoint"
    args = _script_args(req)
    if args is not None:
        enabled = bool(args[0]) if args else False
        checkpoint = args[1] if enabled and len(args) > 1 else None
        switch = args[2] if enabled and len(args) > 2 else switch
        field = "alwayson_scripts.Refiner.args[1]"
    return checkpoint, switch, field


def _planned(path, switch, opts: dict) -> dict:
    made = Refiner(None, DEFAULT_SWITCH if switch is None else switch, opts["hires_fix_refiner_pass"])
    made.check_settings()
    return {"path": str(path), "switch_at": float(made.switch_at), "hires_pass": made.hires_pass}


def plan(req, opts: dict, cache) -> dict | None:
    """The job's refiner as plain JSON ({path, switch_at, hires_pass}), or None."""
    checkpoint, switch, field = _requested(req)
    if checkpoint in _OFF:
        return None
    return _planned(cache.resolve(checkpoint, field), switch, opts)


def for_cell(req, opts: dict, planned: dict | None, checkpoint: str | None, switch: float | None) -> dict | None:
    """A script cell's refiner: the job's `planned` one with an X/Y/Z plot's Refiner checkpoint (a
    path; "None": none) and Refiner switch at (None: as planned), as A1111's axes set
    p.refiner_checkpoint / p.refiner_switch_at; a switch without any refiner changes nothing."""
    if checkpoint == "None":
        return None
    if checkpoint is not None:
        planned = _planned(checkpoint, planned["switch_at"] if planned else _requested(req)[1], opts)
    if planned is None or switch is None:
        return planned
    return dict(planned, switch_at=float(switch))


def hires_checkpoint(req, img2img: bool, cache) -> str | None:
    """The path of the checkpoint a txt2img hires pass runs on (`hr_checkpoint_name`), or None for
    the main model; planned before queueing, as A1111 fails on a checkpoint it lacks."""
    name = getattr(req, "hr_checkpoint_name", None)
    if img2img or not req.enable_hr or name in _SAME_CHECKPOINT:
        return None
    return str(cache.resolve(name, "hr_checkpoint_name"))


def load_hires(state, path: str | None, main: tuple[Path, Path | None]):
    """The planned hires checkpoint's pipeline (with the main model's VAE, as A1111's sd_vae setting
    applies to whichever checkpoint is loaded), the main model kept in the cache beside it."""
    return None if path is None else state.cache.get(Path(path), main[1], keep=(main,))


def load(state, spec: dict | None, main: tuple[Path, Path | None]) -> Refiner | None:
    """The planned refiner with its pipeline, the main model's kept in the cache beside it."""
    if not spec:
        return None
    pipe = state.cache.get(Path(spec["path"]), keep=(main,))
    return Refiner(pipe, spec["switch_at"], spec["hires_pass"])
