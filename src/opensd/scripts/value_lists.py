"""The X/Y/Z plot's value lists, read as AUTOMATIC1111 reads them.

A list is CSV: `a, b, "c, with a comma"` (values stripped; quotes keep commas). For number axes an
item may be a range:

- `1-5`: every whole number from 1 to 5; `1-10 (+2)`: 1, 3, 5, 7, 9 (the step may be negative);
- `1-10 [5]`: 5 numbers evenly spread from 1 to 10 (whole numbers rounded down: 1, 3, 5, 7, 10);
- the same with decimals on decimal axes: `0.5-1.5 [3]` is 0.5, 1.0, 1.5; `0-1 (+0.25)` is 0, 0.25 ... 1.
"""
from __future__ import annotations

import csv
import io
import math
import re

from ..errors import InvalidArgument

MAX_VALUES = 1000  # per axis: more is a typo ("1-100000"), not a plot
_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"
_INT_STEP = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(\s*([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[\s*(\d+)\s*\])?\s*")
_FLOAT_STEP = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(\s*([+-](?:\d+(?:\.\d*)?|\.\d+))\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[\s*(\d+)\s*\])?\s*")


def split_values(text: str, lines: bool = False) -> list[str]:
    """The items of a value list: CSV fields (or, with `lines`, one item per line), stripped."""
    if lines and "\n" in text.strip():
        return [line.strip() for line in text.strip().split("\n")]
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as e:
        raise InvalidArgument(f"{text[:80]!r} is not a comma-separated list ({e})") from None
    return [field.strip() for row in rows for field in row]


def _num(text: str) -> float:
    value = float(text.replace(" ", ""))
    if not math.isfinite(value):  # 400 digits: inf, which no range can start or end at
        raise InvalidArgument(f"{text!r} is out of range")
    return value


def _read(item: str, read) -> list:
    """read(item)'s values; a number too long for Python (a 5,000-digit count) or a range too long
    to count is the item's error, not an HTTP 500."""
    try:
        return read(item)
    except InvalidArgument:
        raise
    except (ValueError, OverflowError):
        raise InvalidArgument(f"{item[:80]!r}: a number out of range") from None


def _check_count(n: int) -> int:
    if n > MAX_VALUES:
        raise InvalidArgument(f"more than {MAX_VALUES} values")
    return n


def _spread(start: float, end: float, count: int) -> list[float]:
    if count == 1:
        return [start]
    return [start + (end - start) * i / (count - 1) for i in range(count)]


def int_values(items: list[str]) -> list[int]:
    out: list[int] = []
    for item in items:
        out += _read(item, _int_item)
    _check_count(len(out))
    return out


def _int_item(item: str) -> list[int]:
    step, count = _INT_STEP.fullmatch(item), _INT_COUNT.fullmatch(item)
    if step:
        a, b = int(_num(step.group(1))), int(_num(step.group(2)))
        by = int(step.group(3)) if step.group(3) else 1
        if by == 0:
            raise InvalidArgument(f"{item!r}: the step must not be 0")
        _check_count(len(range(a, b + 1, by)))
        return list(range(a, b + 1, by))
    if count:
        n = _check_count(int(count.group(3)) if count.group(3) else 1)
        return [math.floor(v) for v in _spread(_num(count.group(1)), _num(count.group(2)), n)]
    try:
        return [int(item)]
    except ValueError:
        raise InvalidArgument(f"{item!r} is not a whole number or a range such as 1-5") from None


def float_values(items: list[str]) -> list[float]:
    out: list[float] = []
    for item in items:
        out += _read(item, _float_item)
    _check_count(len(out))
    return out


def _float_item(item: str) -> list[float]:
    step, count = _FLOAT_STEP.fullmatch(item), _FLOAT_COUNT.fullmatch(item)
    if step:
        a, b = _num(step.group(1)), _num(step.group(2))
        by = float(step.group(3)) if step.group(3) else 1.0
        if by == 0 or (b - a) / by < 0:
            raise InvalidArgument(f"{item!r}: the step does not lead from {a:g} to {b:g}")
        n = _check_count(math.floor((b - a) / by + 1e-9) + 1)
        return [a + by * i for i in range(n)]
    if count:
        n = _check_count(int(count.group(3)) if count.group(3) else 1)
        return _spread(_num(count.group(1)), _num(count.group(2)), n)
    try:
        value = float(item)
    except ValueError:
        raise InvalidArgument(f"{item!r} is not a number or a range such as 0.5-1.5 [3]") from None
    if not math.isfinite(value):
        raise InvalidArgument(f"{item!r} is not a finite number")
    return [value]
