"""Control type names of Union ControlNets (xinsir's ControlNet++), in index order.

The index is what the network sees; the names are how each face spells it: ComfyUI's
SetUnionControlNetType options (after "auto"), and the sd-webui-controlnet extension's
`union_control_type` unit values. The first 6 types are in every union file, "tile" and "repaint"
(A1111: "Tile", "Inpaint") only in the 8-type promax one.
"""
from __future__ import annotations

from ..errors import InvalidArgument

COMFY_NAMES = ("openpose", "depth", "hed/pidi/scribble/ted", "canny/lineart/anime_lineart/mlsd", "normal",
               "segment", "tile", "repaint")
A1111_NAMES = ("OpenPose", "Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint")
UNSET = ("auto", "unknown", "none", "")  # ComfyUI's and the extension's "no type chosen"
# other spellings people use (preprocessor families, the extension's tags)
_ALIASES = {"pose": 0, "dw_openpose": 0, "softedge": 2, "soft_edge": 2, "hardedge": 3, "hard_edge": 3,
            "normalmap": 4, "normal_map": 4, "seg": 5, "segmentation": 5, "blur": 6, "inpaint": 7}


def _names() -> dict[str, int]:
    names = dict(_ALIASES)
    for i, (comfy, a1111) in enumerate(zip(COMFY_NAMES, A1111_NAMES)):
        names[comfy] = names[a1111.lower()] = i
        for part in comfy.split("/"):
            names[part] = i
    return names


NAMES = _names()


def control_type_index(value, field: str = "control type") -> int | None:
    """The type index of a name (ComfyUI's, the extension's, or a short one like "canny", any case) or of
    an index 0..7; None for unset ("auto", "Unknown", empty)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(COMFY_NAMES):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in UNSET:
            return None
        if key in NAMES:
            return NAMES[key]
    raise InvalidArgument(f"{field}: unknown control type {value!r}; use auto or one of "
                          f"{', '.join(COMFY_NAMES)} (or {', '.join(A1111_NAMES)})")


def check_control_type(index: int | None, union_types: int, model_name: str, field: str = "control type") -> None:
    """InvalidArgument unless the ControlNet (with `union_types` types; 0: not a union one) takes `index`."""
    if index is None:
        return
    if not union_types:
        raise InvalidArgument(f"{field}: {model_name} is not a Union ControlNet; a control type only applies "
                              "to union models (leave it unset)")
    if index >= union_types:
        raise InvalidArgument(f"{field}: {COMFY_NAMES[index]} ({index}) is out of range for {model_name}, which has "
                              f"{union_types} control types; use the ProMax Union ControlNet for it")


# Flux.1 Union ControlNets' modes (InstantX's Union, Shakker-Labs' Union-Pro), in index order
FLUX_MODES = ("canny", "tile", "depth", "blur", "pose", "gray", "lq")
_FLUX_ALIASES = {"openpose": 4, "low quality": 6, "grey": 5, "lineart": 0}


def flux_mode_index(value, modes: int, model_name: str, field: str = "control type") -> int | None:
    """The Flux Union mode of a name or index (None: unset); InvalidArgument for a plain ControlNet
    (when set) or a mode the file does not have."""
    if value is None or (isinstance(value, str) and value.strip().lower() in UNSET):
        return None
    if not modes:
        raise InvalidArgument(f"{field}: {model_name} is not a Union ControlNet; a control type only applies "
                              "to union models (leave it unset)")
    index = value if isinstance(value, int) and not isinstance(value, bool) else None
    if isinstance(value, str):
        key = value.strip().lower()
        index = FLUX_MODES.index(key) if key in FLUX_MODES else _FLUX_ALIASES.get(key)
    if index is None or not 0 <= index < modes:
        raise InvalidArgument(f"{field}: {value!r} is not a mode of {model_name}; use one of "
                              f"{', '.join(FLUX_MODES[:modes])} (or 0..{modes - 1})")
    return index
