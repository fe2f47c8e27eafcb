"""A1111's prompt-encoding settings as generation parameters: emphasis, comma_padding_backtrack,
sdxl_clip_l_skip and SDXL's crop coordinates, through Params, the pipeline, infotext and the CLI."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from test_conditioning import TINY_XL, direct, words

from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.conditioning import PromptConditioner, token_embedding
from opensd.pipeline.infotext import parse_infotext
from opensd.pipeline.infotext_params import image_infotext, recorded
from opensd.pipeline.pipeline import load
from opensd.server.infotext_request import request_from_infotext
from opensd.text.tokenizer import BOS, EOS, default_tokenizer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("sd1") / "tiny.safetensors", dtype=torch.float32))


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    path = write_random_checkpoint(tmp_path_factory.mktemp("xl") / "tiny_xl.safetensors", TINY_XL,
                                   dtype=torch.float32)
    return load(path)


def _px(image):
    return np.asarray(image).astype(np.int16)


def gen(pipe, prompt, **kw):
    return _px(pipe.txt2img(prompt, steps=2, seed=3, width=64, height=64, **kw)[0])


# --- emphasis -----------------------------------------------------------------------------------

def test_emphasis_modes_reach_the_encoder(pipe):
    weighted = gen(pipe, "a (cat:1.8) [dog]")
    assert (gen(pipe, "a (cat:1.8) [dog]", emphasis="ignore") == gen(pipe, "a cat dog")).all()  # weights ignored
    assert (gen(pipe, "a (cat:1.8) [dog]", emphasis="original") == weighted).all()  # the default
    no_norm = gen(pipe, "a (cat:1.8) [dog]", emphasis="no_norm")
    literal = gen(pipe, "a (cat:1.8) [dog]", emphasis="none")
    assert (no_norm != weighted).any() and (literal != weighted).any() and (literal != no_norm).any()
    # "None": brackets are text, so BREAK is text too (one chunk, not two)
    assert (gen(pipe, "a BREAK b", emphasis="none") != gen(pipe, "a BREAK b")).any()


def test_emphasis_infotext_as_a1111_writes_it_and_reads_it_back(pipe):
    def text(prompt, **kw):
        return image_infotext(pipe, pipe.txt2img(prompt, steps=1, seed=1, width=64, height=64, **kw)[0])

    written = text("a (cat:1.2)", emphasis="no_norm")
    assert "Emphasis: No norm" in written
    assert "Emphasis" not in text("a (cat:1.2)")                   # "Original" is not written
    assert "Emphasis" not in text("a cat", emphasis="none")        # nor without ( or [ in a text encoded
    assert "Emphasis" not in text("a [cat:dog:1]", emphasis="none")  # editing leaves "a cat" / "a dog"
    assert "Emphasis: None" in text("a [cat]", negative_prompt="", emphasis="none")
    prompt, negative, params = parse_infotext(written)
    assert recorded(prompt, negative, params).settings["emphasis"] == "no_norm"
    assert request_from_infotext(written, [])[0]["override_settings"]["emphasis"] == "No norm"
    with pytest.raises(InvalidArgument, match="Emphasis"):
        recorded(prompt, negative, {**params, "Emphasis": "Loud"})


@pytest.mark.parametrize("field,value", [("emphasis", "Loud"), ("emphasis", "No norm"),
                                         ("comma_padding_backtrack", 75), ("comma_padding_backtrack", -1),
                                         ("sdxl_crop_top", -8), ("sdxl_crop_left", 1.5),
                                         ("sdxl_clip_l_skip", "yes")])
def test_bad_values_name_the_parameter(pipe, field, value):
    with pytest.raises(InvalidArgument, match=field):
        pipe.txt2img("x", steps=1, **{field: value})


# --- comma padding backtrack -----------------------------------------------------------------

def test_comma_padding_backtrack_cuts_chunks_as_a1111(pipe):
    text = words(70, "a") + ", " + words(10, "b")                  # the comma is token 70 of 81
    # 20 (A1111's default): the first chunk ends at the comma, as an explicit BREAK there would end it
    assert (gen(pipe, text) == gen(pipe, words(70, "a") + ", BREAK " + words(10, "b"))).all()
    # 0: plain 75-token chunks
    plain = words(70, "a") + ", " + words(4, "b") + " BREAK " + words(6, "b")
    assert (gen(pipe, text, comma_padding_backtrack=0) == gen(pipe, plain)).all()
    # 5: the comma is 5 tokens back from the full chunk's end, within reach; 4 is not
    assert (gen(pipe, text, comma_padding_backtrack=5) == gen(pipe, text)).all()
    assert (gen(pipe, text, comma_padding_backtrack=4) == gen(pipe, plain)).all()


# --- SDXL: CLIP-L skip and crop coordinates ----------------------------------------------------

def test_sdxl_clip_l_skip_counts_clip_l_layers_from_the_last(xl):
    tok, model = default_tokenizer(), xl.model
    ids = tok(["a cat"])
    default = PromptConditioner(model, tok, CPU).encode("a cat").context
    skip = PromptConditioner(model, tok, CPU, clip_l_skip=True).encode("a cat").context
    width_l = model.config.text_encoders[0].width
    assert torch.equal(skip[..., :width_l], direct(model, ids, skip=1).hidden)  # A1111: hidden_states[-1]
    assert torch.equal(skip[..., width_l:], default[..., width_l:])              # bigG keeps its layer
    assert not torch.equal(skip, default)
    two = PromptConditioner(model, tok, CPU, clip_skip=2, clip_l_skip=True).encode("a cat").context
    assert torch.equal(two, default)  # clip skip 2 is SDXL's own penultimate layer
    with pytest.raises(InvalidArgument, match="clip_skip"):
        PromptConditioner(model, tok, CPU, clip_skip=3, clip_l_skip=True)  # the tiny CLIP-L has 2 layers
    plain = gen(xl, "a cat")
    assert (gen(xl, "a cat", sdxl_clip_l_skip=True) != plain).any()
    assert (gen(xl, "a cat", sdxl_clip_l_skip=True, clip_skip=2) == plain).all()


def test_sdxl_clip_l_skip_leaves_sd1_alone(pipe):
    assert (gen(pipe, "a cat", sdxl_clip_l_skip=True) == gen(pipe, "a cat")).all()


def _fourier(values, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = torch.tensor(values, dtype=torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).reshape(1, -1)


def test_sdxl_crop_coordinates_condition_the_pooled_vector(xl):
    sched = xl.cond_schedule("a cat", None, 2, 64, 48, crop=(16, 8))
    y = sched.parts[0].conds[0].pooled
    pooled_width = y.shape[1] - 6 * 256
    # SDXL's added conditions: original (h, w), crop (top, left), target (h, w)
    assert torch.allclose(y[:, pooled_width:], _fourier([48, 64, 16, 8, 48, 64]), atol=1e-6)
    plain = gen(xl, "a cat")
    assert (gen(xl, "a cat", sdxl_crop_top=0, sdxl_crop_left=0) == plain).all()
    assert (gen(xl, "a cat", sdxl_crop_top=16) != plain).any()
    assert (gen(xl, "a cat", sdxl_crop_left=16) != gen(xl, "a cat", sdxl_crop_top=16)).any()


def test_cli_flags_and_from(tmp_path):
    from opensd.cli import main
    from opensd.pipeline.infotext import read_infotext
    from PIL import Image

    ckpt = write_random_checkpoint(tmp_path / "m.safetensors")
    first, again, plain = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    fast = ["-m", str(ckpt), "--steps", "2", "--seed", "4", "--width", "64", "--height", "64"]
    assert main(["generate", "a (cat:1.5)", *fast, "--emphasis", "no_norm", "--comma-padding-backtrack", "0",
                 "--sdxl-crop-top", "8", "-o", str(first)]) == 0
    assert parse_infotext(read_infotext(first))[2]["Emphasis"] == "No norm"
    assert main(["generate", "--from", str(first), "-m", str(ckpt), "-o", str(again)]) == 0
    assert np.array_equal(_px(Image.open(again)), _px(Image.open(first)))
    assert main(["generate", "a (cat:1.5)", *fast, "-o", str(plain)]) == 0
    assert not np.array_equal(_px(Image.open(plain)), _px(Image.open(first)))
    assert main(["generate", "x", *fast, "--comma-padding-backtrack", "80", "-o", str(plain)]) != 0


# --- A1111's old emphasis implementation ---------------------------------------------------------

def test_old_emphasis_weighs_by_bracket_tokens_in_one_cut_chunk(pipe):
    tok = default_tokenizer()
    old = PromptConditioner(pipe.model, tok, CPU, old_emphasis=True)
    a, cat, dog = (tok.encode(w)[0] for w in ("a", "cat", "dog"))
    (chunk,) = old.chunks("a ((cat)) [dog]")                       # "((", "))", "[", "]" are tokens
    assert chunk.ids[:5] == [BOS, a, cat, dog, EOS]
    assert chunk.multipliers[1:4] == pytest.approx([1.0, 1.1 * 1.1, 1 / 1.1])
    (chunk,) = old.chunks("a (cat:1.5)")                            # no weight syntax: ":1.5" is text
    assert chunk.multipliers[2:7] == pytest.approx([1.1] * 5) and chunk.multipliers[7] == 1.0
    (chunk,) = old.chunks(words(100))                               # cut at 75 tokens, not chunked
    assert chunk.ids[75] == cat and chunk.ids[76] == EOS
    # where the brackets are their own tokens, old and new emphasis give the same image
    assert (gen(pipe, "a ((cat)) [dog]", use_old_emphasis_implementation=True) == gen(pipe, "a ((cat)) [dog]")).all()
    assert (gen(pipe, words(100), use_old_emphasis_implementation=True) == gen(pipe, words(75))).all()
    old_syntax = gen(pipe, "a (cat:1.5)", use_old_emphasis_implementation=True)
    assert (old_syntax != gen(pipe, "a (cat:1.5)")).any()
    text = image_infotext(pipe, pipe.txt2img("a (cat)", steps=1, seed=1, width=64, height=64, emphasis="no_norm",
                                             use_old_emphasis_implementation=True)[0])
    assert "Emphasis" not in text  # A1111's old path writes no key


def test_old_emphasis_keeps_the_part_of_an_embedding_that_fits(pipe):
    from opensd.text.embeddings import Embedding, EmbeddingDatabase

    tok, vec = default_tokenizer(), torch.randn(4, pipe.model.config.text_encoders[0].width)
    old = PromptConditioner(pipe.model, tok, CPU, EmbeddingDatabase([Embedding("mystyle", {"": vec})]),
                            old_emphasis=True)
    (chunk,) = old.chunks(words(73) + " mystyle")
    assert [p for p, _ in chunk.fixes] == [74] and chunk.ids[74:] == [0, 0, EOS]
    seen = []
    module = token_embedding(pipe.model.text_encoders[0], "hf")
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out.clone()))
    try:
        old.encode(words(73) + " mystyle")
    finally:
        handle.remove()
    assert torch.allclose(seen[-1][0, 74:77], vec[:3])  # the vectors that fit, over the end token too (A1111)


def test_hires_pass_prompt_editing_runs_on_a1111s_timelines(pipe, monkeypatch):
    """[cat:dog:0.5] over 4 steps, then a 2-step hires pass: A1111 1.8+ puts the hires pass after
    the first pass on one timeline (0.5 is long past: all dog); its old timelines read 0.5 of the
    first pass's 4 steps again (step 2: all cat); the first pass switches at step 2 either way."""
    from opensd.pipeline.params import Hires

    used = _edited_schedules(pipe, monkeypatch)
    run = dict(steps=4, seed=3, width=64, height=64, hires=Hires(scale=1.5, steps=2, denoise=0.6))
    (new,) = pipe.txt2img("a [cat:dog:0.5]", **run)
    assert used == [[(2, "a cat"), (4, "a dog")], [(2, "a dog")]]
    used.clear()
    (old,) = pipe.txt2img("a [cat:dog:0.5]", old_scheduling=True, **run)
    assert used == [[(2, "a cat"), (4, "a dog")]] * 2  # the hires pass's 2 steps end before step 2
    assert (np.asarray(new) != np.asarray(old)).any()
    text = image_infotext(pipe, old)
    assert parse_infotext(text)[2]["Old prompt editing timelines"] == "True"
    assert recorded(*parse_infotext(text)).settings["old_scheduling"] is True
    assert "Old prompt editing timelines" not in image_infotext(pipe, new)
    # A1111 writes the key when the timelines differ: nothing to edit in one pass, no key; a hires
    # pass of other steps puts even a plain prompt on another timeline (its schedules differ)
    (plain,) = pipe.txt2img("a cat", old_scheduling=True, **{**run, "hires": None})
    assert "Old prompt editing timelines" not in image_infotext(pipe, plain)
    (plain_hires,) = pipe.txt2img("a cat", old_scheduling=True, **run)
    assert "Old prompt editing timelines: True" in image_infotext(pipe, plain_hires)


def _edited_schedules(pipe, monkeypatch) -> list:
    """The (end step, text) entries of every "a [..." prompt the pipeline encodes, as they come."""
    used = []
    schedule = pipe.cond_schedule

    def recording(prompt, *a, **k):
        sched = schedule(prompt, *a, **k)
        if prompt.startswith("a ["):
            used.append(sched.parts[0].entries)
        return sched

    monkeypatch.setattr(pipe, "cond_schedule", recording)
    return used


def test_img2img_prompt_editing_counts_over_the_requested_steps(pipe, monkeypatch):
    """A1111 encodes an img2img pass's prompts over its requested steps and counts the steps it
    samples (the last int(strength * steps) + 1) from 0: [cat:dog:0.5] of 8 steps at strength 0.5
    samples 5 steps, all before step 4 ends, so all cat."""
    used = _edited_schedules(pipe, monkeypatch)
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    pipe.img2img(image, "a [cat:dog:0.5]", steps=8, strength=0.5, seed=3)
    assert used == [[(4, "a cat"), (8, "a dog")]]
