"""ComfyUI's primitive nodes (comfy_extras.nodes_primitive): values through a graph into other
nodes' widgets, and their widgets validated like any other."""
import pytest
from PIL import Image

from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, GraphError, execute, validate_prompt


def _graph(**values):
    return {"w": {"class_type": "PrimitiveInt", "inputs": {"value": values.get("w", 24)}},
            "c": {"class_type": "PrimitiveInt", "inputs": {"value": 0x00FF00}},
            "t": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a\nb"}},
            "f": {"class_type": "PrimitiveFloat", "inputs": {"value": 1.5}},
            "b": {"class_type": "PrimitiveBoolean", "inputs": {"value": True}},
            "s": {"class_type": "PrimitiveString", "inputs": {"value": "shot"}},
            "i": {"class_type": "EmptyImage", "inputs": {"width": ["w", 0], "height": 8, "batch_size": 1,
                                                         "color": ["c", 0]}},
            "x": {"class_type": "ImageScaleBy", "inputs": {"image": ["i", 0], "upscale_method": "nearest-exact",
                                                           "scale_by": ["f", 0]}},
            "o": {"class_type": "SaveImage", "inputs": {"images": ["x", 0], "filename_prefix": ["s", 0]}}}


def test_primitives_drive_other_nodes(tmp_path):
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    graph = _graph()
    validate_prompt(graph, ctx)
    saved = execute(graph, ctx, None)["o"]["images"]
    assert saved[0]["filename"].startswith("shot")  # the prefix from PrimitiveString
    image = Image.open(tmp_path / "out" / saved[0]["subfolder"] / saved[0]["filename"])
    assert image.size == (36, 12) and image.getpixel((0, 0))[:3] == (0, 255, 0)
    from opensd.workflows.nodes_primitive import primitive
    assert primitive(None, "a\nb") == ("a\nb",)


def test_primitive_widgets_are_validated():
    with pytest.raises(GraphError) as e:
        validate_prompt(_graph(w="wide"))
    assert "w" in e.value.payload["node_errors"]
    with pytest.raises(GraphError):
        validate_prompt(_graph(w=2 ** 70))  # past ComfyUI's sys.maxsize bound


def test_preview_any_shows_each_kind_of_value_as_text(tmp_path):
    """PreviewAny ("Preview as Text"): strings as they are, numbers and booleans by str, JSON-able
    values indented, anything else by its repr; the text is the node's ui and its output."""
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    graph = {"t": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a\nb"}},
             "b": {"class_type": "PrimitiveBoolean", "inputs": {"value": False}},
             "n": {"class_type": "StringLength", "inputs": {"string": ["t", 0]}},
             "i": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "p1": {"class_type": "PreviewAny", "inputs": {"source": ["t", 0]}},
             "p2": {"class_type": "PreviewAny", "inputs": {"source": ["b", 0]}},
             "p3": {"class_type": "PreviewAny", "inputs": {"source": ["n", 0]}},
             "p4": {"class_type": "PreviewAny", "inputs": {"source": ["i", 0]}},
             "len": {"class_type": "StringLength", "inputs": {"string": ["p1", 0]}},
             "p5": {"class_type": "PreviewAny", "inputs": {"source": ["len", 0]}}}
    validate_prompt(graph, ctx)
    ui = execute(graph, ctx, None)
    assert [ui[k]["text"] for k in ("p1", "p2", "p3", "p5")] == [("a\nb",), ("False",), ("3",), ("3",)]
    assert ui["p4"]["text"][0].startswith("tensor([[[[0.")  # a tensor is not JSON: its repr

    from opensd.workflows.nodes_primitive import PREVIEW_TEXT_CHARS, preview_any
    assert preview_any(None, {"a": [1, 2]})["result"] == ('{\n    "a": [\n        1,\n        2\n    ]\n}',)
    assert preview_any(None, None)["ui"] == {"text": ("None",)}
    cut = preview_any(None, "x" * (PREVIEW_TEXT_CHARS + 5))["result"][0]
    assert cut == "x" * PREVIEW_TEXT_CHARS + "\n... (5 more characters)"
