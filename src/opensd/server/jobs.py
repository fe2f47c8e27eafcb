"""One job queue behind every API: a single worker thread runs jobs one at a time.

- Fair: pending jobs are kept per client (API token user / ComfyUI client_id / remote address) and
  taken round-robin across clients, each client's own jobs in submission order.
- Bounded: more than `max_pending` queued jobs raises QueueFull (the HTTP layer answers 429 with
  Retry-After estimated from recent job durations).
- Persistent: every job is a row in the Store; queued jobs found at start are run again.
- Controllable: cancel a queued job; interrupt (or skip within) the running one. Runners call
  `ctl.step(i, n)` from the pipeline's per-step progress callback, which raises when asked to stop,
  so a running job stops within one sampling step.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import OpenSDError
from .store import CANCELLED, DONE, FAILED, FINAL, INTERRUPTED, Job, Store

log = logging.getLogger(__name__)


class QueueFull(OpenSDError):
    def __init__(self, pending: int, retry_after: int, waiting: int | None = None):
        if waiting is None:
            text = f"queue: {pending} jobs are waiting, the limit (--queue-size)"
        else:
            text = (f"queue: {pending} jobs are queued and {waiting} more requests wait for a place, "
                    "the limits (--queue-size, --max-waiting)")
        super().__init__(f"{text}; retry in about {retry_after} s")
        self.retry_after = retry_after


class Stopped(OpenSDError):
    """Raised inside a runner when its job is interrupted (or one image of it skipped)."""

    def __init__(self, skip: bool = False):
        super().__init__("skipped" if skip else "interrupted")
        self.skip = skip


@dataclass
class Progress:
    job: Job | None = None
    step: int = 0
    steps: int = 0
    image_index: int = 0
    images: int = 1
    started: float = 0.0
    preview: Any = None  # PIL image or None
    interrupted: bool = False
    skipped: bool = False


class Control:
    """Handed to a runner with its job: progress reports and the stop check."""

    def __init__(self, queue: JobQueue, job: Job):
        self.q, self.job = queue, job

    def step(self, i: int, n: int) -> None:
        p = self.q.progress
        p.step, p.steps = i, n
        self.check()

    def image(self, index: int, count: int) -> None:
        p = self.q.progress
        p.image_index, p.images, p.step = index, count, 0
        p.skipped = False

    def preview(self, image) -> None:
        self.q.progress.preview = image

    def check(self) -> None:
        p = self.q.progress
        if p.interrupted:
            raise Stopped()
        if p.skipped:
            p.skipped = False
            raise Stopped(skip=True)

    def should_stop(self) -> bool:
        return self.q.progress.interrupted


Runner = Callable[[Job, Control], tuple[dict, Any]]  # -> (result stored in the db, live value for waiters)


class JobQueue:
    def __init__(self, store: Store, max_pending: int = 64):
        self.store = store
        self.max_pending = max_pending
        self.runners: dict[str, Runner] = {}
        self.progress = Progress()
        self.listeners: list[Callable[[str, Job], None]] = []  # ("queued"|"started"|"finished", job)
        self._clients: OrderedDict[str, deque[Job]] = OrderedDict()
        self._futures: dict[str, cf.Future] = {}
        self._cv = threading.Condition()
        self._durations: deque[float] = deque(maxlen=20)
        self._thread: threading.Thread | None = None
        self._stop = False
        for job in store.queued():
            self._push(job)

    # --- submitting and control --------------------------------------------------------------

    def register(self, kind: str, runner: Runner) -> None:
        self.runners[kind] = runner

    def submit(self, kind: str, payload: dict, client: str, job_id: str | None = None) -> Job:
        if kind not in self.runners:
            raise OpenSDError(f"no runner for job kind {kind!r}")
        with self._cv:
            if self.pending_count() >= self.max_pending:
                raise QueueFull(self.pending_count(), self.retry_after())
            job = self.store.add(Job(id=job_id or uuid.uuid4().hex, client=client or "anonymous",
                                     kind=kind, payload=payload))
            self._futures[job.id] = cf.Future()
            self._push(job)
            self._cv.notify_all()
        self._emit("queued", job)
        return job

    def future(self, job_id: str) -> cf.Future:
        """Resolves to (job, live result) when the job ends; already resolved for a finished job."""
        with self._cv:
            if job_id in self._futures:
                return self._futures[job_id]
            job = self.store.get(job_id)
            fut: cf.Future = cf.Future()
            if job is not None and job.status in FINAL:
                fut.set_result((job, None))
            else:
                self._futures[job_id] = fut
            return fut

    def cancel(self, job_id: str) -> bool:
        """Remove a queued job; True if it was waiting."""
        with self._cv:
            for client, jobs in self._clients.items():
                for job in jobs:
                    if job.id == job_id:
                        jobs.remove(job)
                        if not jobs:
                            del self._clients[client]
                        self.store.finish(job, CANCELLED, error="cancelled before it ran")
                        self._resolve(job, None)
                        return True
        return False

    def clear(self, kind: str | None = None) -> int:
        ids = [j.id for j in self.pending() if kind is None or j.kind == kind]
        return sum(self.cancel(i) for i in ids)

    def interrupt(self, job_id: str | None = None) -> bool:
        job = self.progress.job
        if job is None or (job_id is not None and job.id != job_id):
            return False
        self.progress.interrupted = True
        return True

    def skip(self) -> None:
        if self.progress.job is not None:
            self.progress.skipped = True

    def pending(self) -> list[Job]:
        """Queued jobs in the order they will run."""
        with self._cv:
            lanes = [list(q) for q in self._clients.values()]
        order = []
        while any(lanes):
            for lane in lanes:
                if lane:
                    order.append(lane.pop(0))
        return order

    def pending_count(self) -> int:
        return sum(len(q) for q in self._clients.values())

    def retry_after(self, waiting: int = 0) -> int:
        """Seconds until a retry may find room: a quarter of the time the work ahead should take."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1, int(mean * max(1, self.pending_count() + waiting) / 4) + 1)

    # --- the worker ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._work, name="opensd-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; a running job is interrupted and stays queued for the next start."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self.progress.job is not None:
            self.progress.interrupted = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _push(self, job: Job) -> None:
        self._clients.setdefault(job.client, deque()).append(job)

    def _pop(self) -> Job | None:
        with self._cv:
            while not self._stop and not self._clients:
                self._cv.wait()
            if self._stop:
                return None
            client, jobs = next(iter(self._clients.items()))
            job = jobs.popleft()
            del self._clients[client]
            if jobs:  # this client goes to the back of the line
                self._clients[client] = jobs
            self.store.started(job)
            self.progress = Progress(job=job, started=time.time())
            return job

    def _work(self) -> None:
        while True:
            job = self._pop()
            if job is None:
                return
            self._emit("started", job)
            ctl = Control(self, job)
            t0 = time.time()
            live = None
            try:
                result, live = self.runners[job.kind](job, ctl)
                if self._stop and self.progress.interrupted:
                    self.store.requeue(job)  # cut off by shutdown: run it again after the restart
                else:
                    self.store.finish(job, INTERRUPTED if self.progress.interrupted else DONE, result)
            except Stopped:
                if self._stop:
                    self.store.requeue(job)
                else:
                    self.store.finish(job, INTERRUPTED, {}, "interrupted")
            except Exception as e:
                if not isinstance(e, OpenSDError):
                    log.exception("job %s (%s) failed", job.id, job.kind)
                live = e
                self.store.finish(job, FAILED, None, str(e) or type(e).__name__)
            self._durations.append(time.time() - t0)
            self.progress = Progress()
            self._resolve(job, live)
            self._emit("finished", job)

    def _resolve(self, job: Job, live: Any) -> None:
        with self._cv:
            fut = self._futures.pop(job.id, None)
        if fut is not None and not fut.done():
            fut.set_result((job, live))

    def _emit(self, event: str, job: Job) -> None:
        for fn in list(self.listeners):
            try:
                fn(event, job)
            except Exception:
                log.exception("job listener failed")
