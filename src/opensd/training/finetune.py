"""What LoRA, DreamBooth and textual-inversion training share: options, the base model, cached
VAE latents, caption encoding with gradients, the noise-prediction loss, gradient checkpointing,
sample images and the run folder's job record. Each job wires these into the shared Trainer.

The loss is the one the built-in model is trained with (training/builtin.py): z_t = sqrt(a) z0 +
sqrt(1-a) eps on the model's own discrete schedule, the UNet predicts eps (or v for v-models),
MSE, optional min-SNR-gamma weighting. Everything random in a batch comes from a generator seeded
by (seed, step), so a resumed run sees exactly the batches an uninterrupted run would.

On a guidance-distilled base (the UNet takes the CFG scale s and predicts the guided result
G_s = u + s (c - u) in one call), each row gets a scale and learns u + s (target - u), u being the
model's own empty-prompt prediction: the same data fit as plain training, but at the scales that
generation uses, so a LoRA changes the guided predictions and not only the scale-1 ones.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..models.unet import GUIDANCE_RANGE, guidance_embedding
from ..pipeline.conditioning import PromptConditioner, size_vector
from .captions import CaptionOptions, process_caption
from .finetune_data import Dataset, load_dataset, stack
from .lr_schedules import SCHEDULERS

log = logging.getLogger(__name__)

GUIDANCE_PLAIN = 0.2  # share of a guidance-distilled UNet's training rows at scale 1 (its plain prediction)


def draw_guidance_scales(n: int, g: torch.Generator, plain: float = GUIDANCE_PLAIN) -> torch.Tensor:
    """Per-row CFG scales for training a guidance-distilled UNet: a share `plain` at exactly the
    range's low end (1), the rest uniform over GUIDANCE_RANGE."""
    lo, hi = GUIDANCE_RANGE
    at_one = torch.rand(n, generator=g) < plain
    return torch.where(at_one, lo, lo + (hi - lo) * torch.rand(n, generator=g))


