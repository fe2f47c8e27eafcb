"""ComfyUI's "bislerp" resize for latents: bilinear resampling whose two linear passes (width,
then height) blend neighbouring latent vectors (all channels of a pixel) by spherical instead of
straight-line interpolation, with the length interpolated linearly. Keeps latent vectors at a
plausible length where plain bilinear would shrink them between two unlike neighbours."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _slerp(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Rows of a (N, C) towards rows of b by ratios r (N, 1)."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua = torch.where(na == 0, torch.zeros_like(a), a / na)
    ub = torch.where(nb == 0, torch.zeros_like(b), b / nb)
    dot = (ua * ub).sum(1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    t = r.squeeze(1)
    out = (torch.sin((1 - t) * omega) / so)[:, None] * ua + (torch.sin(t * omega) / so)[:, None] * ub
    out = out * (na * (1 - r) + nb * r)
    # (nearly) the same direction: keep a; (nearly) opposite: straight-line blend
    same, opposite = dot > 1 - 1e-5, dot < 1e-5 - 1
    out[same] = a[same]
    out[opposite] = (a * (1 - r) + b * r)[opposite]
    return out


def _sources(old: int, new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` output positions: the left and right source index and the fraction between
    them, at bilinear (half-pixel) positions clamped to the edges."""
    pos = F.interpolate(torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1), size=(1, new), mode="bilinear")
    ratio = pos - pos.floor()
    right = torch.arange(old, dtype=torch.float32).reshape(1, 1, 1, -1) + 1
    right[..., -1] -= 1
    right = F.interpolate(right, size=(1, new), mode="bilinear")
    return pos.to(torch.int64).reshape(-1), right.to(torch.int64).reshape(-1), ratio.reshape(-1)


def _pass(x: torch.Tensor, new: int) -> torch.Tensor:
    """Resample the last axis of (N, C, H, W) to `new`."""
    n, c, h, w = x.shape
    left, right, ratio = _sources(w, new)
    a = x[..., left].movedim(1, -1).reshape(-1, c)
    b = x[..., right].movedim(1, -1).reshape(-1, c)
    r = ratio.to(x.device).expand(n, h, new).reshape(-1, 1)
    return _slerp(a, b, r).reshape(n, h, new, c).movedim(-1, 1)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    dtype = samples.dtype
    x = _pass(samples.float(), width)
    x = _pass(x.transpose(2, 3), height).transpose(2, 3)
    return x.to(dtype)
