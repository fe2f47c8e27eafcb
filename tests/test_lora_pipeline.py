"""LoRAs in generation: prompt tags, explicit specs, switching sets, CLI flags, infotext."""
import numpy as np
import pytest
import torch

from opensd.adapters.lora import LoraSpec
from opensd.adapters.lora_keys import lora_modules
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.stable_diffusion import StableDiffusion
from opensd.pipeline.infotext import read_infotext
from opensd.pipeline.pipeline import load

GEN = {"steps": 2, "seed": 5, "width": 64, "height": 64, "cfg": 5.0}


def write_random_lora(path, seed, rank=4):
    """A kohya LoRA over all attention and text-encoder modules of the tiny model."""
    with torch.device("meta"):
        model = StableDiffusion(TINY)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for m in lora_modules(model):
        if m.component == "unet" and ".attentions." not in m.peft:
            continue
        w = m.module.weight
        sd[f"{m.kohya}.lora_down.weight"] = torch.randn(rank, *w.shape[1:], generator=g) * 0.3
        sd[f"{m.kohya}.lora_up.weight"] = torch.randn(w.shape[0], rank, *([1] * (w.ndim - 2)), generator=g) * 0.3
        sd[f"{m.kohya}.alpha"] = torch.tensor(float(rank))
    save_safetensors(sd, path, metadata={"ss_network_module": "networks.lora"})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    ckpt = write_random_checkpoint(root / "m.safetensors", dtype=torch.float32)
    (root / "Lora" / "sub").mkdir(parents=True)
    write_random_lora(root / "Lora" / "style.safetensors", 1)
    write_random_lora(root / "Lora" / "sub" / "other.safetensors", 2)
    return root, ckpt


def _px(image):
    return np.asarray(image).astype(np.int16)


def test_prompt_tags_apply_and_switching_equals_fresh_load(files):
    root, ckpt = files
    pipe = load(ckpt, loras_dir=root / "Lora")
    base = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    (plain,) = pipe.txt2img("a cat", **GEN)
    (styled,) = pipe.txt2img("a cat <lora:style:0.9>", **GEN)
    assert np.abs(_px(plain) - _px(styled)).max() > 0
    assert [(r.name, r.unet, r.te) for r in pipe.lora_reports] == [("style", 0.9, 0.9)]
    (other,) = pipe.txt2img("a cat <lora:other:1:0.5>", **GEN)  # A1111 order: te, unet
    assert [(r.name, r.unet, r.te) for r in pipe.lora_reports] == [("other", 0.5, 1.0)]
    (again,) = pipe.txt2img("a cat", **GEN)
    assert np.array_equal(_px(again), _px(plain))
    assert all(torch.equal(v, base[k]) for k, v in pipe.model.state_dict().items())
    fresh = load(ckpt, loras_dir=root / "Lora")
    (other_fresh,) = fresh.txt2img("a cat <lora:other:1:0.5>", **GEN)
    assert np.array_equal(_px(other), _px(other_fresh))
    # the tag itself is not part of the encoded prompt: same LoRA by set_loras gives the same image
    fresh.set_loras([LoraSpec(root / "Lora" / "sub" / "other.safetensors", unet=0.5, te=1.0)])
    (explicit,) = fresh.txt2img("a cat", **GEN)
    assert np.array_equal(_px(explicit), _px(other_fresh))
    assert set(fresh.lora_hashes()) == {"other"} and len(fresh.lora_hashes()["other"]) == 12


def test_te_only_strength_changes_only_the_text_encoder(files):
    root, ckpt = files
    pipe = load(ckpt, loras_dir=root / "Lora")
    unet_before = {k: v.clone() for k, v in pipe.model.unet.state_dict().items()}
    pipe.txt2img("x <lora:style:te=1:unet=0>", **GEN)
    assert all(torch.equal(v, unet_before[k]) for k, v in pipe.model.unet.state_dict().items())


def test_unknown_lora_and_missing_folder_are_clear_errors(files):
    root, ckpt = files
    pipe = load(ckpt, loras_dir=root / "Lora")
    with pytest.raises(InvalidArgument, match="nothere"):
        pipe.txt2img("x <lora:nothere:1>", **GEN)
    with pytest.raises(InvalidArgument, match="not a number"):
        pipe.txt2img("x <lora:style:strong>", **GEN)
    with pytest.raises(InvalidArgument, match="loras_dir"):
        load(ckpt).txt2img("x <lora:style:1>", **GEN)


def test_cli_lora_flags_write_lora_hashes(files, tmp_path):
    root, ckpt = files
    out = tmp_path / "o.png"
    rc = main(["generate", "a cat <lora:other:0.7>", "--model", str(ckpt), "--steps", "2", "--width", "64",
               "--height", "64", "--seed", "1", "--loras-dir", str(root / "Lora"), "--lora", "style:0.5:1",
               "-o", str(out)])
    assert rc == 0
    text = read_infotext(out)
    assert "Lora hashes: \"style: " in text and "other: " in text
    bad = main(["generate", "x", "--model", str(ckpt), "--steps", "1", "--lora", str(tmp_path / "none.safetensors"),
                "-o", str(tmp_path / "b.png")])
    assert bad == 2
