"""iPNDM (Zhang & Chen 2023, DEIS paper's "improved PNDM"; zju-pi/diff-sampler's solvers, which
ComfyUI's ipndm and ipndm_v follow): Adams-Bashforth in sigma on the slope d = (x - denoised) / sigma,
up to `max_order` (4) past slopes, lower order while warming up; the step to 0 returns the estimate.

* ipndm: the fixed coefficients of equal steps (1; 3/2, -1/2; 23/12, -16/12, 5/12;
  55/24, -59/24, 37/24, -9/24), whatever the spacing;
* ipndm_v: coefficients that follow the step sizes (order 2 is exact variable-step AB2; orders 3
  and 4 are diff-sampler's variable-step forms as ComfyUI has them: on equal steps order 3 reduces
  to AB3, order 4 to 57/24, -65/24, 43/24, -11/24 rather than AB4's weights, and its weights sum
  to 1 only where successive step ratios repeat, as on a geometric grid; we keep ComfyUI's numbers so
  that its workflows sample alike).
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgument
from .steps import to_d

_FIXED = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def variable_coefficients(h: list[float]) -> tuple[float, ...]:
    """ipndm_v's weights of the slopes (newest first) for step h[0] after steps h[1], h[2], h[3]
    (h[k] = sigma[i - k + 1] - sigma[i - k]); len(h) is the order."""
    if len(h) == 1:
        return (1.0,)
    h0, h1 = h[0], h[1]
    r = h0 / h1
    if len(h) == 2:
        return (1 + r / 2, -r / 2)
    h2 = h[2]
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    if len(h) == 3:
        return (1 + r / 2 + t1, -r / 2 - (1 + h1 / h2) * t1, t1 * h1 / h2)
    h3 = h[3]
    t2 = (((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
          * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
    q = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return (1 + r / 2 + t1 + t2,
            -r / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
            t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
            -t2 * q * h1 / h2)


def _ipndm(denoise, x, sigmas, callback, max_order, variable):
    if max_order not in (1, 2, 3, 4):
        raise InvalidArgument(f"sampler_options.max_order: iPNDM takes 1, 2, 3 or 4, not {max_order!r}")
    s = [float(v) for v in sigmas.tolist()]
    ds: list[torch.Tensor] = []  # the slopes so far, newest first
    for i in range(len(s) - 1):
        denoised = denoise(x, sigmas[i])
        ds = [to_d(x, sigmas[i], denoised), *ds][:max_order]
        if s[i + 1] == 0:
            x = denoised
        else:
            order = len(ds)
            coeffs = (variable_coefficients([s[i + 1 - k] - s[i - k] for k in range(order)]) if variable
                      else _FIXED[order])
            x = x + (s[i + 1] - s[i]) * sum(c * d for c, d in zip(coeffs, ds))
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_ipndm(denoise, x, sigmas, callback=None, *, noise_sampler=None, max_order: int = 4) -> torch.Tensor:
    """iPNDM with equal-step Adams-Bashforth coefficients."""
    return _ipndm(denoise, x, sigmas, callback, max_order, variable=False)


@torch.no_grad()
def sample_ipndm_v(denoise, x, sigmas, callback=None, *, noise_sampler=None, max_order: int = 4) -> torch.Tensor:
    """iPNDM with step-size-aware coefficients."""
    return _ipndm(denoise, x, sigmas, callback, max_order, variable=True)
