"""A small, bounded evaluator for the arithmetic expressions ComfyMathExpression takes.

ComfyUI evaluates them with the simpleeval package: Python expression syntax over given names and
functions, never Python's eval. This evaluator reads the same syntax with Python's own parser
(``ast.parse``) and walks the tree itself, allowing only: numbers, strings, True/False/None, the given
names, subscripts and slices (``values[0]``), the arithmetic, bitwise, comparison, ``in``/``is``,
``not``/``and``/``or`` operators, ``x if c else y``, and calls of the given functions by name. No
attribute access, no comprehensions, lambdas or literals of lists, dicts or sets.

Every step is bounded so a hostile expression fails fast with a clear InvalidArgument instead of
taking the machine: the text's length and nesting, whole numbers to MAX_INT_BITS bits (checked
before a power, product or shift is computed: ``9**9**9`` is refused at once), texts and lists to
MAX_SEQUENCE items.
"""
from __future__ import annotations

import ast
import math
import operator as op
from collections.abc import Callable

from ..errors import InvalidArgument

MAX_CHARS = 10_000           # an expression's length
MAX_DEPTH = 200              # nesting of its syntax tree (a + b + ... counts one level per +)
MAX_INT_BITS = 4096          # any whole number met on the way (a float holds up to 2**1024)
MAX_SEQUENCE = 10_000        # any text or list met on the way
MAX_POW_EXPONENT = 4000      # pow()'s exponent, as ComfyUI's _safe_pow

_BIN = {ast.Add: op.add, ast.Sub: op.sub, ast.Mult: op.mul, ast.Div: op.truediv, ast.FloorDiv: op.floordiv,
        ast.Mod: op.mod, ast.Pow: op.pow, ast.LShift: op.lshift, ast.RShift: op.rshift, ast.BitOr: op.or_,
        ast.BitXor: op.xor, ast.BitAnd: op.and_}
_UNARY = {ast.USub: op.neg, ast.UAdd: op.pos, ast.Not: op.not_, ast.Invert: op.invert}
_COMPARE = {ast.Eq: op.eq, ast.NotEq: op.ne, ast.Lt: op.lt, ast.LtE: op.le, ast.Gt: op.gt, ast.GtE: op.ge,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
            ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b}
_NODES = (ast.Expression, ast.Constant, ast.Name, ast.Load, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.And, ast.Or,
          ast.Compare, ast.IfExp, ast.Call, ast.keyword, ast.Subscript, ast.Slice,
          *_BIN, *_UNARY, *_COMPARE)


def _variadic_sum(*args):
    """sum(values) or sum(a, b, c), as ComfyUI's."""
    return sum(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else sum(args)


def _pow(base, exp):
    if isinstance(exp, (int, float)) and abs(exp) > MAX_POW_EXPONENT:
        raise InvalidArgument(f"expression: pow: the exponent {exp} is more than the {MAX_POW_EXPONENT} allowed")
    return _power(base, exp)


def _power(base, exp):
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if (abs(base).bit_length() - 1) * exp > MAX_INT_BITS:
            raise InvalidArgument(f"expression: {_short(base)} ** {_short(exp)} is too large (over {MAX_INT_BITS} bits)")
    return base ** exp


# ComfyUI's MATH_FUNCTIONS (comfy_extras/nodes_math.py)
FUNCTIONS: dict[str, Callable] = {
    "sum": _variadic_sum, "min": min, "max": max, "abs": abs, "round": round, "pow": _pow, "sqrt": math.sqrt,
    "ceil": math.ceil, "floor": math.floor, "log": math.log, "log2": math.log2, "log10": math.log10,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "int": int, "float": float,
}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def parse(expression: str) -> ast.Expression:
    """The expression's syntax tree, or InvalidArgument naming what is not allowed."""
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidArgument("expression: Expression cannot be empty.")
    if len(expression) > MAX_CHARS:
        raise InvalidArgument(f"expression: {len(expression):,} characters, more than the {MAX_CHARS:,} allowed")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise InvalidArgument(f"expression: invalid syntax: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise InvalidArgument("expression: nested too deeply") from None
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidArgument(f"expression: nested more than {MAX_DEPTH} levels deep")
        if not isinstance(node, _NODES):
            raise InvalidArgument(f"expression: {_what(node)} is not allowed in a math expression")
        if isinstance(node, ast.Call) and not isinstance(node.func, ast.Name):
            raise InvalidArgument("expression: only the functions can be called, by name")
        if isinstance(node, ast.Call) and node.func.id not in FUNCTIONS:
            raise InvalidArgument(f"expression: unknown function {node.func.id!r}; the functions are "
                                  f"{', '.join(FUNCTIONS)}")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str, type(None))):
            raise InvalidArgument(f"expression: the constant {_short(node.value)} is not allowed")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree


