"""`opensd generate` with styles, wildcards and A1111's scripts (--xyz, --prompt-matrix, --prompts-file,
--sd-upscale), on a tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from opensd.cli import main
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-scripts")
    write_random_checkpoint(root / "m.safetensors", dtype=torch.float32)
    (root / "styles.csv").write_text('name,prompt,negative_prompt\nink,"{prompt}, (ink:1.2)",blurry\n'
                                     'warm,warm light,\n', encoding="utf-8")
    (root / "wildcards" / "sub").mkdir(parents=True)
    (root / "wildcards" / "sub" / "colour.txt").write_text("red\ngreen\nblue\nblack\nwhite\n", encoding="utf-8")
    (root / "secret.txt").write_text("x\n", encoding="utf-8")
    return root


def gen(root, *args) -> int:
    return main(["generate", "-m", str(root / "m.safetensors"), "--styles-file", str(root / "styles.csv"),
                 "--wildcards-dir", str(root / "wildcards"), *args])


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_xyz_cells_are_the_single_generations(root, tmp_path):
    assert gen(root, "a cat", "--seed", "4", "--xyz", "steps:1-2", "--xyz", "sampler:Euler,DPM++ 2M",
               "-o", str(tmp_path / "g.png")) == 0
    grid = Image.open(tmp_path / "g-0.png")
    assert grid.size[0] == 48 + 2 * 64 and grid.size[1] > 2 * 64
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: 1-2, Y Type: Sampler" in read_infotext(tmp_path / "g-0.png")
    for k, (steps, sampler) in enumerate([(1, "Euler"), (2, "Euler"), (1, "DPM++ 2M"), (2, "DPM++ 2M")]):
        assert gen(root, "a cat", "--seed", "4", "--steps", str(steps), "--sampler", sampler,
                   "-o", str(tmp_path / f"single{k}.png")) == 0
        assert (pixels(tmp_path / f"g-{k + 1}.png") == pixels(tmp_path / f"single{k}.png")).all()


def test_a_styled_prompt_reproduces_with_from(root, tmp_path):
    assert gen(root, "a cat", "--style", "ink", "--style", "warm", "--steps", "2", "--seed", "3",
               "-o", str(tmp_path / "s.png")) == 0
    prompt, negative, _ = parse_infotext(read_infotext(tmp_path / "s.png"))
    assert (prompt, negative) == ("a cat, (ink:1.2), warm light", "blurry")
    assert main(["generate", "--from", str(tmp_path / "s.png"), "-m", str(root / "m.safetensors"),
                 "-o", str(tmp_path / "again.png")]) == 0
    assert (pixels(tmp_path / "s.png") == pixels(tmp_path / "again.png")).all()


def test_wildcard_choices_follow_the_seed_and_reproduce(root, tmp_path, capsys):
    assert gen(root, "a __sub/colour__ {cat|dog}", "--steps", "1", "--seed", "20", "--batch", "4",
               "-o", str(tmp_path / "w.png")) == 0
    prompts = [parse_infotext(read_infotext(tmp_path / f"w-{k}.png"))[0] for k in range(4)]
    assert len(set(prompts)) > 1
    for k, prompt in enumerate(prompts):
        assert ", Template: a __sub/colour__ {cat|dog}, " in read_infotext(tmp_path / f"w-{k}.png")
        assert gen(root, "a __sub/colour__ {cat|dog}", "--steps", "1", "--seed", str(20 + k),
                   "-o", str(tmp_path / f"one{k}.png")) == 0  # the same seed alone: the same choice
        assert parse_infotext(read_infotext(tmp_path / f"one{k}.png"))[0] == prompt
        assert main(["generate", "--from", str(tmp_path / f"w-{k}.png"), "-m", str(root / "m.safetensors"),
                     "-o", str(tmp_path / f"from{k}.png")]) == 0
        assert (pixels(tmp_path / f"w-{k}.png") == pixels(tmp_path / f"from{k}.png")).all()
    assert "differs" not in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["a __../secret__"], "prompt: wildcard __../secret__: '../secret' is not a name inside the folder"),
    (["x", "--style", "nope"], "style: unknown style 'nope'; known styles: 'ink', 'warm'"),
    (["x", "--xyz", "steps:1", "--prompt-matrix"], "prompt-matrix: one script at a time (also given: --xyz)"),
    (["x", "--xyz", "stepz:1"], "X type: unknown axis 'stepz'"),
    (["x", "--xyz", "cfg scale:1-x"], "X values: '1-x' is not a number or a range"),
    (["x", "--sd-upscale", "2"], "sd-upscale: needs --init-image"),
])
def test_mistakes_are_one_line(root, tmp_path, capsys, args, message):
    assert gen(root, *args, "-o", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"opensd: error: {message}"] or (len(err) == 1 and message in err[0]), err
    assert not (tmp_path / "x.png").exists()


def test_prompt_matrix_prompts_file_and_sd_upscale(root, tmp_path):
    assert gen(root, "a cat|red|big", "--steps", "1", "--seed", "2", "--prompt-matrix", "-o",
               str(tmp_path / "m.png")) == 0
    assert [parse_infotext(read_infotext(tmp_path / f"m-{k}.png"))[0] for k in range(1, 5)] == [
        "a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    lines = tmp_path / "lines.txt"
    lines.write_text('--prompt "a fox" --steps 1 --seed 8\nan owl\n', encoding="utf-8")
    assert gen(root, "", "--steps", "1", "--seed", "5", "--prompts-file", str(lines), "-o",
               str(tmp_path / "p.png")) == 0
    assert [parse_infotext(read_infotext(tmp_path / f"p-{k}.png"))[0] for k in range(2)] == ["a fox", "an owl"]
    assert gen(root, "an owl", "--steps", "1", "--seed", "5", "-o", str(tmp_path / "owl.png")) == 0
    assert (pixels(tmp_path / "p-1.png") == pixels(tmp_path / "owl.png")).all()
    assert gen(root, "a cat", "--steps", "2", "--seed", "5", "--init-image", str(tmp_path / "owl.png"),
               "--strength", "0.5", "--sd-upscale", "2", "--sd-upscale-overlap", "16", "-o",
               str(tmp_path / "up.png")) == 0
    assert Image.open(tmp_path / "up.png").size == (128, 128)
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in read_infotext(tmp_path / "up.png")
