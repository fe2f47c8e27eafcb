"""Memory modes (--memory): auto picks from free device memory, medvram moves the parts in turns,
lowvram moves the UNet block by block; images are the same as in normal mode. On the CPU the moves
are to the same device, so the tests check when each move happens (Offload.log); peak VRAM is
measured by bench/gpu_check.py on a GPU."""
import numpy as np
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline import offload as O
from opensd.pipeline.pipeline import load

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors")


@pytest.fixture(scope="module")
def normal(ckpt):
    return load(ckpt, precision="fp32", memory="normal")


def _image(pipe):
    return np.asarray(pipe.txt2img("a red apple", "blurry", steps=2, seed=9)[0])


def test_auto_mode_follows_free_device_memory(normal, monkeypatch):
    model = normal.model
    total = O.module_bytes(model)
    largest = max(O.module_bytes(model.unet), O.module_bytes(*model.text_encoders), O.module_bytes(model.vae))
    monkeypatch.setattr(O, "activation_reserve", lambda model: dict.fromkeys(("text", "network", "vae"), 1000))
    for free, want in ((total + 1000, "normal"), (total + 999, "medvram"), (largest + 1000, "medvram"),
                       (largest + 999, "lowvram")):
        monkeypatch.setattr(O, "free_memory", lambda device, free=free: free)
        assert O.choose_mode("auto", CUDA, model) == want, free
    assert O.choose_mode("auto", torch.device("cpu"), model) == "normal"  # never offloads on a CPU
    assert O.choose_mode("lowvram", torch.device("cpu"), model) == "lowvram"
    with pytest.raises(InvalidArgument, match="^memory: 'tiny' is not one of auto, normal, medvram, lowvram, medvram-sdxl"):
        O.choose_mode("tiny", CUDA, model)


@pytest.mark.parametrize("family, card_gib, want", [
    ("sd1", 4, "normal"),  # the seed's promise: SD 1.5 on a 4 GB card, every part on it (2.65 GiB measured)
    ("sd1", 3, "medvram"), ("sd1", 2, "lowvram"),
    ("sdxl", 12, "normal"),  # 8.94 GiB measured
    ("sdxl", 8, "medvram"),  # 5.22 GiB measured
    ("sdxl", 6, "lowvram"),
])
def test_auto_mode_of_full_size_models_on_common_cards(family, card_gib, want, monkeypatch):
    from opensd.models import config as C
    from opensd.models.stable_diffusion import StableDiffusion
    with torch.device("meta"):
        model = StableDiffusion(getattr(C, family)()).half()
    if family == "sdxl":
        model.vae.bfloat16()  # as precision "auto" keeps SDXL's VAE out of fp16
    free = card_gib * O.GIB - (O.GIB * 6) // 10  # the CUDA context and the desktop take some
    monkeypatch.setattr(O, "free_memory", lambda device: free)
    assert O.choose_mode("auto", CUDA, model) == want


@pytest.mark.parametrize("family, want", [("sdxl", "medvram"), ("sdxl_refiner", "medvram"), ("sd1", "normal")])
def test_medvram_sdxl_is_medvram_for_sdxl_models_only(family, want, monkeypatch):
    from opensd.models import config as C
    from opensd.models.stable_diffusion import StableDiffusion
    cfg = C.sdxl_refiner() if family == "sdxl_refiner" else getattr(C, family)()
    with torch.device("meta"):
        model = StableDiffusion(cfg).half()
    monkeypatch.setattr(O, "free_memory", lambda device: 80 * O.GIB)  # auto: all fits
    assert O.choose_mode("medvram-sdxl", CUDA, model) == want


def test_moves_keep_the_weights_home_and_copy_back_only_changes(ckpt, normal, monkeypatch):
    # On a CPU device and storage are one; a clone stands in for the copy to another device, so
    # the bookkeeping runs: device copies in, home tensors back out, in-place changes kept.
    monkeypatch.setattr(O, "_to_device", lambda t, device: t.clone())
    pipe = load(ckpt, precision="fp32", memory="medvram")
    unet = list(pipe.model.unet.parameters())
    homes = [p.data_ptr() for p in unet]
    assert np.array_equal(_image(pipe), _image(normal))
    assert pipe.offload.resident == "vae"
    assert [p.data_ptr() for p in unet] == homes  # out again: pointing home, no copies kept
    pipe.offload._part_in("unet")
    assert all(p.data_ptr() != h for p, h in zip(unet, homes))  # in: device copies
    with torch.no_grad():
        unet[0].add_(1.0)  # a LoRA patched in place while the UNet is in
    changed = unet[0].detach().clone()
    pipe.offload._part_in("text")
    assert [p.data_ptr() for p in unet] == homes and torch.equal(unet[0], changed)
    assert not any(id(t) in map(id, unet) for t in pipe.offload._home)


