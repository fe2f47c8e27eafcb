"""The prompt syntax of AUTOMATIC1111's stable-diffusion-webui, as pure functions (no torch).

Written from A1111's documentation (wiki "Features": attention/emphasis, BREAK, prompt editing,
alternating words, composable diffusion, extra networks) and the behaviour of its
``modules/prompt_parser.py`` / ``modules/extra_networks.py``; the A1111 doctests are reproduced in
``tests/test_prompt_parser.py``. The order A1111 applies the pieces in, and so the order a caller
should use:

1. :func:`extract_extra_networks` -- ``<lora:name:0.8>``-style tags are cut out of the whole prompt
   (so they are never subject to prompt editing).
2. :func:`split_and` -- ``a cat :1.2 AND a dog`` -> weighted sub-prompts (positive prompt only; A1111
   encodes a negative prompt without AND splitting).
3. :func:`prompt_schedule` -- per sub-prompt, ``[from:to:when]`` and ``[a|b]`` resolved into the
   texts used over the sampling steps.
4. :func:`parse_prompt_attention` -- per text, ``(word:1.3)`` weights and ``BREAK`` markers, used by
   the tokenizer/encoder (``opensd.pipeline.conditioning``).

Deviations from A1111, all on inputs where A1111 errors or behaves by accident:

* ``(word:1.2.3)`` (a weight that is not a number) is read as text; A1111 raises ValueError.
* ``BREAK`` inside brackets still breaks; in A1111 the bracket multiplies the marker's weight, so it
  no longer equals -1 and the word "BREAK" is encoded as text with a negative weight.
* A prompt-editing or alternation group directly followed by a stray bracket or colon
  (``[a:b:2]]``, ``[a:[b|c]:0.3]:x``) is always taken as the edit. A1111's Earley parser finds two
  parses there and which one it keeps depends on Python's hash seed, i.e. it varies from one A1111
  start to the next (we checked our results against its parser under many seeds: every result of
  ours is one A1111 also gives).
* Brackets nested deeper than Python's recursion limit make the prompt literal text (no editing).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import InvalidArgument

__all__ = [
    "BREAK",
    "ExtraNetwork",
    "Fragment",
    "extract_extra_networks",
    "is_break",
    "parse_prompt_attention",
    "prompt_schedule",
    "prompt_schedules",
    "split_and",
]

# --- attention / emphasis --------------------------------------------------------------------

ROUND_MULTIPLIER = 1.1
# How weights are applied (opensd.pipeline.conditioning), our id -> A1111's "emphasis" setting:
# weights then the mean restored; weights only; syntax parsed but no weights; no syntax at all.
EMPHASIS_LABELS = {"original": "Original", "no_norm": "No norm", "ignore": "Ignore", "none": "None"}


def emphasis_id(label: str) -> str:
    """Our emphasis id for A1111's setting name (ValueError if it is none of them)."""
    for key, name in EMPHASIS_LABELS.items():
        if name == label:
            return key
    raise ValueError(label)

SQUARE_MULTIPLIER = 1 / 1.1
# The largest emphasis a fragment may reach: far past any prompt's (1.1^96), short of the
# float overflow that 6,000 unclosed '(' (or a 400-digit weight) make, which turned the whole
# conditioning, and so the image, into NaN.
MAX_EMPHASIS = 10_000.0
# Brackets open at once. Each closing bracket rescales every fragment since its opening one, so the
# parse costs fragments x depth: '[a' 20,000 times (an unclosed '[' per word) took 41 s.
MAX_BRACKET_DEPTH = 100
# Characters in one prompt text given to a text encoder. Plain text this long already fills the
# 400 chunks (30,000 tokens) the tokenizer allows; the cap refuses a 64 MB ComfyUI text at once
# instead of after a minute of parsing.
MAX_PROMPT_CHARS = 250_000


def check_prompt_length(text: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidArgument(f"prompt: {len(text):,} characters, more than the {MAX_PROMPT_CHARS:,} a text "
                              "encoder is given; make the prompt shorter")


class Fragment(NamedTuple):
    """A run of prompt text and the multiplier its tokens get. Equal to the plain tuple."""
    text: str
    weight: float


class _BreakFragment(Fragment):
    """The BREAK marker: its own type, so it is never merged with text or re-weighted."""


BREAK: Fragment = _BreakFragment("BREAK", -1.0)


def is_break(fragment: Fragment) -> bool:
    return isinstance(fragment, _BreakFragment)


# One token of emphasis syntax per match, tried in this order (first alternative wins).
_ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]                  # \( \) \[ \] \\ : the literal character
    | \\                            # any other backslash: dropped (A1111 keeps text[1:] == '')
    | [(\[]                         # opening bracket
    | :\s*(?P<weight>[+-]?[.\d]+)\s*\)   # ':1.3)' closes a round bracket with an explicit weight
    | [)\]]                         # closing bracket
    | [^\\()\[\]:]+                 # plain text
    | :                             # a colon that does not start a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\bBREAK\b")


