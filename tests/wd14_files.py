"""Tiny WD14 taggers for the tests: an ONNX file with the real layout (input "input_1:0" of shape
(batch, size, size, 3) float32, output "predictions_sigmoid" of shape (batch, tags)) whose scores the
test sets: each tag is a constant, or one input value / 255 (a pixel's channel, as the model sees it),
and the selected_tags.csv beside it."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# (name, category, score or (y, x, channel) of the input read / 255); categories: 9 rating, 0 general, 4 character
TAGS = [
    ("general", 9, 0.5), ("sensitive", 9, 0.25), ("questionable", 9, 0.125), ("explicit", 9, 0.0625),
    ("1girl", 0, 0.875), ("solo", 0, 0.25), ("long_hair", 0, 0.75), (":d", 0, 0.5), ("\\m/", 0, 0.625),
    ("white_corner", 0, (0, 0, 2)),  # the top-left pixel's last channel (R): the padding is white
    ("blue_first", 0, (1, 0, 0)),    # the first picture pixel's first channel: B
    ("red_last", 0, (1, 0, 2)),      # its last channel: R
    ("bottom_pad", 0, (3, 3, 1)),    # the bottom-right pixel, G: padding again below the picture
    ("ganyu_(genshin_impact)", 4, 0.875), ("hatsune_miku", 4, 0.75),
]


def write_tagger(folder: Path, name: str, size: int = 4, tags=TAGS, csv_rows=None, layout: str = "flat") -> Path:
    """<folder>/<name>.onnx + <name>.csv (layout "flat") or <folder>/<name>/model.onnx + selected_tags.csv
    ("hf"); csv_rows: the csv's (name, category) rows if not `tags`'."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = len(tags)
    weights, bias = np.zeros((size * size * 3, n), np.float32), np.zeros(n, np.float32)
    for col, (_, _, value) in enumerate(tags):
        if isinstance(value, tuple):
            y, x, c = value
            weights[(y * size + x) * 3 + c, col] = 1 / 255
        else:
            bias[col] = value
    inits = [numpy_helper.from_array(np.array([-1, size * size * 3], np.int64), "flat_shape"),
             numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    nodes = [helper.make_node("Reshape", ["input_1:0", "flat_shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "b"], ["predictions_sigmoid"])]
    graph = helper.make_graph(
        nodes, "wd14", [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, ["unk__", size, size, 3])],
        [helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, ["unk__", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if layout == "hf":
        folder = folder / name
        onnx_path, csv_path = folder / "model.onnx", folder / "selected_tags.csv"
    else:
        onnx_path, csv_path = folder / f"{name}.onnx", folder / f"{name}.csv"
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(onnx_path))
    rows = csv_rows if csv_rows is not None else [(name, category) for name, category, _ in tags]
    lines = ["tag_id,name,category,count"] + [f'{k},"{t}",{c},{1000 - k}' for k, (t, c) in enumerate(rows)]
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return onnx_path


def picture():
    """4 x 2 RGB: the first row (51, 102, 204) (blue-ish), the second black. Padded to 4 x 4 it sits on
    rows 1 and 2, white above and below."""
    from PIL import Image

    image = Image.new("RGB", (4, 2), (0, 0, 0))
    image.paste((51, 102, 204), (0, 0, 4, 1))
    return image


# what comfy_text gives for picture() with the defaults (0.35 / 0.85): the character tag first, then the
# general ones above 0.35 in csv order (blue_first 0.8 and red_last 0.2: BGR; the corners white)
DEFAULT_TEXT = "ganyu_\\(genshin_impact\\), 1girl, long_hair, :d, \\m/, white_corner, blue_first, bottom_pad"
