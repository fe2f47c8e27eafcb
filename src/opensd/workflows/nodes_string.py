"""ComfyUI's text nodes (comfy_extras.nodes_string, category utils/string): concatenate,
substring, length, case, trim, replace, contains and compare. The regular-expression nodes
(RegexMatch/Extract/Replace) are not offered: Python's re has no time limit, and a pattern a
request sends could hold the server for hours."""
from __future__ import annotations

from ..errors import InvalidArgument
from .types import NodeDef, register

MAX_TEXT = 10_000_000  # characters one node may make (StringReplace can multiply its input)
_TEXT = ("STRING", {"multiline": True})
_MODULE = "comfy_extras.nodes_string"


def string_concatenate(call, string_a, string_b, delimiter):
    return (delimiter.join((string_a, string_b)),)


def string_substring(call, string, start, end):
    return (string[start:end],)


def string_length(call, string):
    return (len(string),)


CASES = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title}
TRIMS = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}


def case_converter(call, string, mode):
    return (CASES[mode](string),)


def string_trim(call, string, mode):
    return (TRIMS[mode](string),)


def string_replace(call, string, find, replace):
    """Every `find` replaced (an empty `find` matches between all characters, as str.replace)."""
    count = len(string) + 1 if find == "" else string.count(find)
    size = len(string) + count * (len(replace) - len(find))
    if size > MAX_TEXT:
        raise InvalidArgument(f"replace: the result would be {size:,} characters, more than {MAX_TEXT:,}")
    return (string.replace(find, replace),)


def string_contains(call, string, substring, case_sensitive):
    if not case_sensitive:
        string, substring = string.lower(), substring.lower()
    return (substring in string,)


COMPARISONS = {"Starts With": str.startswith, "Ends With": str.endswith, "Equal": str.__eq__}


def string_compare(call, string_a, string_b, mode, case_sensitive):
    if not case_sensitive:
        string_a, string_b = string_a.lower(), string_b.lower()
    return (COMPARISONS[mode](string_a, string_b),)


for _name, _display, _fn, _inputs, _output, _output_name in (
    ("StringConcatenate", "Concatenate", string_concatenate,
     {"string_a": _TEXT, "string_b": _TEXT, "delimiter": ("STRING", {"default": "", "multiline": False})},
     "STRING", None),
    ("StringSubstring", "Substring", string_substring, {"string": _TEXT, "start": ("INT", {}), "end": ("INT", {})},
     "STRING", None),
    ("StringLength", "Length", string_length, {"string": _TEXT}, "INT", "length"),
    ("CaseConverter", "Case Converter", case_converter, {"string": _TEXT, "mode": (list(CASES), {})}, "STRING", None),
    ("StringTrim", "Trim", string_trim, {"string": _TEXT, "mode": (list(TRIMS), {})}, "STRING", None),
    ("StringReplace", "Replace", string_replace, {"string": _TEXT, "find": _TEXT, "replace": _TEXT}, "STRING", None),
    ("StringContains", "Contains", string_contains,
     {"string": _TEXT, "substring": _TEXT, "case_sensitive": ("BOOLEAN", {"default": True})}, "BOOLEAN", "contains"),
    ("StringCompare", "Compare", string_compare,
     {"string_a": _TEXT, "string_b": _TEXT, "mode": (list(COMPARISONS), {}),
      "case_sensitive": ("BOOLEAN", {"default": True})}, "BOOLEAN", None),
):
    register(NodeDef(_name, _fn, _inputs, (_output,), output_names=(_output_name,) if _output_name else None,
                     category="utils/string", display_name=_display, module=_MODULE))
