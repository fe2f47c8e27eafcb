"""Would weights kept in oneDNN's own layout speed up a CPU UNet step, and at what memory cost?

    python bench/prepacked_weights.py [--pack conv|linear|both] [--rounds 3] [--dtype fp32|bf16]

PyTorch's CPU convolutions re-lay out their weights into oneDNN's blocked format on every call;
`torch.compile` with freezing avoids that by packing them once. This measures the packing alone on
our SD 1.5 UNet (random full-size weights, channels_last as the pipeline runs it, one CFG step):
convolutions through `mkldnn._convolution_pointwise` with weights packed by
`mkldnn_reorder_conv2d_weight`, linears through `mkldnn._linear_pointwise` with `to_mkldnn()`
weights. The packed copies sit next to the model's own weights (as they would unless the model
dropped its plain weights), so the resident memory after the first packed step is reported too.
Plain and packed steps alternate round by round in one process; ratios are per round.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_speed as E  # also puts src/ on sys.path

import torch  # noqa: E402
from torch import nn  # noqa: E402


def _rss_gib() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 2 ** 20


def _packed_conv(m: nn.Conv2d, plain, state: dict):
    def forward(x):
        if not state["on"]:
            return plain(x)
        if getattr(m, "_packed", None) is None or m._packed[0] != tuple(x.shape):
            w = torch._C._nn.mkldnn_reorder_conv2d_weight(m.weight.to_mkldnn(), list(m.padding), list(m.stride),
                                                          list(m.dilation), m.groups, list(x.shape))
            m._packed = (tuple(x.shape), w)
        return torch.ops.mkldnn._convolution_pointwise(x, m._packed[1], m.bias, list(m.padding), list(m.stride),
                                                       list(m.dilation), m.groups, "none", [], "")
    return forward


def _packed_linear(m: nn.Linear, plain, state: dict):
    def forward(x):
        if not state["on"]:
            return plain(x)
        if getattr(m, "_packed", None) is None:
            m._packed = m.weight.to_mkldnn()
        return torch.ops.mkldnn._linear_pointwise(x, m._packed, m.bias, "none", [], "")
    return forward


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pack", choices=("conv", "linear", "both"), default="both")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", choices=E.DTYPES, default="fp32")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = E._torch_dtype(args.dtype)
    model = E._build("ours", "unet", dtype).to(memory_format=torch.channels_last)
    x, t, ctx = E._inputs("unet", dtype)
    state = {"on": False}
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and args.pack in ("conv", "both") and m.padding_mode == "zeros":
            m.forward = _packed_conv(m, m.forward, state)
        elif isinstance(m, nn.Linear) and args.pack in ("linear", "both"):
            m.forward = _packed_linear(m, m.forward, state)
    with torch.inference_mode():
        reference = model(x, t, ctx)
        rss_plain = _rss_gib()
        state["on"] = True
        diff = (model(x, t, ctx) - reference).abs().max().item()
        rss_packed = _rss_gib()
        print(f"{args.dtype}, packed {args.pack}: max abs diff {diff:.2e} (of {reference.abs().max().item():.2f}); "
              f"RSS after a plain step {rss_plain:.2f} GiB, after a packed one {rss_packed:.2f} GiB", flush=True)
        walls, cpus = [], []
        for r in range(args.rounds):
            took = {}
            for on in ((False, True) if r % 2 == 0 else (True, False)):
                state["on"] = on
                w0, c0 = time.perf_counter(), time.process_time()
                model(x, t, ctx)
                took[on] = (time.perf_counter() - w0, time.process_time() - c0)
            walls.append(took[True][0] / took[False][0])
            cpus.append(took[True][1] / took[False][1])
            print(f"round {r + 1}: plain {took[False][0]:.2f} s (CPU {took[False][1]:.2f}), packed {took[True][0]:.2f} s "
                  f"(CPU {took[True][1]:.2f}); load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"packed / plain, median of rounds: wall {statistics.median(walls):.3f}, CPU {statistics.median(cpus):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
