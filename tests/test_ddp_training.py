"""Data-parallel training under torchrun (2 gloo processes on the CPU): the trained weights after 2
steps equal one process's with the whole batch (LoRA, embedding, DreamBooth, ControlNet), also when a batch
does not split evenly (5 images, batch 4: the second step's single row lands on one rank); the
optimizer's first moments (a running mean of the gradients) agree too; only rank 0 writes; a run
started on 2 processes continues on 1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_finetune_lora import make_data

from opensd.distributed.ddp import Parallel
from opensd.library.synthetic import write_random_checkpoint

KIND_FLAGS = {
    "lora": ["--rank", "4", "--alpha", "2", "--save-fp32", "--train-text-encoder"],
    "embedding": ["--token", "sksemoji", "--init-word", "cat"],
    "dreambooth": ["--instance-prompt", "a photo of sks thing"],
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    write_random_checkpoint(root / "m.safetensors")
    make_data(root, n=5, folder="1_sks thing")  # one bucket of 5: batches of 4, then 1
    return root


def train(base: Path, kind: str, out: Path, run: Path, steps: int, procs: int) -> subprocess.CompletedProcess:
    args = ["-m", "opensd.cli", "train", kind, "--data", str(base / "data"), "--model", str(base / "m.safetensors"),
            "--output", str(out), "--run-dir", str(run), "--steps", str(steps), "--batch-size", "4",
            "--resolution", "32", "--bucket-step", "8", "--lr", "1e-3", "--lr-scheduler", "constant",
            "--save-every", "1", "--threads", "1", "--no-progress", *KIND_FLAGS[kind]]
    return run_cmd(args, procs)


def run_cmd(args: list[str], procs: int) -> subprocess.CompletedProcess:
    """`python ARGS` in one process, or in `procs` under torchrun."""
    if procs > 1:
        # --standalone: torchrun picks its own free port on this machine (no race for one picked here)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs), *args]
    else:
        cmd = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def close(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    """Equal up to fp32 rounding: the batch split changes the order of the sums (measured here:
    gradients agree to 2e-5 of their largest element, weights after 2 AdamW steps to 8e-5)."""
    a, b = a.float(), b.float()
    return bool(((a - b).abs() <= tol * a.abs().max() + 1e-3 * a.abs()).all())


def assert_close(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert close(a[k], b[k], 3e-4) if a[k].is_floating_point() else torch.equal(a[k], b[k]), (what, k)


def first_moments(run: Path) -> list[torch.Tensor]:
    opt = torch.load(run / "state.pt", weights_only=True)["opt"]
    return [s["exp_avg"] for _, s in sorted(opt["state"].items())]


@pytest.fixture(scope="module")
def one_process(base, tmp_path_factory):
    """kind -> (folder, output) of 2 steps on one process with the whole batch, made once per kind."""
    made = {}

    def get(kind):
        if kind not in made:
            root = tmp_path_factory.mktemp(f"one-{kind}")
            made[kind] = (root, train(base, kind, root / "out.safetensors", root / "run", steps=2, procs=1))
        return made[kind]
    return get


@pytest.mark.parametrize("kind", ["lora", "embedding", "dreambooth"])
def test_two_processes_train_what_one_process_trains_with_the_whole_batch(base, one_process, tmp_path, kind):
    root, one = one_process(kind)
    two = train(base, kind, tmp_path / "two.safetensors", tmp_path / "run2", steps=2, procs=2)
    assert one.stdout.count("wrote ") == 1 and two.stdout.count("wrote ") == 1  # rank 0 alone writes
    s1 = torch.load(root / "run" / "state.pt", weights_only=True)
    s2 = torch.load(tmp_path / "run2" / "state.pt", weights_only=True)
    assert s1["step"] == s2["step"] == 2
    assert s1["losses"] == pytest.approx(s2["losses"], rel=1e-5)  # each step's loss is the whole batch's
    # the gradients: AdamW's first moments are a running mean of them
    m1, m2 = first_moments(root / "run"), first_moments(tmp_path / "run2")
    scale = max(m.abs().max() for m in m1)
    assert all(((a - b).abs() <= 1e-4 * scale + 1e-3 * a.abs()).all() for a, b in zip(m1, m2, strict=True))
    if kind != "dreambooth":
        # (DreamBooth trains every UNet weight of a tiny model, some with a mathematically zero gradient
        # (a bias before a one-channel GroupNorm) that is fp32 noise of ~1e-9; AdamW divides it by its
        # own size, so those weights move by a noise-driven fraction of the learning rate either way)
        assert_close(load_file(root / "out.safetensors"), load_file(tmp_path / "two.safetensors"), kind)


def train_controlnet(base: Path, run: Path, out: Path, procs: int) -> subprocess.CompletedProcess:
    """2 steps of a batch of 3 (split 1 + 2 over two ranks) on the images of `base` and their hints."""
    hints = base / "hints" / "1_sks thing"
    if not hints.is_dir():
        hints.mkdir(parents=True)
        for image in (base / "data" / "1_sks thing").glob("*.png"):
            Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(hints / image.name)
    args = ["-m", "opensd.cli", "train-controlnet", "--model", str(base / "m.safetensors"), "--data",
            str(base / "data"), "--conditioning-dir", str(base / "hints"), "--resolution", "64", "--run-dir", str(run),
            "--out", str(out), "--steps", "2", "--batch", "3", "--lr", "1e-3", "--save-every", "1", "--threads", "1",
            "--no-progress"]
    return run_cmd(args, procs)


def test_two_processes_train_the_controlnet_one_process_trains_with_the_whole_batch(base, tmp_path):
    one = train_controlnet(base, tmp_path / "run1", tmp_path / "one.safetensors", procs=1)
    two = train_controlnet(base, tmp_path / "run2", tmp_path / "two.safetensors", procs=2)
    assert one.stdout.count("two.safetensors") == 0 and two.stdout.count("two.safetensors") == 1  # rank 0 writes
    s1 = torch.load(tmp_path / "run1" / "state.pt", weights_only=True)
    s2 = torch.load(tmp_path / "run2" / "state.pt", weights_only=True)
    assert s1["step"] == s2["step"] == 2 and s1["losses"] == pytest.approx(s2["losses"], rel=1e-5)
    m1, m2 = first_moments(tmp_path / "run1"), first_moments(tmp_path / "run2")
    scale = max(m.abs().max() for m in m1)
    # (measured: within 3e-4 of the largest; the worst is a hint-encoder conv whose gradient is ~1e-6,
    # where the split's summation order shows)
    assert scale > 0 and all(((a - b).abs() <= 1e-3 * scale + 1e-3 * a.abs()).all() for a, b in zip(m1, m2, strict=True))
    # the weights: the zero convs carry what was learned (the rest get gradients of ~1e-6 behind them
    # by step 2, which AdamW's normalisation turns into noise-driven steps, as DreamBooth's note says)
    learned = [(load_file(tmp_path / f).items()) for f in ("one.safetensors", "two.safetensors")]
    learned = [{k: v for k, v in d if "zero_convs" in k or "middle_block_out" in k} for d in learned]
    assert len(learned[0]) > 2
    assert_close(*learned, "controlnet")


def test_a_run_started_on_two_processes_continues_on_one(base, one_process, tmp_path):
    whole, _ = one_process("lora")
    train(base, "lora", tmp_path / "moved.safetensors", tmp_path / "moved", steps=1, procs=2)
    assert torch.load(tmp_path / "moved" / "state.pt", weights_only=True)["step"] == 1
    again = train(base, "lora", tmp_path / "moved.safetensors", tmp_path / "moved", steps=2, procs=1)
    assert "wrote" in again.stdout
    assert_close(load_file(whole / "out.safetensors"), load_file(tmp_path / "moved.safetensors"), "resumed")


def test_a_ranks_rows_and_weights_make_the_whole_batch():
    """Every row on exactly one rank, and the ranks' weighted means averaged (as DDP averages the
    gradients) give the whole batch's mean, for even, uneven and smaller-than-the-world batches."""
    x = torch.rand(8, dtype=torch.float64)
    for n in range(1, 9):
        for world in (1, 2, 3, 4):
            shares = [Parallel(r, world).rows(n) for r in range(world)]
            assert sorted(i for rows, w in shares if w for i in range(n)[rows]) == list(range(n))
            assert all(rows == slice(0, 1) for rows, w in shares if not w)  # an idle rank's placeholder row
            assert sum(w * x[:n][rows].mean() for rows, w in shares) / world == pytest.approx(x[:n].mean().item())


def test_only_rank_zero_writes_the_state(tmp_path):
    from opensd.training.trainer import TrainConfig, Trainer

    model = torch.nn.Linear(2, 2)
    for rank in (1, 0):
        trainer = Trainer(model, lambda start: iter(()), lambda m, b, s: m(b).sum(), TrainConfig(steps=1),
                          tmp_path / "run", parallel=Parallel(rank, 2))
        trainer.save()
        assert (tmp_path / "run" / "state.pt").exists() == (rank == 0)
