"""Prompt styles (A1111's styles.csv), wildcards and dynamic prompts (sd-dynamic-prompts syntax)."""
from __future__ import annotations

import pytest

from opensd.errors import InvalidArgument
from opensd.text.dynamic_prompts import check_template, expand, is_dynamic
from opensd.text.prompt_parser import parse_prompt_attention, prompt_schedule
from opensd.text.styles import apply_styles, load_styles, merge
from opensd.text.wildcards import Wildcards


@pytest.fixture
def wildcards(tmp_path):
    root = tmp_path / "wildcards"
    (root / "clothes").mkdir(parents=True)
    (root / "colour.txt").write_text("# colours\nred\n\ngreen\nblue\n", encoding="utf-8")
    (root / "clothes" / "hat.txt").write_text("__colour__ cap\n{straw|felt} hat\n", encoding="utf-8")
    (root / "loop.txt").write_text("again __loop__\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("outside\n", encoding="utf-8")
    return Wildcards(root)


def test_styles_csv_as_a1111_reads_and_applies_it(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text('\ufeffname,prompt,negative_prompt\nink,"{prompt}, ink, (bold:1.2)",blurry\n'
                    'warm, warm light,\nold,"text only"\n', encoding="utf-8")
    styles = load_styles(path)
    assert list(styles) == ["ink", "warm", "old"] and styles["warm"].prompt == "warm light"
    assert apply_styles("a cat", "", ["ink", "warm"], styles) == ("a cat, ink, (bold:1.2), warm light", "blurry")
    assert merge("{prompt} and {prompt}", "x") == "x and x" and merge("", "x") == "x" and merge("s", "") == "s"
    with pytest.raises(InvalidArgument, match="styles: unknown style 'nope'; known styles: 'ink', 'old', 'warm'"):
        apply_styles("a cat", "", ["nope"], styles)
    assert load_styles(tmp_path / "none.csv") == {}
    (tmp_path / "bad.csv").write_text("title,text2\nx,y\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match="line 2: expected the columns name,prompt,negative_prompt"):
        load_styles(tmp_path / "bad.csv")


def test_choices_are_deterministic_per_seed_and_vary_across_seeds():
    template = "a {red|green|blue|black} {cat|dog|fox}"
    assert expand(template, 7) == expand(template, 7)
    assert len({expand(template, s) for s in range(40)}) > 6
    assert is_dynamic(template) and not is_dynamic("a cat, (red:1.2), [cat|dog], [a:b:0.5]")


def test_counts_ranges_separators_and_weights():
    for seed in range(30):
        two = expand("{2$$a|b|c}", seed).split(", ")
        assert len(two) == 2 and len(set(two)) == 2 and set(two) <= {"a", "b", "c"}
        some = expand("{1-3$$ and $$a|b|c}", seed).split(" and ")
        assert 1 <= len(some) <= 3 and set(some) <= {"a", "b", "c"}
        assert 2 <= len(expand("{2-$$a|b|c|d}", seed).split(", ")) <= 4
    picks = [expand("{0.5::rare|1.5::common}", s) for s in range(400)]
    assert 60 < picks.count("rare") < 140 and picks.count("rare") + picks.count("common") == 400
    assert expand("{big {red|blue}|small}", 3) in ("big red", "big blue", "small")


def test_a1111_syntax_inside_and_around_braces_is_untouched():
    for seed in range(10):
        out = expand("{[cat|dog] photo|(oil:1.2) painting}, [from:to:0.5] \\{literal\\}", seed)
        assert out.startswith(("[cat|dog] photo, ", "(oil:1.2) painting, "))
        assert out.endswith("[from:to:0.5] \\{literal\\}")
    text = expand("{(a:1.3)|(a:1.3)} [x|y]", 1)
    assert parse_prompt_attention(text) == parse_prompt_attention("(a:1.3) [x|y]")
    assert prompt_schedule(text, 4) == prompt_schedule("(a:1.3) [x|y]", 4)


def test_wildcards_with_subfolders_nesting_and_counts(wildcards):
    seen = {expand("a __clothes/hat__", s, wildcards) for s in range(60)}
    assert seen == {"a red cap", "a green cap", "a blue cap", "a straw hat", "a felt hat"}
    two = expand("{2$$__colour__}", 5, wildcards).split(", ")
    assert len(set(two)) == 2 and set(two) <= {"red", "green", "blue"}
    check_template("a __clothes/hat__ {x|__colour__}", wildcards)


@pytest.mark.parametrize("template,message", [
    ("__../secret__", "'../secret' is not a name inside the folder"),
    ("__/etc/passwd__", "is not a name inside the folder"),
    ("__nothere__", "no file nothere.txt in"),
    ("{a|b", "the '{' at character 1 is never closed"),
    ("{x|__nothere__}", "no file nothere.txt"),
    # found by the hostile-input sweep: Python's RecursionError (an HTTP 500) before
    ("{a|" * 6000, "the '{' at character 61 nests choices more than 20 deep"),
    ("{" * 20000, "the '{' at character 21 nests choices more than 20 deep"),
])
def test_bad_templates_are_refused_before_any_image(wildcards, template, message):
    with pytest.raises(InvalidArgument, match=message.replace("{", "\\{").replace("(", "\\(")):
        check_template(template, wildcards)


def test_a_symlink_out_of_the_folder_is_refused(wildcards, tmp_path):
    (wildcards.root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(InvalidArgument, match="not a name inside the wildcards folder"):
        expand("__escape__", 1, wildcards)


def test_a_wildcard_that_names_itself_stops(wildcards):
    with pytest.raises(InvalidArgument, match="nest deeper than"):
        expand("__loop__", 1, wildcards)
    with pytest.raises(InvalidArgument, match="needs a wildcards folder"):
        expand("__colour__", 1, Wildcards(None))


def test_a_brace_followed_by_many_blanks_is_read_at_once():
    """The count pattern's blank runs backtracked every way: '{' and 400 spaces took 12 s,
    20,000 (within the prompt limit) forever. Counts with blanks still read."""
    import time

    start = time.perf_counter()
    assert expand("{" + " " * 20000 + "}", 1) == " " * 20000
    assert time.perf_counter() - start < 5
    assert expand("{ 2 - 2 $$ + $$a|a}", 1) == "a + a"
