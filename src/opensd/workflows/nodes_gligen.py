"""ComfyUI's GLIGEN nodes (nodes.py): GLIGENLoader reads a box-grounding model from models/gligen,
GLIGENTextBoxApply adds a phrase in a box to each conditioning entry ("gligen": ("position", model,
[(phrase embedding, h, w, y, x) in latent cells, ...])). The phrase embedding is the text encoder's
unprojected pooled output (the last layer's end-of-text token, whatever the CLIP skip), as ComfyUI
encodes it. Sampling grounds each such entry's model calls (gligen_patch.py)."""
from __future__ import annotations

from ..checkpoints.gligen_files import load_gligen
from ..errors import InvalidArgument
from ..models.gligen import MAX_OBJECTS
from .gligen_patch import GligenRef
from .loras import activate
from .types import MAX_RESOLUTION, Choices, ClipRef, NodeDef, register


def gligen_loader(call, gligen_name):
    return (GligenRef(load_gligen(call.ctx.folders.resolve("gligen", gligen_name)), gligen_name),)


register(NodeDef("GLIGENLoader", gligen_loader, {"gligen_name": (Choices("gligen"), {})}, ("GLIGEN",),
                 category="loaders"))


def phrase_embedding(clip: ClipRef, text: str):
    """The CLIP's pooled output of `text` before any text projection, (1, width)."""
    encoders = clip.pipe.config.text_encoders
    if len(encoders) != 1 or encoders[0].projection_dim:
        raise InvalidArgument("clip: GLIGEN phrases are encoded with an SD 1.x CLIP (one text encoder, no "
                              "projection); this CLIP is another model's")
    activate(clip, part="te")
    return clip.pipe.conditioner(clip.clip_skip).last_layer_pooled(text).float().cpu()


def gligen_text_box_apply(call, conditioning_to, clip, gligen_textbox_model, text, width, height, x, y):
    if not isinstance(gligen_textbox_model, GligenRef):
        raise InvalidArgument("gligen_textbox_model: expected a GLIGEN from GLIGENLoader")
    phrase = phrase_embedding(clip, text)
    if phrase.shape[-1] != gligen_textbox_model.model.key_dim:
        raise InvalidArgument(f"clip: its phrase embeddings are {phrase.shape[-1]} wide; "
                              f"{gligen_textbox_model.name} reads {gligen_textbox_model.model.key_dim}")
    box = (phrase, height // 8, width // 8, y // 8, x // 8)
    out = []
    for context, extra in conditioning_to:
        extra = dict(extra or {})
        boxes = list(extra["gligen"][2]) if "gligen" in extra else []
        if len(boxes) >= MAX_OBJECTS:
            raise InvalidArgument(f"conditioning_to: GLIGEN grounds at most {MAX_OBJECTS} boxes per prompt")
        extra["gligen"] = ("position", gligen_textbox_model, boxes + [box])
        out.append([context, extra])
    return (out,)


def _position(default: int, least: int) -> tuple:
    return ("INT", {"default": default, "min": least, "max": MAX_RESOLUTION, "step": 8})


register(NodeDef(
    "GLIGENTextBoxApply", gligen_text_box_apply,
    {"conditioning_to": ("CONDITIONING", {}), "clip": ("CLIP", {}), "gligen_textbox_model": ("GLIGEN", {}),
     "text": ("STRING", {"multiline": True, "dynamicPrompts": True}),
     "width": _position(64, 8), "height": _position(64, 8), "x": _position(0, 0), "y": _position(0, 0)},
    ("CONDITIONING",), category="conditioning/gligen"))
