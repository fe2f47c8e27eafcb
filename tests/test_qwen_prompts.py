"""Z-Image's prompt encoding equals diffusers' ZImagePipeline.encode_prompt: the chat-template text
equals transformers' apply_chat_template with Qwen3's template (thinking on and off), and the
caption features equal the pipeline's on tiny random Qwen3 weights and a synthetic vocabulary."""
from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from diffusers import ZImagePipeline
from transformers import Qwen2TokenizerFast

from opensd.checkpoints.keymap_qwen3 import qwen3_state_dict
from opensd.errors import InvalidArgument
from opensd.models.qwen3 import Qwen3Config, Qwen3TextEncoder
from opensd.text.qwen_prompts import chat_prompt, encode_padded, encode_prompts
from opensd.text.qwen_tokenizer import QwenTokenizer
from qwen_fixtures import QWEN3_TEMPLATE_PARTS, build_tokenizer, hf_qwen3, write_folder
from reference import assert_close_scaled

PROMPTS = [
    "A photograph of an astronaut riding a horse on the moon",
    "",
    "a cat\nwith two lines, (emphasis:1.3) and [brackets] left as written",
    "一只可爱的猫坐在窗台上 — café ✓ " * 3,
    "<|im_end|> a prompt that writes a special token",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tok = build_tokenizer()
    return write_folder(tmp_path_factory.mktemp("tok"), tok, template=QWEN3_TEMPLATE_PARTS)


@pytest.mark.parametrize("thinking", [True, False])
def test_chat_prompt_equals_qwen3s_template(folder, thinking):
    ref = Qwen2TokenizerFast.from_pretrained(str(folder))
    for p in PROMPTS:
        want = ref.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=thinking)
        assert chat_prompt(p, thinking) == want
    assert chat_prompt("x") == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    assert chat_prompt("x", enable_thinking=False).endswith("assistant\n<think>\n\n</think>\n\n")


@pytest.mark.parametrize("max_length", [512, 24])  # 24 cuts the longer prompts' templates short
@torch.no_grad()
def test_caption_features_equal_the_pipeline(folder, max_length):
    tokenizer = QwenTokenizer.from_folder(folder)
    vocab = len(Qwen2TokenizerFast.from_pretrained(str(folder)))
    cfg = Qwen3Config(vocab_size=vocab, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    text_encoder = hf_qwen3(cfg, seed=7).model  # a diffusers folder's text_encoder/ is a Qwen3Model
    pipe = SimpleNamespace(tokenizer=Qwen2TokenizerFast.from_pretrained(str(folder)), text_encoder=text_encoder)
    pipe._encode_prompt = partial(ZImagePipeline._encode_prompt, pipe)
    # (the pipeline writes the templated text into the list it is given: hand it a copy)
    want, want_negative = ZImagePipeline.encode_prompt(pipe, list(PROMPTS), device=torch.device("cpu"),
                                                       max_sequence_length=max_length)

    ours = Qwen3TextEncoder(cfg).eval()
    ours.load_state_dict(qwen3_state_dict(text_encoder.state_dict()), strict=True)
    got = encode_prompts(ours, tokenizer, PROMPTS, max_length=max_length)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert max(g.shape[0] for g in got) == (max_length if max_length < 512 else got[3].shape[0])
    for g, w in zip(got, want):
        assert_close_scaled(g, w, 1e-5)
    # the pipeline's negative prompt defaults to "", encoded the same way
    negative = encode_prompts(ours, tokenizer, [""] * len(PROMPTS), max_length=max_length)
    for g, w in zip(negative, want_negative):
        assert_close_scaled(g, w, 1e-5)


@torch.no_grad()
def test_a_prompt_comes_out_the_same_alone_or_in_a_batch(folder):
    tokenizer = QwenTokenizer.from_folder(folder)
    cfg = Qwen3Config(vocab_size=420, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    ours = Qwen3TextEncoder(cfg).eval()
    batch = encode_prompts(ours, tokenizer, PROMPTS)
    for p, b in zip(PROMPTS, batch):
        assert_close_scaled(encode_prompts(ours, tokenizer, p)[0], b, 1e-5)


@torch.no_grad()
def test_padded_form_for_any_wrapper(folder):
    """encode_padded: the batch padded on the right to its longest prompt, for an encoder wrapped
    in another module (as a model bundle keeps it), on the device it is given."""
    tokenizer = QwenTokenizer.from_folder(folder)
    cfg = Qwen3Config(vocab_size=420, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    inner = Qwen3TextEncoder(cfg).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = inner

        def forward(self, ids, mask=None, layer=-2):
            return self.transformer(ids, mask, layer)

    hidden, mask = encode_padded(Wrapper(), tokenizer, PROMPTS[:3], device=torch.device("cpu"))
    listed = encode_prompts(inner, tokenizer, PROMPTS[:3])
    assert hidden.shape == (3, max(len(x) for x in listed), cfg.hidden_size) and mask.dtype == torch.bool
    for h, m, x in zip(hidden, mask, listed):
        n = len(x)
        assert m[:n].all() and not m[n:].any()
        assert torch.equal(h[:n], x)
    assert mask.sum(1).tolist() == [len(tokenizer.encode(chat_prompt(p))) for p in PROMPTS[:3]]
    with pytest.raises(InvalidArgument, match="no prompts"):
        encode_padded(inner, tokenizer, [])
