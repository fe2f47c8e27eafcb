"""Model files shipped to Ray workers by content hash (`opensd serve --ray ... --ray-ship-models`), for
nodes that do not share the front door's models folder.

The front door lists each job's model files (checkpoint, VAE, LoRAs of the prompt tags, ControlNets,
refiner, hires upscaler, a graph's model inputs, and the embeddings) as {kind, name, SHA-256, size},
the SHA-256 from its hash cache, and offers those files to a `ModelSource` actor on its own node,
which serves chunks of an offered hash and nothing else: no path ever leaves the front door. A
worker missing a file fetches it through Ray's object store in chunks, checks its SHA-256 and keeps
it in its node's store (`ShippedModels`: OPENSD_CACHE_DIR/shipped-models/sha256/<hash>), once per node:
the workers of a node share the store and take turns under a file lock. The worker's models folder is
then a tree of names linked to those files, laid out like a models folder, so names resolve there as
they do on the front door."""
from __future__ import annotations

import fcntl
import hashlib
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import safe_paths
from ..atomic import atomic_write
from ..errors import InvalidArgument
from ..library.hashes import default_cache, default_cache_dir
from ..library.models_dir import BUILTIN_DIR, LAYOUT, ModelFolders
from .wire import model_name, unit_kind

CHUNK = 4 << 20       # bytes per fetch
AHEAD = 2             # fetches in flight


class ModelSource:
    """Ray actor on the front door's node: serves chunks of the files the front door offered."""

    def __init__(self):
        self.files: dict[str, str] = {}  # SHA-256 -> path on this node
        self.sent: dict[str, int] = {}   # SHA-256 -> times a worker fetched it whole

    def offer(self, sha256: str, path: str) -> None:
        self.files[sha256] = path

    def chunk(self, sha256: str, offset: int, size: int) -> bytes:
        path = self.files.get(sha256)
        if path is None:
            raise InvalidArgument(f"ray-ship-models: no model with SHA-256 {sha256[:12]} was offered by the front door")
        with open(path, "rb") as f:
            f.seek(max(0, offset))
            return f.read(max(0, min(size, CHUNK)))

    def fetched(self, sha256: str) -> None:
        self.sent[sha256] = self.sent.get(sha256, 0) + 1

    def stats(self) -> dict[str, int]:
        return dict(self.sent)


class Shipper:
    """The front door's side: the source actor, and each job's list of files."""

    def __init__(self, ray, folders: ModelFolders):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.source = ray.remote(ModelSource).options(num_cpus=0, max_concurrency=8,
                                                      scheduling_strategy=here).remote()
        self.ray, self.folders = ray, folders
        self._offered: set[tuple[str, str]] = set()

    def entries(self, files: list[tuple[str, Path]]) -> list[dict]:
        """{kind, name, sha256, size, suffix} for each (kind, path) a job needs, offered to the source
        (the built-in model's files are on every node and are not shipped)."""
        out, offers = [], []
        for kind, path in dict.fromkeys(files):
            path = Path(path).resolve()
            if path.is_relative_to(BUILTIN_DIR.resolve()):
                continue
            name = model_name(self.folders, kind, path)
            if not path.is_file():
                raise InvalidArgument(f"ray-ship-models: {kind} {name} is a folder (diffusers layout); only "
                                      "single files are shipped: convert it (opensd models convert) or share "
                                      "the models folder with every node")
            sha = default_cache().sha256(path)
            if (sha, str(path)) not in self._offered:
                offers.append(self.source.offer.remote(sha, str(path)))
                self._offered.add((sha, str(path)))
            out.append({"kind": kind, "name": name, "sha256": sha, "size": path.stat().st_size,
                        "suffix": path.suffix.lower()})
        self.ray.get(offers)
        return out


def a1111_files(state, payload: dict) -> list[tuple[str, Path]]:
    """(kind, path) of every model file an A1111 generation job reads."""
    from ..adapters.hypernetwork import prompt_hypernet_tags
    from ..adapters.lora import prompt_lora_tags

    folders = state.folders
    files = [("checkpoints", Path(payload["model_path"]))]
    if payload.get("vae_path"):
        files.append(("vae", Path(payload["vae_path"])))
    if payload.get("refiner"):
        files.append(("checkpoints", Path(payload["refiner"]["path"])))
    for u in payload.get("controlnet") or []:
        files.append((unit_kind(folders, u), Path(u["path"])))
        if u.get("encoder"):  # an IP-Adapter unit's CLIP image encoder
            files.append(("clip_vision", Path(u["encoder"])))
        files += [("insightface", Path(p)) for p in (u.get("faces") or {}).values()]  # FaceID's InsightFace pack
        weights = u.get("weights")  # its preprocessor's model file, or files ({"body", "hand", ...})
        for w in (weights.values() if isinstance(weights, dict) else [weights]):
            if w:
                files.append(("preprocessors", Path(w)))
    hires = payload["kwargs"].get("hires") or {}
    texts = (payload.get("prompt"), payload.get("negative_prompt"), hires.get("prompt"), hires.get("negative_prompt"))
    for tag in (t for text in texts if text for t in prompt_lora_tags(text)):
        files += _found(folders, "loras", tag.name)
    for tag in (t for text in texts if text for t in prompt_hypernet_tags(text)):
        files += _found(folders, "hypernetworks", tag.name)
    if hires.get("upscaler"):
        upscaler = state.cache.upscalers.find(hires["upscaler"], "hr_upscaler")
        if isinstance(upscaler, Path):
            files.append(("upscale_models", upscaler))
    return files + embeddings(folders)


