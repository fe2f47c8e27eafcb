"""The peak memory of one generation: on CUDA the most torch had allocated on the device
(max_memory_allocated, reset when the run starts); on the CPU the most the process had resident
(Linux's VmHWM, reset through /proc/self/clear_refs; elsewhere the process's lifetime peak).
Both are the process's: runs at the same time in one server share their peaks."""
from __future__ import annotations

import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def _meminfo(*fields: str) -> list[int] | None:
    """Bytes of the named /proc/meminfo fields (Linux); None where they cannot be read."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        return [int(info[f].split()[0]) * 1024 for f in fields]
    except (OSError, KeyError, ValueError):
        return None


def system_ram() -> tuple[int, int] | None:
    """(total, available) bytes of RAM from Linux's /proc/meminfo; None where it cannot be read."""
    found = _meminfo("MemTotal", "MemAvailable")
    return None if found is None else (found[0], found[1])


def free_memory() -> tuple[int, int] | None:
    """(available RAM, free swap) in bytes from Linux's /proc/meminfo; None where it cannot be read."""
    found = _meminfo("MemAvailable", "SwapFree")
    return None if found is None else (found[0], found[1])


@dataclass(frozen=True)
class Peak:
    bytes: int
    what: str  # "RAM, resident" or "VRAM, allocated"

    def line(self) -> str:
        return f"peak memory {self.bytes / 2 ** 30:.2f} GiB ({self.what})"

    def as_json(self) -> dict:
        return {"bytes": self.bytes, "what": self.what}


def _resident_peak() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB elsewhere


class PeakMemory:
    """`with PeakMemory(device) as m: ...` then `m.peak`."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        self.peak: Peak | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                _CLEAR.write_text("5")  # resets VmHWM to the current resident set (Linux 4.0+)
            except OSError:
                pass
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self.peak = Peak(torch.cuda.max_memory_allocated(self.device), "VRAM, allocated")
        else:
            self.peak = Peak(_resident_peak(), "RAM, resident")
