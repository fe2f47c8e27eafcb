"""Server settings: one frozen-ish dataclass built by `opensd serve` or by tests."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument
from ..pipeline import memory_modes

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 7860
    models_dir: Path | None = None
    outputs_dir: Path = Path("outputs")
    data_dir: Path | None = None             # SQLite file lives here; default: outputs_dir
    api_token: str | None = None             # Bearer token, or "user:password" for Basic auth
    insecure_no_token: bool = False
    allow_origins: tuple[str, ...] = ()      # extra allowed Origin values ("http://host:port")
    allow_hosts: tuple[str, ...] = ()        # extra allowed Host names (besides loopback and --host)
    queue_size: int = 64                     # pending jobs (not counting the running one)
    max_waiting: int = 32                    # A1111 requests waiting (with their bodies) for a queue place
    work_budget: float = 10_000.0            # megapixel-steps one request may ask for (work_budget.py)
    device: str | None = "auto"             # pipeline/device.py: CUDA, else MPS, else the CPU
    precision: str = "auto"                  # pipeline/precision.py
    memory: str = "auto"                     # pipeline/memory_modes.py
    backend: str = "torch"                   # "openvino": UNets through pipeline/openvino_unet.py
    model_budget_bytes: int = 8 << 30        # parameters kept loaded across cached pipelines
    max_body_bytes: int = 64 << 20
    max_upload_bytes: int = 2 << 30          # one model file sent to PUT /api/etn/upload (streamed to disk)
    max_prompt_chars: int = 20_000
    max_image_pixels: int = 4096 * 4096      # decoded input images
    start_worker: bool = True                # tests set False to keep jobs queued
    default_model: str | None = None         # checkpoint name; default: the first listed
    styles_file: Path | None = None          # A1111 styles.csv; default: data_dir/styles.csv
    wildcards_dir: Path | None = None        # __name__ wildcard files; default: data_dir/wildcards
    ray: str | None = None                   # run generations on Ray actors: "auto" or a cluster address
    ray_workers: int | None = None           # CPU actors (default: as many as the cluster's CPUs hold)
    ray_threads: int | None = None           # PyTorch threads (and Ray CPUs) per CPU actor
    ray_ship_models: bool = False            # workers fetch model files from here by SHA-256 (no shared folder)

    def __post_init__(self):
        self.outputs_dir = Path(self.outputs_dir)
        self.models_dir = Path(self.models_dir) if self.models_dir is not None else None
        self.data_dir = Path(self.data_dir) if self.data_dir is not None else self.outputs_dir
        self.styles_file = Path(self.styles_file) if self.styles_file is not None else self.data_dir / "styles.csv"
        self.wildcards_dir = Path(self.wildcards_dir) if self.wildcards_dir is not None else self.data_dir / "wildcards"
        if not 1 <= self.queue_size <= 100_000:
            raise InvalidArgument(f"queue-size: {self.queue_size} is outside 1..100000")
        if not 1 <= self.port <= 65535:
            raise InvalidArgument(f"port: {self.port} is outside 1..65535")
        if self.outputs_dir.exists() and not self.outputs_dir.is_dir():
            raise InvalidArgument(f"outputs-dir: {self.outputs_dir} is not a folder")
        if not 0 <= self.max_waiting <= 100_000:
            raise InvalidArgument(f"max-waiting: {self.max_waiting} is outside 0..100000")
        for flag, value in (("ray-workers", self.ray_workers), ("ray-threads", self.ray_threads)):
            if value is not None and not 1 <= value <= 4096:
                raise InvalidArgument(f"{flag}: {value} is outside 1..4096")
            if value is not None and not self.ray:
                raise InvalidArgument(f"{flag}: only with --ray (the workers are Ray actors)")
        if self.ray_ship_models and not self.ray:
            raise InvalidArgument("ray-ship-models: only with --ray (it ships model files to the Ray workers)")
        memory_modes.check(self.memory)
        if self.backend not in ("torch", "openvino"):
            raise InvalidArgument(f"backend: {self.backend!r} is not one of torch, openvino")
        if not 0 < self.work_budget < float("inf"):
            raise InvalidArgument(f"work-budget: {self.work_budget} must be a positive number of megapixel-steps")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "opensd-jobs.sqlite3"

    def check_exposure(self) -> str | None:
        """Refuse a non-loopback bind without a token (unless opted out); returns a warning line or None."""
        if is_loopback(self.host):
            return None
        if self.api_token:
            return None
        if self.insecure_no_token:
            return (f"WARNING: serving on {self.host} with no API token (--insecure-no-token): "
                    "anyone who can reach this port can use it")
        raise InvalidArgument(f"host: binding {self.host} (not loopback) needs --api-token "
                              "(or --insecure-no-token to accept the risk)")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
