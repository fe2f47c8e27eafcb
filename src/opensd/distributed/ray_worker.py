"""The front door's side of one Ray actor (actor.py): a Worker the job queue hands A1111 generations
and ComfyUI graphs to.

It sends the job with model names (wire.py, comfy_wire.py), polls the actor for progress and a graph's
websocket messages while passing on interrupt and skip, and saves what comes back as a local job does
(a1111_run.record; the graph's files into the ComfyUI folders). When the actor dies (its process
killed, its node gone) the job raises WorkerLost and what its run had sent is dropped; Ray starts the
actor again and `connect` waits for it. A worker that stops answering is killed, so a result it might
still send is never taken: only the queue's current holder of a job records it."""

from __future__ import annotations

import io
import time
from pathlib import Path

from ..server import a1111_run
from ..server.jobs import Stopped
from . import comfy_wire, shipping, wire
from .worker import Worker, WorkerLost

POLL_S = 0.25        # progress poll interval while a job runs
ANSWER_S = 120.0     # a poll not answered in this long: the actor is hung, and treated as lost


class RayWorker(Worker):
    kind = "ray"

    def __init__(self, name: str, actor, state, shipper=None):
        super().__init__(name)
        self.actor, self.state = actor, state
        self.shipper = shipper  # shipping.Shipper when the front door ships the model files
        self.info: dict = {}
        self.held: list[dict] = []
        self.answer_s = ANSWER_S
        self._ready = False
        self._hello = None  # the pending describe() call while the actor starts
        self.received = comfy_wire.Received(lambda: state.comfy.dirs)

    def accepts(self, job) -> bool:
        return wire.remote(job)

    def affinity(self, job) -> int:
        if job.kind == comfy_wire.KIND:
            names = comfy_wire.checkpoints(self.state.folders, job.payload["prompt"])
            return 2 * any(held["model"] in names for held in self.held)
        try:
            model, vae, loras = wire.models_of(self.state.folders, job.payload)
        except Exception:  # noqa: BLE001  a model gone from the folder: the job's own run reports it
            return 0
        for held in self.held:
            if (held["model"], held["vae"]) == (model, vae):
                return 2 + (tuple(held["loras"]) == loras)
        return 0

    def connect(self, timeout: float) -> bool:
        import ray

        if self._ready:
            return True
        if self._hello is None:
            self._hello = self.actor.describe.remote()
        if not ray.wait([self._hello], timeout=timeout)[0]:
            return False  # still being placed or starting
        try:
            self.info = ray.get(self._hello)
        except ray.exceptions.ActorDiedError:
            self.gone = True  # it cannot come back; the pool starts another
            return False
        except ray.exceptions.RayActorError:
            return False  # restarting: ask again
        finally:
            self._hello = None
        self.held, self._ready = self.info.pop("held", []), True
        return True

    def run(self, job, ctl):
        if job.kind == comfy_wire.KIND:
            return self._run_graph(job, ctl)
        p = job.payload
        job_wire = wire.to_wire(self.state.folders, self.state.wildcards, p)
        if self.shipper is not None:
            job_wire["ship"] = self.shipper.entries(shipping.a1111_files(self.state, p))
        out = self._call(self.actor.run, job, ctl, job_wire)
        if out.get("stopped"):
            raise Stopped(skip=out["skip"])
        made = out["batch"]
        made.vae = Path(p["vae_path"]) if p.get("vae_path") else None  # the front door's file, for the info
        return a1111_run.record(self.state, job, a1111_run.request_of(p), made)

    def _run_graph(self, job, ctl):
        job_wire = comfy_wire.to_wire(self.state.comfy.dirs["input"], job.payload)
        if self.shipper is not None:
            files = shipping.graph_files(self.state.folders, comfy_wire.choices(job_wire["prompt"]))
            job_wire["ship"] = self.shipper.entries(files)
        out = self._call(self.actor.run_graph, job, ctl, job_wire)
        result = out["result"]
        result["outputs"] = {node: self.received.translate(ui) for node, ui in result["outputs"].items()}
        return result, result

    def _call(self, method, job, ctl, job_wire: dict) -> dict:
        """Run `method` of the actor for `job`, relaying its progress and messages until it answers."""
        import ray

        self.received.begin()
        ref = method.remote(job.id, job_wire)
        try:
            while not ray.wait([ref], timeout=POLL_S)[0]:
                self._relay(job, ctl.progress)
            out = ray.get(ref)
        except ray.exceptions.RayTaskError as e:  # the job failed there: its own error, as if run here
            raise e.cause if isinstance(e.cause, Exception) else e from None
        except ray.exceptions.GetTimeoutError:
            ray.kill(self.actor, no_restart=False)  # hung: restarted, so a late result never arrives
            self._lost()
            raise WorkerLost(f"no answer in {self.answer_s:g} s") from None
        except ray.exceptions.RayActorError as e:
            self._lost()
            raise WorkerLost(_reason(e)) from None
        self._deliver(job, out.get("messages") or [])
        self.held = out["held"]
        return out

    def _relay(self, job, progress) -> None:
        import ray
        from PIL import Image

        skip, progress.skipped = progress.skipped, False
        snap = ray.get(self.actor.poll.remote(job.id, progress.interrupted, skip), timeout=self.answer_s)
        progress.step, progress.steps = snap["step"], snap["steps"]
        progress.image_index, progress.images = snap["image_index"], snap["images"]
        progress.phase = snap.get("phase", "")  # an older worker does not tell
        if snap["preview"]:
            progress.preview = Image.open(io.BytesIO(snap["preview"]))
        self._deliver(job, snap["messages"])

    def _deliver(self, job, messages: list) -> None:
        """A graph's websocket messages to the client that queued it, with the files they name."""
        sid = job.payload.get("client_id")
        for message, files in messages:
            self.received.take(files)
            self.state.comfy.send(sid, self.received.message(message))

    def _lost(self) -> None:
        self._ready, self.held = False, []
        self.received.discard()

    def unload(self):
        """Ask the actor to drop its models; -> the pending answer (None when it is not up)."""
        if not self._ready:
            return None
        self.held = []
        return self.actor.unload.remote()

    def describe(self) -> dict:
        return {**super().describe(), **self.info, "alive": self._ready and not self.gone, "loaded": self.held}

    def close(self) -> None:
        import ray

        try:
            ray.kill(self.actor, no_restart=True)
        except Exception:  # noqa: BLE001  already gone, or Ray shut down first
            pass


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else 'the actor died'} (at {time.strftime('%H:%M:%S')})"