def test_lowvram_blocks_go_home_after_they_run(ckpt, normal, monkeypatch):
    monkeypatch.setattr(O, "_to_device", lambda t, device: t.clone())
    pipe = load(ckpt, precision="fp32", memory="lowvram")
    homes = [p.data_ptr() for p in pipe.model.unet.parameters()]
    assert np.array_equal(_image(pipe), _image(normal))
    blocks = {id(p) for b in O.family_of(pipe.model.config).blocks(pipe.model) for p in b.parameters()}
    assert blocks and all(p.data_ptr() == h for p, h in zip(pipe.model.unet.parameters(), homes) if id(p) in blocks)


def test_medvram_moves_the_parts_in_turns_and_makes_the_same_image(ckpt, normal):
    pipe = load(ckpt, precision="fp32", memory="medvram")
    assert pipe.memory == "medvram" and normal.memory == "normal" and normal.offload is None
    image = _image(pipe)
    assert np.array_equal(image, _image(normal))
    log = pipe.offload.log
    # prompt encoding, sampling, decoding: each part in when called, the one before out first
    assert log == [("text", "in"), ("text", "out"), ("unet", "in"), ("unet", "out"), ("vae", "in")], log
    log.clear()
    _image(pipe)  # the next image: the VAE leaves for the text encoder, and so on
    assert log[:2] == [("vae", "out"), ("text", "in")] and log[-1] == ("vae", "in")


def test_lowvram_runs_the_unet_one_block_at_a_time(ckpt, normal):
    pipe = load(ckpt, precision="fp32", memory="lowvram")
    image = _image(pipe)
    assert np.array_equal(image, _image(normal))
    blocks = pipe.family.blocks(pipe.model)
    log = pipe.offload.log
    unet = [e for e in log if e[0].startswith("unet.")]
    # every block in right before it runs and out right after, in the order the UNet runs them
    one_call = [(f"unet.{i}", where) for i in range(len(blocks)) for where in ("in", "out")]
    assert unet[:len(one_call)] == one_call
    assert len(unet) == len(one_call) * 2  # two sampling steps, one batched CFG call each
    assert ("unet", "in") in log and log[-1] == ("vae", "in")


def test_set_memory_mode_back_to_normal_removes_the_hooks(ckpt):
    pipe = load(ckpt, precision="fp32", memory="medvram")
    hooks = pipe.offload
    O.set_memory_mode(pipe, "normal")
    assert pipe.offload is None and pipe.memory == "normal"
    _image(pipe)
    assert hooks.log == []


def test_cli_memory_flag(ckpt, tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "opensd.cli", "generate", "x", "--model", str(ckpt), "--steps", "1",
                        "--memory", "lowvram", "-o", str(tmp_path / "a.png")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "; memory: lowvram" in r.stderr


@pytest.mark.parametrize("flags,want", [([], "auto"), (["--memory", "medvram"], "medvram"),
                                        (["--medvram"], "medvram"), (["--lowvram"], "lowvram")])
def test_serve_memory_flag_reaches_every_loaded_model(ckpt, tmp_path, flags, want):
    from opensd import cli
    from opensd.cli.serve import settings_from
    from opensd.server.app import ServerState

    args = cli.build_parser().parse_args(["serve", "--outputs-dir", str(tmp_path / "out"), *flags])
    settings = settings_from(args)
    assert settings.memory == want
    settings.start_worker = False
    pipe = ServerState(settings).cache.get(ckpt)
    assert pipe.memory == ("normal" if want == "auto" else want)  # auto never offloads on a CPU
    assert (pipe.offload is None) == (want == "auto")


def test_serve_memory_flags_exclude_each_other(capsys):
    from opensd import cli

    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--medvram", "--memory", "lowvram"])
    assert "not allowed with argument" in capsys.readouterr().err
