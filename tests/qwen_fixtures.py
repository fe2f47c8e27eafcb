"""transformers' Qwen3 with random weights, and a tiny Qwen-style tokenizer folder for tests: byte-level BPE trained here on a few sentences,
with Qwen's pre-tokenizer and the special tokens after the vocabulary (Qwen's layout), written
both as tokenizer.json and as vocab.json + merges.txt + tokenizer_config.json."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

import torch
from transformers import Qwen3Config as HFQwen3Config
from transformers import Qwen3ForCausalLM
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX  # the oracle's, not ours

from opensd.models.qwen3 import Qwen3Config

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CORPUS = [
    "A photograph of an astronaut riding a horse on the moon, highly detailed.",
    "The quick brown fox jumps over the lazy dog 1234567890 times!",
    "Une tasse de café sur une table en bois, lumière douce du matin.",
    "一只可爱的猫坐在窗台上，阳光明媚。",
    "user\nassistant\nsystem\n  indented   spaces\tand\ttabs\r\n",
    "It's, we're, they'll, I'd, you've: contractions; punctuation... (brackets) [square] {curly}",
]


def build_tokenizer(vocab_size: int = 400) -> Tokenizer:
    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False,
                        byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return tok


def _config(tok: Tokenizer, template: str | None) -> dict:
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 131072, "errors": "replace",
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "clean_up_tokenization_spaces": False, "split_special_tokens": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
            "special": True} for t in SPECIALS},
    }
    if template is not None:
        cfg["chat_template"] = template
    return cfg


def write_folder(folder: Path, tok: Tokenizer, json_file: bool = True, vocab_files: bool = True,
                 config: bool = True, template: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if json_file:
        tok.save(str(folder / "tokenizer.json"))
    if vocab_files:
        tok.model.save(str(folder))  # vocab.json, merges.txt (the BPE model alone, no added tokens)
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps(_config(tok, template)), encoding="utf-8")
    return folder


# The statements of Qwen3's published chat template (tokenizer_config.json of the Qwen3 models and of
# Z-Image's tokenizer/) that one user message without tools or system prompt goes through: the
# system header (absent here), the user turn, the generation prompt and its thinking switch. The
# tool and assistant-history branches, which such a conversation never enters, are left out.
QWEN3_TEMPLATE_PARTS = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}"
    "{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def hf_config(cfg: Qwen3Config, **kw) -> HFQwen3Config:
    return HFQwen3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, max_position_embeddings=4096, tie_word_embeddings=True, **kw)


def hf_qwen3(cfg: Qwen3Config, seed: int = 0, attn: str = "sdpa") -> Qwen3ForCausalLM:
    """transformers' model with random weights, the norms' scales away from 1 so that they matter."""
    torch.manual_seed(seed)
    ref = Qwen3ForCausalLM(hf_config(cfg, attn_implementation=attn))
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return ref.eval()


def write_gguf(path: Path, ref: Qwen3ForCausalLM, quantize: bool = True, tokenizer: Tokenizer | None = None,
               arch: str = "qwen3", state_dict: dict | None = None) -> Path:
    """`ref`'s weights (or `state_dict`, in transformers' `model.layers...` names) as a llama.cpp GGUF
    file (names from the gguf package's own table for `arch`: "qwen3", or "qwen2vl" for Qwen2.5-VL's
    language model), its projection weights in Q8_0 blocks when `quantize`, with `tokenizer` in its
    header as llama.cpp writes a Qwen tokenizer (tokens by id, merges, token types) when given."""
    import gguf

    cfg = getattr(ref.config, "text_config", ref.config)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], cfg.num_hidden_layers)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    if tokenizer is not None:
        tokens = [tokenizer.id_to_token(i) for i in range(tokenizer.get_vocab_size())]
        merges = json.loads(tokenizer.to_str())["model"]["merges"]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types([3 if t in SPECIALS[:3] else 4 if t in SPECIALS else 1 for t in tokens])
        w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for key, tensor in (ref.state_dict() if state_dict is None else state_dict).items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        data = tensor.float().numpy()
        if quantize and key.endswith("proj.weight"):
            blocks = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
