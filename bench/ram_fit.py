"""Peak RSS of loading a bf16 Z-Image-shaped network on the CPU in fp32, before and after the change
that keeps 16-bit Linear weights as stored (pipeline/weights.py). The network is Z-Image's layout
scaled down to ~330 MB in bf16 (dim 1024, 8 + 4 blocks), random weights.

  python bench/ram_fit.py write /tmp/zi.safetensors
  PYTHONPATH=<tree>/src python bench/ram_fit.py load /tmp/zi.safetensors   # one fresh process per run
"""
from __future__ import annotations

import sys
import time

import torch

CFG = dict(dim=1024, n_layers=8, n_heads=8, ffn_hidden=2816, cap_feat_dim=2560, t_hidden=1024)


def write(path: str) -> None:
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.config_dit import ZImageConfig
    from opensd.models.z_image import ZImage
    with torch.device("meta"):
        net = ZImage(ZImageConfig(**CFG))
    g = torch.Generator().manual_seed(0)
    sd = {k: (0.02 * torch.randn(v.shape, generator=g)).bfloat16() for k, v in net.state_dict().items()}
    save_safetensors(sd, path)
    print(f"wrote {path}: {sum(v.numel() for v in sd.values()) / 1e6:.0f} M parameters")


def vm(field: str) -> float:
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def load(path: str) -> None:
    from opensd.pipeline import parts
    from opensd.pipeline.offload import module_bytes
    base = vm("VmRSS")
    t0 = time.perf_counter()
    pipe = parts.load_unet(path, device="cpu", precision="fp32")
    took = time.perf_counter() - t0
    net = pipe.family.network(pipe.model)
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 16, 32, 32, generator=g), torch.randn(1, 32, 2560, generator=g), torch.tensor([0.5])
    with torch.no_grad():
        net(x, t, ctx)  # warm-up
        t1 = time.perf_counter()
        out = net(x, t, ctx)
        step = time.perf_counter() - t1
    print(f"weights {module_bytes(net) / 2 ** 20:.0f} MiB, load {took:.1f} s, peak RSS {vm('VmHWM') - base:.0f} MiB "
          f"above the {base:.0f} MiB before loading (incl. one 256x256 step), step {step:.2f} s, "
          f"output sum {out.double().sum().item():.6f}; now RssAnon {vm('RssAnon'):.0f} MiB, RssFile {vm('RssFile'):.0f} MiB")


if __name__ == "__main__":
    {"write": write, "load": load}[sys.argv[1]](sys.argv[2])
