"""ComfyUI's model-patch route for Z-Image Fun ControlNets (alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union
1.0/2.0/2.1) and DiffSynth's Qwen-Image blockwise ControlNets, with its names, inputs and defaults
(comfy_extras.nodes_model_patch):

* ModelPatchLoader (`name` from model_patches/) gives a MODEL_PATCH; only those two kinds are
  supported here (ComfyUI's other patches, USO, MultiTalk, belong to models opensd does not run),
  others are refused when loaded.
* QwenImageDiffsynthControlnet with a blockwise file patches the MODEL as ComfyUI's DiffSynthCnetPatch:
  every conditioning entry, `strength` over the whole sampling, the image VAE-encoded by the node's
  `vae` (adapters/qwen_image_controlnet.py); the Inpaint file's keep channel is 1 - `mask` (1 =
  repaint) resized bilinearly to the latent, all ones without a mask (ComfyUI's), and a mask given
  with another file is ignored (ComfyUI's). The image is fitted to the latent as ControlNetApply's
  hints are, the mask to the image bilinearly (ComfyUI's patch resizes the image by area, the mask
  straight to the latent: the same when both already fit).
* ZImageFunControlnet (and QwenImageDiffsynthControlnet, which ComfyUI routes the same file through)
  patches the MODEL: the control image acts on every conditioning entry, after the entries' own
  ControlNet hints, at `strength` over the whole sampling (ComfyUI's patch has no percent window),
  the image VAE-encoded by the node's `vae` and fitted to the latent as ControlNetApply's hints are;
  a 2.x file's refiner residuals go to the model's own refiner, as ComfyUI (and alibaba-pai's
  VideoX-Fun) add them (ControlSpec.refiner_in_model).

The network and its residuals are adapters/z_image_controlnet.py's. Without a mask a 2.x file gets
ComfyUI's channels: a grey image to inpaint and a zero keep channel (diffusers' pipeline: zeros). A 2.x file inpaints given `mask` (1 =
repaint) and `inpaint_image` (grey when not given; so is a missing control image), as diffusers'
ZImageControlNetInpaintPipeline makes its channels (ComfyUI's the same): 1 - the mask at the latent's
size and the latent of the image with its masked pixels grey. An inpaint_image without a mask is refused
(ComfyUI then feeds a zero mask channel).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..adapters.dit_control_mask import file_has_mask_channels
from ..adapters.z_image_controlnet import inpaint_hint
from ..checkpoints.files import read_safetensors_header
from ..checkpoints.qwen_image_controlnet_files import blockwise_config, is_qwen_image_blockwise
from ..checkpoints.z_image_controlnet_files import is_z_image_controlnet, z_image_controlnet_config
from ..errors import CheckpointError, InvalidArgument
from .nodes_controlnet import ControlHint, ControlNetRef, _image
from .types import Choices, NodeDef, register

MODULE = "comfy_extras.nodes_model_patch"


def model_patch_loader(call, name):
    path = call.ctx.folders.resolve("model_patches", name)
    try:
        header, _ = read_safetensors_header(path)
    except (CheckpointError, OSError) as e:
        raise InvalidArgument(f"model patch {name}: cannot read it as a safetensors file ({e})") from None
    if not (is_z_image_controlnet(header) or is_qwen_image_blockwise(header)):
        raise InvalidArgument(f"model patch {name}: not a Z-Image Fun ControlNet (Z-Image-Turbo-Fun-Controlnet-Union) "
                              "or a Qwen-Image blockwise ControlNet (DiffSynth), the model patches opensd runs")
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}  # a damaged file refused here, by its shapes
    config = blockwise_config if is_qwen_image_blockwise(header) else z_image_controlnet_config
    config(shapes, path=path)
    return (ControlNetRef(path, name),)


register(NodeDef(
    "ModelPatchLoader", model_patch_loader, {"name": (Choices("model_patches"), {})}, ("MODEL_PATCH",),
    category="advanced/loaders", experimental=True, module=MODULE,
    description="Loads a model patch from model_patches/ (here: Z-Image Fun and Qwen-Image blockwise ControlNets)."))


def _fitted(x: torch.Tensor, size) -> torch.Tensor:
    return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _inpaint_hint(image, inpaint_image, mask) -> torch.Tensor:
    """The 7-channel hint (adapters/z_image_controlnet.py) at the control image's size (else the inpaint
    image's): a missing image grey, the mask (1 = repaint) resized bilinearly (cut at 0.5 when used)."""
    if mask is None:
        raise InvalidArgument("mask: a Z-Image Fun ControlNet inpaints where a mask says (1 = repaint); "
                              "connect one with inpaint_image")
    image = None if image is None else _image(image)[:, :3]
    inpaint = None if inpaint_image is None else _image(inpaint_image)[:, :3]
    size = (image if image is not None else inpaint if inpaint is not None else mask[..., None, :, :]).shape[-2:]
    grey = torch.full((1, 3, *size), 0.5)
    m = mask.float().cpu().reshape(-1, 1, *mask.shape[-2:])
    image, inpaint = [grey if x is None else _fitted(x, size) for x in (image, inpaint)]
    counts = {len(x) for x in (image, inpaint, m)}
    if len(counts - {1}) > 1:  # one of each is spread over the others' batch; two counts cannot pair up
        raise InvalidArgument(f"image, inpaint_image and mask: batches of {len(image)}, {len(inpaint)} and "
                              f"{len(m)}; give one each or equal batches")
    n = max(counts)
    return inpaint_hint(*(x.expand(n, -1, -1, -1) if len(x) == 1 else x for x in (image, inpaint, _fitted(m, size))))


