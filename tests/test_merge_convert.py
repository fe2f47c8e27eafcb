"""Model tools: checkpoint merging, LoRA baking, format conversion, pruning (tiny random models)."""
import json
from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from test_loader import make_diffusers_folder
from test_lora_pipeline import write_random_lora
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from opensd.adapters.lora import LoraSet, LoraSpec
from opensd.checkpoints import detect as D
from opensd.checkpoints.files import read_metadata, read_state_dict, save_safetensors
from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.convert import convert_to_diffusers, convert_to_safetensors
from opensd.library.merge import RECIPE_KEY, merge_loras_to_file, merge_to_file
from opensd.library.synthetic import TINY, random_state_dict, write_random_checkpoint
from opensd.pipeline.loader import load_model

KEY = D.UNET + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
IDS = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    return root, [write_random_checkpoint(root / f"m{i}.safetensors", seed=i, dtype=torch.float32) for i in range(3)]


def test_weighted_sum_and_add_difference(ckpts, tmp_path):
    _, (a, b, c) = ckpts
    sa, sb, sc = (read_state_dict(p) for p in (a, b, c))
    out = merge_to_file(tmp_path / "ws.safetensors", a, b, multiplier=0.3)
    merged = read_state_dict(out)
    assert torch.allclose(merged[KEY], sa[KEY] * 0.7 + sb[KEY] * 0.3, atol=1e-7)
    meta = read_metadata(out)
    recipe = json.loads(meta[RECIPE_KEY])
    assert recipe["mode"] == "weighted_sum" and [m["name"] for m in recipe["models"]] == ["m0.safetensors", "m1.safetensors"]
    assert len(recipe["models"][0]["hash"]) == 10
    assert load_model(out).config == load_model(a).config
    out = merge_to_file(tmp_path / "ad.safetensors", a, b, c, multiplier=0.5, mode="add_difference", half=True)
    merged = read_state_dict(out)
    assert merged[KEY].dtype == torch.float16
    assert torch.allclose(merged[KEY].float(), (sa[KEY] + (sb[KEY] - sc[KEY]) * 0.5).half().float())


def test_merge_keeps_a_only_keys_and_refuses_other_architectures(ckpts, tmp_path):
    _, (a, b, _) = ckpts
    sd = read_state_dict(a)
    sd["extra.thing"] = torch.ones(3)
    sd["model_ema.decay"] = torch.tensor(0.999)
    save_safetensors(sd, tmp_path / "a_extra.safetensors", metadata=D.metadata_for(TINY))
    merged = read_state_dict(merge_to_file(tmp_path / "o.safetensors", tmp_path / "a_extra.safetensors", b))
    assert torch.equal(merged["extra.thing"], torch.ones(3)) and "model_ema.decay" not in merged
    wide = replace(TINY, unet=replace(TINY.unet, context_dim=32),
                   text_encoders=(replace(TINY.text_encoders[0], width=32, heads=1),))
    other = write_random_checkpoint(tmp_path / "other.safetensors", wide)
    with pytest.raises(InvalidArgument, match="same architecture"):
        merge_to_file(tmp_path / "bad.safetensors", a, other)
    assert not (tmp_path / "bad.safetensors").exists()


def test_outputs_never_replace_inputs_or_existing_files(ckpts, tmp_path):
    _, (a, b, _) = ckpts
    with pytest.raises(InvalidArgument, match="overwrite the input"):
        merge_to_file(a, a, b, overwrite=True)
    (tmp_path / "exists.safetensors").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="exists"):
        merge_to_file(tmp_path / "exists.safetensors", a, b)
    merge_to_file(tmp_path / "exists.safetensors", a, b, overwrite=True)
    assert KEY in read_state_dict(tmp_path / "exists.safetensors")
    with pytest.raises(InvalidArgument, match="overwrite the input"):  # input inside the output folder
        convert_to_diffusers(a, a.parent, overwrite=True)
    with pytest.raises(InvalidArgument, match="add_difference needs"):
        merge_to_file(tmp_path / "x.safetensors", a, b, mode="add_difference")


