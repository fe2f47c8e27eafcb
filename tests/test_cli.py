"""The `opensd` command as a user runs it: a real subprocess, real files."""
import subprocess
import sys

import pytest
from PIL import Image

from opensd.library.synthetic import write_random_checkpoint


def run(*args):
    return subprocess.run([sys.executable, "-m", "opensd.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


def test_generate_writes_pngs_with_parameters(ckpt, tmp_path):
    out = tmp_path / "sub" / "apple.png"
    r = run("generate", "a red apple", "--model", str(ckpt), "--negative", "blurry", "--steps", "2",
            "--seed", "7", "--batch", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    paths = r.stdout.split()
    assert paths == [str(tmp_path / "sub" / "apple-0.png"), str(tmp_path / "sub" / "apple-1.png")]
    image = Image.open(paths[1])
    assert image.size == (64, 64)
    text = image.text["parameters"]
    assert text.startswith("a red apple\nNegative prompt: blurry\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 8,")
    assert "Size: 64x64, Model hash: " in text and ", Model: tiny," in text
    assert not list(out.parent.glob(".tmp-*"))  # atomic writes leave no temp files


@pytest.mark.parametrize("args,words", [
    (["--width", "65"], "width: 65 is not a multiple of 8"),
    (["--steps", "0"], "steps"),
    (["--cfg", "nan"], "cfg"),
    (["--model", "/nonexistent/model.safetensors"], "does not exist"),
])
def test_bad_arguments_are_one_line_and_exit_2(ckpt, tmp_path, args, words):
    base = ["generate", "x", "--model", str(ckpt), "-o", str(tmp_path / "o.png")]
    r = run(*base, *args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and lines[0].startswith("opensd: error:"), r.stderr
    assert not (tmp_path / "o.png").exists()


def test_argparse_errors_exit_2(ckpt):
    r = run("generate", "x", "--model", str(ckpt), "--steps", "many")
    assert r.returncode == 2 and "not an integer" in r.stderr


def test_info_and_from_reproduce_an_image(ckpt, tmp_path):
    first = tmp_path / "a.png"
    assert run("generate", "a red apple", "--model", str(ckpt), "--steps", "2", "--seed", "11",
               "--negative", "dark, blurry", "-o", str(first)).returncode == 0
    info = run("info", str(first))
    assert info.returncode == 0 and info.stdout.startswith("a red apple\nNegative prompt: dark, blurry\n")
    again = tmp_path / "b.png"
    r = run("generate", "--from", str(first), "--model", str(ckpt), "-o", str(again))
    assert r.returncode == 0, r.stderr
    import numpy as np
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))


def test_img2img_with_mask_from_the_command_line(ckpt, tmp_path):
    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    m = Image.new("L", (64, 64), 0)
    m.paste(255, (16, 16, 48, 48))
    m.save(mask)
    out = tmp_path / "out.webp"
    r = run("generate", "x", "--model", str(ckpt), "--steps", "2", "--init-image", str(init), "--mask", str(mask),
            "--mask-blur", "0", "--strength", "0.6", "-o", str(out))
    assert r.returncode == 0, r.stderr
    result = Image.open(out)
    assert result.size == (64, 64)
    assert "Denoising strength: 0.6" in run("info", str(out)).stdout


def test_info_on_an_image_without_parameters(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    r = run("info", str(plain))
    assert r.returncode == 1 and "no generation parameters" in r.stderr


def test_sampler_names_round_trip_through_infotext(ckpt, tmp_path):
    first = tmp_path / "a.png"
    r = run("generate", "x", "--model", str(ckpt), "--steps", "3", "--seed", "4", "--sampler", "dpmpp_2m_sde",
            "--scheduler", "karras", "-o", str(first))
    assert r.returncode == 0, r.stderr
    assert "Sampler: DPM++ 2M SDE, Schedule type: Karras," in run("info", str(first)).stdout
    again = tmp_path / "b.png"
    assert run("generate", "--from", str(first), "--model", str(ckpt), "-o", str(again)).returncode == 0
    import numpy as np
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
