"""Our Qwen3 equals transformers' Qwen3 on the same random weights (tiny configs): every hidden state,
with right or left padding; the config is read back from the shapes; files with and without the
`model.` prefix or a language-model head load, and so do llama.cpp GGUF files (quantised
projections kept as stored); the full Qwen3-4B and Qwen3-8B build on meta."""
from __future__ import annotations

import pytest
import torch
from transformers import Qwen3ForCausalLM, Qwen3Model

from opensd.checkpoints.files import read_state_dict
from opensd.checkpoints.keymap_qwen3 import is_qwen3, qwen3_config, qwen3_state_dict
from opensd.errors import CheckpointError
from opensd.models.qwen3 import QWEN3_4B, QWEN3_8B, Qwen3Config, Qwen3TextEncoder, attention_bias
from opensd.models.stored_weights import StoredLinear
from opensd.pipeline.weights import assign
from qwen_fixtures import hf_config, hf_qwen3, write_gguf
from reference import assert_close_scaled

# Grouped-query attention (2 query heads per key/value head), a head width other than hidden/heads.
TINY = Qwen3Config(vocab_size=120, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
LENGTH = 20


def ours_from(sd: dict, cfg: Qwen3Config = TINY, prefix: str = "") -> Qwen3TextEncoder:
    ours = Qwen3TextEncoder(cfg).eval()
    ours.load_state_dict(qwen3_state_dict(sd, prefix), strict=True)
    return ours


def _batch(left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sequences of 20, 13 and 5 real tokens, padded on the left or the right."""
    ids = torch.randint(0, TINY.vocab_size, (3, LENGTH), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(ids)
    for row, n in enumerate((LENGTH, 13, 5)):
        if left:
            mask[row, LENGTH - n:] = 1
        else:
            mask[row, :n] = 1
    return ids, mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
@torch.no_grad()
def test_every_hidden_state_matches_transformers(left, attn):
    ref = hf_qwen3(TINY, seed=2, attn=attn)
    ours = ours_from(ref.state_dict())
    ids, mask = _batch(left)
    want = ref.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = ours.hidden_states(ids, mask)
    assert len(got) == len(want) == TINY.num_hidden_layers + 1
    real = mask.bool()  # a left-padded pad token sees no token at all: its state is padding in both
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close_scaled(g[real], w[real], 1e-5)
        if not left:
            assert_close_scaled(g, w, 1e-5)
    # the default: the next-to-last hidden state, as Z-Image takes it
    assert_close_scaled(ours(ids, mask)[real], want[-2][real], 1e-5)


@torch.no_grad()
def test_without_a_mask_it_is_causal():
    ref = hf_qwen3(TINY, seed=3)
    ours = ours_from(ref.state_dict())
    ids, _ = _batch(False)
    want = ref.model(input_ids=ids).last_hidden_state
    assert_close_scaled(ours(ids, layer=-1), want, 1e-5)
    # a token's state does not depend on what follows it
    cut = ours(ids[:, :7], layer=-1)
    assert_close_scaled(cut, want[:, :7], 1e-5)


@torch.no_grad()
def test_padding_changes_nothing_for_the_real_tokens():
    ours = ours_from(hf_qwen3(TINY, seed=4).state_dict())
    ids, mask = _batch(False)
    alone = ours(ids[1:2, :13])
    for pad_ids in (ids[1:2], torch.zeros_like(ids[1:2])):
        padded = ours(torch.cat([ids[1:2, :13], pad_ids[:, 13:]], dim=1), mask[1:2])
        assert_close_scaled(padded[:, :13], alone, 1e-5)


@torch.no_grad()
def test_a_model_save_without_the_prefix_or_head_loads():
    ref = hf_qwen3(TINY, seed=5)
    sd = ref.state_dict()
    assert "lm_head.weight" in sd and "model.embed_tokens.weight" in sd
    bare = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
    ids, mask = _batch(True)
    want = ours_from(sd)(ids, mask)
    assert_close_scaled(ours_from(bare)(ids, mask), want, 0)
    prefixed = {"text_encoders.qwen3_4b.transformer." + k: v for k, v in sd.items()}
    assert_close_scaled(ours_from(prefixed, prefix="text_encoders.qwen3_4b.transformer.")(ids, mask), want, 0)


def test_config_from_shapes():
    sd = hf_qwen3(TINY).state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert qwen3_config(shapes) == TINY
    assert is_qwen3(shapes)
    bare = {k[len("model."):]: s for k, s in shapes.items() if k.startswith("model.")}
    assert qwen3_config(bare) == TINY and is_qwen3(bare)
    assert not is_qwen3({"encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)})
    with pytest.raises(CheckpointError, match="incomplete Qwen text encoder: no model.layers.0.mlp.gate_proj"):
        qwen3_config({k: s for k, s in shapes.items() if "gate_proj" not in k}, path="te.safetensors")
    # without q/k norms it is read as Qwen2 (Qwen2.5-VL's language model), heads of 128 unless told
    with pytest.raises(CheckpointError, match="not heads of 128"):
        qwen3_config({k: s for k, s in shapes.items() if "_norm.weight" not in k or "layernorm" in k})


def test_layer_index_out_of_range():
    ours = Qwen3TextEncoder(TINY)
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(IndexError):
        ours(ids, layer=TINY.num_hidden_layers + 1)
    assert ours(ids, layer=-(TINY.num_hidden_layers + 1)).shape == (1, 3, TINY.hidden_size)


# Qwen3-4B (Z-Image, klein 4B) without its tied head: 4.02 B parameters; Qwen3-8B (klein 9B):
# 8.19 B with its untied 151936 x 4096 head (0.62 B), not kept here
@pytest.mark.parametrize("full,low,high", [(QWEN3_4B, 4.0e9, 4.1e9), (QWEN3_8B, 7.5e9, 7.6e9)], ids=["4b", "8b"])
def test_full_size_on_meta(full, low, high):
    with torch.device("meta"):
        ours = Qwen3TextEncoder(full)
        ref = Qwen3Model(hf_config(full))
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in qwen3_state_dict(ref.state_dict()).items()}
    assert got == want
    assert qwen3_config(got) == full
    n = sum(p.numel() for p in ours.parameters())
    assert low < n < high, n


@torch.no_grad()
def test_a_llama_cpp_gguf_file_loads_as_transformers_reads_it(tmp_path):
    """A GGUF text encoder (llama.cpp's names, Q8_0 projections, as ComfyUI-GGUF users have them):
    renamed, its blocks kept and unpacked per call, equal to transformers' own GGUF reading."""
    cfg = Qwen3Config(vocab_size=130, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    path = write_gguf(tmp_path / "qwen3.gguf", hf_qwen3(cfg, seed=6))
    ref = Qwen3ForCausalLM.from_pretrained(str(tmp_path), gguf_file=path.name, config=hf_config(cfg)).eval()

    sd = read_state_dict(path, keep_quantized=True)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert "blk.0.attn_q_norm.weight" in shapes and is_qwen3(shapes) and qwen3_config(shapes) == cfg
    with torch.device("meta"):
        ours = Qwen3TextEncoder(cfg).eval()
    sd = qwen3_state_dict(sd)
    assert sd.keys() == ours.state_dict().keys()
    assign(ours, sd, list(sd), lambda key: torch.float32, "cpu", keeps_stored=lambda key: True)
    assert isinstance(ours.model.layers[0].self_attn.q_proj, StoredLinear)

    ids, mask = _batch(False)
    ids = ids % cfg.vocab_size
    want = ref.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for g, w in zip(ours.hidden_states(ids, mask), want):
        assert_close_scaled(g, w, 1e-5)


@torch.no_grad()
def test_runs_in_bf16_as_transformers_does():
    """Stored and run in bf16 (the released file's dtype): as close to transformers' bf16 run as
    both are to the fp32 result, and no farther from fp32 than transformers is."""
    ref = hf_qwen3(TINY, seed=8)
    ours = ours_from(ref.state_dict()).to(torch.bfloat16)
    ids, mask = _batch(True)
    real = mask.bool()
    exact = ref.model(input_ids=ids, attention_mask=mask).last_hidden_state[real]
    want = ref.to(torch.bfloat16).model(input_ids=ids, attention_mask=mask).last_hidden_state[real]
    got = ours(ids, mask, layer=-1)[real]
    assert got.dtype == torch.bfloat16
    ref_error = (want.float() - exact).abs().max()
    assert (got.float() - exact).abs().max() <= 1.5 * ref_error
    assert (got.float() - want.float()).abs().max() <= 2 * ref_error


@torch.no_grad()
def test_left_padding_in_fp16_makes_no_nans():
    ref = hf_qwen3(TINY, seed=9)
    ours = ours_from(ref.state_dict())
    ids, mask = _batch(True)
    real = mask.bool()
    want = ours(ids, mask)[real]
    got = ours.to(torch.float16)(ids, mask)
    assert torch.isfinite(got).all()
    assert_close_scaled(got[real], want, 1e-2)
    # every query sees at least one key (a left-padded pad token: itself), so that no row of logits
    # is all at the dtype's minimum, which fused fp16 kernels may turn into -inf and NaNs
    bias, live = attention_bias(mask, *ids.shape, ids.device, torch.float16)
    assert ((bias == 0).sum(-1) >= 1).all()
    # ... and its attention output is 0, as torch's sdpa gives transformers for a row hidden entirely
    assert live[2, 0, 0] == 0 and live[2, -1, 0] == 1 and live[0].all()
    assert bias[2, 0, 0, 0] == 0 and bias[2, 0, 0, 1] < 0  # the first pad sees only itself
    assert (bias[2, 0, -1] == 0).sum() == 5  # the last real token sees the 5 real ones


def test_plain_float8_weights_pass_as_they_are():  # scaled ones: test_scaled_fp8.py
    plain = {k: v.to(torch.float8_e4m3fn) if k.endswith("proj.weight") else v
             for k, v in hf_qwen3(TINY).state_dict().items()}
    assert qwen3_state_dict(plain)["model.layers.0.mlp.up_proj.weight"].dtype == torch.float8_e4m3fn


@torch.no_grad()
def test_a_full_512_token_sequence_matches_transformers():
    """Positions up to Z-Image's 512 tokens: the rotary angles at the far end agree too."""
    ref = hf_qwen3(TINY, seed=10)
    ours = ours_from(ref.state_dict())
    ids = torch.randint(0, TINY.vocab_size, (2, 512), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids)
    mask[1, 300:] = 0
    want = ref.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    real = mask.bool()
    assert_close_scaled(ours(ids, mask)[real], want[real], 1e-5)
