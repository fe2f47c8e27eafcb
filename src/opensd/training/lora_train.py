"""LoRA training: low-rank adapters on a frozen model, saved as a kohya-format safetensors file.

The adapters (lora_network.py: `up(down(x)) * alpha / rank` on forward hooks, `up` zero-initialised)
train on the shared Trainer. This module does the UNet models (SD1/SD2/SDXL); a flow-matching DiT
(Flux.1, FLUX.2 [klein], SD3/3.5, Z-Image) goes to dit_lora.py from `build`, the same options and
run folder, the family picked from the checkpoint.

Targets are kohya's default "networks.lora" set: every Linear/Conv2d inside the UNet's
transformer blocks (proj_in, attn1/attn2 q/k/v/out, ff, proj_out) and, with the text encoder,
every Linear of the CLIP layers (q/k/v/out_proj, fc1, fc2). Names come from
``opensd.adapters.lora_keys.lora_modules`` so they are the names every LoRA loader expects.
`--network-type locon` adds kohya's conv set (every layer of the ResBlocks, the down/upsampling
convs; 3x3 convs at conv_dim/conv_alpha, saved as networks.lora with conv_dim in ss_network_args);
`loha` trains LyCORIS LoHa adapters (loha.py) on the same sets, saved as lycoris.kohya.

The file: ``{name}.lora_down.weight``, ``{name}.lora_up.weight``, ``{name}.alpha`` (LoHa:
``{name}.hada_w1_a`` ... ``{name}.alpha``), fp16 by default, with sd-scripts' ``ss_*`` metadata
and ``modelspec.*``.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..models.unet import SpatialTransformer
from . import finetune as FT
from .lora_network import ALGOS, LoraNetwork

log = logging.getLogger(__name__)


_CONV_BLOCKS = re.compile(r"\.(resnets|downsamplers|upsamplers)\.")  # diffusers' ResnetBlock2D, Down/Upsample2D


def default_targets(model, text_encoder: bool, convs: bool = False) -> dict[str, nn.Module]:
    """kohya's default LoRA set: layers inside the UNet's transformer blocks, plus the text
    encoders' layer Linears (OpenCLIP's fused q/k/v cannot carry a hook-based LoRA: skipped);
    with `convs`, LoCon's: also every layer of the ResBlocks and the down/upsampling convs."""
    from ..adapters.lora_keys import lora_modules
    inside = {id(m) for st in model.unet.modules() if isinstance(st, SpatialTransformer) for m in st.modules()}
    out, skipped = {}, 0
    for lm in lora_modules(model, text_encoder):
        name, m = lm.kohya, lm.module
        if name.startswith("lora_unet_"):
            in_conv_block = convs and _CONV_BLOCKS.search(lm.peft)
            if (id(m) in inside or in_conv_block) and isinstance(m, (nn.Linear, nn.Conv2d)):
                out[name] = m
        elif isinstance(m, nn.Linear):
            out[name] = m
        else:
            skipped += 1
    if skipped:
        log.warning("text encoder: %d fused q/k/v projections (OpenCLIP) get no LoRA", skipped)
    return out


@dataclass
class LoraOptions(FT.CommonOptions):
    rank: int = 8
    alpha: float = 4.0
    te_lr: float | None = None        # default: same as lr
    train_text_encoder: bool = False
    save_fp32: bool = False
    network_type: str = "lora"        # ALGOS
    conv_dim: int | None = None       # rank of the 3x3 convs (LoCon: default the rank; LoHa: none unless given)
    conv_alpha: float | None = None   # default: alpha

    def conv_rank(self) -> tuple[int | None, float | None]:
        """(rank, alpha) of the convs, None when they get no adapter."""
        dim = self.conv_dim if self.conv_dim is not None else (self.rank if self.network_type == "locon" else None)
        return dim, (self.conv_alpha if self.conv_alpha is not None else self.alpha) if dim else None

    def validate(self) -> None:
        super().validate()
        if self.rank < 1:
            raise InvalidArgument(f"rank: must be at least 1, got {self.rank}")
        if not self.alpha > 0:
            raise InvalidArgument(f"alpha: must be positive, got {self.alpha}")
        if self.te_lr is not None and not self.te_lr > 0:
            raise InvalidArgument(f"te-lr: must be positive, got {self.te_lr}")
        if self.network_type not in ALGOS:
            raise InvalidArgument(f"network-type: {self.network_type!r} is not one of {', '.join(ALGOS)}")
        if self.network_type == "lora" and self.conv_dim:
            raise InvalidArgument("conv-dim: a plain LoRA has no conv adapters; use --network-type locon")
        if (self.conv_dim is not None and self.conv_dim < 1) or (self.conv_alpha is not None and not self.conv_alpha > 0):
            raise InvalidArgument("conv-dim / conv-alpha: must be positive")


BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sdxl_refiner": "sdxl_refiner_v1-0",
                "small": "opensd_small"}
ARCH = {"sd1": "stable-diffusion-v1", "sd2": "stable-diffusion-v2-512", "sdxl": "stable-diffusion-xl-v1-base",
        "sdxl_refiner": "stable-diffusion-xl-v1-refiner", "small": "opensd-small"}


def unet_spec(cfg) -> dict[str, str]:
    """The UNet family's lines of the metadata."""
    arch = ARCH[cfg.family] + ("-768-v" if cfg.family == "sd2" and cfg.prediction == "v" else "")
    return {"ss_base_model_version": BASE_VERSION[cfg.family], "ss_v2": str(cfg.family == "sd2"),
                "modelspec.architecture": f"{arch}/lora",
            "modelspec.implementation": "sgm" if cfg.family.startswith("sdxl") else "diffusers"}


def metadata(opts: LoraOptions, pipe, ds, steps: int, started: float, step_done: int,
             spec: dict[str, str] | None = None) -> dict[str, str]:
    """sd-scripts' ss_* and modelspec.* lines; `spec`: the model family's (default: unet_spec)."""
    res = ds.resolution
    name = Path(opts.output).stem
    conv_dim, conv_alpha = opts.conv_rank()
    args = {"conv_dim": str(conv_dim), "conv_alpha": str(float(conv_alpha))} if conv_dim else {}
    if opts.network_type == "loha":
        args = {"algo": "loha", **args}
    meta = {
        "ss_network_module": "lycoris.kohya" if opts.network_type == "loha" else "networks.lora",
        "ss_network_dim": str(opts.rank), "ss_network_alpha": str(float(opts.alpha)),
        "ss_network_args": json.dumps(args) if args else "null",
        "ss_sd_model_name": Path(opts.model).name, "ss_resolution": f"({res}, {res})",
        "ss_num_train_images": str(ds.num_repeated), "ss_steps": str(step_done), "ss_max_train_steps": str(steps),
        "ss_epoch": str(math.ceil(step_done / max(1, ds.steps_per_epoch(opts.batch_size)))),
        "ss_batch_size_per_device": str(opts.batch_size), "ss_learning_rate": str(opts.lr),
        "ss_unet_lr": str(opts.lr), "ss_text_encoder_lr": str((opts.te_lr or opts.lr) if opts.train_text_encoder else 0),
        "ss_network_train_unet_only": str(not opts.train_text_encoder), "ss_seed": str(opts.seed),
        "ss_mixed_precision": "bf16" if opts.bf16 else "no", "ss_gradient_checkpointing": str(opts.gradient_checkpointing),
        "ss_enable_bucket": "True", "ss_bucket_info": json.dumps(
            {"buckets": {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(ds.buckets.items())}}),
        "ss_flip_aug": str(opts.flip), "ss_min_snr_gamma": str(opts.min_snr_gamma),
        "ss_lr_scheduler": opts.lr_scheduler or "cosine_with_warmup", "ss_lr_warmup_steps": str(opts.warmup),
        "ss_noise_offset": str(opts.noise_offset or None), "ss_shuffle_caption": str(opts.shuffle_caption),
        "ss_keep_tokens": str(opts.keep_tokens), "ss_caption_dropout_rate": str(opts.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": str(opts.caption_tag_dropout_rate),
        "ss_training_started_at": str(started), "ss_training_finished_at": str(time.time()),
        "ss_output_name": name, "ss_tag_frequency": json.dumps(ds.tag_frequency()),
        "ss_training_comment": "trained with opensd",
        "modelspec.sai_model_spec": "1.0.0", "modelspec.title": name, "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)),
    }
    return meta | (spec if spec is not None else unet_spec(pipe.config))


def save_lora(network: LoraNetwork, path: Path, meta: dict[str, str], fp32: bool = False) -> Path:
    from ..checkpoints.files import save_safetensors
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(network.kohya_state_dict(torch.float32 if fp32 else torch.float16), path, metadata=meta)
    return path


def started_at(run_dir: Path) -> float:
    """When the run began, kept across resumes."""
    p = Path(run_dir) / "started_at"
    if p.is_file():
        return float(p.read_text())
    p.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    write_atomic(p, repr(now))
    return now


def build(opts: LoraOptions, pipe=None):
    """Everything of a LoRA run short of running it: (trainer, network, pipe, dataset, steps)."""
    from . import dit_lora
    opts.validate()
    own_pipe = pipe is None
    pipe = pipe or FT.load_base(opts.model, opts.device)
    if dit_lora.is_dit(pipe):  # the flow-matching DiTs: their targets, loss and cached captions
        return dit_lora.build(opts, pipe, own_pipe)
    ds = FT.open_dataset(opts, pipe)
    steps = FT.total_steps(opts, ds)
    FT.check_job(opts.run_dir, FT.job_record(opts, steps=steps, kind="lora"))
    if opts.bf16:
        FT.warn_bf16(opts.device)
    torch.manual_seed(opts.seed)  # the adapters' initial down weights
    conv_dim, conv_alpha = opts.conv_rank()
    network = LoraNetwork(default_targets(pipe.model, opts.train_text_encoder, convs=bool(conv_dim)), opts.rank,
                          opts.alpha, conv_rank=conv_dim, conv_alpha=conv_alpha, algo=opts.network_type).attach()
    if opts.gradient_checkpointing:
        FT.enable_gradient_checkpointing(pipe.model.unet)
    alphas = FT.alphas_of(pipe)
    batches = FT.LatentBatches(pipe, ds, opts.batch_size, opts.seed, **opts.batch_options())
    te_scale = (opts.te_lr or opts.lr) / opts.lr

    def loss_fn(_net, batch, _step):
        return FT.diffusion_loss(pipe, batch, alphas, min_snr_gamma=opts.min_snr_gamma)

    trainer = FT.make_trainer(opts, pipe, ds, steps, network, batches, loss_fn, network.param_groups(1.0, te_scale))
    return trainer, network, pipe, ds, steps


def train_lora(opts: LoraOptions, pipe=None, until: int | None = None, on_step=None) -> Path | None:
    """Train (or continue) a LoRA run and write opts.output; returns its path (None when stopped
    early by `until`, and in the data-parallel processes other than rank 0, which write nothing)."""
    trainer, network, pipe, ds, steps = build(opts, pipe)
    started = started_at(opts.run_dir)
    log.info("LoRA: %d layers, %d trainable parameters, %d images (%d with repeats) in %d bucket(s), %d steps",
             len(network.layers), sum(p.numel() for p in trainer.params), ds.num_images, ds.num_repeated,
             len(ds.buckets), steps)
    trainer.run(progress=opts.progress, until=until, on_step=on_step)
    if trainer.step < steps or not trainer.main:
        return None
    from . import dit_lora
    if dit_lora.is_dit(pipe):
        meta = metadata(opts, pipe, ds, steps, started, trainer.step, dit_lora.model_spec(pipe))
        return dit_lora.save(network, opts.output, pipe.config.family, meta, opts.save_fp32)
    return save_lora(network, opts.output, metadata(opts, pipe, ds, steps, started, trainer.step), opts.save_fp32)
