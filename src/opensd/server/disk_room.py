"""Room on disk for what a client asks the server to store (uploaded images and models, dataset
images, ComfyUI user files, merged and converted checkpoints). Each file has its own cap, but
nothing bounded how many a client could send: a loop of uploads filled the disk, and then SQLite,
the outputs and the OS failed together. Such a write is refused (HTTP 507) when it would leave less
than MIN_FREE_BYTES free on the disk it lands on; generating images is not refused here."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import OpenSDError

MIN_FREE_BYTES = 1 << 30


class NoRoom(OpenSDError):
    status = 507


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk holding `folder` (its nearest existing parent), None when unknown."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def check(folder: Path, size: int, what: str) -> None:
    """Raise NoRoom when storing `size` bytes under `folder` would leave less than MIN_FREE_BYTES free."""
    free = free_bytes(folder)
    if free is not None and free - size < MIN_FREE_BYTES:
        raise NoRoom(f"{what}: not stored, the server's disk has {max(free, 0) >> 20} MiB free and keeps at least "
                     f"{MIN_FREE_BYTES >> 20} MiB free")
