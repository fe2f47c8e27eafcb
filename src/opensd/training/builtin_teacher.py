"""Distillation for the built-in trainer (`--teacher FILE`): the teacher model, held to its runs
folder and checked against the student's config, and the one-off encoding of every caption under
its frozen text encoder. The loss itself is builtin.diffusion_loss with a teacher UNet."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..models import config as C
from ..models.stable_diffusion import StableDiffusion

TEACHER_FILE = "teacher.json"  # in a runs folder: the --teacher it distils from


@torch.no_grad()
def encode_captions(text_encoder: nn.Module, ids: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Hidden states of every caption, for a frozen text encoder (computed once, not every step)."""
    text_encoder.eval()
    dev = next(text_encoder.parameters()).device
    return torch.cat([text_encoder(ids[i:i + batch].to(dev)).hidden.cpu() for i in range(0, len(ids), batch)])


def load_teacher(path: Path | None, cfg: C.ModelConfig, runs: Path, device: str = "cpu") -> StableDiffusion | None:
    """The --teacher model, checked against the student's config and held to the runs folder: a
    folder that distils keeps its teacher, and one that trained without a teacher cannot switch."""
    from ..errors import CheckpointError
    from ..pipeline.loader import load_model
    record = Path(runs) / TEACHER_FILE
    had = json.loads(record.read_text())["teacher"] if record.is_file() else None
    if path is None:
        if had is not None:
            raise ValueError(f"{runs} distils from {had}; pass --teacher {had} again")
        return None
    if had is not None and had != str(path):
        raise ValueError(f"{runs} distils from {had}, not {path}; use a new --runs folder")
    if had is None and (Path(runs) / "unet" / "state.pt").is_file():
        raise ValueError(f"{runs} already trained its UNet without a teacher; use a new --runs folder with --teacher")
    try:
        teacher = load_model(path, device=device).model
    except CheckpointError as e:
        raise ValueError(f"--teacher {e}") from None
    t = teacher.config
    if t.text_encoders != cfg.text_encoders:
        raise ValueError(f"--teacher {path}: its text encoder ({t.text_encoders[0].layers} layers, width "
                         f"{t.text_encoders[0].width}) is not this --arch's ({cfg.text_encoders[0].layers} layers, "
                         f"width {cfg.text_encoders[0].width}); pick an arch with the teacher's encoder (fast4 for v1)")
    if replace(t.vae, scaling_factor=1.0) != replace(cfg.vae, scaling_factor=1.0):
        raise ValueError(f"--teacher {path}: its VAE does not match this --arch's VAE config")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"teacher": str(path)}))
    return teacher
