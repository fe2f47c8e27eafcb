"""Is a blocked attention faster than PyTorch's SDPA on this CPU? SD 1.5's attention shapes
(CFG batch 2, 8 heads), bf16 and fp32, interleaved, median of rounds.

    python bench/attention_cpu.py [--rounds 5]

The candidate: per batch*head, query rows in blocks of 512: scaled Q K^T (bmm), softmax, times V
(bmm into the output), the kernel DESIGN.md's "Speed seams" once measured at twice SDPA's speed in
bf16. models/attention.py keeps SDPA unless this prints a win.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = ((4096, 4096, 40), (4096, 77, 40), (1024, 1024, 80), (256, 256, 160))  # (queries, keys, head dim)


def blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int = 512) -> torch.Tensor:
    b, h, n, d = q.shape
    q2, k2, v2 = (t.reshape(b * h, -1, d) for t in (q, k, v))
    out = torch.empty_like(q2)
    kt = k2.transpose(1, 2).contiguous()
    for i in range(0, n, block):
        scores = torch.bmm(q2[:, i:i + block] * d ** -0.5, kt).softmax(-1)
        torch.bmm(scores, v2, out=out[:, i:i + block])
    return out.view(b, h, n, d)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    fns = {"sdpa": F.scaled_dot_product_attention, "blocked": blocked}
    print(f"load before: {os.getloadavg()[0]:.1f}, threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| dtype | queries x keys x head dim | SDPA ms | blocked ms | blocked / SDPA | max abs diff (blocked) |")
    print("|---|---|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for n, nk, d in SHAPES:
            q, k, v = (torch.randn(2, 8, m, d, generator=g).to(dtype) for m in (n, nk, nk))
            times = {name: [] for name in fns}
            with torch.inference_mode():
                outs = {name: f(q, k, v) for name, f in fns.items()}
                for _ in range(args.rounds):
                    for name, f in fns.items():
                        t0 = time.perf_counter()
                        f(q, k, v)
                        times[name].append(time.perf_counter() - t0)
            med = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            diff = (outs["blocked"].float() - outs["sdpa"].float()).abs().max().item()
            print(f"| {str(dtype).split('.')[1]} | {n} x {nk} x {d} | {med['sdpa']:.1f} | {med['blocked']:.1f} | "
                  f"{med['blocked'] / med['sdpa']:.2f} | {diff:.1e} |", flush=True)
    print(f"load after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
