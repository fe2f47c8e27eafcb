"""Answers read from a file, remembered while the file is unchanged (same path, size and modification
time): model listings ask the same questions of every file each time they list (model_info,
checkpoints/part_files.py, library/network_models.py)."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def by_stamp(read: Callable[[Path], T]) -> Callable[[Path], T | None]:
    """`read(path)`, computed once per stamp of the file; None for a file that cannot be looked at."""
    answers: dict[tuple[str, int, int], T] = {}
    lock = threading.Lock()

    def cached(path) -> T | None:
        path = Path(path)
        try:
            st = path.stat()
        except OSError:
            return None
        stamp = (str(path), st.st_size, st.st_mtime_ns)
        with lock:
            if stamp in answers:
                return answers[stamp]
        answer = read(path)
        with lock:
            answers[stamp] = answer
        return answer

    cached.__doc__ = read.__doc__
    return cached
