"""The models folder as a collection: add a model (a local file, or a download the user asked for),
find one by name in any kind, verify files against their recorded SHA-256, remove one.

Adding checks everything before the file is in place, so a refused file leaves nothing behind:
the expected hash (the user's --sha256, Civitai's published SHA-256 or Hugging Face's LFS hash),
the format (safetensors; a pickle only if the restricted unpickler reads it, and never one named
.safetensors) and the kind, which picks the subfolder (checkpoints, loras, vae, embeddings,
controlnet, upscale_models, ...). Downloads are written under `<models>/.opensd-downloads/` as
`.part` files, resumed by the next run of the same command.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_write
from ..checkpoints.files import sniff_format
from ..errors import InvalidArgument
from .download import DownloadError, fetch
from .hashes import calculate_sha256, default_cache
from .model_kind import LABELS, model_kind, tensor_shapes
from .model_records import Records
from .model_sources import CIVITAI_ENDPOINT, HF_ENDPOINT, Remote, parse_source
from .models_dir import WEIGHT_SUFFIXES, AmbiguousName, ModelFile, ModelFolders

DOWNLOADS = ".opensd-downloads"
KINDS = tuple(LABELS)
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass
class Added:
    path: Path
    kind: str
    sha256: str
    already: bool = False     # the same file was there already (only its record was written)


def expected_hash(text: str | None) -> str | None:
    """--sha256: the full SHA-256 (64 hex digits) or its AutoV2 short form (10)."""
    if text is None:
        return None
    text = text.strip().lower()
    if not _HEX.match(text) or len(text) not in (10, 64):
        raise InvalidArgument(f"sha256: {text!r} is neither a SHA-256 (64 hex digits) nor an AutoV2 hash (10)")
    return text


def add(root: Path, source: str, *, kind: str | None = None, name: str | None = None, sha256: str | None = None,
        mode: str = "copy", hf_endpoint: str = HF_ENDPOINT, civitai_endpoint: str = CIVITAI_ENDPOINT,
        revision: str = "main", progress: bool = True, retries: int = 3) -> Added:
    """Put `source` (a local file or a remote one; see model_sources) into the models folder `root`."""
    if kind is not None and kind not in KINDS:
        raise InvalidArgument(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    wanted = expected_hash(sha256)
    where = parse_source(source, hf_endpoint, civitai_endpoint, revision)
    if isinstance(where, Path):
        return _add_local(root, where, kind, name, wanted, mode)
    if mode != "copy":
        raise InvalidArgument(f"{mode}: --move and --link are for local files; a download is always moved into place")
    return _add_download(root, where, kind, name, wanted, progress, retries)


def _add_local(root: Path, src: Path, kind: str | None, name: str | None, wanted: str | None, mode: str) -> Added:
    if not src.is_file():
        raise InvalidArgument(f"source: {src} is not a file")
    sha = calculate_sha256(src)
    _check_hash(sha, wanted, f"{src}")
    filename = _file_name(name or src.name)
    kind = _kind_of(src, filename, kind)
    dest = _destination(root, kind, _suffixed(filename, src, kind))
    if dest.exists():
        return _already(root, dest, kind, sha, str(src.resolve()))
    if mode == "move":
        shutil.move(src, dest)
    elif mode == "link":
        try:
            os.link(src, dest)  # a hard link: a symlink pointing outside the folder would not be listed
        except OSError as e:
            raise InvalidArgument(f"link: cannot hard-link {src} into {dest.parent} ({e.strerror}); copy it "
                                  "instead (the default) or --move it") from None
    else:
        with open(src, "rb") as data, atomic_write(dest) as out:
            shutil.copyfileobj(data, out, 1 << 20)
    return _placed(root, dest, kind, sha, str(src.resolve()))


def _add_download(root: Path, remote: Remote, kind: str | None, name: str | None, wanted: str | None,
                  progress: bool, retries: int) -> Added:
    downloads = root / DOWNLOADS
    part = downloads / (hashlib.sha256(remote.url.encode()).hexdigest()[:16] + ".part")
    try:
        got = fetch(remote.url, part, remote.auth, progress=progress, retries=retries)
        published = remote.sha256 or got.linked_sha256
        _check_hash(got.sha256, wanted, remote.label)
        if published and wanted is None:
            _check_hash(got.sha256, published, f"{remote.label} (the SHA-256 its host publishes)")
        filename = _file_name(name or remote.name or got.filename or Path(got.url.split("?")[0]).name)
        kind = _kind_of(part, filename, kind)
        filename = _suffixed(filename, part, kind)
        dest = _destination(root, kind, filename)
        if dest.exists():
            part.unlink()
            return _already(root, dest, kind, got.sha256, remote.label)
        os.replace(part, dest)
        return _placed(root, dest, kind, got.sha256, remote.label)
    except DownloadError:
        raise  # an interrupted transfer keeps its .part, to be resumed
    except BaseException:
        part.unlink(missing_ok=True)  # refused: nothing of it stays in the models folder
        raise
    finally:
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()


def _check_hash(sha: str, wanted: str | None, what: str) -> None:
    if wanted is not None and not sha.startswith(wanted):
        raise InvalidArgument(f"sha256: {what} has SHA-256 {sha}, not the expected {wanted}; it was not added")


def _file_name(name: str) -> str:
    name = Path(name.replace("\\", "/")).name.strip()
    if not name or name.startswith(".") or "\x00" in name:
        raise InvalidArgument(f"name: {name!r} is not a usable file name (give one with --name)")
    return name


def _kind_of(path: Path, filename: str, kind: str | None) -> str:
    """The file's kind, after checking it is safe to keep: a pickle must pass the restricted
    unpickler, and a pickle named .safetensors is refused outright."""
    fmt = sniff_format(path)
    if fmt != "safetensors":
        if filename.lower().endswith(".safetensors"):
            raise InvalidArgument(f"source: {filename} is named .safetensors but holds a pickle; refusing it")
        tensor_shapes(path)  # the restricted unpickler: a file that would run code fails here
    return kind or model_kind(path)


def _suffixed(filename: str, path: Path, kind: str) -> str:
    """`filename` with the extension its content calls for, when it has none that fits."""
    if sniff_format(path) == "safetensors":
        return filename if filename.lower().endswith(".safetensors") else Path(filename).stem + ".safetensors"
    if filename.lower().endswith(WEIGHT_SUFFIXES):
        return filename
    return filename + {"upscale_models": ".pth", "embeddings": ".pt"}.get(kind, ".ckpt")


def _destination(root: Path, kind: str, filename: str) -> Path:
    """Where a new file of `kind` goes: the kind's first folder, made if there is none."""
    folders = ModelFolders(root, include_builtin=False)
    existing = folders.folders(kind)
    return (existing[0] if existing else folders.save_folder(kind)) / filename


