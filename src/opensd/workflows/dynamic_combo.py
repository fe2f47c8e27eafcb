"""ComfyUI V3's DynamicCombo inputs: a combo whose chosen option brings inputs of its own
(ResizeImageMaskNode's resize_type: "scale dimensions" brings width, height and crop, "scale by
multiplier" brings multiplier, ...).

Declared in a NodeDef's ``required`` (or ``optional``) as ``"resize_type": (DynamicCombo((Option(key,
{name: spec}), ...)), {"tooltip": ...})``. In an API-format prompt the combo is sent under its own
name and the chosen option's inputs under ``"<combo>.<input>"`` (``"resize_type": "scale by
multiplier", "resize_type.multiplier": 0.5``), as ComfyUI's frontend sends them. The node function
gets the combo as one dict: the option's inputs (None for one of its optional inputs that was not
sent) and, last, the chosen key under the combo's own name (``{"multiplier": 0.5, "resize_type":
"scale by multiplier"}``), as ComfyUI's build_nested_inputs makes it.

``object_info`` shows it as ComfyUI does: ``["COMFY_DYNAMICCOMBO_V3", {"tooltip": ..., "options":
[{"key": "scale by multiplier", "inputs": {"required": {"multiplier": ["FLOAT", {...}]}}}, ...]}]``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .types import InputSpec

DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"


@dataclass(frozen=True)
class Option:
    """One choice of a DynamicCombo and the inputs it brings (none is fine: ColorTransfer's)."""
    key: str
    required: dict[str, InputSpec] = field(default_factory=dict)
    optional: dict[str, InputSpec] = field(default_factory=dict)

    def json(self, spec_json: Callable[[InputSpec], list]) -> dict:
        """As ComfyUI's DynamicCombo.Option.as_dict: its inputs in create_input_dict_v1's shape."""
        inputs = {"required": {k: spec_json(v) for k, v in self.required.items()}}
        if self.optional:
            inputs["optional"] = {k: spec_json(v) for k, v in self.optional.items()}
        return {"key": self.key, "inputs": inputs}


@dataclass(frozen=True)
class DynamicCombo:
    options: tuple[Option, ...]

    def __post_init__(self):
        keys = self.keys()
        if not keys or len(set(keys)) != len(keys):
            raise ValueError("a DynamicCombo takes one or more options with distinct keys")

    def keys(self) -> list[str]:
        return [o.key for o in self.options]

    def chosen(self, value) -> Option | None:
        """The option `value` names, or None (not sent, a link, or no such key)."""
        return next((o for o in self.options if isinstance(value, str) and o.key == value), None)

    def json(self, spec_json: Callable[[InputSpec], list]) -> list[dict]:
        return [o.json(spec_json) for o in self.options]


def combo_of(spec: InputSpec) -> DynamicCombo | None:
    return spec[0] if isinstance(spec[0], DynamicCombo) else None
