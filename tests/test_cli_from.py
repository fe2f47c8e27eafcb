"""`opensd generate --from IMAGE` reproduces what the image's infotext records (hires fix, LoRAs given
apart from the prompt, VAE, embeddings, ControlNet units), or says exactly what differs."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.library.synthetic import TINY, random_state_dict, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.pipeline.infotext import parse_infotext, read_infotext
from reference import randomize_
from test_lora_pipeline import write_random_lora

FAST = ["--steps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("from")
    ckpt = write_random_checkpoint(root / "m.safetensors", dtype=torch.float32)
    (root / "Lora").mkdir()
    write_random_lora(root / "Lora" / "style.safetensors", 1)
    vae = {k.removeprefix("first_stage_model."): v for k, v in random_state_dict(TINY, seed=7).items()
           if k.startswith("first_stage_model.")}
    save_safetensors(vae, root / "vae.safetensors")
    (root / "emb").mkdir()
    save_safetensors({"emb_params": torch.randn(2, TINY.text_encoders[0].width,
                                                generator=torch.Generator().manual_seed(0))},
                     root / "emb" / "shinystyle.safetensors")
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet, hint_downscale=8)), seed=1, std=0.1)
    save_controlnet(net, root / "cn.safetensors", "small", dtype=torch.float32)
    edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(edges).rectangle((16, 16, 48, 48), outline=(255, 255, 255), width=3)
    edges.save(root / "edges.png")
    return root, ckpt


def _px(path):
    return np.asarray(Image.open(path))


def _params(path):
    return parse_infotext(read_infotext(path))[2]


def test_from_reproduces_a_hires_fix_image(files, tmp_path, capsys):
    root, ckpt = files
    first, again = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["generate", "a red apple", "-m", str(ckpt), *FAST, "--hires", "--hires-scale", "1.5",
                 "--hires-denoise", "0.6", "--hires-steps", "2", "--hires-prompt", "a blue pear",
                 "--hires-sampler", "Euler a", "-o", str(first)]) == 0
    params = _params(first)
    assert params["Size"] == "64x64" and params["Hires upscale"] == "1.5"  # A1111: Size is the first pass
    assert params["Denoising strength"] == "0.6" and params["Hires prompt"] == "a blue pear"
    assert params["Hires sampler"] == "Euler a" and params["Hires steps"] == "2"
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(again)]) == 0
    assert Image.open(again).size == (96, 96)
    assert np.array_equal(_px(first), _px(again))
    assert "differs" not in capsys.readouterr().err


def test_from_reapplies_loras_given_on_the_command_line(files, tmp_path, capsys):
    root, ckpt = files
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(["generate", "a cat", "-m", str(ckpt), *FAST, "--loras-dir", str(root / "Lora"),
                 "--lora", "style:0.123456789:1", "-o", str(first)]) == 0
    params = _params(first)
    assert params["Extra LoRAs"] == "style: 0.123456789/1" and params["Lora hashes"].startswith("style: ")
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "--loras-dir", str(root / "Lora"),
                 "-o", str(again)]) == 0
    assert np.array_equal(_px(first), _px(again))
    assert main(["generate", "a cat", "-m", str(ckpt), *FAST, "-o", str(plain)]) == 0
    assert not np.array_equal(_px(first), _px(plain))  # the LoRA matters
    capsys.readouterr()
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(tmp_path / "d.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "style" in err[0] and "--loras-dir" in err[0], err
    assert not (tmp_path / "d.png").exists()


def test_infotext_records_vae_embeddings_and_controlnet_and_from_names_what_is_missing(files, tmp_path, capsys):
    root, ckpt = files
    first, again, missing = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    extra = ["--vae", str(root / "vae.safetensors"), "--embeddings-dir", str(root / "emb"),
             "--control", f"{root / 'cn.safetensors'},{root / 'edges.png'},weight=0.8,end=0.9"]
    assert main(["generate", "a shinystyle cat", "-m", str(ckpt), *FAST, *extra, "-o", str(first)]) == 0
    params = _params(first)
    assert params["VAE"] == "vae.safetensors" and len(params["VAE hash"]) == 10
    assert params["TI hashes"].startswith("shinystyle: ")
    unit = params["ControlNet 0"]
    assert unit.startswith("Module: none, Model: cn [") and "Weight: 0.8" in unit and "Guidance End: 0.9" in unit
    assert main(["generate", "--from", str(first), "-m", str(ckpt), *extra, "-o", str(again)]) == 0
    assert np.array_equal(_px(first), _px(again))
    capsys.readouterr()
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(missing)]) == 0
    err = capsys.readouterr().err
    for word in ("VAE", "TI hashes", "ControlNet 0", "--control", "--vae", "--embeddings-dir"):
        assert word in err, (word, err)
