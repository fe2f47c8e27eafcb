"""Every user mistake on the command line ends in one clear line naming the flag, never a traceback:
bad files, folders given as files, unreadable images, bad numbers, a closed pipe, and the
`python -m opensd.training.*` entry points."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import opensd
from opensd.cli import main
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import save_image
from opensd.pipeline.params import Params


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    write_random_checkpoint(root / "m.safetensors", dtype=torch.float32)
    Image.new("RGB", (64, 64)).save(root / "plain.png")
    (root / "notimage.png").write_text("hello")
    (root / "garbage.safetensors").write_bytes(b"\0" * 100)
    (root / "adir").mkdir()
    (root / "emptydata").mkdir()
    save_image(Image.new("RGB", (64, 64)), root / "badparams.png", "x\nSteps: abc, Sampler: Euler, Seed: 1, Size: 8x8")
    return root


# (arguments, words the one error line must hold); paths are relative to the fixture folder
CASES = [
    ("generate x -m nothere.safetensors", "model: nothere.safetensors does not exist"),
    ("generate x -m adir", "adir"),
    ("generate x -m garbage.safetensors", "garbage.safetensors"),
    ("generate x -m m.safetensors --vae nothere.safetensors", "vae: nothere.safetensors does not exist"),
    ("generate x -m m.safetensors --vae adir", "adir"),
    ("generate x -m m.safetensors --embeddings-dir plain.png", "embeddings-dir: plain.png is not a folder"),
    ("generate x -m m.safetensors --loras-dir nothere", "loras-dir: nothere is not a folder"),
    ("generate x -m m.safetensors --controlnet-dir plain.png --control c,plain.png", "controlnet-dir"),
    ("generate x -m m.safetensors --lora nothere", "lora: nothere"),
    ("generate x -m m.safetensors --lora garbage.safetensors", "garbage.safetensors"),
    ("generate x_<lora:foo> -m m.safetensors", "--loras-dir"),
    ("generate x -m m.safetensors --init-image adir", "init-image: adir: not a readable image"),
    ("generate x -m m.safetensors --init-image notimage.png", "init-image: notimage.png"),
    ("generate x -m m.safetensors --init-image plain.png --mask notimage.png", "mask: notimage.png"),
    ("generate x -m m.safetensors --control m.safetensors,nothere.png", "control image: nothere.png does not exist"),
    ("generate x -m m.safetensors --control canny", "needs a model and an image"),
    ("generate x -m m.safetensors --control m.safetensors,plain.png,type=pencil", "unknown control type 'pencil'"),
    ("generate x -m m.safetensors --width 12", "width: 12 is not a multiple of 8"),
    ("generate x -m m.safetensors --clip-skip 13", "clip-skip: 13 is outside 1..12"),
    ("generate x -m m.safetensors --subseed-strength 5", "subseed-strength: 5.0 must be a number in 0..1"),
    ("generate x -m m.safetensors --batch 0", "batch: 0 is outside 1..64"),
    ("generate x -m m.safetensors --init-image plain.png --mask plain.png --inpaint-full-res --inpaint-padding -1",
     "inpaint-padding: -1 is outside 0..1024"),
    ("generate x -m m.safetensors --init-image plain.png --mask plain.png --mask-blur -1", "mask-blur: -1 is outside"),
    ("generate x -m m.safetensors --sampler bogus", "sampler"),
    ("generate x -m m.safetensors --hires --hires-scale 0", "hires-scale: 0.0 is outside 1..8"),
    ("generate x -m m.safetensors --threads 0", "threads"),
    ("generate --from nothere.png -m m.safetensors", "from: nothere.png does not exist"),
    ("generate --from adir -m m.safetensors", "from: adir is not a readable image"),
    ("generate --from plain.png -m m.safetensors", "carries no generation parameters"),
    ("generate --from badparams.png -m m.safetensors", "from: Steps: 'abc' is not a valid value"),
    ("generate x --steps many", "argument --steps: 'many' is not an integer"),
    ("generate x --outpaint 1,2,3", "is not LEFT,RIGHT,TOP,BOTTOM"),
    ("info nothere.png", "image: nothere.png does not exist"),
    ("info notimage.png", "image: notimage.png is not a readable image"),
    ("merge nothere.safetensors m.safetensors -o x.safetensors", "nothere.safetensors"),
    ("merge m.safetensors m.safetensors -m nan -o x.safetensors", "multiplier"),
    ("merge m.safetensors m.safetensors -o garbage.safetensors", "exists (--overwrite"),
    ("convert garbage.safetensors -o y.safetensors", "garbage.safetensors"),
    ("lora-merge m.safetensors --lora nothere.safetensors -o z.safetensors", "lora: nothere.safetensors"),
    ("preprocess bogus plain.png -o p.png", "preprocessor: 'bogus'"),
    ("preprocess canny adir -o p.png", "image: adir"),
    ("train lora --data nothere -o l.safetensors --steps 1 -m m.safetensors", "data: nothere does not exist"),
    ("train lora --data emptydata -o l.safetensors --steps 1 -m m.safetensors", "data: emptydata is empty"),
    ("train lora --data plain.png -o l.safetensors --steps 1 -m m.safetensors", "data: plain.png is not a folder"),
    ("train-controlnet --data nothere --steps 1 --model m.safetensors", "no complete emoji dataset"),
    ("serve --port 70000", "port: 70000 is outside 1..65535"),
    ("serve --model-cache-gb -1", "model-cache-gb: -1.0 must be a positive number"),
    ("serve --max-body-mb inf", "max-body-mb: inf must be a positive number"),
    ("serve --outputs-dir plain.png", "outputs-dir: plain.png is not a folder"),
    ("serve --port abc", "argument --port: 'abc' is not an integer"),
]


@pytest.mark.parametrize("line,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_naming_the_problem(files, capsys, monkeypatch, line, words):
    monkeypatch.chdir(files)
    argv = [a.replace("_", " ") if a.startswith("x_") else a for a in line.split()]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
    assert rc == 2 and len(err) == 1 and words in err[0] and "error:" in err[0], err
    assert not list(files.glob("outputs/*"))


def test_info_into_a_closed_pipe_is_quiet(files):
    path = files / "long.png"
    save_image(Image.new("RGB", (8, 8)), path, "a cat, " * 20000 + "\nSteps: 1, Sampler: Euler, Seed: 1")
    proc = subprocess.Popen([sys.executable, "-m", "opensd.cli", "info", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -1` that has read its line
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err and err == "", err


def test_training_entry_point_without_its_dataset_is_one_line(files):
    r = subprocess.run([sys.executable, "-m", "opensd.training.evaluate", "--model", str(files / "m.safetensors"),
                        "--data", str(files / "nothere"), "--out", str(files / "eval"), "--quiet"],
                       capture_output=True, text=True, timeout=120)
    lines = [s for s in r.stderr.splitlines() if s.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "no complete emoji dataset" in lines[0], r.stderr


def test_clip_skip_is_checked_once_and_refuses_booleans():
    with pytest.raises(ValueError, match="clip_skip: True is outside 1..12"):
        Params(width=64, height=64, clip_skip=True).validate()


def test_the_builtin_model_path_is_defined_in_one_place():
    root = Path(opensd.__file__).parent
    places = []
    for path in [*root.rglob("*.py"), *(root.parents[1] / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value == "opensd-emoji.safetensors":
                places.append(path.name)
    assert places == ["models_dir.py"]
