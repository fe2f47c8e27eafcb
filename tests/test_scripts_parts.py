"""The pieces of A1111's scripts, without a model: value lists, the axis table, cell order, grids, tiles."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opensd.errors import InvalidArgument
from opensd.pipeline.grid_images import Label, annotate, image_grid, prompt_matrix_labels
from opensd.pipeline.tiles import combine, split
from opensd.scripts import prompt_matrix, prompts_file, xyz
from opensd.scripts.spec import Spec
from opensd.scripts.value_lists import float_values, int_values, split_values
from opensd.scripts.xyz_axes import axis_types, find_axis


def test_value_lists_as_a1111_reads_them():
    assert split_values(' a, b ,"c, with a comma" ,d') == ["a", "b", "c, with a comma", "d"]
    assert int_values(["1-5"]) == [1, 2, 3, 4, 5]
    assert int_values(["1-10 (+2)"]) == [1, 3, 5, 7, 9]
    assert int_values(["10-1 (-3)"]) == [10, 7, 4]
    assert int_values(["1-10 [5]"]) == [1, 3, 5, 7, 10]
    assert int_values(["-1", "7", "3-4"]) == [-1, 7, 3, 4]
    assert float_values(["0.5-1.5 [3]"]) == [0.5, 1.0, 1.5]
    assert float_values(["0-1 (+0.25)"]) == [0, 0.25, 0.5, 0.75, 1.0]
    assert float_values(["7", "7.5", ".5"]) == [7.0, 7.5, 0.5]
    for bad, values in (("1-100000", int_values), ("0-1 (+0)", float_values), ("nan", float_values),
                        ("1.5", int_values), ("5-1 (+1)", float_values)):
        with pytest.raises(InvalidArgument):
            values([bad])


def test_the_axis_list_has_a1111s_indices():
    txt = [a.label for a in axis_types(img2img=False)]
    img = [a.label for a in axis_types(img2img=True)]
    expected = {0: "Nothing", 1: "Seed", 4: "Steps", 5: "Hires steps", 6: "CFG Scale", 7: "Prompt S/R",
                9: "Sampler", 11: "Checkpoint name", 17: "Schedule type", 25: "Clip skip", 26: "Denoising",
                29: "Hires upscaler", 30: "VAE", 31: "Styles", 42: "Size"}
    assert {k: txt[k] for k in expected} == expected
    assert len(txt) == 43 and len(img) == 42
    assert (img[6], img[9], img[10], img[25], img[28], img[30]) == (
        "Image CFG Scale", "Sampler", "Checkpoint name", "Denoising", "Cond. Image Mask Weight", "Styles")
    assert find_axis("steps", False, "X type").label == "Steps" and find_axis("4", False, "X type").label == "Steps"
    assert find_axis(6, True, "X type").label == "Image CFG Scale"  # instruct-pix2pix models' (img2img)
    with pytest.raises(InvalidArgument, match="X type: the 'FP8 mode' axis is not available"):
        find_axis("FP8 mode", True, "X type")
    with pytest.raises(InvalidArgument, match="Y type: 43 is not an axis index"):
        find_axis(43, False, "Y type")


def base() -> Spec:
    return Spec("a cat, red", "", {"steps": 2, "width": 64, "height": 64, "batch_size": 1}, seed=-1)


class NoModels:
    img2img = False

    def checkpoint(self, name, where="Checkpoint name"):
        return f"/models/{name}"


def test_cells_order_seeds_and_costly_axes_outermost():
    face = NoModels()
    steps = xyz.read_axis(4, "1-3", None, False, base(), False, "X")
    ckpt = xyz.read_axis("Checkpoint name", "", ["a", "b"], False, base(), False, "Y")
    cells = xyz.cells(base(), (steps, ckpt, xyz.NOTHING), xyz.GridOptions(), face)
    assert [(c.kwargs["steps"], c.model) for c in cells] == [
        (1, "/models/a"), (2, "/models/a"), (3, "/models/a"), (1, "/models/b"), (2, "/models/b"), (3, "/models/b")]
    assert len({c.seed for c in cells}) == 1 and cells[0].seed != -1  # -1 is fixed once for the grid
    swapped = xyz.processing_order((ckpt, steps, xyz.NOTHING))  # checkpoints on X: X outermost
    assert swapped == [0, 2, 4, 1, 3, 5]
    kept = xyz.cells(base(), (steps, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(no_fixed_seeds=True,
                                                                                 vary_seeds=(True, False, False)), face)
    assert [c.seed for c in kept] == [-1, -1, -1]
    varied = xyz.cells(base().but(seed=10), (steps, xyz.NOTHING, xyz.NOTHING),
                       xyz.GridOptions(vary_seeds=(True, False, False)), face)
    assert [c.seed for c in varied] == [10, 11, 12]
    sr = xyz.read_axis("Prompt S/R", "red, blue, green", None, False, base(), False, "X")
    assert [c.prompt for c in xyz.cells(base(), (sr, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(), face)] == [
        "a cat, red", "a cat, blue", "a cat, green"]
    order = xyz.read_axis("Prompt order", "cat, red", None, False, base(), False, "X")
    assert [c.prompt for c in xyz.cells(base(), (order, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(), face)] == [
        "a cat, red", "a red, cat"]


@pytest.mark.parametrize("axis,value,changed", [
    ("Var. seed", "9", lambda s: s.subseed == 9),
    ("Var. strength", "0.25", lambda s: s.kwargs["subseed_strength"] == 0.25),
    ("CFG Scale", "4.5", lambda s: s.kwargs["cfg"] == 4.5),
    ("Sampler", "DPM++ 2M", lambda s: (s.kwargs["sampler"], s.kwargs["scheduler"]) == ("dpmpp_2m", "karras")),
    ("Schedule type", "Exponential", lambda s: s.kwargs["scheduler"] == "exponential" and s.schedule == "exponential"),
    ("Sigma Churn", "0.5", lambda s: s.kwargs["sampler_options"] == {"s_churn": 0.5}),
    ("Eta", "0.3", lambda s: s.kwargs["sampler_options"] == {"eta": 0.3}),
    ("Clip skip", "2", lambda s: s.kwargs["clip_skip"] == 2),
    ("Clip skip", "1", lambda s: s.kwargs["clip_skip"] is None),
    ("UniPC Order", "5", lambda s: s.kwargs["sampler_options"] == {"order": 1}),  # at most steps - 1
    ("RNG source", "GPU", lambda s: s.kwargs["device_noise"] is True),
    ("Size", "96x32", lambda s: (s.kwargs["width"], s.kwargs["height"]) == (96, 32)),
    ("Face restore", "false", lambda s: True),
    ("Refiner checkpoint", "sub/ref.safetensors", lambda s: s.refiner == "/models/sub/ref.safetensors"),
    ("Refiner checkpoint", "None", lambda s: s.refiner == "None" and s.model is None),
    ("Refiner switch at", "0.6", lambda s: s.refiner_switch == 0.6),
])
def test_what_each_axis_changes(axis, value, changed):
    kind = xyz.read_axis(axis, value, None, True, base(), False, "X")
    cell = xyz.cells(base(), (kind, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(), NoModels())[0]
    assert changed(cell)


def test_image_cfg_axis_sets_the_image_cfg_scale_in_img2img():
    kind = xyz.read_axis("Image CFG Scale", "1.25, 2", None, True, base(), True, "X")
    cells = xyz.cells(base(), (kind, xyz.NOTHING, xyz.NOTHING), xyz.GridOptions(), NoModels())
    assert [c.kwargs["image_cfg_scale"] for c in cells] == [1.25, 2.0]


def test_refiner_axis_labels_as_a1111_formats_them():
    assert find_axis("Refiner checkpoint", False, "X").label_of("/models/sub/ref.safetensors") == "ref.safetensors"
    assert find_axis("Refiner switch at", True, "X").label_of(0.5) == "Refiner switch at: 0.5"


def test_a1111_16_layout_of_script_args():
    axes, options = xyz.from_script_args([4, "1,2", [], 0, "", [], 0, "", [], False, True, True, True, 8, False],
                                         base(), False)
    assert axes[0].values == [1, 2] and options == xyz.GridOptions(False, True, True, True, (False,) * 3, 8)


def test_grid_layout_and_labels():
    cells = [Image.new("RGB", (64, 48), (k * 40, 0, 0)) for k in range(6)]
    grid = image_grid(cells, rows=2)
    assert grid.size == (192, 96) and grid.getpixel((130, 60)) == (200, 0, 0)
    labelled = annotate(grid, 64, 48, [[Label("one")], [Label("two")], [Label("a longer label")]],
                        [[Label("row")], [Label("row two")]], margin=4)
    pad_left = 64 * 3 // 4
    pad_top = labelled.height - 96 - 4
    assert labelled.width == pad_left + 192 + 8 and pad_top > 0
    assert labelled.getpixel((pad_left + 68 + 2, pad_top + 2)) == (40, 0, 0)
    across, down = prompt_matrix_labels(["red", "big", "old"])
    assert [[(lb.text, lb.active) for lb in col] for col in across] == [
        [("red", False), ("big", False)], [("red", True), ("big", False)],
        [("red", False), ("big", True)], [("red", True), ("big", True)]]
    assert [[(lb.text, lb.active) for lb in row] for row in down] == [[("old", False)], [("old", True)]]
    assert prompt_matrix.prompts(["a cat", " red,", "big"], prompt_matrix.MatrixOptions(put_at_start=True)) == [
        "a cat", "red, a cat", "big, a cat", "red, big, a cat"]


def test_tiles_as_a1111_places_and_blends_them():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (100, 128, 3), dtype=np.uint8))
    tiles = split(image, 64, 64, 16)
    assert [y for y, _ in tiles.rows] == [0, 36] and [x for x, _ in tiles.rows[0][1]] == [0, 32, 64]
    assert (np.asarray(combine(tiles)) == np.asarray(image)).all()  # unchanged tiles: the same image
    black = tiles.replaced([Image.new("RGB", (64, 64)) if k == 1 else t for k, t in enumerate(tiles.images())])
    out = np.asarray(combine(black)).astype(int)
    assert (out[:30, 48:64] == 0).all()            # tile 1 alone there
    ramp = out[:30, 32:48].mean(axis=(0, 2))       # its left overlap fades from tile 0 to tile 1
    assert ramp[0] > ramp[-1] * 4


def test_prompts_file_lines():
    assert prompts_file.parse_line("a plain prompt", "l") == {"prompt": "a plain prompt"}
    assert prompts_file.parse_line('--prompt a red "fox, sitting" --steps 3 --tiling true --cfg_scale 4.5', "l") == {
        "prompt": "a red fox, sitting", "steps": 3, "tiling": True, "cfg_scale": 4.5}
    with pytest.raises(InvalidArgument, match="l: --steps 'x' is not a valid value"):
        prompts_file.parse_line("--steps x", "l")
    with pytest.raises(InvalidArgument, match="l: --seed needs a value"):
        prompts_file.parse_line("--prompt a --seed", "l")
