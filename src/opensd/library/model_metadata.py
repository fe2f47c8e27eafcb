"""A model file's safetensors metadata as people read it: kohya sd-scripts' training keys (ss_*),
Stability's ModelSpec (modelspec.*) and the rest, in AUTOMATIC1111's API shape (/sdapi/v1/loras)
and as short lines for `opensd info`.

A1111's shape: every value that is a string holding a JSON object ("{...}", e.g. ss_tag_frequency)
is given as that object, the others as they are, with ss_sd_model_name, ss_resolution,
ss_clip_skip, ss_num_train_images and ss_tag_frequency first (its networks.py order).
"""
from __future__ import annotations

import json

_A1111_FIRST = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                "ss_tag_frequency": 20}
MAX_VALUE = 160  # characters of a value shown on one line


def file_metadata(path) -> dict[str, str]:
    """A model file's safetensors metadata; {} for other formats and for files that cannot be read."""
    from ..checkpoints.files import read_metadata
    from ..errors import OpenSDError

    try:
        return read_metadata(path)
    except (OpenSDError, OSError):
        return {}


def api_metadata(metadata: dict[str, str]) -> dict:
    """The metadata as A1111's /sdapi/v1/loras gives it."""
    out: dict = {}
    for key, value in sorted(metadata.items(), key=lambda kv: _A1111_FIRST.get(kv[0], 999)):
        out[key] = _json_object(value)
    return out


def _json_object(value):
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            pass
    return value


def tag_summary(value: str, top: int = 12) -> str:
    """ss_tag_frequency ({"10_folder": {"tag": count}}) in one line: folders, tags, the most used."""
    data = _json_object(value)
    if not isinstance(data, dict):
        return _short(value)
    totals: dict[str, int] = {}
    for tags in data.values():
        for tag, n in (tags.items() if isinstance(tags, dict) else ()):
            totals[tag] = totals.get(tag, 0) + (n if isinstance(n, int) else 0)
    best = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    shown = ", ".join(f"{tag} ({n})" for tag, n in best)
    return f"{len(data)} folder(s), {len(totals)} distinct tags; most used: {shown or 'none'}"


def _dataset_dirs(value: str) -> str:
    data = _json_object(value)
    if not isinstance(data, dict):
        return _short(value)
    parts = [f"{name}: {d.get('img_count', '?')} images x {d.get('n_repeats', '?')}" for name, d in data.items()
             if isinstance(d, dict)]
    return _short("; ".join(parts))


def _buckets(value: str) -> str:
    data = _json_object(value)
    buckets = data.get("buckets") if isinstance(data, dict) else None
    if not isinstance(buckets, dict):
        return _short(value)
    sizes = [f"{'x'.join(map(str, b.get('resolution', [])))} ({b.get('count', '?')})" for b in buckets.values()
             if isinstance(b, dict)]
    return _short(f"{len(sizes)} bucket(s): " + ", ".join(sizes))


def _short(value: str) -> str:
    value = " ".join(str(value).split())
    return value if len(value) <= MAX_VALUE else f"{value[:MAX_VALUE]}... ({len(value)} characters)"


_SUMMARIES = {"ss_tag_frequency": tag_summary, "ss_dataset_dirs": _dataset_dirs, "ss_bucket_info": _buckets}


def metadata_lines(metadata: dict[str, str]) -> list[str]:
    """Grouped lines: training (ss_*), modelspec.*, then any other keys; long values shortened."""
    groups = (("training (kohya ss_*)", lambda k: k.startswith("ss_") or k.startswith("sshs_")),
              ("modelspec", lambda k: k.startswith("modelspec.")),
              ("other metadata", lambda k: True))
    lines, done = [], set()
    for title, belongs in groups:
        keys = [k for k in metadata if k not in done and belongs(k)]
        if keys:
            lines.append(f"{title}:")
            lines += [f"  {k}: {_SUMMARIES.get(k, _short)(metadata[k])}" for k in keys]
            done.update(keys)
    return lines
