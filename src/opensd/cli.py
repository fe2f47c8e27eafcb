"""`opensd` command line: parse, call the pipeline, write files. Errors are one line and exit 2."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import OpenSDError

EXIT_USAGE = 2


def _int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="opensd", description="Local, private Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="text to image")
    gen.add_argument("prompt")
    gen.add_argument("--model", "-m", type=Path, required=True,
                     help="checkpoint file (.safetensors/.ckpt) or diffusers folder")
    gen.add_argument("--vae", type=Path, help="standalone VAE file replacing the checkpoint's VAE")
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--steps", type=_int, default=20)
    gen.add_argument("--cfg", type=_float, default=7.0, help="classifier-free guidance scale")
    gen.add_argument("--seed", type=_int, default=-1, help="-1 picks a random seed")
    gen.add_argument("--width", type=_int, help="default: the model's native size")
    gen.add_argument("--height", type=_int, help="default: the model's native size")
    gen.add_argument("--batch", type=_int, default=1, help="images to generate (seeds seed..seed+N-1)")
    gen.add_argument("--sampler", default="euler")
    gen.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    gen.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu")
    gen.add_argument("--prediction", choices=["eps", "v"],
                     help="override eps/v prediction for SD2 files that do not say")
    gen.add_argument("-o", "--output", type=Path, default=Path("outputs/opensd.png"),
                     help="PNG path; with --batch N, files get -0, -1, ... suffixes")
    gen.set_defaults(func=cmd_generate)
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .pipeline.infotext import save_png
    from .pipeline.pipeline import load

    pipe = load(args.model, vae=args.vae, device=args.device, precision=args.precision,
                prediction=args.prediction)
    bars: list[tqdm] = []

    def progress(step: int, total: int) -> None:
        if not bars:  # created on the first step, so argument errors print no empty bar
            bars.append(tqdm(total=total, desc="sampling", unit="step", file=sys.stderr))
        bars[0].update(step - bars[0].n)

    try:
        images = pipe.txt2img(args.prompt, args.negative, steps=args.steps, cfg=args.cfg, seed=args.seed,
                              width=args.width, height=args.height, batch_size=args.batch,
                              sampler=args.sampler, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    for i, image in enumerate(images):
        out = args.output if len(images) == 1 else args.output.with_name(
            f"{args.output.stem}-{i}{args.output.suffix or '.png'}")
        save_png(image, out, prompt=args.prompt, negative_prompt=args.negative, steps=args.steps,
                 sampler=args.sampler, cfg=args.cfg, seed=image.info["seed"], model=pipe.name)
        print(out)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="opensd: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OpenSDError as e:
        print(f"opensd: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("opensd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
