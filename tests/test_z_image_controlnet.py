"""Z-Image Fun ControlNets (models/z_image_controlnet.py) against diffusers' ZImageControlNetModel +
ZImageTransformer2DModel(controlnet_block_samples=...) on tiny random weights, in the three layouts
(1.0: plain refiner blocks; 2.1: control refiner blocks; 2.0: the control blocks in the refiner),
read from the released file's key names (diffusers' single-file loader takes them as they are); the
2.0 file's all-zero refiner dropped; the released sizes built on meta from the key table."""
from __future__ import annotations

import pytest
import torch
from diffusers import ZImageControlNetModel, ZImageTransformer2DModel

from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.flux_controlnet_files import is_flux_controlnet, is_sd3_controlnet
from opensd.checkpoints.keymap_dit import to_diffusers
from opensd.checkpoints.keymap_z_image import z_image_from_diffusers
from opensd.checkpoints.z_image_controlnet_files import (compatible_z_image_controlnet, is_z_image_controlnet,
                                                        read_z_image_controlnet, z_image_controlnet_config,
                                                        z_image_controlnet_rows)
from opensd.errors import CheckpointError
from opensd.models import config_dit as C
from opensd.models.z_image import ZImage
from opensd.models.z_image_controlnet import ZImageControl, ZImageControlNet, ZImageControlNetConfig
from reference import assert_close_scaled, randomize_
from z_image_fixtures import Z_AXES, Z_CAP, Z_DIM, Z_HEADS

H, W = 8, 6
LAYOUTS = {"1.0": (16, None, "plain"), "2.1": (33, "control_noise_refiner", "control"),
           "2.0": (33, "control_layers", "layers")}


def _pair(version, seed=0):
    in_dim, mode, _ = LAYOUTS[version]
    base = randomize_(ZImageTransformer2DModel(in_channels=16, dim=Z_DIM, n_layers=4, n_refiner_layers=2,
                                               n_heads=Z_HEADS, n_kv_heads=Z_HEADS, cap_feat_dim=Z_CAP,
                                               axes_dims=list(Z_AXES)), seed=seed, std=0.1).eval()
    cn = ZImageControlNetModel(control_layers_places=[0, 2], control_refiner_layers_places=[0, 1],
                               control_in_dim=in_dim, add_control_noise_refiner=mode, dim=Z_DIM, n_refiner_layers=2,
                               n_heads=Z_HEADS, n_kv_heads=Z_HEADS)
    cn = randomize_(cn, seed=seed + 1, std=0.1).eval()
    released = {k: v.clone() for k, v in cn.state_dict().items()}
    ZImageControlNetModel.from_transformer(cn, base)
    return base, cn, released


def _ours(base, released):
    cfg = DD.z_image_config_diffusers({k: tuple(v.shape) for k, v in base.state_dict().items()}, "", {})
    net = ZImage(cfg).eval()
    net.load_state_dict(z_image_from_diffusers(base.state_dict(), cfg))
    sd, config = read_z_image_controlnet(released)
    config = compatible_z_image_controlnet(config, cfg)
    cn = ZImageControlNet(config).eval()
    cn.load_state_dict(sd)
    return net, cn, config


def _inputs(in_dim, lengths=(7, 40), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), 16, H, W, generator=g)
    context = torch.randn(len(lengths), max(lengths), Z_CAP, generator=g)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    latent = torch.randn(1, in_dim, H, W, generator=g)
    return x, torch.tensor([0.3, 0.85][:len(lengths)]), context, mask, latent


def _controlled(net, ours, x, t, context, mask, latent, gate, in_model=False):
    return net(x, t, context, mask, control=ZImageControl([(ours, latent, gate, in_model)]).fns(x, t, context, mask))


