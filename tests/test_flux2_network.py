"""FLUX.2's network against diffusers' Flux2Transformer2DModel on tiny random weights, fp32: loaded
through our key map from diffusers' names and from a single file in BFL's (ComfyUI's) naming written
by diffusers' own single-file converter run backwards (our to-diffusers map), klein (no guidance)
and [dev] (distilled guidance); a non-square latent so rows and columns cannot be swapped."""
from __future__ import annotations

import pytest
import torch

from opensd.checkpoints.keymap_flux2 import flux2_from_diffusers, flux2_to_diffusers
from opensd.models.config_dit import Flux2Config
from opensd.models.flux2 import Flux2, image_ids, text_ids
from reference import assert_close_scaled
from flux2_fixtures import F2_AXES, F2_CTX, F2_DIM, F2_HEADS, F2_IN, flux2_transformer

H, W, L = 4, 3, 7


def _cfg(guidance: bool) -> Flux2Config:
    return Flux2Config(in_channels=F2_IN, hidden_size=F2_DIM, num_heads=F2_HEADS, depth=2, depth_single_blocks=2,
                       context_in_dim=F2_CTX, axes_dim=F2_AXES, guidance_embed=guidance)


@pytest.fixture(scope="module", params=[False, True], ids=["klein", "dev"])
def pair(request):
    theirs = flux2_transformer(seed=3, guidance=request.param)
    cfg = _cfg(request.param)
    ours = Flux2(cfg).eval()
    ours.load_state_dict(flux2_from_diffusers(theirs.state_dict(), cfg))
    return ours, theirs


def _theirs(net, x, t, context, guidance=None):
    b, c, h, w = x.shape
    img_ids = torch.cartesian_prod(torch.arange(1), torch.arange(h), torch.arange(w), torch.arange(1))
    txt_ids = torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1), torch.arange(context.shape[1]))
    with torch.no_grad():
        out = net(x.flatten(2).transpose(1, 2), context, t, img_ids[None].expand(b, -1, -1),
                  txt_ids[None].expand(b, -1, -1), guidance, return_dict=False)[0]
    return out.transpose(1, 2).reshape(b, c, h, w)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, F2_IN, H, W, generator=g), torch.tensor([0.3, 0.85]),
            torch.randn(2, L, F2_CTX, generator=g))


def test_ids_are_diffusers_cartesian_products():
    assert torch.equal(image_ids(H, W), torch.cartesian_prod(torch.arange(1), torch.arange(H), torch.arange(W),
                                                             torch.arange(1)))
    assert torch.equal(text_ids(L), torch.cartesian_prod(torch.arange(1), torch.arange(1), torch.arange(1),
                                                         torch.arange(L)))


def test_equals_diffusers(pair):
    ours, theirs = pair
    x, t, context = _inputs()
    guidance = torch.tensor([3.5, 2.0]) if ours.cfg.guidance_embed else None
    with torch.no_grad():
        got = ours(x, t, context, guidance)
    assert_close_scaled(got, _theirs(theirs, x, t, context, guidance), rel=1e-5)


def test_guidance_changes_dev_only_through_its_embedder(pair):
    ours, _ = pair
    if not ours.cfg.guidance_embed:
        assert ours.guidance_in is None
        return
    x, t, context = _inputs(seed=1)
    with torch.no_grad():
        a, b = ours(x, t, context, torch.tensor([1.0, 1.0])), ours(x, t, context, torch.tensor([4.0, 4.0]))
    assert (a - b).abs().max() > 1e-4


def test_single_file_names_round_trip(pair):
    """BFL's names (ours) -> diffusers' -> ours is the identity, and diffusers' converter from BFL's
    single file gives back diffusers' own state dict (so our names are the released file's)."""
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    ours, theirs = pair
    bfl = {k: v.clone() for k, v in ours.state_dict().items()}
    converted = convert_flux2_transformer_checkpoint_to_diffusers(dict(bfl))
    ref = theirs.state_dict()
    assert set(converted) == set(ref)
    for k in ref:
        torch.testing.assert_close(converted[k], ref[k], rtol=0, atol=0)
    back = flux2_from_diffusers(flux2_to_diffusers(bfl, ours.cfg), ours.cfg)
    assert set(back) == set(bfl) and all(torch.equal(back[k], bfl[k]) for k in bfl)


def test_masked_text_padding_is_ignored(pair):
    ours, _ = pair
    x, t, context = _inputs(seed=2)
    longer = torch.cat([context, torch.randn(2, 5, F2_CTX)], dim=1)
    mask = torch.arange(L + 5)[None].expand(2, -1) < L
    g = torch.tensor([2.0, 2.0]) if ours.cfg.guidance_embed else None
    with torch.no_grad():
        a, b = ours(x, t, context, g), ours(x, t, longer, g, mask)
    assert_close_scaled(a, b, rel=1e-5)


@pytest.mark.parametrize("name, params", [("FLUX2_KLEIN_4B", 3.9e9), ("FLUX2_KLEIN_9B", 9.1e9), ("FLUX2_DEV", 32.2e9)])
def test_released_sizes_on_meta_are_detected_from_their_shapes(name, params):
    """The released networks built on the meta device: the parameter count is the name's, and the
    config read back from the state dict's shapes (BFL's layout, with ComfyUI's prefix, and
    diffusers' layout) is the one built."""
    from opensd.checkpoints import detect_dit as DD
    from opensd.models import config_dit as C
    cfg = getattr(C, name)
    with torch.device("meta"):
        net = Flux2(cfg)
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - params) / params < 0.03, count
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert DD.flux2_config(shapes, "", {}) == cfg
    assert DD.flux2_config({DD.NET + k: v for k, v in shapes.items()}, DD.NET, {}) == cfg
    theirs = {k: tuple(v.shape) for k, v in flux2_to_diffusers(net.state_dict(), cfg).items()}
    assert DD.flux2_config_diffusers(theirs, "", {}) == cfg


@pytest.mark.parametrize("net_name, qwen_name", [("FLUX2_KLEIN_4B", "QWEN3_4B"), ("FLUX2_KLEIN_9B", "QWEN3_8B")])
def test_released_whole_models_on_meta_are_detected_with_every_key(net_name, qwen_name):
    """klein 4B with Qwen3-4B and 9B with Qwen3-8B, with FLUX.2's VAE, built whole on the meta device:
    the family detects the config back from the shapes, every key is the canonical layout's, and the
    part finder would ask for a Qwen3 of the network's width when the encoder is left out."""
    from opensd import families
    from opensd.checkpoints import detect_dit as DD
    from opensd.models import config_dit as C
    from opensd.models import qwen3 as Q
    from opensd.models.dit_models import Flux2Model
    cfg = C.Flux2ModelConfig(getattr(C, net_name), C.PatchedLatentConfig(C.FLUX2_VAE), getattr(Q, qwen_name))
    with torch.device("meta"):
        model = Flux2Model(cfg)
    sd = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    family, found = families.detect(shapes, {}, f"flux-2-klein-{net_name[-2:].lower()}.safetensors")
    assert family.name == "flux2" and found == cfg
    assert set(family.canonical(dict(sd), found)) == set(sd)
    family.check_complete(found, shapes, "x")
    network_only = {k: v for k, v in shapes.items() if k.startswith(DD.NET)}
    assert family.missing_parts(network_only) == ["flux2_vae", f"qwen3:{cfg.qwen3.hidden_size}"]
