"""Say what a weight file is when it is not a Stable Diffusion checkpoint we can run.

Every other model family is recognised by a few key names no SD file has (the telltales below,
gathered from the families' released files); a LoRA, an embedding, a ControlNet, a lone VAE or text
encoder by the names of their own formats. Works on key names (and one shape) alone.
"""
from __future__ import annotations

from typing import Mapping

Shapes = Mapping[str, tuple[int, ...]]

SUPPORTED = ("opensd runs Stable Diffusion 1.x, 2.x, SDXL, SD3/SD3.5, Flux.1, FLUX.2 [klein], Chroma, Z-Image and "
             "Qwen-Image models and its own small ones")
# Families of _FAMILIES that opensd runs (families/ detects their files first): named when a file of
# theirs reaches code for the UNet families only.
DIT_FAMILIES = ("Stable Diffusion 3", "Flux.1", "Flux.2", "Chroma", "Z-Image", "Qwen-Image")

# Prefixes the same network's keys carry in different files (original release, ComfyUI's full
# checkpoints, diffusers' transformer files, training wrappers).
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "transformer.", "unet.", "net.")

# (family, telltales): every telltale must be present. A telltale is a key name (after one of the
# prefixes), "*part" for any key containing part, or (key, axis, size) for a key with that size.
# First match wins, so a family whose telltales include another's comes first.
_FAMILIES: tuple[tuple[str, tuple], ...] = (
    ("Stable Diffusion 3", ("joint_blocks.0.context_block.attn.qkv.weight",)),
    ("Stable Diffusion 3", ("transformer_blocks.0.attn.add_q_proj.weight", "pos_embed.proj.weight")),
    ("Flux.2", ("double_stream_modulation_img.lin.weight",)),
    ("Flux.2", ("double_stream_modulation_img.linear.weight",)),
    ("Chroma Radiance", ("*distilled_guidance_layer.", "*nerf_")),  # pixel space, no VAE
    ("Chroma", ("*distilled_guidance_layer.",)),
    ("Flux.1", ("double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight")),
    ("Flux.1", ("single_transformer_blocks.0.attn.to_q.weight", "x_embedder.weight")),
    ("HunyuanVideo", ("txt_in.individual_token_refiner.blocks.0.norm1.weight",)),
    ("Hunyuan3D", ("latent_in.weight", "cond_in.weight")),
    ("Stable Cascade", ("clf.1.weight",)),
    ("AuraFlow", ("double_layers.0.attn.w1q.weight",)),
    ("Hunyuan-DiT", ("mlp_t5.0.weight",)),
    ("PixArt", ("adaln_single.emb.timestep_embedder.linear_1.bias", "pos_embed.proj.bias")),
    ("LTX-Video", ("adaln_single.emb.timestep_embedder.linear_1.bias",)),
    ("PixArt", ("t_block.1.weight",)),
    ("Mochi", ("t5_yproj.weight",)),
    ("Z-Image", ("cap_embedder.1.weight", "layers.0.adaLN_modulation.0.weight")),
    ("Lumina 2", ("cap_embedder.1.weight",)),
    ("Wan", ("head.modulation",)),
    ("HiDream", ("caption_projection.0.linear.weight",)),
    ("Qwen-Image", ("txt_norm.weight", "img_in.weight")),
    ("CogVideoX", ("blocks.0.norm1.linear.weight", "patch_embed.proj.weight")),
    ("Cosmos", ("blocks.block0.blocks.0.block.attn.to_q.0.weight",)),
    ("Stable Video Diffusion", ("*.time_stack.",)),
    ("Kolors", (("label_emb.0.0.weight", 1, 5632),)),  # SDXL's layout with ChatGLM's 4096-wide pooled text
    ("Kolors", ("encoder_hid_proj.weight",)),
)

# diffusers pipeline class names (model_index.json's _class_name) of families we do not run, by prefix.
_PIPELINES = {
    "Flux": "Flux.1 Redux/Control", "FluxKontextInpaint": "Flux.1 Kontext inpainting",
    "ChromaRadiance": "Chroma Radiance",
    "PixArt": "PixArt", "Sana": "Sana", "StableCascade": "Stable Cascade", "Wuerstchen": "Würstchen",
    "AuraFlow": "AuraFlow", "HunyuanDiT": "Hunyuan-DiT", "HunyuanVideo": "HunyuanVideo", "Kolors": "Kolors",
    "StableVideoDiffusion": "Stable Video Diffusion", "Lumina": "Lumina", "Wan": "Wan", "LTX": "LTX-Video",
    "Mochi": "Mochi", "CogVideoX": "CogVideoX", "QwenImageEdit": "Qwen-Image-Edit",
    "QwenImageLayered": "Qwen-Image-Layered", "HiDream": "HiDream",
    "Kandinsky": "Kandinsky", "IF": "DeepFloyd IF", "StableDiffusionUpscale": "the SD x4 upscaler",
    "StableDiffusionLatentUpscale": "the SD latent upscaler", "StableUnCLIP": "Stable unCLIP",
    "TextToVideoSD": "ModelScope text-to-video", "AnimateDiff": "AnimateDiff",
}