@pytest.mark.parametrize("version", list(LAYOUTS))
@pytest.mark.parametrize("lengths", [(7, 40), (33, 33)])
def test_equals_diffusers(version, lengths):
    base, cn, released = _pair(version)
    net, ours, config = _ours(base, released)
    assert config.refiner == LAYOUTS[version][2] and config.places(4) == [0, 2]
    x, t, context, mask, latent = _inputs(LAYOUTS[version][0], lengths)
    caps = [c[m] for c, m in zip(context, mask)]
    xs = list(x.unsqueeze(2).unbind(0))
    with torch.no_grad():
        samples = cn(xs, t, caps, list(latent.expand(len(x), -1, -1, -1).unsqueeze(2).unbind(0)),
                     conditioning_scale=0.7)
        theirs = torch.stack(base(xs, t, caps, controlnet_block_samples=samples, return_dict=False)[0]).squeeze(2)
        got = _controlled(net, ours, x, t, context, mask, latent, torch.full((len(x),), 0.7))
        plain = net(x, t, context, mask)
    assert_close_scaled(got, theirs, rel=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the ControlNet did something


def test_two_controlnets_add_and_scale_zero_is_none():
    base, _, released = _pair("1.0")
    net, ours, _ = _ours(base, released)
    x, t, context, mask, latent = _inputs(16)
    with torch.no_grad():
        plain = net(x, t, context, mask)
        zero = _controlled(net, ours, x, t, context, mask, latent, torch.zeros(2))
        one = ours.hints(net, x, t, context, mask, latent.expand(2, -1, -1, -1), 0.5)
        half = ZImageControl([(ours, latent, torch.full((2,), 0.5), False)])
        two = (half + half).fns(x, t, context, mask)
        both = net(x, t, context, mask, control=two)
        once = net(x, t, context, mask, control=[lambda b, e: {i: 2 * h for i, h in one.items()}])
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(both, once, rtol=1e-5, atol=1e-6)


def test_a_2_0_file_with_a_zero_refiner_drops_it():
    _, _, released = _pair("2.1")
    released = {k: (torch.zeros_like(v) if k.startswith("control_noise_refiner.") else v) for k, v in released.items()}
    sd, config = read_z_image_controlnet(released)
    assert config.refiner == "layers" and not any(k.startswith("control_noise_refiner.") for k in sd)


def _released_shapes(n_layers, in_dim, refiner):
    cfg = ZImageControlNetConfig(C.ZImageConfig(), n_layers, in_dim, refiner)
    with torch.device("meta"):
        net = ZImageControlNet(cfg)
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = to_diffusers({k: torch.empty(s, device="meta") for k, s in ours.items()},
                          z_image_controlnet_rows(cfg), "Z-Image ControlNet")
    return cfg, ours, {k: tuple(v.shape) for k, v in theirs.items()}


@pytest.mark.parametrize("n_layers,in_dim,refiner", [(6, 16, "plain"), (15, 33, "control"), (15, 33, "layers")])
def test_released_size_key_table_and_detection(n_layers, in_dim, refiner):
    cfg, ours, shapes = _released_shapes(n_layers, in_dim, refiner)
    assert shapes["control_all_x_embedder.2-1.weight"] == (3840, 4 * in_dim)
    assert shapes["control_layers.0.attention.to_q.weight"] == (3840, 3840)
    assert shapes["control_layers.0.attention.norm_q.weight"] == (128,)
    assert shapes["control_layers.0.before_proj.weight"] == (3840, 3840)
    assert "control_layers.1.before_proj.weight" not in shapes
    assert ("control_noise_refiner.0.before_proj.weight" in shapes) == (refiner == "control")
    assert ours["control_layers.0.attention.qkv.weight"] == (3 * 3840, 3840)
    assert is_z_image_controlnet(shapes) and not is_flux_controlnet(shapes) and not is_sd3_controlnet(shapes)
    assert z_image_controlnet_config(shapes) == cfg
    assert cfg.places(30) == ([0, 5, 10, 15, 20, 25] if n_layers == 6 else list(range(0, 30, 2)))


def test_a_controlnet_of_another_width_is_refused():
    _, _, shapes = _released_shapes(6, 16, "plain")
    with pytest.raises(CheckpointError, match="width 3840 .the model's: 64"):
        compatible_z_image_controlnet(z_image_controlnet_config(shapes),
                                      C.ZImageConfig(dim=64, n_heads=2, ffn_hidden=170, adaln_dim=64, axes_dims=Z_AXES))


def test_a_zero_gate_leaves_its_row_alone():
    """Per-row gates (the plumbing's scattering and guess mode): a row gated 0 is the plain model's."""
    base, _, released = _pair("2.1")
    net, ours, _ = _ours(base, released)
    x, t, context, mask, latent = _inputs(33)
    with torch.no_grad():
        plain = net(x, t, context, mask)
        full = _controlled(net, ours, x, t, context, mask, latent, torch.full((2,), 0.7))
        gated = _controlled(net, ours, x, t, context, mask, latent, torch.tensor([0.0, 0.7]))
    torch.testing.assert_close(gated[0], plain[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(gated[1], full[1], rtol=1e-5, atol=1e-6)
    assert (gated[1] - plain[1]).abs().max() > 1e-3


@pytest.mark.parametrize("version", ["2.1", "2.0"])
def test_in_model_order_equals_videox_fun(version):
    """alibaba-pai's VideoX-Fun order (ComfyUI's too): the refiner residuals (the after_proj outputs of
    the refiner-stage control blocks, scaled) added after the model's own refiner blocks; built here
    from diffusers' parts with hooks."""
    base, cn, released = _pair(version)
    net, ours, _ = _ours(base, released)
    x, t, context, mask, latent = _inputs(33)
    caps = [c[m] for c, m in zip(context, mask)]
    xs = list(x.unsqueeze(2).unbind(0))
    stage = cn.control_noise_refiner if version == "2.1" else cn.control_layers
    seen = []
    hooks = [stage[i].after_proj.register_forward_hook(lambda m, a, out: seen.append(out)) for i in range(2)]
    with torch.no_grad():
        samples = cn(xs, t, caps, list(latent.expand(2, -1, -1, -1).unsqueeze(2).unbind(0)), conditioning_scale=0.7)
    for h in hooks:
        h.remove()
    refiner = seen[:2]  # the refiner stage runs first
    hooks = [base.noise_refiner[i].register_forward_hook(lambda m, a, out, i=i: out + 0.7 * refiner[i])
             for i in range(2)]
    with torch.no_grad():
        theirs = torch.stack(base(xs, t, caps, controlnet_block_samples=samples, return_dict=False)[0]).squeeze(2)
        got = _controlled(net, ours, x, t, context, mask, latent, torch.full((2,), 0.7), in_model=True)
        diffusers_order = _controlled(net, ours, x, t, context, mask, latent, torch.full((2,), 0.7))
    for h in hooks:
        h.remove()
    assert_close_scaled(got, theirs, rel=1e-5)
    assert (got - diffusers_order).abs().max() > 1e-3  # the two orders differ
