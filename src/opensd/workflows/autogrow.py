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

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .types import InputSpec, NodeDef

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


def group_of(spec: InputSpec) -> Autogrow | None:
    return spec[0] if isinstance(spec[0], Autogrow) else None


def input_specs(node_def: NodeDef) -> Iterator[tuple[str, InputSpec, bool]]:
    """(name, spec, required) for every input a prompt may send the node, an Autogrow group as its
    slots ("images.image0", ...), in declaration order."""
    for declared, is_required in ((node_def.required, True), (node_def.optional, False)):
        for name, spec in declared.items():
            group = group_of(spec)
            if group is None:
                yield name, spec, is_required
                continue
            for i, slot in enumerate(group.slots()):
                yield f"{name}.{slot}", group.input, i < group.min and not group.optional


def groups(node_def: NodeDef) -> dict[str, Autogrow]:
    return {name: group for name, spec in {**node_def.required, **node_def.optional}.items()
            if (group := group_of(spec)) is not None}


def stray_inputs(node_def: NodeDef, inputs: dict) -> list[tuple[str, str, str]]:
    """(input name, message, details) for each input sent to an Autogrow group that is not one of its
    slots: the group's own name, a slot past the last (prefix50 of a 50-slot group) or another name."""
    found = []
    for name, group in groups(node_def).items():
        slots = group.slots()
        allowed = {f"{name}.{slot}" for slot in slots}
        span = f"{name}.{slots[0]} to {name}.{slots[-1]}"
        for key in inputs:
            if key == name:
                found.append((key, "Input must be sent slot by slot",
                              f"{key}: send each input of the group as {name}.{slots[0]}, {name}.{slots[1 % len(slots)]}, "
                              f"... ({span})"))
            elif key.startswith(name + ".") and key not in allowed:
                slot = key[len(name) + 1:]
                number = slot[len(group.prefix):] if group.prefix is not None and slot.startswith(group.prefix) else ""
                if number.isdigit() and int(number) >= group.max:
                    found.append((key, "Too many inputs",
                                  f"{key}: {name} takes at most {len(slots)} inputs ({span})"))
                else:
                    found.append((key, "Unknown input", f"{key}: {name} takes the inputs {span}"))
    return found


def nest(node_def: NodeDef, kwargs: dict) -> dict:
    """The keyword arguments with each group's slots folded into one dict under the group's name, in
    slot order; a group with no slot sent gets {}."""
    found = groups(node_def)
    if not found:
        return kwargs
    out = {k: v for k, v in kwargs.items() if k.split(".", 1)[0] not in found}
    for name, group in found.items():
        out[name] = {slot: kwargs[f"{name}.{slot}"] for slot in group.slots() if f"{name}.{slot}" in kwargs}
    return out
