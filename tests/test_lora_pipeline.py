"""LoRAs in generation: prompt tags, explicit specs, switching sets, CLI flags, infotext."""
import re

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



def _rank8_up(sd, k):
    sd[f"{k}.lora_up.weight"] = torch.cat([sd[f"{k}.lora_up.weight"]] * 2, dim=1)


def _flat_down(sd, k):
    sd[f"{k}.lora_down.weight"] = sd[f"{k}.lora_down.weight"].flatten()[:4]


def _loha(sd, k):
    up, down = sd.pop(f"{k}.lora_up.weight").flatten(1), sd.pop(f"{k}.lora_down.weight").flatten(1)
    sd.update({f"{k}.hada_w1_a": up, f"{k}.hada_w1_b": down[:, :5], f"{k}.hada_w2_a": up, f"{k}.hada_w2_b": down})


@pytest.mark.parametrize("edit, message", [
    # were bare PyTorch errors (a 500 over HTTP) from matching the file: its factors do not combine
    (_rank8_up, r"have other shapes, e\.g\. \S+: up \(\d+, 8(, 1, 1)?\) down \(4, "),
    (_flat_down, r"have other shapes, e\.g\. \S+: up \(\d+, 4(, 1, 1)?\) down \(4,\) vs weight"),
    (_loha, r"have other shapes, e\.g\. \S+: loha factors hada_w1_a \("),
    # a NaN alpha made every image NaN ('the model is broken'); a vector was a bare RuntimeError
    (lambda sd, k: sd.update({f"{k}.alpha": torch.tensor(float("nan"))}),
     r"\.alpha: alpha must be one finite number, not nan"),
    (lambda sd, k: sd.update({f"{k}.alpha": torch.ones(3)}),
     r"alpha must be one finite number, not a tensor of shape \(3,\)"),
], ids=["rank 8 up on rank 4 down", "1-D down", "LoHa factors that do not combine", "NaN alpha", "alpha vector"])
def test_hostile_lora_factors_are_one_line(files, tmp_path, edit, message):
    from opensd.checkpoints.files import read_state_dict
    from opensd.errors import CheckpointError
    root, ckpt = files
    sd = read_state_dict(root / "Lora" / "style.safetensors")
    for k in {k.rsplit(".", 2)[0] for k in sd if k.endswith("lora_up.weight")}:
        edit(sd, k)
    (tmp_path / "Lora").mkdir()
    save_safetensors(sd, tmp_path / "Lora" / "bad.safetensors")
    pipe = load(ckpt, loras_dir=tmp_path / "Lora")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: .*" + message):
        pipe.txt2img("x <lora:bad:1>", **GEN)
    assert pipe.txt2img("x", **GEN)  # the pipeline still generates

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


def test_hires_pass_takes_its_prompts_loras_and_firstpass_conds_encodes_before_them(files):
    """A1111 activates the hires prompt's LoRAs for the hires pass (and the first prompt's again for
    the next image); with hires_fix_use_firstpass_conds the hires prompts are encoded under the first
    pass's LoRAs while the UNet still takes the hires prompt's."""
    from opensd.pipeline.params import Hires

    root, ckpt = files
    pipe = load(ckpt, loras_dir=root / "Lora")

    def run(hr_prompt, firstpass_conds=False, **kw):
        hires = Hires(scale=1.5, upscaler="Latent", denoise=0.6, prompt=hr_prompt, firstpass_conds=firstpass_conds)
        return [_px(i) for i in pipe.txt2img("a cat", hires=hires, **{**GEN, **kw})]

    plain = run(None)[0]
    te_only = "a cat <lora:style:1:0>"  # A1111's order: text encoder 1, UNet 0
    assert np.abs(run(te_only)[0] - plain).max() > 0  # the hires prompt's LoRA acts in its pass
    # encoded under the first pass's LoRAs (none), and this LoRA has no UNet part: as if not named
    assert np.array_equal(run(te_only, firstpass_conds=True)[0], plain)
    unet_only = "a cat <lora:style:0:1>"
    with_unet = run(unet_only, firstpass_conds=True)[0]
    assert np.abs(with_unet - plain).max() > 0 and np.array_equal(with_unet, run(unet_only)[0])
    # the next image of the batch starts again without the hires prompt's LoRA
    batch = run("a cat <lora:style:1>", batch_size=2)
    assert np.array_equal(batch[1], run("a cat <lora:style:1>", seed=GEN["seed"] + 1)[0])


@pytest.mark.parametrize("alpha, shown", [("abc", "'abc'"), (float("nan"), "nan"), ([1], "[1]")])
def test_a_peft_metadata_alpha_that_is_no_number_is_one_line(alpha, shown):
    """Hostile metadata: diffusers' lora_adapter_metadata with a non-number alpha was a bare ValueError
    (float('abc')); NaN made every image NaN."""
    import json
    from pathlib import Path

    from opensd.adapters.lora_files import parse_lora
    from opensd.errors import CheckpointError
    sd = {"unet.mid_block.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8),
          "unet.mid_block.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 4)}
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": alpha})}
    with pytest.raises(CheckpointError, match=r"^p\.safetensors: lora_adapter_metadata unet\.lora_alpha: alpha must be "
                                              r"one finite number, not " + re.escape(shown) + "$"):
        parse_lora(sd, Path("p.safetensors"), meta)
    assert parse_lora(sd, Path("p.safetensors"), {"lora_adapter_metadata": '{"unet.lora_alpha": 8}'}).modules
