"""Loaded pipelines kept in memory, least recently used evicted first, within a budget in bytes of
parameters (the most recently used pipeline always stays, even if alone it exceeds the budget).
Used from the job worker thread; a lock makes it safe to list from HTTP handlers too."""
from __future__ import annotations

import gc
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import InvalidArgument
from ..library.hashes import default_cache, model_hash, shorthash
from ..library.models_dir import ModelFolders

log = logging.getLogger(__name__)
_TITLE_HASH = re.compile(r"\s*\[[0-9a-fA-F]{8,64}\]\s*$")


def pipeline_bytes(pipe) -> int:
    return sum(p.numel() * p.element_size() for p in pipe.model.parameters())


class ModelCache:
    def __init__(self, folders: ModelFolders, device: str | None = "cpu", precision: str = "fp32",
                 budget_bytes: int = 8 << 30, loader=None):
        self.folders = folders
        self.device, self.precision = device, precision
        self.budget = budget_bytes
        self._loader = loader  # tests may inject; default: opensd.pipeline.pipeline.load
        self._pipes: OrderedDict[Path, object] = OrderedDict()
        self._sizes: dict[Path, int] = {}
        self._lock = threading.RLock()
        self.on_evict: list = []  # callables(path): drop other references (e.g. workflow output caches)

    # --- names ------------------------------------------------------------------------------

    def resolve(self, title: str) -> Path:
        """A checkpoint path for an A1111 title ("name [hash]"), a file name or a stem."""
        if not isinstance(title, str):
            raise InvalidArgument(f"sd_model_checkpoint: expected a model name, got {title!r}")
        return self.folders.resolve("checkpoints", _TITLE_HASH.sub("", title))

    def name_of(self, path: Path) -> str:
        for m in self.folders.list("checkpoints"):
            if m.path == path:
                return m.name
        return path.name

    def title(self, path: Path) -> str:
        short = self.short_hash(path)
        name = self.name_of(path)
        return f"{name} [{short}]" if short else name

    @staticmethod
    def sha256(path: Path, compute: bool = False) -> str | None:
        if not path.is_file():
            return None
        if compute:
            return default_cache().sha256(path)
        try:
            return default_cache().cached(path)
        except OSError:
            return None

    def short_hash(self, path: Path) -> str | None:
        full = self.sha256(path)
        return shorthash(full) if full else None

    # --- pipelines --------------------------------------------------------------------------

    def get(self, path: Path):
        with self._lock:
            if path in self._pipes:
                self._pipes.move_to_end(path)
                return self._pipes[path]
            load = self._loader
            if load is None:
                from ..pipeline.pipeline import load
            emb = self.folders.folders("embeddings")
            pipe = load(path, device=self.device, precision=self.precision,
                        embeddings_dir=emb[0] if emb else None)
            if path.is_file():
                try:
                    model_hash(path)  # A1111 hashes at load; later titles show it
                except OSError as e:
                    log.warning("cannot hash %s: %s", path, e)
            if hasattr(pipe, "lora_folders"):  # prompts' <lora:name:w> resolve inside the LoRA folders
                pipe.lora_folders = self.folders
            self._pipes[path] = pipe
            self._sizes[path] = pipeline_bytes(pipe)
            self._evict()
            return pipe

    def _evict(self) -> None:
        while len(self._pipes) > 1 and sum(self._sizes.values()) > self.budget:
            old, _ = self._pipes.popitem(last=False)
            log.info("unloading %s (model cache budget %d bytes)", old, self.budget)
            self._sizes.pop(old, None)
            for fn in self.on_evict:
                fn(old)
        gc.collect()

    def loaded(self) -> list[tuple[Path, int]]:
        with self._lock:
            return [(p, self._sizes[p]) for p in self._pipes]
