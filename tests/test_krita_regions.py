"""Krita AI Diffusion's regional prompts (ETN_BackgroundRegion / DefineRegion / ListRegionMasks /
AttentionMask, nodes_regions.py) on a tiny random checkpoint: the couple's weights decide which prompt
each cross-attention position sees, so a region covering everything is its prompt alone, an empty
one changes nothing, and half-and-half is neither."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.errors import InvalidArgument
from opensd.workflows import execute
from opensd.workflows import nodes_regions as regions
from opensd.workflows.types import ModelRef


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("regions")
    folders = make_models(tmp / "models")
    return make_ctx(folders, Loader(folders), tmp)


def _run(ctx, graph) -> np.ndarray:
    out = execute(graph, ctx)
    image = out["9"]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"]), dtype=np.float64)


def _graph(positive: str, region_prompt: str | None = None, mask_value: float | None = None, half=False) -> dict:
    g = default_graph(steps=2, seed=3, cfg=5.0)
    g["6"]["inputs"]["text"] = positive
    if region_prompt is None:
        return g
    g["10"] = {"class_type": "ETN_BackgroundRegion", "inputs": {"conditioning": ["6", 0]}}
    g["11"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": region_prompt}}
    g["12"] = {"class_type": "SolidMask", "inputs": {"value": mask_value, "width": 64, "height": 64}}
    mask = ["12", 0]
    if half:  # the left half: SolidMask 1 cropped into a 0 one
        g["13"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 32, "height": 64}}
        g["14"] = {"class_type": "MaskComposite", "inputs": {"destination": ["12", 0], "source": ["13", 0],
                                                             "x": 0, "y": 0, "operation": "add"}}
        mask = ["14", 0]
    g["15"] = {"class_type": "ETN_DefineRegion", "inputs": {"mask": mask, "conditioning": ["11", 0],
                                                            "regions": ["10", 0]}}
    g["16"] = {"class_type": "ETN_AttentionMask", "inputs": {"model": ["4", 0], "regions": ["15", 0]}}
    g["3"]["inputs"]["model"] = ["16", 0]
    return g


def test_a_region_over_everything_is_its_prompt_alone(ctx):
    whole = _run(ctx, _graph("a cat", "a red boat", 1.0))
    alone = _run(ctx, _graph("a red boat"))
    plain = _run(ctx, _graph("a cat"))
    assert np.abs(whole - alone).max() <= 1 and np.abs(plain - alone).max() > 8


def test_an_empty_region_leaves_the_background_prompt(ctx):
    plain = _run(ctx, _graph("a cat"))
    assert np.abs(_run(ctx, _graph("a cat", "a red boat", 0.0)) - plain).max() <= 1
    # Krita's root prompt is the sampler's positive; the regions' prompts replace it in cross-attention
    other_root = _graph("a cat", "a red boat", 0.0)
    other_root["17"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a green tree"}}
    other_root["3"]["inputs"]["positive"] = ["17", 0]
    assert np.abs(_run(ctx, other_root) - plain).max() <= 1
    assert np.abs(_run(ctx, _graph("a green tree")) - plain).max() > 8


def test_each_cross_attention_position_sees_its_regions_prompt(ctx):
    """Inside the UNet: every cross-attention of the positive row is the masks' mix of attentions over
    each region's prompt (the left half: the region's, the right: the background's; the row's own
    prompt unused), the negative row untouched; computed here with the layer's own weights."""
    from opensd.models.unet import BasicTransformerBlock, CrossAttention

    pipe = ctx.load_pipeline("tiny.safetensors")
    unet = pipe.family.network(pipe.model)
    g = torch.Generator().manual_seed(0)
    bg, boat, neg = (torch.randn(1, 77, 64, generator=g) for _ in range(3))
    left = torch.zeros(1, 64, 64)
    left[..., :32] = 1.0
    (r,) = regions.define_region(None, left, [[boat, {}]], regions.background_region(None, [[bg, {}]])[0])
    (model,) = regions.attention_mask(None, ModelRef(pipe, "tiny"), r)
    seen = []
    hooks = [m.attn2.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0], args[1], out)))
             for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    x = torch.randn(2, 4, 8, 8, generator=g)
    with torch.no_grad(), model.network_patches[0](unet, 1.0, image=0, negative=(False, True)):
        unet(x, torch.tensor([500.0, 500.0]), torch.cat([torch.randn(1, 77, 64, generator=g), neg]))
    for h in hooks:
        h.remove()
    assert seen
    with torch.no_grad():
        for mod, xs, context, out in seen:
            tokens = xs.shape[1]
            side = int(tokens ** 0.5)
            on_left = (torch.arange(tokens) % side < side // 2).float()[:, None]
            want = on_left * CrossAttention.forward(mod, xs[:1], boat) + (1 - on_left) * CrossAttention.forward(
                mod, xs[:1], bg)
            assert torch.allclose(out[:1], want, atol=1e-5)
            assert torch.allclose(out[1:], CrossAttention.forward(mod, xs[1:], neg), atol=1e-5)


def test_region_masks_and_token_weights():
    cond = [[torch.zeros(1, 4, 8), {}]]
    (bg,) = regions.background_region(None, cond)
    a = torch.zeros(1, 16, 16)
    a[:, :, :8] = 1.0
    (r1,) = regions.define_region(None, a, cond, bg)
    (r2,) = regions.define_region(None, a.flip(-1) * 0.5, cond, r1)
    (masks,) = regions.list_region_masks(None, r2)
    assert masks.shape == (3, 1, 16, 16)
    assert torch.allclose(masks.sum(0), torch.ones(1, 16, 16))  # the background takes the rest
    weights = regions.token_weights(masks, (2, 2), 4)  # image-size masks to a 2 x 2 latent's layer
    assert weights.shape == (3, 4, 1)
    assert torch.equal(weights[1, :, 0], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    with pytest.raises(InvalidArgument, match="neither the latent's"):
        regions.token_weights(masks, (3, 3), 9)
    with pytest.raises(InvalidArgument, match="at least 2 regions"):
        regions.list_region_masks(None, bg)
    (odd,) = regions.define_region(None, torch.zeros(1, 8, 8), cond, r1)
    with pytest.raises(InvalidArgument, match="differ in size"):
        regions.list_region_masks(None, odd)

