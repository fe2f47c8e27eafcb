"""Qwen-Image's network with Qwen-Image-Edit's condition-image latents (more image tokens after the
image's own, frame 1, 2, ... in the RoPE, the text past the largest grid) equals diffusers'
QwenImageTransformer2DModel called as QwenImageEditPipeline / QwenImageEditPlusPipeline call it
(img_shapes with one entry per image, the output cut to the image's own tokens), on tiny random
weights, references smaller, larger and of other aspect ratios than the image."""
from __future__ import annotations

import pytest
import torch
from diffusers import QwenImagePipeline

from opensd.errors import InvalidArgument
from reference import assert_close_scaled
from qwen_image_fixtures import QI_LATENT
from test_qwen_image_network import CFG, pair  # noqa: F401 (the fixture)


def _theirs(net, x, refs, t, context, mask=None):
    b, c, height, width = x.shape
    packed = [QwenImagePipeline._pack_latents(v, b, c, v.shape[2], v.shape[3]) for v in (x, *refs)]
    shapes = [[(1, v.shape[2] // 2, v.shape[3] // 2) for v in (x, *refs)]] * b
    with torch.no_grad():
        out = net(torch.cat(packed, dim=1), context, mask, t, shapes, return_dict=False)[0]
    out = out[:, :packed[0].shape[1]]
    return QwenImagePipeline._unpack_latents(out, height * 8, width * 8, 8)[:, :, 0]


@pytest.mark.parametrize("size, refs", [((6, 10), [(6, 10)]), ((8, 8), [(4, 12)]), ((4, 6), [(10, 8)]),
                                        ((6, 6), [(4, 4), (8, 6)])])
def test_equals_diffusers_with_references(pair, size, refs):
    ours, theirs = pair
    g = torch.Generator().manual_seed(len(refs))
    x = torch.randn(2, QI_LATENT, *size, generator=g)
    ref_latents = [torch.randn(2, QI_LATENT, *r, generator=g) for r in refs]
    t, context = torch.tensor([0.3, 0.85]), torch.randn(2, 5, CFG.joint_attention_dim, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    context = context * mask[..., None]
    with torch.no_grad():
        got = ours(x, t, context, mask, ref_latents)
        plain = ours(x, t, context, mask)
    # 5e-5: diffusers' RoPE table is complex64 whatever the network's dtype; this network without
    # references is as far from diffusers' in float64 (the text's positions grow with the grids)
    assert_close_scaled(got, _theirs(theirs, x, ref_latents, t, context, mask.long()), rel=5e-5)
    assert (got - plain).abs().max() > 1e-3  # the references are seen


def test_odd_reference_refused(pair):
    ours, _ = pair
    x = torch.randn(1, QI_LATENT, 4, 4)
    with pytest.raises(InvalidArgument, match="2x2 patches"):
        ours(x, torch.tensor([0.5]), torch.randn(1, 3, CFG.joint_attention_dim), None, [torch.randn(1, QI_LATENT, 5, 4)])


def test_comfyui_text_placement(pair):
    """ComfyUI's model starts the text past the image's own grid: the same as diffusers' when the
    reference is no larger, different when it is."""
    ours, _ = pair
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, QI_LATENT, 6, 6, generator=g)
    t, context = torch.tensor([0.5]), torch.randn(1, 4, CFG.joint_attention_dim, generator=g)
    small, big = torch.randn(1, QI_LATENT, 4, 6, generator=g), torch.randn(1, QI_LATENT, 12, 10, generator=g)
    with torch.no_grad():
        assert torch.equal(ours(x, t, context, None, [small], text_after_refs=False), ours(x, t, context, None, [small]))
        assert (ours(x, t, context, None, [big], text_after_refs=False) - ours(x, t, context, None, [big])).abs().max() > 1e-4


def test_comfyui_graph_reference_is_padded_circularly(pair):
    """Through the family's net_fn with ComfyUI's reference method, an odd reference latent is
    padded circularly to whole patches (ComfyUI's pad_to_patch_size) and the text placed as ComfyUI's."""
    from types import SimpleNamespace
    import torch.nn.functional as F
    from opensd.families.qwen_image import QWEN_IMAGE_FAMILY
    ours, _ = pair
    g = torch.Generator().manual_seed(10)
    x, ref = torch.randn(1, QI_LATENT, 6, 6, generator=g), torch.randn(1, QI_LATENT, 5, 7, generator=g)
    t, context = torch.tensor([0.4]), torch.randn(1, 4, CFG.joint_attention_dim, generator=g)
    call = QWEN_IMAGE_FAMILY.net_fn(SimpleNamespace(network=ours), None, references=[ref], reference_method="index")
    with torch.no_grad():
        got = call(x, t, context, None)
        want = ours(x, t, context, None, [F.pad(ref, (0, 1, 0, 1), mode="circular")], text_after_refs=False)
    torch.testing.assert_close(got, want)
    with pytest.raises(InvalidArgument, match="'index' or 'index_timestep_zero' only"):
        QWEN_IMAGE_FAMILY.net_fn(SimpleNamespace(network=ours), None, references=[ref], reference_method="offset")


@pytest.mark.parametrize("refs", [[(6, 10)], [(4, 4), (8, 6)]])
def test_zero_cond_t_equals_diffusers(pair, monkeypatch, refs):
    """Edit-2511's zero_cond_t (the references modulated at time 0) equals diffusers' network with
    the flag set, and differs from the plain network."""
    ours, theirs = pair
    monkeypatch.setattr(theirs, "zero_cond_t", True)
    for block in theirs.transformer_blocks:
        monkeypatch.setattr(block, "zero_cond_t", True)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, QI_LATENT, 6, 6, generator=g)
    ref_latents = [torch.randn(2, QI_LATENT, *r, generator=g) for r in refs]
    t, context = torch.tensor([0.3, 0.85]), torch.randn(2, 5, CFG.joint_attention_dim, generator=g)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    context = context * mask[..., None]
    with torch.no_grad():
        got = ours(x, t, context, mask, ref_latents, zero_cond_t=True)
        plain = ours(x, t, context, mask, ref_latents)
        alone = ours(x, t, context, mask, zero_cond_t=True)  # without references: the plain network
    assert_close_scaled(got, _theirs(theirs, x, ref_latents, t, context, mask.long()), rel=5e-5)
    assert (got - plain).abs().max() > 1e-3
    torch.testing.assert_close(alone, ours(x, t, context, mask))
