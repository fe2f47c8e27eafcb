"""What ComfyUI's EasyCache and LazyCache nodes (workflows/step_cache.py) save and cost on the
trained built-in model at the nodes' defaults (reuse_threshold 0.2, 15% to 95%): KSampler's
defaults (20 steps, CFG 8, euler, normal) on 64x64 images of 8 prompts with an empty negative,
each cached run against the same node at threshold 0 (nothing skipped) and against the unpatched
MODEL (mean abs pixel difference, PSNR), times interleaved.

The built-in model guides itself in one network row per step; LazyCache keeps that, EasyCache (a
patch of the network's calls) samples with ComfyUI's CFG, two rows per step.

    python bench/step_cache.py [--threshold 0.2] [--rounds 3] [--threads 1] [--size 64]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.pipeline.pipeline import load
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import clip_text_encode, vae_decode_tensor
from opensd.workflows.nodes_easycache import easy_cache, lazy_cache
from opensd.workflows.types import ClipRef, ModelRef

PROMPTS = ("red heart", "smiling face", "thumbs up", "yellow star", "cat face", "fire", "blue circle",
           "crying face")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load(BUILTIN_CHECKPOINT, device="cpu")
    clip, model = ClipRef(pipe, "builtin"), ModelRef(pipe, "builtin")
    neg = clip_text_encode(None, "", clip)[0]
    conds = [clip_text_encode(None, p, clip)[0] for p in PROMPTS]
    cases = {"unpatched": model}
    for name, node in (("EasyCache", easy_cache), ("LazyCache", lazy_cache)):
        cases[f"{name} 0"] = node(None, model, 0.0, 0.15, 0.95, False)[0]
        cases[f"{name} {args.threshold:g}"] = node(None, model, args.threshold, 0.15, 0.95, False)[0]
    rows = []
    network = pipe.family.network(pipe.model)
    network.register_forward_pre_hook(lambda m, a: rows.append(a[0].shape[0]))
    cells = args.size // pipe.config.vae.downscale

    def images(m) -> tuple[torch.Tensor, float, float, float]:
        """(the 8 images, wall s, CPU s, network rows per image)."""
        rows.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        out = [K.sample(m, pos, neg, {"samples": torch.zeros(1, 4, cells, cells)}, seed=i + 1, steps=20, cfg=8.0,
                        sampler_name="euler", scheduler="normal")["samples"] for i, pos in enumerate(conds)]
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return vae_decode_tensor(pipe, torch.cat(out)) * 255, wall, cpu, sum(rows) / len(conds)

    got = {name: images(m) for name, m in cases.items()}  # also the warm-up
    times = {name: ([], []) for name in cases}
    load_avg = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for name, m in cases.items():
            _, wall, cpu, _ = images(m)
            times[name][0].append(wall)
            times[name][1].append(cpu)
        load_avg.append(os.getloadavg()[0])

    def compare(a: torch.Tensor, b: torch.Tensor) -> str:
        mse = float(((a - b) ** 2).mean())
        psnr = "inf" if mse == 0 else f"{10 * torch.log10(torch.tensor(255 ** 2 / mse)):.1f}"
        return f"{float((a - b).abs().mean()):.2f} / {psnr}"

    print("| MODEL | network rows per image | CPU s (8 images) | speed-up vs its threshold 0 | "
          "vs unpatched | pixel diff / PSNR dB vs its threshold 0 | vs unpatched |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for name in cases:
        ref = name.rsplit(" ", 1)[0] + " 0" if name != "unpatched" else name
        speed = {r: statistics.median(a / b for a, b in zip(times[r][1], times[name][1])) for r in (ref, "unpatched")}
        print(f"| {name} | {got[name][3]:.1f} | {statistics.median(times[name][1]):.2f} | {speed[ref]:.2f}x | "
              f"{speed['unpatched']:.2f}x | {compare(got[name][0], got[ref][0])} | "
              f"{compare(got[name][0], got['unpatched'][0])} |")
    other = compare(got["unpatched"][0][:-1], got["unpatched"][0][1:])
    print(f"\n{args.size}x{args.size}, {args.threads} thread(s); another prompt's image differs by {other}; "
          f"1-min load before and after each round: {', '.join(f'{x:.1f}' for x in load_avg)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
