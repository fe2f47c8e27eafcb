"""`opensd train lora | dreambooth | embedding`: fine-tune a model on a folder of images.

Every run keeps its state in --run-dir (default runs/<kind>-<output name>); running the same
command again after an interruption (even kill -9) continues where it stopped.

Data-parallel on several processes (CPUs: gloo, GPUs: NCCL), e.g. one per GPU:
  torchrun --nproc-per-node 2 -m opensd.cli train lora --data DIR -o out.safetensors --steps 500
--batch-size is the whole batch, split over the processes; a run continues on any number of them.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import InvalidArgument
from ..training.lr_schedules import SCHEDULERS
from .common import BUILTIN_MODEL, set_threads
from .model_flags import add_models_dir_flag, model_folders, resolve_model


def register(sub) -> None:
    train = sub.add_parser("train", help="fine-tune: LoRA, DreamBooth, textual-inversion embedding",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = train.add_subparsers(dest="train_kind", required=True)

    lora = kinds.add_parser("lora", help="train a LoRA (.safetensors) for SD1/SD2/SDXL, Flux.1, FLUX.2 [klein], "
                                         "SD3/3.5 or Z-Image (the family is read from --model)")
    _common(lora, lr=1e-4)
    lora.add_argument("--rank", type=int, default=8, help="LoRA rank / network dim (default 8)")
    lora.add_argument("--alpha", type=float, default=4.0, help="LoRA alpha; scale = alpha / rank (default 4)")
    lora.add_argument("--train-text-encoder", action="store_true", help="also put LoRA on the text encoder(s) (SD1/SD2/SDXL only)")
    lora.add_argument("--te-lr", type=float, help="text-encoder learning rate (default: --lr)")
    lora.add_argument("--save-fp32", action="store_true", help="save fp32 weights (default fp16)")
    lora.add_argument("--network-type", choices=["lora", "locon", "loha"], default="lora",
                      help="lora (attention layers), locon (also the ResBlock and resampling convs, kohya's "
                           "conv_dim) or loha (LyCORIS LoHa; locon and loha: UNet models only); default lora")
    lora.add_argument("--conv-dim", type=int, help="rank of the 3x3 conv adapters (locon default: --rank)")
    lora.add_argument("--conv-alpha", type=float, help="alpha of the conv adapters (default: --alpha)")
    lora.set_defaults(func=cmd_lora)

    db = kinds.add_parser("dreambooth", help="fine-tune the whole UNet on a subject (full checkpoint)")
    _common(db, lr=2e-6)
    db.add_argument("--instance-prompt", required=True, help="e.g. 'a photo of sks emoji'")
    db.add_argument("--class-prompt", help="enables prior preservation, e.g. 'a photo of an emoji'")
    db.add_argument("--num-class-images", type=int, default=50, help="class images to generate/keep (default 50)")
    db.add_argument("--class-dir", type=Path, help="class image cache (default <run-dir>/class_images)")
    db.add_argument("--prior-weight", type=float, default=1.0, help="weight of the class loss (default 1)")
    db.add_argument("--class-steps", type=int, default=20, help="sampling steps per class image")
    db.add_argument("--train-text-encoder", action="store_true")
    db.add_argument("--te-lr", type=float, help="text-encoder learning rate (default: --lr)")
    db.add_argument("--fp16", action="store_true", help="save the checkpoint in fp16")
    db.set_defaults(func=cmd_dreambooth)

    emb = kinds.add_parser("embedding", help="textual inversion: learn vectors for a new word")
    _common(emb, lr=5e-3)
    emb.add_argument("--token", help="the word used in prompts (default: the output file name)")
    emb.add_argument("--init-word", default="*", help="start from this word's embedding (default '*')")
    emb.add_argument("--num-vectors", type=int, default=1, help="vectors per token (default 1)")
    emb.add_argument("--template", default="a photo of {token}, {caption}",
                     help="training caption; {token} = the word, {caption} = the image's caption")
    emb.set_defaults(func=cmd_embedding)


def _common(p: argparse.ArgumentParser, lr: float) -> None:
    p.add_argument("--data", type=Path, required=True, help="image folder (kohya N_name sub-folders, .txt captions)")
    p.add_argument("--model", "-m", type=Path,
                   help="base checkpoint: a file, or its name in the models folder (default: the built-in model)")
    add_models_dir_flag(p)
    p.add_argument("--output", "-o", type=Path, required=True, help="file to write")
    p.add_argument("--run-dir", type=Path, help="resumable state (default runs/<kind>-<output name>)")
    n = p.add_mutually_exclusive_group()
    n.add_argument("--steps", type=int)
    n.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--resolution", type=int, help="training resolution (default: the model's)")
    p.add_argument("--bucket-step", type=int, help="bucket side step in pixels (default VAE downscale x 8)")
    p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr:g})")
    p.add_argument("--warmup", "--lr-warmup-steps", dest="warmup", type=int, default=0,
                   help="learning-rate warm-up steps")
    p.add_argument("--lr-scheduler", choices=SCHEDULERS,
                   help="kohya's learning-rate schedules (default: warm-up, then cosine down to 10%%)")
    p.add_argument("--lr-scheduler-num-cycles", type=int, default=1, help="cosine_with_restarts: waves (default 1)")
    p.add_argument("--lr-scheduler-power", type=float, default=1.0, help="polynomial: its power (default 1)")
    p.add_argument("--min-snr-gamma", type=float, help="min-SNR loss weighting (e.g. 5)")
    p.add_argument("--noise-offset", type=float, default=0.0,
                   help="add this times a per-channel random constant to the noise (e.g. 0.05: darker darks)")
    p.add_argument("--caption", default="", help="caption for images without one")
    p.add_argument("--shuffle-caption", action="store_true", help="shuffle each caption's comma-separated tags")
    p.add_argument("--keep-tokens", type=int, default=0, help="keep the first N tags in place when shuffling")
    p.add_argument("--caption-dropout-rate", type=float, default=0.0, help="drop the whole caption this often (0..1)")
    p.add_argument("--caption-tag-dropout-rate", type=float, default=0.0,
                   help="drop each tag (after --keep-tokens) this often (0..1)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, ~30%% slower")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (fast on GPUs / CPUs with native bf16)")
    p.add_argument("--sample-every", type=int, default=0, help="write sample images every N steps")
    p.add_argument("--sample-prompt", action="append", default=[], 
                   help="prompt for samples (repeatable; default: the first caption)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--save-every", type=int, default=50, help="checkpoint the run every N steps")
    p.add_argument("--device", choices=["cpu", "cuda", "mps"], default="cpu")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    p.add_argument("--no-progress", action="store_true")


def _common_kwargs(args, kind: str) -> dict:
    from ..distributed import ddp

    set_threads(args.threads)
    model = resolve_model(model_folders(args), "checkpoints", args.model, "model") if args.model else BUILTIN_MODEL
    if args.steps is None and args.epochs is None:
        raise InvalidArgument("steps: give --steps N or --epochs N")
    logging.getLogger("opensd.training").setLevel(logging.INFO)
    parallel, device = ddp.start(args.device)  # under torchrun: this process's rank and device
    return {
        "data": args.data, "model": model, "output": args.output,
        "run_dir": args.run_dir or Path("runs") / f"{kind}-{args.output.stem}", "steps": args.steps,
        "epochs": args.epochs, "batch_size": args.batch_size, "resolution": args.resolution,
        "bucket_step": args.bucket_step, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
        "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, "flip": args.flip,
        "min_snr_gamma": args.min_snr_gamma, "sample_every": args.sample_every,
        "sample_prompts": list(args.sample_prompt), "sample_steps": args.sample_steps,
        "save_every": args.save_every, "caption": args.caption, "device": device, "parallel": parallel,
        "progress": not args.no_progress, "lr_scheduler": args.lr_scheduler,
        "lr_cycles": args.lr_scheduler_num_cycles, "lr_power": args.lr_scheduler_power,
        "noise_offset": args.noise_offset, "shuffle_caption": args.shuffle_caption, "keep_tokens": args.keep_tokens,
        "caption_dropout_rate": args.caption_dropout_rate, "caption_tag_dropout_rate": args.caption_tag_dropout_rate,
    }


def _done(path) -> int:
    from ..distributed import ddp

    ddp.finish()
    if path is not None:  # data-parallel: only rank 0 writes
        print(f"wrote {path}")
    return 0


def cmd_lora(args) -> int:
    from ..training.lora_train import LoraOptions, train_lora
    opts = LoraOptions(**_common_kwargs(args, "lora"), rank=args.rank, alpha=args.alpha,
                       te_lr=args.te_lr, train_text_encoder=args.train_text_encoder, save_fp32=args.save_fp32,
                       network_type=args.network_type, conv_dim=args.conv_dim, conv_alpha=args.conv_alpha)
    return _done(train_lora(opts))


def cmd_dreambooth(args) -> int:
    from ..training.dreambooth import DreamBoothOptions, train_dreambooth
    opts = DreamBoothOptions(**_common_kwargs(args, "dreambooth"), instance_prompt=args.instance_prompt,
                             class_prompt=args.class_prompt, num_class_images=args.num_class_images,
                             class_dir=args.class_dir, prior_weight=args.prior_weight,
                             class_steps=args.class_steps, train_text_encoder=args.train_text_encoder,
                             te_lr=args.te_lr, fp16=args.fp16)
    return _done(train_dreambooth(opts))


def cmd_embedding(args) -> int:
    from ..training.textual_inversion import EmbeddingOptions, train_embedding
    opts = EmbeddingOptions(**_common_kwargs(args, "embedding"), token=args.token or "",
                            init_word=args.init_word, num_vectors=args.num_vectors, template=args.template)
    return _done(train_embedding(opts))