def graph_files(folders: ModelFolders, choices: list[tuple[str, str]]) -> list[tuple[str, Path]]:
    """(kind, path) of the model files a ComfyUI graph's inputs name (comfy_wire.choices), and the embeddings."""
    files = []
    for kind, value in choices:
        if kind in LAYOUT:
            files += _found(folders, kind, value)
    return files + embeddings(folders)


def embeddings(folders: ModelFolders) -> list[tuple[str, Path]]:
    return [("embeddings", m.path) for m in folders.list("embeddings")]


def _found(folders: ModelFolders, kind: str, name: str) -> list[tuple[str, Path]]:
    try:
        return [(kind, folders.resolve(kind, name))]
    except InvalidArgument:  # not there: the job reports it where it runs, as on one machine
        return []


class ShippedModels:
    """A node's store of shipped model files, and the tree of names a worker's models folder is."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir() / "shipped-models"
        self.blobs, self.names = self.root / "sha256", self.root / "names"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.names.mkdir(parents=True, exist_ok=True)

    def folders(self) -> ModelFolders:
        return ModelFolders(self.names)

    def ensure(self, entries: list[dict], chunks) -> list[str]:
        """Every entry's file in the store (fetched with `chunks(entry) -> iterator of bytes` when this
        node has not got it) and under its name; -> the SHA-256s fetched now."""
        fetched = []
        for entry in entries:
            blob = self.blobs / (_hex(entry["sha256"]) + _suffix(entry.get("suffix")))
            if not blob.is_file():
                with _locked(blob.with_suffix(blob.suffix + ".lock")):
                    if not blob.is_file():  # another worker of this node fetched it meanwhile
                        self._fetch(entry, blob, chunks(entry))
                        fetched.append(entry["sha256"])
            self._link(entry, blob)
        return fetched

    def _fetch(self, entry: dict, blob: Path, chunks: Iterator[bytes]) -> None:
        digest, size = hashlib.sha256(), 0
        with atomic_write(blob) as f:  # an exception leaves no blob and no temp file
            for data in chunks:
                digest.update(data)
                f.write(data)
                size += len(data)
            if digest.hexdigest() != entry["sha256"] or size != entry["size"]:
                raise InvalidArgument(f"ray-ship-models: {entry['kind']} {entry['name']}: the bytes received do not "
                                      f"match its SHA-256 {entry['sha256'][:12]} (changed on the front door while "
                                      "it was sent?); the job can be run again")

    def _link(self, entry: dict, blob: Path) -> None:
        kind, name = entry["kind"], entry["name"]
        folder = self.names / LAYOUT[kind][0] if kind in LAYOUT else None
        problem = safe_paths.name_problem(name, kind)
        path = None if folder is None or problem else safe_paths.inside(folder, name)
        if path is None or path == folder.resolve():
            raise InvalidArgument(problem or f"ray-ship-models: {kind} {name!r} is not a model name")
        if path.is_file() and path.samefile(blob):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.link")  # workers of one process link at once
        os.link(blob, tmp)
        os.replace(tmp, path)  # the name now means these bytes (the front door's file under it changed)


def _hex(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise InvalidArgument(f"ray-ship-models: {sha256[:80]!r} is not a SHA-256")
    return sha256


def _suffix(suffix) -> str:
    return suffix if isinstance(suffix, str) and suffix[1:].isalnum() and suffix.startswith(".") else ""


@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` (a file beside the one being made) across this node's processes."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing lets the lock go


def ray_chunks(ray, source, entry: dict) -> Iterator[bytes]:
    """The file `entry` names, from the front door's source, `AHEAD` chunks in flight at a time."""
    offsets = iter(range(0, entry["size"], CHUNK))
    pending = [source.chunk.remote(entry["sha256"], o, CHUNK) for o in _take(offsets, AHEAD)]
    while pending:
        data = ray.get(pending.pop(0))
        pending += [source.chunk.remote(entry["sha256"], o, CHUNK) for o in _take(offsets, 1)]
        yield data
    source.fetched.remote(entry["sha256"])


def _take(it: Iterator[int], n: int) -> list[int]:
    return [x for _, x in zip(range(n), it)]
