"""The inputs a node takes in one prompt once ComfyUI V3's dynamic inputs are laid out, as ComfyUI's
get_finalized_class_inputs lays them out: an Autogrow group (autogrow.py) as its slots, a
DynamicCombo (dynamic_combo.py) as the combo and, under it, the inputs of the option the prompt
chose; each named by its path ("images.image0", "resize_type.width"; an option may hold further
dynamic inputs, "model.references.image0"). And the values the other way: folded into the nested
dicts the node function gets (ComfyUI's build_nested_inputs)."""
from __future__ import annotations

from collections.abc import Iterator

from .autogrow import group_of
from .dynamic_combo import combo_of
from .types import NodeDef


def input_specs(node_def: NodeDef, inputs: dict) -> Iterator[tuple[str, tuple, bool]]:
    """(path, spec, required) for every input the node takes given the prompt's `inputs` (which
    option each DynamicCombo chose), in declaration order."""
    yield from _specs(node_def.required, node_def.optional, inputs, "")


def _specs(required: dict, optional: dict, inputs: dict, prefix: str):
    for declared, is_required in ((required, True), (optional, False)):
        for name, spec in declared.items():
            path = prefix + name
            if (group := group_of(spec)) is not None:
                for i, slot in enumerate(group.slots()):
                    yield f"{path}.{slot}", group.input, i < group.min and not group.optional
                continue
            yield path, spec, is_required
            if (combo := combo_of(spec)) is not None and (option := combo.chosen(inputs.get(path))) is not None:
                yield from _specs(option.required, option.optional, inputs, path + ".")


def stray_inputs(node_def: NodeDef, inputs: dict) -> list[tuple[str, str, str]]:
    """(input name, message, details) for each input sent under a dynamic input's path that it does
    not take: an Autogrow group's non-slots (Autogrow.strays), and under a DynamicCombo whose option
    is chosen, names that option does not bring (a width left from "scale dimensions" after
    "scale by multiplier" was chosen). ComfyUI quietly drops such inputs; a value sent to an input
    that does not exist is refused here rather than lost."""
    found: list[tuple[str, str, str]] = []
    _strays(node_def.required, node_def.optional, inputs, "", found)
    return found


def _strays(required: dict, optional: dict, inputs: dict, prefix: str, found: list) -> None:
    for name, spec in {**required, **optional}.items():
        path = prefix + name
        if (group := group_of(spec)) is not None:
            found += group.strays(path, inputs)
            continue
        combo = combo_of(spec)
        option = None if combo is None else combo.chosen(inputs.get(path))
        if option is None:
            continue  # a plain input, or a combo not sent or sent wrong: that is reported on its own
        _strays(option.required, option.optional, inputs, path + ".", found)
        brought = {**option.required, **option.optional}
        own = {f"{path}.{n}" for n in brought}
        nested = tuple(f"{path}.{n}." for n, s in brought.items() if group_of(s) or combo_of(s))
        takes = f"only {', '.join(sorted(own))}" if own else "no inputs of its own"
        for key in inputs:
            if key.startswith(path + ".") and key not in own and not key.startswith(nested):
                found.append((key, "Unknown input",
                              f"{key}: {path} '{option.key}' takes {takes}"))


def nest(node_def: NodeDef, kwargs: dict) -> dict:
    """The keyword arguments with each dynamic input's values folded into one dict under its name:
    an Autogrow group's sent slots in slot order ({} when none were), a DynamicCombo's option inputs
    (None for one not sent) then its chosen key under its own name."""
    dynamic = {name: spec for name, spec in {**node_def.required, **node_def.optional}.items()
               if group_of(spec) is not None or combo_of(spec) is not None}
    if not dynamic:
        return kwargs
    out = {k: v for k, v in kwargs.items() if k.split(".", 1)[0] not in dynamic}
    return {**out, **_nested(dynamic, kwargs, "", top=True)}


def _nested(declared: dict, kwargs: dict, prefix: str, top: bool = False) -> dict:
    out = {}
    for name, spec in declared.items():
        path = prefix + name
        if (group := group_of(spec)) is not None:
            out[name] = {slot: kwargs[f"{path}.{slot}"] for slot in group.slots() if f"{path}.{slot}" in kwargs}
        elif (combo := combo_of(spec)) is not None:
            choice = kwargs.get(path)  # an INPUT_IS_LIST node gets [choice]: chosen by the prompt's value
            option = combo.chosen(choice[0] if isinstance(choice, list) and choice else choice)
            if option is not None:
                inner = _nested({**option.required, **option.optional}, kwargs, path + ".")
                out[name] = {**inner, name: kwargs[path]}
        elif path in kwargs or not top:
            out[name] = kwargs.get(path)
    return out