_LORA_MARKERS = ("lora_unet_", "lora_te", "lora_prior_", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.",
                 "_lora.down.", ".hada_w1_a", ".lokr_w1", ".oft_blocks")


def _names(shapes: Shapes) -> dict[str, tuple[int, ...]]:
    out = dict(shapes)
    for k, v in shapes.items():
        for p in _PREFIXES:
            if k.startswith(p):
                out.setdefault(k[len(p):], v)
    return out


def _has(names: Mapping[str, tuple[int, ...]], telltale) -> bool:
    if isinstance(telltale, tuple):
        key, axis, size = telltale
        shape = names.get(key)
        return shape is not None and len(shape) > axis and shape[axis] == size
    if telltale.startswith("*"):
        return any(telltale[1:] in k for k in names)
    return telltale in names


def unsupported_family(shapes: Shapes) -> str | None:
    """The name of the model family `shapes` belong to when it is one we do not run, else None."""
    family = known_family(shapes)
    return None if family in DIT_FAMILIES else family


def known_family(shapes: Shapes) -> str | None:
    """The name of the non-UNet model family `shapes` belong to (run by opensd or not), else None."""
    names = _names(shapes)
    return next((family for family, telltales in _FAMILIES if all(_has(names, t) for t in telltales)), None)


def family_message(family: str, what: str = "checkpoint") -> str:
    return f"this is a {family} {what} (model family not supported yet: {SUPPORTED})"


def unsupported_pipeline(class_name: str) -> str | None:
    """The family of a diffusers pipeline class we do not run (by model_index.json), else None."""
    match = max((p for p in _PIPELINES if class_name.startswith(p)), key=len, default=None)
    return _PIPELINES[match] if match else None


def part_kind(shapes: Shapes, unet_prefix: str) -> str | None:
    """What a file with no whole SD checkpoint holds, from its key names: "lora", "family" (a model
    of another family), "dit" (an SD3 or Flux model), "embedding", "controlnet", "vae", "diffusers_unet", "t5", "text_encoder",
    or None when it is none of these."""
    keys = list(shapes)
    if any(k.startswith(_LORA_MARKERS[:3]) or any(m in k for m in _LORA_MARKERS[3:]) for k in keys):
        return "lora"
    if unsupported_family(shapes):
        return "family"
    if known_family(shapes):
        return "dit"
    if any(k.startswith(("string_to_param", "emb_params", "clip_l", "clip_g")) for k in keys) and len(keys) <= 4:
        return "embedding"
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.")) or "input_hint_block" in k for k in keys):
        return "controlnet"
    if any(k.startswith(("encoder.", "first_stage_model.encoder.")) for k in keys) and \
            not any(k.startswith(("down_blocks.", unet_prefix, "encoder.block.")) for k in keys):
        return "vae"
    if any(k.startswith(("down_blocks.", "mid_block.")) for k in keys):
        return "diffusers_unet"
    if any(k.startswith(("encoder.block.0.layer.0.SelfAttention.", "shared.weight")) for k in keys):
        return "t5"
    if any(k.startswith(("text_model.encoder.", "cond_stage_model.", "conditioner.embedders.")) for k in keys):
        return "text_encoder"
    return None


_PART_MESSAGES = {
    "lora": ("this is a LoRA, not a checkpoint: load a checkpoint as the model and apply this file with "
             "--lora (or a <lora:name:weight> tag in the prompt)"),
    "embedding": "this is a textual-inversion embedding, not a checkpoint",
    "controlnet": "this is a ControlNet, not a checkpoint",
    "vae": "this is a standalone VAE, not a checkpoint; pass it with --vae",
    "diffusers_unet": ("this looks like one component of a diffusers folder (a UNet file); pass the folder that "
                       "holds unet/, vae/ and text_encoder/ instead"),
    "t5": "this is a T5 text encoder (used by SD3, Flux and others), not a checkpoint",
    "text_encoder": "this holds only a text encoder, not a whole checkpoint (no UNet, no VAE)",
}


def what_else(shapes: Shapes, unet_prefix: str) -> str:
    """A message for a file with no SD UNet, naming what it looks like."""
    kind = part_kind(shapes, unet_prefix)
    if kind == "family":
        return family_message(unsupported_family(shapes))
    if kind == "dit":
        return (f"this is a {known_family(shapes)} model; this works on Stable Diffusion 1.x, 2.x and SDXL "
                "checkpoints only")
    if kind is not None:
        return _PART_MESSAGES[kind]
    sample = ", ".join(list(shapes)[:3]) or "no tensors"
    return f"not a Stable Diffusion checkpoint: no {unet_prefix}* keys (first keys: {sample})"
