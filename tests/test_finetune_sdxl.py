"""The fine-tuning jobs on a tiny SDXL-layout model (two text encoders, pooled + size conditioning):
LoRA with text encoders saves SGM-style names, textual inversion saves clip_l/clip_g."""
import torch
from safetensors import safe_open
from test_conditioning import TINY_XL
from test_finetune_lora import make_data

from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.pipeline import load
from opensd.text.embeddings import load_embedding
from opensd.training.lora_train import LoraOptions, train_lora
from opensd.training.textual_inversion import EmbeddingOptions, train_embedding


def common(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "xl.safetensors", TINY_XL)
    data = make_data(tmp_path, n=2, folder="2_thing")
    return {"data": data, "model": ckpt, "steps": 2, "batch_size": 2, "resolution": 32, "bucket_step": 8,
            "progress": False}


def test_sdxl_lora_and_embedding(tmp_path):
    c = common(tmp_path)
    out = train_lora(LoraOptions(**c, output=tmp_path / "xl-lora.safetensors", run_dir=tmp_path / "r1",
                                 rank=2, alpha=1, lr=1e-2, train_text_encoder=True))
    with safe_open(out, "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # SGM naming, as sd-scripts writes SDXL
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn_out_proj") for k in keys)

    emb = train_embedding(EmbeddingOptions(**c, output=tmp_path / "emb" / "xlword.safetensors",
                                           run_dir=tmp_path / "r2", init_word="cat", num_vectors=2))
    e = load_embedding(emb)
    assert e.vectors["clip_l"].shape == (2, 64) and e.vectors["clip_g"].shape == (2, 32)
    pipe = load(c["model"], embeddings_dir=emb.parent)
    cond = pipe.conditioner().encode("a photo of xlword")
    plain = load(c["model"]).conditioner().encode("a photo of xlword")
    assert not torch.allclose(cond.context, plain.context)
