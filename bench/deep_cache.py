"""What step caching (models/deep_cache.py, --deep-cache N) costs in quality and saves in time,
on the trained built-in model: 20-step 64x64 txt2img of 8 prompts, each interval against the
uncached images of the same seeds (mean abs pixel difference, PSNR), times interleaved.

    python bench/deep_cache.py [--intervals 2 3 5] [--depth 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.models.deep_cache import enable_deep_cache
from opensd.pipeline.pipeline import load

PROMPTS = ("red heart", "smiling face", "thumbs up", "yellow star", "cat face", "fire", "blue circle",
           "crying face")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    pipes = {1: load(BUILTIN_CHECKPOINT, device="cpu")}
    for n in args.intervals:
        pipes[n] = load(BUILTIN_CHECKPOINT, device="cpu")
        enable_deep_cache(pipes[n].model.unet, interval=n, depth=args.depth)

    def images(pipe):
        return [np.asarray(pipe.txt2img(p, steps=20, seed=i + 1)[0]).astype(np.float64) for i, p in enumerate(PROMPTS)]

    ref = images(pipes[1])
    times = {n: [] for n in pipes}
    load_avg = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for n, pipe in pipes.items():
            t0 = time.perf_counter()
            got = images(pipe)
            times[n].append(time.perf_counter() - t0)
        load_avg.append(os.getloadavg()[0])
    print(f"| interval (full UNet call every N) | 8 images, median s | / uncached | mean abs pixel diff | "
          f"PSNR to uncached (dB) |\n|---|---:|---:|---:|---:|")
    for n, pipe in pipes.items():
        got = images(pipe) if n != 1 else ref
        diffs = [np.abs(a - b).mean() for a, b in zip(got, ref)]
        mse = statistics.mean(float(((a - b) ** 2).mean()) for a, b in zip(got, ref))
        psnr = "inf" if mse == 0 else f"{10 * np.log10(255 ** 2 / mse):.1f}"
        ratio = statistics.median(a / b for a, b in zip(times[n], times[1]))
        print(f"| {n}{' (off)' if n == 1 else ''} | {statistics.median(times[n]):.2f} | {ratio:.2f} | "
              f"{statistics.mean(diffs):.2f} | {psnr} |")
    print(f"\ndepth {args.depth}; 1-min load before and after each round: {', '.join(f'{x:.1f}' for x in load_avg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