def _already(root: Path, dest: Path, kind: str, sha: str, source: str) -> Added:
    if calculate_sha256(dest) != sha:
        raise InvalidArgument(f"name: {dest} already exists and is a different file; give another name with "
                              "--name, or remove the old one first (opensd models remove)")
    _placed(root, dest, kind, sha, source)
    return Added(dest, kind, sha, already=True)


def _placed(root: Path, dest: Path, kind: str, sha: str, source: str) -> Added:
    Records(root).put(dest, sha256=sha, kind=kind, source=source)
    default_cache().remember(dest, sha)
    return Added(dest, kind, sha)


def find(root: Path, name: str, kind: str | None = None) -> ModelFile:
    """The model called `name` in any kind (or in `kind`): exactly one, else a one-line error."""
    folders = ModelFolders(root, include_builtin=False)
    hits = []
    for k in [kind] if kind else KINDS:
        try:
            hits.append(ModelFile(k, name, folders.resolve(k, name)))
        except AmbiguousName:
            raise
        except InvalidArgument:
            continue
    if not hits:
        raise InvalidArgument(f"name: no model named {name!r} in {root}" + ("" if kind else " (any kind)"))
    if len({h.path for h in hits}) > 1:
        found = ", ".join(f"{h.kind}: {h.path.relative_to(root.resolve())}" for h in hits)
        raise AmbiguousName(f"name: {name!r} matches models of several kinds ({found}); give --kind")
    return hits[0]


@dataclass
class Check:
    name: str       # relative to the models folder
    status: str     # ok, changed, missing, unrecorded
    detail: str = ""


def verify(root: Path, names: list[str] | None = None, record_new: bool = False) -> list[Check]:
    """Re-hash recorded files (all, or those `names` find) and compare with their records; list the
    model files with no record (recording them when `record_new`)."""
    records = Records(root)
    stored = records.load()
    if names:
        keys = [records.key(find(root, n).path) for n in names]
        missing = [k for k in keys if k not in stored]
        if missing:
            raise InvalidArgument(f"name: no record for {', '.join(missing)} (opensd models verify --record-new "
                                  "records the files as they are now)")
    else:
        keys = sorted(stored)
    out = []
    for key in keys:
        path, entry = records.root / key, stored[key]
        if not path.is_file():
            out.append(Check(key, "missing", "the file is gone"))
            continue
        sha = calculate_sha256(path)  # read again: a cached hash would not see a damaged file
        ok = sha == entry.get("sha256")
        out.append(Check(key, "ok" if ok else "changed", "" if ok else f"SHA-256 now {sha}, recorded {entry.get('sha256')}"))
    if not names:
        folders = ModelFolders(root, include_builtin=False)
        for kind in KINDS:
            for m in folders.list(kind):
                if m.path.is_file() and records.key(m.path) not in stored:
                    if record_new:
                        sha = calculate_sha256(m.path)
                        records.put(m.path, sha256=sha, kind=kind, source="already in the models folder")
                        out.append(Check(records.key(m.path), "recorded", sha))
                    else:
                        out.append(Check(records.key(m.path), "unrecorded"))
    return out


def remove(root: Path, m: ModelFile) -> None:
    """Delete the model file (or diffusers folder) and its record."""
    if m.path.is_dir():
        shutil.rmtree(m.path)
    else:
        m.path.unlink()
    Records(root).drop(m.path)
