"""The shared trainer: loss goes down, resume reproduces an uninterrupted run, kill -9 is survivable."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from opensd.training.trainer import TrainConfig, Trainer

SCRIPT = r'''
import sys, time, torch
from torch import nn
sys.path.insert(0, {tests!r})
from test_trainer import make
trainer = make({run!r}, steps=40, slow={slow})
model = trainer.run(progress=False)
torch.save(model.state_dict(), {out!r})
'''


def make(run_dir, steps=30, slow=0.0, ema=0.9):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    w = torch.linspace(-1, 1, 8)

    def batches(start):
        step = start
        while True:  # batch k is a pure function of k, so a resumed run sees the same data
            g = torch.Generator().manual_seed(1000 + step)
            x = torch.randn(32, 8, generator=g)
            yield x, (x @ w)[:, None] + 0.1 * torch.sin(3 * x[:, :1])
            step += 1

    def loss_fn(m, batch, step):
        if slow:
            time.sleep(slow)
        x, y = batch
        noise = torch.randn(()) * 1e-3  # uses the global RNG: resume must restore it
        return ((m(x) - y) ** 2).mean() + noise * 0

    cfg = TrainConfig(steps=steps, lr=1e-2, warmup=5, ema_decay=ema, save_every=5)
    return Trainer(model, batches, loss_fn, cfg, Path(run_dir))


def test_loss_goes_down(tmp_path):
    t = make(tmp_path / "run", steps=60, ema=0)
    t.run(progress=False)
    assert sum(t.losses[-10:]) / 10 < 0.3 * sum(t.losses[:10]) / 10


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    straight = make(tmp_path / "a", steps=20).run(progress=False)
    first = make(tmp_path / "b", steps=20)
    first.run(progress=False, until=10)  # stops (and saves) half way
    resumed = make(tmp_path / "b", steps=20)
    final = resumed.run(progress=False)
    assert resumed.step == 20
    for (k, a), b in zip(straight.state_dict().items(), final.state_dict().values()):
        assert torch.equal(a, b), k


def test_kill_minus_9_then_resume_finishes_the_same_run(tmp_path):
    tests = str(Path(__file__).parent)
    ref_out, out = tmp_path / "ref.pt", tmp_path / "out.pt"
    subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests, run=str(tmp_path / "ref"), slow=0,
                                                        out=str(ref_out))], check=True, timeout=120)
    code = SCRIPT.format(tests=tests, run=str(tmp_path / "k"), slow=0.05, out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    state = tmp_path / "k" / "state.pt"
    deadline = time.time() + 60
    while not state.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # it really died before finishing
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    ref, got = torch.load(ref_out, weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
