"""Textual inversion: only the new vectors train, the file is A1111-format, loads with our embeddings
reader and is used in prompts by its file name."""
import pytest
import torch
from test_finetune_lora import make_data

from opensd.errors import InvalidArgument
from opensd.pipeline.pipeline import load
from opensd.text.embeddings import load_embedding, load_embeddings
from opensd.training.textual_inversion import (
    EmbeddingOptions,
    build,
    caption_for,
    train_embedding,
)


def options(tmp_path, **kw) -> EmbeddingOptions:
    from opensd.library.synthetic import write_random_checkpoint
    ckpt = tmp_path / "m.safetensors"
    if not ckpt.exists():
        write_random_checkpoint(ckpt)
        make_data(tmp_path, n=3, folder="things")
    base = {"data": tmp_path / "data", "model": ckpt, "output": tmp_path / "emb" / "sks-emoji.safetensors",
            "run_dir": tmp_path / "run", "steps": 30, "batch_size": 3, "resolution": 32, "bucket_step": 8,
            "lr": 5e-2, "warmup": 2, "progress": False, "save_every": 10, "init_word": "face", "num_vectors": 2}
    return EmbeddingOptions(**(base | kw))


def test_only_the_vectors_train_and_loss_goes_down(tmp_path):
    opts = options(tmp_path)
    trainer, vectors, pipe, ds, _steps = build(opts)
    assert ds.items[0].caption == "a photo of sks-emoji"
    base = {k: v.clone() for k, v in pipe.model.state_dict().items()}
    init = vectors.tensors()[""].clone()
    face = pipe.tokenizer.encode("face")[0]
    table = pipe.model.cond_stage_model.transformer.text_model.embeddings.token_embedding.weight
    assert torch.equal(init[0], table[face]) and torch.equal(init[1], table[face])
    trainer.run(progress=False)
    assert all(torch.equal(v, pipe.model.state_dict()[k]) for k, v in base.items())
    assert not torch.equal(init, vectors.tensors()[""])
    first, last = sum(trainer.losses[:6]) / 6, sum(trainer.losses[-6:]) / 6
    assert last < first, (first, last)


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_saved_embedding_is_used_in_prompts_by_file_name(tmp_path, ext):
    opts = options(tmp_path, steps=4, output=tmp_path / "emb" / f"sks-emoji{ext}")
    out = train_embedding(opts)
    emb = load_embedding(out)
    assert emb.name == "sks-emoji" and emb.vectors[""].shape == (2, 64)
    if ext == ".pt":  # A1111's dict, readable without running pickled code
        data = torch.load(out, weights_only=True)
        assert set(data) >= {"string_to_param", "string_to_token", "name", "step"}
        assert data["string_to_param"]["*"].shape == (2, 64) and data["step"] == 4
    db = load_embeddings(out.parent, strict=True)
    assert db.names == ["sks-emoji"]
    pipe = load(opts.model, embeddings_dir=out.parent)
    plain = load(opts.model)
    cond = pipe.conditioner().encode("a photo of sks-emoji")
    assert not torch.allclose(cond.context, plain.conditioner().encode("a photo of sks-emoji").context)
    # the vectors sit where the name was: same as encoding with the in-memory embedding
    row = pipe.conditioner().chunks("a photo of sks-emoji")[0]
    assert row.fixes and row.fixes[0][1].count == 2
    image = pipe.txt2img("a photo of sks-emoji", steps=2, seed=1, width=32, height=32)[0]
    assert image.size == (32, 32)


def test_embedding_options_are_checked(tmp_path):
    with pytest.raises(InvalidArgument, match="token"):
        train_embedding(options(tmp_path, token="two words"))
    with pytest.raises(InvalidArgument, match="num-vectors"):
        train_embedding(options(tmp_path, num_vectors=0))
    with pytest.raises(InvalidArgument, match="output"):
        train_embedding(options(tmp_path, output=tmp_path / "x.bin"))
    assert caption_for("a photo of {token}, {caption}", "tok", "") == "a photo of tok"
    assert caption_for("{caption}, {token} style", "tok", "a cat") == "a cat, tok style"
