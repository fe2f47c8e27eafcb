"""Names the web UI gives for files the server creates (merged checkpoints, trained LoRAs,
datasets, uploaded images): one plain name inside one folder, no path. Letters, digits, space and
`_ - . ( ) +` only, so a name is the same on every file system, shows as itself in every view and
cannot reach another folder; the caller joins it to a folder it chose."""
from __future__ import annotations

import re
from pathlib import Path

from .. import safe_paths
from ..errors import InvalidArgument

MAX_CHARS = 120
_ALLOWED = re.compile(r"^[\w][\w .()+-]*$")
_UNSAFE = re.compile(r"[^\w .()+-]+")


def plain_name(value, field: str, suffixes: tuple[str, ...] = ()) -> str:
    """`value` checked as a plain name; with `suffixes`, the name must end in one of them (the
    first is added when it has no suffix at all)."""
    problem = safe_paths.name_problem(value, field)
    if problem:
        raise InvalidArgument(problem)
    name = value.strip()
    if not name:
        raise InvalidArgument(f"{field}: a name is required")
    if "/" in name or "\\" in name:
        raise InvalidArgument(f"{field}: {name[:80]!r} must be a plain name, without folders")
    if len(name) > MAX_CHARS or not _ALLOWED.match(name) or name.endswith("."):
        raise InvalidArgument(f"{field}: {name[:80]!r} must be at most {MAX_CHARS} letters, digits, spaces "
                              "or _-.()+, starting with a letter or digit")
    if suffixes:
        suffix = Path(name).suffix.lower()
        if suffix not in suffixes:
            if suffix and suffix[1:].isalpha() and len(suffix) <= 12:
                raise InvalidArgument(f"{field}: {name[:80]!r} must end in {' or '.join(suffixes)}")
            name += suffixes[0]
    return name


def from_upload(filename: str | None, suffix: str, fallback: str = "image") -> str:
    """A plain name made from an uploaded file's name (whatever the browser sent), ending in `suffix`."""
    stem = Path((filename or "").replace("\\", "/").split("/")[-1]).stem
    stem = _UNSAFE.sub("_", stem).strip(" ._-")[: MAX_CHARS - len(suffix)] or fallback
    if not _ALLOWED.match(stem):
        stem = fallback
    return stem + suffix

