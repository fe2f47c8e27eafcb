"""A1111's built-in Soft Inpainting script through the API (img2img only, where A1111 shows it):
``alwayson_scripts: {"soft inpainting": {"args": [enabled, schedule bias, preservation strength,
transition contrast boost, mask influence, difference threshold, difference contrast]}}``.
Args left out take the script's UI defaults, as A1111 fills a script's args from its UI; each one
given is checked against its slider's range (422 naming it). pipeline/soft_inpaint.py does the work."""
from __future__ import annotations

from ..errors import InvalidArgument
from ..pipeline.soft_inpaint_settings import SETTINGS, SoftInpainting, check

NAME = "soft inpainting"
_STEPS = {"schedule_bias": 0.1, "preservation_strength": 0.05, "transition_contrast_boost": 0.5,
          "mask_influence": 0.05, "difference_threshold": 0.25, "difference_contrast": 0.25}
# /sdapi/v1/script-info's entries, A1111's UI components in its argument order
SCRIPT_ARGS = ({"label": "Soft inpainting", "value": False, "minimum": None, "maximum": None, "step": None,
                "choices": None},) + tuple(
    {"label": label, "value": getattr(SoftInpainting(), name), "minimum": low, "maximum": high,
     "step": _STEPS[name], "choices": None} for name, (label, _, low, high) in SETTINGS.items())


def kwargs(req) -> dict:
    """The pipeline's `soft_inpainting` (a plain dict, for the stored job) when the request enables
    the script, else nothing."""
    for name, value in (req.alwayson_scripts or {}).items():
        if name.lower() != NAME:
            continue
        field = f"alwayson_scripts.{name}.args"
        args = value.get("args", []) if isinstance(value, dict) else None
        if not isinstance(args, list):
            raise InvalidArgument(f"{field}: expected a list [enabled, schedule bias, preservation strength, "
                                  "transition contrast boost, mask influence, difference threshold, difference contrast]")
        if not args:
            return {}
        if not isinstance(args[0], bool):
            raise InvalidArgument(f"{field}[0]: {args[0]!r} must be true or false (enabled)")
        if not args[0]:
            return {}
        given = {}
        for i, (key, (_, _, low, high)) in enumerate(SETTINGS.items(), start=1):
            if i < len(args):  # A1111 takes as many as the script has; more are ignored
                check(args[i], f"{field}[{i}]", low, high)
                given[key] = args[i]
        return {"soft_inpainting": given}
    return {}
