"""ComfyUI's text nodes (comfy_extras.nodes_string, category utils/string): concatenate,
substring, length, case, trim, replace, contains, compare, and the regular-expression nodes
RegexMatch, RegexExtract and RegexReplace. A pattern comes from the request, so it runs under the
`regex` package's time limit (Python's re has none: a pattern such as (a|aa)+$ could hold the
server for hours) and a bounded length; a replacement's result is capped at MAX_TEXT characters.
Unlike ComfyUI, an invalid pattern is an error naming it (ComfyUI's match and extract quietly give
False and ""). And StringFormat (Format Text, category text): Python's str.format of f_string with
the values linked to a growing list of inputs (ComfyUI's Autogrow, values.a .. values.z); here
without attribute access ({a.__class__}) and with widths bounded.
"""
from __future__ import annotations

from string import Formatter, ascii_lowercase

import regex

from ..errors import InvalidArgument
from .autogrow import Autogrow
from .types import NodeDef, register

MAX_TEXT = 10_000_000  # characters one node may make (StringReplace can multiply its input)
MAX_PATTERN = 10_000  # characters of one regular expression
REGEX_TIMEOUT = 2.0  # seconds one regular-expression search, extraction or replacement may take
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


def compile_pattern(pattern: str, case_insensitive: bool, multiline: bool, dotall: bool):
    """`pattern` compiled with ComfyUI's flags, or a one-line error naming what is wrong with it."""
    if len(pattern) > MAX_PATTERN:
        raise InvalidArgument(f"regex_pattern: {len(pattern):,} characters, more than {MAX_PATTERN:,}")
    flags = ((regex.IGNORECASE if case_insensitive else 0) | (regex.MULTILINE if multiline else 0)
             | (regex.DOTALL if dotall else 0))
    try:
        return regex.compile(pattern, flags | regex.VERSION0)
    except (regex.error, OverflowError, RecursionError) as e:
        raise InvalidArgument(f"regex_pattern: {pattern[:80]!r} is not a valid regular expression ({e})") from None


def run_bounded(fn, *args, **kwargs):
    """fn(*args, timeout=REGEX_TIMEOUT, **kwargs), its time-out as a one-line error."""
    try:
        return fn(*args, timeout=REGEX_TIMEOUT, **kwargs)
    except TimeoutError:
        raise InvalidArgument(f"regex_pattern: matching took more than {REGEX_TIMEOUT:g} s (a pattern that "
                              "backtracks without end, such as (a|aa)+$?); simplify it") from None


def regex_match(call, string, regex_pattern, case_insensitive, multiline, dotall):
    pattern = compile_pattern(regex_pattern, case_insensitive, multiline, dotall)
    return (run_bounded(pattern.search, string) is not None,)


EXTRACT_MODES = ("First Match", "All Matches", "First Group", "All Groups")


def _group(match, index: int) -> str | None:
    """Group `index` of a match when the pattern has that many groups ("" for one that did not take
    part, where ComfyUI's would hand on None)."""
    if len(match.groups()) < index:
        return None
    return match.group(index) or ""


def regex_extract(call, string, regex_pattern, mode, case_insensitive, multiline, dotall, group_index):
    """ComfyUI's four modes; several results are joined with newlines. "All Matches" gives, per match,
    the pattern's first group when it has groups (findall's rule), else the whole match."""
    pattern = compile_pattern(regex_pattern, case_insensitive, multiline, dotall)
    if mode in ("First Match", "First Group"):
        match = run_bounded(pattern.search, string)
        if match is None:
            return ("",)
        return (match.group(0) if mode == "First Match" else (_group(match, group_index) or ""),)
    matches = run_bounded(lambda text, timeout: list(pattern.finditer(text, timeout=timeout)), string)
    if mode == "All Matches":
        found = [(m.group(1) or "") if pattern.groups else m.group(0) for m in matches]
    else:
        found = [g for g in (_group(m, group_index) for m in matches if m.groups()) if g is not None]
    return ("\n".join(found),)


