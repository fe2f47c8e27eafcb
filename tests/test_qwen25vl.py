"""Qwen-Image's text encoder: Qwen2.5-VL's language model as our Qwen3TextEncoder with Qwen2's switches
(q/k/v biases, no q/k norms) equals transformers' Qwen2_5_VLForConditionalGeneration on text (its
multimodal rotary embedding included) on tiny random weights, read from transformers' current layout
and from ComfyUI's / Qwen's (`model.`, `visual.`), the vision tower reported and left out; prompts
encode as diffusers' QwenImagePipeline.encode_prompt does; the full-size layout maps on the meta
device; detection keeps Qwen2.5-VL and Qwen3 apart."""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from diffusers import QwenImagePipeline
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast

from opensd.checkpoints.keymap_qwen25vl import is_qwen25vl, qwen25vl_config, qwen25vl_state_dict
from opensd.checkpoints.keymap_qwen3 import is_qwen3
from opensd.errors import CheckpointError, InvalidArgument
from opensd.models.qwen3 import QWEN25_VL_7B, Qwen3Config, Qwen3TextEncoder
from opensd.text.qwen_image_prompts import DROP, TEMPLATE, encode_qwen_image_prompts
from opensd.text.qwen_tokenizer import QwenTokenizer
from qwen_fixtures import build_tokenizer, write_folder
from reference import assert_close_scaled

TINY = Qwen3Config(vocab_size=420, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, qkv_bias=True, qk_norm=False)


def hf_config(cfg: Qwen3Config, mrope=(2, 3, 3)) -> Qwen2_5_VLConfig:
    text = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": list(mrope)})
    vision = dict(depth=1, hidden_size=32, intermediate_size=32, num_heads=2, out_hidden_size=cfg.hidden_size,
                  fullatt_block_indexes=[0])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, attn_implementation="sdpa")


def hf_qwen25vl(cfg: Qwen3Config = TINY, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    torch.manual_seed(seed)
    ref = Qwen2_5_VLForConditionalGeneration(hf_config(cfg))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
    return ref.eval()


@pytest.fixture(scope="module")
def ref():
    return hf_qwen25vl()


def _comfy(sd: dict) -> dict:
    """transformers' current names -> the older ones ComfyUI's and Qwen's files use."""
    out = {}
    for k, v in sd.items():
        k = k.replace("model.language_model.", "model.", 1) if k.startswith("model.language_model.") else k
        out[k.replace("model.visual.", "visual.", 1) if k.startswith("model.visual.") else k] = v
    return out


def ours_from(sd: dict, cfg: Qwen3Config = TINY, prefix: str = "") -> Qwen3TextEncoder:
    kept, visual = qwen25vl_state_dict(sd, prefix)
    assert visual and all(k.startswith(("visual.", "model.visual.")) for k in visual)
    ours = Qwen3TextEncoder(cfg).eval()
    ours.load_state_dict(kept, strict=True)
    return ours


def _batch(left: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY.vocab_size, (3, 11), generator=g)
    mask = torch.ones(3, 11, dtype=torch.long)
    for row, n in ((1, 4), (2, 7)):
        if left:
            mask[row, :n] = 0
        else:
            mask[row, 11 - n:] = 0
    return ids, mask


@pytest.mark.parametrize("layout", ["transformers", "comfyui"])
@pytest.mark.parametrize("left", [False, True])
@torch.no_grad()
def test_every_hidden_state_matches_transformers(ref, layout, left):
    """Every hidden state (the last after the final norm) on the real tokens, right or left padded;
    transformers runs its multimodal rotary embedding (sections 2/3/3), equal to our 1-D one."""
    sd = ref.state_dict() if layout == "transformers" else _comfy(ref.state_dict())
    ours = ours_from(sd)
    ids, mask = _batch(left)
    want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = ours.hidden_states(ids, mask)
    assert len(got) == len(want) == TINY.num_hidden_layers + 1
    real = mask.bool()
    for g, w in zip(got, want):
        assert_close_scaled(g[real], w[real], 1e-5)


@torch.no_grad()
def test_the_rope_sections_do_not_matter_on_text():
    """Another section split gives transformers the same output (text positions are equal in all
    three): the multimodal rotary embedding is the plain one here, for any split."""
    a, b = hf_qwen25vl(seed=3), Qwen2_5_VLForConditionalGeneration(hf_config(TINY, mrope=(4, 2, 2))).eval()
    b.load_state_dict(a.state_dict())
    ids, mask = _batch(False)
    assert_close_scaled(b(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1],
                        a(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1], 1e-6)


def test_config_from_shapes_and_detection(ref):
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    for s in (shapes, _comfy(shapes), {"text_encoders.qwen25_7b." + k: v for k, v in _comfy(shapes).items()}):
        prefix = "text_encoders.qwen25_7b." if "text_encoders.qwen25_7b.model.norm.weight" in s else ""
        assert is_qwen25vl(s, prefix) and not is_qwen3(s, prefix)
        assert qwen25vl_config(s, prefix, head_dim=16) == TINY
    with pytest.raises(CheckpointError, match="not heads of 128"):
        qwen25vl_config(shapes)  # a head width no shape holds: 128 unless told
    from qwen_fixtures import hf_qwen3
    qwen3 = {k: tuple(v.shape) for k, v in hf_qwen3(Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=48,
                                                               num_hidden_layers=1, num_attention_heads=2,
                                                               num_key_value_heads=1, head_dim=16)).state_dict().items()}
    assert is_qwen3(qwen3) and not is_qwen25vl(qwen3)
    with pytest.raises(CheckpointError, match="not a Qwen2.5-VL text encoder"):
        qwen25vl_config(qwen3, path="qwen_3_4b.safetensors")


