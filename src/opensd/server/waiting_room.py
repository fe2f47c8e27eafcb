"""Where synchronous requests wait for a place in a full job queue.

A1111 never answers "busy": a request waits for the one generation lock, and clients are written
for that. The A1111 routes therefore wait here, asynchronously and in arrival order, when the job
queue is full. Each waiting request holds its body in memory, so their number is bounded
(--max-waiting); past that the answer is 429 with Retry-After. A request whose client has gone
leaves the line. (ComfyUI's /prompt queues and returns at once, so it keeps its plain 429.)
"""
from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from .jobs import JobQueue, QueueFull
from .store import Job

POLL_S = 0.1  # how often the first in line retries; jobs take seconds, so this adds little


class WaitingRoom:
    def __init__(self, queue: JobQueue, limit: int):
        self.queue, self.limit = queue, limit
        self._line: deque[object] = deque()  # one token per waiting request, first in line first

    @property
    def waiting(self) -> int:
        return len(self._line)

    async def submit(self, kind: str, payload: dict, client: str,
                     gone: Callable[[], Awaitable[bool]] | None = None) -> Job | None:
        """The queued job, once there is room; None if the client went away while waiting.
        Raises QueueFull when the queue is full and `limit` requests already wait."""
        if not self._line:
            try:
                return self.queue.submit(kind, payload, client)
            except QueueFull:
                pass
        if len(self._line) >= self.limit:
            waiting = len(self._line)
            raise QueueFull(self.queue.pending_count(), self.queue.retry_after(waiting), waiting)
        token = object()
        self._line.append(token)
        try:
            while True:
                if self._line[0] is token:
                    try:
                        return self.queue.submit(kind, payload, client)
                    except QueueFull:
                        pass
                await asyncio.sleep(POLL_S)
                if gone is not None and await gone():
                    return None
        finally:
            self._line.remove(token)