def regex_replace(call, string, regex_pattern, replace, case_insensitive=True, multiline=False, dotall=False,
                  count=0):
    """Every match (or the first `count`) replaced by `replace`, whose \\1 and \\g<name> name groups."""
    pattern = compile_pattern(regex_pattern, case_insensitive, multiline, dotall)
    size = len(string)

    def expand(match):
        nonlocal size
        try:
            text = match.expand(replace)
        except (regex.error, IndexError) as e:
            raise InvalidArgument(f"replace: {replace[:80]!r} does not fit the pattern ({e})") from None
        size += len(text) - (match.end() - match.start())
        if size > MAX_TEXT:
            raise InvalidArgument(f"regex replace: the result would be more than {MAX_TEXT:,} characters")
        return text
    return (run_bounded(pattern.sub, expand, string, count=count),)


_FLAGS = {"case_insensitive": ("BOOLEAN", {"default": True}), "multiline": ("BOOLEAN", {"default": False}),
          "dotall": ("BOOLEAN", {"default": False})}

register(NodeDef(
    "RegexMatch", regex_match, {"string": _TEXT, "regex_pattern": _TEXT, **_FLAGS}, ("BOOLEAN",),
    output_names=("matches",), category="utils/string", display_name="Regex Match", module=_MODULE))
register(NodeDef(
    "RegexExtract", regex_extract,
    {"string": _TEXT, "regex_pattern": _TEXT, "mode": (list(EXTRACT_MODES), {}), **_FLAGS,
     "group_index": ("INT", {"default": 1, "min": 0, "max": 100})},
    ("STRING",), category="utils/string", display_name="Regex Extract", module=_MODULE))
register(NodeDef(
    "RegexReplace", regex_replace, {"string": _TEXT, "regex_pattern": _TEXT, "replace": _TEXT},
    ("STRING",), optional={
        **_FLAGS,
        "dotall": ("BOOLEAN", {"default": False, "tooltip": "When enabled, the dot (.) character will match any "
                               "character including newline characters. When disabled, dots won't match newlines."}),
        "count": ("INT", {"default": 0, "min": 0, "max": 100, "tooltip": "Maximum number of replacements to make. "
                          "Set to 0 to replace all occurrences (default). Set to 1 to replace only the first match, "
                          "2 for the first two matches, etc."})},
    category="utils/string", display_name="Regex Replace", module=_MODULE,
    description="Find and replace text using regex patterns."))


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


# --- StringFormat (Format Text, category text): Python's str.format over a growing list of inputs ---

MAX_FORMAT_WIDTH = 10_000  # a field's width or precision ("{a:>10000}")


class _BoundedFormatter(Formatter):
    """str.format's language without attribute access (``{a.__class__}`` would walk into the server's
    objects) and with each field's width and precision, and the whole text, bounded."""

    def __init__(self):
        self.made = 0

    def get_field(self, field_name, args, kwargs):
        if "." in field_name.split("[", 1)[0] or "]." in field_name:
            raise InvalidArgument(f"f_string: {{{field_name}}}: attribute access is not supported")
        return super().get_field(field_name, args, kwargs)

    def get_value(self, key, args, kwargs):
        if isinstance(key, int) or key not in kwargs:
            sent = ", ".join(kwargs) or "none"
            raise InvalidArgument(f"f_string: {{{key}}} names no input sent to values (sent: {sent})")
        return kwargs[key]

    def format_field(self, value, format_spec):
        for run in regex.findall(r"\d+", format_spec):
            if len(run) > 5 or int(run) > MAX_FORMAT_WIDTH:
                raise InvalidArgument(f"f_string: the format {format_spec!r} asks for more than "
                                      f"{MAX_FORMAT_WIDTH:,} characters")
        text = super().format_field(value, format_spec)
        self.made += len(text)
        if self.made > MAX_TEXT:
            raise InvalidArgument(f"f_string: the text would be longer than {MAX_TEXT:,} characters")
        return text


def string_format(call, values, f_string):
    try:
        return (_BoundedFormatter().vformat(f_string, (), values),)
    except InvalidArgument:
        raise
    except (ValueError, TypeError, IndexError, KeyError) as e:
        raise InvalidArgument(f"f_string: {e}") from None


register(NodeDef(
    "StringFormat", string_format,
    {"values": (Autogrow("value", ("*", {}), names=tuple(ascii_lowercase), min=0),),
     "f_string": ("STRING", {"default": "{a}", "multiline": True})},
    ("STRING",), category="text", display_name="Format Text", module=_MODULE,
    description="Same as Python's string format method. Supports all of Python's format options and features."))
