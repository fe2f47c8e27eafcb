"""Every `opensd ...` command the README and docs show exists and parses (code blocks in full, inline
mentions up to their command), and every `python -m opensd.X` names a module that exists."""
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from opensd.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELLS = ("", "sh", "bash", "shell", "console")


def _commands(text: str):
    """(command words, complete?) for each `opensd ...` in code blocks (complete) and inline code."""
    fence = None  # the open code block's language
    block: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fence = line.strip()[3:] if fence is None else None
            continue
        if fence is not None:
            if fence not in SHELLS:
                continue
            block.append(line)
            if not line.rstrip().endswith("\\"):
                yield from _split(" ".join(b.rstrip().removesuffix("\\") for b in block), True)
                block = []
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield from _split(span, False)


def _split(command: str, complete: bool):
    for part in re.split(r"&&|\|\||;|\|", command):
        if not re.match(r"\s*(\w+=\S*\s+)*(opensd\s|python -m opensd)", part):
            continue
        # "[--flag value]" marks optional flags in a synopsis: check them as if given
        words = [w.strip("[]") for w in shlex.split(part, comments=True) if w.strip("[]")]
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
            words = words[1:]
        if words[:1] == ["opensd"] and len(words) > 1:
            yield words[1:], complete
        if words[:2] == ["python", "-m"] and len(words) > 2 and words[2].startswith("opensd"):
            yield ["-m", words[2]], complete


CASES = [(doc.name, words, complete) for doc in DOCS for words, complete in _commands(doc.read_text())]


def test_the_docs_show_commands():
    assert len([c for c in CASES if c[1][0] != "-m"]) > 20


@pytest.mark.parametrize("doc,words,complete", CASES, ids=[f"{d}: {' '.join(w)[:60]}" for d, w, _ in CASES])
def test_documented_command_exists(doc, words, complete, capsys):
    if words[0] == "-m":
        assert importlib.util.find_spec(words[1]) is not None, f"{doc}: python -m {words[1]}: no such module"
        return
    try:
        build_parser().parse_args(words)
    except SystemExit as e:
        err = capsys.readouterr().err
        if e.code == 0:  # --help
            return
        assert not complete and "required" in err, f"{doc}: opensd {' '.join(words)}: {err}"
