"""kohya sd-scripts' training habits: learning-rate schedules (against diffusers' get_scheduler, which kohya
uses, and the formulas), min-SNR weights, noise offset, caption dropout and tag shuffling with kept
tokens, and extending a finished run with more steps."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors import safe_open

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.training import finetune as FT
from opensd.training.captions import CaptionOptions, process_caption
from opensd.training.lr_schedules import SCHEDULERS, lr_factor
from opensd.training.lora_train import build, train_lora
from opensd.training.trainer import TrainConfig, Trainer
from test_finetune_lora import options

T, W = 40, 7


def _ours(name, cycles=1, power=1.0, lr=0.01):
    cfg = TrainConfig(steps=T, lr=lr, warmup=W, lr_scheduler=name, lr_cycles=cycles, lr_power=power)
    trainer = Trainer(torch.nn.Linear(1, 1), lambda s: iter(()), None, cfg, "unused")
    return [trainer.lr_at(s) for s in range(T + 3)]


@pytest.mark.parametrize("name,kwargs", [(n, {}) for n in SCHEDULERS] + [("cosine_with_restarts", {"num_cycles": 3}),
                                                                        ("polynomial", {"power": 2.0})])
def test_schedules_equal_diffusers_get_scheduler(name, kwargs):
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = get_scheduler(name, opt, num_warmup_steps=W, num_training_steps=T, **kwargs)
    theirs = []
    for _ in range(T + 3):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    ours = _ours(name, kwargs.get("num_cycles", 1), kwargs.get("power", 1.0))
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-15)


def test_schedule_formulas():
    assert lr_factor("constant", 0, T, W) == 1.0
    assert lr_factor("constant_with_warmup", 3, T, W) == pytest.approx(3 / 7)
    assert lr_factor("linear", 20, T, W) == pytest.approx(20 / 33)
    assert lr_factor("cosine", 7 + 33 // 2, T, W) == pytest.approx(0.5 * (1 + math.cos(math.pi * 16 / 33)))
    # two restarts: the factor jumps back to 1 at each third
    assert lr_factor("cosine_with_restarts", 7 + 11, T, W, cycles=3) == pytest.approx(1.0)
    assert lr_factor("polynomial", 7 + 11, T, W, power=2.0, lr=1e-2) == pytest.approx(
        ((1e-2 - 1e-7) * (1 - 11 / 33) ** 2 + 1e-7) / 1e-2)
    assert _ours(None)[0] == pytest.approx(0.01 / W)  # the default schedule is unchanged


def test_min_snr_weights_follow_the_formula(tmp_path):
    a = torch.tensor([0.999, 0.9, 0.5, 0.01])
    snr = a / (1 - a)
    expect_eps = torch.minimum(snr, torch.tensor(5.0)) / snr
    assert torch.allclose(FT.min_snr_weight(a, 5.0, "eps"), expect_eps)
    assert torch.allclose(FT.min_snr_weight(a, 5.0, "v"), torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    assert FT.min_snr_weight(a, 5.0, "eps")[3] == 1.0  # low SNR: full weight
    # in the loss: the per-image MSE times the weight
    trainer, _net, pipe, ds, _ = build(options(tmp_path))
    batch = FT.LatentBatches(pipe, ds, 2, 0).make(3, [(0, False), (1, False)], pipe.config.vae.scaling_factor)
    alphas = FT.alphas_of(pipe)
    with torch.no_grad():
        plain = FT.diffusion_loss(pipe, batch, alphas)
        weighted = FT.diffusion_loss(pipe, batch, alphas, min_snr_gamma=2.0)
        context, y = FT.encode_text(pipe, batch["captions"], None, batch["size"])
        at = alphas[batch["t"]].view(-1, 1, 1, 1)
        pred = pipe.model.unet(at.sqrt() * batch["z0"] + (1 - at).sqrt() * batch["noise"], batch["t"], context, y)
        per = ((pred.float() - batch["noise"]) ** 2).mean(dim=(1, 2, 3))
    assert plain.item() == pytest.approx(per.mean().item(), rel=1e-5)
    assert weighted.item() == pytest.approx((per * FT.min_snr_weight(at.view(-1), 2.0, "eps")).mean().item(), rel=1e-5)


def test_noise_offset_adds_a_per_channel_constant(tmp_path):
    _trainer, _net, pipe, ds, _ = build(options(tmp_path))
    scale = pipe.config.vae.scaling_factor
    plain = FT.LatentBatches(pipe, ds, 2, 0).make(5, [(0, False), (1, True)], scale)
    offset = FT.LatentBatches(pipe, ds, 2, 0, noise_offset=0.1).make(5, [(0, False), (1, True)], scale)
    diff = offset["noise"] - plain["noise"]
    assert torch.equal(offset["z0"], plain["z0"]) and torch.equal(offset["t"], plain["t"])
    assert torch.allclose(diff, diff[:, :, :1, :1].expand_as(diff))  # constant over the image
    assert 0 < diff[:, :, 0, 0].abs().max() < 0.5


def test_caption_shuffle_keeps_the_first_tokens_and_dropout_drops():
    caption = "sks dog, red collar, grass, sunny, photo, dslr"
    tags = caption.split(", ")
    seen = set()
    for step in range(30):
        g = torch.Generator().manual_seed(step)
        out = process_caption(caption, CaptionOptions(shuffle=True, keep_tokens=2), g).split(", ")
        assert out[:2] == tags[:2] and sorted(out[2:]) == sorted(tags[2:])
        seen.add(tuple(out))
        again = process_caption(caption, CaptionOptions(shuffle=True, keep_tokens=2), torch.Generator().manual_seed(step))
        assert again.split(", ") == out  # the same step draws the same order (resumable)
    assert len(seen) > 10
    dropped = [process_caption(caption, CaptionOptions(dropout_rate=0.5), torch.Generator().manual_seed(s)) for s in
               range(200)]
    assert 70 < dropped.count("") < 130 and set(dropped) == {"", caption}
    fewer = process_caption(caption, CaptionOptions(keep_tokens=1, tag_dropout_rate=1.0), torch.Generator())
    assert fewer == "sks dog"
    assert process_caption(caption, CaptionOptions(), torch.Generator()) == caption


def test_batches_carry_processed_captions(tmp_path):
    _trainer, _net, pipe, ds, _ = build(options(tmp_path))
    for item in ds.items:
        item.caption = "sks thing, a, b, c, d"
    batches = FT.LatentBatches(pipe, ds, 2, 0, captions=CaptionOptions(shuffle=True, keep_tokens=1))
    captions = [c for step in range(8) for c in batches.make(step, [(0, False), (1, False)], 1.0)["captions"]]
    assert all(c.startswith("sks thing, ") for c in captions) and len(set(captions)) > 1


def test_more_steps_extend_a_finished_run(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    extended = options(tmp_path / "a", steps=6, lr_scheduler="constant", save_every=3)
    first = train_lora(extended)
    with safe_open(first, "pt") as f:
        assert f.metadata()["ss_steps"] == "6" and f.metadata()["ss_lr_scheduler"] == "constant"
    out = train_lora(options(tmp_path / "a", steps=10, lr_scheduler="constant", save_every=3))
    straight = train_lora(options(tmp_path / "b", steps=10, lr_scheduler="constant", save_every=3))
    with safe_open(out, "pt") as f, safe_open(straight, "pt") as g:
        assert f.metadata()["ss_steps"] == "10"
        for k in f.keys():  # with a constant rate, 6 steps then 4 more are the 10 steps of a straight run
            assert torch.equal(f.get_tensor(k), g.get_tensor(k)), k
    with pytest.raises(InvalidArgument, match="already holds 10 trained steps"):
        train_lora(options(tmp_path / "a", steps=8, lr_scheduler="constant", save_every=3))
    with pytest.raises(InvalidArgument, match="other settings"):
        train_lora(options(tmp_path / "a", steps=12, lr_scheduler="cosine", save_every=3))


def test_the_cli_takes_the_flags(tmp_path, capsys):
    opts = options(tmp_path)  # writes the model and data
    argv = ["train", "lora", "--data", str(opts.data), "-m", str(opts.model), "-o", str(tmp_path / "o.safetensors"),
            "--steps", "2", "--run-dir", str(tmp_path / "run"), "--resolution", "32", "--bucket-step", "8", "--no-progress", "--lr-scheduler",
            "cosine_with_restarts", "--lr-scheduler-num-cycles", "2", "--lr-warmup-steps", "1", "--noise-offset",
            "0.05", "--shuffle-caption", "--keep-tokens", "1", "--caption-dropout-rate", "0.1"]
    assert main(argv) == 0
    with safe_open(tmp_path / "o.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_lr_scheduler"] == "cosine_with_restarts" and meta["ss_noise_offset"] == "0.05"
    assert meta["ss_keep_tokens"] == "1" and meta["ss_lr_warmup_steps"] == "1"
    capsys.readouterr()
    assert main(argv[:-2] + ["--caption-dropout-rate", "2"]) == 2
    assert "caption-dropout-rate" in capsys.readouterr().err


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_locon_and_loha_training_saves_files_our_loader_reads_back(tmp_path, algo):
    from opensd.adapters.lora import LoraSet, LoraSpec
    from opensd.training.lora_train import metadata, save_lora

    opts = options(tmp_path, network_type=algo, conv_dim=2, conv_alpha=1, steps=4, lr=5e-2, train_text_encoder=True)
    trainer, network, pipe, ds, steps = build(opts)
    trainer.run(progress=False)
    path = save_lora(network, tmp_path / f"{algo}.safetensors", metadata(opts, pipe, ds, steps, 0.0, trainer.step),
                     fp32=True)
    with safe_open(path, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    if algo == "locon":
        assert shapes[f"{conv}.lora_down.weight"] == (2, 32, 3, 3) and shapes[f"{conv}.lora_up.weight"] == (32, 2, 1, 1)
        assert meta["ss_network_module"] == "networks.lora"
        assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    else:
        assert shapes[f"{conv}.hada_w1_b"] == (2, 32 * 9) and shapes[f"{conv}.hada_w2_a"] == (32, 2)
        assert meta["ss_network_module"] == "lycoris.kohya" and json.loads(meta["ss_network_args"])["algo"] == "loha"
        assert not any(k.endswith("lora_down.weight") for k in keys)
    assert f"lora_unet_down_blocks_0_downsamplers_0_conv.{'lora_down.weight' if algo == 'locon' else 'hada_w1_a'}" in keys
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([700, 30])
    ids = torch.randint(0, 1000, (2, 77), generator=g)
    with torch.no_grad():
        trained_ctx = pipe.model.cond_stage_model(ids).hidden
        trained = pipe.model.unet(x, t, trained_ctx)  # the adapters on their hooks
        network.enabled = False
        base = pipe.model.unet(x, t, trained_ctx)
    assert (trained - base).abs().max() > 1e-3  # training changed the output
    fresh = FT.load_base(opts.model)
    report = LoraSet(fresh.model).apply([LoraSpec(path)])[0]
    assert report.patched == len(network.layers) and not report.unmatched
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.cond_stage_model(ids).hidden, trained_ctx, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fresh.model.unet(x, t, trained_ctx), trained, rtol=1e-4, atol=1e-5)


def test_network_type_flags(tmp_path):
    with pytest.raises(InvalidArgument, match="conv-dim"):
        train_lora(options(tmp_path, conv_dim=4))
    with pytest.raises(InvalidArgument, match="network-type"):
        train_lora(options(tmp_path, network_type="lokr"))


def _triples(root, n=4):
    from PIL import Image, ImageDraw

    images, controls = root / "data" / "3_squares", root / "control" / "3_squares"
    images.mkdir(parents=True)
    controls.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        x, y = (int(v) for v in rng.integers(4, 30, 2))
        im = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(im).rectangle((x, y, x + 28, y + 28), fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
        im.save(images / f"{i}.jpg")
        (images / f"{i}.txt").write_text("a square")
        edge = Image.new("RGB", (64, 64))
        ImageDraw.Draw(edge).rectangle((x, y, x + 28, y + 28), outline="white", width=2)
        edge.save(controls / f"{i}.png")  # another extension than the image: matched by name
    return root / "data", root / "control"


def test_train_controlnet_on_a_users_triples_resumes_extends_and_loads(tmp_path, capsys):
    from opensd.library.synthetic import write_random_checkpoint

    model = write_random_checkpoint(tmp_path / "tiny.safetensors", dtype=torch.float32)
    data, control = _triples(tmp_path)
    out = tmp_path / "cn.safetensors"
    argv = ["train-controlnet", "--model", str(model), "--data", str(data), "--conditioning-dir", str(control),
            "--run", str(tmp_path / "run"), "--batch", "2", "--save-every", "2", "--lr", "1e-2", "--no-progress",
            "--out", str(out)]
    assert main([*argv, "--steps", "4", "--until", "2"]) == 0
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["step"] == 2
    cached = torch.load(tmp_path / "run" / "data.pt", weights_only=True)
    assert cached["hints"].shape == (4, 64, 64, 3) and cached["order"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert main([*argv, "--steps", "4"]) == 0 and out.is_file()
    assert main([*argv, "--steps", "6"]) == 0  # more steps extend the finished run
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 6
    made = {}
    for name, extra in (("plain", []), ("control", ["--control", f"{out},{control / '3_squares' / '0.png'}"])):
        made[name] = tmp_path / f"{name}.png"
        assert main(["generate", "a square", "-m", str(model), "--steps", "2", "--seed", "1", *extra,
                     "-o", str(made[name])]) == 0
    from PIL import Image
    assert not np.array_equal(np.asarray(Image.open(made["plain"])), np.asarray(Image.open(made["control"])))
    (control / "3_squares" / "3.png").unlink()
    capsys.readouterr()
    assert main([*argv, "--steps", "8", "--run", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "conditioning-dir" in err[0] and "3_squares/3.jpg" in err[0]


def test_training_finds_its_base_model_by_name_in_the_models_folder(tmp_path, monkeypatch):
    opts = options(tmp_path)
    (tmp_path / "models" / "Stable-diffusion").mkdir(parents=True)
    opts.model.rename(tmp_path / "models" / "Stable-diffusion" / "base.safetensors")
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(tmp_path / "models"))
    assert main(["train", "lora", "--data", str(opts.data), "-m", "base", "-o", str(tmp_path / "o.safetensors"),
                 "--steps", "1", "--run-dir", str(tmp_path / "run"), "--resolution", "32", "--bucket-step", "8",
                 "--no-progress"]) == 0
    data, control = _triples(tmp_path / "cn")
    assert main(["train-controlnet", "--model", "base", "--data", str(data), "--conditioning-dir",
                 str(control), "--run", str(tmp_path / "cnrun"), "--steps", "1", "--batch", "1", "--no-progress"]) == 0
