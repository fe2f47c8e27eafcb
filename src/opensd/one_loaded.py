"""One model kept loaded at a time, remade when another key is asked for: the ControlNet preprocessors'
networks and the image taggers are large and used in bursts, so each keeps only its last one. Keys
include `file_stamp` of the files read, so a file replaced in place is read again."""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def file_stamp(path) -> tuple:
    """(path, modification time, size); OSError when the file cannot be read."""
    st = Path(path).stat()
    return str(path), st.st_mtime_ns, st.st_size


class OneLoaded:
    def __init__(self):
        self._lock = threading.RLock()  # the server's threads share it; a maker may ask for a part itself
        self._key: Any = None
        self._value: Any = None
        self._held = False

    def get(self, key, make: Callable[[], Any]) -> Any:
        """The thing for `key`, made by `make()` unless it is the one held (the previous one goes first)."""
        with self._lock:
            if not self._held or self._key != key:
                self._held, self._value = False, None  # dropped before the next is made: one in memory
                self._value, self._key, self._held = make(), key, True
            return self._value

    def clear(self) -> None:
        """Drop what is held (the next get makes it again)."""
        with self._lock:
            self._held, self._value, self._key = False, None, None
