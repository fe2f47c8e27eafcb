"""`opensd merge`, `opensd convert`, `opensd lora-merge`: model tools on the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import float_arg


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
