"""transformers' Mistral3ForConditionalGeneration with random weights and a tiny tekken-like tokenizer
folder for tests: byte-level BPE trained here on a few sentences, Mistral's control tokens first
(<unk>, <s>, </s>, [INST], ...), a post-processor that adds <s> (as Mistral's tokenizer.json
does, which the chat-template path must not apply), and the published chat template's statements
that a system message and one user message go through."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers, processors, trainers
from tokenizers.models import BPE
from transformers import Mistral3Config, Mistral3ForConditionalGeneration

from opensd.models.qwen3 import Qwen3Config
from qwen_fixtures import CORPUS

SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
            "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
# tekken's pre-tokenizer pattern (tokenizer.json of Mistral's tekken models)
PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
           r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n/]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# The statements of Mistral Small 3.1's chat template that a system message and user messages (text
# blocks or strings) go through; the assistant and tool branches are left out.
TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}{%- set system_message = messages[0]['content'] %}"
    "{%- else %}{%- set system_message = messages[0]['content'][0]['text'] %}{%- endif %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- '[INST]' }}"
    "{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}{{- '[IMG]' }}{%- endif %}"
    "{%- endfor %}{{- '[/INST]' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
)


def build_tokenizer(vocab_size: int = 500) -> Tokenizer:
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS * 5 + ["You are an AI that reasons about image descriptions."] * 5, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return tok


def write_folder(folder: Path, tok: Tokenizer, padding_side: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
           "pad_token": "<pad>", "model_max_length": 131072, "chat_template": TEMPLATE,
           "clean_up_tokenization_spaces": False}
    if padding_side is not None:
        cfg["padding_side"] = padding_side
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


TINY = Qwen3Config(vocab_size=SPECIALS.__len__() + 500, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=1e9, rms_norm_eps=1e-5,
                   qk_norm=False)


def hf_mistral3(cfg: Qwen3Config = TINY, seed: int = 0) -> Mistral3ForConditionalGeneration:
    """transformers' Mistral3 with random weights, the norms' scales away from 1 so that they matter.
    The head width (32) differs from hidden / heads (16), as Mistral Small's 128 does from 160."""
    text = dict(model_type="mistral", vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
                head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta}, sliding_window=None)
    vision = dict(model_type="pixtral", hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                  num_attention_heads=2, head_dim=16, image_size=64, patch_size=16)
    torch.manual_seed(seed)
    ref = Mistral3ForConditionalGeneration(Mistral3Config(text_config=text, vision_config=vision,
                                                          attn_implementation="sdpa"))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return ref.eval()
