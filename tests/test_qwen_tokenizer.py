"""Our Qwen tokenizer gives transformers' Qwen2Tokenizer's ids on a synthetic byte-level BPE vocabulary,
read from tokenizer.json or from vocab.json + merges.txt; the tokenizer folder is found where
users keep it, or taken from a GGUF text encoder's header; a missing or wrong one is a clear error."""
from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from transformers import Qwen2TokenizerFast

from opensd.checkpoints.qwen_vocab import find_qwen_tokenizer, load_qwen_tokenizer
from opensd.errors import CheckpointError, InvalidArgument
from opensd.text.qwen_tokenizer import QwenTokenizer
from opensd.models.qwen3 import Qwen3Config
from qwen_fixtures import SPECIALS, build_tokenizer, hf_qwen3, write_folder, write_gguf

TEXTS = [
    "A photograph of an astronaut riding a horse",
    "a cat, 12345 cats; UPPER lower MiXeD... it's 'quoted' \"double\"",
    "Cafe\u0301 au lait \u2014 cr\u00e8me br\u00fbl\u00e9e",  # e + combining accent: NFC makes it é
    "一只可爱的猫 🐈 emoji and 中文 mixed",
    "  leading spaces, trailing spaces   \n\n new\tlines\r\n",
    "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
    "<think>\n\n</think>\n\nafter<|endoftext|>",
    "",
    "never-seen-words: zyxwvut qqqq ✓",
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.mark.parametrize("files", ["tokenizer.json", "vocab+merges"])
def test_ids_equal_transformers(tmp_path, tok, files):
    # transformers reads the same file set: from vocab + merges it builds Qwen2's pipeline itself
    json_file = files == "tokenizer.json"
    ours_dir = write_folder(tmp_path / "ours", tok, json_file=json_file, vocab_files=not json_file)
    ref = Qwen2TokenizerFast.from_pretrained(str(ours_dir))
    ours = QwenTokenizer.from_folder(ours_dir)
    for text in TEXTS:
        assert ours.encode(text) == ref(text).input_ids, text
    im_start = ours.encode("<|im_start|>")
    assert im_start == [tok.token_to_id("<|im_start|>")] and im_start[0] >= tok.get_vocab_size() - len(SPECIALS)
    assert ours.decode(ours.encode(TEXTS[3])) == TEXTS[3]


def test_vocab_and_merges_without_a_config_take_qwens_special_ids(tmp_path, tok):
    ours = QwenTokenizer.from_folder(write_folder(tmp_path, tok, json_file=False, config=False))
    first = tok.get_vocab_size() - len(SPECIALS)  # the specials follow the vocabulary, in Qwen's order
    assert ours.encode("<|endoftext|><|im_start|><|im_end|>") == [first, first + 1, first + 2]
    assert ours.pad_id == first
    ref = QwenTokenizer.from_folder(write_folder(tmp_path / "ref", tok, vocab_files=False))
    assert ours.encode(TEXTS[5]) == ref.encode(TEXTS[5])


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_padding_equals_transformers(tmp_path, tok, side):
    folder = write_folder(tmp_path, tok)
    ref = Qwen2TokenizerFast.from_pretrained(str(folder), padding_side=side)
    ours = QwenTokenizer.from_folder(folder)
    texts = TEXTS[:3] + [TEXTS[5]]
    want = ref(texts, padding="longest", max_length=12, truncation=True)
    ids, mask = ours.batch(texts, max_length=12, padding_side=side)
    assert ids == want.input_ids and mask == want.attention_mask
    assert len(ids[0]) == 12 and ids[-1][0 if side == "right" else -1] != ours.pad_id


def test_bad_arguments(tmp_path, tok):
    ours = QwenTokenizer.from_folder(write_folder(tmp_path, tok))
    with pytest.raises(InvalidArgument, match="max_length"):
        ours.batch(["a"], max_length=0)
    with pytest.raises(InvalidArgument, match="padding_side"):
        ours.batch(["a"], padding_side="middle")


def test_not_a_qwen_tokenizer(tmp_path):
    from tokenizers.models import WordLevel
    (tmp_path / "tokenizer.json").write_text(Tokenizer(WordLevel({"a": 0}, unk_token="a")).to_str())
    with pytest.raises(CheckpointError, match="not a Qwen tokenizer: no <|endoftext|>"):
        QwenTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable tokenizer"):
        QwenTokenizer.from_folder(tmp_path)



@pytest.mark.parametrize("cls", ["qwen", "mistral"])
def test_a_huge_tokenizer_json_is_refused_before_reading(tmp_path, cls):
    """Hostile file: a 300 MB tokenizer.json (sparse here) was read whole by the Rust parser first."""
    from opensd.text.mistral_tokenizer import MistralTokenizer
    with open(tmp_path / "tokenizer.json", "wb") as f:
        f.truncate(300 * 2**20)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: 300 MB, more than the 256 MB a tokenizer\.json "
                                              r"may be"):
        {"qwen": QwenTokenizer, "mistral": MistralTokenizer}[cls].from_folder(tmp_path)

