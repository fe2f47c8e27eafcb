"""Train the built-in model: a small Stable Diffusion (KL VAE + CLIP-architecture text encoder +
cross-attention UNet) from scratch on the emoji dataset, and export it as one original-layout
safetensors file that the loader detects as family "small".

    python -m opensd.training.builtin --data data/emoji --runs runs/builtin

Stages, each resumable (the shared Trainer's state.pt) and skipped when finished:
  1. vae/     KL autoencoder, L1 + MSE reconstruction + tiny KL, mostly on 32x32 crops (every 4th step
              on whole images); held-out PSNR written to vae/done.json
  2. latents  posterior (mean, logvar) of every training image, and the scaling factor 1/std
  3. unet/    UNet + text encoder jointly, eps prediction on the scaled-linear 1000-step schedule,
              10% caption dropout for classifier-free guidance, min-SNR-5 weighting, EMA
  4. export   EMA weights in fp16 -> --out (default src/opensd/assets/builtin/opensd-emoji.safetensors)
With --teacher FILE (an existing built-in model), stage 1 is that model's VAE and stage 3 distils:
its text encoder is copied and frozen, and the UNet (of --arch) learns its UNet's predictions; a
guidance-distilled --arch (v1-gd) learns its guided predictions, taking the CFG scale as input.
With --init-unet FILE, stage 3 starts from that checkpoint's UNet instead of noise (the same UNet, or
one with fewer transformers and/or an added guidance embedding).
Re-running the same command continues wherever it stopped (kill -9 safe), also on another number of
processes: under torchrun it trains data-parallel (docs/scale-out.md, "Training across processes").
The default schedule (2800 VAE + 2800 UNet steps) took 2 h 14 min on a 2-core AMD EPYC box
(docs/builtin-model.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomic
from ..checkpoints import detect as D
from ..checkpoints.files import save_safetensors
from ..distributed import ddp
from ..distributed.ddp import main_first
from ..errors import run_main
from ..library.models_dir import BUILTIN_CHECKPOINT
from ..models import config as C
from ..models.stable_diffusion import StableDiffusion
from ..models.unet import guidance_embedding
from ..sampling.schedules import scaled_linear_alphas_cumprod
from .builtin_run import rows_of, run_planned
from .builtin_sampling import sample, save_grid, tokenize
from .builtin_teacher import (
    INIT_FILE,
    TEACHER_FILE,
    encode_captions,
    load_init_unet,
    load_teacher,
    negative_prompt_ids,
    recorded,
)
from .finetune import draw_guidance_scales
from .builtin_vae import VAEOnly, encode_latents, index_stream, train_vae, vae_from_checkpoint
from .trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

DEFAULT_OUT = BUILTIN_CHECKPOINT  # training writes the shipped file unless told otherwise


def _arch(unet: C.UNetConfig, text_layers: int) -> C.ModelConfig:
    return C.ModelConfig(
        family="small", unet=unet,
        vae=C.VAEConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=4, embed_dim=4, scaling_factor=1.0),
        text_encoders=(C.TextEncoderConfig(naming="hf", vocab_size=49408, width=256, layers=text_layers, heads=4,
                                           max_length=77),),
        prediction="eps", resolution=64)


# Architectures of the built-in model (--arch; docs/builtin-model.md says why these sizes). All share
# the VAE, so a new UNet can be trained on an existing model's autoencoder (--vae-from).
# CPU-speed UNet: 32 channels at 16x16, attention at 4x4 only (the 8x8 transformers cost ~30% of a v1
# step on CPU), no mid-block transformer
_FAST_UNET = C.UNetConfig(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1, transformer_depth=(0, 0, 1),
                          transformer_depth_middle=0, context_dim=256, num_heads=-1, num_head_channels=64)
# 6.9 M-parameter UNet, attention at the 8x8 and 4x4 levels
_V1_UNET = C.UNetConfig(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1, transformer_depth=(0, 1, 1),
                        transformer_depth_middle=1, context_dim=256, num_heads=-1, num_head_channels=64)
ARCHS: dict[str, C.ModelConfig] = {
    "v1": _arch(_V1_UNET, 4),  # with a 4-layer text encoder
    # CPU-speed variants with a 2-layer text encoder
    "fast": _arch(_FAST_UNET, 2),
    "fast-small": _arch(replace(_FAST_UNET, channel_mult=(1, 2, 2)), 2),
    # the fast UNet under v1's text encoder, so it can take a v1 model's trained encoder and learn
    # from its UNet (--teacher)
    "fast4": _arch(_FAST_UNET, 4),
    # fast4 with transformers at the 8x8 level too (~4 ms more per CFG step on the 2-core box): tests
    # whether the students' adherence is held back by attention at 4x4 only
    "fast4-attn8": _arch(replace(_FAST_UNET, transformer_depth=(0, 1, 1)), 4),
    # v1 without its 8x8 transformers, guidance-distilled: one batch-1 UNet call per CFG step instead of
    # v1's batch of 2 (with --teacher v1 and --init-unet v1: v1's weights minus the dropped blocks)
    "v1-gd": _arch(replace(_V1_UNET, transformer_depth=(0, 0, 1), adm_in_channels=64, guidance_embed=True), 4),
}
GUIDANCE_NEGATIVE = 0.25  # fraction of captions replaced by negative-prompt-like texts (guided like captions)
NEGATIVE_BANK = 4096  # how many such texts (encoded once, like the captions)
DEFAULT_ARCH = "v1"  # what a runs folder trains from scratch
SHIPPED_ARCH = "v1-gd"  # the architecture of the shipped weights (guidance-distilled from v1)
BUILTIN = ARCHS[SHIPPED_ARCH]
_DEFAULT = ARCHS[DEFAULT_ARCH]
ARCH_FILE = "arch.json"  # in a runs folder: the --arch it was started with

SAMPLE_PROMPTS = (
    "red apple, noto emoji style", "grinning face, twemoji style", "dog face, noto emoji style",
    "rocket, twemoji style", "thumbs up, medium skin tone, noto emoji style", "japan flag, twemoji style",
    "red heart, noto emoji style", "sun with face, twemoji style",
)
CAPTION_DROPOUT = 0.1
MIN_SNR_GAMMA = 5.0


# --- stage 3: UNet + text encoder ------------------------------------------------------------------


def diffusion_loss(model: StableDiffusion, batch, alphas_cumprod: torch.Tensor,
                   teacher: nn.Module | None = None, empty: torch.Tensor | None = None) -> torch.Tensor:
    """`batch` = (z0, captions, t, noise[, scales]); captions are token ids (encoded here) or, under a
    frozen text encoder, their encodings. They may hold fewer rows than `z0`: each then conditions
    len(z0) // len(captions) consecutive rows (the same image under different noise). With a
    `teacher` UNet the target is its prediction (distillation) instead of the noise; a guidance-
    distilled student gets per-row CFG `scales` and learns the teacher's guided prediction
    uncond + scale * (cond - uncond), `empty` (the empty prompt's encoding) giving the uncond."""
    z0, captions, t, noise, *scales = batch
    context = captions if captions.is_floating_point() else model.cond_stage_model(captions).hidden
    if len(context) != len(z0):
        context = context.repeat_interleave(len(z0) // len(context), dim=0)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    unet_cfg = model.unet.config
    y = guidance_embedding(scales[0], unet_cfg.adm_in_channels) if scales else None
    pred = model.unet(zt, t, context, y).float()
    if teacher is not None:
        with torch.no_grad():
            if scales:
                uncond = empty.to(context)[None].expand_as(context)
                u, c = teacher(torch.cat([zt, zt]), torch.cat([t, t]), torch.cat([uncond, context])).float().chunk(2)
                noise = u + scales[0].view(-1, 1, 1, 1) * (c - u)
            else:
                noise = teacher(zt, t, context).float()
    snr = a.view(-1) / (1 - a.view(-1))
    weight = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr  # min-SNR-gamma for eps prediction
    per = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    return (weight * per).mean()


def _check_teacher(cfg: C.ModelConfig, teacher) -> None:
    if cfg.unet.guidance_embed and teacher is None:
        raise ValueError("a guidance-distilled --arch learns from a --teacher's guided predictions; pass --teacher")


def train_unet(train, vae_model: VAEOnly, latents: dict, cfg: C.ModelConfig, run_dir: Path, steps: int,
               batch: int, lr: float = 3e-4, progress: bool = True, save_every: int = 100,
               sample_every: int = 500, until: int | None = None, bf16: bool = False, device: str = "cpu",
               budget_s: float | None = None, caption_repeats: int = 1,
               teacher: StableDiffusion | None = None, init_unet: dict | None = None,
               parallel=None) -> StableDiffusion:
    """`caption_repeats` k: each step draws batch / k images and trains each at k independent
    (timestep, noise) pairs, so the text encoder, ~45% of a CPU step at k=1, runs on batch / k
    captions (k=2: 1.29 s instead of 1.74 s per batch-32 step on the 2-core box).

    `teacher` (a trained built-in model with this config's text encoder and VAE): distillation. The
    teacher's text encoder is copied and frozen (every caption is encoded once, up front) and the
    UNet learns the teacher UNet's predictions instead of the noise.

    `init_unet`: UNet weights to start from (a fresh stage only; a resumed one loads its checkpoint).

    `parallel` (distributed.ddp.Parallel): this process trains its images of every batch (with their
    k rows each); every draw is made for the whole batch, as one process makes it."""
    if caption_repeats < 1 or batch % caption_repeats:
        raise ValueError(f"caption_repeats must be a positive divisor of the batch size {batch}, "
                         f"got {caption_repeats}")
    _check_teacher(cfg, teacher)
    torch.manual_seed(2)  # the same first weights on any number of processes
    model = StableDiffusion(cfg).to(device)
    model.first_stage_model.load_state_dict(vae_model.vae.state_dict())
    model.first_stage_model.requires_grad_(False)
    if init_unet is not None:
        model.unet.load_state_dict(init_unet)
    te = cfg.text_encoders[0]
    ids = tokenize(train.captions, te)
    empty = tokenize([""], te)[0]
    teacher_unet = None
    if teacher is not None:
        model.cond_stage_model.load_state_dict(teacher.cond_stage_model.state_dict())
        model.cond_stage_model.requires_grad_(False)
        t0 = time.time()
        ids, empty = encode_captions(model.cond_stage_model, torch.cat([ids, empty[None]])).split([len(ids), 1])
        empty = empty[0]
        log.info("encoded %d captions with the teacher's text encoder in %.0f s", len(ids), time.time() - t0)
        teacher_unet = teacher.unet.to(device).eval().requires_grad_(False)
        # encodings stay on the device and are gathered there: at a GPU batch of 256 they are 20 MB a step
        ids, empty = ids.to(device), empty.to(device)
    guided = cfg.unet.guidance_embed
    if guided:
        bank = encode_captions(model.cond_stage_model, negative_prompt_ids(train.captions, NEGATIVE_BANK, te))
        bank = bank.to(device)
    alphas = scaled_linear_alphas_cumprod().float().to(device)
    mean, std = latents["mean"], torch.exp(0.5 * latents["logvar"])
    scale = cfg.vae.scaling_factor

    def batches(start):
        for step, uniq in index_stream(len(mean), batch // caption_repeats, 2, start):
            g = torch.Generator().manual_seed(9_000_000 + step)
            idx = uniq.repeat_interleave(caption_repeats)
            z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * scale
            b_ids = ids[uniq.to(ids.device)]  # token ids, or their encodings under a frozen encoder
            drop = torch.rand(len(uniq), generator=g) < CAPTION_DROPOUT  # a dropped caption drops all k rows
            b_ids[drop.to(ids.device)] = empty
            t = torch.randint(0, len(alphas), (len(idx),), generator=g)
            noise = torch.randn(z0.shape, generator=g)
            extra = ()
            if guided:  # drawn last, so the other draws match an unguided run's
                extra = (draw_guidance_scales(len(idx), g),)
                neg = torch.rand(len(uniq), generator=g) < GUIDANCE_NEGATIVE
                b_ids[neg.to(ids.device)] = bank[torch.randint(len(bank), (int(neg.sum()),), generator=g).to(ids.device)]
            mine, weight = rows_of(parallel, len(uniq))  # whole images: a caption's k rows stay together
            rows = slice(mine.start * caption_repeats, mine.stop * caption_repeats) if parallel is not None else mine
            yield tuple(v[rows].to(device) for v in (z0, t, noise, *extra)), b_ids[mine].to(device), weight

    def make(n):
        tcfg = TrainConfig(steps=n, lr=lr, warmup=min(200, steps // 10 + 1), ema_decay=0.999,
                           save_every=save_every, sample_every=sample_every, seed=2, bf16=bf16,
                           weight_decay=0.0)
        distil = {} if teacher_unet is None else {"teacher": teacher_unet, "empty": empty}

        def loss(m, b, s):
            (z0, t, noise, *extra), captions, weight = b
            return diffusion_loss(m, (z0, captions, t, noise, *extra), alphas, **distil) * weight

        return Trainer(model, batches, loss, tcfg, run_dir,
                       lambda m, s, d: save_grid(sample(m, SAMPLE_PROMPTS, seed=0).cpu(), d / f"samples_{s:06d}.png"),
                       parallel=parallel)

    return run_planned(make, steps, run_dir, budget_s, progress, until)[1]


# --- stage 4: export -------------------------------------------------------------------------------


def export(model: StableDiffusion, path: Path, extra: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    meta = D.metadata_for(model.config) | {"opensd.note": "opensd built-in emoji model, trained from scratch"}
    save_safetensors(sd, path, metadata=meta | {k: str(v) for k, v in (extra or {}).items()})
    return path


# --- the one command -------------------------------------------------------------------------------


def config_for(runs: Path, cfg: C.ModelConfig = _DEFAULT) -> C.ModelConfig:
    """`cfg` with the VAE scaling factor measured on the training latents (stage 2)."""
    lat = torch.load(Path(runs) / "latents.pt", weights_only=True)
    return replace(cfg, vae=replace(cfg.vae, scaling_factor=round(float(lat["scaling_factor"]), 5)))


def recorded_arch(runs: Path, requested: str | None = None) -> str:
    """The --arch a runs folder was started with (older folders, with no record, are "v1"); with
    `requested`, record it in a new folder or refuse a different one."""
    f = Path(runs) / ARCH_FILE
    had = json.loads(f.read_text())["arch"] if f.is_file() else ("v1" if (Path(runs) / "unet").is_dir() else None)
    if requested is None:
        return had or DEFAULT_ARCH
    if had is not None and had != requested:
        raise ValueError(f"{runs} was started with --arch {had}; pass --arch {had} or use a new --runs folder")
    if had is None:
        f.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(f, json.dumps({"arch": requested}))
    return requested


def export_from_runs(runs: Path, out: Path, cfg: C.ModelConfig | None = None) -> Path:
    """Write the shipped file from the latest UNet-stage checkpoint (EMA weights), finished or not."""
    runs = Path(runs)
    cfg = config_for(runs, cfg or ARCHS[recorded_arch(runs)])
    state = torch.load(runs / "unet" / "state.pt", map_location="cpu", weights_only=True)
    model = StableDiffusion(cfg)
    model.load_state_dict(state["model"])
    if state["ema"]:
        with torch.no_grad():
            for k, p in model.named_parameters():
                if k in state["ema"]:
                    p.copy_(state["ema"][k])
    vae_info = json.loads((runs / "vae" / "done.json").read_text())
    planned = state["config"]["steps"]
    extra = {"opensd.unet_steps": state["step"], "opensd.unet_steps_planned": planned,
             "opensd.vae_steps": vae_info["steps"], "opensd.vae_heldout_psnr_db": vae_info["heldout_psnr_db"]}
    for key, record in (("opensd.distilled_from", TEACHER_FILE), ("opensd.unet_init_from", INIT_FILE)):
        if name := recorded(runs, record):
            extra[key] = name
    return export(model.eval(), out, extra)


def run(data: Path, runs: Path, vae_steps: int, unet_steps: int, batch: int, vae_batch: int, out: Path | None,
        progress: bool = True, cfg: C.ModelConfig = _DEFAULT, unet_until: int | None = None,
        save_every: int = 100, sample_every: int = 500, bf16: bool = False, splits=None, device: str = "cpu",
        vae_budget_s: float | None = None, unet_budget_s: float | None = None,
        caption_repeats: int = 1, vae_from: Path | None = None, teacher: Path | None = None,
        init_unet: Path | None = None, parallel=None) -> Path | None:
    """`teacher`: distil the UNet from that built-in checkpoint (see train_unet); its VAE is reused,
    so `vae_from` defaults to it and may not name another file. `init_unet`: start the UNet stage
    from that checkpoint's UNet. `parallel` (distributed.ddp.Parallel, under torchrun): data-parallel,
    rank 0 alone writes records, caches and the exported file (the others return None)."""
    from .emoji_data import load_split
    runs = Path(runs)
    if teacher is not None:
        if vae_from is None:
            vae_from = teacher
        elif Path(vae_from).resolve() != Path(teacher).resolve():
            raise ValueError("--vae-from must be the --teacher file: the student learns in the teacher's latent space")
    _check_teacher(cfg, teacher)  # checks before any work
    if parallel is not None and (vae_budget_s or unet_budget_s):
        raise ValueError("--vae-budget/--unet-budget: not with several processes (each would time its own "
                         "probe); give --vae-steps/--unet-steps")
    # both record their file in the runs folder: rank 0 first
    teacher_model = main_first(parallel, lambda: load_teacher(teacher, cfg, runs, device))
    init_weights = main_first(parallel, lambda: load_init_unet(init_unet, cfg, runs))
    train, heldout = splits or (load_split(Path(data), "train"), load_split(Path(data), "heldout"))
    t0 = time.time()
    if vae_from is not None:
        vae = main_first(parallel, lambda: vae_from_checkpoint(vae_from, cfg.vae, heldout, runs / "vae", device))
    else:
        vae = train_vae(train, heldout, cfg, runs / "vae", vae_steps, vae_batch, progress=progress,
                        save_every=save_every, device=device, budget_s=vae_budget_s, parallel=parallel)
    if not (runs / "vae" / "done.json").is_file():
        return None
    lat = main_first(parallel, lambda: encode_latents(vae.vae, train.images, runs / "latents.pt"))
    cfg = config_for(runs, cfg)
    if teacher_model is not None and not np.isclose(cfg.vae.scaling_factor, teacher_model.config.vae.scaling_factor,
                                                    rtol=1e-3):
        raise ValueError(f"the latents' scaling factor {cfg.vae.scaling_factor} is not the teacher's "
                         f"{teacher_model.config.vae.scaling_factor}: not the teacher's training images?")
    train_unet(train, vae, lat, cfg, runs / "unet", unet_steps, batch, progress=progress,
               save_every=save_every, sample_every=sample_every, until=unet_until, bf16=bf16, device=device,
               budget_s=unet_budget_s, caption_repeats=caption_repeats, teacher=teacher_model, init_unet=init_weights,
               parallel=parallel)
    log.info("stages took %.0f s this invocation", time.time() - t0)
    if out is None or (parallel is not None and not parallel.main):
        return None
    return export_from_runs(runs, out, cfg)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m opensd.training.builtin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("data/emoji"))
    p.add_argument("--runs", type=Path, default=Path("runs/builtin"))
    p.add_argument("--vae-steps", type=int, default=2800)
    p.add_argument("--unet-steps", type=int, default=2800)
    p.add_argument("--arch", choices=sorted(ARCHS), default=None,
                   help=f"model architecture (default: the runs folder's, else {DEFAULT_ARCH})")
    p.add_argument("--vae-from", type=Path, default=None,
                   help="skip the VAE stage: use the autoencoder of this built-in-model checkpoint")
    p.add_argument("--teacher", type=Path, default=None,
                   help="distil: the UNet learns this built-in checkpoint's UNet predictions, under its frozen "
                        "text encoder and VAE (implies --vae-from with the same file)")
    p.add_argument("--init-unet", type=Path, default=None,
                   help="start the UNet from this built-in checkpoint's UNet (the same channels and resnets as "
                        "--arch; transformers the arch lacks are dropped, a guidance embedding it adds starts at 0)")
    p.add_argument("--batch", type=int, default=32, help="UNet batch size")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--caption-repeats", type=int, default=1,
                   help="UNet stage: train each drawn image at this many (timestep, noise) pairs per step, "
                        "encoding its caption once (must divide --batch)")
    p.add_argument("--unet-until", type=int, default=None, help="stop the UNet stage early at this step")
    p.add_argument("--vae-budget", type=float, default=None, help="seconds: shorten the VAE schedule to fit")
    p.add_argument("--unet-budget", type=float, default=None, help="seconds: shorten the UNet schedule to fit")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--export-only", action="store_true", help="export the latest UNet checkpoint and stop")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.caption_repeats < 1 or a.batch % a.caption_repeats:  # fail now, not after the VAE stage
        p.error(f"--caption-repeats must be a positive divisor of --batch ({a.batch}), got {a.caption_repeats}")
    if a.threads:
        torch.set_num_threads(a.threads)
    for flag, f in (("--vae-from", a.vae_from), ("--teacher", a.teacher), ("--init-unet", a.init_unet)):
        if f is not None and not f.is_file():
            p.error(f"{flag} {f}: no such file")
    parallel, device = ddp.start(a.device)  # under torchrun: this rank's part (cuda -> cuda:LOCAL_RANK)
    try:
        _main(p, a, parallel, device)
    finally:
        ddp.finish()


def _main(p: argparse.ArgumentParser, a: argparse.Namespace, parallel, device: str) -> None:
    main = parallel is None or parallel.main
    # the other ranks train the same rows in step; rank 0 alone reports (and writes)
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(asctime)s %(message)s")
    if a.export_only:
        if a.arch and a.arch != recorded_arch(a.runs):
            p.error(f"{a.runs} was started with --arch {recorded_arch(a.runs)}, not {a.arch}")
        if not (a.runs / "unet" / "state.pt").is_file():
            p.error(f"--export-only: {a.runs} holds no UNet-stage checkpoint (unet/state.pt) to export")
        if main:
            print(f"wrote {export_from_runs(a.runs, a.out)}")
        return
    try:  # the user-facing checks (arch of the folder, --vae-from) end as usage errors, not tracebacks
        arch = main_first(parallel, lambda: recorded_arch(a.runs, a.arch or recorded_arch(a.runs)))
        path = run(a.data, a.runs, a.vae_steps, a.unet_steps, a.batch, a.vae_batch,
                   None if a.no_export else a.out, cfg=ARCHS[arch], vae_from=a.vae_from, teacher=a.teacher,
                   init_unet=a.init_unet,
                   progress=not a.no_progress, unet_until=a.unet_until, save_every=a.save_every,
                   sample_every=a.sample_every, bf16=a.bf16, device=device, vae_budget_s=a.vae_budget,
                   unet_budget_s=a.unet_budget, caption_repeats=a.caption_repeats, parallel=parallel)
    except ValueError as e:
        p.error(str(e))
    if path:
        print(f"wrote {path}")


if __name__ == "__main__":  # a user's mistake (no dataset, a bad file) ends in one line
    sys.exit(run_main(main))
