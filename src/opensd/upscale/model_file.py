"""An upscaler model file (ESRGAN, Real-ESRGAN and its compact SRVGG, SwinIR, DAT, HAT, ...) as a
runnable spandrel model.

The file is read by our own reader (checkpoints.files: safetensors, or a pickle through the
restricted unpickler), never by spandrel's loader; spandrel only sees the tensors and picks the
architecture and its settings from their names and shapes. Only spandrel's own architectures are
used (all permissively licensed); its non-commercial add-on package is never installed here.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoints.files import read_state_dict
from ..checkpoints.safe_pickle import first_line
from ..errors import CheckpointError

# Training frameworks nest the weights: BasicSR under params_ema (the averaged weights, the ones to
# use) and/or params; DataParallel adds module., BSRGAN netG. (The reader has already unwrapped
# state_dict/model/module dicts; "model." is not stripped here: ESRGAN's own keys start with it.)
_WRAPPERS = ("params_ema", "params-ema", "params", "model_state_dict")
_PREFIXES = ("module.", "netG.")


def plain_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights under the architecture's own key names: wrapper and DataParallel prefixes removed."""
    for wrapper in _WRAPPERS:
        inner = {k[len(wrapper) + 1:]: v for k, v in sd.items() if k.startswith(wrapper + ".")}
        if inner and (len(inner) == len(sd) or wrapper in ("params_ema", "params-ema")):
            sd = inner
            break
    for prefix in _PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_upscale_model(path, device: str | torch.device = "cpu"):
    """The spandrel ImageModelDescriptor (callable on (1, 3, H, W) in [0, 1]; `.scale`,
    `.architecture.name`) for an upscaler file, in eval mode on `device`."""
    import spandrel

    path = Path(path)
    sd = plain_state_dict(read_state_dict(path))
    try:
        model = spandrel.ModelLoader(device=torch.device(device)).load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise CheckpointError(path, "is not an upscaler model we know (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, "
                                    "SPAN, OmniSR, ... as spandrel detects them)") from None
    except Exception as e:  # noqa: BLE001 - detected, but the shapes do not build that network
        raise CheckpointError(path, f"looks like an upscaler model but its weights do not fit: {first_line(e)}") \
            from None
    if not isinstance(model, spandrel.ImageModelDescriptor):
        raise CheckpointError(path, f"is a {model.architecture.name} model, not an image upscaler")
    if model.purpose == "FaceSR":
        raise CheckpointError(path, f"is a {model.architecture.name} face restoration model, not an upscaler "
                                    "(face restoration is not available here)")
    if model.input_channels != 3 or model.output_channels != 3:
        raise CheckpointError(path, f"takes {model.input_channels} and gives {model.output_channels} channels; "
                                    "an upscaler for colour images takes and gives 3")
    return model.eval()
