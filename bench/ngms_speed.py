"""A1111's NGMS (negative guidance minimum sigma) and Skip Early CFG: a 20-step 512x512 image of a random
SD 1.5-size model (pipeline/cfg_skips.py), off against on, UNet rows evaluated and seconds.

    python bench/ngms_speed.py                      # NGMS 0.5 against off
    python bench/ngms_speed.py --ngms 2 --early 0.2

The checkpoint (random weights at full SD 1.5 size, fp16 file) is written once under --work. A
2-step image first pays the one-time set-up; then each setting makes one image (off first), timed
end to end (prompt encoding, sampling, VAE decode). Prints one Markdown table row per setting.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "opensd" / "bench")
    ap.add_argument("--ngms", type=float, default=0.5)
    ap.add_argument("--early", type=float, default=0.0, help="also a run with skip_early_cond this fraction")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    import torch

    from opensd.library.synthetic import write_random_checkpoint
    from opensd.models.config import sd1
    from opensd.pipeline.pipeline import load

    path = args.work / "sd15-random.safetensors"
    if not path.is_file():
        args.work.mkdir(parents=True, exist_ok=True)
        write_random_checkpoint(path.with_suffix(".part"), sd1()).rename(path)
    pipe = load(path)
    rows: list[int] = []
    net = pipe.family.network(pipe.model)
    net.register_forward_hook(lambda m, a, o: rows.append(len(a[0])))
    base = dict(steps=args.steps, seed=1, width=512, height=512, cfg=7.0)
    pipe.txt2img("a photograph of an astronaut riding a horse", "blurry", **{**base, "steps": 2})  # set-up
    runs = [("off", {}), (f"NGMS {args.ngms:g}", {"s_min_uncond": args.ngms})]
    if args.early:
        runs.append((f"Skip Early CFG {args.early:g}", {"skip_early_cond": args.early}))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {pipe.precision}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| setting | UNet calls | rows evaluated | s per image |\n|---|---:|---:|---:|")
    for name, kw in runs:
        rows.clear()
        start = time.perf_counter()
        pipe.txt2img("a photograph of an astronaut riding a horse", "blurry", **base, **kw)
        took = time.perf_counter() - start
        print(f"| {name} | {len(rows)} | {sum(rows)} | {took:.1f} |", flush=True)
    print(f"load average after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
