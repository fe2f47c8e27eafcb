"""Where `opensd generate` writes. The output is checked before any work; without -o, files are
numbered as A1111 numbers its outputs (00000-SEED.png, after the highest number in the folder)
and created exclusively, so no run replaces a file, also with several runs writing to one folder."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import InvalidArgument

DEFAULT_DIR = Path("outputs")
_NUMBER = re.compile(r"(\d{5,})-")


def check_output(path: Path | None) -> None:
    """An unsupported format, a folder given as the file, or a folder we cannot write fail now."""
    from ..pipeline.infotext import FORMATS

    folder = DEFAULT_DIR if path is None else path.parent
    if path is not None:
        if path.suffix.lower() not in FORMATS:
            raise InvalidArgument(f"output: {path.name!r} is not a supported format; "
                                  f"end it in {', '.join(FORMATS)}")
        if path.is_dir():
            raise InvalidArgument(f"output: {path} is a folder; give a file name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgument(f"output: cannot create the folder {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidArgument(f"output: the folder {folder} is not writable")


def numbered_output(folder: Path, seed: int, suffix: str = ".png") -> Path:
    """Reserve the next NNNNN-SEED name in ``folder`` by creating it exclusively (a name another
    run took first moves this one on to the next number)."""
    with os.scandir(folder) as entries:
        number = max((int(m.group(1)) for e in entries if (m := _NUMBER.match(e.name))), default=-1) + 1
    while True:
        path = folder / f"{number:05d}-{seed}{suffix}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return path
        except FileExistsError:
            number += 1
