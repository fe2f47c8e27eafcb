"""Fooocus' inpaint method for SDXL (lllyasviel/Fooocus): any SDXL model becomes an inpainting one
with two additions, both for one sampling run only.

* A small head: one bias-free 3x3 conv (replicate-padded) from [latent mask, scaled masked-image
  latent] to the channels of the UNet's first block, whose output it is added to (so to that block's
  skip connection too). The mask is the noise mask max-pooled to the latent's size and rounded.
* A weight patch: a difference per UNet weight, stored as uint8 over [min, max], added to the
  weights (:class:`WeightDiffs`; workflows/loras.py writes them into the network and puts the
  base weights back after).

The checkpoint files are read by checkpoints/fooocus_inpaint_files.py.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InvalidArgument


def dequantized(q: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """A patch entry's weight difference in float32: q / 255 spread over [lo, hi]."""
    return q.float() / 255.0 * (hi.float() - lo.float()) + lo.float()


def head_feature(head: torch.Tensor, latent: torch.Tensor, noise_mask: torch.Tensor) -> torch.Tensor:
    """The head's output (B, channels, h, w) for a scaled latent (B, C, h, w) and a noise mask
    (B|1, 1, H, W) at pixel size (resized to 8 x the latent's when it is not)."""
    b, _, h, w = latent.shape
    mask = noise_mask.float().to(latent.device)
    if mask.ndim == 3:
        mask = mask[:, None]
    if tuple(mask.shape[-2:]) != (8 * h, 8 * w):
        mask = F.interpolate(mask, size=(8 * h, 8 * w), mode="bilinear", align_corners=False)
    mask = F.max_pool2d(mask.round(), 8).round()
    if mask.shape[0] != b:
        mask = mask.repeat(-(-b // mask.shape[0]), 1, 1, 1)[:b]
    feed = torch.cat([mask, latent.float()], dim=1)
    return F.conv2d(F.pad(feed, (1, 1, 1, 1), mode="replicate"), head.to(feed))


@dataclass(eq=False)
class WeightDiffs:
    """A MODEL's weight patch (ModelRef.weight_patches): differences to add to named network weights."""
    diffs: dict  # network parameter name -> (q uint8, min, max)
    name: str

    def fitting(self, params: dict) -> list[str]:
        """The patch's weights `params` has in the same shape. Others are skipped, as ComfyUI's
        loader skips them (an SDXL inpainting model's 9-channel first conv); none at all is an error."""
        found = [k for k in self.diffs if k in params and tuple(self.diffs[k][0].shape) == tuple(params[k].shape)]
        if not found:
            raise InvalidArgument(f"patch: none of the {len(self.diffs)} weights of {self.name} fits this model "
                                  "(the Fooocus inpaint patch is for SDXL models)")
        return found

    def check(self, params: dict) -> None:
        self.fitting(params)

    def deltas(self, params: dict) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, float32 difference) for each weight of `params` the patch fits, one at a time
        (a whole SDXL patch in float32 would be 10 GB)."""
        for k in self.fitting(params):
            yield k, dequantized(*self.diffs[k])


@dataclass(eq=False)
class HeadPatch:
    """A MODEL's network patch (ModelRef.network_patches): the head's feature, per image of the
    batch (one row for all), added to the first input block's output during one network call."""
    feature: torch.Tensor  # (B, channels, h, w)
    per_image = True  # guiders.ModelRun passes the image this call is for

    def __call__(self, network, sigma: float, image: int = 0, negative: tuple = ()):
        return self._added(network, self.feature[image % self.feature.shape[0]][None])

    @contextmanager
    def _added(self, network, feature: torch.Tensor):
        def hook(module, args, out):
            if out.shape[-2:] != feature.shape[-2:] or out.shape[1] != feature.shape[1]:
                raise InvalidArgument(f"latent: the Fooocus inpaint latent is {feature.shape[-1] * 8}x"
                                      f"{feature.shape[-2] * 8}, but the model samples {out.shape[-1] * 8}x"
                                      f"{out.shape[-2] * 8} here (areas, hires passes and other sizes do not "
                                      "fit it); encode the image being sampled")
            return out + feature.to(out)
        handle = network.input_blocks[0].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
