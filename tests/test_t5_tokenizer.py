"""Our T5 tokenizer gives the ids transformers' T5Tokenizer gives from the same spiece.model.

No T5 vocabulary ships with opensd, so the test trains a small SentencePiece unigram model with T5's
settings (ids 0/1/2 = pad/eos/unk, NFKC normalisation) in memory, in well under a second."""
from __future__ import annotations

import io

import pytest
import sentencepiece
from transformers import T5Tokenizer as HFT5Tokenizer

from opensd.errors import CheckpointError
from opensd.text.t5_tokenizer import EOS_ID, PAD_ID, T5Tokenizer

CORPUS = [
    "a photo of a cat sitting on a red chair", "the quick brown fox jumps over the lazy dog",
    "A lighthouse at dusk, oil painting, highly detailed", "portrait of an astronaut riding a horse",
    "Café naïve façade, “quoted” text and ｆｕｌｌｗｉｄｔｈ letters", "numbers 1234567890 and #@!? signs",
] * 4
PROMPTS = [
    "a photo of a cat", "  A   lighthouse\tat dusk,\n oil painting  ", "Café ＦＵＬＬ width!!",
    "zebra xylophone quokka", "", "(masterpiece:1.2), 8k, ultra-detailed", "日本語 text",
]


def _train(**kw) -> bytes:
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=150, model_type="unigram",
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    model = _train(pad_id=0, eos_id=1, unk_id=2, bos_id=-1, normalization_rule_name="nmt_nfkc")
    folder = tmp_path_factory.mktemp("tokenizer_3")
    (folder / "spiece.model").write_bytes(model)
    return folder


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_equal_transformers(spiece, prompt):
    ours = T5Tokenizer.from_file(spiece / "spiece.model")
    ref = HFT5Tokenizer.from_pretrained(str(spiece))
    assert ours(prompt, pad=False) == ref(prompt).input_ids
    assert ours(prompt, max_length=12) == ref(prompt, max_length=12, padding="max_length", truncation=True).input_ids


def test_truncation_keeps_end_of_text_and_padding_fills(spiece):
    tok = T5Tokenizer.from_file(spiece / "spiece.model")
    long = tok("a photo of a cat sitting on a red chair " * 20, max_length=16)
    assert len(long) == 16 and long[-1] == EOS_ID and PAD_ID not in long
    short = tok("cat", max_length=16)
    assert len(short) == 16 and short[len(tok.encode("cat"))] == EOS_ID and short[-1] == PAD_ID


def test_files_that_are_not_t5_vocabularies_are_refused(tmp_path):
    bad = tmp_path / "spiece.model"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(CheckpointError, match="spiece.model: not a SentencePiece model"):
        T5Tokenizer.from_file(bad)
    with pytest.raises(CheckpointError, match="not a T5 vocabulary"):
        T5Tokenizer(_train())  # sentencepiece's default ids: 0 = unk, 1 = bos, 2 = eos
