"""LoRA training: the saved kohya file is what diffusers loads (same UNet/text-encoder output as our
model with the adapters on), the loss goes down, and a resumed run equals an uninterrupted one."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.training import finetune as FT
from opensd.training.lora_train import (
    LoraNetwork,
    LoraOptions,
    build,
    default_targets,
    save_lora,
    train_lora,
)


def make_data(root: Path, n=3, folder="5_sks thing", size=(40, 48)) -> Path:
    d = root / "data" / folder
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 255, 3)  # a flat colour plus a little noise: learnable in a few steps
        img = np.clip(base + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"{i}.png")
    return root / "data"


def options(tmp_path, **kw) -> LoraOptions:
    ckpt = tmp_path / "m.safetensors"
    if not ckpt.exists():
        write_random_checkpoint(ckpt)
    data = tmp_path / "data" if (tmp_path / "data").exists() else make_data(tmp_path)
    base = {"data": data, "model": ckpt, "output": tmp_path / "out.safetensors", "run_dir": tmp_path / "run",
            "steps": 12, "batch_size": 2, "resolution": 32, "bucket_step": 8, "lr": 1e-2, "rank": 4, "alpha": 2,
            "progress": False, "save_every": 4}
    return LoraOptions(**(base | kw))


def test_saved_file_is_kohya_format_with_metadata(tmp_path):
    opts = options(tmp_path, train_text_encoder=True)
    out = train_lora(opts)
    with safe_open(out, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    names = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in keys}
    assert any(n.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q") for n in names)
    assert any(n.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for n in names)
    for n in names:
        assert {f"{n}.lora_down.weight", f"{n}.lora_up.weight", f"{n}.alpha"} <= set(keys)
        assert tensors[f"{n}.lora_down.weight"].dtype == torch.float16
        assert tensors[f"{n}.alpha"].item() == 2.0
        assert tensors[f"{n}.lora_down.weight"].shape[0] == 4
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_steps"] == "12"
    assert meta["ss_num_train_images"] == "15"  # 3 images x 5 repeats
    assert json.loads(meta["ss_tag_frequency"]) == {"5_sks thing": {"sks thing": 3}}
    assert meta["ss_resolution"] == "(32, 32)" and meta["ss_output_name"] == "out"
    assert meta["modelspec.architecture"].endswith("/lora")
    assert any(t.abs().sum() > 0 for k, t in tensors.items() if "lora_up" in k)  # it did learn


def test_loss_goes_down_on_a_tiny_overfit(tmp_path):
    opts = options(tmp_path, steps=40, lr=3e-2, rank=8, alpha=8, batch_size=3, warmup=5)
    trainer, _network, pipe, ds, _steps = build(opts)
    # fixed noise level and noise for a clean comparison: t and noise are the batch's own
    batches = FT.LatentBatches(pipe, ds, 3, 0)
    probe = batches.make(0, [(i, False) for i in range(3)], pipe.config.vae.scaling_factor)
    alphas = FT.alphas_of(pipe)
    with torch.no_grad():
        before = FT.diffusion_loss(pipe, probe, alphas).item()
    trainer.run(progress=False)
    with torch.no_grad():
        after = FT.diffusion_loss(pipe, probe, alphas).item()
    assert after < 0.95 * before, (before, after)  # measured 1.41 -> 1.24
    first, last = np.mean(trainer.losses[:8]), np.mean(trainer.losses[-8:])
    assert last < 0.95 * first, (first, last)  # measured 1.21 -> 1.04


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    a = options(tmp_path, run_dir=tmp_path / "a", output=tmp_path / "a.safetensors", save_fp32=True)
    train_lora(a)
    b = options(tmp_path, run_dir=tmp_path / "b", output=tmp_path / "b.safetensors", save_fp32=True)
    assert train_lora(b, until=5) is None and not b.output.exists()  # "killed" after step 5 (saved at 4, 5)
    assert train_lora(b) == b.output  # the same command continues
    with safe_open(a.output, "pt") as fa, safe_open(b.output, "pt") as fb:
        for k in list(fa.keys()):
            assert torch.equal(fa.get_tensor(k), fb.get_tensor(k)), k
    changed = options(tmp_path, run_dir=tmp_path / "b", rank=8)
    with pytest.raises(InvalidArgument, match="run-dir"):
        train_lora(changed)


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    grads = []
    for ckpt in (False, True):
        opts = options(tmp_path, run_dir=tmp_path / f"r{ckpt}", gradient_checkpointing=ckpt)
        _trainer, network, pipe, ds, _ = build(opts)
        for layer in network.layers.values():  # non-zero up so gradients reach every part
            torch.nn.init.normal_(layer.lora_up.weight, std=0.1)
        batch = next(FT.LatentBatches(pipe, ds, 2, 0)(0))
        FT.diffusion_loss(pipe, batch, FT.alphas_of(pipe)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in network.parameters()]))
        network.detach()
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_bad_options_are_named(tmp_path):
    with pytest.raises(InvalidArgument, match="rank"):
        train_lora(options(tmp_path, rank=0))
    with pytest.raises(InvalidArgument, match="steps"):
        train_lora(options(tmp_path, steps=None))
    with pytest.raises(InvalidArgument, match="model"):
        train_lora(options(tmp_path, model=tmp_path / "missing.safetensors"))


def test_diffusers_loads_the_file_and_matches_our_output(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from test_loader import make_diffusers_folder

    folder = tmp_path / "sd1"
    folder.mkdir()
    parts = make_diffusers_folder(folder, "sd1")
    pipe = FT.load_base(folder)
    network = LoraNetwork(default_targets(pipe.model, True), rank=4, alpha=2).attach()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in network.layers.values():
            layer.lora_up.weight.copy_(torch.randn(layer.lora_up.weight.shape, generator=g) * 0.05)
    path = save_lora(network, tmp_path / "lora.safetensors", {"ss_network_module": "networks.lora"}, fp32=True)

    ref = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=None,
                                  unet=parts["unet"], scheduler=DDIMScheduler(), safety_checker=None,
                                  feature_extractor=None, requires_safety_checker=False)
    ref.load_lora_weights(str(path))
    x = torch.randn(2, 4, 8, 8, generator=g)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    t = torch.tensor([900, 20])
    with torch.no_grad():
        ctx_ref = ref.text_encoder(ids)[0]
        ctx_ours = pipe.model.cond_stage_model(ids).hidden
        torch.testing.assert_close(ctx_ours, ctx_ref, rtol=1e-4, atol=1e-4)
        out_ref = ref.unet(x, t, ctx_ref).sample
        out_ours = pipe.model.unet(x, t, ctx_ref)
        network.enabled = False
        out_base = pipe.model.unet(x, t, ctx_ref)
    assert (out_ours - out_base).abs().max() > 1e-2  # the LoRA changes the output...
    torch.testing.assert_close(out_ours, out_ref, rtol=1e-4, atol=1e-4)  # ...exactly as diffusers applies it
    # and as our own LoRA loader applies the file to a fresh copy of the model
    from opensd.adapters.lora import LoraSet, LoraSpec
    fresh = FT.load_base(folder)
    reports = LoraSet(fresh.model).apply([LoraSpec(path)])
    assert reports[0].patched == len(network.layers) and not reports[0].unmatched
    with torch.no_grad():
        torch.testing.assert_close(fresh.model.unet(x, t, ctx_ref), out_ours, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fresh.model.cond_stage_model(ids).hidden, ref.text_encoder(ids)[0],
                                   rtol=1e-4, atol=1e-4)


def test_bf16_autocast_trains_and_warns_without_native_bf16(tmp_path, monkeypatch):
    import warnings
    opts = options(tmp_path, steps=2, bf16=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_lora(opts)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        assert any("bf16" in str(w.message) for w in caught)
    with safe_open(out, "pt") as f:
        assert f.metadata()["ss_mixed_precision"] == "bf16"
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in list(f.keys()))
