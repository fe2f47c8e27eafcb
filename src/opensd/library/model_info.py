"""What a checkpoint is, read from its safetensors header alone (no weights loaded): family,
native resolution and prediction, for pickers that set sizes before a model is loaded. Other
formats (pickles, diffusers folders) say nothing until they are loaded. Answers are cached by
path, size and modification time."""
from __future__ import annotations

import logging
from pathlib import Path

from ..checkpoints.detect import detect
from ..checkpoints.files import read_safetensors_header, sniff_format
from ..errors import OpenSDError
from ..models.config import ModelConfig
from ..stamp_cache import by_stamp

log = logging.getLogger(__name__)


def _checkpoint_config(path: Path) -> ModelConfig | None:
    """The config `detect` finds in a safetensors checkpoint's header, or None if it cannot tell."""
    if path.is_file():
        try:
            if sniff_format(path) == "safetensors":
                entries, metadata = read_safetensors_header(path)
                return detect({k: tuple(v["shape"]) for k, v in entries.items()}, str(path), metadata)
        except OpenSDError as e:
            log.info("%s: family not detected from its header: %s", path, e)
    return None


checkpoint_config = by_stamp(_checkpoint_config)


def schedule_name(cfg) -> str | None:
    """How a detected checkpoint's noise levels run: "discrete" (1000 timesteps), "zero_terminal_snr"
    (those rescaled) or "edm" (continuous sigmas); None for an unknown model."""
    if cfg is None:
        return None
    if getattr(cfg, "edm", None) is not None:
        return "edm"
    return "zero_terminal_snr" if getattr(cfg, "zsnr", False) else "discrete"
