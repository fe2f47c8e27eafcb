"""What travels between the front door and a Ray worker for a ComfyUI graph job.

Going out: the graph (it names models, which each worker finds in its own models folder, as it does
for A1111 jobs) and the bytes of every image (or .latent file) its LoadImage-type nodes (LoadLatent)
read from the front door's input folder: never a path. The worker runs the graph in folders of its own (`Stage`).

Coming back, inside the job's websocket messages: each "executed" message carries the files its node
wrote (SaveImage's outputs, PreviewImage's temp files) as bytes. The front door (`Received`) writes
them into its own output/temp folders, numbered there as one machine numbers them, and rewrites the
names in the message and in the outputs /history keeps, so /view finds them. A worker empties each
file it sent but keeps its name taken, so its names never repeat: a cached output node of a later job
names files of an earlier one, which the front door still knows."""
from __future__ import annotations

import re
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from .. import safe_paths
from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..workflows.nodes_image import input_path, next_counter, write_numbered
from ..workflows.types import NODES, Choices
from .wire import model_name

KIND = "comfy"
FOLDERS = ("input", "output", "temp")
SHIPPED = ("output", "temp")  # the folders whose files go back
_NUMBERED = re.compile(r"^(.+)_(\d{5,})_(\.[A-Za-z0-9]+)$")  # ComfyUI's prefix_00001_.png
KEEP_NAMES = 4096  # names remembered per worker, for cached output nodes


def choices(prompt: dict) -> list[tuple[str, str]]:
    """(Choices source, value) of every literal choice input of the graph: model kinds ("checkpoints",
    "loras", ...) and "input_images"."""
    out = []
    for node in prompt.values():
        spec = NODES.get(node.get("class_type")) if isinstance(node, dict) else None
        if spec is None or not isinstance(node.get("inputs"), dict):
            continue
        for name, value in node["inputs"].items():
            kind = (spec.required.get(name) or spec.optional.get(name) or (None,))[0]
            if isinstance(kind, Choices) and isinstance(value, str):
                out.append((kind.source, value))
    return out


def checkpoints(folders, prompt: dict) -> list[str]:
    """The checkpoints the graph loads, named as in `folders` (what a worker is chosen by)."""
    names = []
    for source, value in choices(prompt):
        if source == "checkpoints":
            try:
                names.append(model_name(folders, "checkpoints", folders.resolve("checkpoints", value)))
            except InvalidArgument:  # the run reports it
                continue
    return names


def to_wire(inputs_dir: Path, payload: dict) -> dict:
    """The job as a worker gets it: the graph, its extra data, and the input images it reads, by name."""
    prompt = payload["prompt"]
    files = {}
    for source, value in choices(prompt):
        if source not in ("input_images", "input_latents"):
            continue
        path = input_path(SimpleNamespace(inputs_dir=inputs_dir), value)
        if path is not None:  # a missing one fails there as it would here, naming the image
            files[path.relative_to(Path(inputs_dir).resolve()).as_posix()] = path.read_bytes()
    return {"prompt": prompt, "extra_data": payload.get("extra_data") or {}, "inputs": files}


class Stage:
    """A worker's own input/output/temp folders for the graphs it runs."""

    def __init__(self, root: Path):
        self.dirs = {name: Path(root) / name for name in FOLDERS}
        for folder in self.dirs.values():
            folder.mkdir(parents=True, exist_ok=True)

    def receive(self, files: dict[str, bytes]) -> None:
        """The job's input images, in place of the last job's."""
        shutil.rmtree(self.dirs["input"], ignore_errors=True)
        self.dirs["input"].mkdir()
        for name, data in files.items():
            path = None if safe_paths.name_problem(name, "image") else safe_paths.inside(self.dirs["input"], name)
            if path is None:
                raise ValueError(f"image: {name!r} is not a name inside the input folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def attach(self, message) -> tuple[object, list[dict]]:
        """(message, the files an "executed" message names that were not sent yet)."""
        if not isinstance(message, dict) or message.get("type") != "executed":
            return message, []
        files = []
        for item in _items(message["data"].get("output")):
            path = safe_paths.inside(self.dirs[item["type"]], item.get("subfolder") or "", item["filename"])
            if path is None or not safe_paths.is_file(path) or path.stat().st_size == 0:
                continue  # sent before (a cached node), or not a file here
            files.append({**item, "data": path.read_bytes()})
            path.write_bytes(b"")  # sent: the name stays taken
        return message, files


def _items(ui) -> list[dict]:
    """The file entries ({filename, subfolder, type}) of a node's UI output."""
    if not isinstance(ui, dict):
        return []
    return [item for items in ui.values() if isinstance(items, list) for item in items if _is_file(item)]


def _is_file(item) -> bool:
    return isinstance(item, dict) and isinstance(item.get("filename"), str) and item.get("type") in SHIPPED


class Received:
    """The front door's side: writes the files a worker sends and knows their names here."""

    def __init__(self, dirs: Callable[[], dict[str, Path]]):
        self.dirs = dirs  # the ComfyUI folders ("output", "temp") of the front door
        self.names: OrderedDict[tuple, dict] = OrderedDict()  # the worker's (type, subfolder, file) -> ours
        self.written: list[tuple[tuple, Path]] = []  # by the job running now

    def begin(self) -> None:
        self.written = []

    def take(self, files: list[dict]) -> None:
        for f in files:
            key = (f["type"], f.get("subfolder") or "", f["filename"])
            path = self._write(*key, f["data"])
            self.written.append((key, path))
            self.names[key] = {"filename": path.name, "subfolder": key[1], "type": key[0]}
            self.names.move_to_end(key)
        while len(self.names) > KEEP_NAMES:
            self.names.popitem(last=False)

    def discard(self) -> None:
        """The worker was lost mid-job: the files its run sent go (the job runs again elsewhere), and
        what it remembered (it restarts empty)."""
        for _, path in self.written:
            path.unlink(missing_ok=True)
        self.written = []
        self.names.clear()

    def _write(self, kind: str, subfolder: str, filename: str, data: bytes) -> Path:
        for what, value in (("subfolder", subfolder), ("filename", filename)):
            if problem := safe_paths.name_problem(value, what):
                raise ValueError(problem)
        folder = safe_paths.inside(self.dirs()[kind], subfolder)
        if folder is None or "/" in filename or "\\" in filename:
            raise ValueError(f"filename: {subfolder}/{filename} leaves the {kind} folder")
        folder.mkdir(parents=True, exist_ok=True)
        numbered = _NUMBERED.match(filename)
        if numbered is None:
            return write_atomic(folder / filename, data)
        name, suffix = numbered.group(1), numbered.group(3)
        return folder / write_numbered(folder, name, next_counter(folder, name), suffix, data)[0]

    def translate(self, ui):
        """A node's UI output with this machine's file names."""
        if not isinstance(ui, dict):
            return ui
        out = {}
        for key, items in ui.items():
            if isinstance(items, list):
                items = [self._name(item) for item in items]
            out[key] = items
        return out

    def _name(self, item):
        if _is_file(item):
            return self.names.get((item["type"], item.get("subfolder") or "", item["filename"]), item)
        return item

    def message(self, message):
        """A message from the worker as the client gets it here."""
        if isinstance(message, dict) and message.get("type") == "executed":
            data = message["data"]
            return {**message, "data": {**data, "output": self.translate(data.get("output"))}}
        return message
