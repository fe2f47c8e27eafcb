"""ComfyUI's TextEncodeQwenImageEdit (comfy_extras.nodes_qwen): a Qwen-Image prompt encoded with an
edit image, and that image's latent as the conditioning's reference. Followed as ComfyUI runs it,
which differs from diffusers' QwenImageEditPipeline (the CLI's way, pipeline/qwen_edit_image.py):

* the image is scaled to about 1024x1024 pixels in area, each side rounded to a whole pixel (not to
  multiples of 32), with "area" interpolation, and that image is both VAE-encoded (with `vae`) and
  shown to the vision encoder;
* the vision encoder's input is resized bilinearly on the floats (text/qwen_vl_image.comfy_vl_patches);
* the template is cut at ComfyUI's rule (text/qwen_edit_prompts.comfy_drop);
* the network, given the reference through a ComfyUI graph, starts the text's RoPE past the image's
  own grid and pads an odd reference latent circularly (families/qwen_image.net_fn).
Without an image it is CLIPTextEncode (Qwen-Image's text template). Only the first image of a batch
is seen by the vision encoder, as ComfyUI's; all are VAE-encoded.
"""
from __future__ import annotations

import math

from ..text.qwen_edit_prompts import encode_qwen_edit_prompts
from ..text.qwen_vl_image import comfy_vl_patches
from .loras import activate
from .nodes_core import clip_text_encode, vae_encode
from .nodes_image import upscale
from .types import NodeDef, register

AREA = 1024 * 1024
ENCODER = "qwen25_7b"


def text_encode_qwen_image_edit(call, clip, prompt, vae=None, image=None):
    if image is None:
        return clip_text_encode(call, prompt, clip)
    pipe = clip.pipe
    if pipe.config.family != "qwen_image":
        raise ValueError(f"clip: TextEncodeQwenImageEdit encodes for Qwen-Image models; this CLIP is for "
                         f"{pipe.family.label} (load its text encoder with type 'qwen_image')")
    samples = image.movedim(-1, 1)
    scale = math.sqrt(AREA / (samples.shape[3] * samples.shape[2]))
    width, height = round(samples.shape[3] * scale), round(samples.shape[2] * scale)
    fitted = upscale(samples, width, height, "area", "disabled").movedim(1, -1)[..., :3]
    activate(clip, part="te")
    encoder = pipe.model.encoder(ENCODER)
    tokenizer = pipe.loaded.tokenizers.get("qwen")
    if encoder is None or tokenizer is None or getattr(encoder, "visual", None) is None:
        raise ValueError("clip: TextEncodeQwenImageEdit with an image needs Qwen2.5-VL's text encoder with its "
                         "vision tower (text_encoders/qwen_2.5_vl_7b*.safetensors) and its tokenizer")
    hidden, _ = encode_qwen_edit_prompts(encoder.transformer, encoder.visual, tokenizer, [prompt],
                                         comfy_vl_patches(fitted[0].cpu()), device=pipe.device, drop="comfy")
    extra = {"pooled_output": None}
    if vae is not None:
        extra["reference_latents"] = [vae_encode(call, fitted, vae)[0]["samples"]]
    return ([[hidden.float().cpu(), extra]],)


register(NodeDef(
    "TextEncodeQwenImageEdit", text_encode_qwen_image_edit,
    {"clip": ("CLIP", {}), "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True})},
    ("CONDITIONING",), optional={"vae": ("VAE", {}), "image": ("IMAGE", {})},
    category="advanced/conditioning", module="comfy_extras.nodes_qwen"))
