"""One Ray worker process: its own model cache, one job at a time (an A1111 generation, or a ComfyUI
graph run in folders of its own, comfy_wire.Stage).

The pool makes this class a Ray actor with a few threads (max_concurrency), so `poll` answers while
`run` works: the front door calls it a few times a second to read progress, previews and a graph's
websocket messages, and to pass on interrupt and skip, which the job's Control checks at every
sampling step."""
from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..library.models_dir import ModelFolders
from ..library.network_models import resolve_model
from ..library.user_config import MODELS_DIR_ENV
from ..server import a1111_run, comfy_run, images_io
from ..server.jobs import Control, Progress, Stopped
from ..server.model_cache import ModelCache
from ..server.settings import Settings
from ..workflows import OutputCache
from . import comfy_wire, wire
from .shipping import ShippedModels, ray_chunks


class GenerationActor:
    def __init__(self, models_dir: str | None, device: str, precision: str, threads: int | None,
                 budget_bytes: int, max_image_pixels: int, source=None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.source = source  # the front door's ModelSource when it ships the models (shipping.py)
        self.shipped = ShippedModels() if source is not None else None
        if self.shipped is not None:
            self.folders = self.shipped.folders()
        else:
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
        self.stage = comfy_wire.Stage(Path(tempfile.mkdtemp(prefix="opensd-worker-")))
        self.outputs = OutputCache()  # a graph's node outputs, reused by the next graph as in ComfyUI
        self.cache.on_evict.append(lambda path: self.outputs.clear())  # they hold pipelines too
        self._messages: list = []  # a graph's websocket messages not yet taken by the front door
        self._lock = threading.Lock()

    def describe(self) -> dict:
        import ray
        import torch

        from ..pipeline.device import resolve_device

        return {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "device": str(resolve_device(self.device)), "threads": torch.get_num_threads(),
                "models_dir": str(self.folders.root) if self.folders.root else None, "held": self.held()}

    def run(self, job_id: str, job_wire: dict) -> dict:
        """Generate the job; its images come back (with their infotexts) for the front door to save."""
        self._receive(job_wire)
        payload, self.wildcards = wire.from_wire(self.folders, job_wire)
        self._begin(job_id)
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
        self._hold(job_wire["model"], job_wire.get("vae"), list(wire.models_of(self.folders, payload)[2]))
        return {"batch": made, "held": self.held()}

    def run_graph(self, job_id: str, job_wire: dict) -> dict:
        """Run a ComfyUI graph (comfy_wire); its result and its last messages come back."""
        self._receive(job_wire)
        self.stage.receive(job_wire["inputs"])
        self._begin(job_id)
        ctl = Control(self.progress)
        ctx = comfy_run.context(self.folders, self.cache, self.stage.dirs, self.outputs, ctl.should_stop,
                                (job_wire.get("extra_data") or {}).get("extra_pnginfo"))
        try:
            result = comfy_run.run_graph(job_id, job_wire, ctx, ctl, self._send)
        finally:
            self._job = None
        for name in comfy_wire.checkpoints(self.folders, job_wire["prompt"]):
            self._hold(name, None, [])
        return {"result": result, "messages": self._take(), "held": self.held()}

    def _receive(self, job_wire: dict) -> None:
        """The job's model files this node lacks, from the front door (when it ships them)."""
        if self.shipped is not None:
            import ray

            self.shipped.ensure(job_wire.get("ship") or [], lambda entry: ray_chunks(ray, self.source, entry))

    def _begin(self, job_id: str) -> None:
        with self._lock:
            self._messages = []
        self.progress, self._job, self._preview = Progress(started=time.time()), job_id, None

    def _send(self, message) -> None:
        with self._lock:
            self._messages.append(self.stage.attach(message))

    def _take(self) -> list:
        with self._lock:
            taken, self._messages = self._messages, []
        return taken

    def _hold(self, model: str, vae: str | None, loras: list[str]) -> None:
        self._held[(model, vae)] = {"model": model, "vae": vae, "loras": loras}
        self._held.move_to_end((model, vae))

    def poll(self, job_id: str, interrupt: bool, skip: bool) -> dict:
        """Progress of job `job_id` (a preview only when new); passes on interrupt and skip."""
        p = self.progress
        if job_id != self._job:
            return {"step": 0, "steps": 0, "image_index": 0, "images": 1, "preview": None, "messages": []}
        p.interrupted = p.interrupted or interrupt
        p.skipped = p.skipped or skip
        preview = None
        if p.preview is not None and p.preview is not self._preview:
            self._preview = p.preview
            preview = images_io.jpeg_bytes(p.preview)
        return {"step": p.step, "steps": p.steps, "image_index": p.image_index, "images": p.images,
                "phase": p.phase, "preview": preview, "messages": self._take()}

    def unload(self) -> int:
        """Drop every loaded model and kept node output (the front door's /free, /unload-checkpoint); a
        running job keeps what it holds and finishes. -> how many pipelines were unloaded."""
        self.outputs.clear()
        self._held.clear()
        return self.cache.clear()

    def held(self) -> list[dict]:
        """The (checkpoint, VAE, LoRA set) combinations loaded now, most recently used last."""
        loaded = {path for path, _ in self.cache.loaded()}
        for key in list(self._held):
            if resolve_model(self.folders, key[0]) not in loaded:
                del self._held[key]
        return list(self._held.values())