@dataclass
class CommonOptions:
    data: Path
    model: Path
    output: Path
    run_dir: Path
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 1
    resolution: int | None = None      # default: the model's native resolution
    bucket_step: int | None = None     # default: VAE downscale * 8 (64 for SD)
    lr: float = 1e-4
    warmup: int = 0
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    flip: bool = False
    min_snr_gamma: float | None = None
    sample_every: int = 0
    sample_prompts: list[str] = field(default_factory=list)
    sample_steps: int = 20
    save_every: int = 50
    caption: str = ""                  # default caption for images without a sidecar
    device: str = "cpu"
    progress: bool = True
    lr_scheduler: str | None = None    # lr_schedules.SCHEDULERS; None: warm-up, then cosine to 10%
    lr_cycles: int = 1
    lr_power: float = 1.0
    noise_offset: float = 0.0          # kohya's: a per-channel constant added to the noise (darker/brighter images)
    shuffle_caption: bool = False      # captions.py
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    caption_tag_dropout_rate: float = 0.0
    parallel: Any = None               # opensd.distributed.ddp.Parallel when torchrun runs several processes

    def validate(self) -> None:
        for name in ("batch_size", "sample_steps", "save_every"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name.replace('_', '-')}: must be at least 1, got {getattr(self, name)}")
        if (self.steps is None) == (self.epochs is None):
            raise InvalidArgument("steps: give exactly one of --steps and --epochs")
        if (self.steps or 1) < 1 or (self.epochs or 1) < 1:
            raise InvalidArgument("steps: --steps/--epochs must be at least 1")
        if not self.lr > 0:
            raise InvalidArgument(f"lr: must be positive, got {self.lr}")
        if self.sample_every < 0:
            raise InvalidArgument("sample-every: must be 0 (off) or more")
        if self.resolution is not None and self.resolution < 8:
            raise InvalidArgument(f"resolution: {self.resolution} is too small")
        if not Path(self.model).exists():
            raise InvalidArgument(f"model: {self.model} does not exist")
        if self.lr_scheduler is not None and self.lr_scheduler not in SCHEDULERS:
            raise InvalidArgument(f"lr-scheduler: {self.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        if self.lr_cycles < 1 or not 0 < self.lr_power < math.inf:
            raise InvalidArgument("lr-scheduler-num-cycles / lr-scheduler-power: need at least 1 cycle and a "
                                  "positive power")
        if not 0 <= self.noise_offset < math.inf or self.keep_tokens < 0:
            raise InvalidArgument("noise-offset / keep-tokens: must be 0 or more")
        for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidArgument(f"{name.replace('_', '-')}: must be between 0 and 1, got {getattr(self, name)}")

    def schedule(self) -> dict:
        """The TrainConfig fields of the learning-rate schedule."""
        return {"lr_scheduler": self.lr_scheduler, "lr_cycles": self.lr_cycles, "lr_power": self.lr_power}

    def batch_options(self) -> dict:
        """LatentBatches' noise offset and caption augmentation."""
        return {"noise_offset": self.noise_offset, "parallel": self.parallel,
                "captions": CaptionOptions(self.shuffle_caption, self.keep_tokens, self.caption_dropout_rate,
                                           self.caption_tag_dropout_rate)}


def warn_bf16(device: str) -> None:
    if device != "cpu":
        return
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        warnings.warn("bf16: this CPU has no native bf16 (avx512_bf16/amx); bf16 autocast will be "
                      "emulated and is usually slower than fp32 here", stacklevel=2)


def load_base(path, device: str = "cpu"):
    """The frozen base model as a Pipeline (fp32: training needs full-precision master weights)."""
    from ..pipeline.pipeline import load
    pipe = load(path, device=device, precision="fp32")
    if getattr(pipe.config, "edm", None) is not None:  # the losses here draw discrete timesteps
        raise InvalidArgument(f"model: {Path(path).name} is a continuous-time EDM model (CosXL); training "
                              "one is not supported")
    pipe.model.requires_grad_(False).eval()
    return pipe


def alphas_of(pipe) -> torch.Tensor:
    """The schedule the model samples on (a "ztsnr" model's rescaled one): the one it was trained on."""
    return pipe.alphas_cumprod.float().to(pipe.device)


def open_dataset(opts: CommonOptions, pipe, default_caption: str | None = None, root=None) -> Dataset:
    cfg = pipe.config
    res = opts.resolution or cfg.resolution
    step = opts.bucket_step or cfg.vae.downscale * 8
    if res % step:
        raise InvalidArgument(f"resolution: {res} must be a multiple of {step} (the bucket step) for this model")
    return load_dataset(root or opts.data, res, step=step, flip=opts.flip,
                        default_caption=opts.caption if default_caption is None else default_caption)


def total_steps(opts: CommonOptions, ds: Dataset) -> int:
    return opts.steps if opts.steps is not None else opts.epochs * ds.steps_per_epoch(opts.batch_size)


class LatentBatches:
    """Dataset batches as scaled VAE latents (posterior mean and std cached per image and flip)
    plus the per-step noise and timesteps. With `parallel` (data-parallel training), everything
    random is drawn for the whole batch and this process keeps its rows, with their loss weight."""

    def __init__(self, pipe, ds: Dataset, batch_size: int, seed: int, noise_offset: float = 0.0,
                 captions: CaptionOptions = CaptionOptions(), parallel=None):
        self.pipe, self.ds, self.batch_size, self.seed = pipe, ds, batch_size, seed
        self.noise_offset, self.captions, self.parallel = noise_offset, captions, parallel
        self._cache: dict[tuple[int, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        self.n_timesteps = len(alphas_of(pipe))

    @torch.no_grad()
    def _posterior(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        vae = self.pipe.model.vae
        for key in batch:  # one image at a time: a latent must not depend on its batch-mates
            if key not in self._cache:
                px, _ = stack(self.ds, [key])
                mean, logvar = vae.encode(px.to(self.pipe.device, next(vae.parameters()).dtype))
                self._cache[key] = (mean[0].float().cpu(), torch.exp(0.5 * logvar[0].float()).cpu())
        return (torch.stack([self._cache[b][0] for b in batch]), torch.stack([self._cache[b][1] for b in batch]))

    def __call__(self, start: int):
        scale = self.pipe.config.vae.scaling_factor
        for step, batch in self.ds.batches(self.batch_size, self.seed, start):
            yield self.make(step, batch, scale)

    def make(self, step: int, batch, scale: float) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7_919 + 1_000_003 * (step + 1))
        rows, weight = self.parallel.rows(len(batch)) if self.parallel is not None else (slice(None), 1.0)
        mean, std = self._posterior(batch[rows])
        shape = (len(batch), *mean.shape[1:])  # every draw is for the whole batch, whatever rows are kept
        z0 = (mean + std * torch.randn(shape, generator=g)[rows]) * scale
        t = torch.randint(0, self.n_timesteps, (len(batch),), generator=g)[rows]
        noise = torch.randn(shape, generator=g)
        dev = self.pipe.device
        h, w = (s * self.pipe.config.vae.downscale for s in z0.shape[-2:])
        captions = [self.ds.items[i].caption for i, _ in batch]
        scales = draw_guidance_scales(len(batch), g) if self.pipe.config.unet.guidance_embed else None
        # drawn after the rest, so a run without them draws what it always did
        if self.noise_offset:
            noise = noise + self.noise_offset * torch.randn(*noise.shape[:2], 1, 1, generator=g)
        if self.captions.active:
            captions = [process_caption(c, self.captions, g) for c in captions]
        out = {"z0": z0.to(dev), "t": t.to(dev), "noise": noise[rows].to(dev), "size": (w, h),
               "captions": captions[rows], "weight": weight}
        if scales is not None:
            out["scales"] = scales[rows].to(dev)
        return out


def encode_text(pipe, captions: list[str], embeddings=None, size=None):
    """Captions -> (context, y) with gradients flowing into trainable text-encoder parts and
    embedding vectors. Captions are taken literally (no emphasis syntax) and cut to one chunk of
    75 tokens, as kohya's default; embeddings in `embeddings` are found by name as in prompts."""
    cond = PromptConditioner(pipe.model, pipe.tokenizer, pipe.device, embeddings, emphasis="none",
                             comma_backtrack=0)
    rows = [cond.chunks(c)[0] for c in captions]
    context, pooled = cond.encode_rows(rows, [1] * len(rows), want_pooled=True)
    y = None
    if pipe.config.unet.size_conditioned:
        w, h = size
        y = size_vector(pipe.config, pooled, w, h)
    return context, y


def diffusion_loss(pipe, batch: dict, alphas: torch.Tensor, embeddings=None,
                   min_snr_gamma: float | None = None) -> torch.Tensor:
    z0, t, noise = batch["z0"], batch["t"], batch["noise"]
    context, y = encode_text(pipe, batch["captions"], embeddings, batch["size"])
    a = alphas[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    scales = batch.get("scales")
    if scales is not None:
        y = guidance_embedding(scales, pipe.config.unet.adm_in_channels)
    pred = pipe.model.unet(zt, t, context, y).float()
    target = noise if pipe.config.prediction == "eps" else a.sqrt() * noise - (1 - a).sqrt() * z0
    if scales is not None:
        target = guided_target(pipe, zt, t, target, scales, batch["size"])
    per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    if scales is not None:
        per = per / scales ** 2  # the loss of the implied conditional prediction u + (pred - u) / s
    if min_snr_gamma:
        per = per * min_snr_weight(a.view(-1), min_snr_gamma, pipe.config.prediction)
    return per.mean() * batch.get("weight", 1.0)  # a data-parallel rank's share of the whole batch


def min_snr_weight(alphas_cumprod: torch.Tensor, gamma: float, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, as kohya applies them): min(SNR, gamma) / SNR for an
    eps model, min(SNR, gamma) / (SNR + 1) for a v model, SNR = alpha_bar / (1 - alpha_bar)."""
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction == "eps" else clipped / (snr + 1)


@torch.no_grad()
def guided_target(pipe, zt: torch.Tensor, t: torch.Tensor, target: torch.Tensor, scales: torch.Tensor,
                  size) -> torch.Tensor:
    """u + s (target - u), u the model's own prediction for the empty prompt at scale 1: its mean
    is the guided prediction of a conditional model fitted to the data (unbiased, variance s^2)."""
    empty, _ = encode_text(pipe, [""], None, size)
    u = pipe.model.unet(zt, t, empty.expand(len(zt), -1, -1)).float()
    return u + scales.view(-1, 1, 1, 1) * (target - u)


def make_trainer(opts: CommonOptions, pipe, ds: Dataset, steps: int, network, batches, loss_fn, params):
    """The Trainer of an adapter run (LoRA) on `params` of `network`, sample images of opts.sample_prompts
    or the first caption."""
    from .trainer import TrainConfig, Trainer

    def sample_fn(_net, step, run_dir):
        save_samples(pipe, opts.sample_prompts or [ds.items[0].caption], step, run_dir, opts.seed,
                        opts.sample_steps, ds.resolution)

    cfg = TrainConfig(steps=steps, lr=opts.lr, warmup=opts.warmup, grad_clip=1.0, save_every=opts.save_every,
                      sample_every=opts.sample_every, seed=opts.seed, bf16=opts.bf16, **opts.schedule())
    return Trainer(network, batches, loss_fn, cfg, Path(opts.run_dir), sample_fn, params=params,
                   parallel=opts.parallel)


def enable_gradient_checkpointing(unet) -> None:
    """Recompute each UNet block's activations in the backward pass instead of storing them."""
    checkpoint_blocks([*unet.input_blocks, unet.middle_block, *unet.output_blocks])


def checkpoint_blocks(blocks) -> None:
    """Recompute each block's activations in the backward pass instead of storing them. Done by
    wrapping the blocks' forward on the instances, so the model code is untouched."""
    for block in blocks:
        if getattr(block, "_opensd_checkpointed", False):
            continue
        inner = block.forward

        def forward(*args, _inner=inner, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kwargs)
            return _inner(*args, **kwargs)

        block.forward = forward
        block._opensd_checkpointed = True


def save_samples(pipe, prompts: list[str], step: int, run_dir: Path, seed: int, steps: int,
                 resolution: int | None = None) -> list[Path]:
    """txt2img of each prompt with the model as it is now (adapters applied), saved under
    run_dir/samples/ as step{N}-{i}.png."""
    out = []
    folder = Path(run_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    res = resolution or pipe.config.resolution
    for i, prompt in enumerate(prompts):
        image = pipe.txt2img(prompt, steps=steps, seed=seed + i, width=res, height=res)[0]
        path = folder / f"step{step:06d}-{i}.png"
        image.save(path)
        out.append(path)
    return out


# How long a run goes may change: more --steps (or --epochs) extend a finished run from its state.
LENGTH = ("steps", "epochs")
# Settings added after runs were first recorded: left out of a record at their defaults, so a run
# started before they existed still continues.
ADDED_LATER = {"lr_scheduler": None, "lr_cycles": 1, "lr_power": 1.0, "noise_offset": 0.0, "shuffle_caption": False,
               "keep_tokens": 0, "caption_dropout_rate": 0.0, "caption_tag_dropout_rate": 0.0,
               "network_type": "lora", "conv_dim": None, "conv_alpha": None}


def check_job(run_dir: Path, job: dict) -> None:
    """Remember a run's settings in run_dir/job.json; a later command with other settings in the
    same run folder is refused instead of silently mixing two runs (its length may grow)."""
    run_dir = Path(run_dir)
    path = run_dir / "job.json"
    job = json.loads(json.dumps(job, default=str))
    if path.is_file():
        old = json.loads(path.read_text())
        diff = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k) and k not in LENGTH)
        if diff:
            raise InvalidArgument(f"run-dir: {run_dir} holds a run with other settings ({', '.join(diff)}); "
                                  "use the same command to continue it, or a new --run-dir")
        if all(old.get(k) == job.get(k) for k in LENGTH):
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(job, indent=1, sort_keys=True))


def job_record(opts: CommonOptions, **extra) -> dict:
    """The settings that define a run (not output paths, progress or sampling)."""
    skip = {"output", "run_dir", "progress", "sample_every", "sample_prompts", "sample_steps", "device", "save_every",
            "parallel"}  # a run continues on any number of processes
    rec = {k: v for k, v in asdict(opts).items()
           if k not in skip and not (k in ADDED_LATER and v == ADDED_LATER[k])}
    rec["model"] = str(Path(opts.model).resolve())
    rec["data"] = str(Path(opts.data).resolve())
    return rec | extra
