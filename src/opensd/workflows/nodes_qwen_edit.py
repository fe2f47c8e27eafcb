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

ComfyUI's TextEncodeQwenImageEditPlus (Edit-2509/2511: image1..image3, each optional) differs from
diffusers' QwenImageEditPlusPipeline (the CLI's way) alike, and more:

* each image is area-scaled to about 384x384 pixels in whole pixels for the vision encoder (diffusers:
  sides multiples of 32, Lanczos), and, with `vae`, to about 1024x1024 with sides multiples of 8 (not
  32) for its reference latent, which the network pads circularly when odd in latent cells;
* each image is labelled by its input's number ("Picture 2: " for image2 even when image1 is not
  given; diffusers counts the images given);
* without `vae` the images are only in the prompt (no reference latents);
* without any image the prompt is still encoded in the edit template (not Qwen-Image's text one);
* the reference method is the graph's (FluxKontextMultiReferenceLatentMethod), else the model's:
  "index_timestep_zero" for 2511 files (zero_cond_t), "index" otherwise (families/qwen_image.py).
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
VL_AREA = 384 * 384  # TextEncodeQwenImageEditPlus's vision-encoder images
ENCODER = "qwen25_7b"


def _area_scaled(samples, area: int, multiple: int = 1):
    """ComfyUI's images (B, C, H, W) scaled ("area") to about `area` pixels, sides rounded to `multiple`."""
    scale = math.sqrt(area / (samples.shape[3] * samples.shape[2]))
    width = round(samples.shape[3] * scale / multiple) * multiple
    height = round(samples.shape[2] * scale / multiple) * multiple
    return upscale(samples, width, height, "area", "disabled").movedim(1, -1)[..., :3]


def _encoder(clip, node: str, vision: bool):
    """(pipe, Qwen2.5-VL encoder, tokenizer) of a Qwen-Image CLIP, its vision tower there when `vision`."""
    pipe = clip.pipe
    if pipe.config.family != "qwen_image":
        raise ValueError(f"clip: {node} encodes for Qwen-Image models; this CLIP is for "
                         f"{pipe.family.label} (load its text encoder with type 'qwen_image')")
    activate(clip, part="te")
    encoder = pipe.model.encoder(ENCODER)
    tokenizer = pipe.loaded.tokenizers.get("qwen")
    if encoder is None or tokenizer is None or (vision and getattr(encoder, "visual", None) is None):
        raise ValueError(f"clip: {node} with an image needs Qwen2.5-VL's text encoder with its "
                         "vision tower (text_encoders/qwen_2.5_vl_7b*.safetensors) and its tokenizer")
    return pipe, encoder, tokenizer


def text_encode_qwen_image_edit(call, clip, prompt, vae=None, image=None):
    if image is None:
        return clip_text_encode(call, prompt, clip)
    fitted = _area_scaled(image.movedim(-1, 1), AREA)
    pipe, encoder, tokenizer = _encoder(clip, "TextEncodeQwenImageEdit", True)
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


def text_encode_qwen_image_edit_plus(call, clip, prompt, vae=None, image1=None, image2=None, image3=None):
    given = [(n, image) for n, image in enumerate((image1, image2, image3), start=1) if image is not None]
    pipe, encoder, tokenizer = _encoder(clip, "TextEncodeQwenImageEditPlus", bool(given))
    shown = [comfy_vl_patches(_area_scaled(image.movedim(-1, 1), VL_AREA)[0].cpu()) for _, image in given]
    hidden, _ = encode_qwen_edit_prompts(encoder.transformer, getattr(encoder, "visual", None), tokenizer, [prompt],
                                         shown, device=pipe.device, drop="comfy", pictures=[n for n, _ in given])
    extra = {"pooled_output": None}
    if vae is not None and given:
        extra["reference_latents"] = [vae_encode(call, _area_scaled(image.movedim(-1, 1), AREA, 8), vae)[0]["samples"]
                                      for _, image in given]
    return ([[hidden.float().cpu(), extra]],)


register(NodeDef(
    "TextEncodeQwenImageEditPlus", text_encode_qwen_image_edit_plus,
    {"clip": ("CLIP", {}), "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True})},
    ("CONDITIONING",), optional={"vae": ("VAE", {}), "image1": ("IMAGE", {}), "image2": ("IMAGE", {}),
                                 "image3": ("IMAGE", {})},
    category="advanced/conditioning", module="comfy_extras.nodes_qwen"))
