"""Wildcard files: `__name__` in a prompt stands for one line of `name.txt` in the wildcards folder
(the sd-dynamic-prompts convention). A name may hold subfolders (`__clothes/hats__` is
`clothes/hats.txt`) but never leaves the folder. Blank lines and lines starting with `#` are not
values."""
from __future__ import annotations

from pathlib import Path

from .. import safe_paths
from ..errors import InvalidArgument


class Wildcards:
    def __init__(self, root: Path | None, flag: str = "wildcards-dir"):
        self.root = Path(root) if root is not None else None
        self.flag = flag  # how the user sets the folder, for messages

    def values(self, name: str, where: str = "prompt") -> list[str]:
        """The values of wildcard `name`; a name outside the folder or without a file is refused."""
        tag = f"__{name}__"
        problem = safe_paths.name_problem(name, f"{where}: wildcard {tag}")
        if problem:
            raise InvalidArgument(problem)
        if self.root is None or not self.root.is_dir():
            folder = f" (there is no folder {self.root})" if self.root is not None else ""
            raise InvalidArgument(f"{where}: wildcard {tag} needs a wildcards folder{folder}; give one with {self.flag}")
        path = safe_paths.inside(self.root, f"{name}.txt")
        if path is None:
            raise InvalidArgument(f"{where}: wildcard {tag} is not a name inside the wildcards folder")
        if not safe_paths.is_file(path):
            raise InvalidArgument(f"{where}: wildcard {tag}: no file {name}.txt in {self.root}")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"{where}: wildcard {tag}: cannot read {path} ({e})") from None
        lines = [line.strip() for line in text.splitlines()]
        values = [line for line in lines if line and not line.startswith("#")]
        if not values:
            raise InvalidArgument(f"{where}: wildcard {tag}: {path} holds no values")
        return values

