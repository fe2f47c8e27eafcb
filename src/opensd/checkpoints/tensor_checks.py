"""What a tensor's name and shape may be, for every container we read.

Names reach logs, error messages, key maps and other tools' file layouts; a name with control
characters (NUL, terminal escapes, bidi overrides, lone surrogates) or a path separator has no
place in a real checkpoint and is how a file would try to fool one of them.  A dimension is
bounded so that an empty tensor cannot claim a size that code sizing buffers from shapes (a
position table, a vocabulary) would then try to allocate.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

MAX_NAME = 1000
# 2**32 elements along one axis is far past any real weight (SDXL's largest is 1280 x 49408).
MAX_DIM = 2**32


def _shown(name: str) -> str:
    return repr(name if len(name) <= 60 else name[:60] + "...")


def check_tensor(path: Path, name: str, shape) -> None:
    """CheckpointError naming the file unless `name` is plain printable text and `shape` sane."""
    if not name:
        raise CheckpointError(path, "a tensor name is empty")
    if len(name) > MAX_NAME:
        raise CheckpointError(path, f"a tensor name of {len(name)} characters (starting {_shown(name)}); "
                                    f"real names are under {MAX_NAME}")
    if not name.isprintable():
        raise CheckpointError(path, f"tensor name {_shown(name)} contains a control character; "
                                    "the file is damaged or crafted")
    if "/" in name or "\\" in name:
        raise CheckpointError(path, f"tensor name {_shown(name)} contains a path separator; "
                                    "the file is damaged or crafted")
    big = next((d for d in shape if d > MAX_DIM), None)
    if big is not None:
        raise CheckpointError(path, f"tensor {_shown(name)}: a dimension of {big} is larger than any "
                                    "real weight; the file is damaged or crafted")
