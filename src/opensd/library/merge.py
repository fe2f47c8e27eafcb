"""Checkpoint merging (A1111's checkpoint merger) and baking LoRAs into a checkpoint.

* weighted sum:   A * (1 - m) + B * m
* add difference: A + (B - C) * m

Only checkpoints of the same architecture merge (the detected configs must agree; an inpainting
model may be merged with its base family, the extra input channels of the first convolution then
come from A as A1111 does). Keys only in A are kept; A's stale EMA copy is not. Floats are computed
in fp32 and stored in A's dtype (or fp16 on request). The result records its recipe as json under
``opensd.merge_recipe`` next to the metadata ``detect`` needs.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from ..adapters.lora import LoraSpec, bake_into_state_dict
from ..errors import CheckpointError, InvalidArgument
from ..models import config as C
from .convert import EMA, Progress, check_output, prune, read_checkpoint, save_checkpoint
from .hashes import model_hash

MODES = ("weighted_sum", "add_difference")
RECIPE_KEY = "opensd.merge_recipe"
_FIRST_CONV = "model.diffusion_model.input_blocks.0.0.weight"


def same_architecture(a: C.ModelConfig, b: C.ModelConfig) -> bool:
    return a.family == b.family and replace(a.unet, in_channels=0) == replace(b.unet, in_channels=0) \
        and a.text_encoders == b.text_encoders and a.vae == b.vae


def describe(cfg: C.ModelConfig) -> str:
    extra = " inpainting" if cfg.inpainting else " instruct-pix2pix" if cfg.edit else ""
    return f"{cfg.family}{extra} (UNet {cfg.unet.model_channels} channels, context {cfg.unet.context_dim})"


def _ref(path: Path) -> dict:
    entry = {"name": path.name}
    if path.is_file():
        entry["hash"] = model_hash(path)
    return entry


def _merge_tensor(key: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float,
                  mode: str) -> torch.Tensor:
    af = a.float()
    if a.shape != b.shape or (c is not None and c.shape != a.shape):
        # inpainting A with a normal B/C: merge the channels they share (A1111 does the same)
        if key != _FIRST_CONV:
            raise CheckpointError(key, f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        n = min(a.shape[1], b.shape[1], c.shape[1] if c is not None else b.shape[1])
        out = af.clone()
        out[:, :n] = _merge_tensor(key, a[:, :n], b[:, :n], None if c is None else c[:, :n], m, mode)
        return out.to(a.dtype)
    if mode == "weighted_sum":
        out = af * (1 - m) + b.float() * m
    else:
        out = af + (b.float() - c.float()) * m
    return out.to(a.dtype)


def merge_checkpoints(a, b, c=None, *, multiplier: float = 0.5, mode: str = "weighted_sum",
                      half: bool = False, progress: Progress | None = None
                      ) -> tuple[dict[str, torch.Tensor], C.ModelConfig, dict]:
    """Merge checkpoints (files or diffusers folders); returns (state dict, config, recipe).
    `progress` hears (models read + tensors merged, models + tensors)."""
    if mode not in MODES:
        raise InvalidArgument(f"mode: {mode!r} is not one of {', '.join(MODES)}")
    if not isinstance(multiplier, (int, float)) or not -10 <= multiplier <= 10:
        raise InvalidArgument(f"multiplier: {multiplier!r} must be a number (usually 0..1)")
    if (mode == "add_difference") != (c is not None):
        raise InvalidArgument("c: add_difference needs a third model C; weighted_sum takes none")
    paths = [Path(p) for p in (a, b, c) if p is not None]
    report = progress or (lambda done, total: None)
    loaded = [read_checkpoint(paths[0])]
    total = len(paths) + len(loaded[0][0])  # models read, then tensors merged
    for p in paths[1:]:
        report(len(loaded), total)
        loaded.append(read_checkpoint(p))
    cfg_a = loaded[0][2]
    for p, (_, _, cfg) in zip(paths[1:], loaded[1:]):
        if not same_architecture(cfg_a, cfg):
            raise InvalidArgument(f"models: {p.name} is {describe(cfg)} but {paths[0].name} is "
                                  f"{describe(cfg_a)}; only models of the same architecture can be merged")
    sd_a, sd_b = loaded[0][0], loaded[1][0]
    sd_c = loaded[2][0] if c is not None else None
    out = {}
    for i, (key, ta) in enumerate(sd_a.items()):
        report(len(paths) + i, total)
        if key.startswith(EMA):
            continue
        tb = sd_b.get(key)
        tc = sd_c.get(key) if sd_c is not None else None
        if tb is None or not ta.is_floating_point() or (sd_c is not None and tc is None):
            out[key] = ta  # only in A (or not a weight): kept as it is
            continue
        try:
            out[key] = _merge_tensor(key, ta, tb, tc, float(multiplier), mode)
        except CheckpointError as e:
            raise InvalidArgument(f"models: cannot merge {key}: {e.problem}") from None
    if half:
        out = prune(out, half=True)
    recipe = {"type": "merge", "mode": mode, "multiplier": multiplier,
              "models": [_ref(p) for p in paths], "tool": "opensd"}
    return out, cfg_a, recipe


def merge_to_file(output, a, b, c=None, *, multiplier: float = 0.5, mode: str = "weighted_sum",
                  half: bool = False, overwrite: bool = False, progress: Progress | None = None) -> Path:
    inputs = [p for p in (a, b, c) if p is not None]
    out = check_output(output, inputs, overwrite)
    sd, cfg, recipe = merge_checkpoints(a, b, c, multiplier=multiplier, mode=mode, half=half, progress=progress)
    return save_checkpoint(sd, cfg, out, {RECIPE_KEY: json.dumps(recipe, sort_keys=True)})


def merge_loras_to_file(output, checkpoint, specs: Sequence[LoraSpec], *, half: bool = False,
                        overwrite: bool = False) -> tuple[Path, list]:
    """Bake LoRAs into a checkpoint and save it. Returns (path, LoraReports); keys of a LoRA that
    match nothing are in the reports (and logged)."""
    if not specs:
        raise InvalidArgument("lora: give at least one LoRA to merge")
    out = check_output(output, [checkpoint, *(s.path for s in specs)], overwrite)
    sd, _, cfg = read_checkpoint(checkpoint)
    sd = prune(sd)  # the EMA copy would not carry the LoRA
    reports = bake_into_state_dict(sd, cfg, specs)
    if half:
        sd = prune(sd, half=True)
    recipe = {"type": "lora_merge", "models": [_ref(Path(checkpoint))], "tool": "opensd",
              "loras": [{"name": r.name, "unet": r.unet, "te": r.te} for r in reports]}
    save_checkpoint(sd, cfg, out, {RECIPE_KEY: json.dumps(recipe, sort_keys=True)})
    return out, reports
