"""FLUX.2 [dev]'s text encoder: Mistral Small 3.1's language model as our Qwen3TextEncoder with
Mistral's switches equals transformers' Mistral3ForConditionalGeneration on tiny random weights,
read from transformers' layouts (before and after 4.52) and ComfyUI's (the vision tower, projector
and tokenizer tensor reported, not loaded; a file cut short of its layers); the prompt text and ids
equal transformers' chat template through PixtralProcessor; the features equal
Flux2Pipeline's encode_prompt; the full-size config maps on meta and is not taken for a Qwen."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import Flux2Pipeline
from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

from opensd.checkpoints.keymap_mistral import is_mistral, mistral_config, mistral_state_dict
from opensd.checkpoints.keymap_qwen25vl import is_qwen25vl
from opensd.checkpoints.keymap_qwen3 import is_qwen3
from opensd.errors import CheckpointError
from opensd.models.qwen3 import MISTRAL_SMALL_31, Qwen3TextEncoder
from opensd.text.flux2_dev_prompts import SYSTEM_MESSAGE, chat_prompt, encode_dev
from opensd.text.mistral_tokenizer import MistralTokenizer
from mistral_fixtures import TINY, build_tokenizer, hf_mistral3, write_folder
from reference import assert_close_scaled

PROMPTS = ["A photograph of an astronaut riding a horse on the moon", "",
           "a cat\nwith two lines [INST] and an [IMG] token", "Une tasse de café 1234 " * 4]


@pytest.fixture(scope="module")
def ref():
    return hf_mistral3()


def _old(sd):
    """transformers' current names -> those before 4.52."""
    out = {}
    for k, v in sd.items():
        k = k.replace("model.language_model.", "language_model.model.").replace("model.vision_tower.", "vision_tower.")
        k = k.replace("model.multi_modal_projector.", "multi_modal_projector.")
        out["language_model.lm_head.weight" if k == "lm_head.weight" else k] = v
    return out


def _comfy(sd, layers=None):
    """ComfyUI's file: the language model under `model.` (its first `layers` layers), vision tower and
    projector beside, the tokenizer as a tensor."""
    out = {"tekken_model": torch.zeros(8, dtype=torch.uint8)}
    for k, v in _old(sd).items():
        if k.startswith("language_model.lm_head"):
            continue
        k = k.replace("language_model.model.", "model.")
        if layers is not None and k.startswith("model.layers.") and int(k.split(".")[2]) >= layers:
            continue
        out[k] = v
    return out


def _ours(sd):
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    enc = Qwen3TextEncoder(mistral_config(shapes, head_dim=TINY.head_dim)).eval()
    kept, other = mistral_state_dict(sd)
    enc.load_state_dict(kept, strict=True)
    return enc, other


@pytest.mark.parametrize("layout", ["current", "old", "comfy"])
@torch.no_grad()
def test_hidden_states_equal_transformers(ref, layout):
    sd = ref.state_dict()
    sd = {"current": sd, "old": _old(sd), "comfy": _comfy(sd)}[layout]
    ours, other = _ours(sd)
    assert ours.cfg.rope_theta == 1e9 and ours.cfg.rms_norm_eps == 1e-5 and not ours.cfg.qk_norm
    assert other and all(k.startswith(("vision_tower", "model.vision_tower", "multi_modal", "model.multi_modal",
                                       "tekken")) for k in other)
    torch.manual_seed(1)
    ids = torch.randint(0, TINY.vocab_size, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    want = ref.model.language_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = ours(ids, mask.bool(), layer=(1, 2, 3))
    for g, w in zip(got, want[1:4]):
        assert_close_scaled(g[0], w[0], 1e-5)
        assert_close_scaled(g[1, :6], w[1, :6], 1e-5)


@torch.no_grad()
def test_a_cut_file_gives_the_whole_models_middle_state(ref):
    """ComfyUI's file keeps only the layers FLUX.2 [dev] reads: its last state is not normed."""
    ours, _ = _ours(_comfy(ref.state_dict(), layers=3))
    assert ours.cfg.num_hidden_layers == 3 and not ours.cfg.final_norm
    ids = torch.randint(0, TINY.vocab_size, (1, 7))
    want = ref.model.language_model(input_ids=ids, output_hidden_states=True).hidden_states[3]
    assert_close_scaled(ours(ids, None, layer=3), want, 1e-5)


def test_full_size_on_meta_and_not_a_qwen():
    from transformers import MistralConfig, MistralForCausalLM
    c = MISTRAL_SMALL_31
    hf = MistralConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                       num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                       num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in MistralForCausalLM(hf).state_dict().items()}
        ours = Qwen3TextEncoder(mistral_config(shapes))
    assert mistral_config(shapes) == MISTRAL_SMALL_31
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == mistral_state_dict(shapes)[0]
    assert is_mistral(shapes) and not is_qwen3(shapes) and not is_qwen25vl(shapes)


