"""Two CPU kernel ideas for fp32 SD 1.5 steps, measured per layer shape against what PyTorch runs now
(issue 21's AVX2 target; findings in docs/benchmarks.md, "Speed and memory on the CPU").

    python bench/cpu_kernels.py linear     # nn.Linear through BLAS (MKL) vs oneDNN as a 1x1 convolution
    python bench/cpu_kernels.py winograd   # 3x3 convolutions: oneDNN direct vs Winograd F(2,3) / F(4,3)

Each shape is timed interleaved (median of 7), with the largest relative difference to a float64
reference. Winograd here is plain torch ops (tiles by unfold, transforms and the batched products by
matmul/bmm), weights transformed per call as an eager model would have to (caching them costs 16/9 or
4x the convolution weights). Neither path is used by opensd: see the findings for why.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

LINEARS = [(8192, 320, 320), (8192, 320, 2560), (8192, 1280, 320), (2048, 640, 640), (2048, 640, 5120),
           (2048, 2560, 640), (512, 1280, 1280), (512, 1280, 10240), (512, 5120, 1280), (154, 768, 320)]
CONVS = [(320, 320, 64), (640, 320, 64), (960, 320, 64), (640, 640, 32), (1280, 640, 32), (640, 1280, 16),
         (1280, 1280, 16), (2560, 1280, 16), (1280, 1280, 8), (2560, 1280, 8)]  # (in, out, map), batch 2

# Lavin & Gray's transforms: input B^T, filter G, output A^T
_D = torch.float64
WINOGRAD = {
    2: (torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=_D),
        torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=_D),
        torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=_D)),
    4: (torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                      [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=_D),
        torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                      [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=_D),
        torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=_D)),
}


def onednn_linear(x, w, b):
    """x @ w.T + b as oneDNN's 1x1 convolution over channels-last rows (no copies of x)."""
    k = x.shape[-1]
    rows = x.reshape(1, -1, 1, k).permute(0, 3, 1, 2)
    y = torch.ops.aten.mkldnn_convolution(rows, w.view(w.shape[0], k, 1, 1), b, (0, 0), (1, 1), (1, 1), 1)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], w.shape[0])


def winograd_conv(x, w, b, m: int):
    """conv2d(x, w, b, padding=1) for a 3x3 kernel by Winograd F(m x m, 3 x 3)."""
    bt, g, at = (t.to(x.dtype) for t in WINOGRAD[m])
    a = m + 2
    n, c, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    u = (w.reshape(-1, 9) @ torch.kron(g, g).T).view(w.shape[0], c, a * a).permute(2, 1, 0)  # [a*a, c, out]
    xp = F.pad(x, (1, tw * m + 1 - wd, 1, th * m + 1 - h))
    tiles = xp.unfold(2, a, m).unfold(3, a, m).permute(4, 5, 0, 2, 3, 1).reshape(a * a, -1)  # [a*a, tiles*c]
    v = (torch.kron(bt, bt) @ tiles).view(a * a, n * th * tw, c)
    y = torch.kron(at, at) @ torch.bmm(v, u).view(a * a, -1)  # [m*m, tiles*out]
    y = y.view(m, m, n, th, tw, -1).permute(2, 5, 3, 0, 4, 1).reshape(n, -1, th * m, tw * m)[:, :, :h, :wd]
    return y + b.view(1, -1, 1, 1)


def _median_ms(fns: dict, rounds: int = 7) -> dict:
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def _err(y, ref) -> float:
    return ((y.double() - ref).abs().max() / ref.abs().max()).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("linear", "winograd"))
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    totals: dict[str, float] = {}
    with torch.inference_mode():
        if args.what == "linear":
            for rows, k, n in LINEARS:
                x, w, b = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g) / k ** .5, torch.randn(n)
                ref = F.linear(x.double(), w.double(), b.double())
                ms = _median_ms({"blas": lambda: F.linear(x, w, b), "onednn": lambda: onednn_linear(x, w, b)})
                print(f"{rows}x{k}x{n}: BLAS {ms['blas']:.1f} ms, oneDNN {ms['onednn']:.1f} ms "
                      f"({ms['onednn'] / ms['blas']:.2f}x), diff {_err(onednn_linear(x, w, b), ref):.1e} "
                      f"(BLAS {_err(F.linear(x, w, b), ref):.1e})", flush=True)
                for kk, v in ms.items():
                    totals[kk] = totals.get(kk, 0) + v
        else:
            for c, o, s in CONVS:
                x = torch.randn(2, c, s, s, generator=g)
                w, b = torch.randn(o, c, 3, 3, generator=g) / (9 * c) ** .5, torch.randn(o)
                ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
                fns = {"direct": lambda: F.conv2d(x, w, b, padding=1), "F(2,3)": lambda: winograd_conv(x, w, b, 2),
                       "F(4,3)": lambda: winograd_conv(x, w, b, 4)}
                ms = _median_ms(fns)
                errs = {"F(2,3)": _err(winograd_conv(x, w, b, 2), ref), "F(4,3)": _err(winograd_conv(x, w, b, 4), ref)}
                print(f"{c}->{o} {s}x{s}: " + ", ".join(f"{k} {v:.1f} ms" for k, v in ms.items())
                      + f"; diff direct {_err(F.conv2d(x, w, b, padding=1), ref):.1e}, "
                      + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
                for kk, v in ms.items():
                    totals[kk] = totals.get(kk, 0) + v
    base = next(iter(totals.values()))
    print("sum over shapes: " + ", ".join(f"{k} {v:.0f} ms ({v / base:.2f}x)" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
