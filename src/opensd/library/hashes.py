"""Model file hashes as AUTOMATIC1111 computes them, with a persistent cache.

What A1111 writes in its infotext, and so what Civitai and other tools look models up by:

- "Model hash" (checkpoints) and "VAE hash": the first 10 hex digits of the SHA-256 of the whole
  file (``model_hash``).
- "Lora hashes": the first 12 hex digits of, for a ``.safetensors`` LoRA, the "addnet" hash
  (SHA-256 of the file past its header, i.e. of the tensor data only, as kohya-ss sd-scripts
  computes it) or the ``sshs_model_hash`` its trainer stored in the header's metadata, which A1111
  prefers; for other LoRA files the SHA-256 of the whole file (``lora_hash``).
- "TI hashes": the first 12 hex digits of the SHA-256 of the embedding file (``embedding_hash``).
- The legacy "Model hash" of A1111 before 1.0 / 2023: 8 hex digits of the SHA-256 of the 64 KiB
  at offset 1 MiB (``legacy_model_hash``); cheap, so never cached.

Full-file hashes of multi-gigabyte models take a while, so they are kept in a JSON cache
(``HashCache``, by default ``$XDG_CACHE_HOME/opensd/hashes.json``, or ``$OPENSD_CACHE_DIR``),
keyed by absolute path and checked against the file's size and mtime (ns) on every use.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..atomic import write_atomic

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    try:
        import msvcrt
    except ImportError:
        msvcrt = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

CHUNK_SIZE = 4 << 20          # read models 4 MiB at a time
CACHE_VERSION = 1
MAX_CACHE_ENTRIES = 5000      # oldest updated entries are dropped past this
_SAFETENSORS_MAX_HEADER = 100 << 20

StrPath = str | os.PathLike


# ----------------------------------------------------------------------------------- raw hashes

def _hash_from(f, start: int, chunk_size: int) -> str:
    h = hashlib.sha256()
    f.seek(start)
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    while n := f.readinto(buf):
        h.update(view[:n])
    return h.hexdigest()


def calculate_sha256(path: StrPath, *, chunk_size: int = CHUNK_SIZE) -> str:
    """SHA-256 (64 hex digits) of the whole file, read in chunks."""
    with open(path, "rb") as f:
        return _hash_from(f, 0, chunk_size)


def calculate_addnet_hash(path: StrPath, *, chunk_size: int = CHUNK_SIZE) -> str:
    """The "addnet" hash of a safetensors file: SHA-256 of everything after the JSON header.

    A safetensors file is an 8-byte little-endian header length N, N bytes of JSON, then the
    tensor data; this hashes the data only, so editing the metadata leaves the hash unchanged.
    """
    with open(path, "rb") as f:
        head = f.read(8)
        size = os.fstat(f.fileno()).st_size
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or 8 + n > size:
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        return _hash_from(f, 8 + n, chunk_size)


def legacy_model_hash(path: StrPath) -> str:
    """A1111's old 8-digit "Model hash": SHA-256 of the 0x10000 bytes at offset 0x100000.

    Files shorter than that hash what is there (possibly nothing), as A1111 does.
    """
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def shorthash(sha256: str, length: int = 10) -> str:
    """The first ``length`` hex digits: 10 for models and VAEs, 12 for LoRAs and embeddings."""
    return sha256[:length]


def safetensors_metadata(path: StrPath) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors header ({} when there are none)."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= _SAFETENSORS_MAX_HEADER:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{path}: safetensors header is not JSON: {e}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------------------- cache

def default_cache_dir() -> Path:
    """``$OPENSD_CACHE_DIR``, else the platform's user cache folder + ``opensd``."""
    if env := os.environ.get("OPENSD_CACHE_DIR"):
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
        return Path(base) / "opensd" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "opensd"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "opensd"


def _stat_key(st: os.stat_result) -> tuple[int, int]:
    return st.st_size, st.st_mtime_ns


