"""WD14 taggers (tagging/wd14.py, tag_text.py): tiny ONNX files with the real input and output layout
(tests/wd14_files.py) whose scores are constants or pixels of what the model is fed, so the
preprocessing (white padding, centring, BGR, the size from the model) and the text each face answers
with (thresholds, order, underscores, escaping) are checked against values worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from wd14_files import DEFAULT_TEXT, TAGS, picture, write_tagger

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from opensd.errors import InvalidArgument  # noqa: E402
from opensd.library.models_dir import ModelFolders  # noqa: E402
from opensd.tagging import wd14  # noqa: E402
from opensd.tagging.tag_text import Scores, a1111_caption, comfy_text, tagger_caption  # noqa: E402

WHITE = [255.0, 255.0, 255.0]


@pytest.fixture()
def folders(tmp_path):
    root = tmp_path / "models"
    write_tagger(root / "wd14_tagger", "wd-v1-4-moat-tagger-v2")
    write_tagger(root / "wd14_tagger", "wd-vit-tagger-v3", size=6, layout="hf")
    return ModelFolders(root, include_builtin=False)


def test_preprocess_pads_white_centres_and_flips_to_bgr():
    x = wd14.preprocess(picture(), 4)
    assert x.shape == (1, 4, 4, 3) and x.dtype == np.float32
    assert (x[0, 0] == 255).all() and (x[0, 3] == 255).all()  # rows 0 and 3: the padding
    assert x[0, 1].tolist() == [[204.0, 102.0, 51.0]] * 4      # the picture's first row, B G R
    assert x[0, 2].tolist() == [[0.0, 0.0, 0.0]] * 4
    # a 1 x 3 picture padded to 3 x 3: the odd pixel goes after it; no resize at the model's size
    tall = Image.new("RGB", (2, 3), (10, 20, 30))
    x = wd14.preprocess(tall, 3)
    assert x[0, :, 0].tolist() == [[30.0, 20.0, 10.0]] * 3 and x[0, :, 2].tolist() == [WHITE] * 3


def test_preprocess_flattens_transparency_on_white_and_resizes_to_the_model():
    rgba = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    rgba.putpixel((1, 1), (0, 0, 0, 255))
    rgba.putpixel((0, 1), (100, 0, 0, 51))  # 20 % red over white: (255 - 0.2 * 155, 204, 204)
    x = wd14.preprocess(rgba, 2)
    assert x[0, 0].tolist() == [WHITE, WHITE] and x[0, 1, 1].tolist() == [0.0, 0.0, 0.0]
    assert x[0, 1, 0].tolist() == [204.0, 204.0, 224.0]
    flat = wd14.preprocess(Image.new("RGB", (8, 8), (10, 20, 30)), 4)  # bicubic keeps a flat colour
    assert flat.shape == (1, 4, 4, 3) and (flat[0] == [30.0, 20.0, 10.0]).all()
    # a long strip is shrunk (to 16 x 2) before it is padded, not made a 20000 x 20000 square: white above
    # and below, the middle rows a blend of white and the strip's colour, in BGR
    strip = wd14.preprocess(Image.new("RGB", (20000, 2000), (10, 20, 30)), 4)
    assert strip[0, 0].tolist() == [WHITE] * 4 and strip[0, 3].tolist() == [WHITE] * 4
    middle = strip[0, 1:3].reshape(-1, 3)
    assert (middle < 255).all() and (middle[:, 0] > middle[:, 2]).all()


def test_the_model_sees_the_picture_as_worked_out(folders):
    scores = wd14.tag(folders, "wd-v1-4-moat-tagger-v2", picture())
    got = dict(zip(scores.names, scores.probs))
    assert got["white_corner"] == pytest.approx(1.0) and got["bottom_pad"] == pytest.approx(1.0)
    assert got["blue_first"] == pytest.approx(0.8) and got["red_last"] == pytest.approx(0.2)
    assert comfy_text(scores) == DEFAULT_TEXT
    # the v3 folder layout, a 6-pixel input read from the model: 4 x 2 becomes 6 x 3 at offset 1.5 -> bicubic,
    # but the top-left corner and the bottom-right one stay padding
    v3 = wd14.tag(folders, "wd-vit-tagger-v3.onnx", picture().resize((8, 4), Image.Resampling.NEAREST))
    assert dict(zip(v3.names, v3.probs))["white_corner"] == pytest.approx(1.0)


def _scores() -> Scores:
    probs = [0.8 if isinstance(v, tuple) and v[2] == 0 else 0.2 if isinstance(v, tuple) and v[2] == 2 else
             1.0 if isinstance(v, tuple) else v for _, _, v in TAGS]
    probs[TAGS.index(("white_corner", 0, (0, 0, 2)))] = 1.0
    return Scores(tuple(t[0] for t in TAGS), tuple(t[1] for t in TAGS), tuple(probs))


def test_comfy_text_thresholds_order_and_options():
    s = _scores()
    assert comfy_text(s) == DEFAULT_TEXT
    # strictly above: ":d" at 0.5 drops at threshold 0.5; hatsune_miku (0.75) comes in at 0.7, characters first
    assert comfy_text(s, threshold=0.5, character_threshold=0.7) == (
        "ganyu_\\(genshin_impact\\), hatsune_miku, 1girl, long_hair, \\m/, white_corner, blue_first, bottom_pad")
    assert comfy_text(s, replace_underscore=True, trailing_comma=True, exclude_tags="Long Hair, white corner") == (
        "ganyu \\(genshin impact\\), 1girl, :d, \\m/, blue first, bottom pad, ")
    assert comfy_text(s, threshold=1.0, character_threshold=1.0) == ""


def test_a1111_caption_reads_like_deepdanbooru():
    s = _scores()
    assert a1111_caption(s) == ("1girl, :d, \\\\m/, blue first, bottom pad, ganyu \\(genshin impact\\), "
                                "hatsune miku, long hair, white corner")  # no rating tags; sorted by name
    assert a1111_caption(s, threshold=0.8, sort_alpha=False, use_spaces=False, escape=False, ranks=True,
                         filter_tags="white corner") == (
        "(bottom_pad:1.000), (1girl:0.875), (ganyu_(genshin_impact):0.875), (blue_first:0.800)")


def test_tagger_caption_ratings_then_tags_by_score():
    got = tagger_caption(_scores(), threshold=0.7)
    assert list(got.items()) == [
        ("general", 0.5), ("sensitive", 0.25), ("questionable", 0.125), ("explicit", 0.0625),
        ("white_corner", 1.0), ("bottom_pad", 1.0), ("1girl", 0.875), ("ganyu_(genshin_impact)", 0.875),
        ("blue_first", 0.8), ("long_hair", 0.75), ("hatsune_miku", 0.75)]


def test_files_are_listed_and_names_stay_inside(folders, tmp_path):
    assert sorted(wd14.installed(folders)) == ["wd-v1-4-moat-tagger-v2", "wd-vit-tagger-v3"]
    for bad in ("../wd14_tagger/wd-vit-tagger-v3", "/etc/passwd", "a\x00b", 3):
        with pytest.raises(InvalidArgument):
            wd14.find(folders, bad)
    with pytest.raises(InvalidArgument, match=r"no model named 'wd-v1-4-vit-tagger-v2' \(installed: "
                                              r"wd-v1-4-moat-tagger-v2, wd-vit-tagger-v3\); put wd-v1-4-vit"):
        wd14.find(folders, "wd-v1-4-vit-tagger-v2")
    with pytest.raises(InvalidArgument, match="no model named 'x' .installed: none"):
        wd14.find(None, "x")
    (tmp_path / "models" / "wd14_tagger" / "wd-v1-4-moat-tagger-v2.csv").unlink()
    with pytest.raises(InvalidArgument, match="tag list is missing: put the model's selected_tags.csv beside "
                                              "wd-v1-4-moat-tagger-v2.onnx as wd-v1-4-moat-tagger-v2.csv"):
        wd14.find(folders, "wd-v1-4-moat-tagger-v2")


def test_a_csv_of_another_model_and_bad_inputs_are_refused(tmp_path):
    folder = tmp_path / "models" / "wd14_tagger"
    write_tagger(folder, "short", csv_rows=[(t, c) for t, c, _ in TAGS[:-1]])
    (folder / "notes.csv").write_text("a,b\n1,2\n")
    (folder / "notes.onnx").write_bytes(b"not a model")
    write_tagger(folder, "badcat", csv_rows=[(t, "x") for t, _, _ in TAGS])
    folders = ModelFolders(tmp_path / "models", include_builtin=False)
    with pytest.raises(InvalidArgument, match="short.onnx scores 15 tags but short.csv lists 14"):
        wd14.tag(folders, "short", picture())
    with pytest.raises(InvalidArgument, match="notes.csv is not a tag list: expected the columns"):
        wd14.tag(folders, "notes", picture())
    with pytest.raises(InvalidArgument, match="badcat.csv line 2: category 'x' is not a number"):
        wd14.tag(folders, "badcat", picture())
    with pytest.raises(InvalidArgument, match="expected an image, got bytes"):
        wd14.preprocess(b"\x89PNG", 4)


# --- ComfyUI's WD14Tagger|pysssss (workflows/nodes_tagger.py) ---

def _graph(**inputs):
    return {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
            "4": {"class_type": "WD14Tagger|pysssss", "inputs": {"image": ["3", 0], **inputs}}}


def test_the_comfyui_node_tags_each_picture(folders, tmp_path):
    from preprocessor_graphs import node_ctx

    from opensd.workflows import execute, object_info

    ctx = node_ctx(tmp_path / "models", tmp_path, picture())
    defaults = {"model": "wd-v1-4-moat-tagger-v2", "threshold": 0.35, "character_threshold": 0.85,
                "replace_underscore": False, "trailing_comma": False, "exclude_tags": ""}
    ui = execute(_graph(**defaults), ctx)
    # the inverted picture: (204, 153, 51) on top, so its R is high and B low; the padding stays white
    inverted = DEFAULT_TEXT.replace("blue_first", "red_last")
    assert ui["4"] == {"tags": [DEFAULT_TEXT, inverted]}
    ui = execute(_graph(**{**defaults, "model": "wd-vit-tagger-v3", "replace_underscore": True,
                           "exclude_tags": "1girl"}), ctx)
    assert ui["4"]["tags"][0].startswith("ganyu \\(genshin impact\\), long hair, :d")
    info = object_info(ctx, "WD14Tagger|pysssss")["WD14Tagger|pysssss"]
    assert info["input"]["required"]["model"] == [["wd-v1-4-moat-tagger-v2", "wd-vit-tagger-v3"]]
    assert list(info["input"]["required"]) == ["image", "model", "threshold", "character_threshold",
                                               "replace_underscore", "trailing_comma", "exclude_tags"]
    assert info["output"] == ["STRING"] and info["output_is_list"] == [True] and info["output_node"] is True
    with pytest.raises(Exception, match="no model named 'wd-v1-4-vit-tagger-v2'.*models/wd14_tagger/"):
        execute(_graph(**{**defaults, "model": "wd-v1-4-vit-tagger-v2"}), ctx)


def test_the_cli_prints_tags_per_picture(folders, tmp_path, capsys):
    from opensd.cli import main

    picture().save(tmp_path / "a.png")
    assert main(["tag", str(tmp_path / "a.png"), "--models-dir", str(tmp_path / "models")]) == 0
    # the first installed model; spaces for underscores by default
    assert capsys.readouterr().out == DEFAULT_TEXT.replace("_", " ") + "\n"
    args = ["tag", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--models-dir", str(tmp_path / "models"),
            "--model", "wd-v1-4-moat-tagger-v2", "--underscores", "--exclude", "1girl", "--threshold", "0.7"]
    assert main(args) == 0
    line = f"{tmp_path / 'a.png'}: ganyu_\\(genshin_impact\\), long_hair, white_corner, blue_first, bottom_pad\n"
    assert capsys.readouterr().out == line * 2
    assert main(["tag", str(tmp_path / "a.png"), "--models-dir", str(tmp_path / "models"), "--model", "nope"]) == 2
    assert "no model named 'nope'" in capsys.readouterr().err
