"""What `--precision auto` decides on this machine, and whether bf16 pays for the built-in model.

    python bench/precision_auto.py [--rounds 5]

Prints the probe (pipeline/precision.py: oneDNN's bf16 support and a bf16 against fp32 matmul),
the choice for SD 1.5 and for the built-in model, and the built-in model's 20-step 64x64 txt2img
in fp32 and in bf16, interleaved in one process (median of rounds; wall and CPU seconds): the measurement behind
BF16_MIN_PARAMS (small models stay in fp32).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from opensd.library.models_dir import BUILTIN_CHECKPOINT
from opensd.models.config import sd1
from opensd.pipeline import precision as P
from opensd.pipeline.pipeline import load


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    print(f"oneDNN bf16: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; bf16 matmul {P.bf16_matmul_speedup():.1f}x "
          f"fp32's speed; native bf16: {P.cpu_has_native_bf16()}")
    print(f"SD 1.5: {P.choose_precision('auto', cpu, sd1()).line(cpu)}")
    pipes = {name: load(BUILTIN_CHECKPOINT, device="cpu", precision=name) for name in ("fp32", "bf16")}
    print(f"built-in: {load(BUILTIN_CHECKPOINT, device='cpu').precision.line(cpu)}")
    times = {name: [] for name in pipes}
    cpu_times = {name: [] for name in pipes}  # CPU seconds of this process: less swayed by other load
    load_avg = [os.getloadavg()[0]]
    for pipe in pipes.values():
        pipe.txt2img("red heart", steps=20, seed=1)  # warm-up
    for _ in range(args.rounds):
        for name, pipe in pipes.items():
            t0, c0 = time.perf_counter(), time.process_time()
            pipe.txt2img("red heart", steps=20, seed=1)
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
        load_avg.append(os.getloadavg()[0])
    for label, t in (("wall", times), ("CPU", cpu_times)):
        med = {name: statistics.median(v) for name, v in t.items()}
        print(f"built-in txt2img 64x64, 20 steps, {label} s: fp32 {med['fp32']:.3f}, bf16 {med['bf16']:.3f} "
              f"(bf16/fp32 {med['bf16'] / med['fp32']:.2f}); rounds {[round(x, 2) for x in t['fp32']]} and "
              f"{[round(x, 2) for x in t['bf16']]}")
    print(f"1-min load average before and after each round: {[round(x, 1) for x in load_avg]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
