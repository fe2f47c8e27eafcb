"""ComfyUI's EasyCache and LazyCache (comfy_extras.nodes_easycache): a MODEL that skips sampling
steps whose prediction can be estimated from the last one (step_cache.py says how). Both return a
new ModelRef carrying the settings; the checkpoint, and every other MODEL of it, sample as before.
A second such node on the same MODEL replaces the first's settings."""
from __future__ import annotations

from dataclasses import replace

from .step_cache import StepCache
from .types import NodeDef, register


def _node(name: str):
    def node(call, model, reuse_threshold, start_percent, end_percent, verbose):
        settings = StepCache(name, float(reuse_threshold), float(start_percent), float(end_percent), bool(verbose))
        return (replace(model, step_cache=settings),)
    return node


easy_cache, lazy_cache = _node("EasyCache"), _node("LazyCache")


def _percent(default: float, which: str, name: str):
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01,
                      "tooltip": f"The relative sampling step to {which} use of {name}.", "advanced": True})


def _inputs(name: str) -> dict:
    return {
        "model": ("MODEL", {"tooltip": f"The model to add {name} to."}),
        "reuse_threshold": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 3.0, "step": 0.01,
                                      "tooltip": "The threshold for reusing cached steps.", "advanced": True}),
        "start_percent": _percent(0.15, "begin", name),
        "end_percent": _percent(0.95, "end", name),
        "verbose": ("BOOLEAN", {"default": False, "tooltip": "Whether to log verbose information.", "advanced": True}),
    }


_DESCRIPTIONS = {
    "EasyCache": "Native EasyCache implementation.",
    "LazyCache": "A homebrew version of EasyCache - even 'easier' version of EasyCache to implement. Overall works "
                 "worse than EasyCache, but better in some rare cases AND universal compatibility with everything in "
                 "ComfyUI.",
}

for _name, _fn in (("EasyCache", easy_cache), ("LazyCache", lazy_cache)):
    register(NodeDef(_name, _fn, _inputs(_name), ("MODEL",), category="advanced/debug",
                     description=_DESCRIPTIONS[_name], experimental=True, module="comfy_extras.nodes_easycache"))
