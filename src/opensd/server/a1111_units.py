"""Reading the sd-webui-controlnet extension's units from an A1111 request: the unit list, a unit's
image and numbers, a model name's "[hash]" suffix. Shared by ControlNet (a1111_controlnet) and
IP-Adapter (a1111_ip_adapter) units."""
from __future__ import annotations

import math
import re

from ..errors import InvalidArgument

HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,64}\]\s*$")


def number(unit: dict, key: str, field: str, default, low, high):
    value = unit.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidArgument(f"{field}.{key}: {value!r} must be a number in {low:g}..{high:g}")
    return float(value)


def unit_list(req) -> list:
    scripts = req.alwayson_scripts or {}
    cn = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    if cn is None:
        return []
    args = cn.get("args", []) if isinstance(cn, dict) else cn
    if not isinstance(args, list):
        raise InvalidArgument("alwayson_scripts.controlnet.args: expected a list of ControlNet units")
    return args


def image_field(unit: dict):
    """The unit's image: ``image`` (older clients: ``input_image``), from ``{"image": .., "mask": ..}``
    or ``[image, mask]`` too."""
    image = unit.get("image", unit.get("input_image"))
    if isinstance(image, dict):
        image = image.get("image")
    elif isinstance(image, (list, tuple)) and len(image) == 2:
        image = image[0]
    return image or None
