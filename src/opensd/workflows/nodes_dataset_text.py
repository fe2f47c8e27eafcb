"""ComfyUI's text transforms from its dataset nodes (comfy_extras.nodes_dataset's TextProcessingNode,
category text, experimental; all but TruncateText deprecated there in favour of the string nodes):
lower/upper case, truncate, prefix, suffix, replace and strip, one text at a time (a list of texts
runs the node once per text, as ComfyUI's per-item processing does)."""
from __future__ import annotations

from ..errors import InvalidArgument
from .nodes_string import MAX_TEXT, string_replace
from .types import NodeDef, register


def _joined(*parts: str) -> str:
    size = sum(map(len, parts))
    if size > MAX_TEXT:
        raise InvalidArgument(f"texts: the result would be {size:,} characters, more than {MAX_TEXT:,}")
    return "".join(parts)


def _text(tooltip: str, **options):
    return ("STRING", {**options, "multiline": False, "tooltip": tooltip})


# name, display name, description, fn(text, **extra) -> text, extra inputs ("(DEPRECATED)" in the display
# name: ComfyUI marks the node deprecated)
TEXT_NODES = (
    ("TextToLowercase", "Convert Text to Lowercase (DEPRECATED)", "Convert text to lowercase.", str.lower, {}),
    ("TextToUppercase", "Convert Text to Uppercase (DEPRECATED)", "Convert text to uppercase.", str.upper, {}),
    ("TruncateText", "Truncate Text", "Truncate text to a maximum length.",
     lambda text, max_length: text[:max_length],
     {"max_length": ("INT", {"default": 77, "min": 1, "max": 10000, "tooltip": "Maximum text length."})}),
    ("AddTextPrefix", "Add Text Prefix (DEPRECATED)", "Add a prefix to all texts.",
     lambda text, prefix: _joined(prefix, text),
     {"prefix": _text("Prefix to add.", default="")}),
    ("AddTextSuffix", "Add Text Suffix (DEPRECATED)", "Add a suffix to all texts.",
     lambda text, suffix: _joined(text, suffix),
     {"suffix": _text("Suffix to add.", default="")}),
    ("ReplaceText", "Replace Text (DEPRECATED)", "Replace text in all texts.",
     lambda text, find, replace: string_replace(None, text, find, replace)[0],
     {"find": _text("Text to find.", default=""), "replace": _text("Text to replace with.", default="")}),
    ("StripWhitespace", "Strip Whitespace (DEPRECATED)", "Strip leading and trailing whitespace from all texts.",
     str.strip, {}),
)


def _node(transform):
    def node(call, texts, **extra):
        return (transform(texts, **extra),)
    return node


for _name, _display, _description, _fn, _extra in TEXT_NODES:
    register(NodeDef(
        _name, _node(_fn), {"texts": _text("Text to process."), **_extra}, ("STRING",), output_names=("texts",),
        category="text", display_name=_display, description=_description, module="comfy_extras.nodes_dataset",
        experimental=True, deprecated=_display.endswith("(DEPRECATED)")))
