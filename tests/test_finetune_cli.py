"""`opensd train ...`: the three commands end to end on a tiny model, errors as one line, and a
kill -9 in the middle of a LoRA run followed by the same command finishes the run."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open
from test_finetune_lora import make_data

from opensd.cli import main
from opensd.library.synthetic import write_random_checkpoint
from opensd.text.embeddings import load_embedding

SRC = str(Path(__file__).resolve().parents[1] / "src")


def setup(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    data = make_data(tmp_path, n=2, folder="3_sks emoji")
    return ["--data", str(data), "--model", str(ckpt), "--resolution", "32", "--bucket-step", "8",
            "--batch-size", "2", "--no-progress", "--seed", "1"]


def test_lora_dreambooth_embedding_commands(tmp_path, capsys):
    common = setup(tmp_path)
    out = tmp_path / "style.safetensors"
    assert main(["train", "lora", *common, "--output", str(out), "--rank", "2", "--alpha", "1", "--steps", "3",
                 "--run-dir", str(tmp_path / "r1"), "--train-text-encoder", "--te-lr", "5e-5",
                 "--sample-every", "3", "--sample-prompt", "sks emoji", "--sample-steps", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    with safe_open(out, "pt") as f:
        assert f.metadata()["ss_network_dim"] == "2" and f.metadata()["ss_text_encoder_lr"] == "5e-05"
    assert (tmp_path / "r1" / "samples" / "step000003-0.png").is_file()

    db = tmp_path / "db.safetensors"
    assert main(["train", "dreambooth", *common, "--output", str(db), "--epochs", "1",
                 "--run-dir", str(tmp_path / "r2"), "--instance-prompt", "a photo of sks emoji",
                 "--class-prompt", "an emoji", "--num-class-images", "1", "--class-steps", "2"]) == 0
    assert db.is_file() and (tmp_path / "r2" / "class_images" / "class-00000.png").is_file()

    emb = tmp_path / "emb" / "myword.pt"
    assert main(["train", "embedding", *common, "--output", str(emb), "--steps", "2", "--init-word", "emoji",
                 "--run-dir", str(tmp_path / "r3")]) == 0
    assert load_embedding(emb).name == "myword"


def test_errors_are_one_line_naming_the_problem(tmp_path, capsys):
    common = setup(tmp_path)
    (tmp_path / "empty").mkdir()
    bad = [c if c != str(tmp_path / "data") else str(tmp_path / "empty") for c in common]
    assert main(["train", "lora", *bad, "--output", str(tmp_path / "x.safetensors"), "--steps", "1",
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "data:" in capsys.readouterr().err
    assert main(["train", "lora", *common, "--output", str(tmp_path / "x.safetensors"),
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "steps" in capsys.readouterr().err


def test_kill_9_then_same_command_continues(tmp_path):
    common = setup(tmp_path)
    out = tmp_path / "k.safetensors"
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "opensd.cli", "train", "lora", *common, "--output", str(out), "--steps", "24",
           "--save-every", "2", "--run-dir", str(run), "--rank", "2", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (run / "state.pt").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "state.pt").is_file() and not out.exists()
    import torch
    killed_at = torch.load(run / "state.pt", weights_only=True)["step"]
    assert 0 < killed_at < 24
    done = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with safe_open(out, "pt") as f:
        assert f.metadata()["ss_steps"] == "24"
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 24
