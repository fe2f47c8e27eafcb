"""What the job queue hands a job to: a Worker runs one job at a time and reports on itself.

The queue gives every worker its own thread, so `run` may block: the local worker runs the job right
there, a Ray worker waits on its actor. A worker that dies mid-job raises WorkerLost: only that job's
progress is lost, the queue runs the job again elsewhere."""
from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import OpenSDError


class WorkerLost(OpenSDError):
    """The worker running a job died or stopped answering; the job itself is not lost."""


@dataclass
class WorkerStats:
    """Kept by the queue for `opensd workers`."""
    job: str | None = None       # the job running now
    jobs: int = 0                # jobs finished (done, failed or interrupted)
    images: int = 0              # images they made
    busy_s: float = 0.0          # seconds spent running them
    lost: int = 0                # jobs cut off by this worker's death
    recent: deque = field(default_factory=lambda: deque(maxlen=20))  # ids of the last jobs it finished

    def images_per_minute(self) -> float | None:
        return 60.0 * self.images / self.busy_s if self.busy_s > 0 else None

    def view(self) -> dict[str, Any]:
        rate = self.images_per_minute()
        return {"current_job": self.job, "jobs_done": self.jobs, "images": self.images, "jobs_lost": self.lost,
                "busy_seconds": round(self.busy_s, 3), "images_per_minute": None if rate is None else round(rate, 3),
                "recent_jobs": list(self.recent)}


class Worker:
    """The interface; subclasses implement `run` and may refine the rest."""

    kind = "worker"

    def __init__(self, name: str):
        self.name = name
        self.stats = WorkerStats()
        self.gone = False  # removed for good (its actor cannot come back): the queue drops it

    def accepts(self, job) -> bool:
        """Whether this worker can run `job` at all."""
        return True

    def affinity(self, job) -> int:
        """How well suited it is now (e.g. it holds the job's model loaded); higher is better."""
        return 0

    def connect(self, timeout: float) -> bool:
        """Wait up to `timeout` s until it can take a job (an actor starting or restarting); False: not yet."""
        return True

    def run(self, job, ctl) -> tuple[dict, Any]:
        """Run `job` reporting through `ctl` (jobs.Control); -> (stored result, live value for waiters)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "node": socket.gethostname(), "alive": not self.gone}

    def close(self) -> None:
        """Let go of what it holds (its actor); called once when the server stops."""


Runner = Callable[[Any, Any], tuple[dict, Any]]


class LocalWorker(Worker):
    """Runs jobs in this process with the queue's runner for each job kind: one machine, one thread,
    as opensd always did. `leave(job)` True: a job other workers run (set when Ray workers join)."""

    kind = "local"

    def __init__(self, runners: dict[str, Runner], name: str = "local"):
        super().__init__(name)
        self.runners = runners
        self.leave: Callable[[Any], bool] = lambda job: False
        self.details: Callable[[], dict] = dict  # device and loaded models, filled in by the server

    def accepts(self, job) -> bool:
        return not self.leave(job)

    def run(self, job, ctl):
        return self.runners[job.kind](job, ctl)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.details()}
