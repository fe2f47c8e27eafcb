"""What a model file is, read from its safetensors or GGUF header alone (no weights loaded): family,
native resolution, prediction and the settings its family recommends, for pickers that set sizes
and settings before a model is loaded. Other formats (pickles, diffusers folders) say nothing until
they are loaded. Answers are cached by path, size and modification time."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from .. import families
from ..checkpoints.files import read_safetensors_header, sniff_format
from ..checkpoints.gguf_files import gguf_shapes
from ..checkpoints.reader import fix_vae
from ..errors import OpenSDError
from ..stamp_cache import by_stamp

log = logging.getLogger(__name__)


def _header_model(path: Path):
    """(family, config, state dict of meta tensors) of the model file at `path`, detected as the
    loader detects a file (pipeline/loader.py read_model) on tensors without data; None when its
    header does not tell (a pickle, a folder, a file of no family we run)."""
    try:
        if not path.is_file():
            return None
        if path.suffix.lower() == ".gguf":
            shapes, metadata = gguf_shapes(path)
        elif sniff_format(path) == "safetensors":
            entries, metadata = read_safetensors_header(path)
            shapes = {k: tuple(v["shape"]) for k, v in entries.items()}
        else:
            return None  # a pickle is only read by loading it
        sd = fix_vae({k: torch.empty(s, device="meta") for k, s in shapes.items()})
        family, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, metadata, str(path))
        return family, cfg, sd
    except (OpenSDError, OSError, ValueError, RuntimeError) as e:
        log.info("%s: family not detected from its header: %s", path, e)
        return None


header_model = by_stamp(_header_model)


def model_config(path: Path):
    """The model config of the file at `path` (any family), from its header, or None if it cannot tell."""
    found = header_model(path)
    return found[1] if found else None


def checkpoint_config(path: Path):
    """`model_config` of a Stable Diffusion (UNet) checkpoint, None for other models (merging and
    training read these)."""
    found = header_model(path)
    return found[1] if found and found[0] is families.UNET else None


def family_defaults(path: Path) -> dict[str, float | int]:
    """What the family of the model at `path` sets for a generation's unset settings ("cfg",
    "steps", "distilled_guidance": Family.defaults); {} where it sets none or the header does not tell."""
    found = header_model(path)
    return found[0].defaults(found[1]) if found else {}


def recommended(path: Path) -> dict | None:
    """What the family of the model at `path` recommends generating it with (its unset defaults,
    A1111's where it sets none): cfg_scale, steps, distilled_guidance where the network takes one,
    scheduler where the family has its own; plus the family's label. None for an unknown model."""
    from ..pipeline.params import Params  # the pipeline's defaults where the family sets none

    found = header_model(path)
    if found is None:
        return None
    family, given = found[0], family_defaults(path)
    out = {"label": family.label, "cfg_scale": given.get("cfg", Params.cfg), "steps": given.get("steps", Params.steps)}
    if "distilled_guidance" in given:
        out["distilled_guidance"] = given["distilled_guidance"]
    if family.default_scheduler is not None:
        out["scheduler"] = family.default_scheduler
    return out


def takes_references(path: Path) -> bool | None:
    """Whether the model at `path` edits with reference images (its family's flag); None when its
    header does not tell."""
    found = header_model(path)
    return families.takes_references(found[0]) if found else None


def reference_limit(path: Path) -> int | None:
    """How many reference images the model at `path` takes by its family (Qwen-Image-Edit: one); None
    when its family sets no limit, takes none, or its header does not tell."""
    found = header_model(path)
    limit = getattr(found[0], "reference_limit", None) if found else None
    return None if limit is None else limit(found[1])


def check_reference_count(path: Path, count: int) -> None:
    """The family's refusal of `count` reference images for the model at `path` (pipeline/kontext.py
    asks the same on loading); nothing when the header does not tell."""
    found = header_model(path)
    check = getattr(found[0], "check_references", None) if found else None
    if check is not None:
        check(found[1], count)


def schedule_name(cfg) -> str | None:
    """How a detected checkpoint's noise levels run: "discrete" (1000 timesteps), "zero_terminal_snr"
    (those rescaled), "edm" (continuous sigmas) or "flow" (rectified flow, the DiT models); None for an unknown model."""
    if cfg is None:
        return None
    if cfg.prediction == "flow":
        return "flow"
    if getattr(cfg, "edm", None) is not None:
        return "edm"
    return "zero_terminal_snr" if getattr(cfg, "zsnr", False) else "discrete"
