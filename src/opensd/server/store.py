"""SQLite persistence for the job queue: every job (queued, running, finished) is a row, so a restart
keeps the queue and the history. A job found "running" at open was cut off by a crash or stop and is
queued again. One connection guarded by a lock; WAL journal so readers do not block the worker.

The history is bounded (a client posting 60 MiB graphs over and over filled the disk, and
GET /history read every one back into memory): each time a job finishes, finished jobs past the
newest KEEP_JOBS, or past KEEP_BYTES of stored request and result counted from the newest, are
forgotten (their image files stay). Queued and running jobs are never dropped."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import safe_json

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = (
    "queued", "running", "done", "failed", "cancelled", "interrupted")
FINAL = (DONE, FAILED, CANCELLED, INTERRUPTED)
KEEP_JOBS = 10_000    # ComfyUI's own history holds at most 10,000 prompts
KEEP_BYTES = 1 << 30  # JSON of requests and results (A1111 img2img requests hold their images)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    client TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    run_order INTEGER,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
"""
# the stored bytes of a row, read for pruning from the index alone (never the rows' large columns)
_SIZE = """
ALTER TABLE jobs ADD COLUMN size INTEGER;
UPDATE jobs SET size = length(CAST(payload AS BLOB)) + COALESCE(length(CAST(result AS BLOB)), 0);
"""
_SIZE_INDEX = "CREATE INDEX IF NOT EXISTS jobs_retention ON jobs(status, seq, size)"


@dataclass
class Job:
    id: str
    client: str
    kind: str
    payload: dict
    status: str = QUEUED
    created: float = field(default_factory=time.time)
    seq: int | None = None
    started: float | None = None
    finished: float | None = None
    run_order: int | None = None
    result: dict | None = None
    error: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "client": self.client, "kind": self.kind, "status": self.status,
                "created": self.created, "started": self.started, "finished": self.finished,
                "run_order": self.run_order, "result": self.result, "error": self.error}


class Store:
    def __init__(self, path: Path, keep_jobs: int = KEEP_JOBS, keep_bytes: int = KEEP_BYTES):
        path = Path(path)
        self.keep_jobs, self.keep_bytes = keep_jobs, keep_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.text_factory = lambda b: b.decode("utf-8", "replace")  # a damaged row still reads
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            if "size" not in {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}:
                self._db.executescript(_SIZE)  # a store made before the history was bounded
            self._db.execute(_SIZE_INDEX)
            self._db.execute("UPDATE jobs SET status=?, started=NULL WHERE status=?", (QUEUED, RUNNING))

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job: Job) -> Job:
        payload = json.dumps(job.payload)
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (id, client, kind, payload, status, created, size) VALUES (?,?,?,?,?,?,?)",
                (job.id, job.client, job.kind, payload, job.status, job.created, _bytes(payload)))
            job.seq = cur.lastrowid
        return job

    def started(self, job: Job) -> None:
        with self._lock:
            (order,) = self._db.execute("SELECT COALESCE(MAX(run_order), 0) + 1 FROM jobs").fetchone()
            job.status, job.started, job.run_order = RUNNING, time.time(), order
            self._db.execute("UPDATE jobs SET status=?, started=?, run_order=? WHERE id=?",
                             (RUNNING, job.started, order, job.id))

    def finish(self, job: Job, status: str, result: dict | None = None, error: str | None = None) -> None:
        job.status, job.finished, job.result, job.error = status, time.time(), result, error
        stored = None if result is None else json.dumps(result)
        with self._lock:
            self._db.execute("UPDATE jobs SET status=?, finished=?, result=?, error=?, size=COALESCE(size, 0) + ? "
                             "WHERE id=?", (status, job.finished, stored, error, _bytes(stored or ""), job.id))
            self._prune()

    def _prune(self) -> None:
        """Forget finished jobs past the newest keep_jobs or past keep_bytes counted from the newest
        (the newest one always stays); with the lock held."""
        marks = ",".join("?" * len(FINAL))
        self._db.execute(
            f"DELETE FROM jobs WHERE seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER w AS n, "
            f"SUM(COALESCE(size, 0)) OVER w AS total FROM jobs WHERE status IN ({marks}) "
            f"WINDOW w AS (ORDER BY seq DESC)) WHERE n > 1 AND (n > ? OR total > ?))",
            (*FINAL, self.keep_jobs, self.keep_bytes))

    def requeue(self, job: Job) -> None:
        """Back to the queue (a job cut off by a shutdown runs again at the next start)."""
        job.status, job.started, job.run_order = QUEUED, None, None
        with self._lock:
            self._db.execute("UPDATE jobs SET status=?, started=NULL, run_order=NULL WHERE id=?", (QUEUED, job.id))

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def queued(self) -> list[Job]:
        return self._select("SELECT * FROM jobs WHERE status=? ORDER BY seq", (QUEUED,))

    def history(self, kind: str | None = None, limit: int = 200) -> list[Job]:
        marks = ",".join("?" * len(FINAL))
        if kind is None:
            return self._select(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq DESC LIMIT ?",
                                (*FINAL, limit))
        return self._select(f"SELECT * FROM jobs WHERE status IN ({marks}) AND kind=? ORDER BY seq DESC LIMIT ?",
                            (*FINAL, kind, limit))

    def all(self) -> list[Job]:
        return self._select("SELECT * FROM jobs ORDER BY seq", ())

    def delete(self, job_ids: list[str] | None = None, kind: str | None = None) -> None:
        """Forget finished jobs: the given ids, or all of `kind` (their image files stay)."""
        marks = ",".join("?" * len(FINAL))
        with self._lock:
            if job_ids is not None:
                for jid in job_ids:
                    self._db.execute(f"DELETE FROM jobs WHERE id=? AND status IN ({marks})", (jid, *FINAL))
            else:
                self._db.execute(f"DELETE FROM jobs WHERE kind=? AND status IN ({marks})", (kind, *FINAL))

    def _select(self, sql: str, args: tuple) -> list[Job]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_job(r) for r in rows]


def _job(row: sqlite3.Row) -> Job:
    """A row as a Job, whatever the row holds (written by an older version, by hand, or damaged):
    unreadable JSON becomes an empty payload / no result with the reason in `error`, text that is
    not Unicode is shown with U+FFFD, so one bad record never breaks a listing."""
    problems = []
    payload = _record(row["payload"], "payload", problems)
    result = None if row["result"] is None else _record(row["result"], "result", problems)
    error = "; ".join(filter(None, [_text(row["error"]), *problems])) or None
    return Job(id=_text(row["id"]), client=_text(row["client"]), kind=_text(row["kind"]),
               payload=payload or {}, status=_text(row["status"]),
               created=_number(row["created"]) or 0.0, seq=row["seq"], started=_number(row["started"]),
               finished=_number(row["finished"]), run_order=_number(row["run_order"]),
               result=result, error=error)


def _record(text, what: str, problems: list[str]) -> dict | None:
    try:
        value = safe_json.readable(json.loads(text))
        problem = safe_json.problem(value, what)
    except (TypeError, ValueError, RecursionError) as e:
        value, problem = None, f"{what}: not JSON ({e})"
    if problem is None and not isinstance(value, dict):
        problem = f"{what}: not a JSON object"
    if problem is not None:
        problems.append(f"stored {problem}")
        return None
    return value


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _text(value) -> str | None:
    return None if value is None else safe_json.readable(str(value))


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
