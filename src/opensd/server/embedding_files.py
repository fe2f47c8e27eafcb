"""The embeddings folder as the server sees it now: textual inversions dropped in (or trained) while
it serves are used from the next job on, as A1111 rescans its folder before each generation.

One database object per state of the folder (its files' paths, sizes and modification times), shared
by every loaded pipeline, the token counter and the A1111 embeddings list."""
from __future__ import annotations

import threading

from ..one_loaded import file_stamp
from ..text.embeddings import EmbeddingDatabase, load_embeddings


class EmbeddingFiles:
    def __init__(self, folders):
        self.folders = folders
        self._key: tuple | None = None
        self._db = EmbeddingDatabase()
        self._lock = threading.Lock()

    def _state(self) -> tuple:
        found = []
        for m in self.folders.list("embeddings"):
            try:
                found.append(file_stamp(m.path))
            except OSError:  # removed while listing
                continue
        return tuple(found)

    def get(self) -> EmbeddingDatabase:
        """The embeddings of the folder as it is now (re-read only when its files changed)."""
        key = self._state()
        with self._lock:
            if key != self._key:
                self._db = self._load()
                self._key = key
            return self._db

    def _load(self) -> EmbeddingDatabase:
        """Every embeddings folder's files; a name already taken by an earlier folder is skipped."""
        db = EmbeddingDatabase()
        for folder in self.folders.folders("embeddings"):
            part = load_embeddings(folder)
            db.skipped.update(part.skipped)
            for emb in part:
                if emb.name in db:
                    db.skipped[str(emb.path)] = f"another embedding named {emb.name!r} ({db[emb.name].path}) came first"
                else:
                    db.add(emb)
        return db

    def refresh(self) -> EmbeddingDatabase:
        """Re-read the folder even if no file looks changed (A1111's refresh-embeddings)."""
        with self._lock:
            self._key = None
        return self.get()
