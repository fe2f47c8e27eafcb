"""Where `opensd generate` writes: numbered files that never replace another, the output checked
before any work, and outpainting with its own defaults."""
import threading

import pytest
import torch
from PIL import Image

from opensd.cli import main
from opensd.cli.output_files import numbered_output
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.infotext import parse_infotext, read_infotext


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors", dtype=torch.float32)


def test_without_output_files_are_numbered_and_never_replaced(ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "00041-9.png").write_bytes(b"someone else's")
    for _ in range(2):
        assert main(["generate", "x", "-m", str(ckpt), "--steps", "1", "--seed", "5"]) == 0
    assert main(["generate", "x", "-m", str(ckpt), "--steps", "1", "--seed", "6", "--batch", "2"]) == 0
    names = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert names == ["00041-9.png", "00042-5.png", "00043-5.png", "00044-6.png", "00045-7.png"]
    assert (tmp_path / "outputs" / "00041-9.png").read_bytes() == b"someone else's"
    assert parse_infotext(read_infotext(tmp_path / "outputs" / "00045-7.png"))[2]["Seed"] == "7"


def test_concurrent_runs_never_share_a_name(tmp_path):
    got, start = [], threading.Barrier(8)

    def reserve():
        start.wait()
        got.extend(numbered_output(tmp_path, 1) for _ in range(5))

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 40 and len(list(tmp_path.iterdir())) == 40


@pytest.mark.parametrize("name,words", [("out.gif", "'out.gif' is not a supported format"),
                                        ("out", "'out' is not a supported format"),
                                        ("folder.png", "is a folder")])
def test_bad_output_fails_before_any_work(tmp_path, capsys, name, words):
    (tmp_path / "folder.png").mkdir()
    # the model does not exist: an output error proves the output was checked first
    rc = main(["generate", "x", "-m", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("opensd: error: output:") and words in err[0], err


def test_output_folder_that_cannot_be_made(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["generate", "x", "-o", str(tmp_path / "file" / "sub" / "o.png")]) == 2
    assert "output: cannot create the folder" in capsys.readouterr().err


def test_outpaint_uses_outpainting_defaults_not_img2img(ckpt, tmp_path):
    init, out = tmp_path / "init.png", tmp_path / "o.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(init)
    assert main(["generate", "x", "-m", str(ckpt), "--steps", "2", "--init-image", str(init),
                 "--outpaint", "16,0,0,0", "-o", str(out)]) == 0
    params = parse_infotext(read_infotext(out))[2]
    assert params["Denoising strength"] == "1" and params["Masked content"] == "fill"
    assert Image.open(out).size == (80, 64)
    assert main(["generate", "x", "-m", str(ckpt), "--steps", "2", "--init-image", str(init),
                 "--outpaint", "16,0,0,0", "--strength", "0.5", "-o", str(out)]) == 0
    assert parse_infotext(read_infotext(out))[2]["Denoising strength"] == "0.5"
