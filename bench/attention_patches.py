"""What A1111's speed settings save on this machine: one SD 1.5 classifier-free-guidance UNet step
(batch 2, 4x64x64 latent = 512x512 pixels, 77x768 context, random weights at full size, the dtype
`--precision auto` picks, channels_last as the pipeline sets it) plain, with token merging
(models/token_merging.py, A1111's token_merging_ratio) and with Hypertile (models/hypertile.py,
A1111's hypertile_enable_unet), all in ONE process, interleaved round by round (A, B, C, C, B, A,
...). Wall and CPU time of this process are both reported: on a shared machine other work adds
wall time, CPU time is less swayed. Output differences are from the first round. --vae also times the VAE decode of a 512x512 image with and
without Hypertile's VAE tiling.

    python bench/attention_patches.py [--rounds 2] [--ratios 0.3 0.5] [--vae] [--a1111-defaults]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_speed as E  # noqa: E402  (puts src/ and tests/ on sys.path)


def variants(unet, ratios, defaults: bool) -> dict:
    from opensd.models.hypertile import hypertile_unet
    from opensd.models.token_merging import tome_blocks

    out = {"plain": lambda: nullcontext()}
    for r in ratios:
        out[f"token merging {r}"] = lambda r=r: tome_blocks(unet, r)
    # At 512x512 A1111's defaults (max tile 256, swap size 3) choose per side between 2 tiles and 1
    # at the 64x64 layers (randint over [2, 1]); swap size 1 always takes 2: the most it tiles there.
    rng = random.Random(0)
    out["Hypertile, swap size 1 (2x2 tiles at 64x64)"] = lambda: hypertile_unet(unet, 512, 512, rng, swap_size=1)
    if defaults:
        out["Hypertile (A1111 defaults)"] = lambda: hypertile_unet(unet, 512, 512, rng)
    return out


def timed(fn, rounds: int, names: list[str]) -> tuple[dict, dict, list, dict]:
    """Per-round wall and CPU seconds of fn(name) for each name, interleaved; the first round's outputs."""
    times, cpu, loads, outputs = {n: [] for n in names}, {n: [] for n in names}, [os.getloadavg()[0]], {}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            out = fn(name)
            outputs.setdefault(name, out)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in names), file=sys.stderr, flush=True)
    return times, cpu, loads, outputs


def table(times, cpu, diffs, ref: str) -> str:
    rows = ["| variant | median s | rounds (s) | / plain (wall, median of rounds) | CPU s (median) | / plain (CPU) "
            "| max abs diff to plain (of max abs) |", "|---|---:|---|---:|---:|---:|---|"]
    for n in times:
        wall = statistics.median(a / b for a, b in zip(times[n], times[ref]))
        c = statistics.median(a / b for a, b in zip(cpu[n], cpu[ref]))
        rows.append(f"| {n} | {statistics.median(times[n]):.2f} | {', '.join(f'{t:.2f}' for t in times[n])} | "
                    f"{wall:.3f} | {statistics.median(cpu[n]):.2f} | {c:.3f} | {diffs[n]} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    ap.add_argument("--vae", action="store_true")
    ap.add_argument("--a1111-defaults", action="store_true", help="also Hypertile with swap size 3 (random tiling)")
    args = ap.parse_args()
    import torch
    from opensd.models.config import sd1
    from opensd.pipeline.precision import choose_precision

    dtype = choose_precision("auto", torch.device("cpu"), sd1()).dtype
    unet = E._build("ours", "unet", dtype).to(memory_format=torch.channels_last)
    x, t, ctx = E._inputs("unet", dtype)
    patches = variants(unet, args.ratios, args.a1111_defaults)
    with torch.inference_mode():
        unet(x, t, ctx)  # warm-up

        def step(name):
            with patches[name]():
                return unet(x, t, ctx).float()

        times, cpu, loads, outputs = timed(step, args.rounds, list(patches))
    ref = outputs["plain"]
    diffs = {n: f"{(o - ref).abs().max().item():.2e} ({ref.abs().max().item():.2f})" for n, o in outputs.items()}
    print(f"UNet step, {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} torch threads\n")
    print(table(times, cpu, diffs, "plain"))
    if args.vae:
        print("\nVAE decode 512x512\n")
        print(vae_table(dtype, args.rounds))
    print(f"\n1-min load average before and after each round: {', '.join(f'{v:.1f}' for v in loads)}")
    return 0


def vae_table(dtype, rounds: int) -> str:
    import torch
    from opensd.models.hypertile import hypertile_vae

    vae = E._build("ours", "vae", dtype).to(memory_format=torch.channels_last)
    (z,) = E._inputs("vae", dtype)
    rng = random.Random(0)
    patches = {"plain": lambda: nullcontext(),
               "Hypertile VAE (A1111 defaults: max tile 128, swap 3)": lambda: hypertile_vae(vae, 512, 512, rng)}
    with torch.inference_mode():
        vae.decode(z)  # warm-up

        def decode(name):
            with patches[name]():
                return vae.decode(z).float()

        times, cpu, _, outputs = timed(decode, rounds, list(patches))
    ref = outputs["plain"]
    diffs = {n: f"{(o - ref).abs().max().item():.2e} ({ref.abs().max().item():.2f})" for n, o in outputs.items()}
    return table(times, cpu, diffs, "plain")


if __name__ == "__main__":
    raise SystemExit(main())
