"""The mask morphology and blur kernels of Acly's comfyui-inpaint-nodes (which takes them from
kornia), on (B, C, H, W) float tensors: square binary dilation and erosion of a radius, and
separable box / linear (tent) / Gaussian blurs of an odd size with reflected borders."""
from __future__ import annotations

import torch
import torch.nn.functional as F

BLUR_KINDS = ["gaussian", "box", "linear"]


def make_odd(x: int) -> int:
    return x + 1 if x > 0 and x % 2 == 0 else x


def floor(mask: torch.Tensor, threshold: float = 0.99) -> torch.Tensor:
    """1 where the mask is (nearly) fully set, else 0."""
    return (mask >= threshold).to(mask.dtype)


def separable(x: torch.Tensor, kernel: torch.Tensor, border: str) -> torch.Tensor:
    """`x` filtered along both axes with the 1-D `kernel` (odd length), borders "reflect" (mirror
    without repeating the edge; "replicate" where the image is too small to mirror) or "constant" (0)."""
    r = kernel.numel() // 2
    mode = border
    if border == "reflect" and (r >= x.shape[-1] or r >= x.shape[-2]):
        mode = "replicate"
    padded = F.pad(x, (r, r, r, r), mode=mode) if mode != "constant" else F.pad(x, (r, r, r, r), value=0.0)
    c = x.shape[1]
    k = kernel.to(x).flatten()
    out = F.conv2d(padded, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def gaussian_kernel(size: int, sigma: float = 0.0) -> torch.Tensor:
    if sigma <= 0:
        sigma = 0.3 * (size - 1) + 0.8  # OpenCV's sigma for a kernel size
    x = torch.arange(size, dtype=torch.float64) - size // 2
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).float()


def gaussian_blur(x: torch.Tensor, size: int) -> torch.Tensor:
    return separable(x, gaussian_kernel(size), "reflect")


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation with a (2r+1)^2 square: 1 wherever any pixel within it is above 0."""
    return (separable(mask, torch.ones(2 * radius + 1), "constant") > 0).to(mask.dtype)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion with a (2r+1)^2 square, outside the image counting as set: 1 where every pixel
    within it is exactly 1."""
    n = 2 * radius + 1
    padded = F.pad(mask, (radius, radius, radius, radius), value=1.0)
    total = F.conv2d(padded, torch.ones(1, 1, n, n, dtype=mask.dtype, device=mask.device))
    return (total == n * n).to(mask.dtype)


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
