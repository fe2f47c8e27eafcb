"""Textual-inversion embeddings, used the way AUTOMATIC1111's webui uses them.

A file in the embeddings folder is used by writing its file name without the extension (its
*stem*) in the prompt: wherever the tokens of that name appear in the prompt, the embedding's
vectors replace them at the input of the text encoder (one token slot per vector, so an embedding
of N vectors takes N of a chunk's 75 slots). Unknown names are just text.

File formats (all read through :func:`opensd.checkpoints.files.read_state_dict`, so ``.pt``/``.bin``
pickles are loaded with ``weights_only`` and never run code):

* A1111 / original textual inversion ``.pt``: ``{"string_to_param": {"*": (N, D)}, "name": ...,
  "step": ..., ...}`` -- the one ``string_to_param`` tensor is the embedding (several terms are
  refused, as A1111 does).
* diffusers ``.bin`` (``learned_embeds.bin``): ``{"<token>": (D,) or (N, D)}``.
* ``.safetensors``: ``{"emb_params": (N, D)}`` or any other single tensor; SDXL embeddings hold one
  set per text encoder, ``{"clip_l": (N, 768), "clip_g": (N, 1280)}``.

Differences from A1111: image embeddings (``.png``/``.webp`` with data in them) are not read; an
original-repo ``.pt`` whose ``string_to_param`` is a pickled ``torch.nn.ParameterDict`` is refused by
the safe reader (re-save it as a plain dict or as safetensors); files in the folder that are not
embeddings are listed in :attr:`EmbeddingDatabase.skipped` instead of only being printed.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints.files import read_state_dict
from ..errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "Embedding", "EmbeddingDatabase", "load_embedding", "load_embeddings"]

EXTENSIONS = (".pt", ".bin", ".safetensors")
# A chunk holds 75 prompt tokens; an embedding must fit in one.
MAX_VECTORS = 75
# Real embeddings are kilobytes (75 vectors x 2048 floats is 600 KiB); anything far bigger is a
# checkpoint or LoRA put in the wrong folder, and is not read at all.
MAX_FILE_BYTES = 32 * 1024 * 1024
# Per-encoder keys of SDXL embeddings, and which of our encoder layouts each belongs to.
SDXL_KEYS = {"hf": "clip_l", "openclip": "clip_g"}


@dataclass(frozen=True, eq=False)
class Embedding:
    """One textual-inversion embedding.

    ``vectors`` maps a text-encoder key to an ``(N, width)`` float32 tensor: ``""`` for the usual
    single-encoder files (SD1, SD2), ``"clip_l"`` and ``"clip_g"`` for SDXL files.
    """

    name: str
    vectors: dict[str, torch.Tensor]
    path: Path | None = None

    @property
    def count(self) -> int:
        """How many token slots the embedding takes."""
        return next(iter(self.vectors.values())).shape[0]

    def where(self) -> str:
        return str(self.path) if self.path is not None else f"embedding {self.name!r}"

    def for_encoder(self, naming: str, width: int, n_encoders: int) -> torch.Tensor:
        """The ``(N, width)`` vectors for one text encoder of a model with ``n_encoders`` of them.

        Raises :class:`CheckpointError` naming the file when this embedding was made for another
        model (other width, or an SD1/SD2 embedding used with SDXL or the reverse).
        """
        if "" in self.vectors:
            if n_encoders != 1:
                raise CheckpointError(
                    self.where(),
                    f"embedding {self.name!r} has one set of {self.vectors[''].shape[1]}-wide vectors "
                    f"(an SD1/SD2 embedding); this model has {n_encoders} text encoders and needs an "
                    "embedding with one set per encoder (clip_l, clip_g)")
            vec = self.vectors[""]
            which = "text encoder"
        else:
            key = SDXL_KEYS.get(naming, naming)
            if key not in self.vectors:
                raise CheckpointError(
                    self.where(),
                    f"embedding {self.name!r} has vectors for {', '.join(sorted(self.vectors))} but none "
                    f"for this model's {key} text encoder")
            vec = self.vectors[key]
            which = f"{key} text encoder"
        if vec.shape[1] != width:
            raise CheckpointError(
                self.where(),
                f"embedding {self.name!r} has {vec.shape[1]}-wide vectors but this model's {which} "
                f"takes {width}-wide ones; it was made for another model family")
        return vec


def _as_vectors(path: Path, key: str, t: torch.Tensor) -> torch.Tensor:
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise CheckpointError(path, f"tensor {key!r} has shape {tuple(t.shape)}; an embedding is (vectors, width)")
    if not (t.is_floating_point()):
        raise CheckpointError(path, f"tensor {key!r} holds {t.dtype}, not floating-point vectors")
    if t.shape[0] > MAX_VECTORS:
        raise CheckpointError(path, f"embedding has {t.shape[0]} vectors; at most {MAX_VECTORS} fit in a prompt chunk")
    t = t.detach().to(torch.float32).contiguous()
    if not torch.isfinite(t).all():
        raise CheckpointError(path, f"tensor {key!r} contains NaN or infinite values")
    return t


def load_embedding(path, name: str | None = None) -> Embedding:
    """Read one embedding file; its prompt word is ``name`` or the file's stem."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(path, f"cannot read: {e.strerror or e}") from None
    if size > MAX_FILE_BYTES:
        raise CheckpointError(path, f"is {size / 2**20:.0f} MiB, far too big for a textual-inversion "
                                    "embedding (a checkpoint or LoRA in the embeddings folder?)")
    sd = read_state_dict(path)
    terms = {k: v for k, v in sd.items() if k.startswith("string_to_param.")}
    if terms:  # A1111 / original textual inversion
        if len(terms) != 1:
            raise CheckpointError(path, f"holds {len(terms)} terms in string_to_param; an embedding file must hold one")
        (key, t), = terms.items()
        vectors = {"": _as_vectors(path, key, t)}
    elif "clip_l" in sd and "clip_g" in sd:  # SDXL: one set per text encoder
        vectors = {k: _as_vectors(path, k, sd[k]) for k in ("clip_l", "clip_g")}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise CheckpointError(path, f"clip_l has {vectors['clip_l'].shape[0]} vectors but clip_g has "
                                        f"{vectors['clip_g'].shape[0]}; they must match")
    else:  # diffusers {token: tensor}, safetensors {"emb_params": tensor}, ...
        rest = {k: v for k, v in sd.items() if not k.startswith("string_to_token.")}
        if len(rest) != 1:
            shown = ", ".join(sorted(rest)[:5]) + (", ..." if len(rest) > 5 else "")
            raise CheckpointError(path, f"is not a textual-inversion embedding: it holds {len(rest)} tensors "
                                        f"({shown}) instead of one set of vectors")
        (key, t), = rest.items()
        vectors = {"": _as_vectors(path, key, t)}
    return Embedding(name if name is not None else path.stem, vectors, path)


