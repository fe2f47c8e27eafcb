"""ComfyUI's image-prompt nodes (nodes.py): CLIPVisionLoader and CLIPVisionEncode (CLIP ViT-L/H/bigG
and SigLIP image encoders, models/clip_vision.py), StyleModelLoader and StyleModelApply (Flux.1
Redux, models/redux.py).

StyleModelApply appends the Redux tokens of every encoded image (flattened into one sequence, as
ComfyUI does) after each conditioning entry's text tokens, so Flux reads them as 729 more context
tokens per image. ``strength_type`` "multiply" scales the tokens; "attn_bias" would instead add
log(strength) to the attention logits between them and the text and image tokens, which needs an
additive mask inside Flux's joint attention that opensd's Flux does not take: that case is refused
unless strength is 1, where both types are the same.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checkpoints.clip_vision_files import load_clip_vision, read_style_model
from ..errors import InvalidArgument
from ..models.clip_vision import VisionModel, VisionOutput, preprocess, resized_size
from ..models.redux import ReduxImageEncoder
from ..pipeline.device import PRECISIONS, resolve_device
from .types import Choices, NodeDef, check_size, register


# Images encoded at once: the encoders' widest activations (SigLIP's MLP, 729 x 4304 values an
# image; Redux's 729 x 12288) grow with the batch, which a graph may make thousands of images long.
CHUNK = 8


@dataclass(frozen=True)
class ClipVisionRef:
    model: VisionModel
    name: str


@dataclass(frozen=True)
class StyleModelRef:
    model: ReduxImageEncoder
    name: str


def device_and_dtype(ctx) -> tuple[torch.device, torch.dtype]:
    device = resolve_device(ctx.device)
    if ctx.precision in PRECISIONS:
        return device, PRECISIONS[ctx.precision]
    return device, torch.float16 if device.type == "cuda" else torch.float32  # "auto"


def _param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


def clip_vision_loader(call, clip_name):
    path = call.ctx.folders.resolve("clip_vision", clip_name)
    device, dtype = device_and_dtype(call.ctx)
    return (ClipVisionRef(load_clip_vision(path, device, dtype), clip_name),)


register(NodeDef(
    "CLIPVisionLoader", clip_vision_loader, {"clip_name": (Choices("clip_vision"), {})}, ("CLIP_VISION",),
    category="loaders", display_name="Load CLIP Vision"))


def clip_vision_encode(call, clip_vision, image, crop="center"):
    if clip_vision is None:
        raise InvalidArgument("clip_vision: none given (unCLIPCheckpointLoader gives one only for a checkpoint "
                              "that holds an image encoder, such as Stable unCLIP's)")
    if not isinstance(clip_vision, ClipVisionRef):
        raise ValueError("clip_vision: expected a CLIP_VISION from CLIPVisionLoader")
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3 or min(image.shape) < 1:
        raise ValueError("image: expected an RGB IMAGE (batch, height, width, 3)")
    model, cfg = clip_vision.model, clip_vision.model.config
    check_size("image: resized for the CLIP vision model", min(CHUNK, image.shape[0]), 3,
               *resized_size(image.shape[1], image.shape[2], cfg.image_size, crop == "center"))
    check_size("clip_vision_output", image.shape[0], cfg.positions, cfg.hidden_size)
    weight = _param(model)
    parts = []
    for chunk in image.split(CHUNK):
        pixels = preprocess(chunk.to(weight.device), cfg, crop=crop == "center").to(weight.dtype)
        with torch.inference_mode():
            out = model(pixels)
        # ComfyUI's intermediate device, in float32
        parts.append([t.float().cpu() for t in (out.last_hidden_state, out.image_embeds, out.penultimate_hidden_states)])
    return (VisionOutput(*(torch.cat(column) for column in zip(*parts))),)


register(NodeDef(
    "CLIPVisionEncode", clip_vision_encode,
    {"clip_vision": ("CLIP_VISION", {}), "image": ("IMAGE", {}), "crop": (["center", "none"], {})},
    ("CLIP_VISION_OUTPUT",), category="conditioning", display_name="CLIP Vision Encode"))


def style_model_loader(call, style_model_name):
    path = call.ctx.folders.resolve("style_models", style_model_name)
    sd, vision_width, text_width = read_style_model(path)
    device, dtype = device_and_dtype(call.ctx)
    with torch.device("meta"):
        model = ReduxImageEncoder(vision_width, text_width)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in sd.items()}, assign=True)
    return (StyleModelRef(model.eval(), style_model_name),)


register(NodeDef(
    "StyleModelLoader", style_model_loader, {"style_model_name": (Choices("style_models"), {})}, ("STYLE_MODEL",),
    category="loaders", display_name="Load Style Model"))


def redux_tokens(style_model: StyleModelRef, vision: VisionOutput) -> torch.Tensor:
    """The Redux tokens of every image of `vision`, as one (1, images x tokens, text width) sequence."""
    model = style_model.model
    hidden = vision.last_hidden_state
    if hidden.ndim != 3 or hidden.shape[-1] != model.vision_width:
        raise ValueError(f"clip_vision_output: its tokens are {hidden.shape[-1]} wide, but {style_model.name} reads "
                         f"{model.vision_width}-wide ones (Flux Redux takes the SigLIP so400m encoder)")
    check_size("conditioning: the Redux tokens", 1, hidden.shape[0] * hidden.shape[1], model.text_width)
    weight = _param(model)
    with torch.inference_mode():
        tokens = [model(part.to(device=weight.device, dtype=weight.dtype)).float().cpu() for part in hidden.split(CHUNK)]
    return torch.cat(tokens).flatten(0, 1).unsqueeze(0)


def style_model_apply(call, conditioning, style_model, clip_vision_output, strength, strength_type):
    if not isinstance(style_model, StyleModelRef):
        raise ValueError("style_model: expected a STYLE_MODEL from StyleModelLoader")
    if not isinstance(clip_vision_output, VisionOutput):
        raise ValueError("clip_vision_output: expected a CLIP_VISION_OUTPUT from CLIPVisionEncode")
    if strength_type == "attn_bias" and strength != 1.0:
        raise ValueError("strength_type: attn_bias with a strength other than 1 needs an attention mask in Flux's "
                         "attention, which opensd does not have; use strength_type multiply")
    tokens = redux_tokens(style_model, clip_vision_output)
    if strength_type == "multiply":
        tokens = tokens * strength
    out = []
    for context, extra in conditioning:
        if "attention_mask" in (extra or {}):
            raise ValueError("conditioning: an entry with an attention_mask cannot take Redux tokens in opensd")
        if context.shape[-1] != tokens.shape[-1]:
            raise ValueError(f"conditioning: its text tokens are {context.shape[-1]} wide, but {style_model.name} makes "
                             f"{tokens.shape[-1]}-wide ones (Flux Redux is for Flux's T5 conditioning)")
        extra_tokens = tokens.to(device=context.device, dtype=context.dtype).expand(context.shape[0], -1, -1)
        out.append([torch.cat((context, extra_tokens), dim=1), dict(extra or {})])
    return (out,)


register(NodeDef(
    "StyleModelApply", style_model_apply,
    {"conditioning": ("CONDITIONING", {}), "style_model": ("STYLE_MODEL", {}),
     "clip_vision_output": ("CLIP_VISION_OUTPUT", {}),
     "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
     "strength_type": (["multiply", "attn_bias"], {})},
    ("CONDITIONING",), category="conditioning/style_model", display_name="Apply Style Model"))
