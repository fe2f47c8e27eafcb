"""An object-removal inpaint model file as a runnable spandrel MaskedImageModelDescriptor.

LaMa ships as big-lama.pt, a TorchScript archive (read by checkpoints.torchscript_weights, its
code never run), and as .safetensors / .pth conversions (checkpoints.files: safetensors, or a
pickle through the restricted unpickler). spandrel recognises LaMa by its keys
("generator.model.1.bn_l.running_mean", or "model.model..." as converted) and builds the network.
MAT (Krita AI Diffusion's default fill model, MAT_Places512_G_fp16.safetensors) is recognised by
"synthesis.first_stage.conv_first.conv.resample_filter"; its network lives in the separate
package spandrel_extra_arches (MIT, but MAT's own code is licensed for non-commercial use only),
so it is an optional extra: without it a MAT file is refused in words naming the extra.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints.files import read_state_dict
from ..checkpoints.safe_pickle import first_line
from ..checkpoints.torchscript_weights import is_torchscript, read_torchscript_weights
from ..errors import CheckpointError

MAT_KEY = "synthesis.first_stage.conv_first.conv.resample_filter"
LAMA_KEYS = ("generator.model.1.bn_l.running_mean", "model.model.1.bn_l.running_mean")  # as spandrel detects
MAT_EXTRA = ("MAT needs the optional package spandrel_extra_arches (pip install 'opensd[mat]'; MAT's own "
             "code is licensed for non-commercial use only); or use a LaMa file (big-lama.pt)")


def read_inpaint_weights(path) -> dict[str, torch.Tensor]:
    """{name: tensor} of an inpaint model file: a TorchScript archive's module attributes, else
    whatever checkpoints.files reads (safetensors, restricted pickles)."""
    path = Path(path)
    return read_torchscript_weights(path) if is_torchscript(path) else read_state_dict(path)


def _is_mat(names) -> bool:
    return MAT_KEY in names or "model." + MAT_KEY in names


def inpaint_architecture(names) -> str | None:
    """"LaMa" or "MAT" when tensor `names` (a dict or set) are one's, else None."""
    return "MAT" if _is_mat(names) else "LaMa" if any(k in names for k in LAMA_KEYS) else None


def _load_mat(path: Path, sd: dict):
    try:
        from spandrel_extra_arches.architectures.MAT import MATArch
    except ImportError:
        raise CheckpointError(path, f"is a MAT inpaint model; {MAT_EXTRA}") from None
    return MATArch().load(sd)


def _load_spandrel(path: Path, sd: dict):
    import spandrel

    try:
        return spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise CheckpointError(path, "is not an inpaint model we know (LaMa, or MAT with the optional "
                                    "spandrel_extra_arches package)") from None


def load_inpaint_model(path, device: str | torch.device = "cpu"):
    """The spandrel MaskedImageModelDescriptor (callable on an image (1, 3, H, W) in [0, 1] and a
    mask (1, 1, H, W) of 0 = keep, 1 = fill; `.architecture.id` "LaMa" or "MAT") for an inpaint
    model file, in eval mode on `device`."""
    import spandrel

    path = Path(path)
    sd = read_inpaint_weights(path)
    if LAMA_KEYS[0] in sd:  # a LaMa training checkpoint (ControlNetLama.pth): its generator only
        sd = {k: v for k, v in sd.items() if k.startswith("generator.")}
    try:
        model = _load_mat(path, sd) if _is_mat(sd) else _load_spandrel(path, sd)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - recognised, but the shapes do not build that network
        raise CheckpointError(path, f"looks like an inpaint model but its weights do not fit: {first_line(e)}") \
            from None
    if not isinstance(model, spandrel.MaskedImageModelDescriptor):
        raise CheckpointError(path, f"is a {model.architecture.name} model, not an inpaint model (LaMa or MAT)")
    return model.to(torch.device(device)).eval()
