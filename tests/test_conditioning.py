"""A1111-compatible prompt encoding on tiny random models (SD1-like and SDXL-like)."""
from dataclasses import replace

import pytest
import torch

from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models import config as C
from opensd.pipeline.conditioning import (
    Conditioning,
    PromptConditioner,
    encode_prompts,
    pad_conditionings,
)
from opensd.pipeline.loader import load_model
from opensd.text.embeddings import Embedding, EmbeddingDatabase
from opensd.text.tokenizer import BOS, EOS, default_tokenizer

CPU = torch.device("cpu")
TINY_XL = C.ModelConfig(
    family="sdxl",
    unet=replace(TINY.unet, context_dim=96, adm_in_channels=32 + 6 * 256, use_linear_in_transformer=True,
                 num_heads=-1, num_head_channels=32),
    vae=replace(TINY.vae, scaling_factor=0.13025),
    text_encoders=(C.TextEncoderConfig(width=64, layers=2, heads=1, skip=2, final_norm=False),
                   C.TextEncoderConfig(naming="openclip", width=32, layers=2, heads=1, act="gelu",
                                       projection_dim=32, skip=2, final_norm=False, pad_token=0, pooled=True)),
    resolution=64,
)


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    path = write_random_checkpoint(tmp_path_factory.mktemp("sd1") / "tiny.safetensors", dtype=torch.float32)
    return load_model(path).model


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    path = write_random_checkpoint(tmp_path_factory.mktemp("xl") / "tiny_xl.safetensors", TINY_XL,
                                   dtype=torch.float32)
    model = load_model(path).model
    assert model.config.family == "sdxl" and [c.naming for c in model.config.text_encoders] == ["hf", "openclip"]
    return model


def direct(model, ids, skip=None):
    """The first encoder called directly on (1, 77) ids."""
    with torch.no_grad():
        return model.text_encoders[0](ids, skip)


def words(n, word="cat"):
    return " ".join([word] * n)


# --- plain, weighted, long ---------------------------------------------------------------------

