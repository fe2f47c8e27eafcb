"""ComfyUI's T5TokenizerOptions (comfy_extras/nodes_cond.py): CLIP in, CLIP out, its T5 prompts laid
out as ComfyUI's SDTokenizer.tokenize_with_weights lays them out with the options `<t5>_min_padding` and
`<t5>_min_length` (comfy/sd1_clip.py): the prompt's pieces, end of text, min_padding padding tokens,
then padding up to min_length. On tiny random Chroma and Flux models: the token layout (the pieces
checked against transformers' T5 tokenizer), the context lengths, Chroma's rows against its default
encoding (T5 attends to the prompt and end of text only, so those rows agree), and ComfyUI's Chroma
recipe (min_padding 1, min_length 0) in a graph giving the image opensd's default Chroma gives."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_workflows_chroma import _graph as chroma_graph
from test_workflows_chroma import _run, env  # noqa: F401  (the module's tiny Chroma in a ComfyUI models folder)
from test_workflows_object_info import check_object_info

from dit_fixtures import flux_parts, hf_tokenizers, load_tiny
from opensd.workflows import GraphError, validate_prompt
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.nodes_dit import clip_text_encode_flux, conditioner_for, t5_tokenizer_options
from opensd.workflows.types import ClipRef

PROMPT = "a photo of a cat"
INT = {"default": 0, "min": 0, "max": 10000, "step": 1}


def test_object_info_matches_comfyui():
    check_object_info("T5TokenizerOptions", (
        {"clip": ["CLIP"], "min_padding": ["INT", INT], "min_length": ["INT", INT]}, ["CLIP"], "model/conditioning",
        "T5 Tokenizer Options", "comfy_extras.nodes_cond", {"experimental": True}))


def _context(clip, text=PROMPT) -> torch.Tensor:
    return clip_text_encode(None, text, clip)[0][0][0]


def test_tokens_are_laid_out_as_comfyuis_tokenizer_lays_them_out(env, tmp_path):
    _, chroma = env
    pieces = hf_tokenizers(tmp_path)["t5"](PROMPT).input_ids  # transformers' T5: the pieces, then end of text
    assert pieces[-1] == 1
    for padding, length in ((0, 0), (1, 0), (3, 0), (0, 40), (2, 7), (0, len(pieces) - 1)):
        cond = chroma.conditioner(None, t5_padding=(padding, length))
        ids, weights = cond._t5_tokens(PROMPT, chroma.config.t5_length)
        want = pieces + [0] * padding
        want += [0] * (length - len(want))  # sd1_clip: min_padding first, then up to min_length
        assert ids == want and weights == [1.0] * len(want)
    long = "cat " * 400  # not cut at the model's T5 length: ComfyUI's T5 tokenizers have no maximum
    ids, _ = chroma.conditioner(None, t5_padding=(0, 0))._t5_tokens(long, chroma.config.t5_length)
    assert len(ids) > chroma.config.t5_length and ids[-1] == 1


def test_chroma_contexts_against_the_default_encoding(env):
    _, chroma = env
    clip = ClipRef(chroma, "chroma")
    n = len(chroma.loaded.tokenizers["t5"].encode(PROMPT))  # pieces; end of text at n
    default = _context(clip)
    assert default.shape[1] == chroma.config.t5_length and default[:, n + 2:].abs().sum() == 0
    for (padding, length), size in {(1, 0): n + 2, (0, 0): n + 1, (4, 0): n + 5, (0, 30): 30, (2, 3): n + 3}.items():
        got = _context(t5_tokenizer_options(None, clip, padding, length)[0])
        assert got.shape == (1, size, default.shape[2])
        # T5 attends to the prompt and end of text only: the rows there, and the first padding row, agree
        torch.testing.assert_close(got[:, :min(size, n + 2)], default[:, :min(size, n + 2)])
        assert size <= n + 2 or got[:, n + 2:].abs().amin(dim=-1).gt(0).all()  # rows kept, none zeroed
    assert clip.t5_padding is None  # the input CLIP is left as it was


def test_a_clip_without_t5_is_passed_on_unchanged():
    seen = []
    pipe = SimpleNamespace(config=SimpleNamespace(t5=None), conditioner=lambda *a, **k: seen.append((a, k)))
    conditioner_for(ClipRef(pipe, "sd", clip_skip=2, t5_padding=(1, 0)))
    conditioner_for(ClipRef(SimpleNamespace(config=SimpleNamespace(), conditioner=pipe.conditioner), "sd",
                            t5_padding=(1, 0)))
    assert seen == [((2,), {}), ((None,), {})]


def test_flux_t5_context_takes_the_options(tmp_path):
    flux = load_tiny(tmp_path / "flux", "flux", flux_parts())
    clip = ClipRef(flux, "flux")
    n = len(flux.loaded.tokenizers["t5"].encode(PROMPT))

    def t5_rows(c):
        return clip_text_encode_flux(None, c, PROMPT, PROMPT, 3.5)[0][0][0].shape[1]
    assert t5_rows(clip) == flux.config.t5_length
    assert t5_rows(t5_tokenizer_options(None, clip, 0, 0)[0]) == n + 1
    assert t5_rows(t5_tokenizer_options(None, clip, 2, 64)[0]) == 64
    assert _context(t5_tokenizer_options(None, clip, 3, 0)[0]).shape[1] == n + 4


def _graph(options=None) -> dict:
    """test_workflows_chroma's graph, its prompts encoded with a CLIP through T5TokenizerOptions."""
    g = chroma_graph()
    if options is not None:
        g["14"] = {"class_type": "T5TokenizerOptions",
                   "inputs": {"clip": ["12", 0], "min_padding": options[0], "min_length": options[1]}}
        for node in ("6", "7"):
            g[node]["inputs"]["clip"] = ["14", 0]
    return g


def test_comfyuis_chroma_recipe_in_a_graph_gives_opensds_default_image(env):
    ctx, _ = env
    default = _run(ctx, _graph()).astype(int)
    recipe = _run(ctx, _graph((1, 0))).astype(int)  # the masked all-zero rows of the default are simply absent
    assert np.abs(recipe - default).max() <= 1 and default.std() > 1
    assert np.abs(_run(ctx, _graph((0, 0))).astype(int) - default).max() > 1  # no padding token: another image


def test_bad_option_values_are_refused(env):
    ctx, _ = env
    for value, kind in ((-1, "value_smaller_than_min"), (10001, "value_bigger_than_max"), ("x", "invalid_input_type")):
        with pytest.raises(GraphError) as e:
            validate_prompt(_graph((value, 0)), ctx)
        (err,) = e.value.payload["node_errors"]["14"]["errors"]
        assert err["type"] == kind and err["extra_info"]["input_name"] == "min_padding"
