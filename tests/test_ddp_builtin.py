"""The built-in model's training (python -m opensd.training.builtin) data-parallel under torchrun: 2 gloo
processes train both stages as 1 process does with the same global batches (losses, AdamW first
moments, weights, the UNet's EMA), with uneven shares (a VAE batch of 3 split 1 + 2; a UNet batch
of 6 rows = 3 captions x 2 repeats, split 2 + 4 rows); rank 0 alone writes; a guidance distillation
started on 2 processes continues on 1. The data is a real emoji cache built from the emoji-data test's tarballs
(22 training images); the arch a tiny one this file registers when torchrun runs it as a script."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_ddp_training import close, run_cmd

from opensd.distributed.ddp import Parallel
from opensd.models import config as C
from opensd.training import builtin as B

TINY = C.ModelConfig(
    family="small",
    unet=C.UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                      transformer_depth_middle=1, context_dim=64),
    vae=C.VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, scaling_factor=1.0),  # 64x64 -> 16x16
    text_encoders=(C.TextEncoderConfig(width=64, layers=1, heads=1),),
    resolution=64,
)
# a guidance-distilled student of TINY (per-row CFG scales, negative-prompt texts in place of captions)
TINY_GD = replace(TINY, unet=replace(TINY.unet, adm_in_channels=32, guidance_embed=True))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from test_emoji_data import make_tarball

    from opensd.training.emoji_data import build_emoji_dataset

    root = tmp_path_factory.mktemp("emoji")
    tarballs = {s: make_tarball(root / f"emoji-datasource-{s}-16.0.0.tgz", s) for s in ("google", "twitter")}
    return build_emoji_dataset(root / "data", tarballs=tarballs, held_out_fraction=0.3)


def train(data: Path, runs: Path, procs: int, *flags: str):
    """2 VAE steps of 3 images (the first whole, the second a random crop) and 2 UNet steps of 6 rows."""
    args = [__file__, "--data", str(data), "--runs", str(runs), "--arch", "tiny", "--vae-steps", "2",
            "--unet-steps", "2", "--vae-batch", "3", "--batch", "6", "--caption-repeats", "2", "--save-every", "2",
            "--sample-every", "0", "--threads", "1", "--no-progress", "--out", str(runs / "out.safetensors"), *flags]
    return run_cmd(args, procs)


def assert_same_stage(a: dict, b: dict, stage: str, steps: int = 2) -> None:
    assert a["step"] == b["step"] == steps, stage
    assert a["losses"] == pytest.approx(b["losses"], rel=1e-5), stage  # each step's loss is the whole batch's
    m1, m2 = first_moments_of(a), first_moments_of(b)
    scale = max(m.abs().max() for m in m1)
    assert scale > 0 and all(((x - y).abs() <= 1e-4 * scale + 1e-3 * x.abs()).all()
                             for x, y in zip(m1, m2, strict=True)), stage
    lr = a["config"]["lr"]
    for what in ("model", "ema"):
        if a[what] is not None:
            assert a[what].keys() == b[what].keys()
            moved = torch.cat([(a[what][k].float() - b[what][k].float()).abs().flatten() for k in a[what]])
            # a weight whose gradient is mathematically zero (a bias before a GroupNorm) gets fp32 noise
            # that the split sums differently and AdamW normalises into a step of up to lr either way:
            # measured 0.05% (VAE) and 0.3% (UNet) of the weights; the rest agree to 1e-3 lr
            assert (moved <= 0.01 * lr).float().mean() > 0.99 and moved.max() <= 2 * lr, (stage, what)


def first_moments_of(state: dict) -> list[torch.Tensor]:
    return [s["exp_avg"] for _, s in sorted(state["opt"]["state"].items())]


def states(runs: Path) -> dict[str, dict]:
    return {stage: torch.load(runs / stage / "state.pt", weights_only=True) for stage in ("vae", "unet")}


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("one")
    return runs, train(data, runs, 1)


def test_two_processes_train_the_builtin_model_as_one_process_with_the_whole_batch(data, one_process, tmp_path):
    runs1, one = one_process
    two = train(data, tmp_path, 2)
    assert one.stdout.count("wrote ") == 1 and two.stdout.count("wrote ") == 1  # rank 0 alone exports
    s1, s2 = states(runs1), states(tmp_path)
    for stage in ("vae", "unet"):
        assert_same_stage(s1[stage], s2[stage], stage)
    lat1, lat2 = (torch.load(r / "latents.pt", weights_only=True) for r in (runs1, tmp_path))
    assert close(lat1["mean"], lat2["mean"], 3e-4)


def test_a_distillation_started_on_two_processes_continues_on_one(data, one_process, tmp_path):
    """The guided student's draws (CFG scales, negative texts) too are the whole batch's: its first 2
    steps on 2 processes and its third on 1 make the steps of one process."""
    teacher = one_process[0] / "out.safetensors"
    distil = ("--arch", "tiny-gd", "--teacher", str(teacher), "--unet-steps", "3", "--no-export")
    train(data, tmp_path / "one", 1, *distil)
    train(data, tmp_path / "moved", 2, *distil, "--unet-until", "2")
    assert torch.load(tmp_path / "moved" / "unet" / "state.pt", weights_only=True)["step"] == 2
    train(data, tmp_path / "moved", 1, *distil)
    one, moved = (torch.load(tmp_path / r / "unet" / "state.pt", weights_only=True) for r in ("one", "moved"))
    assert_same_stage(one, moved, "unet", steps=3)


def test_time_budgets_are_refused_with_several_processes(tmp_path):
    with pytest.raises(ValueError, match="--vae-budget/--unet-budget"):
        B.run(None, tmp_path, 2, 2, 6, 3, None, progress=False, cfg=TINY, vae_budget_s=60.0,
              parallel=Parallel(0, 2))


if __name__ == "__main__":  # what train() runs, on one process or under torchrun
    B.ARCHS.update({"tiny": TINY, "tiny-gd": TINY_GD})
    B.NEGATIVE_BANK = 64  # not 4096 negative texts to encode for 2 steps
    B.GUIDANCE_NEGATIVE = 0.75  # (not 0.25) so that 2 steps of 3 captions replace some
    B.main(sys.argv[1:])