class HashCache:
    """Hashes of files by absolute path, valid while the file's size and mtime are unchanged.

    Stored as JSON ``{"version": 1, "files": {path: {"size", "mtime_ns", "sha256"?, "addnet"?}}}``
    in ``folder/hashes.json``. Every update re-reads the file under an exclusive lock
    (``hashes.json.lock``), merges, and replaces it atomically (temp file + rename), so concurrent
    processes keep each other's entries and readers never see a torn file. A missing, unreadable or
    corrupt cache counts as empty and is rewritten on the next update; a cache that cannot be
    written only costs re-hashing later. Hashing itself runs outside the lock.
    """

    def __init__(self, folder: StrPath | None = None, *, filename: str = "hashes.json"):
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.path = self.folder / filename
        self._files: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._warned = False

    # -- public

    def sha256(self, path: StrPath) -> str:
        """SHA-256 of the whole file (64 hex digits), from the cache when still valid."""
        return self._get(path, "sha256", calculate_sha256)

    def addnet_hash(self, path: StrPath) -> str:
        """The safetensors "addnet" hash (see calculate_addnet_hash), from the cache when valid."""
        return self._get(path, "addnet", calculate_addnet_hash)

    def remember(self, path: StrPath, value: str, kind: str = "sha256") -> None:
        """Store a hash computed elsewhere (e.g. while the file was downloaded) for the file as it is now."""
        key, st = self._key(path)
        self._store(key, st, kind, value)

    def cached(self, path: StrPath, kind: str = "sha256") -> str | None:
        """The cached hash if it is still valid for the file as it is now, without hashing."""
        key, st = self._key(path)
        with self._lock:
            hit = self._lookup(self._files, key, st, kind)
            if hit is None:
                self._files = self._read()
                hit = self._lookup(self._files, key, st, kind)
        return hit

    # -- internals

    @staticmethod
    def _key(path: StrPath) -> tuple[str, os.stat_result]:
        key = os.path.normcase(os.path.abspath(os.fspath(path)))
        return key, os.stat(key)

    @staticmethod
    def _lookup(files: dict, key: str, st: os.stat_result, kind: str) -> str | None:
        entry = files.get(key)
        if not isinstance(entry, dict) or (entry.get("size"), entry.get("mtime_ns")) != _stat_key(st):
            return None
        value = entry.get(kind)
        return value if isinstance(value, str) and len(value) == 64 else None

    def _get(self, path: StrPath, kind: str, compute: Callable[[str], str]) -> str:
        hit = self.cached(path, kind)
        if hit is not None:
            return hit
        key, st = self._key(path)
        if st.st_size >= 256 << 20:
            log.info("hashing %s (%.1f GB), once: the result is cached in %s",
                     key, st.st_size / 1e9, self.path)
        value = compute(key)
        after = os.stat(key)
        if _stat_key(after) != _stat_key(st):  # written to while we read it: do not remember
            log.warning("%s changed while being hashed; its hash is not cached", key)
            return value
        self._store(key, st, kind, value)
        return value

    def _read(self) -> dict[str, dict]:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON: start afresh
            log.warning("ignoring unreadable hash cache %s: %s", self.path, e)
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("version") == CACHE_VERSION else None
        if not isinstance(files, dict):
            if data:
                log.warning("ignoring hash cache %s: not a version %d cache", self.path, CACHE_VERSION)
            return {}
        return {k: v for k, v in files.items() if isinstance(k, str) and isinstance(v, dict)}

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            elif msvcrt is not None:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _store(self, key: str, st: os.stat_result, kind: str, value: str) -> None:
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                with self._file_lock():
                    files = self._read()
                    self._merge(files, key, st, kind, value)
                    self._write(files)
                self._files = files
            except OSError as e:
                self._merge(self._files, key, st, kind, value)
                if not self._warned:
                    self._warned = True
                    log.warning("cannot write the hash cache %s (%s); hashes will be recomputed "
                                "next run", self.path, e)

    @staticmethod
    def _merge(files: dict, key: str, st: os.stat_result, kind: str, value: str) -> None:
        entry = files.pop(key, None)
        size, mtime_ns = _stat_key(st)
        if not isinstance(entry, dict) or (entry.get("size"), entry.get("mtime_ns")) != (size, mtime_ns):
            entry = {"size": size, "mtime_ns": mtime_ns}
        entry[kind] = value
        files[key] = entry  # re-inserted last: the oldest entries are the first dropped
        for old in list(files)[:max(0, len(files) - MAX_CACHE_ENTRIES)]:
            del files[old]

    def _write(self, files: dict) -> None:
        data = json.dumps({"version": CACHE_VERSION, "files": files}, indent=1, sort_keys=False)
        write_atomic(self.path, data)


_default: HashCache | None = None
_default_lock = threading.Lock()


def default_cache() -> HashCache:
    """The process-wide cache in default_cache_dir(), made on first use."""
    global _default
    with _default_lock:
        if _default is None or _default.folder != default_cache_dir():
            _default = HashCache()
        return _default


# ------------------------------------------------------------------------- what infotexts carry

def file_sha256(path: StrPath, cache: HashCache | None = None) -> str:
    """Full SHA-256 of the file through ``cache`` (default: default_cache())."""
    return (cache or default_cache()).sha256(path)


def model_hash(path: StrPath, cache: HashCache | None = None) -> str:
    """A1111's "Model hash" / "VAE hash": the first 10 hex digits of the file's SHA-256."""
    return shorthash(file_sha256(path, cache), 10)


def lora_hash(path: StrPath, cache: HashCache | None = None) -> str:
    """A1111's "Lora hashes" entry (12 hex digits) for this LoRA file.

    ``.safetensors``: the trainer's ``sshs_model_hash`` metadata when it looks like a SHA-256 (A1111
    takes it first), else the addnet hash of the tensor data. Other files: the whole-file SHA-256.
    """
    cache = cache or default_cache()
    if os.fspath(path).lower().endswith(".safetensors"):
        try:
            stored = safetensors_metadata(path).get("sshs_model_hash", "").strip().lower()
        except ValueError:
            stored = ""
        if len(stored) == 64 and all(c in "0123456789abcdef" for c in stored):
            return shorthash(stored, 12)
        return shorthash(cache.addnet_hash(path), 12)
    return shorthash(cache.sha256(path), 12)


def embedding_hash(path: StrPath, cache: HashCache | None = None) -> str:
    """A1111's "TI hashes" entry: the first 12 hex digits of the embedding file's SHA-256."""
    return shorthash(file_sha256(path, cache), 12)
