"""The GPU memory modes' names (pipeline/offload.py does them), torch-free for the CLI and settings.

medvram-sdxl is A1111's --medvram-sdxl: medvram for SDXL models, auto for the others."""
from __future__ import annotations

from ..errors import InvalidArgument

MODES = ("auto", "normal", "medvram", "lowvram", "medvram-sdxl")
A1111_FLAGS = ("medvram", "lowvram", "medvram-sdxl")  # `opensd serve --medvram` etc., as A1111 spells them


def check(mode: str, field: str = "memory") -> str:
    if mode not in MODES:
        raise InvalidArgument(f"{field}: {mode!r} is not one of {', '.join(MODES)}")
    return mode
