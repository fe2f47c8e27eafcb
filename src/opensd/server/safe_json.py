"""JSON that is safe to keep and to send back, for every route and every stored record.

Python's `json` accepts three things that break later: more values than any request needs (a
60 MiB body of `[{},{},...]` parses into 21 million objects, 1.5 GB of memory), nesting deep enough
to exhaust the C stack (RecursionError while decoding, encoding or walking) and strings holding lone
UTF-16 surrogates (`"\\ud800"` is valid JSON, but not Unicode text: it cannot be encoded as UTF-8,
so every answer echoing it fails). `loads()` refuses the first before parsing; `problem()` finds the
others, without recursion, naming where they are. The request layer refuses such bodies, and
`readable()` repairs records stored before that check existed.
"""
from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

from fastapi.responses import JSONResponse

MAX_DEPTH = 64  # no API here nests beyond ~12 (a ComfyUI graph with its UI workflow in extra_data)
# Arrays, objects and their items in one body. A 1,000-node ComfyUI graph with its UI workflow holds
# ~100,000; an A1111 request with images a few hundred (base64 has no ',', '[' or '{').
MAX_VALUES = 2_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def _where(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _fine(value: Any, max_depth: int) -> bool:
    """Whether `value` is within `max_depth` and all Unicode: one pass level by level, its text
    searched at once (no path kept per item, so a million values take a fraction of a second)."""
    level, texts, depth = [value], [], 0
    while level:
        depth += 1
        below = []
        for item in level:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict):
                if depth > max_depth:
                    return False
                texts.extend(k for k in item if isinstance(k, str))
                below.extend(item.values())
            elif isinstance(item, list):
                if depth > max_depth:
                    return False
                below.extend(item)
        level = below
    return not _SURROGATE.search("".join(texts))


def problem(value: Any, root: str = "body", max_depth: int = MAX_DEPTH) -> str | None:
    """One line naming the first place `value` nests deeper than `max_depth` or holds text that is
    not Unicode, or None when it is fine."""
    if _fine(value, max_depth):
        return None
    stack = [(value, (root,))]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return f"{_where(path)}: text holds a lone UTF-16 surrogate (not Unicode text)"
            continue
        if not isinstance(item, (dict, list)):
            continue
        if len(path) > max_depth:
            return f"{_where(path[:4])}...: JSON nested deeper than {max_depth} levels"
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if isinstance(key, str) and _SURROGATE.search(key):
                return f"{_where(path)}: a key holds a lone UTF-16 surrogate (not Unicode text)"
            if isinstance(child, (str, dict, list)):
                stack.append((child, (*path, key)))
    return None


def content_type(headers) -> str:
    """A request's media type ("" when it declares none), without parameters."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def declared_json(headers) -> bool:
    """Whether a request declares a JSON body. Only such bodies are parsed as JSON, by every route: a
    text/plain or form body holding JSON is what a page on any site can send without a preflight."""
    kind = content_type(headers)
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def value_bound(body: bytes | str) -> int:
    """At least the number of arrays, objects and items `body` would parse into (each but the first
    follows a ',', '[' or '{'), counted without parsing."""
    marks = (",", "[", "{") if isinstance(body, str) else (b",", b"[", b"{")
    return 1 + sum(body.count(m) for m in marks)


def loads(body: bytes | str) -> tuple[Any, str | None]:
    """(value, None) for a safe JSON body; (None, problem) for one with more than MAX_VALUES values
    (refused before parsing), nested too deep or holding non-Unicode text. Raises ValueError for
    text that is not JSON at all."""
    if (bound := value_bound(body)) > MAX_VALUES:
        return None, (f"body: up to {bound:,} JSON values (counting ',', '[' and '{{'), more than the "
                      f"{MAX_VALUES:,} one request may hold")
    try:
        value = json.loads(body)
    except RecursionError:
        return None, f"body: JSON nested deeper than {MAX_DEPTH} levels"
    return value, problem(value)


def readable(value: Any, numbers: bool = False) -> Any:
    """`value` with every lone surrogate replaced by U+FFFD (keys too), so it can be sent as UTF-8;
    with `numbers`, NaN and the infinities (which Python's json reads from `NaN`, `Infinity` or
    `1e999` but cannot write as JSON) as null too."""
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value)
    if isinstance(value, float) and numbers and not math.isfinite(value):
        return None
    if not isinstance(value, (dict, list)):
        return value
    top = [value]
    stack = [(top, 0)]
    while stack:
        holder, key = stack.pop()
        item = holder[key]
        if isinstance(item, str):
            holder[key] = _SURROGATE.sub(REPLACEMENT, item)
        elif isinstance(item, float) and numbers and not math.isfinite(item):
            holder[key] = None
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
        elif isinstance(item, dict):
            if any(isinstance(k, str) and _SURROGATE.search(k) for k in item):
                fixed = {_SURROGATE.sub(REPLACEMENT, k) if isinstance(k, str) else k: v for k, v in item.items()}
                item.clear()
                item.update(fixed)
            stack.extend((item, k) for k in item)
    return top[0]


class SafeJSONResponse(JSONResponse):
    """The app's JSON answers: text that is not Unicode (a file name in another encoding, a model's
    metadata, an old record) is sent with U+FFFD, and a NaN or infinity a request brought (a ComfyUI
    graph's widget value echoed in its node errors, a queued job's payload) as null, rather than
    failing the whole answer with a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            pass
        except ValueError as e:  # "Out of range float values are not JSON compliant"
            if "float" not in str(e):
                raise
        return super().render(readable(copy.deepcopy(content), numbers=True))
