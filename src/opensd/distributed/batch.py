"""Batch generation (`opensd batch JOBS.jsonl -o OUTDIR`): every line of JOBS.jsonl is an A1111
txt2img request (img2img when it has init_images), validated by the A1111 API's own request model and
planning (a1111_api.prepare), so a line means what the same body means to /sdapi/v1. The lines run as
jobs on the server's job queue, on this machine's worker or on Ray workers, which brings retries of a
lost worker's job for free; the images and manifest.jsonl (manifest.py) go to OUTDIR.

A line with a selectable script (X/Y/Z plot, prompt matrix, prompts from file, SD upscale) is one job
that saves every image the script makes: its grids first, then every cell, even those A1111's answer
would leave out (as A1111 saves them when it saves to disk). A line that cannot run (bad JSON, field,
script or script argument) is refused alone, in one line naming it; the others run.

Each line's key is a hash of its normalised request (the request model's full field set with every
default, the checkpoint and VAE names, and which occurrence of that same request it is), which names
its image files; a rerun skips the keys the manifest holds complete."""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from ..errors import InvalidArgument, OpenSDError
from ..server import a1111_api
from ..server.a1111_models import Img2ImgRequest, Txt2ImgRequest
from ..server.store import DONE
from . import wire
from .manifest import Manifest


@dataclass
class Line:
    number: int       # in JOBS.jsonl, from 1
    key: str
    payload: dict
    ignored: list[str]  # fields the request model does not know (reported, as A1111 reports them)

    @property
    def images(self) -> int:
        """How many images its job saves (with a script: the grids and every cell)."""
        return self.payload["images"]


def read_lines(state, path: Path) -> tuple[list[Line], list[str]]:
    """Every line of `path` validated and planned: (the lines that can run, one message per line that
    cannot, naming it). A file that cannot be read, or holds no lines at all, is one error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InvalidArgument(f"jobs: {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"jobs: cannot read {path} ({e})") from None
    lines, refused, seen = [], [], Counter()
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            line, normal = _plan(state, number, raw)
        except InvalidArgument as e:
            refused.append(f"{path.name}:{number}: {e}")
            continue
        seen[normal] += 1
        line.key = hashlib.sha256(f"{normal}\n{seen[normal]}".encode()).hexdigest()[:20]
        lines.append(line)
    if not lines and not refused:
        raise InvalidArgument(f"jobs: {path} holds no requests (one JSON object per line)")
    return lines, refused


def _plan(state, number: int, raw: str) -> tuple[Line, str]:
    """One JSONL line as a Line (its key still to be set) and its normalised request."""
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise InvalidArgument(f"not a JSON object ({e})") from None
    if not isinstance(body, dict):
        raise InvalidArgument("not a JSON object (one A1111 txt2img/img2img request per line)")
    mode = "img2img" if body.get("init_images") else "txt2img"
    try:
        req = (Img2ImgRequest if mode == "img2img" else Txt2ImgRequest).model_validate(body)
        payload = a1111_api.prepare(state, req, mode, every_image=True)
        names = wire.models_of(state.folders, payload)[:2]
    except ValidationError as e:
        err = e.errors()[0]
        raise InvalidArgument(f"{'.'.join(str(x) for x in err['loc']) or 'line'}: {err['msg']}") from None
    except OpenSDError as e:
        raise InvalidArgument(str(e)) from None
    normal = json.dumps({"mode": mode, "request": req.model_dump(mode="json"), "models": names}, sort_keys=True)
    return Line(number, "", payload, sorted(req.model_extra or {})), normal


def run(state, todo: list[Line], manifest: Manifest, on_done: Callable[[Line, int], None],
        window: int) -> list[tuple[Line, str]]:
    """Run the lines `todo` on the state's queue (it must be started), at most `window` queued at a
    time; record each finished job in the manifest and call on_done(line, images). -> (line, why) failed.
    Images are saved where the A1111 API saves them, under the outputs folder (txt2img-images/...),
    named by the line's key."""
    queue = state.queue
    waiting: dict[cf.Future, Line] = {}
    lines: Iterator[Line] = iter(todo)
    failed = []
    while True:
        while len(waiting) < window and (line := next(lines, None)) is not None:
            job = queue.submit(wire.KIND, line.payload, "batch", job_id=line.key)
            waiting[queue.future(job.id)] = line
        if not waiting:
            return failed
        finished, _ = cf.wait(waiting, return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            line = waiting.pop(fut)
            job, _ = fut.result()
            files = (job.result or {}).get("files") or []
            if job.status != DONE or not files:
                failed.append((line, job.error or f"{job.status} with {len(files)} images"))
                continue
            manifest.add(line.key, line.number, files, job.result.get("info") or {})
            on_done(line, len(files))
