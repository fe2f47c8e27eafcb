"""What `opensd info MODEL_FILE` and `opensd models info NAME` print: the file's kind, family and
size, every hash the ecosystem looks models up by, where it came from (the models folder's record)
and its training metadata.

Hashes, as Civitai names them: SHA256; AutoV1, A1111's legacy 8-digit hash; AutoV2, the 10 digits
A1111 writes as "Model hash"; AutoV3 (safetensors), 12 digits of the SHA-256 of the tensor data
past the header, which A1111 writes in "Lora hashes" unless the trainer stored sshs_model_hash.
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoints.files import read_metadata, sniff_format
from ..errors import CheckpointError
from .hashes import default_cache, legacy_model_hash, lora_hash
from .model_catalog import describe, size_of
from .model_kind import LABELS, model_kind
from .model_metadata import metadata_lines
from .models_dir import ModelFile


def hash_lines(path: Path, fmt: str) -> list[str]:
    cache = default_cache()
    sha = cache.sha256(path)
    lines = [f"sha256: {sha}", f"AutoV1 (A1111 legacy hash): {legacy_model_hash(path)}",
             f"AutoV2 (A1111 model hash): {sha[:10]}"]
    if fmt == "safetensors":
        lines.append(f"AutoV3 (tensor data): {cache.addnet_hash(path)[:12]}")
    return lines


def report(path: Path, kind: str | None = None, name: str | None = None, record: dict | None = None) -> list[str]:
    """Every line about the model file at `path` (kind detected unless given)."""
    path = Path(path)
    fmt = sniff_format(path)
    try:
        kind = kind or model_kind(path)
        what = LABELS.get(kind, kind)
    except CheckpointError as e:  # still worth its hashes and metadata
        kind, what = "unknown", f"not recognised ({e.problem})"
    entry = describe(ModelFile(kind, name or path.name, path))
    lines = [f"file: {path}", f"size: {size_of(path) / 1e6:.1f} MB ({fmt})", f"kind: {what}",
             f"family: {entry.family or 'not stated'}"]
    if entry.detail:
        lines.append(f"detail: {entry.detail}")
    lines += hash_lines(path, fmt)
    if kind == "loras":
        lines.append(f"A1111 Lora hash: {lora_hash(path)}")
    if record:
        lines.append(f"source: {record.get('source', '?')} (added {record.get('added', '?')})")
    return lines + metadata_lines(read_metadata(path))
