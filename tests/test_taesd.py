"""Tiny autoencoders (TAESD family): madebyollin's and diffusers' file layouts load, and decode and
encode equal to diffusers' AutoencoderTiny on the same random weights; the pipeline uses them for
previews and, when asked, for the final decode."""
import numpy as np
import pytest
import torch
from diffusers import AutoencoderTiny

from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models import config as C
from opensd.pipeline.pipeline import load
from opensd.pipeline.tiny_vae import find_tiny_vae, load_tiny_vae, tiny_vae_stem
from reference import randomize_


def _reference(latent_channels=4):
    return randomize_(AutoencoderTiny(latent_channels=latent_channels), seed=3, std=0.05).eval()


def _madebyollin(ref) -> dict:
    """madebyollin's separate files from diffusers' weights: the same Sequential numbers, the
    decoder's one higher (its index 0 is the clamp, which diffusers applies outside the list)."""
    parts = {"encoder": {}, "decoder": {}}
    for k, v in ref.state_dict().items():
        part, _, index, rest = k.split(".", 3)
        parts[part][f"{int(index) + (part == 'decoder')}.{rest}"] = v.clone()
    return parts


def _cfg(channels):
    return C.sd1() if channels == 4 else TINY.__class__(
        "small", TINY.unet, C.VAEConfig(embed_dim=16, z_channels=16), TINY.text_encoders)


def _inputs(channels):
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, channels, 12, 10, generator=g) * 2, torch.rand(1, 3, 64, 48, generator=g) * 2 - 1


def test_published_madebyollin_key_names():
    parts = _madebyollin(_reference())
    enc, dec = parts["encoder"], parts["decoder"]
    assert enc["0.weight"].shape == (64, 3, 3, 3) and "1.conv.0.weight" in enc and "1.conv.4.bias" in enc
    assert "2.bias" not in enc and enc["14.weight"].shape == (4, 64, 3, 3)
    assert not any(k.startswith("0.") for k in dec) and dec["1.weight"].shape == (64, 4, 3, 3)
    assert "7.bias" not in dec and dec["19.weight"].shape == (3, 64, 3, 3) and "18.conv.2.weight" in dec


@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("layout", ["madebyollin", "diffusers", "comfyui"])
@torch.no_grad()
def test_both_layouts_load_and_equal_diffusers(tmp_path, layout, channels):
    ref = _reference(channels)
    if layout == "diffusers":
        path = tmp_path / "diffusion_pytorch_model.safetensors"
        save_safetensors(ref.state_dict(), path)
        paths = [path]
    elif layout == "comfyui":
        parts = _madebyollin(ref)
        path = tmp_path / "taesd.safetensors"
        save_safetensors({f"taesd_{p}.{k}": v for p, sd in parts.items() for k, v in sd.items()}
                         | {"vae_scale": torch.tensor(1.0)}, path)
        paths = [path]
    else:
        parts = _madebyollin(ref)
        paths = [tmp_path / "taesd_decoder.safetensors", tmp_path / "taesd_encoder.pth"]
        save_safetensors(parts["decoder"], paths[0])
        torch.save(parts["encoder"], paths[1])
    ours = load_tiny_vae(paths, _cfg(channels), "cpu")
    z, x = _inputs(channels)
    torch.testing.assert_close(ours.decode(z), ref.decode(z).sample, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.encode(x), ref.encode(x).latents, rtol=1e-5, atol=1e-5)


def test_decoder_only_file_and_wrong_latent_channels(tmp_path):
    parts = _madebyollin(_reference(16))
    path = tmp_path / "taesd3_decoder.safetensors"
    save_safetensors(parts["decoder"], path)
    with pytest.raises(CheckpointError, match="16-channel latents; the model's have 4"):
        load_tiny_vae([path], C.sd1(), "cpu")
    tiny = load_tiny_vae([path], _cfg(16), "cpu")
    assert tiny.encoder is None and tiny.decode(torch.zeros(1, 16, 4, 4)).shape == (1, 3, 32, 32)
    junk = tmp_path / "junk.safetensors"
    save_safetensors({"model.weight": torch.zeros(2)}, junk)
    with pytest.raises(CheckpointError, match="not a tiny autoencoder"):
        load_tiny_vae([junk], C.sd1(), "cpu")


