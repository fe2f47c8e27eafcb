"""Where each model in a models folder came from and its SHA-256 when it was added, kept beside the
models in `<models folder>/.opensd-models.json`, so `opensd models verify` can re-hash and compare
and `opensd models info` can say where a file was downloaded from.

    {"version": 1, "files": {"Lora/ink.safetensors": {"sha256": "...", "size": 1234, "kind": "loras",
                                                      "source": "https://...", "added": "2025-01-02T03:04:05Z"}}}

Keys are paths relative to the models folder, with forward slashes. A source never keeps a token
(a `token=` query parameter or user:password in the address is removed before it is written).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..atomic import write_atomic
from ..errors import InvalidArgument

RECORDS = ".opensd-models.json"
VERSION = 1


def public_source(source: str) -> str:
    """`source` without credentials: user:password@ and token/key query parameters are dropped."""
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https"):
        return source
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in ("token", "key")]
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), ""))


class Records:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.path = self.root / RECORDS

    def load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise InvalidArgument(f"models-dir: cannot read the model records {self.path} ({e})") from None
        files = data.get("files") if isinstance(data, dict) and data.get("version") == VERSION else None
        if not isinstance(files, dict):
            raise InvalidArgument(f"models-dir: {self.path} is not a version {VERSION} model record")
        return {k: v for k, v in files.items() if isinstance(v, dict)}

    def key(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def get(self, path: Path) -> dict | None:
        return self.load().get(self.key(path))

    def put(self, path: Path, *, sha256: str, kind: str, source: str) -> dict:
        entry = {"sha256": sha256, "size": Path(path).stat().st_size, "kind": kind,
                 "source": public_source(source), "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        files = self.load()
        files[self.key(path)] = entry
        self._write(files)
        return entry

    def drop(self, path: Path) -> None:
        files = self.load()
        if files.pop(self.key(path), None) is not None:
            self._write(files)

    def _write(self, files: dict[str, dict]) -> None:
        write_atomic(self.path, json.dumps({"version": VERSION, "files": dict(sorted(files.items()))}, indent=1))
