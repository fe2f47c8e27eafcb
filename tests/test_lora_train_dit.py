"""LoRA training on the flow-matching DiTs (Flux.1, SD3.5, Z-Image, FLUX.2 [klein]), on tiny random
models: a few steps lower the flow loss on a fixed batch; the saved file, read by our own LoRA
loader onto the same network, gives the trained adapters' outputs (equal to the hooked model with
the saved fp16 weights); a resumed run equals an uninterrupted one; the caption encoders are freed."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from dit_fixtures import chroma_parts, flux_parts, sd3_parts, write_diffusers_folder
from flux2_fixtures import flux2_parts, write_flux2_folder
from opensd.adapters.lora import LoraSet, LoraSpec
from opensd.errors import InvalidArgument
from opensd.training import dit_lora
from opensd.training import finetune as FT
from opensd.training.flow_loss import flow_loss
from opensd.training.lora_train import LoraOptions, build, metadata, train_lora
from reference import assert_close_scaled
from test_finetune_lora import make_data
from qwen_image_fixtures import qwen_image_parts, write_qwen_image_folder
from z_image_fixtures import write_z_image_folder, z_image_parts

FOLDERS = {
    "flux": lambda root: write_diffusers_folder(root, "flux", flux_parts("dev", seed=1)),
    "sd3": lambda root: write_diffusers_folder(root, "sd3", sd3_parts("sd35", seed=1)),
    "z_image": lambda root: write_z_image_folder(root, z_image_parts(seed=1)),
    "flux2": lambda root: write_flux2_folder(root, flux2_parts(seed=1)),
    "qwen_image": lambda root: write_qwen_image_folder(root, qwen_image_parts(seed=1)),
    "chroma": lambda root: write_diffusers_folder(root, "chroma", chroma_parts(seed=1)),
}


LR = {"z_image": 1e-1}  # its tiny main layers move the output least


def options(tmp_path, family: str, **kw) -> LoraOptions:
    model = tmp_path / f"model-{family}"
    if not model.exists():
        FOLDERS[family](model)
    data = tmp_path / "data" if (tmp_path / "data").exists() else make_data(tmp_path, n=3, size=(32, 32))
    base = {"data": data, "model": model, "output": tmp_path / "out.safetensors", "run_dir": tmp_path / "run",
            "steps": 16, "batch_size": 2, "resolution": 32, "bucket_step": 16, "lr": LR.get(family, 3e-2), "rank": 4,
            "alpha": 2,
            "progress": False, "save_every": 4}
    return LoraOptions(**(base | kw))


def fixed_batch(trainer):
    return trainer.batches.make(0, [(0, False), (1, False), (2, False)])


def saved(opts, trainer, network, pipe, ds):
    """The file train_lora writes at the end of this run (its network, not a second one on the pipe)."""
    meta = metadata(opts, pipe, ds, trainer.cfg.steps, 0.0, trainer.step, dit_lora.model_spec(pipe))
    return dit_lora.save(network, opts.output, pipe.config.family, meta)


def net_output(pipe, batch, guidance=None):
    net = pipe.family.net_fn(pipe.model, guidance)
    mult = pipe.model_sampling().multiplier
    with torch.no_grad():
        return net(batch["x0"] + 0.5 * batch["noise"], batch["sigma"] * mult, batch["context"], batch["y"]).float()


@pytest.mark.parametrize("family", ["flux", "sd3", "z_image", "flux2", "qwen_image"])
def test_training_lowers_the_loss_and_the_file_loads_as_trained(tmp_path, family):
    opts = options(tmp_path, family)
    pipe = FT.load_base(opts.model)  # given, so kept whole (a run loading its own frees the text encoders)
    trainer, network, pipe, ds, steps = build(opts, pipe)
    batch = fixed_batch(trainer)
    net_fn = pipe.family.net_fn(pipe.model, 1.0 if family == "flux" else None)
    mult = pipe.model_sampling().multiplier
    with torch.no_grad():
        before = flow_loss(net_fn, mult, batch).item()
        if family == "flux":  # dev trains at distilled guidance 1.0 (sd-scripts' --guidance_scale 1.0)
            seen, network_forward = [], pipe.model.network.forward
            pipe.model.network.forward = lambda *a, **k: (seen.append(a[4]), network_forward(*a, **k))[1]
            trainer.loss_fn(network, batch, 0)
            del pipe.model.network.forward
            assert torch.equal(seen[0], torch.ones(3))
    trainer.run(progress=False)
    with torch.no_grad():
        after = flow_loss(net_fn, mult, batch).item()
    assert after < 0.98 * before, (before, after)

    out = saved(opts, trainer, network, pipe, ds)
    with safe_open(out, "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    assert meta["ss_network_dim"] == "4" and meta["modelspec.architecture"].endswith("/lora")
    assert all(t.dtype == torch.float16 for t in tensors.values())
    if family == "flux":
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in keys
        assert "lora_unet_single_blocks_1_linear1.lora_up.weight" in keys
        assert meta["ss_guidance_scale"] == "1.0" and meta["modelspec.architecture"] == "flux-1-dev/lora"
        assert meta["ss_network_module"] == "networks.lora_flux" and meta["ss_timestep_sampling"] == "shift"
    else:
        assert all(k.startswith("diffusion_model.") and k.rsplit(".", 2)[-2:][0] in ("lora_A", "lora_B", "alpha")
                   or k.endswith(".alpha") for k in keys)
    assert len(keys) == 3 * len(network.layers)

    assert_file_loads_as_trained(pipe, network, out, batch)


def assert_file_loads_as_trained(pipe, network, out, batch) -> None:
    """The hooked model with the saved (fp16) weights == the base patched by our loader from the file."""
    with torch.no_grad():
        for layer in network.layers.values():
            for part in ("lora_down", "lora_up"):
                w = getattr(layer, part).weight
                w.copy_(w.half().float())
    hooked = net_output(pipe, batch)
    network.detach()
    base = net_output(pipe, batch)
    loras = LoraSet(pipe.model)
    report = loras.apply([LoraSpec(out)])
    assert report[0].patched == len(network.layers) and not report[0].unmatched
    patched = net_output(pipe, batch)
    loras.restore()
    assert (hooked - base).abs().max() > 1e-3  # the adapters changed the output
    assert_close_scaled(patched, hooked, rel=1e-4)


def test_resume_continues_at_the_same_step_with_the_same_result(tmp_path):
    whole = train_lora(options(tmp_path, "flux", output=tmp_path / "a.safetensors", run_dir=tmp_path / "ra"))
    stopped = options(tmp_path, "flux", output=tmp_path / "b.safetensors", run_dir=tmp_path / "rb")
    assert train_lora(stopped, until=5) is None and not stopped.output.exists()
    trainer, *_ = build(options(tmp_path, "flux", output=tmp_path / "b.safetensors", run_dir=tmp_path / "rb"))
    assert trainer.try_resume() and trainer.step == 5
    again = train_lora(options(tmp_path, "flux", output=tmp_path / "b.safetensors", run_dir=tmp_path / "rb"))
    with safe_open(whole, "pt") as a, safe_open(again, "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k


def test_the_text_encoders_are_freed_after_the_captions_are_cached(tmp_path):
    trainer, network, pipe, ds, steps = build(options(tmp_path, "flux"))
    encoders = [m for m in pipe.family.text_modules(pipe.model) if m is not None]
    assert encoders and all(p.is_meta for m in encoders for p in m.parameters())
    trainer.run(progress=False, until=1)  # trains from the cached captions
    assert trainer.step == 1


@pytest.mark.parametrize("change, flag", [({"train_text_encoder": True}, "train-text-encoder"),
                                          ({"network_type": "loha"}, "network-type"),
                                          ({"min_snr_gamma": 5.0}, "min-snr-gamma"),
                                          ({"shuffle_caption": True}, "shuffle-caption"),
                                          ({"resolution": 40, "bucket_step": 8}, "resolution")])
def test_options_a_dit_lora_does_not_take_are_refused(tmp_path, change, flag):
    with pytest.raises(InvalidArgument, match=flag):
        build(options(tmp_path, "flux", **change))


def test_a_family_without_dit_lora_training_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match="Chroma is not supported yet"):
        build(options(tmp_path, "chroma"))


def test_a_trained_flux_file_loads_into_diffusers_through_its_kohya_converter(tmp_path):
    """Oracle: diffusers' FluxPipeline.lora_state_dict (its sd-scripts converter) + PEFT on the very
    FluxTransformer2DModel our tiny model was written from give our trained model's output. The
    converter cuts single blocks' linear1 at the released widths (3072 x 3 + 12288), so those
    adapters are left out of the file given to it, and of our model for the comparison."""
    from diffusers import FluxPipeline

    from opensd.checkpoints.files import save_safetensors
    parts = flux_parts("dev", seed=1)
    model = write_diffusers_folder(tmp_path / "model-flux", "flux", parts)
    opts = options(tmp_path, "flux", model=model)
    out = train_lora(opts)
    pipe = FT.load_base(opts.model)  # a fresh copy of the base
    with safe_open(out, "pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if "_linear1." not in k}
    save_safetensors(kept, tmp_path / "kept.safetensors")
    state, alphas = FluxPipeline.lora_state_dict(str(tmp_path / "kept.safetensors"), return_alphas=True)
    ref = parts["transformer"]
    FluxPipeline.load_lora_into_transformer(state, network_alphas=alphas, transformer=ref)

    g = torch.Generator().manual_seed(11)
    x, t = torch.randn(1, 16, 8, 6, generator=g), torch.tensor([0.7])
    ctx, y = torch.randn(1, 5, pipe.config.flux.context_in_dim, generator=g), torch.randn(1, 32, generator=g)
    packed = FluxPipeline._pack_latents(x, 1, 16, 8, 6)
    ids = FluxPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32)
    with torch.no_grad():
        want = ref(hidden_states=packed, encoder_hidden_states=ctx, pooled_projections=y, timestep=t, img_ids=ids,
                   txt_ids=torch.zeros(5, 3), guidance=torch.tensor([1.0])).sample
        want = FluxPipeline._unpack_latents(want, 64, 48, 8)
        base = pipe.model.network(x, t, ctx, y, torch.tensor([1.0]))
        loras = LoraSet(pipe.model)
        loras.apply([LoraSpec(tmp_path / "kept.safetensors")])
        got = pipe.model.network(x, t, ctx, y, torch.tensor([1.0]))
    assert (got - base).abs().max() > 1e-3
    assert_close_scaled(got, want, 1e-4)


def test_the_cli_picks_the_family_from_the_checkpoint(tmp_path, capsys):
    from opensd.cli import main
    opts = options(tmp_path, "z_image")
    argv = ["train", "lora", "--data", str(opts.data), "-m", str(opts.model), "--resolution", "32",
            "--bucket-step", "16", "--steps", "2", "--rank", "2", "--no-progress"]
    out = tmp_path / "z.safetensors"
    assert main([*argv, "-o", str(out), "--run-dir", str(tmp_path / "r1"), "--caption-dropout-rate", "0.5",
                 "--noise-offset", "0.05", "--flip", "--sample-every", "2", "--sample-prompt", "a sks thing",
                 "--sample-steps", "2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    from opensd.library.model_catalog import describe
    from opensd.library.models_dir import ModelFile
    entry = describe(ModelFile("loras", out.name, out))
    assert entry.family == "z_image" and entry.detail.startswith("rank 2, 10 modules")  # the model lists' line
    assert (tmp_path / "r1" / "samples" / "step000002-0.png").is_file()  # sampled: the text encoders were kept
    with safe_open(out, "pt") as f:
        assert f.metadata()["modelspec.architecture"] == "z-image/lora"
        assert "diffusion_model.layers.0.attention.qkv.lora_A.weight" in f.keys()
        assert not any("refiner" in k or "adaLN" in k for k in f.keys())
    assert main([*argv, "-o", str(tmp_path / "t.safetensors"), "--run-dir", str(tmp_path / "r2"),
                 "--train-text-encoder"]) == 2
    err = capsys.readouterr().err
    assert "train-text-encoder" in err and "Z-Image" in err and len(err.strip().splitlines()) == 1


def test_a_float8_network_trains_with_its_linears_kept_stored(tmp_path):
    """An fp8 network file (as the fp8 releases are): the adapters sit on the stored Linears (the base
    stays float8, the adapters train in fp32) and the file names the same modules."""
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.stored_weights import StoredLinear
    from z_image_fixtures import z_image_models
    models, pipe = z_image_models(tmp_path / "z", seed=1)
    net = pipe.model.network
    linears = {name + ".weight" for name, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    fp8 = {k: (v.to(torch.float8_e4m3fn) if k in linears else v).contiguous() for k, v in net.state_dict().items()}
    unet = models / "diffusion_models" / "z_image_turbo_bf16.safetensors"
    save_safetensors(fp8, unet)
    opts = options(tmp_path, "z_image", model=unet)
    stored = FT.load_base(unet)
    trainer, network, stored, ds, steps = build(opts, stored)
    assert all(isinstance(t, StoredLinear) for t in network.targets.values())
    trainer.run(progress=False)
    assert stored.model.network.layers[0].attention.qkv.weight.dtype == torch.float8_e4m3fn
    out = saved(opts, trainer, network, stored, ds)
    assert_file_loads_as_trained(stored, network, out, fixed_batch(trainer))  # onto the float8 network too


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_gradient_checkpointing_trains_the_same_adapters(tmp_path, family):
    plain = train_lora(options(tmp_path, family, steps=3, output=tmp_path / "a.safetensors", run_dir=tmp_path / "ra"))
    opts = options(tmp_path, family, steps=3, output=tmp_path / "b.safetensors", run_dir=tmp_path / "rb",
                   gradient_checkpointing=True)
    pipe = FT.load_base(opts.model)
    ckpt = train_lora(opts, pipe=pipe)
    blocks = [b for name in ("double_blocks", "single_blocks", "joint_blocks")
              for b in getattr(pipe.model.network, name, [])]
    assert blocks and all(b._opensd_checkpointed for b in blocks)
    with safe_open(plain, "pt") as a, safe_open(ckpt, "pt") as b:
        assert (a.metadata()["ss_gradient_checkpointing"], b.metadata()["ss_gradient_checkpointing"]) == ("False", "True")
        for k in a.keys():
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), rtol=1e-3, atol=1e-5)


def test_two_processes_train_the_flux_lora_one_process_trains_with_the_whole_batch(tmp_path):
    """Data-parallel under torchrun (2 gloo processes): each rank keeps its rows of the whole batch's
    draws (5 images, batch 4: the second step's single row lands on one rank)."""
    from safetensors.torch import load_file

    from test_ddp_training import assert_close, run_cmd
    model = tmp_path / "model-flux"
    FOLDERS["flux"](model)
    data = make_data(tmp_path, n=5, folder="1_sks thing", size=(32, 32))
    outs = {}
    for procs in (1, 2):
        out = tmp_path / f"out{procs}.safetensors"
        run_cmd(["-m", "opensd.cli", "train", "lora", "--data", str(data), "--model", str(model), "--output", str(out),
                 "--run-dir", str(tmp_path / f"run{procs}"), "--steps", "2", "--batch-size", "4", "--resolution", "32",
                 "--bucket-step", "16", "--lr", "1e-3", "--lr-scheduler", "constant", "--rank", "4", "--save-fp32",
                 "--threads", "1", "--no-progress"], procs)
        outs[procs] = load_file(out)
    assert_close(outs[1], outs[2], "flux lora")