def test_plain_prompt_equals_direct_encoder_call(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    c = pc.encode("a photo of an astronaut riding a horse")
    ids = tok(["a photo of an astronaut riding a horse"])
    assert c.context.shape == (1, 77, 64) and c.pooled is None
    assert torch.equal(c.context, direct(sd1, ids).hidden)
    assert torch.equal(c.context, encode_prompts(sd1, tok, ["a photo of an astronaut riding a horse"], CPU).context)


def test_plain_prompt_equals_direct_calls_on_sdxl(sdxl, tok):
    pc = PromptConditioner(sdxl, tok, CPU)
    c = pc.encode("a photo of a cat")
    ref = encode_prompts(sdxl, tok, ["a photo of a cat"], CPU)  # pads bigG's ids with 0 after EOS
    assert c.context.shape == (1, 77, 96) and c.pooled.shape == (1, 32)
    assert torch.equal(c.context, ref.context) and torch.equal(c.pooled, ref.pooled)


def test_emphasis_scales_the_weighted_tokens_and_restores_the_mean(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    z = direct(sd1, tok(["a photo of a cat"])).hidden[0]          # "cat" is position 5
    for text, factor in [("a photo of a (cat:1.5)", 1.5), ("a photo of a [cat]", 1 / 1.1),
                         ("a photo of a ((cat))", 1.21)]:
        out = pc.encode(text).context[0]
        ratio = out / z
        other = ratio[torch.arange(77) != 5]
        # Every other position shares one rescale factor k (the mean restoration) ...
        k = other.mean()
        assert torch.allclose(other, k.expand_as(other), rtol=1e-4)
        # ... and "cat" got the weight on top of it, in the right direction.
        assert torch.allclose(ratio[5], (factor * k).expand(64), rtol=1e-4)
        assert torch.allclose(out.mean(), z.mean(), rtol=1e-4, atol=1e-6)
    no_norm = PromptConditioner(sd1, tok, CPU, emphasis="no_norm").encode("a photo of a (cat:1.5)").context[0]
    assert torch.allclose(no_norm[5], 1.5 * z[5]) and torch.equal(no_norm[4], z[4])
    ignore = PromptConditioner(sd1, tok, CPU, emphasis="ignore").encode("a photo of a (cat:1.5)").context[0]
    assert torch.equal(ignore, z)
    literal = PromptConditioner(sd1, tok, CPU, emphasis="none").encode("a (cat:1.5)").context
    assert torch.equal(literal, direct(sd1, tok(["a (cat:1.5)"])).hidden)
    with pytest.raises(InvalidArgument, match="emphasis"):
        PromptConditioner(sd1, tok, CPU, emphasis="loud")


def test_long_prompt_is_encoded_in_chunks(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    c = pc.encode(words(100))                                       # "cat" is one token
    assert c.context.shape == (1, 154, 64)
    assert torch.equal(c.context[:, :77], pc.encode(words(75)).context)
    assert torch.equal(c.context[:, 77:], pc.encode(words(25)).context)
    assert pc.encode(words(75)).length == 77 and pc.encode(words(76)).length == 154
    assert pc.encode(words(151)).length == 231


def test_comma_backtrack_moves_the_tail_to_the_next_chunk(sd1, tok):
    text = words(70, "a") + ", " + words(10, "b")                  # comma is token 70 of 81
    a, b, comma = tok.encode("a")[0], tok.encode("b")[0], tok.encode(",")[0]
    first, second = PromptConditioner(sd1, tok, CPU).chunks(text)
    assert first.ids == [BOS] + [a] * 70 + [comma] + [EOS] * 5
    assert second.ids == [BOS] + [b] * 10 + [EOS] * 66
    first, second = PromptConditioner(sd1, tok, CPU, comma_backtrack=0).chunks(text)
    assert first.ids == [BOS] + [a] * 70 + [comma] + [b] * 4 + [EOS]
    assert second.ids[:8] == [BOS] + [b] * 6 + [EOS]
    # A comma further back than 20 tokens does not move anything.
    first, _ = PromptConditioner(sd1, tok, CPU).chunks(words(50, "a") + ", " + words(30, "b"))
    assert first.ids[-2] == b


def test_break_starts_a_new_chunk(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    c = pc.encode("a red cat BREAK a blue dog")
    assert c.context.shape == (1, 154, 64)
    assert torch.equal(c.context[:, :77], pc.encode("a red cat").context)
    assert torch.equal(c.context[:, 77:], pc.encode("a blue dog").context)
    assert pc.encode("a red cat BREAK").length == 77


def test_clip_skip_applies_to_sd1_only(sd1, sdxl, tok):
    ids = tok(["a cat"])
    skipped = PromptConditioner(sd1, tok, CPU, clip_skip=2).encode("a cat").context
    assert torch.equal(skipped, direct(sd1, ids, skip=2).hidden)
    assert not torch.equal(skipped, direct(sd1, ids).hidden)
    with pytest.raises(InvalidArgument, match="clip_skip"):
        PromptConditioner(sd1, tok, CPU, clip_skip=3)       # the tiny encoder has 2 layers
    xl = PromptConditioner(sdxl, tok, CPU, clip_skip=1).encode("a cat").context
    assert torch.equal(xl, PromptConditioner(sdxl, tok, CPU).encode("a cat").context)


def test_sdxl_pooled_comes_from_the_first_chunk(sdxl, tok):
    pc = PromptConditioner(sdxl, tok, CPU)
    c = pc.encode(words(80) + " BREAK a dog")
    assert c.context.shape == (1, 231, 96)
    assert torch.equal(c.pooled, pc.encode(words(75)).pooled)
    assert not torch.equal(c.pooled, pc.encode("a dog").pooled)


# --- embeddings -----------------------------------------------------------------------------------

class Capture:
    """Records what a token-embedding module outputs (the text encoder's input)."""

    def __init__(self, module):
        self.outputs = []
        self.handle = module.register_forward_hook(lambda m, a, out: self.outputs.append(out.detach().clone()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_embedding_vectors_reach_the_encoder_input(sd1, tok, tmp_path):
    vec = torch.randn(3, 64)
    torch.save({"string_to_param": {"*": vec}}, tmp_path / "mystyle.pt")
    db = EmbeddingDatabase.from_dir(tmp_path)
    pc = PromptConditioner(sd1, tok, CPU, embeddings=db)
    (chunk,) = pc.chunks("a photo in mystyle")
    assert [p for p, _ in chunk.fixes] == [4] and chunk.ids[4:7] == [0, 0, 0]   # BOS a photo in | 3 slots
    assert chunk.ids[7] == EOS
    embedding = sd1.text_encoders[0].transformer.text_model.embeddings.token_embedding
    with Capture(embedding) as cap:
        with_emb = pc.encode("a photo in mystyle").context
    assert torch.equal(cap.outputs[-1][0, 4:7], vec)
    assert not torch.equal(cap.outputs[-1][0, 3], vec[0])
    # The hook is gone afterwards, and without the database the name is just text.
    plain = PromptConditioner(sd1, tok, CPU).encode("a photo in mystyle").context
    assert not torch.equal(with_emb, plain)
    assert len(embedding._forward_hooks) == 0
    # An embedding takes the weight of the brackets around it.
    (chunk,) = pc.chunks("a photo in (mystyle:1.3)")
    assert chunk.multipliers[4:7] == [1.3, 1.3, 1.3] and chunk.multipliers[3] == 1.0


def test_embedding_never_straddles_a_chunk(sd1, tok):
    db = EmbeddingDatabase([Embedding("mystyle", {"": torch.randn(4, 64)})])
    first, second = PromptConditioner(sd1, tok, CPU, embeddings=db).chunks(words(73) + " mystyle")
    assert first.ids[74:] == [EOS, EOS, EOS] and first.fixes == []
    assert [p for p, _ in second.fixes] == [1] and second.ids[1:6] == [0, 0, 0, 0, EOS]


def test_embedding_of_the_wrong_width_is_a_clear_error(sd1, tok, tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(1, 768)}}, tmp_path / "bigstyle.pt")
    pc = PromptConditioner(sd1, tok, CPU, embeddings=EmbeddingDatabase.from_dir(tmp_path))
    with pytest.raises(CheckpointError, match="768-wide vectors but this model's text encoder takes 64") as err:
        pc.encode("a cat in bigstyle")
    assert "bigstyle.pt" in str(err.value)
    assert pc.encode("a cat").length == 77  # prompts that do not mention it are unaffected


def test_sdxl_embedding_pairs_go_to_their_encoders(sdxl, tok):
    l, g = torch.randn(2, 64), torch.randn(2, 32)
    db = EmbeddingDatabase([Embedding("xlstyle", {"clip_l": l, "clip_g": g})])
    pc = PromptConditioner(sdxl, tok, CPU, embeddings=db)
    enc_l, enc_g = sdxl.text_encoders
    with Capture(enc_l.transformer.text_model.embeddings.token_embedding) as cap_l, \
            Capture(enc_g.model.token_embedding) as cap_g:
        c = pc.encode("a xlstyle dog")
    assert torch.equal(cap_l.outputs[-1][0, 2:4], l) and torch.equal(cap_g.outputs[-1][0, 2:4], g)
    assert c.context.shape == (1, 77, 96)
    sd1_style = EmbeddingDatabase([Embedding("old", {"": torch.randn(1, 64)})])
    with pytest.raises(CheckpointError, match="one set per encoder"):
        PromptConditioner(sdxl, tok, CPU, embeddings=sd1_style).encode("old")


# --- schedules, AND, padding ------------------------------------------------------------------------

def test_schedule_resolves_editing_and_and_parts(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    s = pc.schedule("a [cat:dog:2] <lora:film:0.7> AND a bird :0.5", 4)
    assert s.extra_networks == [("lora", "film", ("0.7",))] and "<lora" not in s.prompt
    assert [(p.weight, p.text) for p in s.parts] == [(1.0, "a [cat:dog:2]"), (0.5, " a bird")]
    cat, dog, bird = (pc.encode(t).context for t in ("a cat", "a dog", " a bird"))
    for step, first in [(0, cat), (1, cat), (2, cat), (3, dog)]:  # A1111: step <= end_at_step
        (w1, c1), (w2, c2) = s.at(step)
        assert (w1, w2) == (1.0, 0.5)
        assert torch.equal(c1.context, first) and torch.equal(c2.context, bird)
    assert [text for _, text in s.parts[0].entries] == ["a cat", "a dog"]
    neg = pc.schedule("ugly AND blurry <lora:x:1>", 4, negative=True)
    assert len(neg.parts) == 1 and neg.parts[0].text == "ugly AND blurry <lora:x:1>" and neg.extra_networks == []


def test_schedule_texts_share_chunk_count_and_emphasis_rescale(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    s = pc.schedule(f"[{words(80)}:a (dog:1.5):2]", 4)
    early, late = s.parts[0].conds
    assert early.length == late.length == 154          # the short text got an empty chunk appended
    assert torch.equal(late.context[:, 77:], pc.empty().context)
    # A1111 rescales a batch chunk by one factor: the unweighted text is scaled too.
    alone = pc.encode(words(80)).context[:, :77]
    ratio = early.context[:, :77] / alone
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-4)


def test_padding_cond_and_uncond_to_one_batch(sd1, tok):
    pc = PromptConditioner(sd1, tok, CPU)
    cond, uncond = pc.encode(words(100)), pc.encode("blurry")
    with pytest.raises(ValueError, match="pad them"):
        uncond.cat(cond)
    cond2, uncond2 = pc.pad([cond, uncond])
    assert cond2 is cond and uncond2.length == 154
    assert torch.equal(uncond2.context[:, :77], uncond.context)
    assert torch.equal(uncond2.context[:, 77:], pc.encode("").context)
    assert uncond2.cat(cond2).context.shape == (2, 154, 64)
    odd = Conditioning(torch.zeros(1, 100, 64))
    with pytest.raises(ValueError, match="cannot pad"):
        pad_conditionings([odd, cond], pc.empty())