@pytest.mark.parametrize("quantize", [False, True])
@torch.no_grad()
def test_a_llama_cpp_gguf_equals_transformers(ref, tmp_path, quantize):
    """llama.cpp's GGUF of the language model (arch llama, its q/k rows permuted as its converter
    permutes them; Q8_0 blocks or float): renamed, rows put back, equal to transformers."""
    from opensd.checkpoints.files import read_state_dict
    from qwen_fixtures import write_gguf

    def permute(w, heads):  # llama.cpp's converter: each head's rows as (2, half), swapped
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {k.replace("model.language_model.", "model."): v for k, v in ref.state_dict().items()
          if k.startswith("model.language_model.")}
    for k in sd:
        if k.endswith("q_proj.weight"):
            sd[k] = permute(sd[k], TINY.num_attention_heads)
        elif k.endswith("k_proj.weight"):
            sd[k] = permute(sd[k], TINY.num_key_value_heads)
    path = write_gguf(tmp_path / "mistral.gguf", ref, quantize=quantize, arch="llama", state_dict=sd)
    sd = read_state_dict(path, keep_quantized=True)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = mistral_config(shapes, head_dim=TINY.head_dim)
    assert is_mistral(shapes) and cfg.num_hidden_layers == TINY.num_hidden_layers
    ours = Qwen3TextEncoder(cfg).eval()
    kept = {k: v.dequantize() if hasattr(v, "dequantize") else v
            for k, v in mistral_state_dict(sd, head_dim=TINY.head_dim)[0].items()}
    ours.load_state_dict(kept, strict=True)
    ids = torch.randint(0, TINY.vocab_size, (1, 9))
    want = ref.model.language_model(input_ids=ids, output_hidden_states=True).hidden_states[3]
    assert_close_scaled(ours(ids, None, layer=3), want, 2e-2 if quantize else 1e-5)


def test_a_qwen_is_not_a_mistral():
    qwen = {"model.embed_tokens.weight": (10, 8), "model.layers.0.self_attn.q_proj.weight": (8, 8),
            "model.layers.0.self_attn.q_norm.weight": (4,)}
    assert not is_mistral(qwen)
    with pytest.raises(CheckpointError, match="not a Mistral"):
        mistral_config(qwen)


@pytest.fixture(scope="module", params=[None, "left"])
def folder(request, tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("tok"), build_tokenizer(), padding_side=request.param)


def _processor(folder):
    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return PixtralProcessor(image_processor=PixtralImageProcessor(), tokenizer=tok,
                            chat_template=tok.chat_template)


def test_template_and_ids_equal_transformers(folder):
    processor = _processor(folder)
    ours = MistralTokenizer.from_folder(folder)
    for p in PROMPTS:
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
                    {"role": "user", "content": [{"type": "text", "text": p.replace("[IMG]", "")}]}]
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        assert chat_prompt(p) == text
        ids = processor.apply_chat_template([messages], tokenize=True, return_dict=True, add_generation_prompt=False)
        assert ours.encode(chat_prompt(p)) == list(map(int, ids["input_ids"][0]))
    assert chat_prompt("x").startswith("<s>[SYSTEM_PROMPT]You are an AI")
    assert chat_prompt("x").endswith("[/SYSTEM_PROMPT][INST]x[/INST]")


@pytest.mark.parametrize("max_length", [512, 30])  # 30 cuts the templates short
@torch.no_grad()
def test_features_equal_the_pipeline(ref, folder, max_length):
    layers = (1, 2, 3)
    want = Flux2Pipeline._get_mistral_3_small_prompt_embeds(ref, _processor(folder), list(PROMPTS),
                                                          device=torch.device("cpu"), max_sequence_length=max_length,
                                                          hidden_states_layers=layers)
    ours, _ = _ours(ref.state_dict())
    got = encode_dev(ours, MistralTokenizer.from_folder(folder), PROMPTS, max_length, layers)
    assert got.shape == want.shape == (len(PROMPTS), max_length, 3 * TINY.hidden_size)
    assert_close_scaled(got, want, 1e-5)
    pipe = SimpleNamespace(text_encoder=ref, tokenizer=_processor(folder), _execution_device=torch.device("cpu"),
                           system_message=SYSTEM_MESSAGE,
                           _get_mistral_3_small_prompt_embeds=Flux2Pipeline._get_mistral_3_small_prompt_embeds,
                           _prepare_text_ids=Flux2Pipeline._prepare_text_ids)
    embeds, _ = Flux2Pipeline.encode_prompt(pipe, PROMPTS[0], max_sequence_length=max_length,
                                            text_encoder_out_layers=layers)
    assert_close_scaled(got[:1], embeds, 1e-5)


@pytest.mark.parametrize("layout", ["marker", "comfy_quant"])
@torch.no_grad()
def test_a_scaled_float8_file_as_comfyui_ships_it(ref, tmp_path, layout):
    """text_encoders/mistral_3_small_flux2_fp8.safetensors (ComfyUI's names, vision tower and tokenizer
    tensor beside): read by the family, its Linears stay float8 with their scales and compute what
    the dequantised weights do."""
    from opensd.checkpoints import detect_dit as DD
    from opensd.families.flux2 import FLUX2_FAMILY
    from test_scaled_fp8 import linear_weights, stored_and_plain, write_scaled
    sd = _comfy(ref.state_dict())
    linears = [k for k in _comfy({k: None for k in linear_weights(ref)}) if k.startswith("model.layers.")]
    path = tmp_path / "mistral_3_small_flux2_fp8.safetensors"
    held = write_scaled(path, sd, linears, layout)
    tensors = {k[len(DD.MISTRAL):]: v for k, v in FLUX2_FAMILY.encoder_tensors([path]).items()}
    cfg = mistral_config({k: tuple(v.shape) for k, v in tensors.items()}, head_dim=TINY.head_dim)
    ours, plain = stored_and_plain(Qwen3TextEncoder, cfg, tensors, mistral_state_dict(held)[0])
    ids = torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    assert_close_scaled(ours(ids, mask, 3), plain(ids, mask, 3), 1e-6)
