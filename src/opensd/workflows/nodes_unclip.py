"""ComfyUI's unCLIP nodes (nodes.py): unCLIPConditioning adds a CLIP image embedding to each
conditioning entry ("unclip_conditioning": {clip_vision_output, strength, noise_augmentation},
appended to those it has), and unCLIPCheckpointLoader loads a checkpoint together with the image
encoder stored in it (Stable unCLIP 2.1's ``embedder.model``).

Sampling reads the entries (conds.py, with pipeline.unclip's arithmetic): a Stable unCLIP model
takes them as its "y" vector (zeros without one); an SDXL model takes the noised embedding in place
of its pooled text (the "ReVision" use, with CLIP ViT-bigG image embeddings); other models ignore
them, as in ComfyUI."""
from __future__ import annotations

from ..checkpoints.clip_vision_files import checkpoint_image_encoder
from ..errors import InvalidArgument
from ..models.clip_vision import VisionOutput
from .nodes_clip_vision import ClipVisionRef, device_and_dtype
from .nodes_core import checkpoint_loader
from .types import Choices, NodeDef, register


def unclip_conditioning(call, conditioning, clip_vision_output, strength, noise_augmentation):
    if strength == 0:
        return (conditioning,)
    if not isinstance(clip_vision_output, VisionOutput):
        raise InvalidArgument("clip_vision_output: expected a CLIP_VISION_OUTPUT from CLIPVisionEncode")
    if not 0.0 <= noise_augmentation <= 1.0:
        raise InvalidArgument(f"noise_augmentation: {noise_augmentation} is outside 0..1")
    unit = {"clip_vision_output": clip_vision_output, "strength": strength, "noise_augmentation": noise_augmentation}
    return ([[context, dict(extra or {}, unclip_conditioning=list((extra or {}).get("unclip_conditioning", []))
                            + [unit])] for context, extra in conditioning],)


register(NodeDef(
    "unCLIPConditioning", unclip_conditioning,
    {"conditioning": ("CONDITIONING", {}), "clip_vision_output": ("CLIP_VISION_OUTPUT", {}),
     "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
     "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01})},
    ("CONDITIONING",), category="conditioning"))


def unclip_checkpoint_loader(call, ckpt_name):
    """MODEL, CLIP, VAE as CheckpointLoaderSimple gives them, and the checkpoint's own image encoder
    (None for a checkpoint without one, as ComfyUI gives it: CLIPVisionEncode then says so)."""
    model, clip, vae = checkpoint_loader(call, ckpt_name)
    encoder = checkpoint_image_encoder(call.ctx.folders.resolve("checkpoints", ckpt_name), *device_and_dtype(call.ctx))
    return model, clip, vae, None if encoder is None else ClipVisionRef(encoder, ckpt_name)


register(NodeDef(
    "unCLIPCheckpointLoader", unclip_checkpoint_loader, {"ckpt_name": (Choices("checkpoints"), {})},
    ("MODEL", "CLIP", "VAE", "CLIP_VISION"), category="loaders"))