def test_full_size_on_meta():
    """The published Qwen2.5-VL-7B-Instruct text config (28 layers 3584 wide, 28 heads and 4 key/value
    heads of 128, feed-forward 18944, vocabulary 152064): transformers' model and ours on the meta
    device hold the same language-model tensors, and the shapes give back QWEN25_VL_7B."""
    cfg = Qwen2_5_VLConfig(text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                            num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                             "mrope_section": [16, 24, 24]}),
                           vision_config=dict(depth=32, hidden_size=1280, out_hidden_size=3584, intermediate_size=3420))
    with torch.device("meta"):
        ref = Qwen2_5_VLForConditionalGeneration(cfg)
        ours = Qwen3TextEncoder(QWEN25_VL_7B)
    shapes = _comfy({k: tuple(v.shape) for k, v in ref.state_dict().items()})
    kept, visual = qwen25vl_state_dict(shapes)
    assert kept == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert qwen25vl_config(shapes) == QWEN25_VL_7B and len(visual) > 100


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("tok"), build_tokenizer())


PROMPTS = ["A photograph of an astronaut riding a horse on the moon", "", "一只可爱的猫坐在窗台上 — café ✓ " * 4,
           "<|im_end|> a prompt that writes a special token"]


def _pipeline(folder, text_encoder, padding_side):
    tok = Qwen2TokenizerFast.from_pretrained(str(folder), padding_side=padding_side)
    pipe = SimpleNamespace(tokenizer=tok, text_encoder=text_encoder, tokenizer_max_length=1024,
                           prompt_template_encode=TEMPLATE, prompt_template_encode_start_idx=DROP,
                           _execution_device=torch.device("cpu"))
    pipe._extract_masked_hidden = partial(QwenImagePipeline._extract_masked_hidden, pipe)
    pipe._get_qwen_prompt_embeds = partial(QwenImagePipeline._get_qwen_prompt_embeds, pipe)
    return pipe


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("max_sequence_length", [1024, 5])
@torch.no_grad()
def test_prompt_features_equal_the_pipeline(folder, padding_side, max_sequence_length):
    tokenizer = QwenTokenizer.from_folder(folder)
    vocab = len(Qwen2TokenizerFast.from_pretrained(str(folder)))
    cfg = Qwen3Config(**{**TINY.__dict__, "vocab_size": vocab})
    text_encoder = hf_qwen25vl(cfg, seed=5)
    pipe = _pipeline(folder, text_encoder, padding_side)
    want, want_mask = QwenImagePipeline.encode_prompt(pipe, list(PROMPTS), max_sequence_length=max_sequence_length)
    ours = ours_from(text_encoder.state_dict(), cfg)
    got, mask = encode_qwen_image_prompts(ours, tokenizer, PROMPTS, max_sequence_length, padding_side)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert_close_scaled(got, want, 1e-5)
    if max_sequence_length == 5:  # every prompt has 5 tokens left: diffusers hands back no mask
        assert want_mask is None and mask.all()
    else:
        assert torch.equal(mask, want_mask) and mask.dtype == want_mask.dtype and not mask.all()
    # one prompt alone: diffusers hands back no mask (all ones); the features are the same
    alone, alone_mask = QwenImagePipeline.encode_prompt(pipe, PROMPTS[0], max_sequence_length=max_sequence_length)
    got_alone, mask_alone = encode_qwen_image_prompts(ours, tokenizer, PROMPTS[0], max_sequence_length, padding_side)
    assert alone_mask is None and mask_alone.all()
    assert_close_scaled(got_alone, alone, 1e-5)


