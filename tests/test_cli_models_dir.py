"""`opensd generate` finds every model by name in one models folder (A1111 or ComfyUI layout), set by
--models-dir, $OPENSD_MODELS_DIR or the config file, through the same ModelFolders.resolve the server uses."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.cli import build_parser, main
from opensd.cli.serve import settings_from
from opensd.errors import InvalidArgument
from opensd.library import user_config
from opensd.library.hashes import default_cache, legacy_model_hash
from opensd.library.models_dir import ModelFolders
from opensd.library.synthetic import TINY, random_state_dict, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.pipeline.infotext import parse_infotext, read_infotext
from reference import randomize_
from test_lora_pipeline import write_random_lora

FAST = ["--steps", "2", "--seed", "3"]


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    """An A1111 install: models/{Stable-diffusion,Lora,VAE,ControlNet} and embeddings/ beside models/."""
    root = tmp_path_factory.mktemp("webui")
    models = root / "models"
    for d in ("Stable-diffusion/sd15", "Lora", "VAE", "ControlNet"):
        (models / d).mkdir(parents=True)
    (root / "embeddings").mkdir()
    write_random_checkpoint(models / "Stable-diffusion" / "sd15" / "dream.safetensors", dtype=torch.float32)
    write_random_checkpoint(models / "Stable-diffusion" / "other.safetensors", seed=1, dtype=torch.float32)
    write_random_lora(models / "Lora" / "style.safetensors", 1)
    vae = {k.removeprefix("first_stage_model."): v for k, v in random_state_dict(TINY, seed=7).items()
           if k.startswith("first_stage_model.")}
    save_safetensors(vae, models / "VAE" / "soft.safetensors")
    save_safetensors({"emb_params": torch.randn(2, TINY.text_encoders[0].width,
                                                generator=torch.Generator().manual_seed(0))},
                     root / "embeddings" / "shinystyle.safetensors")
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet, hint_downscale=8)), seed=1, std=0.1)
    save_controlnet(net, models / "ControlNet" / "control_tiny_canny.safetensors", "small", dtype=torch.float32)
    edges = Image.new("RGB", (64, 64))
    ImageDraw.Draw(edges).rectangle((16, 16, 48, 48), outline=(255, 255, 255), width=3)
    edges.save(root / "edges.png")
    return models


def _params(path):
    return parse_infotext(read_infotext(path))[2]


def _px(path):
    return np.asarray(Image.open(path))


def test_names_find_checkpoint_vae_lora_embedding_and_controlnet(webui, tmp_path):
    by_name, by_path = tmp_path / "a.png", tmp_path / "b.png"
    control = f"{webui.parent / 'edges.png'}"
    assert main(["generate", "a shinystyle cat <lora:style:0.7>", "--models-dir", str(webui), "-m", "dream",
                 "--vae", "soft", "--control", f"canny,{control}", *FAST, "-o", str(by_name)]) == 0
    params = _params(by_name)
    assert params["Model"] == "dream" and params["VAE"] == "soft.safetensors"
    assert params["TI hashes"].startswith("shinystyle: ") and params["Lora hashes"].startswith("style: ")
    assert params["ControlNet 0"].split(", ")[1].startswith("Model: control_tiny_canny [")
    sd = webui / "Stable-diffusion"
    assert main(["generate", "a shinystyle cat <lora:style:0.7>", "-m", str(sd / "sd15" / "dream.safetensors"),
                 "--vae", str(webui / "VAE" / "soft.safetensors"), "--embeddings-dir", str(webui.parent / "embeddings"),
                 "--loras-dir", str(webui / "Lora"),
                 "--control", f"{webui / 'ControlNet' / 'control_tiny_canny.safetensors'},{control}",
                 *FAST, "-o", str(by_path)]) == 0
    assert np.array_equal(_px(by_name), _px(by_path))


@pytest.mark.parametrize("spelling", ["sd15/dream.safetensors", "sd15/dream", "DREAM.safetensors", "dream [{short}]",
                                      "{short}", "{legacy}", "wrongname [{short}]"])
def test_checkpoint_spellings(webui, tmp_path, spelling, monkeypatch):
    path = webui / "Stable-diffusion" / "sd15" / "dream.safetensors"
    short = default_cache().sha256(path)[:10]  # A1111 hashes a model when it loads it; so did we, earlier
    name = spelling.format(short=short, legacy=legacy_model_hash(path))
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(webui))
    out = tmp_path / "x.png"
    assert main(["generate", "a cat", "-m", name, *FAST, "-o", str(out)]) == 0
    assert _params(out)["Model hash"] == short


def test_ambiguous_and_unknown_names_are_one_line(webui, tmp_path, capsys):
    (webui / "Lora" / "sub").mkdir(exist_ok=True)
    write_random_lora(webui / "Lora" / "sub" / "style.ckpt.safetensors", 2)
    twin = webui / "Stable-diffusion" / "dream.ckpt"
    twin.write_bytes((webui / "Stable-diffusion" / "other.safetensors").read_bytes())
    try:
        for argv, words in (
            (["-m", "dream"], ["model:", "several", "sd15/dream.safetensors", "dream.ckpt"]),
            (["-m", "nosuch"], ["model:", "no model named 'nosuch'", "other.safetensors"]),
            (["--vae", "nosuch"], ["vae:", "no model named"]),
            (["-m", "other", "--lora", "nosuch"], ["lora:", "nosuch"]),
            (["-m", "other", "--control", f"nosuch,{webui.parent / 'edges.png'}"], ["control", "nosuch"]),
        ):
            capsys.readouterr()
            assert main(["generate", "a cat", "--models-dir", str(webui), *argv, *FAST,
                         "-o", str(tmp_path / "x.png")]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and all(w in err[0] for w in words), (argv, err)
    finally:
        twin.unlink()
        (webui / "Lora" / "sub" / "style.ckpt.safetensors").unlink()
    assert not (tmp_path / "x.png").exists()


def test_without_a_folder_a_name_says_how_to_set_one(tmp_path, capsys):
    assert main(["generate", "a cat", "-m", "dream", *FAST, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--models-dir" in err[0] and "OPENSD_MODELS_DIR" in err[0]
    assert main(["generate", "a cat", "-m", "opensd-emoji", "--steps", "1", "-o", str(tmp_path / "b.png")]) == 0


def test_comfyui_layout_from_the_config_file(tmp_path, monkeypatch, capsys):
    models = tmp_path / "ComfyUI" / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "loras").mkdir()
    write_random_checkpoint(models / "checkpoints" / "tiny.safetensors", dtype=torch.float32)
    write_random_lora(models / "loras" / "ink.safetensors", 3)
    config = tmp_path / "conf" / "config.toml"
    config.parent.mkdir()
    config.write_text('models_dir = "../ComfyUI/models"\n')  # relative to the config file's folder
    monkeypatch.setenv("OPENSD_CONFIG", str(config))
    out = tmp_path / "x.png"
    assert main(["generate", "a cat", "-m", "tiny", "--lora", "ink:0.5", *FAST, "-o", str(out)]) == 0
    assert _params(out)["Extra LoRAs"] == "ink: 0.5/0.5"


def test_models_dir_precedence_and_config_mistakes(tmp_path, monkeypatch):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    config = tmp_path / "config.toml"
    monkeypatch.setenv("OPENSD_CONFIG", str(config))
    assert user_config.models_dir() is None  # no file, no variable
    config.write_text(f'models_dir = "{c}"\n')
    assert user_config.models_dir() == c
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(b))
    assert user_config.models_dir() == b
    assert user_config.models_dir(a) == a
    monkeypatch.delenv("OPENSD_MODELS_DIR")
    for text, words in (('models_dir = "nowhere"', ["is not a folder", str(config)]),
                        ('model_dir = "x"', ["unknown setting 'model_dir'", "models_dir"]),
                        ("models_dir = 3", ["must be a non-empty string"]),
                        ("models_dir = ", ["cannot read"])):
        config.write_text(text + "\n")
        with pytest.raises(InvalidArgument) as e:
            user_config.models_dir()
        assert all(w in str(e.value) for w in words), str(e.value)
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(tmp_path / "gone"))
    with pytest.raises(InvalidArgument, match="OPENSD_MODELS_DIR"):
        user_config.models_dir()


def test_the_server_reads_the_same_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(tmp_path))
    args = build_parser().parse_args(["serve", "--outputs-dir", str(tmp_path / "out")])
    assert settings_from(args).models_dir == tmp_path


def test_a_title_resolves_in_the_server_too(webui):
    path = webui / "Stable-diffusion" / "other.safetensors"
    short = default_cache().sha256(path)[:10]
    folders = ModelFolders(webui)
    assert folders.resolve("checkpoints", f"other.safetensors [{short}]") == path.resolve()
    assert folders.resolve("checkpoints", short) == path.resolve()
    assert folders.resolve("loras", "style") == (webui / "Lora" / "style.safetensors").resolve()
    assert [m.name for m in folders.list("embeddings")] == ["shinystyle.safetensors"]


def test_upscale_and_hires_find_upscalers_in_the_models_folder(tmp_path, monkeypatch):
    pytest.importorskip("spandrel")
    from upscaler_files import srvgg, write_safetensors

    models = tmp_path / "models"
    write_safetensors(models / "ESRGAN" / "2x-tiny.safetensors", srvgg(scale=2))
    (models / "Stable-diffusion").mkdir()
    write_random_checkpoint(models / "Stable-diffusion" / "tiny.safetensors", dtype=torch.float32)
    Image.new("RGB", (16, 12), "red").save(tmp_path / "in.png")
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(models))
    assert main(["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "up.png"), "-m", "2x-tiny"]) == 0
    assert Image.open(tmp_path / "up.png").size == (32, 24)
    out = tmp_path / "hires.png"
    assert main(["generate", "a cat", "-m", "tiny", "--hires", "--hires-upscaler", "2x-tiny", "--hires-scale", "1.5",
                 "--hires-steps", "1", *FAST, "-o", str(out)]) == 0
    assert _params(out)["Hires upscaler"] == "2x-tiny" and Image.open(out).size == (96, 96)


def test_from_an_image_picks_its_checkpoint_from_the_models_folder(webui, tmp_path, monkeypatch, capsys):
    first, again = tmp_path / "a.png", tmp_path / "b.png"
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(webui))
    assert main(["generate", "a cat", "-m", "other", *FAST, "-o", str(first)]) == 0
    capsys.readouterr()
    assert main(["generate", "--from", str(first), "-o", str(again)]) == 0  # no -m: the image's model
    assert "differs" not in capsys.readouterr().err
    assert np.array_equal(_px(first), _px(again))
