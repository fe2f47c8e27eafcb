"""Other models as starting points for the built-in trainer. Distillation (`--teacher FILE`): the
teacher model, held to its runs folder and checked against the student's config, and the one-off
encoding of every caption under its frozen text encoder (the loss itself is builtin.diffusion_loss
with a teacher UNet). Warm start (`--init-unet FILE`): another checkpoint's UNet weights as step 0."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_atomic
from ..models import config as C
from ..models.stable_diffusion import StableDiffusion

TEACHER_FILE = "teacher.json"  # in a runs folder: the --teacher it distils from
INIT_FILE = "unet_init.json"  # in a runs folder: the --init-unet its UNet started from


def _held_to_folder(path: Path | None, runs: Path, record_name: str, flag: str, started_without: str) -> None:
    """A runs folder keeps the model it was started with: the same flag again to resume, no
    switching to another file, and no adding one to a UNet stage that already began without it."""
    record = Path(runs) / record_name
    had = _read(record)
    if path is None:
        if had is not None:
            raise ValueError(f"{runs} was started with {flag} {had}; pass it again")
        return
    if had is not None and had != str(path):
        raise ValueError(f"{runs} was started with {flag} {had}, not {path}; use a new --runs folder")
    if had is None and (Path(runs) / "unet" / "state.pt").is_file():
        raise ValueError(f"{runs} already {started_without}; use a new --runs folder with {flag}")
    record.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(record, json.dumps({"path": str(path)}))


def recorded(runs: Path, record_name: str) -> str | None:
    """The file name a runs folder was started with for that record (for the export's metadata)."""
    had = _read(Path(runs) / record_name)
    return None if had is None else Path(had).name


def _read(record: Path) -> str | None:
    if not record.is_file():
        return None
    d = json.loads(record.read_text())
    return d.get("path", d.get("teacher"))  # "teacher": the key before --init-unet shared the format


def _load(path: Path, flag: str, device: str) -> StableDiffusion:
    from ..errors import CheckpointError
    from ..pipeline.loader import load_model
    try:
        return load_model(path, device=device).model
    except CheckpointError as e:
        raise ValueError(f"{flag} {e}") from None


@torch.no_grad()
def encode_captions(text_encoder: nn.Module, ids: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Hidden states of every caption, for a frozen text encoder (computed once, not every step)."""
    text_encoder.eval()
    dev = next(text_encoder.parameters()).device
    return torch.cat([text_encoder(ids[i:i + batch].to(dev)).hidden.cpu() for i in range(0, len(ids), batch)])


def negative_prompt_ids(captions: list[str], n: int, cfg: C.TextEncoderConfig, seed: int = 0) -> torch.Tensor:
    """Token ids of `n` negative-prompt-like texts for a guidance-distilled student, which otherwise
    only sees whole captions: half are one or two comma-separated parts of random captions ("twemoji
    style", "dark skin tone"), half 1-6 random vocabulary tokens (words the captions never use, like
    "blurry"). The pipeline subtracts its guided predictions for a negative prompt (pipeline/guidance.py)."""
    from .builtin_sampling import tokenize
    g = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(n - n // 2):
        parts = captions[int(torch.randint(len(captions), (1,), generator=g))].split(", ")
        k = 1 + int(torch.randint(min(2, len(parts)), (1,), generator=g))
        texts.append(", ".join(parts[int(i)] for i in torch.randperm(len(parts), generator=g)[:k]))
    fragments = tokenize(texts, cfg)
    words = tokenize([""] * (n // 2), cfg)  # start, end and padding around the random tokens
    end = int(words[0][1]) if len(words) else 0
    for row in words:
        k = 1 + int(torch.randint(6, (1,), generator=g))
        row[1:k + 1] = torch.randint(256, cfg.vocab_size - 2, (k,), generator=g)
        row[k + 1] = end
    return torch.cat([fragments, words])


def load_teacher(path: Path | None, cfg: C.ModelConfig, runs: Path, device: str = "cpu") -> StableDiffusion | None:
    """The --teacher model, checked against the student's config and held to the runs folder: a
    folder that distils keeps its teacher, and one that trained without a teacher cannot switch."""
    teacher = None if path is None else _load(path, "--teacher", device)
    if teacher is not None:
        t = teacher.config
        if t.text_encoders != cfg.text_encoders:
            raise ValueError(f"--teacher {path}: its text encoder ({t.text_encoders[0].layers} layers, width "
                             f"{t.text_encoders[0].width}) is not this --arch's ({cfg.text_encoders[0].layers} "
                             f"layers, width {cfg.text_encoders[0].width}); pick an arch with the teacher's "
                             f"encoder (fast4 for v1)")
        if replace(t.vae, scaling_factor=1.0) != replace(cfg.vae, scaling_factor=1.0):
            raise ValueError(f"--teacher {path}: its VAE does not match this --arch's VAE config")
    _held_to_folder(path, runs, TEACHER_FILE, "--teacher", "trained its UNet without a teacher")
    return teacher


def load_init_unet(path: Path | None, cfg: C.ModelConfig, runs: Path) -> dict | None:
    """The --init-unet checkpoint's UNet as weights for this --arch's UNet (see transplant), held to
    the runs folder like the teacher (a resumed run continues from its own checkpoint)."""
    model = None if path is None else _load(path, "--init-unet", "cpu")
    _held_to_folder(path, runs, INIT_FILE, "--init-unet", "trained its UNet from a fresh start")
    if model is None:
        return None
    try:
        return transplant(model.unet, cfg.unet)
    except ValueError as e:
        raise ValueError(f"--init-unet {path}: {e}") from None


def transplant(source: nn.Module, cfg: C.UNetConfig) -> dict:
    """Weights for a UNet of `cfg` from `source`, a UNet with the same resnets and channels. `cfg` may
    drop transformers (the remaining layers keep their weights: the block-removal start of BK-SDM) and
    may add the guidance embedding, whose last layer starts at zero so step 0 predicts as `source`."""
    from ..models.unet import SpatialTransformer, UNetModel
    got = source.config
    keep = ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks", "context_dim",
            "num_heads", "num_head_channels", "use_linear_in_transformer")
    differ = [k for k in keep if getattr(got, k) != getattr(cfg, k)]
    if got.adm_in_channels and (got.adm_in_channels, got.guidance_embed) != (cfg.adm_in_channels, cfg.guidance_embed):
        differ.append("adm_in_channels")
    if differ:
        raise ValueError(f"its UNet ({got.model_channels} channels, mult {got.channel_mult}) does not fit this "
                         f"--arch's ({cfg.model_channels} channels, mult {cfg.channel_mult}); they differ in "
                         f"{', '.join(differ)}")
    target = UNetModel(cfg)
    src_state = {k: v.float() for k, v in source.state_dict().items()}
    state = {}
    for name in ("input_blocks", "middle_block", "output_blocks"):
        src_blocks, dst_blocks = getattr(source, name), getattr(target, name)
        pairs = [(src_blocks, dst_blocks)] if name == "middle_block" else list(zip(src_blocks, dst_blocks))
        for b, (sb, db) in enumerate(pairs):
            prefix = name + ("." if name == "middle_block" else f".{b}.")
            j = 0
            for i, layer in enumerate(db):
                while j < len(sb) and type(sb[j]) is not type(layer):
                    if not isinstance(sb[j], SpatialTransformer):
                        raise ValueError(f"{prefix}{j} ({type(sb[j]).__name__}) has no counterpart in this --arch")
                    j += 1  # a transformer this arch drops
                if j == len(sb):
                    raise ValueError(f"{prefix}{i} ({type(layer).__name__}) is not in its UNet")
                for k in layer.state_dict():
                    state[f"{prefix}{i}.{k}"] = src_state[f"{prefix}{j}.{k}"]
                j += 1
            if any(not isinstance(rest, SpatialTransformer) for rest in sb[j:]):
                raise ValueError(f"{prefix}{j} ({type(sb[j]).__name__}) has no counterpart in this --arch")
    for k, v in target.state_dict().items():
        if k.startswith(("time_embed.", "out.", "label_emb.")):
            state[k] = src_state.get(k, v)
    if cfg.adm_in_channels and not got.adm_in_channels:
        last = len(target.label_emb[0]) - 1
        for k in (f"label_emb.0.{last}.weight", f"label_emb.0.{last}.bias"):
            state[k] = torch.zeros_like(state[k])
    return state