def test_prompt_arguments_are_checked(folder):
    tokenizer = QwenTokenizer.from_folder(folder)
    ours = Qwen3TextEncoder(TINY)
    with pytest.raises(InvalidArgument, match="no prompts"):
        encode_qwen_image_prompts(ours, tokenizer, [])
    with pytest.raises(InvalidArgument, match="max_sequence_length"):
        encode_qwen_image_prompts(ours, tokenizer, ["x"], max_sequence_length=0)
    with pytest.raises(InvalidArgument, match="padding_side"):
        encode_qwen_image_prompts(ours, tokenizer, ["x"], padding_side="middle")


def test_part_kind(ref, tmp_path):
    """A text_encoders/ Qwen2.5-VL file (ComfyUI's layout, vision tower included) is its own part kind."""
    from safetensors.torch import save_file

    from opensd.checkpoints.part_files import _kind, label
    path = tmp_path / "qwen_2.5_vl_7b.safetensors"
    save_file({k: v.contiguous() for k, v in _comfy(ref.state_dict()).items() if k != "lm_head.weight"}, str(path))
    assert _kind(path) == ("qwen25vl", 0) and label("qwen25vl") == "Qwen2.5-VL-7B text encoder"


@torch.no_grad()
def test_a_llama_cpp_gguf_file_loads(ref, tmp_path):
    """llama.cpp's GGUF of the language model (arch qwen2vl, its names from the gguf package's table,
    q/k/v biases, Q8_0 projections): renamed by keymap_qwen3 and equal to transformers within Q8_0's
    error; its vision tower lives in a separate mmproj file, so none is reported here."""
    from opensd.checkpoints.files import read_state_dict
    from opensd.pipeline.weights import assign
    from qwen_fixtures import write_gguf
    language = {k: v for k, v in _comfy(ref.state_dict()).items() if not k.startswith("visual.")}
    path = write_gguf(tmp_path / "qwen2.5-vl-7b.gguf", ref, arch="qwen2vl", state_dict=language)
    sd = read_state_dict(path, keep_quantized=True)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert "blk.0.attn_k.bias" in shapes and is_qwen25vl(shapes) and qwen25vl_config(shapes, head_dim=16) == TINY
    kept, visual = qwen25vl_state_dict(sd)
    assert visual == []
    with torch.device("meta"):
        ours = Qwen3TextEncoder(TINY).eval()
    assert kept.keys() == ours.state_dict().keys()
    assign(ours, kept, list(kept), lambda key: torch.float32, "cpu", keeps_stored=lambda key: True)
    ids, mask = _batch(False)
    want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    got = ours(ids, mask, layer=-1)
    real = mask.bool()
    assert ((got[real] - want[real]).abs().max() / want[real].abs().max()) < 0.02


@pytest.mark.parametrize("layout", ["marker", "comfy_quant"])
@torch.no_grad()
def test_a_scaled_fp8_file_equals_its_dequantised_weights(ref, tmp_path, layout):
    """ComfyUI's qwen_2.5_vl_7b_fp8_scaled layout (float8 Linear weights with scales; biases and norms
    in float): read as the other scaled text encoders are, equal to the dequantised weights."""
    from opensd.checkpoints.files import read_state_dict
    from opensd.checkpoints.scaled_fp8 import Scaled
    from test_scaled_fp8 import linear_weights, stored_and_plain, write_scaled
    path = tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors"
    sd = _comfy(ref.state_dict())
    linears = [k for k in _comfy({k: None for k in linear_weights(ref)})]
    held = write_scaled(path, sd, linears, layout)
    kept, visual = qwen25vl_state_dict(read_state_dict(path, keep_quantized=True))
    assert visual and any(isinstance(v, Scaled) for v in kept.values())
    ours, plain = stored_and_plain(Qwen3TextEncoder, TINY, kept, qwen25vl_state_dict(held)[0])
    ids, mask = _batch(False)
    assert_close_scaled(ours(ids, mask, layer=-1), plain(ids, mask, layer=-1), 1e-6)