def _is_blockwise(path) -> bool:
    entries, _ = read_safetensors_header(path)
    return is_qwen_image_blockwise(entries)


def fun_controlnet(call, model, model_patch, vae, strength, image=None, inpaint_image=None, mask=None):
    if _is_blockwise(model_patch.path):  # the Inpaint file's mask rides in the 7-channel hint (ComfyUI ignores
        # a mask given with the other files)
        hint = _image(image)[:, :3] if mask is None or not file_has_mask_channels(model_patch.path, blockwise=True) \
            else _inpaint_hint(image, None, mask)
    elif inpaint_image is not None or mask is not None:
        hint = _inpaint_hint(image, inpaint_image, mask)
    elif image is None:
        raise InvalidArgument("image: a control image is required (or inpaint_image and mask)")
    elif file_has_mask_channels(model_patch.path):  # ComfyUI: a grey image to inpaint, a zero keep channel
        hint = _inpaint_hint(image, None, torch.ones(1, *image.shape[1:3]))
    else:
        hint = _image(image)[:, :3]
    control = ControlHint(model_patch, hint, float(strength), vae=vae, refiner_in_model=True)
    return (replace(model, model_controls=model.model_controls + (control,)),)


_STRENGTH = ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})
_BASE = {"model": ("MODEL", {}), "model_patch": ("MODEL_PATCH", {}), "vae": ("VAE", {})}

register(NodeDef(
    "ZImageFunControlnet", fun_controlnet, {**_BASE, "strength": _STRENGTH}, ("MODEL",),
    optional={"image": ("IMAGE", {}), "inpaint_image": ("IMAGE", {}), "mask": ("MASK", {})},
    category="advanced/loaders/zimage", experimental=True, module=MODULE,
    description="Applies a Z-Image Fun ControlNet (a MODEL_PATCH) with its control image to the model."))

register(NodeDef(
    "QwenImageDiffsynthControlnet", fun_controlnet, {**_BASE, "image": ("IMAGE", {}), "strength": _STRENGTH},
    ("MODEL",), optional={"mask": ("MASK", {})}, category="advanced/loaders/qwen", experimental=True, module=MODULE,
    description="Applies a Qwen-Image blockwise ControlNet (DiffSynth; a MODEL_PATCH) with its control image to the "
                "model (and Z-Image Fun ControlNets as ZImageFunControlnet does)."))
