"""Loaded pipelines kept in memory, least recently used evicted first, within a budget in bytes of
parameters (the most recently used pipeline always stays, even if alone it exceeds the budget, and
so does a main model a job holds beside its refiner: both run in one generation).
Used from the job worker thread; a lock makes it safe to list from HTTP handlers too."""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from ..errors import CheckpointError, InvalidArgument, OutOfMemoryForModel
from ..library.hashes import default_cache, model_hash, shorthash
from ..library.models_dir import ModelFolders
from ..library.network_models import resolve_model, whole_models
from ..pipeline.device import resolve_device
from ..upscale import Upscalers
from .embedding_files import EmbeddingFiles

log = logging.getLogger(__name__)


def pipeline_bytes(pipe) -> int:
    return sum(p.numel() * p.element_size() for p in pipe.model.parameters())


class ModelCache:
    def __init__(self, folders: ModelFolders, device: str | None = "auto", precision: str = "auto",
                 budget_bytes: int = 8 << 30, loader=None, memory: str = "auto", backend: str = "torch"):
        self.folders = folders
        self.device, self.precision, self.memory, self.backend = device, precision, memory, backend
        self.budget = budget_bytes
        self._loader = loader  # tests may inject; default: opensd.pipeline.pipeline.load
        self._pipes: OrderedDict[tuple[Path, Path | None], object] = OrderedDict()  # (checkpoint, VAE)
        self._sizes: dict[tuple[Path, Path | None], int] = {}
        self._lock = threading.RLock()
        self.on_evict: list = []  # callables(path): drop other references (e.g. workflow output caches)
        # the models folder's upscalers (extras, hires fix, ComfyUI), their last models kept loaded
        self.upscalers = Upscalers(folders, resolve_device(device))
        self.embeddings = EmbeddingFiles(folders)  # every pipeline uses the folder as it is now

    # --- names ------------------------------------------------------------------------------

    def resolve(self, title: str, field: str = "sd_model_checkpoint") -> Path:
        """A whole model's path (a checkpoint, or a network the models folder completes: network_models)
        for an A1111 title ("name [hash]"), a file name or a stem; errors name `field`."""
        if not isinstance(title, str):
            raise InvalidArgument(f"{field}: expected a model name, got {title!r}")
        try:
            return resolve_model(self.folders, title)
        except InvalidArgument as e:
            raise InvalidArgument(f"{field}: {str(e).split(': ', 1)[-1]}") from None

    def name_of(self, path: Path) -> str:
        for m in whole_models(self.folders):
            if m.path == path:
                return m.name
        return path.name

    def title(self, path: Path, name: str | None = None) -> str:
        """A1111's "name [short hash]" (`name`: the model's name when the caller knows it)."""
        short = self.short_hash(path)
        name = name or self.name_of(path)
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

    def get(self, path: Path, vae: Path | None = None, keep: tuple = ()):
        """The pipeline of checkpoint `path`, with its VAE replaced by the file `vae` if given. `keep`:
        (path, vae) keys a job holds beside it (a refiner's main model), not evicted for it."""
        key = (path, vae)
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                for held in keep:  # held ones count as just used too
                    if held in self._pipes:
                        self._pipes.move_to_end(held)
                return self._with_embeddings(self._pipes[key])
            load = self._loader
            if load is None:
                from ..pipeline.pipeline import load
            try:
                pipe = load(path, vae=vae, device=self.device, precision=self.precision, memory=self.memory)
            except OutOfMemoryForModel:
                # the models held here may be what fills the RAM: unload those not in use, then try once more
                if not self._evict(keep=keep, everything=True):
                    raise
                pipe = load(path, vae=vae, device=self.device, precision=self.precision, memory=self.memory)
            if path.is_file():
                try:
                    model_hash(path)  # A1111 hashes at load; later titles show it
                except OSError as e:
                    log.warning("cannot hash %s: %s", path, e)
            if hasattr(pipe, "lora_folders"):  # prompts' <lora:name:w> resolve inside the LoRA folders
                pipe.lora_folders = self.folders
                pipe.hypernet_folders = self.folders  # and <hypernet:name:m> in its hypernetworks folder
                self._tiny_vae(pipe)
                pipe.upscalers = self.upscalers  # hires fix upscalers by name
                if self.backend == "openvino":
                    self._openvino(pipe)
            self._pipes[key] = pipe
            self._sizes[key] = pipeline_bytes(pipe)
            self._evict(keep=(key, *keep))
            return self._with_embeddings(pipe)

    def _with_embeddings(self, pipe):
        """`pipe`, using the embeddings folder as it is now (a file copied in since the last job counts)."""
        if hasattr(pipe, "set_embeddings"):
            db = self.embeddings.get()
            if getattr(pipe, "embeddings", None) is not db:
                pipe.set_embeddings(db)
        return pipe

    def _tiny_vae(self, pipe) -> None:
        """Live previews through the model's tiny autoencoder when its files are in a vae_approx folder."""
        from ..pipeline.tiny_vae import find_tiny_vae
        paths = find_tiny_vae(self.folders.folders("vae_approx"), pipe.config)
        if paths:
            try:
                pipe.use_tiny_vae(paths)
            except CheckpointError as e:
                log.warning("tiny autoencoder not used for previews: %s", e)

    @staticmethod
    def _openvino(pipe) -> None:
        from ..pipeline.openvino_unet import use_openvino
        try:
            use_openvino(pipe)
        except InvalidArgument as e:  # e.g. a DiT model: it runs on PyTorch
            log.warning("%s stays on PyTorch: %s", pipe.name, e)

    def reload_embeddings(self) -> None:
        """Give every loaded pipeline the embeddings folder as it is now, even if no file looks changed."""
        db = self.embeddings.refresh()
        with self._lock:
            for pipe in self._pipes.values():
                if hasattr(pipe, "set_embeddings"):
                    pipe.set_embeddings(db)

    def _evict(self, keep: tuple, everything: bool = False) -> int:
        """Unload least recently used pipelines but those in `keep` while over the budget (or all of
        them, `everything`). Returns how many were unloaded."""
        gone = 0
        while everything or sum(self._sizes.values()) > self.budget:
            old = next((k for k in self._pipes if k not in keep), None)
            if old is None:
                break
            gone += 1
            del self._pipes[old]
            log.info("unloading %s (model cache budget %d bytes)", old[0], self.budget)
            self._sizes.pop(old, None)
            for fn in self.on_evict:
                fn(old[0])
        gc.collect()
        return gone

    def clear(self) -> int:
        """Unload every pipeline (ComfyUI's /free, A1111's /unload-checkpoint); a running job keeps
        its own reference and finishes. Returns how many were unloaded."""
        with self._lock:
            gone = list(self._pipes)
            self._pipes.clear()
            self._sizes.clear()
            for key in gone:
                for fn in self.on_evict:
                    fn(key[0])
        gc.collect()
        return len(gone)

    def peek(self, path: Path):
        """A loaded pipeline of checkpoint `path` (any VAE), or None; loads nothing, keeps the order."""
        with self._lock:
            return next((pipe for (p, _), pipe in self._pipes.items() if p == path), None)

    def loaded(self) -> list[tuple[Path, int]]:
        with self._lock:
            return [(key[0], self._sizes[key]) for key in self._pipes]
