"""Z-Image's network against diffusers' ZImageTransformer2DModel on tiny random weights: loaded
through our key map from diffusers' names and from a single file in the released (ComfyUI) naming
written here, fp32, with captions of different lengths in one batch (each padded to 32 tokens and
placed in RoPE space by its own length) and an image whose token count is not a multiple of 32; and
the released size (Z-Image-Turbo) built on the meta device: keys, shapes and detection from shapes."""
from __future__ import annotations

import pytest
import torch
from diffusers import ZImageTransformer2DModel

from opensd import families
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.checkpoints.keymap_z_image import z_image_from_diffusers, z_image_to_diffusers
from opensd.errors import CheckpointError
from opensd.models import config_dit as C
from opensd.models.z_image import ZImage
from reference import assert_close_scaled
from z_image_fixtures import Z_AXES, Z_CAP, z_image_transformer

H, W = 8, 6  # latent size: 4 x 3 = 12 image tokens, padded to 32


@pytest.fixture(scope="module")
def pair():
    theirs = z_image_transformer(seed=3)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    cfg = DD.z_image_config_diffusers(shapes, "", {})
    ours = ZImage(cfg).eval()
    ours.load_state_dict(z_image_from_diffusers(theirs.state_dict(), cfg))
    return ours, theirs


def _inputs(seed=0, lengths=(7, 40)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), 16, H, W, generator=g)
    context = torch.randn(len(lengths), max(lengths), Z_CAP, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    return x, torch.tensor([0.3, 0.85][:len(lengths)]), context, mask


def _theirs(net, x, t, context, mask):
    caps = [c[m] for c, m in zip(context, mask)]
    with torch.no_grad():
        out = net(list(x.unsqueeze(2).unbind(0)), t, caps, return_dict=False)[0]
    return torch.stack(out).squeeze(2)


def test_config_read_from_diffusers_shapes(pair):
    cfg = pair[0].cfg
    assert (cfg.dim, cfg.n_heads, cfg.n_layers, cfg.n_refiner_layers, cfg.cap_feat_dim) == (64, 2, 2, 2, Z_CAP)
    assert (cfg.ffn_hidden, cfg.adaln_dim, cfg.t_hidden, cfg.axes_dims) == (170, 64, 1024, Z_AXES)


@pytest.mark.parametrize("lengths", [(7, 40), (33, 33), (5,), (0, 7)])
def test_equals_diffusers_loaded_from_diffusers_names(pair, lengths):
    ours, theirs = pair
    x, t, context, mask = _inputs(lengths=lengths)
    with torch.no_grad():
        got = ours(x, t[:len(x)], context, mask)
    assert_close_scaled(got, _theirs(theirs, x, t[:len(x)], context, mask), rel=1e-5)


def test_padding_beyond_the_mask_is_ignored_and_no_mask_means_all(pair):
    ours, _ = pair
    x, t, context, mask = _inputs(seed=1, lengths=(9, 9))
    longer = torch.cat([context, torch.randn(2, 30, Z_CAP)], dim=1)
    with torch.no_grad():
        a = ours(x, t, context, None)
        b = ours(x, t, longer, torch.nn.functional.pad(mask, (0, 30)))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_caption_of_no_tokens_alone_is_as_in_a_batch(pair):
    """A zeroed conditioning (ComfyUI's ConditioningZeroOut) has no caption tokens: alone in its batch
    it gives what it gives beside a real caption (checked against diffusers above), not NaN."""
    ours, _ = pair
    x, t, context, mask = _inputs(seed=3, lengths=(0, 7))
    with torch.no_grad():
        alone = ours(x[:1], t[:1], context[:1], mask[:1])
        batched = ours(x, t, context, mask)[:1]
    assert not alone.isnan().any()
    torch.testing.assert_close(alone, batched, rtol=0, atol=1e-5)


def test_a_mask_with_holes_is_refused(pair):
    x, t, context, mask = _inputs()
    mask[0, 2] = False
    with pytest.raises(Exception, match="first tokens"):
        pair[0](x, t, context, mask)


def test_equals_diffusers_loaded_from_a_released_named_single_file(pair, tmp_path):
    """The released naming (fused attention.qkv, attention.out, q_norm/k_norm, x_embedder,
    final_layer; diffusion_models/ files carry no prefix), detected from shapes as Z-Image."""
    ours, theirs = pair
    path = tmp_path / "z_image_turbo_bf16.safetensors"
    sd = {k: v.contiguous() for k, v in ours.state_dict().items()}
    sd["norm_final.weight"] = torch.ones(ours.cfg.dim)  # carried by some released files, read by nothing
    save_safetensors(sd, path)
    sd = read_state_dict(path)
    assert "layers.1.attention.qkv.weight" in sd and "x_embedder.weight" in sd
    family, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, {}, str(path))
    assert family.name == "z_image" and cfg.z_image == ours.cfg and cfg.qwen3 is None
    net = ZImage(cfg.z_image).eval()
    net.load_state_dict({k[len(DD.NET):]: v for k, v in family.canonical(sd, cfg).items()
                         if k.startswith(DD.NET)})
    x, t, context, mask = _inputs(seed=2)
    with torch.no_grad():
        got = net(x, t, context, mask)
    assert_close_scaled(got, _theirs(theirs, x, t, context, mask), rel=1e-5)


