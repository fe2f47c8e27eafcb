"""Tiny autoencoders (TAESD family): madebyollin's and diffusers' file layouts load, and decode and
encode equal to diffusers' AutoencoderTiny on the same random weights; the pipeline uses them for
previews and, when asked, for the final decode."""
import numpy as np
from PIL import Image
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


def test_cli_vae_decoder_taesd(pipe_and_tiny, tmp_path, capsys):
    # in this process: a new one per run costs a torch import (seconds on a busy 2-core machine);
    # the next test runs the command as its own process
    from opensd.cli import main

    _, _, decoder = pipe_and_tiny
    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors")

    def run(*extra):
        code = main(["generate", "x", "--model", str(ckpt), "--steps", "1", "--seed", "2", "-o",
                     str(tmp_path / "o.png"), *extra])
        return code, capsys.readouterr().err

    code, err = run("--vae-decoder", "taesd")
    assert code == 2 and err.strip().splitlines() == [
        "opensd: error: taesd: --vae-decoder taesd needs --taesd FILE_OR_FOLDER "
        "(taesd_decoder.safetensors / taesdxl_decoder.safetensors, or their folder)"], err
    code, err = run("--vae-decoder", "taesd", "--taesd", str(tmp_path))  # a folder: the model's family has none
    assert code == 2 and "no tiny autoencoder is published for this model's latent space" in err
    code, err = run("--vae-decoder", "taesd", "--taesd", str(decoder))
    assert code == 0 and (tmp_path / "o.png").is_file(), err


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


# --- TAESD and step caching in every face: A1111's settings, the CLI, the infotext ------------------

