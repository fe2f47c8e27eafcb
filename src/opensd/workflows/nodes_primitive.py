"""ComfyUI's primitive nodes (comfy_extras.nodes_primitive): a widget value as an output, so one
value can drive several nodes' inputs. The frontend-only "PrimitiveNode" never reaches /prompt;
these do."""
from __future__ import annotations

import json
import sys

from .types import NodeDef, register

_PRIMITIVES = {
    "PrimitiveString": ("String", ("STRING", {"multiline": False})),
    "PrimitiveStringMultiline": ("String (Multiline)", ("STRING", {"multiline": True})),
    "PrimitiveInt": ("Int", ("INT", {"min": -sys.maxsize, "max": sys.maxsize, "control_after_generate": True})),
    "PrimitiveFloat": ("Float", ("FLOAT", {"min": -sys.maxsize, "max": sys.maxsize})),
    "PrimitiveBoolean": ("Boolean", ("BOOLEAN", {})),
}


def primitive(call, value):
    return (value,)


for _name, (_display, _spec) in _PRIMITIVES.items():
    register(NodeDef(_name, primitive, {"value": _spec}, (_spec[0],), category="utils/primitive",
                     display_name=_display, module="comfy_extras.nodes_primitive"))


# PreviewAny ("Preview as Text", comfy_extras.nodes_preview_any): any value as text, shown on the node
# and passed on. Text past the cap is cut: a MODEL or a big tensor prints to megabytes, all of which
# would go to every websocket client.
PREVIEW_TEXT_CHARS = 20_000


def preview_any(call, source=None):
    if isinstance(source, str):
        text = source
    elif source is None or isinstance(source, (bool, int, float)):
        text = str(source)
    else:
        try:
            text = json.dumps(source, indent=4)
        except (TypeError, ValueError):  # tensors, models: not JSON
            text = str(source)
    if len(text) > PREVIEW_TEXT_CHARS:
        text = text[:PREVIEW_TEXT_CHARS] + f"\n... ({len(text) - PREVIEW_TEXT_CHARS:,} more characters)"
    return {"ui": {"text": (text,)}, "result": (text,)}


register(NodeDef("PreviewAny", preview_any, {"source": ("*", {})}, ("STRING",), category="utilities",
                 display_name="Preview as Text", output_node=True, module="comfy_extras.nodes_preview_any"))
