"""Chroma's network against diffusers' ChromaTransformer2DModel on tiny random weights: loaded
through our keymap from diffusers' names and from a ComfyUI/BFL-named single file written here
(fp32, rel 1e-4), with and without T5 padding masked; and the released layout (Chroma1-HD) built on
the meta device: its key set and shapes, detected from shapes alone in both namings."""
from __future__ import annotations

import pytest
import torch
from diffusers import ChromaTransformer2DModel

from dit_fixtures import FLUX_AXES, FLUX_HEAD, META_FLUX, chroma_transformer
from opensd import families
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.families import known_family, what_else
from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.errors import CheckpointError
from opensd.checkpoints.keymap_flux import flux_from_diffusers, flux_to_diffusers
from opensd.models import config_dit as C
from opensd.models.chroma import Chroma
from opensd.models.flux import image_ids, pack
from reference import assert_close_scaled

H, W, TXT = 4, 3, 7  # packed image tokens (4 x 3 patches), text tokens


@pytest.fixture(scope="module")
def pair():
    theirs = chroma_transformer(seed=3)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    cfg = DD.chroma_config_diffusers(shapes, "", META_FLUX)
    ours = Chroma(cfg).eval()
    ours.load_state_dict(flux_from_diffusers(theirs.state_dict(), cfg))
    return ours, theirs


def _inputs(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 2 * H, 2 * W, generator=g)
    return x, torch.randn(batch, TXT, 128, generator=g), torch.tensor([0.3, 0.85][:batch])


def _theirs(net, x, context, t, mask=None):
    with torch.no_grad():
        out = net(hidden_states=pack(x), encoder_hidden_states=context, timestep=t, img_ids=image_ids(H, W),
                  txt_ids=torch.zeros(context.shape[1], 3), attention_mask=mask, return_dict=False)[0]
    return out.view(len(x), H, W, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)


def test_config_read_from_diffusers_shapes(pair):
    ours, theirs = pair
    cfg = ours.cfg
    assert (cfg.depth, cfg.depth_single_blocks, cfg.hidden_size, cfg.num_heads) == (2, 3, 32, 2)
    assert (cfg.approximator_in_dim, cfg.approximator_hidden, cfg.approximator_layers) == (16, 48, 2)
    assert cfg.axes_dim == FLUX_AXES and cfg.head_dim == FLUX_HEAD
    assert cfg.mod_vectors == theirs.time_text_embed.mod_proj.shape[0] == 3 * 3 + 12 * 2 + 2


def test_equals_diffusers_loaded_from_diffusers_names(pair):
    ours, theirs = pair
    x, context, t = _inputs()
    with torch.no_grad():
        got = ours(x, t, context, None)
    assert_close_scaled(got, _theirs(theirs, x, context, t), rel=1e-4)


def test_equals_diffusers_loaded_from_a_comfyui_named_single_file(pair, tmp_path):
    """The released files' naming (bare BFL-style keys, distilled_guidance_layer.*) written as a
    file, detected as Chroma from shapes and loaded through the family's canonical layout."""
    ours, theirs = pair
    path = tmp_path / "chroma-unlocked-v50.safetensors"
    save_safetensors({k: v.contiguous() for k, v in ours.state_dict().items()}, path, META_FLUX)
    sd = read_state_dict(path)
    assert "distilled_guidance_layer.layers.1.out_layer.weight" in sd and "distilled_guidance_layer.norms.0.scale" in sd
    assert not any(".mod.lin" in k or "modulation.lin" in k or "adaLN" in k for k in sd)
    family, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, META_FLUX, str(path))
    assert family.name == "chroma" and cfg.chroma == ours.cfg and cfg.t5 is None
    net = Chroma(cfg.chroma).eval()
    canonical = family.canonical(sd, cfg)
    net.load_state_dict({k[len(DD.NET):]: v for k, v in canonical.items()})
    x, context, t = _inputs(seed=1)
    with torch.no_grad():
        got = net(x, t, context, None)
    assert_close_scaled(got, _theirs(theirs, x, context, t), rel=1e-4)


def test_masked_text_tokens_are_as_if_absent(pair):
    """Chroma's T5 padding mask: the image sees only the kept text tokens, exactly as diffusers'
    network run on those tokens alone (its pipeline's float mask is a known bug, diffusers#12116:
    the oracle is the shorter sequence, which needs no mask)."""
    ours, theirs = pair
    x, context, t = _inputs(seed=2)
    keep = torch.tensor([[True] * 3 + [False] * (TXT - 3), [True] * 5 + [False] * (TXT - 5)])
    with torch.no_grad():
        got = ours(x, t, context, None, mask=keep)
        for b, n in enumerate((3, 5)):
            want = _theirs(theirs, x[b:b + 1], context[b:b + 1, :n], t[b:b + 1])
            assert_close_scaled(got[b:b + 1], want, rel=1e-4)
        unmasked = ours(x, t, context, None)
    assert (got - unmasked).abs().max() > 1e-3  # the mask does something


def test_released_layout_on_the_meta_device():
    """Chroma1-HD / chroma-unlocked-v*: 19 double and 38 single blocks 3072 wide, a 5-layer
    approximator 5120 wide reading 64 features and writing 344 vectors; about 8.9B parameters.
    Its keys are diffusers' ChromaTransformer2DModel's through our keymap, shape for shape, and both
    namings are detected from shapes alone, under the prefixes files carry."""
    cfg = C.CHROMA
    with torch.device("meta"):
        ours = Chroma(cfg).state_dict()
        theirs = ChromaTransformer2DModel().state_dict()
    assert cfg.mod_vectors == 344
    assert tuple(ours["distilled_guidance_layer.in_proj.weight"].shape) == (5120, 64)
    assert tuple(ours["distilled_guidance_layer.out_proj.weight"].shape) == (3072, 5120)
    assert tuple(ours["distilled_guidance_layer.norms.4.scale"].shape) == (5120,)
    assert "distilled_guidance_layer.layers.5.in_layer.weight" not in ours
    assert {k.split(".")[0] for k in ours} == {"img_in", "txt_in", "distilled_guidance_layer", "double_blocks",
                                               "single_blocks", "final_layer"}
    assert DD.count(ours, "double_blocks.") == 19 and DD.count(ours, "single_blocks.") == 38
    assert 8.8e9 < sum(v.numel() for v in ours.values()) < 9.0e9
    mapped = flux_to_diffusers(ours, cfg)
    assert set(mapped) == set(theirs)
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in theirs.items())
    for sd, prefix in ((ours, ""), (ours, "model.diffusion_model."), (ours, "diffusion_model."), (theirs, "")):
        shapes = {prefix + k: tuple(v.shape) for k, v in sd.items()}
        family, found = families.detect(shapes, {}, "chroma.safetensors")
        assert family.name == "chroma" and found.chroma == cfg
        assert known_family(shapes) == "Chroma"


def test_a_flux_file_stays_flux_and_chroma_radiance_is_named(pair):
    flux = {"double_blocks.0.img_attn.norm.key_norm.scale": (128,), "img_in.weight": (3072, 64)}
    assert known_family(flux) == "Flux.1"
    radiance = {k: tuple(v.shape) for k, v in pair[0].state_dict().items()}
    radiance["nerf_image_embedder.embedder.0.weight"] = (64, 3)
    assert known_family(radiance) == "Chroma Radiance"
    assert "Chroma Radiance" in what_else(radiance, "model.diffusion_model.")
    with pytest.raises(CheckpointError, match="Chroma Radiance.*not supported"):
        families.detect(radiance, {}, "radiance.safetensors")
