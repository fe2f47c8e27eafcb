"""A1111's selectable scripts through its API with the real `webuiapi` client, on a tiny model: the X/Y/Z
plot's cells are the same pixels as the single generations they stand for, its grid is labelled, bad
axis values are refused before any work, the work budget counts every cell, progress counts over all
cells and an interrupt stops the grid; the prompt matrix, prompts from a textbox and SD upscale; styles
and wildcards."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import requests
import webuiapi
from PIL import Image
from server_live import LiveServer, models_dir, write_lora

from opensd.server.settings import Settings

TINY = {"sd_model_checkpoint": "tiny"}
XYZ = "X/Y/Z plot"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("xyz")
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nink,"{prompt}, ink drawing",blurry\n',
                                     encoding="utf-8")
    (root / "wildcards").mkdir()
    (root / "wildcards" / "colour.txt").write_text("red\ngreen\nblue\nblack\n", encoding="utf-8")
    write_lora(models_dir(root) / "Lora" / "style.safetensors")
    settings = Settings(models_dir=models_dir(root), outputs_dir=root / "outputs", work_budget=3.0,
                        styles_file=root / "styles.csv", wildcards_dir=root / "wildcards")
    with LiveServer(settings) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=2)


def base(**kw):
    return dict(dict(prompt="a cat", width=64, height=64, seed=5, override_settings=TINY), **kw)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def xyz_args(x_type, x_values, y_type=0, y_values="", y_dropdown=(), lone=True, legend=True, x_dropdown=()):
    # A1111 1.10: x_type, x_values, x_values_dropdown, (y...), (z...), draw_legend, include_lone_images,
    # include_sub_grids, no_fixed_seeds, vary_seeds_x/y/z, margin_size, csv_mode
    return [x_type, x_values, list(x_dropdown), y_type, y_values, list(y_dropdown), 0, "", [], legend, lone, False,
            False, False, False, False, 0, False]


def post(live, **body):
    return requests.post(f"{live.url}/sdapi/v1/txt2img", json=base(**body), timeout=120)


def test_xyz_grid_is_the_single_generations_pixel_for_pixel(api):
    # txt2img axis 4 is Steps and 9 is Sampler in A1111's list; the samplers come as its dropdown does
    r = api.txt2img(**base(script_name=XYZ, script_args=xyz_args(4, "1-3", 9, "", ["Euler", "DPM++ 2M"])))
    assert len(r.images) == 1 + 6 and r.info["index_of_first_image"] == 1
    grid = pixels(r.images[0])
    pad_left, pad_top = 64 * 3 // 4, grid.shape[0] - 2 * 64
    assert grid.shape[:2] == (pad_top + 2 * 64, pad_left + 3 * 64) and pad_top > 0
    for iy, sampler in enumerate(["Euler", "DPM++ 2M"]):
        for ix, steps in enumerate([1, 2, 3]):
            single = api.txt2img(**base(steps=steps, sampler_name=sampler))
            cell = 1 + ix + 3 * iy
            assert (pixels(r.images[cell]) == pixels(single.image)).all()
            x, y = pad_left + 64 * ix, pad_top + 64 * iy
            assert (grid[y:y + 64, x:x + 64] == pixels(single.image)).all()
            assert r.info["infotexts"][cell] == single.info["infotexts"][0]
            # the labels: dark text on white above each column and left of each row
            assert grid[:pad_top, x:x + 64].min() < 128 and grid[y:y + 64, :pad_left].min() < 128
    assert (grid[:pad_top, :pad_left] == 255).all()
    text = r.info["infotexts"][0]
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-3, Y Type: Sampler, Y Values: \"Euler,DPM++ 2M\"" in text
    assert r.info["all_seeds"] == [5] * 6


def cells_equal_singles(api, request, script_args, singles):
    """The plot's cells are the single generations `singles` (request changes, X fastest) make."""
    r = api.txt2img(**base(**request, script_name=XYZ, script_args=script_args))
    assert len(r.images) == 1 + len(singles)
    for k, changes in enumerate(singles):
        single = api.txt2img(**base(**dict(request, **changes))).image
        assert (pixels(r.images[1 + k]) == pixels(single)).all(), changes
    return r


