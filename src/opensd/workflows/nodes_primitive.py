"""ComfyUI's primitive nodes (comfy_extras.nodes_primitive): a widget value as an output, so one
value can drive several nodes' inputs. The frontend-only "PrimitiveNode" never reaches /prompt;
these do."""
from __future__ import annotations

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
