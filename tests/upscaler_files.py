"""Tiny random upscaler state dicts under the original projects' key names (ESRGAN's old
`model.N` layout, Real-ESRGAN's RRDBNet and compact SRVGG layouts), written as the files users
download are: a pickled .pth (BasicSR's {"params_ema": ...} / {"params": ...} wrappers) or safetensors."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def _conv(sd: dict, name: str, cin: int, cout: int, g: torch.Generator, suffix: str = "") -> None:
    sd[f"{name}{suffix}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.1
    sd[f"{name}{suffix}.bias"] = torch.randn(cout, generator=g) * 0.01


def rrdbnet(nf: int = 8, nb: int = 1, gc: int = 32, layout: str = "new", seed: int = 0) -> dict:
    """A 4x RRDBNet: layout "old" (ESRGAN: model.0, model.1.sub.N.RDBk.convj.0, model.3/6/8/10) or
    "new" (Real-ESRGAN/BasicSR: conv_first, body.N.rdbk.convj, conv_body, conv_up1/2, conv_hr, conv_last)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    old = layout == "old"
    _conv(sd, "model.0" if old else "conv_first", 3, nf, g)
    for b in range(nb):
        for r in range(1, 4):
            for j in range(1, 6):
                cout = nf if j == 5 else gc
                name = f"model.1.sub.{b}.RDB{r}.conv{j}" if old else f"body.{b}.rdb{r}.conv{j}"
                _conv(sd, name, nf + (j - 1) * gc, cout, g, ".0" if old else "")
    names = (f"model.1.sub.{nb}", "model.3", "model.6", "model.8") if old else \
        ("conv_body", "conv_up1", "conv_up2", "conv_hr")
    for name in names:
        _conv(sd, name, nf, nf, g)
    _conv(sd, "model.10" if old else "conv_last", nf, 3, g)
    return sd


def srvgg(feat: int = 8, num_conv: int = 2, scale: int = 4, seed: int = 0) -> dict:
    """Real-ESRGAN's compact SRVGGNet: body.0 conv, body.1 PReLU, (conv, PReLU) x num_conv, last conv
    to 3*scale^2 channels for the pixel shuffle."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    _conv(sd, "body.0", 3, feat, g)
    sd["body.1.weight"] = torch.rand(feat, generator=g) * 0.3
    for k in range(num_conv):
        _conv(sd, f"body.{2 + 2 * k}", feat, feat, g)
        sd[f"body.{3 + 2 * k}.weight"] = torch.rand(feat, generator=g) * 0.3
    _conv(sd, f"body.{2 + 2 * num_conv}", feat, 3 * scale * scale, g)
    return sd


def srvgg_reference(sd: dict, x: torch.Tensor, scale: int) -> torch.Tensor:
    """SRVGGNet's forward written out: conv+PReLU layers, pixel shuffle, plus the nearest-upscaled input."""
    import torch.nn.functional as F

    last = max(int(k.split(".")[1]) for k in sd)
    h = x
    for i in range(0, last, 2):
        h = F.prelu(F.conv2d(h, sd[f"body.{i}.weight"], sd[f"body.{i}.bias"], padding=1), sd[f"body.{i + 1}.weight"])
    h = F.conv2d(h, sd[f"body.{last}.weight"], sd[f"body.{last}.bias"], padding=1)
    return (F.pixel_shuffle(h, scale) + F.interpolate(x, scale_factor=scale, mode="nearest")).clamp(0, 1)


def write_pth(path: Path, sd: dict, wrapper: str | None = "params_ema") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({wrapper: sd} if wrapper else sd, path)
    return path


def write_safetensors(path: Path, sd: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path