def parse_prompt_attention(text: str) -> list[Fragment]:
    """Split ``text`` into fragments with their emphasis multipliers.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:w)`` multiplies by ``w``; brackets nest
    multiplicatively; ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal characters; an unmatched
    closing bracket is literal text and an unclosed opening bracket applies to the rest of the
    prompt. ``BREAK`` (upper case, a whole word) becomes the :data:`BREAK` marker. Adjacent
    fragments of equal weight are merged; an empty prompt gives ``[("", 1.0)]``.
    """
    out: list[list] = []          # [text, weight, is_break]
    round_open: list[int] = []    # index into out where each open bracket started
    square_open: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for item in out[start:]:
            if not item[2]:
                item[1] *= factor
                if not abs(item[1]) <= MAX_EMPHASIS:  # also NaN; checked here, 6,000 '(' stop early
                    raise InvalidArgument(f"prompt: the emphasis of {item[0][:40]!r} comes to {item[1]:g}, past "
                                          f"{MAX_EMPHASIS:g}; check the prompt's brackets and (text:weight) numbers")

    def add_text(piece: str) -> None:
        # Split at BREAK, then strip the whitespace around each one: a regex taking the whitespace
        # too ('\s*BREAK\s*') retried every space of a run, 20 s for 20,000 spaces.
        parts = _BREAK.split(piece)
        for i, part in enumerate(parts):
            if i:
                out.append([BREAK.text, BREAK.weight, True])
                part = part.lstrip()
            out.append([part.rstrip() if i < len(parts) - 1 else part, 1.0, False])

    for m in _ATTENTION_TOKEN.finditer(text):
        tok, weight = m.group(0), m.group("weight")
        if tok[0] == "\\":
            out.append([tok[1:], 1.0, False])
        elif tok in "([" and len(round_open) + len(square_open) == MAX_BRACKET_DEPTH:
            raise InvalidArgument(f"prompt: brackets nested more than {MAX_BRACKET_DEPTH} deep at character "
                                  f"{m.start() + 1} (write \\{tok} for a literal bracket)")
        elif tok == "(":
            round_open.append(len(out))
        elif tok == "[":
            square_open.append(len(out))
        elif weight is not None and round_open and _is_float(weight):
            scale_from(round_open.pop(), float(weight))
        elif weight is not None and round_open:
            # Not a number ('1.2.3'): A1111 raises; we keep ':1.2.3' as text and close the bracket.
            add_text(tok[:-1])
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif tok == ")" and round_open:
            scale_from(round_open.pop(), ROUND_MULTIPLIER)
        elif tok == "]" and square_open:
            scale_from(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(tok)

    # Unclosed brackets apply to everything after where they opened.
    for start in round_open:
        scale_from(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale_from(start, SQUARE_MULTIPLIER)

    if not out:
        return [Fragment("", 1.0)]
    merged: list[list] = [out[0]]
    for item in out[1:]:
        last = merged[-1]
        if not item[2] and not last[2] and item[1] == last[1]:
            last[0] += item[0]
        else:
            merged.append(item)
    return [BREAK if brk else Fragment(t, w) for t, w, brk in merged]


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# --- prompt editing and alternation ----------------------------------------------------------
#
# The grammar (A1111's, described in words):
#   top level : any mix of prompt content and stray ( ) [ ] : characters
#   content   : plain text, whitespace, escapes (backslash + any character but a newline) and groups
#   groups    : ( content )   ( content : content )   [ content ]         -> kept verbatim
#               [ content : content : NUMBER ]   [ content : NUMBER ]      -> prompt editing
#               [ content | content | ... ]   (options may be empty)       -> alternation
# Inside a group, brackets must balance and ':' / '|' are separators only. A '|' outside any
# alternation, or a backslash at the very end / before a newline, makes the whole prompt
# unparseable: it is then used as-is for every step, like A1111 does.

_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
_PLAIN_STOP = frozenset("\\[]():|")


@dataclass
class _Edit:
    before: list | None   # None: '[to:when]' form
    after: list
    when: str             # the NUMBER as written (its '.' decides step vs fraction)
    at: int = 0           # resolved switch step, filled by _collect_steps


@dataclass
class _Alternation:
    options: list[list] = field(default_factory=list)


class _Unparseable(Exception):
    pass


class _Parser:
    def __init__(self, text: str):
        self.s = text
        self.groups: dict[int, tuple[object, int] | None] = {}  # memo: start -> (node, end) or None

    def top(self) -> list:
        s, i, out = self.s, 0, []
        while i < len(s):
            c = s[i]
            if c in "([":
                got = self.group(i)
                if got is not None:
                    node, i = got
                    out.append(node)
                    continue
                out.append(c)  # a stray bracket
                i += 1
            elif c in ")]:":
                out.append(c)
                i += 1
            elif c == "|":
                raise _Unparseable
            else:
                j = self.plain(i)
                if j == i:
                    raise _Unparseable  # lone backslash at the end or before a newline
                out.append(s[i:j])
                i = j
        return out

    def plain(self, i: int) -> int:
        """End of the run of plain text / whitespace / escapes starting at ``i``."""
        s, n = self.s, len(self.s)
        while i < n:
            c = s[i]
            if c == "\\":
                if i + 1 < n and s[i + 1] != "\n":
                    i += 2
                    continue
                return i
            if c in _PLAIN_STOP:
                return i
            i += 1
        return i

    def content(self, i: int) -> tuple[list, int] | None:
        """Group content from ``i`` up to (not including) the next separator or closer."""
        s, out = self.s, []
        while i < len(s):
            c = s[i]
            if c in "([":
                got = self.group(i)
                if got is None:
                    return None
                node, i = got
                out.append(node)
            elif c in ")]:|":
                return out, i
            else:
                j = self.plain(i)
                if j == i:
                    return None
                out.append(s[i:j])
                i = j
        return out, i

    def group(self, start: int):
        if start in self.groups:
            return self.groups[start]
        self.groups[start] = result = self._group(start)
        return result

    def _group(self, start: int):
        s = self.s
        opener = s[start]
        closer = ")" if opener == "(" else "]"
        parts, seps, i = [], [], start + 1
        while True:
            got = self.content(i)
            if got is None:
                return None
            part, i = got
            parts.append(part)
            if i >= len(s):
                return None
            c = s[i]
            if c == closer:
                end = i + 1
                break
            if c == ":" or (c == "|" and opener == "["):
                seps.append(c)
                i += 1
                continue
            return None
        raw = s[start:end]
        if opener == "(":
            if len(seps) > 1:
                return None
            return _verbatim(raw, parts, seps), end
        if not seps:
            return _verbatim(raw, parts, seps), end
        if all(c == "|" for c in seps):
            return _Alternation(parts), end
        if all(c == ":" for c in seps) and len(seps) <= 2:
            number = parts[-1]
            if len(number) == 1 and isinstance(number[0], str) and _NUMBER.fullmatch(number[0]):
                before = parts[0] if len(seps) == 2 else None
                return _Edit(before, parts[-2], number[0].strip()), end
        return None


def _verbatim(raw: str, parts: list[list], seps: list[str]) -> list:
    """A ( ) or [ ] group without editing: its brackets and separators are kept as text."""
    out: list = [raw[0]]
    for k, part in enumerate(parts):
        if k:
            out.append(seps[k - 1])
        out.extend(part)
    out.append(raw[-1])
    return out


def _parse(prompt: str) -> list | None:
    try:
        return _Parser(prompt).top()
    except (_Unparseable, RecursionError):
        return None


def _walk(nodes: list):
    for node in nodes:
        if isinstance(node, _Edit):
            yield node
            if node.before is not None:
                yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternation):
            yield node
            for option in node.options:
                yield from _walk(option)
        elif isinstance(node, list):
            yield from _walk(node)


def _collect_steps(tree: list, steps: int, int_offset: int, float_offset: float, old: bool) -> list[int]:
    ends = {steps}
    for node in _walk(tree):
        if isinstance(node, _Alternation):
            ends.update(range(1, steps + 1))
            continue
        v = float(node.when)
        if old:
            v = v * steps if v < 1 else v
        elif "." in node.when:
            v = (v - float_offset) * steps   # a fraction of the steps (1.x: of the hires pass)
        else:
            v = v - int_offset               # a step number
        # 1e309 or a 400-digit number reads as an infinity: past every step (or before the first)
        node.at = min(steps, int(v)) if math.isfinite(v) else (steps if v > 0 else 0)
        if node.at >= 1:
            ends.add(node.at)
    return sorted(ends)


def _render(nodes: list, step: int, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Edit):
            if step <= node.at:
                if node.before is not None:
                    _render(node.before, step, out)
            else:
                _render(node.after, step, out)
        elif isinstance(node, _Alternation):
            _render(node.options[(step - 1) % len(node.options)], step, out)
        else:
            _render(node, step, out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    old_scheduling: bool = False) -> list[tuple[int, str]]:
    """The texts ``prompt`` stands for over ``steps`` sampling steps, as ``[(end_at_step, text)]``.

    Each text is used up to and including its ``end_at_step`` (A1111's rule: the sampler at 0-based
    step ``i`` uses the first entry with ``i <= end_at_step``). ``[from:to:when]`` switches after
    step ``when``: a number without a decimal point is a step number, with one it is a fraction of
    ``steps``; ``[to:when]`` adds and ``[from::when]`` removes text; groups nest. ``[a|b|c]``
    cycles through its options, one per step. With ``hires_steps`` (the second pass of hires fix)
    integers count from the end of the first pass and fractions from 1.0 to 2.0 cover the second
    pass. ``old_scheduling`` is A1111's compatibility option: any number below 1 is a fraction.
    """
    if steps < 1 or (hires_steps is not None and hires_steps < 1):
        raise InvalidArgument(f"steps: must be at least 1, got {steps} (hires steps {hires_steps})")
    if hires_steps is None or old_scheduling:
        int_offset, float_offset, total = 0, 0.0, steps
    else:
        int_offset, float_offset, total = steps, 1.0, hires_steps
    tree = _parse(prompt)
    if tree is None:
        return [(total, prompt)]
    out = []
    for end in _collect_steps(tree, total, int_offset, float_offset, old_scheduling):
        pieces: list[str] = []
        _render(tree, end, pieces)
        out.append((end, "".join(pieces)))
    return out


def prompt_schedules(prompts: list[str], steps: int, hires_steps: int | None = None,
                     old_scheduling: bool = False) -> list[list[tuple[int, str]]]:
    """:func:`prompt_schedule` for each prompt (A1111's get_learned_conditioning_prompt_schedules)."""
    cache: dict[str, list[tuple[int, str]]] = {}
    for p in prompts:
        if p not in cache:
            cache[p] = prompt_schedule(p, steps, hires_steps, old_scheduling)
    return [cache[p] for p in prompts]


# --- composable diffusion (AND) --------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
MAX_AND_PARTS = 100  # each part is one more network evaluation per step: 5,000 held the server for hours
# Lazy text, then an optional ':weight' at the very end; trailing whitespace is not part of the text.
_PART_WEIGHT = re.compile(r"(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*", re.DOTALL)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """``"a cat :1.2 AND a dog"`` -> ``[("a cat", 1.2), (" a dog", 1.0)]`` (A1111's
    get_multicond_prompt_list for one prompt). ``AND`` must be upper case and a whole word; each
    part may end in ``:weight``; leading whitespace of a part is kept, trailing whitespace is not."""
    parts = []
    subs = _AND.split(prompt, maxsplit=MAX_AND_PARTS)
    if len(subs) > MAX_AND_PARTS:
        raise InvalidArgument(f"prompt: more than {MAX_AND_PARTS} sub-prompts joined by AND")
    for sub in subs:
        m = _PART_WEIGHT.fullmatch(sub)
        text, weight = m.group(1), m.group(2)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


# --- extra networks ---------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


class ExtraNetwork(NamedTuple):
    """One ``<kind:name:arg:...>`` tag: e.g. ``<lora:film:0.8>`` -> ("lora", "film", ("0.8",)).

    ``args`` are the remaining ``:``-separated items as written; items of the form ``key=value``
    are named (A1111's ExtraNetworkParams), the others positional.
    """
    kind: str
    name: str
    args: tuple[str, ...] = ()

    @property
    def positional(self) -> tuple[str, ...]:
        return tuple(a for a in self.args if len(a.split("=", 2)) != 2)

    @property
    def named(self) -> dict[str, str]:
        out = {}
        for a in self.args:
            kv = a.split("=", 2)
            if len(kv) == 2:
                out[kv[0]] = kv[1]
        return out

    def multipliers(self, default: float = 1.0) -> tuple[float, float]:
        """(text-encoder, UNet) multipliers with A1111's LoRA rules: ``<lora:n:te:unet>``, the UNet
        one defaults to the text-encoder one, which defaults to ``default``; ``te=``/``unet=``
        override. Raises ValueError on a non-number."""
        pos, named = self.positional, self.named
        te = float(pos[0]) if pos else default
        te = float(named.get("te", te))
        unet = float(pos[1]) if len(pos) > 1 else te
        unet = float(named.get("unet", unet))
        return te, unet


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetwork]]:
    """Remove ``<kind:name[:args]>`` tags; return the cleaned prompt and the tags in order.

    Text around a tag is left as it was (``"a <lora:x:1> b"`` -> ``"a  b"``), like A1111.
    """
    found: list[ExtraNetwork] = []

    def take(m: re.Match) -> str:
        items = m.group(2).split(":")
        found.append(ExtraNetwork(m.group(1), items[0], tuple(items[1:])))
        return ""

    # No tag ends after the last '>': leaving that text out keeps the search linear ('<a:' 16,000
    # times, with no '>', was a scan to the end from every '<', 0.8 s).
    end = prompt.rfind(">") + 1
    return _EXTRA_NETWORK.sub(take, prompt[:end]) + prompt[end:], found
