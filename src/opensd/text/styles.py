"""Prompt styles in AUTOMATIC1111's `styles.csv`: named prompt / negative prompt pairs applied to a
prompt by name.

The file is CSV (UTF-8, optional BOM) with a header row `name,prompt,negative_prompt` (A1111's
oldest files have `text` instead of `prompt`). Applying a style: when its text holds `{prompt}`,
the prompt replaces that placeholder; otherwise the style's text is appended after ", " (empty
parts dropped). Several styles apply in the order given, each to the result of the one before,
to the prompt and the negative prompt alike.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ..errors import InvalidArgument
from .prompt_parser import MAX_PROMPT_CHARS

PLACEHOLDER = "{prompt}"
MAX_STYLES = 100  # styles applied to one prompt, each in turn


class Style(NamedTuple):
    name: str
    prompt: str
    negative_prompt: str

    def as_dict(self) -> dict:
        return self._asdict()


def merge(style_text: str, prompt: str) -> str:
    """One style's text applied to a prompt, as A1111 does."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def load_styles(path: Path, where: str = "styles-file") -> dict[str, Style]:
    """The styles of a styles.csv by name; no file means no styles. A file that cannot be read as
    A1111's CSV is the user's mistake, named by `where`."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, skipinitialspace=True))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InvalidArgument(f"{where}: cannot read {path} ({e})") from None
    styles: dict[str, Style] = {}
    for n, row in enumerate(rows, start=2):
        name = row.get("name")
        text = row.get("prompt", row.get("text"))
        if name is None or text is None:
            raise InvalidArgument(f"{where}: {path} line {n}: expected the columns name,prompt,negative_prompt")
        styles[name] = Style(name, text, row.get("negative_prompt") or "")
    return styles


def apply_styles(prompt: str, negative_prompt: str, names: Iterable[str], styles: dict[str, Style],
                 where: str = "styles") -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles applied; an unknown name is refused, and so are
    more than MAX_STYLES names or a prompt grown past what a text encoder is given (a 3,000-word style
    given 1,000 times built a 15,000,000-character prompt, copied at every step: 90 s)."""
    names = list(names)
    if len(names) > MAX_STYLES:
        raise InvalidArgument(f"{where}: {len(names):,} styles; at most {MAX_STYLES} apply to one prompt")
    for name in names:
        style = styles.get(name)
        if style is None:
            known = ", ".join(repr(s) for s in sorted(styles)[:20]) or "none (no styles file)"
            if len(styles) > 20:
                known += f", ... ({len(styles)} in all)"
            raise InvalidArgument(f"{where}: unknown style {name!r}; known styles: {known}")
        prompt = merge(style.prompt, prompt)
        negative_prompt = merge(style.negative_prompt, negative_prompt)
        longest = max(len(prompt), len(negative_prompt))
        if longest > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"{where}: with style {name!r} applied the prompt holds {longest:,} characters, more "
                                  f"than the {MAX_PROMPT_CHARS:,} a text encoder is given")
    return prompt, negative_prompt
