"""ComfyUI's text nodes (comfy_extras.nodes_string, the dataset text transforms of nodes_dataset): each
operation, the regular expressions' time limit, the size caps, and
text driving another node through a graph."""
import pytest
from PIL import Image

from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, execute
from opensd.workflows import nodes_string as T


def test_text_operations():
    assert T.string_concatenate(None, "a", "b", ", ") == ("a, b",)
    assert T.string_substring(None, "lighthouse", -5, 99) == ("house",)
    assert T.string_length(None, "fog\n") == (4,)
    assert [T.case_converter(None, "hello wORLD", m)[0] for m in T.CASES] == [
        "HELLO WORLD", "hello world", "Hello world", "Hello World"]
    assert [T.string_trim(None, "  x \n", m)[0] for m in T.TRIMS] == ["x", "x \n", "  x"]
    assert T.string_replace(None, "a-b-c", "-", "+") == ("a+b+c",)
    assert T.string_replace(None, "ab", "", "_") == ("_a_b_",)
    assert T.string_contains(None, "Castle", "cast", False) == (True,)
    assert T.string_contains(None, "Castle", "cast", True) == (False,)
    assert [T.string_compare(None, "Tower", "tow", m, False)[0] for m in T.COMPARISONS] == [True, False, False]
    assert T.string_compare(None, "A", "a", "Equal", True) == (False,)


def test_replace_that_would_explode_is_one_line():
    with pytest.raises(InvalidArgument, match="^replace: the result would be 10,000,011,000,000 characters"):
        T.string_replace(None, "x" * 1_000_000, "", "y" * 10_000_000)
    with pytest.raises(InvalidArgument, match="^replace: the result would be"):
        T.string_replace(None, "ab" * 500_000, "a", "z" * 100)


def test_text_drives_a_graph(tmp_path):
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    graph = {"a": {"class_type": "PrimitiveString", "inputs": {"value": "  misty  "}},
             "t": {"class_type": "StringTrim", "inputs": {"string": ["a", 0], "mode": "Both"}},
             "c": {"class_type": "StringConcatenate", "inputs": {"string_a": ["t", 0], "string_b": "harbour",
                                                                 "delimiter": " "}},
             "n": {"class_type": "StringLength", "inputs": {"string": ["c", 0]}},
             "i": {"class_type": "EmptyImage", "inputs": {"width": ["n", 0], "height": 2, "batch_size": 1,
                                                          "color": 0}},
             "o": {"class_type": "PreviewImage", "inputs": {"images": ["i", 0]}}}
    shown = execute(graph, ctx)["o"]["images"][0]
    with Image.open(tmp_path / "temp" / shown["subfolder"] / shown["filename"]) as im:
        assert im.size == (len("misty harbour"), 2)


def test_regex_match_and_its_flags():
    assert T.regex_match(None, "Misty HARBOUR", "harbour$", True, False, False) == (True,)
    assert T.regex_match(None, "Misty HARBOUR", "harbour$", False, False, False) == (False,)
    assert T.regex_match(None, "a\nb", "^b", False, False, False) == (False,)
    assert T.regex_match(None, "a\nb", "^b", False, True, False) == (True,)   # multiline
    assert T.regex_match(None, "a\nb", "a.b", False, False, True) == (True,)  # dotall


def test_regex_extract_modes_as_comfyui():
    text = "w=512, h=768; w=64"
    extract = lambda mode, group=1, pattern=r"(\w)=(\d+)": T.regex_extract(  # noqa: E731
        None, text, pattern, mode, True, False, False, group)[0]
    assert extract("First Match") == "w=512"
    assert extract("All Matches") == "w\nh\nw"               # findall: the first group of each match
    assert extract("All Matches", pattern=r"\d+") == "512\n768\n64"
    assert extract("First Group", 2) == "512"
    assert extract("First Group", 3) == ""                   # the pattern has two groups
    assert extract("First Group", 0) == "w=512"
    assert extract("All Groups", 2) == "512\n768\n64"
    assert extract("All Groups", pattern=r"\d+") == ""       # no groups: nothing
    assert extract("First Match", pattern="q") == ""


