"""Dynamic prompts (the sd-dynamic-prompts syntax): a template whose choices are made per image,
deterministically from the image's seed.

- ``{a|b|c}``: one of the options; ``{0.5::a|2::b}``: weighted (weight 1 when not given);
- ``{2$$a|b|c}``: two different options joined by ", "; ``{1-3$$a|b|c}``: one to three of them;
  ``{-2$$...}`` up to two, ``{2-$$...}`` two or more; ``{2$$ and $$a|b|c}``: joined by " and ";
- ``__name__``: one line of the wildcard file ``name.txt`` (opensd.text.wildcards), itself a
  template; ``{2$$__name__}`` picks two of its lines;
- options nest; ``\\{``, ``\\}``, ``\\|`` and ``\\_`` are literal (the backslash stays, so A1111's
  prompt parser reads the character as text).

A1111's own syntax is untouched: its alternation and prompt editing use square brackets, so a
``|`` inside ``[...]`` or ``(...)`` within an option belongs to A1111, not to the option list.
"""
from __future__ import annotations

import random
import re
from typing import NamedTuple

from ..errors import InvalidArgument
from .wildcards import Wildcards

MAX_DEPTH = 16  # wildcards within wildcards; deeper is a file that names itself
_WILDCARD = re.compile(r"__([^\s{}|\[\]()<>:,]+?)__")
MAX_NESTING = 20  # braces within braces in one template; deeper is no prompt (and Python's recursion limit)
# possessive (*+, ?+): the four blank runs could otherwise share out a run of blanks every way
# before failing ("{" and 400 spaces took 12 s, 20,000 forever); a match is the same either way.
_COUNT = re.compile(r"\s*+(\d+)?+\s*+(-)?+\s*+(\d+)?+\s*+\$\$(?:([^|{}$]*)\$\$)?")
_WEIGHT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*::")


class _Wildcard(NamedTuple):
    name: str


class _Variant(NamedTuple):
    options: list          # [(weight, nodes)]
    low: int
    high: int | None       # None: as many as there are options
    separator: str


def is_dynamic(text: str) -> bool:
    """Whether the text holds any choice (so each image may get its own prompt)."""
    return any(not isinstance(n, str) for n in _Parser(text, "prompt").parse())


def expand(text: str, seed: int | str, wildcards: Wildcards | None = None, where: str = "prompt") -> str:
    """The template with every choice made by a generator seeded with `seed`."""
    nodes = _Parser(text, where).parse()
    if all(isinstance(n, str) for n in nodes):
        return text
    return _render(nodes, random.Random(seed), wildcards or Wildcards(None), where, 0)


def check_template(text: str, wildcards: Wildcards | None, where: str = "prompt") -> None:
    """Refuse a template that cannot expand: a brace never closed, a wildcard with no file (also
    those its files name), before any image is made."""
    _check(_Parser(text, where).parse(), wildcards or Wildcards(None), where, set())


def _check(nodes: list, wildcards: Wildcards, where: str, seen: set[str]) -> None:
    for node in nodes:
        if isinstance(node, _Wildcard) and node.name not in seen:
            seen.add(node.name)
            for line in wildcards.values(node.name, where):
                _check(_Parser(line, where).parse(), wildcards, where, seen)
        elif isinstance(node, _Variant):
            for _, option in node.options:
                _check(option, wildcards, where, seen)


class _Parser:
    def __init__(self, text: str, where: str):
        self.text, self.where, self.i, self.nesting = text, where, 0, 0

    def parse(self) -> list:
        return self._sequence(inside=False)

    def _sequence(self, inside: bool) -> list:
        t, nodes, buf, depth = self.text, [], [], 0

        def flush():
            if buf:
                nodes.append("".join(buf))
                buf.clear()

        while self.i < len(t):
            c = t[self.i]
            if c == "\\" and self.i + 1 < len(t):
                buf.append(t[self.i:self.i + 2])
                self.i += 2
                continue
            if inside and depth == 0 and c in "|}":
                break
            if c == "{":
                flush()
                self.i += 1
                nodes.append(self._variant(self.i - 1))
                continue
            m = _WILDCARD.match(t, self.i) if c == "_" else None
            if m:
                flush()
                nodes.append(_Wildcard(m.group(1)))
                self.i = m.end()
                continue
            depth += 1 if c in "[(" else -1 if c in "])" and depth else 0
            buf.append(c)
            self.i += 1
        flush()
        return nodes

    def _variant(self, start: int) -> _Variant:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise InvalidArgument(f"{self.where}: the '{{' at character {start + 1} nests choices more than "
                                  f"{MAX_NESTING} deep (write \\{{ for a literal brace)")
        try:
            return self._options(start)
        finally:
            self.nesting -= 1

    def _options(self, start: int) -> _Variant:
        t = self.text
        low, high, separator = 1, 1, ", "
        m = _COUNT.match(t, self.i)
        if m and (m.group(1) or m.group(3)):
            low = int(m.group(1)) if m.group(1) else 1
            high = (int(m.group(3)) if m.group(3) else None) if m.group(2) else low
            separator = m.group(4) if m.group(4) is not None else separator
            self.i = m.end()
        if high is not None and high < low:
            raise InvalidArgument(f"{self.where}: {{{low}-{high}$$...}} at character {start + 1} asks for "
                                  "fewer options than its lower bound")
        options = []
        while True:
            w = _WEIGHT.match(t, self.i)
            weight = float(w.group(1)) if w else 1.0
            if w:
                self.i = w.end()
            options.append((weight, self._sequence(inside=True)))
            if self.i >= len(t):
                raise InvalidArgument(f"{self.where}: the '{{' at character {start + 1} is never closed "
                                      "(write \\{ for a literal brace)")
            self.i += 1
            if t[self.i - 1] == "}":
                return _Variant(options, low, high, separator)


def _render(nodes: list, rng: random.Random, wildcards: Wildcards, where: str, depth: int) -> str:
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{where}: wildcards nest deeper than {MAX_DEPTH} levels (does one name itself?)")
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Wildcard):
            values = wildcards.values(node.name, where)
            line = values[rng.randrange(len(values))]
            out.append(_render(_Parser(line, where).parse(), rng, wildcards, where, depth + 1))
        else:
            out.append(_choose(node, rng, wildcards, where, depth))
    return "".join(out)


def _choose(v: _Variant, rng: random.Random, wildcards: Wildcards, where: str, depth: int) -> str:
    options = v.options
    if len(options) == 1 and len(options[0][1]) == 1 and isinstance(options[0][1][0], _Wildcard):
        # {2$$__name__}: the wildcard's lines are the options
        lines = wildcards.values(options[0][1][0].name, where)
        options = [(1.0, _Parser(line, where).parse()) for line in lines]
    high = len(options) if v.high is None else min(v.high, len(options))
    count = rng.randint(min(v.low, high), high)
    pool, picked = list(options), []
    for _ in range(count):
        total = sum(w for w, _ in pool)
        r = rng.random() * total
        k = 0
        while k < len(pool) - 1 and r >= pool[k][0]:
            r -= pool[k][0]
            k += 1
        picked.append(pool.pop(k)[1])
    return v.separator.join(_render(nodes, rng, wildcards, where, depth + 1) for nodes in picked)
