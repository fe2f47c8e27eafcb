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
    assert "Size: 64x64, Model: tiny" in text
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
