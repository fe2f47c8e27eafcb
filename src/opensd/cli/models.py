"""`opensd merge`, `opensd convert`, `opensd lora-merge`, `opensd lora-extract` (also `opensd models
lora-extract`): model tools on the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import float_arg, int_arg


def register(sub) -> None:
    m = sub.add_parser("merge", help="merge checkpoints: weighted sum A*(1-m)+B*m or add difference A+(B-C)*m")
    m.add_argument("a", type=Path, help="model A (file or diffusers folder)")
    m.add_argument("b", type=Path, help="model B")
    m.add_argument("c", type=Path, nargs="?", help="model C (add difference only)")
    m.add_argument("-m", "--multiplier", type=float_arg, default=0.5, help="m (default 0.5)")
    m.add_argument("--mode", choices=["weighted-sum", "add-difference"],
                   help="default: add-difference when C is given, else weighted-sum")
    _output_flags(m)
    m.set_defaults(func=cmd_merge)

    c = sub.add_parser("convert", help="convert a checkpoint: .ckpt/diffusers -> .safetensors, or -> diffusers folder")
    c.add_argument("source", type=Path, help="checkpoint file (.ckpt, .pt, .safetensors) or diffusers folder")
    c.add_argument("--to", choices=["safetensors", "diffusers"],
                   help="default: safetensors if the output ends in .safetensors, else diffusers")
    c.add_argument("--ema-only", action="store_true", help="use the EMA weights (model_ema.*) as the model")
    _output_flags(c)
    c.set_defaults(func=cmd_convert)

    lm = sub.add_parser("lora-merge", help="bake LoRAs into a checkpoint and save it")
    lm.add_argument("checkpoint", type=Path)
    lm.add_argument("--lora", action="append", required=True, metavar="PATH[:UNET[:TE]]",
                    help="LoRA file and strengths (repeatable; TE defaults to the UNet strength)")
    _output_flags(lm)
    lm.set_defaults(func=cmd_lora_merge)
    add_lora_extract(sub)


def add_lora_extract(sub) -> None:
    """`lora-extract`: a top-level command and one of `opensd models`."""
    le = sub.add_parser("lora-extract", help="make a LoRA from the difference between a fine-tuned model and its base",
                        description="Truncated SVD of every layer's change (kohya sd-scripts' extract_lora_from_models),"
                                    " saved in the kohya layout A1111, ComfyUI and diffusers read. SD1/SD2/SDXL.")
    le.add_argument("--base", type=Path, required=True, help="the base model (file or diffusers folder)")
    le.add_argument("--tuned", type=Path, required=True, help="the fine-tuned model made from it")
    le.add_argument("--rank", type=int_arg, default=32, help="LoRA rank (dim) of linear and 1x1 conv layers (default 32)")
    le.add_argument("--conv-rank", type=int_arg, help="rank of 3x3 conv layers; also takes the resnet blocks "
                                                      "(default: attention and text encoder layers only)")
    le.add_argument("--min-diff", type=float_arg,
                    help="leave out layers whose largest change is at most this (default: kohya's 0.01)")
    le.add_argument("--clamp-quantile", type=float_arg,
                    help="clamp the factors to this quantile of their values (default: kohya's 0.99; 1: exact SVD)")
    le.add_argument("--no-text-encoder", action="store_true", help="UNet layers only")
    le.add_argument("--precision", choices=["fp16", "bf16", "fp32"], default="fp16", help="stored dtype (default fp16)")
    le.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where the SVDs run (auto, the default: CUDA if there is one, else the CPU)")
    le.add_argument("-o", "--output", type=Path, required=True, help="the .safetensors file to write")
    le.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    le.set_defaults(func=cmd_lora_extract)


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write (never over an input)")
    p.add_argument("--fp16", action="store_true", help="store weights as fp16 (half the size)")
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")


def cmd_merge(args: argparse.Namespace) -> int:
    from ..library.merge import merge_to_file

    mode = (args.mode or ("add-difference" if args.c is not None else "weighted-sum")).replace("-", "_")
    out = merge_to_file(args.output, args.a, args.b, args.c, multiplier=args.multiplier, mode=mode,
                        half=args.fp16, overwrite=args.overwrite)
    print(out)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..library.convert import convert_to_diffusers, convert_to_safetensors

    to = args.to or ("safetensors" if args.output.suffix.lower() == ".safetensors" else "diffusers")
    fn = convert_to_safetensors if to == "safetensors" else convert_to_diffusers
    out = fn(args.source, args.output, half=args.fp16, ema_only=args.ema_only, overwrite=args.overwrite)
    print(out)
    return 0


def cmd_lora_merge(args: argparse.Namespace) -> int:
    from ..adapters.lora import parse_lora_arg
    from ..errors import InvalidArgument
    from ..library.merge import merge_loras_to_file

    def find(name: str) -> Path:
        if not Path(name).is_file():
            raise InvalidArgument(f"lora: {name} is not a file")
        return Path(name)

    specs = [parse_lora_arg(text, find) for text in args.lora]
    out, reports = merge_loras_to_file(args.output, args.checkpoint, specs, half=args.fp16,
                                       overwrite=args.overwrite)
    for r in reports:
        note = f", {len(r.unmatched)} key(s) matched nothing" if r.unmatched else ""
        print(f"opensd: merged {r.name} (unet {r.unet:g}, te {r.te:g}): {r.patched} modules{note}",
              file=sys.stderr)
    print(out)
    return 0


def cmd_lora_extract(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from ..library.lora_extract import extract_lora_to_file
    from ..pipeline.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "mps":  # torch.linalg.svd has no MPS kernel
        device = torch.device("cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    with tqdm(desc="extracting", unit="layer", file=sys.stderr, disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        given = {k: v for k, v in (("min_diff", args.min_diff), ("clamp_quantile", args.clamp_quantile))
                 if v is not None}
        out, ext = extract_lora_to_file(
            args.output, args.base, args.tuned, overwrite=args.overwrite, progress=progress, rank=args.rank,
            conv_rank=args.conv_rank, parts=("unet",) if args.no_text_encoder else ("unet", "te"), dtype=dtype,
            device=device, **given)
    print(f"opensd: {ext.layers} layers extracted, {len(ext.skipped)} unchanged ones left out", file=sys.stderr)
    print(out)
    return 0
