"""Soft inpainting's six settings (A1111's built-in extension; pipeline/soft_inpaint.py does the
work): their names, A1111's UI labels, infotext keys, slider ranges and defaults, checked and
written/read as A1111's script does."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import InvalidArgument

# field -> (A1111's UI label, its infotext key, slider minimum, maximum)
SETTINGS = {
    "schedule_bias": ("Schedule bias", "Soft inpainting schedule bias", 0.0, 8.0),
    "preservation_strength": ("Preservation strength", "Soft inpainting preservation strength", 0.0, 8.0),
    "transition_contrast_boost": ("Transition contrast boost", "Soft inpainting transition contrast boost", 1.0, 32.0),
    "mask_influence": ("Mask influence", "Soft inpainting mask influence", 0.0, 1.0),
    "difference_threshold": ("Difference threshold", "Soft inpainting difference threshold", 0.0, 8.0),
    "difference_contrast": ("Difference contrast", "Soft inpainting difference contrast", 0.0, 8.0),
}
ENABLED_KEY = "Soft inpainting enabled"


@dataclass(frozen=True)
class SoftInpainting:
    """The six settings, in A1111's argument order, with its UI defaults."""
    schedule_bias: float = 1.0
    preservation_strength: float = 0.5
    transition_contrast_boost: float = 4.0
    mask_influence: float = 0.0
    difference_threshold: float = 0.5
    difference_contrast: float = 2.0

    @classmethod
    def of(cls, value) -> "SoftInpainting":
        """From itself or a {field: number} dict (stored jobs keep plain JSON)."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise InvalidArgument(f"soft_inpainting: expected an object of settings, got {value!r}")
        unknown = sorted(set(value) - set(SETTINGS))
        if unknown:
            raise InvalidArgument(f"soft_inpainting.{unknown[0]}: unknown setting ({', '.join(SETTINGS)})")
        return cls(**value)

    def validate(self, where: str = "soft_inpainting.{}") -> None:
        for name, (_, _, low, high) in SETTINGS.items():
            check(getattr(self, name), where.format(name), low, high)

    def infotext(self) -> dict:
        """A1111's keys and values, as its script writes them into the image's parameters."""
        return {ENABLED_KEY: True, **{SETTINGS[f.name][1]: getattr(self, f.name) for f in fields(self)}}

    @classmethod
    def from_infotext(cls, params, where: str = "from") -> "SoftInpainting | None":
        """The settings an image's parameters record (A1111's UI defaults for keys not there)."""
        if params.get(ENABLED_KEY) != "True":
            return None
        values = {}
        for name, (_, key, _, _) in SETTINGS.items():
            if key in params:
                try:
                    values[name] = float(params[key])
                except ValueError:
                    raise InvalidArgument(f"{where}: {key}: {params[key]!r} is not a number") from None
        return cls(**values)


def check(value, field: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidArgument(f"{field}: {value!r} must be a number in {low:g}..{high:g}")