def _what(node: ast.AST) -> str:
    names = {ast.Attribute: "attribute access (x.y)", ast.Lambda: "lambda", ast.List: "a list literal",
             ast.Tuple: "a tuple", ast.Dict: "a dict literal", ast.Set: "a set literal",
             ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension", ast.Starred: "*unpacking",
             ast.NamedExpr: "assignment (:=)", ast.JoinedStr: "an f-string", ast.MatMult: "the @ operator"}
    return names.get(type(node), type(node).__name__)


def evaluate(expression: str, names: dict):
    """The value of `expression` with `names` (name -> value) and FUNCTIONS."""
    tree = parse(expression)
    try:
        return _Eval(names).run(tree.body)
    except InvalidArgument:
        raise
    except (ArithmeticError, ValueError, TypeError, IndexError, KeyError) as e:
        raise InvalidArgument(f"expression: {type(e).__name__}: {e}") from None


class _Eval:
    def __init__(self, names: dict):
        self.names = names

    def run(self, node: ast.AST):
        return _bounded(getattr(self, "_" + type(node).__name__)(node))

    def _Constant(self, node):
        return node.value

    def _Name(self, node):
        if node.id not in self.names:
            raise InvalidArgument(f"expression: unknown name {node.id!r}; the names are "
                                  + ", ".join(sorted(self.names)))
        return self.names[node.id]

    def _BinOp(self, node):
        left, right = self.run(node.left), self.run(node.right)
        kind = type(node.op)
        if kind is ast.Pow:
            return _power(left, right)
        if kind is ast.Mult:
            _check_product(left, right)
        if kind is ast.LShift and isinstance(left, int) and isinstance(right, int) and right > 0:
            if abs(left).bit_length() + right > MAX_INT_BITS:
                raise InvalidArgument(f"expression: {_short(left)} << {_short(right)} is too large (over {MAX_INT_BITS} bits)")
        return _BIN[kind](left, right)

    def _UnaryOp(self, node):
        return _UNARY[type(node.op)](self.run(node.operand))

    def _BoolOp(self, node):
        value = None
        for part in node.values:  # Python's short circuit: the first false (and) / true (or) operand
            value = self.run(part)
            if bool(value) is isinstance(node.op, ast.Or):
                return value
        return value

    def _Compare(self, node):
        left = self.run(node.left)
        for kind, right_node in zip(node.ops, node.comparators):
            right = self.run(right_node)
            if not _COMPARE[type(kind)](left, right):
                return False
            left = right
        return True

    def _IfExp(self, node):
        return self.run(node.body) if self.run(node.test) else self.run(node.orelse)

    def _Call(self, node):
        args = [self.run(a) for a in node.args]
        kwargs = {k.arg: self.run(k.value) for k in node.keywords}
        return FUNCTIONS[node.func.id](*args, **kwargs)

    def _Subscript(self, node):
        return self.run(node.value)[self.run(node.slice)]

    def _Slice(self, node):
        return slice(*(None if part is None else self.run(part) for part in (node.lower, node.upper, node.step)))


def _check_product(left, right) -> None:
    """Refuse, before computing it, a product of whole numbers over MAX_INT_BITS or a repeated text or
    list over MAX_SEQUENCE."""
    if isinstance(left, int) and isinstance(right, int):
        if abs(left).bit_length() + abs(right).bit_length() > MAX_INT_BITS + 1:
            raise InvalidArgument(f"expression: {_short(left)} * {_short(right)} is too large (over {MAX_INT_BITS} bits)")
        return
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(count, int) and len(seq) * count > MAX_SEQUENCE:
            raise InvalidArgument(f"expression: a text or list repeated {_short(count)} times is longer than the "
                                  f"{MAX_SEQUENCE:,} items allowed")


def _bounded(value):
    if isinstance(value, int) and abs(value).bit_length() > MAX_INT_BITS:
        raise InvalidArgument(f"expression: a whole number of {abs(value).bit_length():,} bits is too large "
                              f"(over {MAX_INT_BITS})")
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_SEQUENCE:
        raise InvalidArgument(f"expression: a text or list of {len(value):,} items is longer than the "
                              f"{MAX_SEQUENCE:,} allowed")
    return value
