"""Checks of A1111's `script_args` values, each refusal naming the argument as A1111's script calls it."""
from __future__ import annotations

from ..errors import InvalidArgument


def flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"script_args: {name}: expected true or false, got {value!r}")
    return value


def number(value, name: str, low: float, high: float, whole: bool = False) -> float:
    kinds = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        raise InvalidArgument(f"script_args: {name}: {value!r} is outside {low:g}..{high:g}")
    return value


def choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InvalidArgument(f"script_args: {name}: {value!r} is not {' or '.join(repr(c) for c in choices)}")
    return value
