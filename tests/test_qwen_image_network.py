"""Qwen-Image's network against diffusers' QwenImageTransformer2DModel on tiny random weights, fp32:
the same state dict loaded as it is (the released single file's names are diffusers'), prompts of
different lengths in one batch (the text mask), non-square latents of odd patch counts (the centred
RoPE's halves), and the released size built on the meta device and read back from its shapes."""
from __future__ import annotations

import pytest
import torch

from opensd.models.config_dit import QwenImageConfig
from opensd.models.qwen_image import QwenImage
from reference import assert_close_scaled
from qwen_image_fixtures import QI_AXES, QI_CTX, QI_DIM, QI_HEADS, QI_LATENT, qwen_image_transformer

CFG = QwenImageConfig(in_channels=4 * QI_LATENT, out_channels=QI_LATENT, num_layers=2,
                      attention_head_dim=QI_DIM // QI_HEADS, num_attention_heads=QI_HEADS,
                      joint_attention_dim=QI_CTX, axes_dims_rope=QI_AXES)


@pytest.fixture(scope="module")
def pair():
    theirs = qwen_image_transformer(seed=3)
    ours = QwenImage(CFG).eval()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _theirs(net, x, t, context, mask=None):
    from diffusers import QwenImagePipeline
    b, c, height, width = x.shape
    packed = QwenImagePipeline._pack_latents(x, b, c, height, width)
    with torch.no_grad():
        out = net(packed, context, mask, t, [[(1, height // 2, width // 2)]] * b, return_dict=False)[0]
    return QwenImagePipeline._unpack_latents(out, height * 8, width * 8, 8)[:, :, 0]


def _inputs(height, width, length=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, QI_LATENT, height, width, generator=g), torch.tensor([0.3, 0.85]),
            torch.randn(2, length, QI_CTX, generator=g))


def test_state_dict_keys_are_diffusers(pair):
    ours, theirs = pair
    assert set(ours.state_dict()) == set(theirs.state_dict())


@pytest.mark.parametrize("height, width", [(6, 10), (10, 4), (8, 8)])
def test_equals_diffusers(pair, height, width):
    ours, theirs = pair
    x, t, context = _inputs(height, width)
    with torch.no_grad():
        got = ours(x, t, context)
    assert_close_scaled(got, _theirs(theirs, x, t, context), rel=1e-5)


def test_prompts_of_different_lengths_in_one_batch_equal_diffusers(pair):
    """A 7-token and a 4-token prompt padded to 7: the mask hides the short one's padding keys, as
    diffusers' encoder_hidden_states_mask does, and the short one alone gives the same image."""
    ours, theirs = pair
    x, t, context = _inputs(6, 8, seed=1)
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    context = context * mask[..., None]
    with torch.no_grad():
        got = ours(x, t, context, mask)
        alone = ours(x[1:], t[1:], context[1:, :4])
    assert_close_scaled(got, _theirs(theirs, x, t, context, mask.long()), rel=1e-5)
    assert_close_scaled(got[1:], alone, rel=1e-5)


def test_odd_latent_sides_are_refused(pair):
    from opensd.errors import InvalidArgument
    ours, _ = pair
    x, t, context = _inputs(5, 8)
    with pytest.raises(InvalidArgument, match="2x2 patches"):
        ours(x, t, context)


def test_released_size_on_meta_is_detected_from_its_shapes():
    """Qwen-Image as released: 20.4B parameters, and the config read back from the shapes (bare and
    under ComfyUI's prefix) is the one built."""
    from opensd.checkpoints import detect_dit as DD
    from opensd.models.config_dit import QWEN_IMAGE
    with torch.device("meta"):
        net = QwenImage(QWEN_IMAGE)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 20.43e9) / 20.43e9 < 0.01, count
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["transformer_blocks.59.img_mlp.net.0.proj.weight"] == (12288, 3072)
    assert shapes["txt_in.weight"] == (3072, 3584) and shapes["img_in.weight"] == (3072, 64)
    assert DD.qwen_image_config(shapes, "", {}) == QWEN_IMAGE
    assert DD.qwen_image_config({DD.NET + k: v for k, v in shapes.items()}, DD.NET, {}) == QWEN_IMAGE


def test_key_table_covers_every_key_once(pair):
    """The key table (LoRA names) names each of the network's tensors once, as itself."""
    from opensd.checkpoints.keymap_qwen_image import qwen_image_rows
    ours, _ = pair
    rows = qwen_image_rows(CFG)
    assert sorted(r.original for r in rows) == sorted(ours.state_dict())
    assert all(r.diffusers == (r.original,) for r in rows)
