"""File names a user gives for a file inside one folder (HTTP routes, ComfyUI node inputs), checked
one way everywhere: a name never leaves its folder (`..`, absolute, drive letter, a symlink out) and
never reaches a system call in a form that makes it fail (NUL, a component over the filesystem's
255-byte limit, text that is not Unicode), so each face answers "not found" or one clear line,
never an OSError. Depends on nothing else in opensd: every layer may use it.
"""
from __future__ import annotations

import re
from pathlib import Path

NAME_MAX = 255    # bytes in one path component (ext4, APFS, NTFS)
PATH_MAX = 1024   # bytes in a whole relative name, far below the OS limit once joined to a root
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def name_problem(name, what: str) -> str | None:
    """One line saying why `name` is not a relative name inside a folder, or None."""
    if not isinstance(name, str):
        return f"{what}: expected a file name, got {type(name).__name__}"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what}: the name is not Unicode text"
    if _CONTROL.search(name):
        return f"{what}: {name[:80]!r} holds a control character"
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        return f"{what}: {name[:80]!r} is not a name inside the folder"
    if size > PATH_MAX or any(len(p.encode("utf-8")) > NAME_MAX for p in parts):
        return f"{what}: the name is too long ({size} bytes; at most {NAME_MAX} per folder or file name)"
    return None


def inside(root: Path, *names: str) -> Path | None:
    """`root/names...` with symlinks followed, if that stays inside `root`; None otherwise or when
    the filesystem cannot say (loops, permissions). Check the names with name_problem first."""
    try:
        base = Path(root).resolve()
        path = base.joinpath(*names).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    return path if path.is_relative_to(base) else None


def is_file(path: Path) -> bool:
    """Path.is_file that answers False instead of raising (permissions, a name the OS refuses)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