def test_ckpt_to_safetensors_with_ema_and_fp16(tmp_path):
    sd = random_state_dict(TINY, seed=4)
    sd["alphas_cumprod"] = torch.linspace(0.99, 0.01, 1000, dtype=torch.float32)
    ema = {}
    for k, v in sd.items():
        if k.startswith("model."):
            ema["model_ema." + k[len("model."):].replace(".", "")] = v + 1
    ema["model_ema.num_updates"] = torch.tensor(10)
    ckpt = tmp_path / "old.ckpt"
    torch.save({"state_dict": {**sd, **ema}, "global_step": 5}, ckpt)
    plain = read_state_dict(convert_to_safetensors(ckpt, tmp_path / "plain.safetensors"))
    assert not any(k.startswith("model_ema.") for k in plain) and torch.equal(plain[KEY], sd[KEY])
    out = convert_to_safetensors(ckpt, tmp_path / "ema.safetensors", ema_only=True, half=True)
    got = read_state_dict(out)
    assert torch.equal(got[KEY], (sd[KEY] + 1).half())
    assert got["alphas_cumprod"].dtype == torch.float32
    assert got[D.VAE + "decoder.conv_in.weight"].dtype == torch.float16  # VAE has no EMA: its own weights
    assert torch.equal(got[D.VAE + "decoder.conv_in.weight"], sd[D.VAE + "decoder.conv_in.weight"].half())
    assert load_model(out).config.unet == TINY.unet
    with pytest.raises(InvalidArgument, match="no EMA"):
        convert_to_safetensors(tmp_path / "plain.safetensors", tmp_path / "e2.safetensors", ema_only=True)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_diffusers_single_file_round_trip_loads_in_diffusers(tmp_path, family):
    parts = make_diffusers_folder(tmp_path / "src", family)
    single = convert_to_safetensors(tmp_path / "src", tmp_path / "single.safetensors")
    ours = load_model(single).model
    folder = convert_to_diffusers(single, tmp_path / "out")
    # diffusers/transformers load every component with the exact weights of the source folder
    loaded = {"unet": UNet2DConditionModel.from_pretrained(folder / "unet"),
              "vae": AutoencoderKL.from_pretrained(folder / "vae")}
    te_cls = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection}
    loaded.update({n: cls.from_pretrained(folder / n) for n, cls in te_cls.items() if n in parts})
    assert set(loaded) == set(parts)
    for name, module in loaded.items():
        got, want = module.state_dict(), parts[name].state_dict()
        assert set(got) == set(want), name
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert loaded["unet"].config.cross_attention_dim == parts["unet"].config.cross_attention_dim
    with torch.no_grad():
        for name in ("text_encoder", "text_encoder_2"):
            if name in parts:
                assert torch.equal(loaded[name].eval()(IDS).last_hidden_state, parts[name](IDS).last_hidden_state)
    # the whole folder loads as a diffusers pipeline, tokenizers included
    from diffusers import DiffusionPipeline

    from opensd.text.tokenizer import default_tokenizer
    pipe = DiffusionPipeline.from_pretrained(folder)
    text = "a photo of an astronaut, riding a horse (8k)"  # no "!": HF makes it the SD2 pad token
    for tok in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)):
        if tok is not None:
            ids = tok(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
            assert torch.equal(ids, default_tokenizer()([text], pad_token=tok.pad_token_id))
    assert torch.equal(pipe.unet.conv_in.weight, parts["unet"].conv_in.weight)
    again = load_model(folder).model  # and our loader reads what we wrote
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in again.state_dict().items())
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline")
    with pytest.raises(InvalidArgument, match="exists"):
        convert_to_diffusers(single, tmp_path / "out")


def test_lora_merge_equals_live_application(ckpts, tmp_path):
    _, (a, _, _) = ckpts
    lora = write_random_lora(tmp_path / "l.safetensors", 3)
    out, (report,) = merge_loras_to_file(tmp_path / "baked.safetensors", a, [LoraSpec(lora, 0.8, 0.4)])
    assert report.patched > 0 and report.unmatched == []
    baked = load_model(out).model
    live = load_model(a).model
    LoraSet(live).apply([LoraSpec(lora, 0.8, 0.4)])
    assert all(torch.equal(v, live.state_dict()[k]) for k, v in baked.state_dict().items())
    recipe = json.loads(read_metadata(out)[RECIPE_KEY])
    assert recipe["loras"] == [{"name": "l", "unet": 0.8, "te": 0.4}]


def test_cli_model_tools(ckpts, tmp_path, capsys):
    _, (a, b, c) = ckpts
    lora = write_random_lora(tmp_path / "l.safetensors", 3)
    assert main(["merge", str(a), str(b), "-m", "0.25", "-o", str(tmp_path / "m.safetensors")]) == 0
    assert main(["merge", str(a), str(b), str(c), "-o", str(tmp_path / "d.safetensors")]) == 0
    assert json.loads(read_metadata(tmp_path / "d.safetensors")[RECIPE_KEY])["mode"] == "add_difference"
    assert main(["merge", str(a), str(b), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["convert", str(a), "-o", str(tmp_path / "folder"), "--fp16"]) == 0
    assert (tmp_path / "folder" / "unet" / "config.json").is_file()
    assert main(["convert", str(tmp_path / "folder"), "-o", str(tmp_path / "back.safetensors")]) == 0
    assert main(["lora-merge", str(a), "--lora", f"{lora}:0.5", "-o", str(tmp_path / "lm.safetensors")]) == 0
    assert "merged l (unet 0.5, te 0.5)" in capsys.readouterr().err
    assert main(["lora-merge", str(a), "--lora", str(tmp_path / "none.safetensors"),
                 "-o", str(tmp_path / "lm2.safetensors")]) == 2
