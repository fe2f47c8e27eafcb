"""Colour transfer between images: sRGB <-> CIE Lab (D65, 2 degree observer) and the three ways
ComfyUI's ColorTransfer node moves one image's colours towards another's.

- Lab as kornia's rgb_to_lab / lab_to_rgb compute it (which follow scikit-image): the sRGB curve
  (0.04045 / 12.92, exponent 2.4), the sRGB->XYZ matrix and its exact inverse, white
  (0.95047, 1, 1.08883), the cube root above 0.008856 and 7.787 t + 4/29 below, L = 116 fy - 16,
  a = 500 (fx - fy), b = 200 (fy - fz); back again with fz floored at 0, the cube above 0.2068966
  and the result clipped to 0..1.
- Reinhard et al.: each Lab channel shifted and scaled so its mean and standard deviation become the
  reference's (population deviation, floored at 1e-6).
- Monge-Kantorovich linearisation (MKL): the symmetric positive 3x3 map T with T Cs T' = Cr between
  the Lab covariances, T = Cs^-1/2 (Cs^1/2 Cr Cs^1/2)^1/2 Cs^-1/2, through two eigendecompositions.
- Histogram matching: per RGB channel, 256 bins; each source bin maps to the first reference bin
  whose cumulative share reaches the source bin's.

Functions take channel-first flattened pixels (C, N) or images (N, 3, H, W), in float32.
"""
from __future__ import annotations

import torch

_RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_XYZ_TO_RGB = torch.tensor([[3.2404813432005266, -1.5371515162713185, -0.4985363261688878],
                            [-0.9692549499965682, 1.8759900014898907, 0.0415559265582928],
                            [0.0556466391351772, -0.2040413383665112, 1.0573110696453443]], dtype=torch.float64)
_WHITE = (0.95047, 1.0, 1.08883)
EPS = 1e-6
BINS = 256


def _mix(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Each pixel's channels (dim -3) times `matrix`, channel by channel as kornia sums them."""
    m = matrix.tolist()
    c = [image[..., i, :, :] for i in range(3)]
    return torch.stack([m[r][0] * c[0] + m[r][1] * c[1] + m[r][2] * c[2] for r in range(3)], dim=-3)


def _white(image: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_WHITE, dtype=image.dtype, device=image.device)[:, None, None]


def rgb_to_lab(image: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3, H, W) in 0..1 -> Lab, L in 0..100."""
    linear = torch.where(image > 0.04045, torch.pow((image + 0.055) / 1.055, 2.4), image / 12.92)
    xyz = _mix(_RGB_TO_XYZ, linear) / _white(image)
    f = torch.where(xyz > 0.008856, torch.pow(xyz.clamp(min=0.008856), 1 / 3.0), 7.787 * xyz + 4.0 / 29.0)
    fx, fy, fz = f[..., 0, :, :], f[..., 1, :, :], f[..., 2, :, :]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab (..., 3, H, W) -> sRGB, clipped to 0..1."""
    fy = (lab[..., 0, :, :] + 16.0) / 116.0
    f = torch.stack([lab[..., 1, :, :] / 500.0 + fy, fy, (fy - lab[..., 2, :, :] / 200.0).clamp(min=0.0)], dim=-3)
    xyz = torch.where(f > 0.2068966, torch.pow(f, 3.0), (f - 4.0 / 29.0) / 7.787) * _white(lab)
    linear = _mix(_XYZ_TO_RGB, xyz)
    rgb = torch.where(linear > 0.0031308, 1.055 * torch.pow(linear.clamp(min=0.0031308), 1 / 2.4) - 0.055,
                      12.92 * linear)
    return rgb.clamp(0.0, 1.0)


def channel_stats(flat: torch.Tensor, reinhard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (C, 1), std (C, 1) for Reinhard or covariance (C, C) for MKL) of pixels (C, N)."""
    mean = flat.mean(dim=-1, keepdim=True)
    if reinhard:
        return mean, flat.std(dim=-1, keepdim=True, unbiased=False).clamp_min(EPS)
    centered = flat - mean
    return mean, centered @ centered.T / flat.shape[-1]


def pooled_stats(frames: list[torch.Tensor], reinhard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """channel_stats over several frames (each (C, N), the same N) taken as one: the frames' means
    averaged, then the spread about that mean averaged over frames."""
    mean = sum(f.mean(dim=-1, keepdim=True) for f in frames) / len(frames)
    if reinhard:
        return mean, torch.sqrt(sum(((f - mean) ** 2).mean(dim=-1, keepdim=True) for f in frames)
                                / len(frames)).clamp_min(EPS)
    return mean, sum((f - mean) @ (f - mean).T / f.shape[-1] for f in frames) / len(frames)


def mkl_matrix(cov_source: torch.Tensor, cov_ref: torch.Tensor) -> torch.Tensor:
    """The MKL map T (C, C): T cov_source T' = cov_ref (a source eigenvalue is floored at EPS**2)."""
    values, vectors = torch.linalg.eigh(cov_source)
    root = torch.sqrt(values.clamp_min(0)).clamp_min(EPS)
    scaled = vectors * root[None, :]
    mid_values, mid_vectors = torch.linalg.eigh(scaled.T @ cov_ref @ scaled)
    mid_root = (mid_vectors * torch.sqrt(mid_values.clamp_min(0))[None, :]) @ mid_vectors.T
    unscaled = vectors / root[None, :]
    return unscaled @ mid_root @ unscaled.T


def _bins(flat: torch.Tensor) -> torch.Tensor:
    return (flat * (BINS - 1)).long().clamp(0, BINS - 1)


def cumulative_histogram(frames: list[torch.Tensor]) -> torch.Tensor:
    """Per channel (C, BINS): the share of the frames' pixels (each (C, N) in 0..1) at or below each bin."""
    hist = torch.zeros(frames[0].shape[0], BINS, dtype=torch.float32, device=frames[0].device)
    for f in frames:
        hist.scatter_add_(1, _bins(f), torch.ones_like(f, dtype=torch.float32))
    cdf = hist.cumsum(1)
    return cdf / cdf[:, -1:]


def histogram_lut(cdf_source: torch.Tensor, cdf_ref: torch.Tensor) -> torch.Tensor:
    """(C, BINS) values in 0..1: source bin -> the first reference bin whose share reaches its share."""
    return torch.searchsorted(cdf_ref, cdf_source).clamp_max(BINS - 1).float() / (BINS - 1)


def apply_lut(lut: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return lut.gather(1, _bins(flat))
