"""FLUX.2 [klein]'s prompt encoding equals diffusers' Flux2KleinPipeline.encode_prompt on tiny random
Qwen3 weights and a synthetic vocabulary (features of hidden states 9, 18, 27 side by side, every
prompt padded to the full length with its padding rows kept; the text position ids); the encoder's
multi-layer call returns the states asked for without running later layers; Qwen3-8B's config."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline
from transformers import Qwen2TokenizerFast

from opensd.checkpoints.keymap_qwen3 import qwen3_state_dict
from opensd.errors import InvalidArgument
from opensd.models.qwen3 import QWEN3_4B, QWEN3_8B, Qwen3Config, Qwen3TextEncoder
from opensd.text.klein_prompts import LAYERS, MAX_LENGTH, encode_klein, text_ids
from opensd.text.qwen_tokenizer import QwenTokenizer
from qwen_fixtures import QWEN3_TEMPLATE_PARTS, build_tokenizer, hf_qwen3, write_folder
from reference import assert_close_scaled

PROMPTS = [
    "A photograph of an astronaut riding a horse on the moon",
    "",
    "a cat\nwith two lines, (emphasis:1.3) and [brackets] left as written",
    "一只可爱的猫坐在窗台上 — café ✓ " * 3,
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("tok"), build_tokenizer(), template=QWEN3_TEMPLATE_PARTS)


def _tiny(vocab: int, layers: int) -> Qwen3Config:
    return Qwen3Config(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def _pipeline(folder, ref) -> SimpleNamespace:
    pipe = SimpleNamespace(tokenizer=Qwen2TokenizerFast.from_pretrained(str(folder)), text_encoder=ref,
                           _execution_device=torch.device("cpu"))
    pipe._get_qwen3_prompt_embeds = Flux2KleinPipeline._get_qwen3_prompt_embeds
    pipe._prepare_text_ids = Flux2KleinPipeline._prepare_text_ids
    return pipe


# the default layers on a 28-layer model (27 is not the last: no final norm); and a 4-layer model
# whose last state (after the final norm) is asked for, out of order, with a short length that cuts
# the longer prompts' templates
@pytest.mark.parametrize("n_layers,layers,length", [(28, LAYERS, MAX_LENGTH), (4, (4, 1, 2), 24)])
@torch.no_grad()
def test_features_and_text_ids_equal_the_pipeline(folder, n_layers, layers, length):
    tokenizer = QwenTokenizer.from_folder(folder)
    cfg = _tiny(len(Qwen2TokenizerFast.from_pretrained(str(folder))), n_layers)
    ref = hf_qwen3(cfg, seed=11)  # the pipeline's text_encoder is a Qwen3ForCausalLM
    want, want_ids = Flux2KleinPipeline.encode_prompt(_pipeline(folder, ref), list(PROMPTS), device=torch.device("cpu"),
                                                      max_sequence_length=length, text_encoder_out_layers=layers)
    ours = Qwen3TextEncoder(cfg).eval()
    ours.load_state_dict(qwen3_state_dict(ref.state_dict()), strict=True)
    got = encode_klein(ours, tokenizer, PROMPTS, max_length=length, layers=layers)
    assert got.shape == want.shape == (len(PROMPTS), length, len(layers) * cfg.hidden_size)
    assert_close_scaled(got, want, 1e-5)  # every row, the padding rows included
    for i in range(len(PROMPTS)):  # one prompt alone comes out as in the batch (all padded alike)
        assert_close_scaled(encode_klein(ours, tokenizer, PROMPTS[i], max_length=length, layers=layers)[0],
                            got[i], 1e-5)
    ids = text_ids(length, len(PROMPTS))
    assert ids.dtype == want_ids.dtype and torch.equal(ids, want_ids)


def test_a_prompt_is_cut_at_the_length_and_padded_to_it(folder):
    tokenizer = QwenTokenizer.from_folder(folder)
    ref = Qwen2TokenizerFast.from_pretrained(str(folder))
    text = "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    for length in (8, 40):
        ids, mask = tokenizer.batch([text], length, pad_to=length)
        want = ref(text, padding="max_length", truncation=True, max_length=length)
        assert ids == [want["input_ids"]] and mask == [want["attention_mask"]]


@torch.no_grad()
def test_multi_layer_call_runs_no_layer_past_the_last_asked():
    cfg = _tiny(100, 6)
    ours = Qwen3TextEncoder(cfg).eval()
    ids = torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    every = ours.hidden_states(ids, mask)
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in
             enumerate(ours.model.layers)]
    states = ours(ids, mask, layer=(3, 1, -4))
    assert ran == [0, 1, 2]  # -4 is state 3 of 0..6: layers 0..2 ran, 3..5 did not
    for h in hooks:
        h.remove()
    assert len(states) == 3
    for s, i in zip(states, (3, 1, 3)):
        assert torch.equal(s, every[i])
    assert torch.equal(ours(ids, mask, layer=(6,))[0], every[6])  # the last: after the final norm
    with pytest.raises(IndexError):
        ours(ids, mask, layer=(1, 7))
    with pytest.raises(IndexError):
        ours(ids, mask, layer=())


def test_no_prompts_is_refused(folder):
    with pytest.raises(InvalidArgument, match="no prompts"):
        encode_klein(Qwen3TextEncoder(_tiny(100, 2)), QwenTokenizer.from_folder(folder), [])


def test_qwen3_8b_config_and_feature_widths():
    """Qwen3-8B's published config (its meta build and shape read-back: test_qwen3.py)."""
    assert (QWEN3_8B.num_hidden_layers, QWEN3_8B.hidden_size, QWEN3_8B.num_attention_heads,
            QWEN3_8B.num_key_value_heads, QWEN3_8B.intermediate_size, QWEN3_8B.head_dim) == (36, 4096, 32, 8, 12288, 128)
    assert QWEN3_4B == Qwen3Config()
    assert len(LAYERS) * QWEN3_8B.hidden_size == 12288 and len(LAYERS) * QWEN3_4B.hidden_size == 7680