def test_regex_replace_backreferences_count_and_cap():
    assert T.regex_replace(None, "a1 b22 c333", r"(\d+)", r"<\1>") == ("a<1> b<22> c<333>",)
    assert T.regex_replace(None, "a1 b22 c333", r"\d+", "#", count=2) == ("a# b# c333",)
    assert T.regex_replace(None, "X x", "x", "y", case_insensitive=False) == ("X y",)
    with pytest.raises(InvalidArgument, match=r"^replace: '<\\\\2>' does not fit the pattern"):
        T.regex_replace(None, "a1", r"(\d)", r"<\2>")
    with pytest.raises(InvalidArgument, match="^regex replace: the result would be more than 10,000,000"):
        T.regex_replace(None, "x" * 1000, "x", "y" * 20_000)


def test_bad_and_runaway_patterns_are_one_line_errors(monkeypatch):
    with pytest.raises(InvalidArgument, match=r"^regex_pattern: '\(a' is not a valid regular expression"):
        T.regex_match(None, "a", "(a", True, False, False)
    with pytest.raises(InvalidArgument, match="^regex_pattern: 10,001 characters"):
        T.regex_extract(None, "a", "a" * 10_001, "First Match", True, False, False, 1)
    monkeypatch.setattr(T, "REGEX_TIMEOUT", 0.2)
    import time
    start = time.monotonic()
    with pytest.raises(InvalidArgument, match=r"^regex_pattern: matching took more than 0.2 s"):
        T.regex_match(None, "a" * 60 + "b", "(a|aa)+$", False, False, False)  # exponential backtracking
    assert time.monotonic() - start < 5
    for mode in T.EXTRACT_MODES:
        with pytest.raises(InvalidArgument, match="took more than"):
            T.regex_extract(None, "a" * 60 + "b", "(a|aa)+$", mode, False, False, False, 1)
    with pytest.raises(InvalidArgument, match="took more than"):
        T.regex_replace(None, "a" * 60 + "b", "(a|aa)+$", "")


def test_dataset_text_nodes():
    from opensd.workflows import NODES
    run = lambda name, text, **kw: NODES[name].fn(None, texts=text, **kw)[0]  # noqa: E731
    assert run("TextToLowercase", "Misty HARBOUR") == "misty harbour"
    assert run("TextToUppercase", "Misty harbour") == "MISTY HARBOUR"
    assert run("TruncateText", "lighthouse", max_length=5) == "light"
    assert run("AddTextPrefix", "cat", prefix="a photo of ") == "a photo of cat"
    assert run("AddTextSuffix", "cat", suffix=", 4k") == "cat, 4k"
    assert run("ReplaceText", "a-b-c", find="-", replace="+") == "a+b+c"
    assert run("StripWhitespace", "\t fog \n") == "fog"
    with pytest.raises(InvalidArgument, match="^texts: the result would be 10,000,001 characters"):
        run("AddTextSuffix", "x" * 5_000_000, suffix="y" * 5_000_001)
    with pytest.raises(InvalidArgument, match="^replace: the result would be"):
        run("ReplaceText", "x" * 1000, find="x", replace="y" * 20_000)


def test_regex_and_dataset_text_in_a_graph(tmp_path):
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    graph = {"a": {"class_type": "PrimitiveString", "inputs": {"value": "size 12 by 7"}},
             "r": {"class_type": "RegexExtract", "inputs": {"string": ["a", 0], "regex_pattern": r"(\d+)",
                                                            "mode": "First Group", "case_insensitive": True,
                                                            "multiline": False, "dotall": False, "group_index": 1}},
             "s": {"class_type": "AddTextSuffix", "inputs": {"texts": ["r", 0], "suffix": "00"}},
             "p": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}}
    assert list(execute(graph, ctx)["p"]["text"]) == ["1200"]
    graph["r"]["inputs"]["regex_pattern"] = "(("
    with pytest.raises(Exception, match=r"node r \(RegexExtract\): regex_pattern: '\(\(' is not a valid"):
        execute(graph, ctx)
