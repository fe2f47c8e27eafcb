"""Read Fooocus' inpaint files (lllyasviel/fooocus_inpaint): the head and the weight patch.

* ``fooocus_inpaint_head.pth``: a pickle of ``{"head": (320, 5, 3, 3)}``, one bias-free 3x3 conv
  from [mask, latent] to the channels of the UNet's first block.
* ``inpaint_v26.fooocus.patch`` (and v1, v25): a pickle of ``{unet key: (q, w_min, w_max)}`` with
  keys as in an SDXL checkpoint (``diffusion_model.input_blocks.0.0.weight``), ``q`` the weight's
  difference quantised to uint8 over [w_min, w_max]: diff = q / 255 * (w_max - w_min) + w_min.

Both are pickles: read only through the restricted loader (safe_pickle), never run. A head saved
as .safetensors (a flat ``head`` tensor) is read too.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError
from .files import read_state_dict, sniff_format
from .safe_pickle import load_torch_object
from .tensor_checks import check_tensor

PREFIX = "diffusion_model."  # the patch's keys, as in an SD checkpoint


def read_head(path) -> torch.Tensor:
    """The head's conv weight (out, latent channels + 1, 3, 3), float32 on the CPU."""
    path = Path(path)
    if path.name.lower().endswith(".patch"):
        raise CheckpointError(path, "is a Fooocus inpaint patch, not the head; give it as `patch` "
                                    "(the head is fooocus_inpaint_head.pth)")
    head = read_state_dict(path).get("head")
    if head is None:
        raise CheckpointError(path, "not a Fooocus inpaint head: it has no 'head' tensor")
    if head.ndim != 4 or head.shape[-2:] != (3, 3) or head.shape[1] < 2 or not head.is_floating_point():
        raise CheckpointError(path, f"its 'head' is {tuple(head.shape)} {head.dtype}, not a float "
                                    "(channels, latent channels + 1, 3, 3) conv weight")
    return head.float()


def read_patch(path) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The patch as {network parameter name (no ``diffusion_model.``): (q uint8, w_min, w_max)}."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt not in ("torch-zip", "torch-legacy"):
        raise CheckpointError(path, "not a Fooocus inpaint patch (those are PyTorch pickles of "
                                    "{key: (uint8 diff, min, max)}, e.g. inpaint_v26.fooocus.patch)")
    obj = load_torch_object(path, fmt)
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a Fooocus patch's dict of weights")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise CheckpointError(path, f"a weight is stored under the non-text key {key!r}")
        if isinstance(value, torch.Tensor) and key == "head":
            raise CheckpointError(path, "is the Fooocus inpaint head, not the patch; give it as `head`")
        if not (isinstance(value, (tuple, list)) and len(value) == 3
                and all(isinstance(t, torch.Tensor) for t in value)):
            raise CheckpointError(path, f"{key!r} is not a (quantised diff, min, max) triple of tensors")
        q, lo, hi = value
        check_tensor(path, key, q.shape)
        if q.dtype != torch.uint8:
            raise CheckpointError(path, f"{key!r}: the quantised diff is {q.dtype}, not uint8")
        for name, bound in (("min", lo), ("max", hi)):
            if not bound.is_floating_point() or bound.numel() > q.numel() or bound.ndim > q.ndim:
                raise CheckpointError(path, f"{key!r}: its {name} {tuple(bound.shape)} {bound.dtype} does not "
                                            f"fit the diff {tuple(q.shape)}")
            try:
                torch.broadcast_shapes(bound.shape, q.shape)
            except RuntimeError:
                raise CheckpointError(path, f"{key!r}: its {name} {tuple(bound.shape)} does not broadcast over "
                                            f"the diff {tuple(q.shape)}") from None
        out[key.removeprefix(PREFIX)] = (q, lo, hi)
    return out
