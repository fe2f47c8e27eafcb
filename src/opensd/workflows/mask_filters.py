"""The mask morphology and blur kernels of Acly's comfyui-inpaint-nodes (which takes them from
kornia), on (B, C, H, W) float tensors: square binary dilation and erosion of a radius, and
separable box / linear (tent) / Gaussian blurs of an odd size with reflected borders."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument

BLUR_KINDS = ["gaussian", "box", "linear"]


def make_odd(x: int) -> int:
    return x + 1 if x > 0 and x % 2 == 0 else x


def floor(mask: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """1 where the mask is (nearly) fully set, else 0."""
    return (mask >= threshold).to(mask.dtype)


FFT_FROM = 64  # longer kernels go through the FFT: O(n log n) per line whatever their length


def _filter_axis(x: torch.Tensor, kernel: torch.Tensor, dim: int) -> torch.Tensor:
    """The valid part of `x` (padded along `dim` by the kernel's radius) filtered by a symmetric 1-D kernel."""
    k, n = kernel.numel(), x.shape[dim]
    if k <= FFT_FROM:
        c = x.shape[1]
        shape = (c, 1, 1, k) if dim == -1 else (c, 1, k, 1)
        return F.conv2d(x, kernel.to(x).reshape(1, 1, *shape[2:]).expand(shape), groups=c)
    size = n + k - 1
    spectrum = torch.fft.rfft(x.double(), n=size, dim=dim) * torch.fft.rfft(kernel.double(), n=size).reshape(
        (-1, 1) if dim == -2 else (-1,))
    return torch.fft.irfft(spectrum, n=size, dim=dim).narrow(dim, k - 1, n - k + 1).to(x.dtype)


def separable(x: torch.Tensor, kernel: torch.Tensor, border: str) -> torch.Tensor:
    """`x` (B, C, H, W) filtered along both axes with the symmetric 1-D `kernel` (odd length), borders
    "reflect" (mirrored without repeating the edge, kornia's default: a radius of a side or more is
    refused, as kornia refuses it) or "constant" (0)."""
    k = kernel.numel()
    r = k // 2
    h, w = x.shape[-2:]
    if border == "reflect" and (r >= h or r >= w):
        raise InvalidArgument(f"blur: a {k}-pixel kernel is too wide for a {w}x{h} image (its radius {r} must be "
                              "less than both sides)")
    padded = F.pad(x, (r, r, r, r), mode=border) if border != "constant" else F.pad(x, (r, r, r, r), value=0.0)
    return _filter_axis(_filter_axis(padded, kernel.flatten(), -1), kernel.flatten(), -2)


def gaussian_kernel(size: int, sigma: float = 0.0) -> torch.Tensor:
    if sigma <= 0:
        sigma = 0.3 * (size - 1) + 0.8  # OpenCV's sigma for a kernel size
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    return separable(x, gaussian_kernel(size), "reflect")


def _any_within(set_: torch.Tensor, radius: int) -> torch.Tensor:
    """True where any pixel within the (2r+1)^2 square is set, outside the image unset. Window counts
    from cumulative sums, so any radius costs the same; one past the image's sides covers it all."""
    r = min(radius, max(set_.shape[-2:]))
    counts = F.pad(set_.double(), (r, r, r, r))
    for dim in (-1, -2):
        n = counts.shape[dim] - 2 * r
        cum = torch.cumsum(counts, dim)
        cum = torch.cat([torch.zeros_like(cum.narrow(dim, 0, 1)), cum], dim)
        counts = cum.narrow(dim, 2 * r + 1, n) - cum.narrow(dim, 0, n)
    return counts > 0.5


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation with a (2r+1)^2 square: 1 wherever any pixel within it is above 0."""
    return _any_within(mask > 0, radius).to(mask.dtype)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion with a (2r+1)^2 square, outside the image counting as set: 1 where every pixel
    within it is exactly 1."""
    return (~_any_within(mask != 1, radius)).to(mask.dtype)


def blur(mask: torch.Tensor, size: int, kind: str = "gaussian") -> torch.Tensor:
    """comfyui-inpaint-nodes' mask_blur: nothing for a size of 2 or less."""
    if size <= 2:
        return mask
    if kind == "gaussian":
        return gaussian_blur(mask, size)
    if kind == "box" or size == 3:
        kernel = torch.ones(size) / size
    elif kind == "linear":  # a tent: 1/h ... (h-1)/h, 1, (h-1)/h ... 1/h
        h = size // 2
        ramp = torch.linspace(1 / h, (h - 1) / h, h)
        kernel = torch.cat([ramp, torch.ones(1), ramp.flip(0)])
        kernel = kernel / kernel.sum()
    else:
        raise ValueError(f"blur_type: {kind!r} is not one of {', '.join(BLUR_KINDS)}")
    return separable(mask, kernel, "reflect")
