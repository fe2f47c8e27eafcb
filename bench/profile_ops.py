"""Per-op CPU profile of ours vs diffusers on one step, same weights and inputs as engine_speed.

    python bench/profile_ops.py unet [--dtype fp32] [--top 25]
    python bench/profile_ops.py vae
    python bench/profile_ops.py unet --dtype bf16 --channels-last   # ours as the pipeline runs it

Both models live in this one process (built exactly as in engine_speed.py); each gets a warm-up,
then one profiled step, and the two op tables (sorted by self CPU time) are printed side by side
in one list, so a kernel that one implementation spends more time in stands out.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_speed as E  # also puts src/ and tests/ on sys.path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("component", choices=E.COMPONENTS)
    ap.add_argument("--dtype", choices=E.DTYPES, default="fp32")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--diffusers-first", action="store_true", help="profile diffusers before ours")
    ap.add_argument("--channels-last", action="store_true", help="ours in channels_last, as the pipeline runs it")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    dtype = E._torch_dtype(args.dtype)
    stats: dict[str, dict[str, tuple[float, int]]] = {}
    totals = {}
    for impl in (E.IMPLS[::-1] if args.diffusers_first else E.IMPLS):
        model = E._build(impl, args.component, dtype)
        if args.channels_last and impl == "ours":
            model.to(memory_format=torch.channels_last)
        step = E._step_fn(impl, args.component, model, E._inputs(args.component, dtype))
        with torch.inference_mode():
            step()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                step()
                totals[impl] = time.perf_counter() - t0
        stats[impl] = {e.key: (e.self_cpu_time_total / 1e6, e.count) for e in prof.key_averages()}
        del model, step

    keys = sorted(set(stats["ours"]) | set(stats["diffusers"]),
                  key=lambda k: -max(stats["ours"].get(k, (0, 0))[0], stats["diffusers"].get(k, (0, 0))[0]))
    print(f"{args.component} {args.dtype}: wall ours {totals['ours']:.2f} s, "
          f"diffusers {totals['diffusers']:.2f} s (profiled step, load avg {E.os.getloadavg()[0]:.1f})")
    print(f"{'op':42s} {'ours s':>9s} {'calls':>6s} {'diff s':>9s} {'calls':>6s} {'ours-diff':>10s}")
    for k in keys[:args.top]:
        (a, na), (b, nb) = stats["ours"].get(k, (0, 0)), stats["diffusers"].get(k, (0, 0))
        print(f"{k[:42]:42s} {a:9.3f} {na:6d} {b:9.3f} {nb:6d} {a - b:+10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