def test_config_ids_that_disagree_with_the_vocabulary(tmp_path, tok):
    folder = write_folder(tmp_path, tok, json_file=False)
    cfg = (folder / "tokenizer_config.json").read_text().replace(f'"{tok.token_to_id("<|im_end|>")}"', '"3"')
    (folder / "tokenizer_config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="<\\|im_end\\|> should have id 3"):
        QwenTokenizer.from_folder(folder)


def test_found_where_users_keep_it(tmp_path, tok):
    models = tmp_path / "models"
    te = models / "text_encoders" / "qwen_3_4b.safetensors"
    dm = models / "diffusion_models" / "z_image_turbo.safetensors"
    for f in (te, dm):
        f.parent.mkdir(parents=True)
        f.write_bytes(b"")
    assert find_qwen_tokenizer(dm, te) is None
    with pytest.raises(CheckpointError, match="qwen_tokenizer/"):
        load_qwen_tokenizer(dm, te)
    shared = write_folder(models / "text_encoders" / "qwen_tokenizer", tok)
    assert find_qwen_tokenizer(dm) == shared and find_qwen_tokenizer(te) == shared
    beside = write_folder(dm.parent / "qwen_tokenizer", tok, json_file=False)  # vocab + merges count too
    assert find_qwen_tokenizer(dm, te) == beside
    diffusers = models / "Z-Image-Turbo"
    write_folder(diffusers / "tokenizer", tok)
    assert find_qwen_tokenizer(diffusers) == diffusers / "tokenizer"
    assert find_qwen_tokenizer(diffusers / "tokenizer") == diffusers / "tokenizer"
    assert load_qwen_tokenizer(diffusers).encode("<|im_end|>") == [tok.token_to_id("<|im_end|>")]


def test_from_a_gguf_text_encoder(tmp_path, tok):
    """A llama.cpp GGUF file carries the vocabulary (tokens by id, merges, control and user-defined
    tokens): the tokenizer built from it gives transformers' ids for Qwen's own files."""
    cfg = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    te = tmp_path / "text_encoders" / "Qwen3-4B-Q8_0.gguf"
    te.parent.mkdir()
    write_gguf(te, hf_qwen3(cfg), tokenizer=tok)
    ref = Qwen2TokenizerFast.from_pretrained(str(write_folder(tmp_path / "ref", tok)))
    ours = QwenTokenizer.from_gguf(te)
    for text in TEXTS:
        assert ours.encode(text) == ref(text).input_ids, text
    # no tokenizer folder anywhere: the GGUF's own is used
    assert load_qwen_tokenizer(te).encode(TEXTS[5]) == ref(TEXTS[5]).input_ids
    bare = write_gguf(tmp_path / "no_vocab.gguf", hf_qwen3(cfg))
    with pytest.raises(CheckpointError, match="carries no byte-level BPE tokenizer"):
        QwenTokenizer.from_gguf(bare)
    with pytest.raises(CheckpointError, match="no Qwen tokenizer found"):
        load_qwen_tokenizer(bare)


def test_presets_in_tokenizer_json_do_not_apply(tmp_path, tok):
    """A tokenizer.json saved with truncation or padding enabled still encodes whole texts."""
    preset = Tokenizer.from_str(tok.to_str())
    preset.enable_truncation(4)
    preset.enable_padding(length=40, pad_id=0)
    ours = QwenTokenizer.from_folder(write_folder(tmp_path, preset))
    assert ours.encode(TEXTS[0]) == tok.encode(TEXTS[0]).ids and len(ours.encode(TEXTS[0])) > 4
    assert ours.batch([TEXTS[0], "a"])[0][0] == tok.encode(TEXTS[0]).ids
