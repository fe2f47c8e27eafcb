"""A tiny Qwen-style tokenizer folder for tests: byte-level BPE trained here on a few sentences,
with Qwen's pre-tokenizer and the special tokens after the vocabulary (Qwen's layout), written
both as tokenizer.json and as vocab.json + merges.txt + tokenizer_config.json."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from opensd.text.qwen_tokenizer import _PATTERN

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
        pre_tokenizers.Split(Regex(_PATTERN), behavior="isolated", invert=False),
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
