"""The in-memory image store of comfyui-tooling-nodes (Krita AI Diffusion's transfer path): a client
PUTs each input image to /api/etn/image/{id} and names it in an ETN_LoadImageCache node; an
ETN_SaveImageCache node stores each result here and the client GETs /api/etn/image/{id}.

One store per process (the nodes and the routes share it), bounded by total size: the least
recently used entries go first. An entry just stored is kept for at least `keep_s` seconds even
over the bound, so a result is not dropped before its client fetched it, up to a hard bound (twice
the soft one) past which a new entry is refused; a single entry over `max_entry` bytes is refused."""
from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict

from ..errors import InvalidArgument

_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")


class ImageCache:
    def __init__(self, max_bytes: int = 512 << 20, max_entry: int = 64 << 20, keep_s: float = 60.0):
        self.max_bytes, self.max_entry, self.keep_s = max_bytes, max_entry, keep_s
        self._entries: OrderedDict[str, tuple[bytes, str, float]] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    @staticmethod
    def check_id(key: str) -> str:
        if not isinstance(key, str) or not _ID.fullmatch(key):
            raise InvalidArgument(f"id: {str(key)[:40]!r} is not an image id (1-128 of A-Z a-z 0-9 _ . -)")
        return key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.check_id(key)
        if len(data) > self.max_entry:
            raise InvalidArgument(f"image: {len(data)} bytes, more than the {self.max_entry} one image may take")
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._size -= len(old[0])
            self._entries[key] = (data, content_type, time.monotonic())
            self._size += len(data)
            self._prune()
            if self._size > 2 * self.max_bytes:  # all recent: a flood, not a client's working set
                self._size -= len(self._entries.pop(key)[0])
                raise InvalidArgument(f"image: the image store is full ({self._size >> 20} MB stored in the last "
                                      f"{self.keep_s:g} s); try again shortly")

    def add(self, data: bytes, content_type: str) -> str:
        key = uuid.uuid4().hex
        self.put(key, data, content_type)
        return key

    def get(self, key: str) -> tuple[bytes, str] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            self._entries[key] = (entry[0], entry[1], time.monotonic())
            return entry[0], entry[1]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def _prune(self) -> None:
        now = time.monotonic()
        for key in list(self._entries):
            if self._size <= self.max_bytes:
                return
            data, _, used = self._entries[key]
            if now - used < self.keep_s:
                return  # the rest are newer still
            del self._entries[key]
            self._size -= len(data)


IMAGES = ImageCache()