def test_released_size_on_the_meta_device():
    """Z-Image-Turbo: 3840 wide, 30 heads of 128 (RoPE 32/48/48, theta 256), 30 main blocks and 2+2
    refiners, a 10240-wide SwiGLU, 2560-wide Qwen3-4B captions; about 6.15B parameters. Its keys are
    diffusers' through our map, shape for shape, and both namings are detected from shapes alone."""
    cfg = C.Z_IMAGE
    with torch.device("meta"):
        ours = ZImage(cfg).state_dict()
        theirs = ZImageTransformer2DModel().state_dict()
    assert tuple(ours["layers.29.attention.qkv.weight"].shape) == (3 * 3840, 3840)
    assert tuple(ours["layers.0.attention.q_norm.weight"].shape) == (128,)
    assert tuple(ours["layers.0.feed_forward.w1.weight"].shape) == (10240, 3840)
    assert tuple(ours["cap_embedder.1.weight"].shape) == (3840, 2560)
    assert tuple(ours["x_embedder.weight"].shape) == (3840, 64)
    assert tuple(ours["t_embedder.mlp.0.weight"].shape) == (1024, 256)
    assert 6.1e9 < sum(v.numel() for v in ours.values()) < 6.2e9
    mapped = z_image_to_diffusers(ours, cfg)
    assert set(mapped) == set(theirs)
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in theirs.items())
    for sd, prefix in ((ours, ""), (ours, "model.diffusion_model."), (theirs, ""), (theirs, "transformer.")):
        shapes = {prefix + k: tuple(v.shape) for k, v in sd.items()}
        family, found = families.detect(shapes, {}, "z_image_turbo_bf16.safetensors")
        assert family.name == "z_image" and found.z_image == cfg


def test_lumina2_is_named_not_run():
    """Lumina Image 2.0 has Z-Image's key names with 8 key/value heads of 24: refused in one line."""
    shapes = {k: tuple(v.shape) for k, v in ZImage(C.ZImageConfig(dim=64, n_heads=2, ffn_hidden=8, n_layers=1,
                                                                  cap_feat_dim=8, t_hidden=8, adaln_dim=64,
                                                                  axes_dims=(8, 12, 12))).state_dict().items()}
    shapes["layers.0.attention.qkv.weight"] = (64 + 2 * 16, 64)
    with pytest.raises(CheckpointError, match="Lumina Image 2.0.*not supported"):
        families.detect(shapes, {}, "lumina_2.safetensors")


def test_whole_released_model_on_the_meta_device_is_detected_with_every_key_consumed():
    """Z-Image-Turbo with Qwen3-4B and Flux's VAE as one file (the network under
    model.diffusion_model., the encoder under text_encoders.qwen3_4b.transformer.): detected from its
    shapes alone as the config it was built from, and its canonical layout is the module's key set."""
    from opensd.models.config_dit import FLUX_VAE, ZImageModelConfig
    from opensd.models.dit_models import ZImageModel
    from opensd.models.qwen3 import Qwen3Config
    cfg = ZImageModelConfig(C.Z_IMAGE, FLUX_VAE, Qwen3Config())
    with torch.device("meta"):
        sd = ZImageModel(cfg).state_dict()
    family, found = families.detect({k: tuple(v.shape) for k, v in sd.items()}, {}, "z_image_aio.safetensors")
    assert family.name == "z_image" and found == cfg
    assert family.missing_parts({k: tuple(v.shape) for k, v in sd.items()}) == []
    assert set(family.canonical(dict(sd), found)) == set(sd)
    assert sum(v.numel() for k, v in sd.items() if k.startswith("text_encoders.")) > 4.0e9  # Qwen3-4B
