"""Atomic file writes: a reader (or a run resumed after a kill or a power cut) sees the old file or
the new one, never half of one.

The data goes to a temp file in the target's folder (so the rename stays on one file system) with a
name unique to this write (``mkstemp``), so two writers of the same target never share a temp file;
the last rename wins. The temp file is fsynced before the rename, else a crash can leave the new
name pointing at empty blocks, and the folder after it, so the rename itself survives. Depends on
nothing else in opensd: every layer may use it.
"""
from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _new_file_mode(path: Path) -> int:
    """The replaced file's permissions, or what open() would give a new file (mkstemp's are 0600)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _fsync_folder(folder: Path) -> None:
    """Best effort: Windows cannot open a folder, and some file systems refuse to sync one."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _claim(tmp: str, path: Path) -> None:
    """Give `tmp` the name `path` unless a file has it (FileExistsError)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links (FAT, some network shares): check, then rename
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


@contextmanager
def atomic_write(path: str | os.PathLike, *, check: Callable[[Path], None] | None = None,
                 exclusive: bool = False) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f: ...`` writes ``f`` (binary) in place of ``path`` when the block
    ends without an exception; on an exception ``path`` is untouched and the temp file is removed.
    The folder must exist (a missing one raises FileNotFoundError, for the caller to word).

    ``check(temp_path)``, when given, reads the finished temp file before it takes the name; whatever
    it raises leaves ``path`` untouched. ``exclusive``: never replace a file already at ``path`` (a
    hard link claims the name, so of two racing writers one gets FileExistsError)."""
    path = Path(path)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.chmod(tmp, mode)
        if exclusive:
            _claim(tmp, path)
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` (str is written as UTF-8) atomically; returns the path."""
    with atomic_write(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)
