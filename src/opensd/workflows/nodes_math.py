"""ComfyUI's Math Expression node (ComfyMathExpression, comfy_extras.nodes_math, category utilities):
an expression over a growing list of number inputs (ComfyUI's Autogrow, named values.a .. values.z),
given as FLOAT, INT (truncated) and BOOL.

As in ComfyUI the expression is Python syntax over the inputs sent (a, b, ...), ``values`` (their list,
for ``sum(values)``) and its functions (sum, min, max, abs, round, pow, sqrt, ceil, floor, log, log2,
log10, sin, cos, tan, int, float); it must give a finite number (a boolean counts). ComfyUI evaluates
it with simpleeval; here expression.py's bounded evaluator does, refusing a hostile expression (``9**9**9``,
a 10,000-character text) at once. The expression's syntax is checked with the graph, before anything
runs.
"""
from __future__ import annotations

import math
import string

from ..errors import InvalidArgument
from .autogrow import Autogrow
from .expression import evaluate, parse
from .types import NodeDef, register


def math_expression(call, expression, values):
    for slot, value in values.items():  # a link from an any-type output may carry anything
        if not isinstance(value, (int, float)):
            raise InvalidArgument(f"values.{slot}: a {type(value).__name__} is not a number or boolean")
    names = dict(values)
    names["values"] = list(values.values())
    result = evaluate(expression, names)
    if not isinstance(result, (int, float)):  # a bool is an int
        raise InvalidArgument(f"expression: Math Expression {expression!r} must evaluate to a numeric result, "
                              f"got {type(result).__name__}: {str(result)[:80]}")
    try:
        as_float = float(result)
    except OverflowError:
        raise InvalidArgument(f"expression: Math Expression {expression!r} produced a result too large to "
                              "represent as a float") from None
    if not math.isfinite(as_float):
        raise InvalidArgument(f"expression: Math Expression {expression!r} produced a non-finite result: {result}")
    return as_float, int(result), bool(result)


def _check(ctx, inputs: dict) -> str | None:
    try:
        if "expression" in inputs:
            parse(inputs["expression"])
    except InvalidArgument as e:
        return str(e)
    return None


register(NodeDef(
    "ComfyMathExpression", math_expression,
    {"expression": ("STRING", {"default": "a", "multiline": True}),
     "values": (Autogrow("value", ("FLOAT,INT,BOOLEAN", {}), names=tuple(string.ascii_lowercase), min=0),)},
    ("FLOAT", "INT", "BOOLEAN"), output_names=("FLOAT", "INT", "BOOL"), category="utilities",
    display_name="Math Expression", module="comfy_extras.nodes_math", check=_check))
