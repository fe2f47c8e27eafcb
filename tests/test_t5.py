"""Our T5 v1.1 encoder equals transformers' T5EncoderModel on the same random weights (tiny configs),
loads files stored with either name of the tied embedding, and the full T5-XXL builds on meta."""
from __future__ import annotations

import pytest
import torch
from transformers import T5Config as HFT5Config
from transformers import T5EncoderModel as HFT5EncoderModel

from opensd.checkpoints.keymap_t5 import t5_state_dict
from opensd.models.config_dit import T5_XXL, T5Config
from opensd.models.t5 import T5EncoderModel, relative_position_bucket
from reference import assert_close_scaled

# Sequences longer than max_distance so that both the log-spaced and the clamped buckets are used.
TINY = T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                relative_attention_max_distance=20)
LENGTH = 40


def _hf(cfg: T5Config, seed: int = 0) -> HFT5EncoderModel:
    torch.manual_seed(seed)
    ref = HFT5EncoderModel(HFT5Config(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        layer_norm_epsilon=cfg.layer_norm_epsilon, feed_forward_proj="gated-gelu", dropout_rate=0.0))
    with torch.no_grad():  # norms around 1, and the position bias large enough to matter
        for name, p in ref.named_parameters():
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(2 * torch.randn_like(p))
    return ref.eval()


def _ours(ref: HFT5EncoderModel, cfg: T5Config, prefix: str = "") -> T5EncoderModel:
    ours = T5EncoderModel(cfg).eval()
    ours.load_state_dict(t5_state_dict({prefix + k: v for k, v in ref.state_dict().items()}, prefix), strict=True)
    return ours


def _ids(seed: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, TINY.vocab_size, (batch, LENGTH), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_matches_transformers():
    ref = _hf(TINY)
    ids = _ids()
    want = ref(input_ids=ids).last_hidden_state
    assert_close_scaled(_ours(ref, TINY)(ids), want, 1e-5)


@torch.no_grad()
def test_matches_transformers_with_a_padding_mask():
    ref = _hf(TINY, seed=2)
    ids = _ids(seed=3)
    mask = torch.ones_like(ids)
    mask[0, 25:] = 0
    want = ref(input_ids=ids, attention_mask=mask).last_hidden_state
    got = _ours(ref, TINY)(ids, mask)
    assert_close_scaled(got, want, 1e-5)
    # the mask matters: without it the real tokens of row 0 see the padding
    assert (_ours(ref, TINY)(ids)[0, :25] - want[0, :25]).abs().max() > 1e-3


def test_bucket_changes_are_caught():
    # Every offset maps to the bucket transformers computes; a table shifted by one would not.
    from transformers.models.t5.modeling_t5 import T5Attention as HFAttention
    offsets = torch.arange(-300, 301)[None, :]
    for buckets, distance in [(32, 128), (32, 20), (16, 64)]:
        want = HFAttention._relative_position_bucket(offsets, bidirectional=True, num_buckets=buckets,
                                                     max_distance=distance)
        assert torch.equal(relative_position_bucket(offsets, buckets, distance), want)


@pytest.mark.parametrize("stored", ["shared", "embed_tokens", "both"])
def test_either_name_of_the_tied_embedding_loads(stored):
    ref = _hf(TINY, seed=4)
    sd = dict(ref.state_dict())
    if stored == "shared":
        del sd["encoder.embed_tokens.weight"]
    elif stored == "embed_tokens":
        del sd["shared.weight"]
    prefix = "text_encoders.t5xxl.transformer."
    ours = T5EncoderModel(TINY).eval()
    ours.load_state_dict(t5_state_dict({prefix + k: v for k, v in sd.items()} | {"other.weight": torch.zeros(1)},
                                       prefix), strict=True)
    with torch.no_grad():
        assert_close_scaled(ours(_ids()), ref(input_ids=_ids()).last_hidden_state, 1e-5)


def test_t5_xxl_on_meta():
    with torch.device("meta"):
        ours = T5EncoderModel(T5_XXL)
        ref = HFT5EncoderModel(HFT5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                          num_heads=64, feed_forward_proj="gated-gelu"))
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    want = {k: tuple(v.shape) for k, v in t5_state_dict(ref.state_dict()).items()}
    assert got == want
    n = sum(p.numel() for p in ours.parameters())
    assert 4.7e9 < n < 4.8e9, n  # T5-XXL's encoder: 4.76 B parameters