def test_checkpoint_and_size_axes(api):
    r = cells_equal_singles(api, {"steps": 1}, xyz_args(11, "", 42, "64x64, 96x64", x_dropdown=["tiny", "opensd-emoji"]),
                            [{"override_settings": {"sd_model_checkpoint": m}, "width": w}
                             for w in (64, 96) for m in ("tiny", "opensd-emoji")])
    assert r.images[1].size == (64, 64) and r.images[3].size == (96, 64)
    assert r.images[0].width == 96 * 3 // 4 + 2 * 96  # cells as wide as the widest


def test_hires_axes(api):
    hires = {"steps": 1, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent"}
    cells_equal_singles(api, hires, xyz_args("Hires steps", "1, 2", "Denoising", "0.3, 0.6"),
                        [{"hr_second_pass_steps": n, "denoising_strength": d} for d in (0.3, 0.6) for n in (1, 2)])
    cells_equal_singles(api, hires, xyz_args("Hires upscaler", "Latent (nearest), Lanczos"),
                        [{"hr_upscaler": u} for u in ("Latent (nearest)", "Lanczos")])


def test_styles_axis(api, live):
    cells_equal_singles(api, {"steps": 1}, xyz_args("Styles", "ink"), [{"styles": ["ink"]}])
    r = post(live, steps=1, script_name=XYZ, script_args=xyz_args("Styles", "ink, nope"))
    assert r.status_code == 422 and "X values: Styles: unknown style 'nope'" in r.json()["detail"]


def test_lora_weight_through_prompt_sr(api):
    r = cells_equal_singles(api, {"steps": 1, "prompt": "a cat <lora:style:0.0>"}, xyz_args(7, "0.0, 0.8"),
                            [{"prompt": f"a cat <lora:style:{w}>"} for w in ("0.0", "0.8")])
    assert (pixels(r.images[1]) != pixels(r.images[2])).any()
    assert "Lora hashes: " in r.info["infotexts"][2]


def test_z_axis_and_sub_grids(api):
    args = xyz_args(4, "1-2", lone=False)
    args[6:9] = ["CFG Scale", "5, 9", []]
    args[11] = True  # include_sub_grids
    r = api.txt2img(**base(script_name=XYZ, script_args=args))
    main, first, second = (pixels(im) for im in r.images)
    assert first.shape == second.shape and first.shape[1] == 2 * 64 and first.shape[0] > 64  # X labels, no Y
    assert main.shape[1] == 2 * first.shape[1] and main.shape[0] > first.shape[0]  # Z labels above
    top = main.shape[0] - first.shape[0]
    assert (main[top:, :first.shape[1]] == first).all() and (main[top:, first.shape[1]:] == second).all()
    single = api.txt2img(**base(steps=2, cfg_scale=9)).image
    assert (second[-64:, 64:] == pixels(single)).all()
    assert "Z Type: CFG Scale" in r.info["infotexts"][0] and "Z Type" not in r.info["infotexts"][2]
    assert "X Type: Steps" in r.info["infotexts"][2] and "CFG scale: 9" in r.info["infotexts"][2]
    assert r.info["index_of_first_image"] == 3


def test_xyz_without_legend_or_cells(api):
    r = api.txt2img(**base(steps=1, script_name=XYZ, script_args=xyz_args("CFG Scale", "3, 7.5", lone=False,
                                                                            legend=False)))
    assert len(r.images) == 1 and r.images[0].size == (128, 64)
    single = api.txt2img(**base(steps=1, cfg_scale=7.5)).image
    assert (pixels(r.images[0])[:, 64:] == pixels(single)).all()


@pytest.mark.parametrize("args,detail", [
    (xyz_args(4, "1", 9, "", ["Euler", "Nope"]), "Y values: sampler: unknown sampler 'Nope'"),
    (xyz_args(11, "tiny, missing"), "X values: Checkpoint name: no model named 'missing'"),
    (xyz_args(999, "1"), "X type: 999 is not an axis index (0..42)"),
    (xyz_args("FP8 mode", "Disable"), "X type: the 'FP8 mode' axis is not available"),
    (xyz_args(7, "dog, fox"), "X values: Prompt S/R did not find 'dog' in the prompt"),
    (xyz_args(4, "1-x"), "X values: '1-x' is not a whole number or a range"),
    (xyz_args(4, "0, 1"), "X/Y/Z cell Steps: 0 / - / -: steps"),
    (xyz_args(42, "64x64, big"), "X values: Size: 'big' is not WIDTHxHEIGHT"),
    (xyz_args(4, "1") + [True], "script_args: the X/Y/Z plot takes 2 to 18 arguments"),
    (xyz_args(4, "1")[:9] + ["yes"], "script_args: draw_legend: expected true or false, got 'yes'"),
])
def test_bad_axes_and_values_are_refused_naming_them(live, args, detail):
    r = post(live, steps=1, script_name=XYZ, script_args=args)
    assert r.status_code == 422 and detail in r.json()["detail"], r.text


def test_the_work_budget_counts_every_cell(live):
    r = post(live, steps=20, script_name=XYZ, script_args=xyz_args(1, "1-100"))  # 100 cells of 64x64x20
    assert r.status_code == 422 and "100 generations of the X/Y/Z plot" in r.json()["detail"]
    assert "work: this request asks for 8 megapixel-steps" in r.json()["detail"]


def test_progress_counts_all_cells_and_interrupt_stops_the_grid(live):
    out = {}

    def run():
        out["r"] = post(live, steps=20, script_name=XYZ, script_args=xyz_args(1, "1-20"))

    t = threading.Thread(target=run)
    t.start()
    seen, deadline = None, time.time() + 60
    while time.time() < deadline:
        state = requests.get(f"{live.url}/sdapi/v1/progress", timeout=10).json()["state"]
        if state["sampling_step"] > 40:  # past the second cell
            seen = state
            break
        time.sleep(0.01)
    requests.post(f"{live.url}/sdapi/v1/interrupt", timeout=10)
    t.join(60)
    assert seen is not None and seen["sampling_steps"] == 20 * 20  # one count over every cell
    info = json.loads(out["r"].json()["info"])
    assert info["interrupted"] is True
    made = len(info["all_seeds"])
    assert 2 <= made < 20 and len(out["r"].json()["images"]) == 1 + made
    assert info["all_seeds"] == list(range(1, made + 1))


def test_prompt_matrix(api, live):
    bad = post(live, prompt="a|b", script_name="Prompt matrix", script_args=[False, False, "both"])
    assert bad.status_code == 422 and "prompt_type: 'both' is not 'positive' or 'negative'" in bad.json()["detail"]
    r = api.txt2img(**base(prompt="a cat|red|big", steps=1, script_name="Prompt matrix",
                           script_args=[False, False, "positive", "comma", 0]))
    assert len(r.images) == 5
    grid = pixels(r.images[0])
    assert grid.shape[1] == 48 + 2 * 64 and grid.shape[0] > 2 * 64
    for k, prompt in enumerate(["a cat", "a cat, red", "a cat, big", "a cat, red, big"]):
        single = api.txt2img(**base(prompt=prompt, steps=1))
        assert (pixels(r.images[1 + k]) == pixels(single.image)).all()
        assert r.info["all_prompts"][k] == prompt


def test_prompts_from_textbox(api, live):
    text = '--prompt "a red fox" --steps 1 --seed 9 --sampler_name "DPM++ 2M"\n\n  plain words  \n'
    r = api.txt2img(**base(prompt="photo", steps=2, script_name="Prompts from file or textbox",
                           script_args=[False, False, "end", text]))
    assert r.info["all_prompts"] == ["photo a red fox", "photo plain words"]
    first = api.txt2img(**base(prompt="photo a red fox", steps=1, seed=9, sampler_name="DPM++ 2M")).image
    second = api.txt2img(**base(prompt="photo plain words", steps=2)).image
    assert (pixels(r.images[0]) == pixels(first)).all() and (pixels(r.images[1]) == pixels(second)).all()
    bad = post(live, script_name="Prompts from file or textbox", script_args=[False, False, "end", "x --stepz 3"])
    assert bad.status_code == 422 and "prompt_txt line 1: 'x' must start with" in bad.json()["detail"]
    bad = post(live, script_name="Prompts from file or textbox", script_args=[False, False, "end", "--foo 3"])
    assert bad.status_code == 422 and "prompt_txt line 1: unknown option --foo" in bad.json()["detail"]


def test_sd_upscale_repaints_overlapping_tiles(api):
    init = api.txt2img(**base(steps=1)).image
    common = dict(width=64, height=64, denoising_strength=0.5, steps=2, seed=7, override_settings=TINY, prompt="a cat")
    r = api.img2img(images=[init], script_name="SD upscale", script_args=[None, 16, 1, 2], **common)
    assert len(r.images) == 1 and r.image.size == (128, 128)
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in r.info["infotexts"][0]
    big = init.resize((128, 128), Image.LANCZOS)
    # tiles start at 0, 32, 64 each way; tile t has seed 7 + t; away from the overlaps only one tile shows
    first = api.img2img(images=[big.crop((0, 0, 64, 64))], **common).image
    assert (pixels(r.image)[:32, :32] == pixels(first)[:32, :32]).all()
    last = api.img2img(images=[big.crop((64, 64, 128, 128))], **dict(common, seed=7 + 8)).image
    assert (pixels(r.image)[80:, 80:] == pixels(last)[16:, 16:]).all()
    # n_iter 2: upscale n starts at seed 7 + n, and each image is recorded by its own first tile
    two = api.img2img(images=[init], script_name="SD upscale", script_args=[None, 16, 1, 2], n_iter=2, **common)
    assert len(two.images) == 2 and two.info["all_seeds"] == [7, 8]
    assert ["Seed: 7," in t for t in two.info["infotexts"]] == [True, False] and "Seed: 8," in two.info["infotexts"][1]
    assert (pixels(two.images[0]) == pixels(r.image)).all() and (pixels(two.images[1]) != pixels(r.image)).any()


def test_styles_are_listed_and_applied(api, live):
    assert api.get_prompt_styles() == [{"name": "ink", "prompt": "{prompt}, ink drawing", "negative_prompt": "blurry"}]
    styled = api.txt2img(**base(steps=1, styles=["ink"]))
    assert styled.info["infotexts"][0].startswith("a cat, ink drawing\nNegative prompt: blurry\n")
    plain = api.txt2img(**base(steps=1, prompt="a cat, ink drawing", negative_prompt="blurry"))
    assert (pixels(styled.image) == pixels(plain.image)).all() and "styles" not in styled.info["unsupported_fields"]
    r = post(live, styles=["ink", "nope"])
    assert r.status_code == 422 and r.json()["detail"].startswith("styles: unknown style 'nope'; known styles: 'ink'")


def test_a_damaged_styles_file_fails_only_requests_naming_styles(api, live):
    path = live.settings.styles_file
    good = path.read_bytes()
    path.write_bytes(b"name,prompt\n\xff\xfe broken\n")
    try:
        assert post(live, steps=1).status_code == 200
        r = post(live, steps=1, styles=["ink"])
        assert r.status_code == 422 and r.json()["detail"].startswith(f"styles file: cannot read {path}")
    finally:
        path.write_bytes(good)


def test_wildcards_choose_per_image_from_the_seed_and_reproduce(api, live):
    request = base(prompt="a __colour__ {cat|dog}", steps=1, seed=11, batch_size=3)
    r = api.txt2img(**request)
    assert r.info["all_prompts"] == api.txt2img(**request).info["all_prompts"]  # same seeds, same choices
    for k, prompt in enumerate(r.info["all_prompts"]):
        assert prompt.split()[1] in ("red", "green", "blue", "black") and prompt.split()[2] in ("cat", "dog")
        assert ", Template: a __colour__ {cat|dog}, " in r.info["infotexts"][k]
        alone = api.txt2img(**base(prompt=prompt, steps=1, seed=11 + k)).image
        assert (pixels(r.images[k]) == pixels(alone)).all()
    many = api.txt2img(**base(prompt="__colour__", steps=1, seed=1, batch_size=8)).info["all_prompts"]
    assert len(set(many)) > 1
    r = post(live, prompt="a __../styles__ cat")
    assert r.status_code == 422 and "'../styles' is not a name inside the folder" in r.json()["detail"]
