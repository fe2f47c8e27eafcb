"""Ray actors as the job queue's workers (`opensd serve --ray auto|ADDRESS`).

Sizing: with GPUs in the cluster, one actor per GPU; otherwise CPU actors of `threads` PyTorch
threads each (default 4, or a node's CPUs if fewer), as many as the cluster's CPUs hold, or exactly
`workers` of them (none while the cluster has neither: a head with no CPUs). Unless that count
is fixed, the pool looks at the cluster's resources every `watch_s` seconds and starts actors for
what has joined (a node added while serving takes jobs without a restart); `add` starts more at
once (`opensd workers add`). Each actor is restarted by Ray when its process dies."""
from __future__ import annotations

import logging
import socket
import threading

from ..errors import InvalidArgument
from . import wire
from .actor import GenerationActor
from .ray_worker import RayWorker
from .shipping import Shipper

log = logging.getLogger(__name__)
DEFAULT_THREADS = 4
ACTOR_CONCURRENCY = 4  # run, and the front door's polls beside it


def require_ray():
    try:
        import ray
    except ImportError:
        raise InvalidArgument('ray: Ray is not installed; pip install "opensd[ray]"') from None
    return ray


def connect(address: str) -> bool:
    """Join the Ray cluster at `address` ("auto": the one on this machine, else a new local one);
    True when this process started Ray (and so stops it at the end)."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if address != "auto" and (problem := _unreachable(address)):  # Ray itself would retry for minutes
        raise InvalidArgument(f"ray: cannot reach a Ray cluster at {address} ({problem})")
    kwargs = {"namespace": "opensd", "log_to_driver": False, "include_dashboard": False}
    try:
        ray.init(address=address, **kwargs)
        return False
    except ConnectionError as e:
        if address != "auto":
            raise InvalidArgument(f"ray: cannot reach a Ray cluster at {address} ({e})") from None
    ray.init(**kwargs)
    return True


def _unreachable(address: str) -> str | None:
    """Why nothing answers at HOST:PORT (also ray://HOST:PORT), or None (answering, or another form)."""
    host, _, port = address.split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        return e.strerror or str(e)
    return None


class RayPool:
    def __init__(self, state, address: str = "auto", workers: int | None = None, threads: int | None = None,
                 watch_s: float = 5.0):
        self.ray = require_ray()
        self.state = state
        self._owns = connect(address)
        self.fixed, self.threads = workers, threads or self._default_threads()
        self.shipper = Shipper(self.ray, state.folders) if state.settings.ray_ship_models else None
        self.workers: list[RayWorker] = []
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        state.queue.local.leave = wire.remote  # generations go to the actors; the rest stays here
        self.add(self.target())
        self._watcher = None
        if workers is None:
            self._watcher = threading.Thread(target=self._watch, args=(watch_s,), name="opensd-ray-pool",
                                             daemon=True)
            self._watcher.start()

    def _default_threads(self) -> int:
        widest = max((n["Resources"].get("CPU", 0) for n in self.ray.nodes() if n.get("Alive")), default=0)
        return max(1, min(DEFAULT_THREADS, int(widest) or DEFAULT_THREADS))

    def _gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def target(self) -> int:
        """How many actors the cluster holds now."""
        if self.fixed is not None:
            return self.fixed
        gpus = self._gpus()
        if gpus:
            return gpus
        cpus = self.ray.cluster_resources().get("CPU", 0)
        return max(1, int(cpus // self.threads)) if cpus >= 1 else 0

    def add(self, n: int) -> list[RayWorker]:
        """Start `n` more actors; each takes jobs once Ray has placed and started it."""
        s = self.state.settings
        gpu = self._gpus() > 0
        resources = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": self.threads}
        cls = self.ray.remote(GenerationActor)
        added = []
        with self._lock:
            for _ in range(n):
                actor = cls.options(max_restarts=-1, max_concurrency=ACTOR_CONCURRENCY, **resources).remote(
                    str(s.models_dir) if s.models_dir else None, "cuda" if gpu else "cpu", s.precision,
                    None if gpu else self.threads, s.model_budget_bytes, s.max_image_pixels,
                    self.shipper.source if self.shipper else None)
                self._count += 1
                added.append(RayWorker(f"ray-{self._count}", actor, self.state, self.shipper))
            self.workers += added
        for worker in added:
            self.state.queue.add_worker(worker)
        return added

    def _watch(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                with self._lock:
                    self.workers = [w for w in self.workers if not w.gone]
                    missing = self.target() - len(self.workers)
                if missing > 0:
                    log.warning("ray: %d more worker(s) fit the cluster; starting them", missing)
                    self.add(missing)
            except Exception:  # noqa: BLE001  the cluster answering badly once must not end the watch
                log.exception("ray: looking at the cluster's resources failed")

    def unload(self, timeout: float = 30.0) -> None:
        """Every worker drops its loaded models (ComfyUI's /free, A1111's /unload-checkpoint); waits up
        to `timeout` s for them to answer (a worker dead meanwhile has nothing loaded)."""
        refs = [ref for w in list(self.workers) if (ref := w.unload()) is not None]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in ready:
            try:
                self.ray.get(ref)
            except self.ray.exceptions.RayError as e:
                log.warning("ray: a worker did not unload its models (%s)", str(e).splitlines()[0])

    def close(self) -> None:
        self._stop.set()
        for worker in self.workers:
            worker.close()
        if self._owns:
            self.ray.shutdown()