class EmbeddingDatabase:
    """Embeddings by prompt word, and the search for them in a prompt's tokens."""

    def __init__(self, embeddings: Iterable[Embedding] = ()):
        self._by_name: dict[str, Embedding] = {}
        # Files that were not loaded: path -> the reason, in plain words.
        self.skipped: dict[str, str] = {}
        self._lookups: dict[int, tuple[object, dict]] = {}
        for e in embeddings:
            self.add(e)

    def add(self, embedding: Embedding) -> None:
        """Register ``embedding`` under its name, replacing one of the same name."""
        self._by_name[embedding.name] = embedding
        self._lookups.clear()

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Embedding:
        return self._by_name[name]

    def __iter__(self):
        return iter(self._by_name.values())

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)

    def _lookup(self, tokenizer) -> dict[int, list[tuple[tuple[int, ...], Embedding]]]:
        """first token id -> [(ids of the name, embedding)], longest names first."""
        cached = self._lookups.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
        table: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for name, emb in self._by_name.items():
            ids = tuple(tokenizer.encode(name))
            if ids:
                table.setdefault(ids[0], []).append((ids, emb))
        for entries in table.values():
            entries.sort(key=lambda x: len(x[0]), reverse=True)
        self._lookups[id(tokenizer)] = (tokenizer, table)
        return table

    def find(self, tokenizer, tokens: Sequence[int], pos: int) -> tuple[Embedding, int] | None:
        """The embedding whose name's tokens start at ``tokens[pos]`` (the longest such name), and
        how many prompt tokens that name covers; None if there is none."""
        for ids, emb in self._lookup(tokenizer).get(tokens[pos], ()):
            if tuple(tokens[pos:pos + len(ids)]) == ids:
                return emb, len(ids)
        return None

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, folder, strict: bool = False) -> EmbeddingDatabase:
        """Every ``.pt``/``.bin``/``.safetensors`` file under ``folder`` (recursively, in sorted path
        order), named by file stem. Unreadable files and files that are not embeddings are recorded
        in :attr:`skipped` (and logged), or raise with ``strict``. When two files have the same stem
        the first in path order is used and the other is skipped."""
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(folder, "embeddings folder does not exist or is not a folder")
        db = cls()
        for path in _embedding_files(folder):
            try:
                if path.stat().st_size == 0:
                    continue
                emb = load_embedding(path)
                if emb.name in db:
                    raise CheckpointError(path, f"another embedding named {emb.name!r} "
                                                f"({db[emb.name].path}) was loaded first")
            except CheckpointError as e:
                if strict:
                    raise
                db.skipped[str(path)] = e.problem
                log.warning("skipping embedding %s", e)
                continue
            except Exception as e:  # anything else a broken file can raise: keep loading the rest
                problem = f"cannot read: {e.strerror or e}" if isinstance(e, OSError) else f"cannot read: {e}"
                if strict:
                    raise CheckpointError(path, problem) from e
                db.skipped[str(path)] = problem
                log.warning("skipping embedding %s: %s", path, problem)
                continue
            db.add(emb)
        return db


def load_embeddings(folder, strict: bool = False) -> EmbeddingDatabase:
    """Shorthand for :meth:`EmbeddingDatabase.from_dir`."""
    return EmbeddingDatabase.from_dir(folder, strict)


def _embedding_files(folder: Path) -> list[Path]:
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        for f in files:
            if f.lower().endswith(EXTENSIONS):
                found.append(Path(root) / f)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())
