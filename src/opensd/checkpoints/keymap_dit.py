"""Table-driven renaming between diffusers' transformer layouts and the original single-file layouts.

A family's table is a list of Rows generated from its config. Beyond renaming, a row can say that
the original stores one fused tensor where diffusers stores several (q, k, v [, mlp]) concatenated
along the output axis, or that the original orders an adaLN output (shift, scale) where diffusers'
AdaLayerNormContinuous orders it (scale, shift).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Row:
    original: str  # full key, e.g. "joint_blocks.0.x_block.attn.qkv.weight"
    diffusers: tuple[str, ...]  # one key, or the parts of a fused original tensor in order
    sizes: tuple[int, ...] = ()  # rows of each part (dim 0) when there are several
    swap_halves: bool = False  # original (shift, scale) <-> diffusers (scale, shift)


@dataclass(frozen=True, eq=False)
class Deferred:
    """A fused tensor made only when the loader takes it, so a model's fused copies exist one at a
    time instead of beside the whole state dict."""
    shape: torch.Size
    dtype: torch.dtype
    make: Callable[[], Tensor]

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point


def _fused(parts: list[Tensor], swap: bool) -> Tensor:
    t = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return _swap(t) if swap else t


def linear(original: str, diffusers: str | tuple[str, ...], sizes: tuple[int, ...] = (),
           swap_halves: bool = False, bias: bool = True) -> list[Row]:
    """Rows for a Linear/Conv module's weight and (optionally) bias."""
    parts = (diffusers,) if isinstance(diffusers, str) else diffusers
    params = ("weight", "bias") if bias else ("weight",)
    return [Row(f"{original}.{p}", tuple(f"{d}.{p}" for d in parts), sizes, swap_halves) for p in params]


def _swap(t: Tensor) -> Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _raise_unknown(unknown: list[str], layout: str, what: str) -> None:
    if unknown:
        shown = ", ".join(sorted(unknown)[:8])
        more = f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else ""
        raise KeyError(f"{len(unknown)} {layout} {what} keys this config does not have: {shown}{more}")


def from_diffusers(sd: dict[str, Tensor], rows: list[Row], what: str, lazy: bool = False) -> dict[str, Tensor]:
    """Diffusers state dict -> original keys. Fused tensors are concatenated (a copy; with `lazy`,
    a Deferred that makes it when loaded); the rest are the same tensor objects. KeyError names
    keys no row accounts for; a row whose parts are all missing is skipped (the strict load that
    follows reports it), a partial one is an error."""
    out, used = {}, set()
    for row in rows:
        present = [k in sd for k in row.diffusers]
        if not any(present):
            continue
        if not all(present):
            missing = [k for k, p in zip(row.diffusers, present) if not p]
            raise KeyError(f"diffusers {what}: {row.original} needs {', '.join(missing)} as well")
        parts = [sd[k] for k in row.diffusers]
        if len(parts) == 1 and not row.swap_halves:
            out[row.original] = parts[0]
        elif lazy:
            shape = torch.Size((sum(p.shape[0] for p in parts), *parts[0].shape[1:]))
            out[row.original] = Deferred(shape, parts[0].dtype,
                                         lambda parts=parts, swap=row.swap_halves: _fused(parts, swap))
        else:
            out[row.original] = _fused(parts, row.swap_halves)
        used.update(row.diffusers)
    _raise_unknown([k for k in sd if k not in used], "diffusers", what)
    return out


def to_diffusers(sd: dict[str, Tensor], rows: list[Row], what: str) -> dict[str, Tensor]:
    """Original-layout state dict -> diffusers keys; fused tensors are split into views."""
    out, used = {}, set()
    for row in rows:
        if row.original not in sd:
            continue
        t = sd[row.original]
        t = _swap(t) if row.swap_halves else t
        parts = t.split(list(row.sizes), dim=0) if len(row.diffusers) > 1 else (t,)
        out.update(zip(row.diffusers, parts))
        used.add(row.original)
    _raise_unknown([k for k in sd if k not in used], "original", what)
    return out