def _both_files(folder):
    """taesd_decoder / taesd_encoder files of the reference's weights in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, sd in _madebyollin(_reference()).items():
        save_safetensors(sd, folder / f"taesd_{part}.safetensors")
    return [folder / "taesd_decoder.safetensors", folder / "taesd_encoder.safetensors"]


@torch.no_grad()
def test_pipeline_encodes_with_the_tiny_encoder_and_records_it(tmp_path):
    from PIL import Image

    from opensd.pipeline.infotext import parse_infotext
    from opensd.pipeline.infotext_params import image_infotext, recorded

    pipe = load(write_random_checkpoint(tmp_path / "tiny.safetensors"), precision="fp32")
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    full = pipe.encode(init)
    pipe.vae_encoder = "taesd"
    with pytest.raises(InvalidArgument, match="^vae_encoder: taesd needs a tiny autoencoder encoder file"):
        pipe.encode(init)
    pipe.use_tiny_vae(_both_files(tmp_path / "vae_approx"))
    x = torch.from_numpy(np.array(init)).permute(2, 0, 1)[None].float() / 127.5 - 1
    tiny = pipe.encode(init)
    torch.testing.assert_close(tiny, pipe.tiny_vae.encode(x), rtol=1e-5, atol=1e-5)
    assert tiny.shape == full.shape and not torch.allclose(tiny, full)
    pipe.vae_decoder = "taesd"
    (image,) = pipe.img2img(init, "x", steps=2, seed=1, strength=0.5)
    text = image_infotext(pipe, image, img2img=True)
    assert "VAE Encoder: TAESD" in text and "VAE Decoder: TAESD" in text and "DeepCache" not in text
    rec = recorded(*parse_infotext(text))
    assert (rec.vae_encoder, rec.vae_decoder, rec.deep_cache) == ("taesd", "taesd", None)
    pipe.vae_encoder = "full"  # a txt2img without hires encodes nothing: no encoder key
    assert "VAE Encoder" not in image_infotext(pipe, pipe.txt2img("x", steps=1, seed=1)[0])


def test_cli_records_taesd_and_deep_cache_and_from_reuses_them(tmp_path, capsys):
    import subprocess
    import sys

    from opensd.pipeline.infotext import parse_infotext, read_infotext

    ckpt = write_random_checkpoint(tmp_path / "tiny.safetensors")
    decoder = _both_files(tmp_path / "approx")[0]

    def run(out, *extra):
        return subprocess.run([sys.executable, "-m", "opensd.cli", "generate", "-m", str(ckpt), "-o", str(out),
                               *extra], capture_output=True, text=True, timeout=300)

    first = tmp_path / "a.png"
    r = run(first, "x", "--steps", "4", "--seed", "2", "--vae-decoder", "taesd", "--taesd", str(decoder),
            "--deep-cache", "3")
    assert r.returncode == 0, r.stderr
    params = parse_infotext(read_infotext(first))[2]
    assert params["VAE Decoder"] == "TAESD" and params["DeepCache interval"] == "3"
    again = tmp_path / "b.png"
    r = run(again, "--from", str(first), "--taesd", str(decoder))
    assert r.returncode == 0 and "differs" not in r.stderr, r.stderr
    assert read_infotext(again) == read_infotext(first)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    # the mistake in this process (the runs above were processes of their own: a new one costs a torch import)
    from opensd.cli import main
    assert main(["generate", "-m", str(ckpt), "-o", str(tmp_path / "c.png"), "--from", str(first)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "opensd: error: taesd: --vae-decoder taesd needs --taesd FILE_OR_FOLDER "
        "(taesd_decoder.safetensors / taesdxl_decoder.safetensors, or their folder)"], err


def test_a1111_vae_methods_use_the_tiny_autoencoder_of_the_models_folder(tmp_path, monkeypatch):
    import base64
    import io
    import json

    from fastapi.testclient import TestClient
    from server_live import BASE, models_dir

    from opensd.pipeline import tiny_vae
    from opensd.server.app import create_app
    from opensd.server.settings import Settings

    models = models_dir(tmp_path)
    # the tiny random model's latents are 4-channel, as SD 1.x's: let TAESD's files count as its own
    monkeypatch.setitem(tiny_vae._STEMS, "small", "taesd")
    request = {"prompt": "a red apple", "steps": 2, "seed": 3, "width": 64, "height": 64,
               "override_settings": {"sd_model_checkpoint": "tiny.safetensors"}}

    def post(client, route, settings, **extra):
        body = {**request, **extra, "override_settings": {**request["override_settings"], **settings}}
        return client.post(f"/sdapi/v1/{route}", json=body)

    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        r = post(client, "txt2img", {"sd_vae_decode_method": "TAESD"})
        assert r.status_code == 422 and r.json()["detail"].startswith(
            "sd_vae_decode_method: TAESD needs the tiny autoencoder's decoder file for this model"), r.text
        r = post(client, "txt2img", {"sd_vae_decode_method": "Fast"})
        assert r.status_code == 422 and "is not one of Full, TAESD" in r.json()["detail"]
    _both_files(models / "VAE-approx")
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        full = post(client, "txt2img", {})
        fast = post(client, "txt2img", {"sd_vae_decode_method": "TAESD"})
        init = full.json()["images"][0]
        i2i = post(client, "img2img", {"sd_vae_encode_method": "TAESD"}, init_images=[init], denoising_strength=0.5)
        again = post(client, "txt2img", {})  # the setting held for its request only
    for r in (full, fast, i2i, again):
        assert r.status_code == 200, r.text
    texts = [json.loads(r.json()["info"])["infotexts"][0] for r in (full, fast, i2i, again)]
    assert "VAE Decoder: TAESD" in texts[1] and "VAE Encoder: TAESD" in texts[2]
    assert "VAE Decoder" not in texts[2] and "TAESD" not in texts[0] + texts[3]
    assert "override_settings.sd_vae_decode_method" not in json.loads(fast.json()["info"]).get("unsupported_fields", [])
    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))) for r in (full, fast, again)]
    assert not np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2])


def test_infotext_to_request_sets_the_tiny_autoencoder_settings():
    from opensd.server.infotext_request import request_from_infotext

    text = "x\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, VAE Encoder: TAESD, VAE Decoder: TAESD"
    request, notes = request_from_infotext(text, [])
    assert request["override_settings"]["sd_vae_decode_method"] == "TAESD"
    assert request["override_settings"]["sd_vae_encode_method"] == "TAESD" and notes == []
