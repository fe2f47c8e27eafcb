"""Textual-inversion embedding files: formats, folder loading, name matching, clear errors."""
import pytest
import torch

from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.text.embeddings import (
    Embedding,
    EmbeddingDatabase,
    load_embedding,
    load_embeddings,
)
from opensd.text.tokenizer import default_tokenizer


def a1111_pt(path, vec, name="whatever"):
    """The dict A1111's Embedding.save writes (modules/textual_inversion/textual_inversion.py)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": 1500,
                "sd_checkpoint": "a1b2c3d4", "sd_checkpoint_name": "v1-5-pruned"}, path)
    return path


def test_a1111_pt_is_named_by_file_stem(tmp_path):
    vec = torch.randn(3, 64)
    e = load_embedding(a1111_pt(tmp_path / "Usada Pekora.pt", vec, name="internal"))
    assert e.name == "Usada Pekora" and e.count == 3
    assert torch.equal(e.vectors[""], vec)


def test_diffusers_bin_single_vector(tmp_path):
    vec = torch.randn(64, dtype=torch.float16)
    torch.save({"<cat-toy>": vec}, tmp_path / "cat-toy.bin")
    e = load_embedding(tmp_path / "cat-toy.bin")
    assert e.name == "cat-toy" and e.count == 1
    assert e.vectors[""].dtype == torch.float32 and torch.equal(e.vectors[""][0], vec.float())


def test_safetensors_emb_params_and_sdxl_pairs(tmp_path):
    save_safetensors({"emb_params": torch.randn(2, 64)}, tmp_path / "style.safetensors")
    assert load_embedding(tmp_path / "style.safetensors").count == 2
    l, g = torch.randn(4, 64), torch.randn(4, 32)
    save_safetensors({"clip_l": l, "clip_g": g}, tmp_path / "xl.safetensors")
    e = load_embedding(tmp_path / "xl.safetensors")
    assert e.count == 4 and torch.equal(e.vectors["clip_l"], l) and torch.equal(e.vectors["clip_g"], g)
    assert torch.equal(e.for_encoder("hf", 64, 2), l) and torch.equal(e.for_encoder("openclip", 32, 2), g)


@pytest.mark.parametrize("content, message", [
    ({"string_to_param": {"*": torch.randn(1, 64), "+": torch.randn(1, 64)}}, "2 terms"),
    ({"a": torch.randn(1, 64), "b": torch.randn(1, 64)}, "not a textual-inversion embedding"),
    ({"emb_params": torch.randn(2, 3, 64)}, "shape"),
    ({"emb_params": torch.randn(76, 64)}, "at most 75"),
    ({"emb_params": torch.full((1, 64), float("nan"))}, "NaN"),
    ({"clip_l": torch.randn(2, 64), "clip_g": torch.randn(3, 32)}, "must match"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=message) as err:
        load_embedding(path)
    assert str(path) in str(err.value)


def test_pickled_parameter_dict_is_refused_not_executed(tmp_path):
    # The original textual-inversion repo pickled an nn.ParameterDict; the safe reader refuses classes.
    path = tmp_path / "orig.pt"
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, 64))})}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_embedding(path)


def test_width_mismatch_error_names_the_file(tmp_path):
    e = load_embedding(a1111_pt(tmp_path / "sd2thing.pt", torch.randn(2, 1024)))
    with pytest.raises(CheckpointError, match="1024-wide vectors but this model's text encoder takes 768") as err:
        e.for_encoder("hf", 768, 1)
    assert "sd2thing.pt" in str(err.value)
    with pytest.raises(CheckpointError, match="needs an embedding with one set per encoder"):
        e.for_encoder("hf", 1024, 2)
    xl = Embedding("xl", {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)})
    with pytest.raises(CheckpointError, match="takes 1024-wide"):
        xl.for_encoder("openclip", 1024, 1)  # an SDXL embedding on SD2's ViT-H


def test_folder_loading(tmp_path):
    (tmp_path / "sub").mkdir()
    a1111_pt(tmp_path / "one.pt", torch.randn(1, 64))
    save_safetensors({"emb_params": torch.randn(2, 64)}, tmp_path / "sub" / "two.safetensors")
    torch.save({"<x>": torch.randn(64)}, tmp_path / "three.BIN")
    (tmp_path / "notes.txt").write_text("not an embedding")
    (tmp_path / "empty.pt").write_bytes(b"")
    save_safetensors({"a": torch.zeros(1), "b": torch.zeros(1)}, tmp_path / "lora.safetensors")
    a1111_pt(tmp_path / "sub" / "one.pt", torch.randn(1, 64))  # same stem as ./one.pt
    db = load_embeddings(tmp_path)
    assert db.names == ["one", "three", "two"]
    assert db["one"].path == tmp_path / "one.pt"  # first in path order wins
    assert set(db.skipped) == {str(tmp_path / "lora.safetensors"), str(tmp_path / "sub" / "one.pt")}
    assert "loaded first" in db.skipped[str(tmp_path / "sub" / "one.pt")]
    with pytest.raises(CheckpointError, match="lora.safetensors"):
        load_embeddings(tmp_path, strict=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_embeddings(tmp_path / "missing")


def test_find_matches_name_tokens_longest_first():
    tok = default_tokenizer()
    db = EmbeddingDatabase([Embedding("bad-hands", {"": torch.zeros(2, 64)}),
                            Embedding("bad", {"": torch.zeros(1, 64)})])
    ids = tok.encode("photo, bad-hands and bad feet")
    bad_hands = tok.encode("bad-hands")
    assert len(bad_hands) > 1
    start = ids.index(bad_hands[0])
    emb, covered = db.find(tok, ids, start)
    assert emb.name == "bad-hands" and covered == len(bad_hands)
    later = ids.index(tok.encode("bad")[0], start + covered)
    assert db.find(tok, ids, later)[0].name == "bad"
    assert db.find(tok, ids, 0) is None  # "photo"
    # Matching is on tokens, so the case of the typed name does not matter (CLIP lowercases).
    assert db.find(tok, tok.encode("BAD-HANDS"), 0)[0].name == "bad-hands"
