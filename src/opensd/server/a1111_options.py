"""A1111's settings as this server keeps them (GET/POST /sdapi/v1/options, override_settings).

Every key of A1111's table (a1111_option_table) is reported with its value: the client's if one
was set, else A1111's default. A few defaults say what opensd does instead: output folders under
--outputs-dir, and "randn_source" "CPU" (opensd draws noise on the CPU, so a seed means the same
image on any device; A1111 calls that "CPU"). Setting a key A1111 does not have is refused, as A1111
refuses it (it fails with a KeyError); so is a value of the wrong type (A1111 only warns, then
misbehaves). Values set by clients are persisted atomically and read back at the next start.

What the settings mean here is decided where they are used (a1111_run, a1111_unsupported); this
module only keeps and checks them.
"""
from __future__ import annotations

import json
import logging
import math
import threading
from pathlib import Path

from ..atomic import write_atomic
from ..errors import InvalidArgument
from .a1111_option_table import CHOICES, DEFAULTS, RANGES

log = logging.getLogger(__name__)

# Recomputed for every view, never stored: the server decides them.
COMPUTED = ("sd_model_checkpoint", "sd_checkpoint_hash")
# Settings naming a file of the models folder, with the values that name none.
FILE_SETTINGS = {"sd_vae": ("vae", ("Automatic", "None")), "sd_lora": ("loras", ("None",)),
                 "sd_hypernetwork": ("hypernetworks", ("None",))}
OUTDIRS = {"outdir_txt2img_samples": "txt2img-images", "outdir_img2img_samples": "img2img-images",
           "outdir_extras_samples": "extras-images", "outdir_txt2img_grids": "txt2img-grids",
           "outdir_img2img_grids": "img2img-grids", "outdir_init_images": "init-images", "outdir_save": "log/images"}


class A1111Options:
    def __init__(self, path: Path, outputs_dir: Path, folders):
        self._path = path
        self._outputs = outputs_dir.resolve()
        self._folders = folders  # ModelFolders: sd_vae, sd_lora, sd_hypernetwork name files in it
        self.defaults = {**DEFAULTS, "randn_source": "CPU",
                         **{k: str(outputs_dir / sub) for k, sub in OUTDIRS.items()}}
        self._lock = threading.Lock()
        self._values = self._load()

    def view(self) -> dict:
        """Every setting with its current value (the model keys are the caller's to fill in)."""
        with self._lock:
            return {**self.defaults, **self._values}

    def saved_model(self) -> str | None:
        return self._values.get("sd_model_checkpoint")

    def effective(self, overrides: dict | None) -> dict:
        """The settings one request runs with: the current ones, then its override_settings."""
        changes = self.check(overrides or {}, "override_settings.")
        return {**self.view(), **changes}

    def update(self, changes: dict, model_name: str | None = None) -> None:
        """Check and keep `changes` (all or none); `model_name` is the checkpoint now selected."""
        checked = self.check(changes)
        with self._lock:
            self._values.update({k: v for k, v in checked.items() if k not in COMPUTED})
            if model_name is not None:
                self._values["sd_model_checkpoint"] = model_name
            write_atomic(self._path, json.dumps(self._values, indent=1, ensure_ascii=False))

    def check(self, changes: dict, where: str = "") -> dict:
        """`changes` with each value checked against its setting; InvalidArgument names the first
        bad key (prefixed by `where`, e.g. "override_settings.")."""
        if not isinstance(changes, dict):
            raise InvalidArgument(f"{where.rstrip('.') or 'body'}: expected an object of settings")
        for key, value in changes.items():
            if key == "sd_checkpoint_hash":
                continue  # informational (a client may send back what it read); never stored
            if key not in DEFAULTS:
                raise InvalidArgument(f"{where}{key}: not an AUTOMATIC1111 setting")
            problem = _problem(key, value) or self._name_problem(key, value) or self._folder_problem(key, value)
            if problem:
                raise InvalidArgument(f"{where}{key}: {problem}")
        return dict(changes)

    def _name_problem(self, key: str, value) -> str | None:
        if key not in FILE_SETTINGS or value in FILE_SETTINGS[key][1]:
            return None
        kind = FILE_SETTINGS[key][0]
        try:
            self._folders.resolve(kind, value)
        except InvalidArgument as e:
            return str(e).split(": ", 1)[-1]
        return None

    def _folder_problem(self, key: str, value) -> str | None:
        """Output folders stay inside --outputs-dir: a client may not make the server write elsewhere."""
        if not key.startswith("outdir_") or not value:
            return None
        try:
            Path(value).resolve().relative_to(self._outputs)
        except (ValueError, OSError):
            return f"{value!r} is not inside the outputs folder {str(self._outputs)!r} (opensd serve --outputs-dir)"
        return None

    def _load(self) -> dict:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            log.warning("%s: unreadable (%s); starting from A1111's defaults", self._path, e)
            return {}
        if not isinstance(data, dict):
            return {}
        kept = {}
        for key, value in data.items():  # a hand-edited or older file: keep what is still valid
            problem = "not an AUTOMATIC1111 setting" if key not in DEFAULTS else _problem(key, value)
            if problem and key != "sd_model_checkpoint":
                log.warning("%s: ignoring %s (%s)", self._path, key, problem)
            else:
                kept[key] = value
        return kept


def describe() -> dict[str, dict]:
    """What a settings form needs to know of each setting: its default, its kind ("bool", "int",
    "float", "choice", "text", "list") and, where it has them, the choices this server takes and
    the range of A1111's slider."""
    out = {}
    for key, default in DEFAULTS.items():
        kind = ("text" if default is None or isinstance(default, str) else "bool" if isinstance(default, bool)
                else "int" if isinstance(default, int) else "float" if isinstance(default, float) else "list")
        entry: dict = {"default": default, "kind": kind}
        if key in CHOICES:
            entry.update(kind="choice", choices=[c for c in CHOICES[key] if _problem(key, c) is None])
        if key in RANGES:  # an open end (inf) is left out: JSON has no infinity
            entry.update({k: v for k, v in zip(("min", "max"), RANGES[key]) if math.isfinite(v)})
        out[key] = entry
    return out


def _problem(key: str, value) -> str | None:
    """What is wrong with `value` for setting `key`, or None."""
    default = DEFAULTS[key]
    if default is None:
        ok, want = value is None or isinstance(value, str), "text or null"
    elif isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        want = "a finite number"
    elif isinstance(default, list):
        ok, want = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of text"
    else:
        ok, want = isinstance(value, str) and "\x00" not in value, "text"
    if not ok:
        return f"expected {want}, got {json.dumps(value)[:80]}"
    if key in CHOICES and value.lower() not in [c.lower() for c in CHOICES[key]]:
        return f"{value!r} is not one of {', '.join(CHOICES[key])}"
    if key == "randn_source" and value.upper() == "NV":
        return "'NV' (NVIDIA's random stream emulated on the CPU) is not implemented here; use CPU or GPU"
    if key == "uni_pc_variant" and value == "vary_coeff":
        return "'vary_coeff' is not implemented here; use bh1 or bh2"
    if key in RANGES and not RANGES[key][0] <= value <= RANGES[key][1]:
        return f"{value!r} is outside {RANGES[key][0]}..{RANGES[key][1]}"
    return None
