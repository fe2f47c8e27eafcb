"""The job queue over the worker interface: jobs go to several workers at once, a free worker leaves a
job to one holding its model, a lost worker's job runs again elsewhere exactly once (and fails after
max_attempts losses), and a worker added while the queue runs takes jobs. The workers here are small
in-process implementations of the interface; tests/test_ray_workers.py drives real Ray actors."""
from __future__ import annotations

import threading
import time

from opensd.distributed.worker import Worker, WorkerLost
from opensd.server.jobs import JobQueue
from opensd.server.store import DONE, FAILED, Store


class Held(Worker):
    """Runs a job by waiting until the test releases it; holds the models it ran."""

    def __init__(self, name, models=()):
        super().__init__(name)
        self.models, self.ran = set(models), []
        self.release = threading.Event()
        self.die_next = False

    def affinity(self, job):
        return 2 if job.payload.get("model") in self.models else 0

    def run(self, job, ctl):
        self.ran.append(job.id)
        if self.die_next:
            self.die_next = False
            raise WorkerLost(f"{self.name} was killed")
        self.release.wait(10)
        self.models.add(job.payload.get("model"))
        return {"files": [f"{job.id}.png"], "worker": self.name}, None


def queue_of(tmp_path, *workers, attempts=3):
    q = JobQueue(Store(tmp_path / "jobs.sqlite3"), max_attempts=attempts)
    q.register("gen", lambda job, ctl: ({"worker": "local"}, None))
    q.remove_worker(q.local)
    for w in workers:
        q.add_worker(w)
    return q


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_two_workers_run_two_jobs_at_once(tmp_path):
    a, b = Held("a"), Held("b")
    q = queue_of(tmp_path, a, b)
    q.start()
    jobs = [q.submit("gen", {}, "c1"), q.submit("gen", {}, "c2")]
    wait_for(lambda: len(q.running()) == 2)
    assert sorted(a.ran + b.ran) == sorted(j.id for j in jobs)
    a.release.set(), b.release.set()
    for j in jobs:
        assert q.future(j.id).result(10)[0].status == DONE
    q.stop()


def test_a_free_worker_leaves_a_job_to_the_one_holding_its_model(tmp_path):
    cold, warm = Held("cold"), Held("warm", models={"xl"})
    q = queue_of(tmp_path, cold, warm)  # the cold worker is asked first
    q.start()
    wait_for(lambda: len(q._idle) == 2)
    job = q.submit("gen", {"model": "xl"}, "c1")
    warm.release.set()
    assert q.future(job.id).result(10)[0].result["worker"] == "warm"
    # the warm one busy: the next job of that model loads on the cold one instead of waiting
    warm.release.clear()
    busy = q.submit("gen", {"model": "xl"}, "c1")
    wait_for(lambda: warm.ran == [job.id, busy.id])
    other = q.submit("gen", {"model": "xl"}, "c2")
    cold.release.set()
    assert q.future(other.id).result(10)[0].result["worker"] == "cold"
    warm.release.set()
    q.stop()


def test_a_lost_worker_costs_only_progress_the_job_finishes_once_elsewhere(tmp_path):
    a, b = Held("a", models={"m"}), Held("b")  # a holds the model, so a gets the job first
    a.die_next = True
    q = queue_of(tmp_path, a, b)
    b.release.set()
    q.start()
    wait_for(lambda: len(q._idle) == 2)
    job = q.submit("gen", {"model": "m"}, "c1")
    done, _ = q.future(job.id).result(10)
    assert done.status == DONE and done.result["worker"] == "b"
    assert a.ran == [job.id] and b.ran == [job.id]          # tried on a, finished on b
    assert a.stats.lost == 1 and b.stats.jobs == 1 and b.stats.images == 1
    stored = q.store.get(job.id)
    assert stored.status == DONE and stored.result["worker"] == "b"
    q.stop()


def test_a_job_whose_worker_is_lost_three_times_fails_with_the_reasons(tmp_path):
    class Dies(Worker):
        def run(self, job, ctl):
            raise WorkerLost("process killed (signal 9)")

    q = queue_of(tmp_path, Dies("only"))
    q.start()
    job = q.submit("gen", {}, "c1")
    done, live = q.future(job.id).result(10)
    assert done.status == FAILED and isinstance(live, WorkerLost)
    assert done.error.startswith("the worker running it was lost 3 times: only: process killed")
    assert q.store.get(job.id).status == FAILED
    q.stop()


def test_a_worker_added_while_running_takes_jobs(tmp_path):
    first = Held("first")
    q = queue_of(tmp_path, first)
    q.start()
    jobs = [q.submit("gen", {}, "c1") for _ in range(2)]
    wait_for(lambda: first.ran == [jobs[0].id])  # the second waits: the only worker is busy
    late = Held("late")
    late.release.set()
    q.add_worker(late)
    assert q.future(jobs[1].id).result(10)[0].result["worker"] == "late"
    first.release.set()
    assert q.future(jobs[0].id).result(10)[0].result["worker"] == "first"
    q.stop()


def test_the_default_is_one_local_worker_running_the_registered_runners(tmp_path):
    q = JobQueue(Store(tmp_path / "jobs.sqlite3"))
    q.register("gen", lambda job, ctl: ({"worker": "local", "step": ctl.step(1, 2)}, "live"))
    assert [w.name for w in q.workers] == ["local"]
    q.start()
    job = q.submit("gen", {}, "c1")
    done, live = q.future(job.id).result(10)
    assert done.status == DONE and done.result["worker"] == "local" and live == "live"
    q.stop()


def test_a_future_asked_for_after_a_fast_job_ended_still_has_its_live_result(tmp_path):
    q = JobQueue(Store(tmp_path / "jobs.sqlite3"))
    q.register("gen", lambda job, ctl: ({"worker": "local"}, "live"))
    q.start()
    job = q.submit("gen", {}, "c1")
    wait_for(lambda: q.store.get(job.id).status == DONE)  # ended before anyone asked
    done, live = q.future(job.id).result(10)
    assert done.status == DONE and live == "live"
    q.stop()
