"""A batch's manifest.jsonl: one line per image made (its job key, JOBS line, file, whether it is a
script's grid, seeds, infotext, file SHA-256 and how many images its job made). It is how a rerun
knows what is done: a job is done when every image its lines announce is listed and its file is there.

Lines are appended (and fsynced) as each job ends, all of a job's images in one write, so a kill
loses at most the job that was ending. At the start of a run the manifest is rewritten with only the
complete jobs whose files exist (a torn last line, a deleted image and its job's other lines go), so
it always matches the folder's files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..atomic import atomic_write

NAME = "manifest.jsonl"


class Manifest:
    def __init__(self, outdir: Path):
        self.outdir = outdir
        self.path = outdir / NAME
        self.done: dict[str, list[dict]] = {}  # job key -> its images' entries
        self._compact()

    def _compact(self) -> None:
        jobs: dict[str, dict[str, dict]] = {}
        if self.path.is_file():
            for text in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(text)
                except ValueError:
                    continue  # a line torn by a kill
                if isinstance(entry, dict) and {"key", "file", "images"} <= entry.keys():
                    jobs.setdefault(entry["key"], {})[entry["file"]] = entry
        for key, entries in jobs.items():
            kept = list(entries.values())
            if len(kept) == kept[-1]["images"] and all((self.outdir / e["file"]).is_file() for e in kept):
                self.done[key] = kept
        with atomic_write(self.path) as f:
            f.write("".join(_line(e) for entries in self.done.values() for e in entries).encode())

    def add(self, key: str, line: int, files: list[str], info: dict) -> list[dict]:
        """Record job `key` (JOBS line `line`) as done with its image `files` (relative to the folder)."""
        seeds, subseeds = info.get("all_seeds") or [], info.get("all_subseeds") or []
        texts = info.get("infotexts") or []
        grids = info.get("index_of_first_image") or 0  # a script's grids come first; seeds list the rest

        def at(values: list, k: int):
            k = max(k - grids, 0)  # a grid has its first image's seed, as its infotext says
            return values[k] if k < len(values) else None

        entries = [{"key": key, "line": line, "file": name, "index": k, "images": len(files), "grid": k < grids,
                    "seed": at(seeds, k), "subseed": at(subseeds, k),
                    "infotext": texts[k] if k < len(texts) else None,
                    "sha256": hashlib.sha256((self.outdir / name).read_bytes()).hexdigest()}
                   for k, name in enumerate(files)]
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(_line(e) for e in entries))
            f.flush()
            os.fsync(f.fileno())
        self.done[key] = entries
        return entries


def _line(entry: dict) -> str:
    return json.dumps(entry, ensure_ascii=False) + "\n"
