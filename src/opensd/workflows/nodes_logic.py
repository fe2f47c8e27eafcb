"""ComfyUI's logic nodes (comfy_extras.nodes_logic, category utilities/logic) that fit a fixed
input list: ComfySwitchNode (If/Else Switch: on_true when switch is set, else on_false; a branch left
unconnected gives None), ComfyNotNode (Python's `not` on any value) and ComfyAndNode / ComfyOrNode
(Python's all() / any() of the values linked to a growing list of inputs, ComfyUI's Autogrow:
values.value0 .. values.value9). ComfyUI evaluates the switch's inputs lazily, only the chosen one;
here both connected branches run, which gives the same output at the cost of the other branch's
work. And ComfyNumberConvert (comfy_extras.nodes_number_convert, category math): an INT, FLOAT,
STRING or BOOLEAN as FLOAT and INT. ComfyMathExpression is in nodes_math."""
from __future__ import annotations

import math

import torch

from ..errors import InvalidArgument
from .autogrow import Autogrow
from .types import NodeDef, register

_MODULE = "comfy_extras.nodes_logic"
_CATEGORY = "utilities/logic"
MATCH_TYPE = "COMFY_MATCHTYPE_V3"
_MISSING = object()


def switch(call, switch, on_false=_MISSING, on_true=_MISSING):
    selected = on_true if switch else on_false
    return (None if selected is _MISSING else selected,)


def truthy(value) -> bool:
    """Python's truth of `value`; a tensor of more than one value has none, as in Python."""
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise InvalidArgument(f"value: a tensor of shape {tuple(value.shape)} is neither true nor false "
                              "(only single values, texts, numbers and lists are)")
    return bool(value)


def logical_not(call, value):
    return (not truthy(value),)


_BRANCH = (MATCH_TYPE, {"lazy": True, "template": {"template_id": "switch", "allowed_types": "*"}})

register(NodeDef(
    "ComfySwitchNode", switch, {"switch": ("BOOLEAN", {})}, (MATCH_TYPE,), output_names=("output",),
    optional={"on_false": _BRANCH, "on_true": _BRANCH}, category=_CATEGORY, display_name="If/Else Switch",
    module=_MODULE, experimental=True))
register(NodeDef(
    "ComfyNotNode", logical_not, {"value": ("*", {})}, ("BOOLEAN",), category=_CATEGORY, display_name="Not",
    description="Logical NOT operation. Returns true if the value is falsy. Uses Python's rules for truthiness.",
    module=_MODULE))


def logical_and(call, values):
    return (all(truthy(v) for v in values.values()),)


def logical_or(call, values):
    return (any(truthy(v) for v in values.values()),)


_VALUES = {"values": (Autogrow("value", ("*", {}), prefix="value", min=1),)}
for _name, _fn, _display, _rule in (("ComfyAndNode", logical_and, "And", "AND operation. Returns true if all"),
                                    ("ComfyOrNode", logical_or, "Or", "OR operation. Returns true if any")):
    register(NodeDef(
        _name, _fn, dict(_VALUES), ("BOOLEAN",), category=_CATEGORY, display_name=_display, module=_MODULE,
        description=f"Logical {_rule} of the values are truthy. Uses Python's rules for truthiness."))


NUMBER_TYPES = "INT,FLOAT,STRING,BOOLEAN"


def number_convert(call, value):
    """(float, int) of a number, a boolean (1 / 0) or a text holding a finite number (its int: the
    text read as an integer, else the float truncated), as ComfyUI's Number Convert."""
    if isinstance(value, bool):
        as_float, as_int = float(value), int(value)
    elif isinstance(value, int):
        as_float, as_int = float(value), value
    elif isinstance(value, float):
        as_float = value
        as_int = int(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            raise InvalidArgument("value: an empty text is not a number")
        if len(text) > 4300:  # Python's own limit on int() of a text
            raise InvalidArgument(f"value: {len(text):,} characters is too long for a number")
        try:
            as_float = float(text)
        except ValueError:
            raise InvalidArgument(f"value: {value[:80]!r} is not a number") from None
        try:
            as_int = int(text)
        except ValueError:
            as_int = int(as_float) if math.isfinite(as_float) else None
    else:
        raise InvalidArgument(f"value: a {type(value).__name__} is not a number, boolean or text")
    if not math.isfinite(as_float):
        raise InvalidArgument(f"value: {as_float} is not a finite number")
    return as_float, as_int


register(NodeDef(
    "ComfyNumberConvert", number_convert, {"value": (NUMBER_TYPES, {"display_name": "value"})}, ("FLOAT", "INT"),
    category="math", display_name="Number Convert", module="comfy_extras.nodes_number_convert"))
