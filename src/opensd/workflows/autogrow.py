"""ComfyUI V3's Autogrow inputs: one declared group that grows a slot each time the last one is linked
(BatchImagesNode's images, ComfyMathExpression's values), up to a fixed number of slots.

Declared in a NodeDef's ``required`` (or ``optional``) as ``"images": (Autogrow(...),)``. Each slot is
a copy of the template input, named ``prefix0, prefix1, ...`` (ComfyUI's TemplatePrefix) or from a
list of names (TemplateNames). In an API-format prompt a slot is sent as ``"<group>.<slot>"``
(``"images.image0"``, ``"values.a"``); the first ``min`` slots are required when the template input
is, the others optional. The node function gets the group as one dict ``{slot: value}`` holding the
slots that were sent, in slot order (``{}`` when none were), as ComfyUI's execute(images=...) does.

``object_info`` shows the group as ComfyUI does: ``["COMFY_AUTOGROW_V3", {"template": {"input":
{"required": {"image": ["IMAGE", {}]}}, "prefix": "image", "min": 1, "max": 50}}]`` (a names template
has ``"names"`` and ``"min"``, no ``"max"``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .types import InputSpec

AUTOGROW = "COMFY_AUTOGROW_V3"
# The most slots one group may have: ComfyUI's Autogrow._MaxNames ("max 100 names for sanity").
MAX_SLOTS = 100


@dataclass(frozen=True)
class Autogrow:
    """The template of an Autogrow group: slots like ``(input_name, input)``, named by ``prefix``
    (prefix0 .. prefix{max-1}) or by ``names``, the first ``min`` required unless ``optional``."""
    input_name: str
    input: InputSpec
    prefix: str | None = None
    names: tuple[str, ...] = ()
    min: int = 1
    max: int = 10  # ComfyUI's TemplatePrefix default; a names template has len(names) slots
    optional: bool = False  # the template input's own optional flag

    def __post_init__(self):
        if (self.prefix is None) == (not self.names):
            raise ValueError("an Autogrow template takes a prefix or names, one of them")
        if self.min < 0 or not 1 <= self.max <= MAX_SLOTS or len(self.names) > MAX_SLOTS:
            raise ValueError(f"an Autogrow template has 0 or more required slots and 1 to {MAX_SLOTS} slots")

    def slots(self) -> list[str]:
        return list(self.names) if self.names else [f"{self.prefix}{i}" for i in range(self.max)]

    def json(self, spec_json: Callable[[InputSpec], list]) -> dict:
        """The template as ComfyUI's object_info shows it; spec_json serialises the slot input."""
        out = {"input": {"required": {}, **({"optional": {}} if self.optional else {})}}
        out["input"]["optional" if self.optional else "required"][self.input_name] = spec_json(self.input)
        if self.names:
            return {**out, "names": list(self.names), "min": self.min}
        return {**out, "prefix": self.prefix, "min": self.min, "max": self.max}

    def strays(self, name: str, inputs: dict) -> list[tuple[str, str, str]]:
        """(input name, message, details) for each input sent to the group `name` (its path) that is
        not one of its slots: the group's own name, a slot past the last (prefix50 of a 50-slot
        group) or another name."""
        found = []
        slots = self.slots()
        allowed = {f"{name}.{slot}" for slot in slots}
        span = f"{name}.{slots[0]} to {name}.{slots[-1]}"
        for key in inputs:
            if key == name:
                second = slots[1 % len(slots)]
                found.append((key, "Input must be sent slot by slot",
                              f"{key}: send each input of the group as {name}.{slots[0]}, {name}.{second}, ... ({span})"))
            elif key.startswith(name + ".") and key not in allowed:
                slot = key[len(name) + 1:]
                number = slot[len(self.prefix):] if self.prefix is not None and slot.startswith(self.prefix) else ""
                if number.isdigit() and int(number) >= self.max:
                    found.append((key, "Too many inputs", f"{key}: {name} takes at most {len(slots)} inputs ({span})"))
                else:
                    found.append((key, "Unknown input", f"{key}: {name} takes the inputs {span}"))
        return found


def group_of(spec: InputSpec) -> Autogrow | None:
    return spec[0] if isinstance(spec[0], Autogrow) else None
