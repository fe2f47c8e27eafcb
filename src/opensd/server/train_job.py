"""Training jobs (kind "train") on the one job queue: a LoRA, DreamBooth checkpoint or embedding
trained on an uploaded dataset, with the per-step loss, sample images and cancel, saved into the
LoRA / checkpoints / embeddings folder where the pickers find it.

Each job trains in a run folder `<data dir>/training/<run id>`; the trainers keep a resumable state
there, so a job stopped by cancel, by a crash or by a server restart continues where it stopped
when the same run is queued again (a restart re-queues it by itself; `resume` for a cancelled one).
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..library.model_info import checkpoint_config
from ..training.dreambooth import DreamBoothOptions, train_dreambooth
from ..training.finetune import CommonOptions
from ..training.lora_train import LoraOptions, train_lora
from ..training.textual_inversion import EmbeddingOptions, train_embedding
from .datasets import Datasets
from .file_names import plain_name
from .jobs import Control
from .models_api import find, new_model
from .train_bodies import DEFAULT_LR, LossPoint, TrainRequest

KIND = "train"
OUTPUT_KIND = {"lora": "loras", "dreambooth": "checkpoints", "embedding": "embeddings"}
SUFFIXES = {"lora": (".safetensors",), "dreambooth": (".safetensors",), "embedding": (".safetensors", ".pt")}
TRAIN = {"lora": train_lora, "dreambooth": train_dreambooth, "embedding": train_embedding}
MAX_POINTS = 400
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Plan:
    opts: CommonOptions
    output: str          # plain file name inside the output folder


class Runs:
    """The run folders and, while a job trains, its loss list (the trainer's own, read in place)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._live: dict[str, tuple[int, list[float]]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def known(run) -> bool:
        """Whether `run` is a run id (a stored record may hold anything)."""
        return isinstance(run, str) and bool(_RUN_ID.match(run))

    def folder(self, run: str) -> Path:
        if not self.known(run):
            raise InvalidArgument(f"run: {str(run)[:40]!r} is not a run id")
        return self.root / run

    def record(self, run: str, step: int, losses: list[float]) -> None:
        with self._lock:
            self._live[run] = (step, losses)

    def curve(self, run: str) -> tuple[int, list[LossPoint]]:
        """(last step, loss points) of a run: live while it trains, else as saved when it stopped."""
        with self._lock:
            live = self._live.get(run)
        if live is not None:
            step, losses = live[0], list(live[1])
            return step, _points(step, losses)
        try:
            saved = json.loads((self.folder(run) / "curve.json").read_text(encoding="utf-8"))
            return int(saved["step"]), [LossPoint(step=s, loss=v) for s, v in saved["points"]]
        except (OSError, ValueError, KeyError, TypeError):
            return 0, []

    def save_curve(self, run: str) -> None:
        with self._lock:
            live = self._live.pop(run, None)
        if live is not None:
            points = [(p.step, p.loss) for p in _points(live[0], list(live[1]))]
            write_atomic(self.folder(run) / "curve.json", json.dumps({"step": live[0], "points": points}))

    def samples(self, run: str) -> list[str]:
        folder = self.folder(run) / "samples"
        return sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []

    def sample(self, run: str, name: str) -> Path | None:
        name = plain_name(name, "name", (".png",))
        path = self.folder(run) / "samples" / name
        return path if path.is_file() else None


def _points(step: int, losses: list[float]) -> list[LossPoint]:
    """The losses (the last of which is `step`'s) averaged in equal runs down to MAX_POINTS points."""
    first = step - len(losses) + 1
    size = max(1, -(-len(losses) // MAX_POINTS))
    return [LossPoint(step=first + i + len(chunk) - 1, loss=sum(chunk) / len(chunk))
            for i in range(0, len(losses), size) for chunk in [losses[i:i + size]]]


def plan(state, datasets: Datasets, req: TrainRequest, run_dir: Path) -> Plan:
    """The trainer's options for a request, every name resolved and every value checked (at submit,
    so mistakes answer at once, and again when the job starts)."""
    folder = datasets.folder(req.dataset)
    if not datasets.images(req.dataset):
        raise InvalidArgument(f"dataset: {req.dataset!r} holds no images yet; upload some first")
    model = find(state, "checkpoints", req.model, "model").path
    cfg = checkpoint_config(model)
    step = cfg.vae.downscale * 8 if cfg is not None else None  # the trainers' bucket step
    if req.resolution is not None and step and req.resolution % step:
        raise InvalidArgument(f"resolution: {req.resolution} must be a multiple of {step} for this model")
    output = new_model(state, OUTPUT_KIND[req.type], req.output, SUFFIXES[req.type], req.overwrite, [model])
    out_path = state.folders.save_folder(OUTPUT_KIND[req.type]) / output
    common = dict(data=folder, model=model, output=out_path, run_dir=run_dir, steps=req.steps,
                  batch_size=req.batch_size, resolution=req.resolution, lr=req.lr or DEFAULT_LR[req.type],
                  seed=req.seed, flip=req.flip, sample_every=req.sample_every,
                  sample_prompts=[req.sample_prompt] if req.sample_prompt.strip() else [],
                  sample_steps=req.sample_steps, save_every=req.save_every, caption=req.caption,
                  device=state.settings.device or "cpu", progress=False)
    if req.type == "lora":
        opts = LoraOptions(**common, rank=req.rank, alpha=req.alpha, train_text_encoder=req.train_text_encoder)
    elif req.type == "dreambooth":
        opts = DreamBoothOptions(**common, instance_prompt=req.instance_prompt,
                                 class_prompt=req.class_prompt.strip() or None,
                                 num_class_images=req.num_class_images, train_text_encoder=req.train_text_encoder)
    else:
        opts = EmbeddingOptions(**common, token=req.token.strip(), init_word=req.init_word,
                                num_vectors=req.num_vectors)
    opts.validate()
    return Plan(opts, output)


def request_of(payload) -> tuple[TrainRequest, str]:
    """A stored job's request and run id (a damaged record is refused in one line)."""
    if not isinstance(payload, dict) or not Runs.known(payload.get("run")):
        raise InvalidArgument("job_id: the stored training job is damaged (no run id)")
    try:
        return TrainRequest(**{k: payload[k] for k in TrainRequest.model_fields if k in payload}), payload["run"]
    except ValidationError as e:
        first = e.errors()[0]
        raise InvalidArgument(f"job_id: the stored training job is damaged ({'.'.join(map(str, first['loc']))}: "
                              f"{first['msg']})") from None


def run(state, datasets: Datasets, runs: Runs, job, ctl: Control) -> tuple[dict, None]:
    """Train on the worker thread, reporting each step (and the newest sample as the live preview)."""
    req, run_id = request_of(job.payload)
    planned = plan(state, datasets, req, runs.folder(run_id))
    shown = set(runs.samples(run_id))

    def on_step(step: int, losses: list[float]) -> None:
        runs.record(run_id, step, losses)
        new = [n for n in runs.samples(run_id) if n not in shown]
        if new:
            shown.update(new)
            with Image.open(runs.folder(run_id) / "samples" / new[-1]) as im:
                ctl.preview(im.convert("RGB"))
        ctl.step(step, req.steps)

    try:
        TRAIN[req.type](planned.opts, on_step=on_step)
    finally:
        runs.save_curve(run_id)
    if req.type == "embedding":
        state.cache.reload_embeddings()  # loaded models learn the new word
    return {"output": planned.output, "model_kind": OUTPUT_KIND[req.type], "run": run_id}, None
