"""One job queue behind every API: workers take its jobs, each worker one job at a time.

- Workers: by default one local worker (this process, one thread) runs every job, as on one machine.
  Ray workers (opensd.distributed) may join; each worker gets its own thread here. A worker that dies
  mid-job loses only that job's progress: the job runs again first in line (on another worker when one
  is free), and fails with the reasons after `max_attempts` losses. Only the worker holding a job
  records its end, so a job finishes once.

- Fair: pending jobs are kept per client (API token user / ComfyUI client_id / remote address) and
  taken round-robin across clients, each client's own jobs in submission order. A free worker leaves a
  job to another free worker that suits it better (holds its model loaded).
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

from ..distributed.worker import LocalWorker, Worker, WorkerLost
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
    # what the job does before its first step: "" (not told), LOADING (its model) or SAMPLING (the pipeline
    # runs: the prompt is encoded, then steps; a large image's first step can take minutes on a CPU)
    phase: str = ""
    worker: str = ""  # the name of the worker running it


LOADING, SAMPLING = "loading", "sampling"


class Control:
    """Handed to a runner with its job: progress reports and the stop check, on the job's own Progress
    (several workers' jobs run side by side)."""

    def __init__(self, progress: Progress):
        self.progress, self.job = progress, progress.job

    def step(self, i: int, n: int) -> None:
        p = self.progress
        p.step, p.steps = i, n
        self.check()

    def phase(self, phase: str) -> None:
        self.progress.phase = phase

    def image(self, index: int, count: int) -> None:
        p = self.progress
        p.image_index, p.images, p.step = index, count, 0
        p.skipped = False

    def preview(self, image) -> None:
        self.progress.preview = image

    def check(self) -> None:
        p = self.progress
        if p.interrupted:
            raise Stopped()
        if p.skipped:
            p.skipped = False
            raise Stopped(skip=True)

    def should_stop(self) -> bool:
        return self.progress.interrupted


RECENTLY_RESOLVED = 16  # futures kept for callers that ask just after their job ended
Runner = Callable[[Job, Control], tuple[dict, Any]]  # -> (result stored in the db, live value for waiters)


class JobQueue:
    def __init__(self, store: Store, max_pending: int = 64, max_attempts: int = 3):
        self.store = store
        self.max_pending = max_pending
        self.max_attempts = max_attempts  # a job whose worker is lost this many times fails
        self.runners: dict[str, Runner] = {}
        self.local = LocalWorker(self.runners)
        self.workers: list[Worker] = [self.local]
        self.listeners: list[Callable[[str, Job], None]] = []  # ("queued"|"started"|"finished", job)
        self._clients: OrderedDict[str, deque[Job]] = OrderedDict()
        self._futures: dict[str, cf.Future] = {}
        # Futures resolved in the last moments: a caller that submits and then asks for the future
        # may come after a fast job ended, and must still get its live result (bounded: live
        # results hold images).
        self._resolved: OrderedDict[str, cf.Future] = OrderedDict()
        self._cv = threading.Condition()
        self._durations: deque[float] = deque(maxlen=20)
        self._running: dict[str, Progress] = {}     # job id -> its progress, oldest first
        self._idle: list[Worker] = []               # workers waiting for a job
        self._threads: dict[Worker, threading.Thread] = {}
        self._lost: dict[str, list[str]] = {}       # job id -> "worker: why" for each lost run
        self._started = self._stop = False
        for job in store.queued():
            self._push(job)

    @property
    def progress(self) -> Progress:
        """The running job's progress (the one started first when several run); a blank one when idle."""
        running = self.running()
        return running[0] if running else Progress()

    def running(self) -> list[Progress]:
        with self._cv:
            return list(self._running.values())

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
            if job_id in self._resolved:
                return self._resolved.pop(job_id)
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
        """Stop job `job_id` if it runs (default: the running job `progress` shows)."""
        running = [p for p in self.running() if job_id is None or p.job.id == job_id]
        if not running:
            return False
        running[0].interrupted = True
        return True

    def skip(self) -> None:
        running = self.running()
        if running:
            running[0].skipped = True

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
        return max(1, int(mean * max(1, self.pending_count() + waiting) / len(self.workers) / 4) + 1)

    # --- the workers ---------------------------------------------------------------------------

    def add_worker(self, worker: Worker) -> None:
        """Another worker takes jobs from now on (at once when the queue runs, else from start())."""
        with self._cv:
            self.workers.append(worker)
            if self._started:
                self._spawn(worker)
            self._cv.notify_all()

    def remove_worker(self, worker: Worker) -> None:
        """Take no more jobs to `worker` (its running job, if any, ends first)."""
        with self._cv:
            if worker in self.workers:
                self.workers.remove(worker)
            self._cv.notify_all()

    def start(self) -> None:
        with self._cv:
            if not self._started:
                self._stop, self._started = False, True
                for worker in self.workers:
                    self._spawn(worker)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the workers; running jobs are interrupted and stay queued for the next start."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
            threads = list(self._threads.values())
        for p in self.running():
            p.interrupted = True
        deadline = time.time() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.time()))
        with self._cv:
            self._threads.clear()
            self._started = False

    def _spawn(self, worker: Worker) -> None:
        thread = threading.Thread(target=self._serve, args=(worker,), name=f"opensd-jobs-{worker.name}",
                                  daemon=True)
        self._threads[worker] = thread
        thread.start()

    def _push(self, job: Job) -> None:
        self._clients.setdefault(job.client, deque()).append(job)

    def _serve(self, worker: Worker) -> None:
        while True:
            if worker.gone:
                self.remove_worker(worker)
            if self._stop or worker not in self.workers:
                return
            if not worker.connect(timeout=1.0):  # starting or restarting
                continue
            job = self._take(worker)
            if job is None:
                return
            self._run(worker, job)

    def _take(self, worker: Worker) -> Job | None:
        """The next job for `worker`, waiting for one; None when the queue stops or drops the worker."""
        with self._cv:
            self._idle.append(worker)
            try:
                while True:
                    if self._stop or worker not in self.workers or worker.gone:
                        return None
                    job = self._choose(worker)
                    if job is not None:
                        break
                    self._cv.wait(timeout=5.0)
            finally:
                self._idle.remove(worker)
            self.store.started(job)
            self._running[job.id] = Progress(job=job, started=time.time(), worker=worker.name)
            worker.stats.job = job.id
            self._cv.notify_all()  # the other free workers look again: this one is busy now
            return job

    def _choose(self, worker: Worker) -> Job | None:
        """Clients round-robin, each client's jobs in order (the first `worker` can run); a job goes to
        another free worker instead when that one suits it better."""
        for client, jobs in self._clients.items():
            job = next((j for j in jobs if worker.accepts(j)), None)
            if job is None:
                continue
            mine = self._score(worker, job)
            if any(self._score(w, job) > mine for w in self._idle if w is not worker and w.accepts(job)):
                continue
            jobs.remove(job)
            del self._clients[client]
            if jobs:  # this client goes to the back of the line
                self._clients[client] = jobs
            return job
        return None

    def _score(self, worker: Worker, job: Job) -> int:
        lost_there = any(r.startswith(worker.name + ": ") for r in self._lost.get(job.id, ()))
        return worker.affinity(job) - (100 if lost_there else 0)  # a retry goes elsewhere when it can

    def _run(self, worker: Worker, job: Job) -> None:
        progress = self._running[job.id]
        self._emit("started", job)
        t0 = time.time()
        live = None
        try:
            result, live = worker.run(job, Control(progress))
            if self._stop and progress.interrupted:
                self.store.requeue(job)  # cut off by shutdown: run it again after the restart
            else:
                self.store.finish(job, INTERRUPTED if progress.interrupted else DONE, result)
        except WorkerLost as e:
            worker.stats.lost += 1
            if self._retry(worker, job, e):
                return
            live = e
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
        elapsed = time.time() - t0
        self._durations.append(elapsed)
        with self._cv:
            self._running.pop(job.id, None)
            self._lost.pop(job.id, None)
            worker.stats.job = None
        worker.stats.jobs += 1
        worker.stats.recent.append(job.id)
        worker.stats.busy_s += elapsed
        worker.stats.images += len((job.result or {}).get("files") or [])
        self._resolve(job, live)
        self._emit("finished", job)

    def _retry(self, worker: Worker, job: Job, lost: WorkerLost) -> bool:
        """The worker running `job` was lost: queue the job again first in line and True; False when
        it ends here (lost `max_attempts` times: failed with the reasons; or the queue stops)."""
        with self._cv:
            self._running.pop(job.id, None)
            worker.stats.job = None
            reasons = self._lost.setdefault(job.id, [])
            reasons.append(f"{worker.name}: {lost}")
            log.warning("job %s: worker %s lost (%s); attempt %d of %d", job.id, worker.name, lost,
                        len(reasons), self.max_attempts)
            if self._stop:  # it comes back from the store at the next start
                self.store.requeue(job)
                return False
            if len(reasons) < self.max_attempts:
                self.store.requeue(job)
                self._clients.setdefault(job.client, deque()).appendleft(job)
                self._clients.move_to_end(job.client, last=False)
                self._cv.notify_all()
                return True
            self._lost.pop(job.id)
            self.store.finish(job, FAILED, None,
                              f"the worker running it was lost {len(reasons)} times: " + "; ".join(reasons))
        return False

    def _resolve(self, job: Job, live: Any) -> None:
        with self._cv:
            fut = self._futures.pop(job.id, None)
            if fut is not None:
                self._resolved[job.id] = fut
                while len(self._resolved) > RECENTLY_RESOLVED:
                    self._resolved.popitem(last=False)
        if fut is not None and not fut.done():
            fut.set_result((job, live))

    def _emit(self, event: str, job: Job) -> None:
        for fn in list(self.listeners):
            try:
                fn(event, job)
            except Exception:
                log.exception("job listener failed")
