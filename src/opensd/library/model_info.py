"""What a checkpoint is, read from its safetensors header alone (no weights loaded): family,
native resolution and prediction, for pickers that set sizes before a model is loaded. Other
formats (pickles, diffusers folders) say nothing until they are loaded. Answers are cached by
path, size and modification time."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..checkpoints.detect import detect
from ..checkpoints.files import read_safetensors_header, sniff_format
from ..errors import OpenSDError
from ..models.config import ModelConfig

log = logging.getLogger(__name__)
_cache: dict[tuple[str, int, int], ModelConfig | None] = {}
_lock = threading.Lock()


def checkpoint_config(path: Path) -> ModelConfig | None:
    """The config `detect` finds in a safetensors checkpoint's header, or None if it cannot tell."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _cache:
            return _cache[key]
    cfg = None
    if path.is_file():
        try:
            if sniff_format(path) == "safetensors":
                entries, metadata = read_safetensors_header(path)
                cfg = detect({k: tuple(v["shape"]) for k, v in entries.items()}, str(path), metadata)
        except OpenSDError as e:
            log.info("%s: family not detected from its header: %s", path, e)
    with _lock:
        _cache[key] = cfg
    return cfg


def schedule_name(cfg) -> str | None:
    """How a detected checkpoint's noise levels run: "discrete" (1000 timesteps), "zero_terminal_snr"
    (those rescaled) or "edm" (continuous sigmas); None for an unknown model."""
    if cfg is None:
        return None
    if getattr(cfg, "edm", None) is not None:
        return "edm"
    return "zero_terminal_snr" if getattr(cfg, "zsnr", False) else "discrete"
