"""A tagger's scores as the text each face answers with. The tags come in the order of the model's
selected_tags.csv, each with a category: 9 a rating (general, sensitive, questionable, explicit),
0 a general tag, 4 a character. Three readers, three formats:

* ComfyUI's WD14Tagger|pysssss (``comfy_text``): the character tags scoring above
  `character_threshold`, then the general tags above `threshold` (both strictly above, each in csv
  order); underscores made spaces when asked; the tags named in `exclude_tags` (comma separated, in
  lower case, compared after that replacement) left out; "(" and ")" escaped with a backslash, so
  "ganyu_(genshin_impact)" stays text in a prompt and is not read as emphasis; ", " between the tags,
  or after each one when `trailing_comma`.
* A1111's /sdapi/v1/interrogate "deepdanbooru" (``a1111_caption``), read with A1111's DeepDanbooru
  settings: every tag but the ratings scoring at least `threshold` (0.5), sorted by name or by score,
  the `filter_tags` left out, underscores made spaces, backslash and parentheses escaped, and
  "(tag:0.923)" when the ranks are asked for.
* The tagger extension's POST /tagger/v1/interrogate (``tagger_caption``): a {tag: score} map of the
  four ratings, then the general and character tags scoring at least `threshold`, highest first,
  names as the csv spells them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

RATING, GENERAL, CHARACTER = 9, 0, 4
_A1111_SPECIAL = re.compile(r"([\\()])")  # A1111's prompt parser reads these three


@dataclass(frozen=True)
class Scores:
    names: tuple[str, ...]
    categories: tuple[int, ...]
    probs: tuple[float, ...]

    def of(self, *categories: int) -> list[tuple[str, float]]:
        """(name, score) of the tags in `categories`, in csv order."""
        return [(n, p) for n, c, p in zip(self.names, self.categories, self.probs) if c in categories]


def escape_parentheses(tag: str) -> str:
    return tag.replace("(", "\\(").replace(")", "\\)")


def comfy_text(scores: Scores, threshold: float = 0.35, character_threshold: float = 0.85,
               replace_underscore: bool = False, trailing_comma: bool = False, exclude_tags: str = "") -> str:
    chosen = [n for n, p in scores.of(CHARACTER) if p > character_threshold]
    chosen += [n for n, p in scores.of(GENERAL) if p > threshold]
    if replace_underscore:
        chosen = [n.replace("_", " ") for n in chosen]
    dropped = {s.strip() for s in exclude_tags.lower().split(",")}
    kept = [escape_parentheses(n) for n in chosen if n not in dropped]
    return "".join(n + ", " for n in kept) if trailing_comma else ", ".join(kept)


def a1111_caption(scores: Scores, threshold: float = 0.5, sort_alpha: bool = True, use_spaces: bool = True,
                  escape: bool = True, filter_tags: str = "", ranks: bool = False) -> str:
    found = dict(t for t in scores.of(GENERAL, CHARACTER) if t[1] >= threshold)
    order = sorted(found) if sort_alpha else sorted(found, key=lambda n: -found[n])
    dropped = {s.strip().replace(" ", "_") for s in filter_tags.split(",")}
    out = []
    for name in (n for n in order if n not in dropped):
        text = name.replace("_", " ") if use_spaces else name
        text = _A1111_SPECIAL.sub(r"\\\1", text) if escape else text
        out.append(f"({text}:{found[name]:.3f})" if ranks else text)
    return ", ".join(out)


def tagger_caption(scores: Scores, threshold: float = 0.35) -> dict[str, float]:
    tags = [t for t in scores.of(GENERAL, CHARACTER) if t[1] >= threshold]
    ranked = sorted(tags, key=lambda t: -t[1])
    return {**{n: float(p) for n, p in scores.of(RATING)}, **{n: float(p) for n, p in ranked}}
