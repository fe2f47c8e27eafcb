"""ComfyUI's text nodes (comfy_extras.nodes_string): each operation, the replace size cap, and
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