def test_files_are_found_by_the_models_latent_space(tmp_path):
    a1111, comfy = tmp_path / "VAE-approx", tmp_path / "vae_approx"
    a1111.mkdir()
    (comfy / "taesd").mkdir(parents=True)
    for name in ("taesdxl_decoder.pth", "taesdxl_encoder.safetensors", "taesd3_decoder.safetensors"):
        (a1111 / name).write_bytes(b"x")
    (comfy / "taesd" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    assert tiny_vae_stem(C.sdxl()) == "taesdxl" and tiny_vae_stem(TINY) is None
    assert find_tiny_vae([a1111, comfy], C.sdxl()) == [a1111 / "taesdxl_decoder.pth", a1111 / "taesdxl_encoder.safetensors"]
    assert find_tiny_vae([a1111, comfy], C.sd1()) == [comfy / "taesd" / "diffusion_pytorch_model.safetensors"]
    assert find_tiny_vae([a1111, comfy], TINY) == []  # the built-in-style model has a latent space of its own


@pytest.fixture(scope="module")
def pipe_and_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("m")
    pipe = load(write_random_checkpoint(folder / "tiny.safetensors"), precision="fp32")
    ref = _reference()
    path = folder / "taesd_decoder.safetensors"
    save_safetensors(_madebyollin(ref)["decoder"], path)
    return pipe, ref, path


@torch.no_grad()
def test_pipeline_decodes_and_previews_with_the_tiny_decoder(pipe_and_tiny):
    pipe, ref, path = pipe_and_tiny
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    cheap = np.asarray(pipe.preview(latents))
    pipe.vae_decoder = "taesd"
    try:
        with pytest.raises(InvalidArgument, match="^vae_decoder: taesd needs"):
            pipe.txt2img("x", steps=1, seed=1)
        pipe.use_tiny_vae([path])
        want = ((ref.decode(latents).sample[0].clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()
        (image,) = pipe.decode(latents)
        assert np.abs(np.asarray(image).astype(float) - want).max() <= 1
        preview = np.asarray(pipe.preview(latents))
        assert preview.shape == (64, 64, 3) and np.abs(preview.astype(float) - want).max() <= 1
        assert cheap.shape[:2] == (8, 8)  # without a tiny decoder: the linear latent map
        fast = pipe.txt2img("x", steps=1, seed=1)[0]
        pipe.vae_decoder = "full"
        full = pipe.txt2img("x", steps=1, seed=1)[0]
        assert fast.size == full.size and not np.array_equal(np.asarray(fast), np.asarray(full))
    finally:
        pipe.vae_decoder, pipe.tiny_vae = "full", None


def test_cli_vae_decoder_taesd(pipe_and_tiny, tmp_path):
    import subprocess
    import sys

    _, _, decoder = pipe_and_tiny
    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors")

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "opensd.cli", "generate", "x", "--model", str(ckpt), "--steps",
                               "1", "--seed", "2", "-o", str(tmp_path / "o.png"), *extra],
                              capture_output=True, text=True, timeout=300)

    r = run("--vae-decoder", "taesd")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "opensd: error: taesd: --vae-decoder taesd needs --taesd FILE_OR_FOLDER "
        "(taesd_decoder.safetensors / taesdxl_decoder.safetensors, or their folder)"], r.stderr
    r = run("--vae-decoder", "taesd", "--taesd", str(tmp_path))  # a folder: the model's family has none
    assert r.returncode == 2 and "no tiny autoencoder is published for this model's latent space" in r.stderr
    r = run("--vae-decoder", "taesd", "--taesd", str(decoder))
    assert r.returncode == 0, r.stderr


def test_server_model_cache_gives_previews_from_a_vae_approx_folder(tmp_path):
    from dataclasses import replace

    from opensd.library.models_dir import ModelFolders
    from opensd.server.model_cache import ModelCache

    (tmp_path / "Stable-diffusion").mkdir()
    ckpt = write_random_checkpoint(tmp_path / "Stable-diffusion" / "m.safetensors")
    (tmp_path / "vae_approx").mkdir()
    save_safetensors(_madebyollin(_reference())["decoder"], tmp_path / "vae_approx" / "taesd_decoder.safetensors")

    def load_as_sd1(path, **kw):  # the real pipeline, its config naming SD 1.x's latent space
        pipe = load(path, **kw)
        pipe.config = replace(pipe.config, family="sd1")
        return pipe

    pipe = ModelCache(ModelFolders(tmp_path), loader=load_as_sd1).get(ckpt)
    assert pipe.tiny_vae is not None and pipe.tiny_vae.encoder is None
    latents = torch.randn(1, 4, 8, 8)
    assert pipe.preview(latents).size == (64, 64)  # decoded by the tiny decoder, not the 8x8 latent map
    assert pipe.preview(latents) is None  # right after: skipped, so previews stay under a quarter of the time
