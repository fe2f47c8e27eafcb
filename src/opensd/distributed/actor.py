"""One Ray worker process: its own model cache, one A1111 generation at a time.

The pool makes this class a Ray actor with a few threads (max_concurrency), so `poll` answers while
`run` works: the front door calls it a few times a second to read progress and previews and to pass
on interrupt and skip, which the job's Control checks at every sampling step."""
from __future__ import annotations

import os
import socket
import time
from collections import OrderedDict
from pathlib import Path

from ..library.models_dir import ModelFolders
from ..library.user_config import MODELS_DIR_ENV
from ..server import a1111_run, images_io
from ..server.jobs import Control, Progress, Stopped
from ..server.model_cache import ModelCache
from ..server.settings import Settings
from . import wire


class GenerationActor:
    def __init__(self, models_dir: str | None, device: str, precision: str, threads: int | None,
                 budget_bytes: int, max_image_pixels: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        root = os.environ.get(MODELS_DIR_ENV) or models_dir  # a node mounting the models elsewhere says so
        self.folders = ModelFolders(Path(root) if root else None)
        self.cache = ModelCache(self.folders, device, precision, budget_bytes)
        self.settings = Settings(max_image_pixels=max_image_pixels)  # what a1111_run.generate reads
        self.wildcards = wire.Shipped({})
        self.device = device
        self.progress = Progress()
        self._job: str | None = None
        self._preview = None  # the last preview sent
        self._held: OrderedDict[tuple, dict] = OrderedDict()  # (checkpoint, VAE) -> what it has loaded
        self._embeddings = self._embedding_files()

    def describe(self) -> dict:
        import ray
        import torch

        from ..pipeline.device import resolve_device

        return {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "device": str(resolve_device(self.device)), "threads": torch.get_num_threads(),
                "models_dir": str(self.folders.root) if self.folders.root else None, "held": self.held()}

    def run(self, job_id: str, job_wire: dict) -> dict:
        """Generate the job; its images come back (with their infotexts) for the front door to save."""
        payload, self.wildcards = wire.from_wire(self.folders, job_wire)
        if (files := self._embedding_files()) != self._embeddings:  # one trained or copied in meanwhile
            self.cache.reload_embeddings()
            self._embeddings = files
        self.progress, self._job, self._preview = Progress(started=time.time()), job_id, None
        try:
            req = a1111_run.request_of(payload)
            try:
                made = a1111_run.generate(self, payload, req, Control(self.progress))
            except Stopped as e:
                return {"stopped": True, "skip": e.skip}
        finally:
            self._job = None
        for m in made.made:
            m.image.info = {}  # what made it is in the infotext; the rest stays here
        key = (job_wire["model"], job_wire.get("vae"))
        self._held[key] = {"model": key[0], "vae": key[1], "loras": list(wire.models_of(self.folders, payload)[2])}
        self._held.move_to_end(key)
        return {"batch": made, "held": self.held()}

    def poll(self, job_id: str, interrupt: bool, skip: bool) -> dict:
        """Progress of job `job_id` (a preview only when new); passes on interrupt and skip."""
        p = self.progress
        if job_id != self._job:
            return {"step": 0, "steps": 0, "image_index": 0, "images": 1, "preview": None}
        p.interrupted = p.interrupted or interrupt
        p.skipped = p.skipped or skip
        preview = None
        if p.preview is not None and p.preview is not self._preview:
            self._preview = p.preview
            preview = images_io.jpeg_bytes(p.preview)
        return {"step": p.step, "steps": p.steps, "image_index": p.image_index, "images": p.images,
                "preview": preview}

    def _embedding_files(self) -> list[tuple[str, int]]:
        return sorted((str(f), f.stat().st_mtime_ns) for d in self.folders.folders("embeddings")
                      for f in d.iterdir() if f.is_file())

    def held(self) -> list[dict]:
        """The (checkpoint, VAE, LoRA set) combinations loaded now, most recently used last."""
        loaded = {path for path, _ in self.cache.loaded()}
        for key in list(self._held):
            if self.folders.resolve("checkpoints", key[0]) not in loaded:
                del self._held[key]
        return list(self._held.values())
