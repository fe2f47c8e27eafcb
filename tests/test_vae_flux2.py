"""FLUX.2's 32-channel VAE: our AutoencoderKL with quant convs and latent statistics equals diffusers'
AutoencoderKLFlux2 on tiny random weights, read from the diffusers layout, Black Forest Labs' single
file (quant convs inside encoder/decoder) and ComfyUI's (top level); detected from its shapes without
changing Flux.1's detection; the latent normalisation equals Flux2KleinPipeline's arithmetic; the
full-size layout maps key for key on the meta device."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLFlux2
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline
from safetensors.torch import save_file

from opensd.checkpoints.detect import infer_vae
from opensd.checkpoints.keymap_vae import vae_from_diffusers, vae_to_diffusers
from opensd.checkpoints.part_files import _kind
from opensd.errors import InvalidArgument
from opensd.models import flux2_latents as L
from opensd.models.config_dit import FLUX2_VAE, FLUX_VAE
from opensd.models.vae import AutoencoderKL
from opensd.models.vae_tiled import tiled
from opensd.pipeline.loader import read_vae
from reference import assert_close_scaled, assert_vae_matches, randomize_

SIZE = 32
TINY = replace(FLUX2_VAE, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def _reference(cfg=TINY, seed: int = 1) -> AutoencoderKLFlux2:
    n = len(cfg.ch_mult)
    ref = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult), layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels, sample_size=SIZE)
    randomize_(ref, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ref.bn.running_mean.copy_(torch.randn(ref.bn.running_mean.shape, generator=g))
    ref.bn.running_var.copy_(torch.rand(ref.bn.running_var.shape, generator=g) * 3 + 1e-3)
    ref.bn.num_batches_tracked.fill_(1234)
    return ref.eval()


@pytest.fixture(scope="module")
def ref():
    return _reference()


@pytest.fixture(scope="module")
def ours(ref):
    vae = AutoencoderKL(TINY).eval()
    vae.load_state_dict(vae_from_diffusers(ref.state_dict(), TINY), strict=True)
    return vae


def _bfl(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in Black Forest Labs' single-file names (quant convs inside the encoder and
    decoder) with BatchNorm2d's counter, as their ae.safetensors stores it."""
    moved = {"quant_conv.": "encoder.quant_conv.", "post_quant_conv.": "decoder.post_quant_conv."}
    out = {}
    for k, v in sd.items():
        old = next((o for o in moved if k.startswith(o)), None)
        out[moved[old] + k[len(old):] if old else k] = v.contiguous() if torch.is_tensor(v) else v
    out["bn.num_batches_tracked"] = torch.tensor(7) if torch.is_tensor(v) else ()
    return out


def _compare(vae: AutoencoderKL, ref: AutoencoderKLFlux2) -> None:
    assert vae.cfg.embed_dim == 32
    assert_vae_matches(vae, ref, SIZE)
    torch.testing.assert_close(vae.bn.running_mean, ref.bn.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(vae.bn.running_var, ref.bn.running_var, rtol=0, atol=0)


def test_equals_diffusers_via_the_diffusers_layout(ours, ref):
    _compare(ours, ref)
    assert {"quant_conv.weight", "post_quant_conv.weight", "bn.running_mean", "bn.running_var"} <= \
        set(ours.state_dict())
    back = vae_to_diffusers(ours.state_dict(), TINY)
    assert back.keys() == ref.state_dict().keys()
    AutoencoderKLFlux2(**{k: v for k, v in ref.config.items() if not k.startswith("_")}).load_state_dict(back)


def test_the_keymap_refuses_a_counter_where_the_config_has_no_statistics(ref):
    with pytest.raises(KeyError, match="bn.num_batches_tracked"):
        vae_from_diffusers(ref.state_dict(), replace(TINY, latent_batch_norm=False))


@pytest.mark.parametrize("layout", ["bfl", "comfy", "diffusers"])
def test_single_files_of_each_layout_read_detect_and_load(tmp_path, ours, ref, layout):
    sd = {k: v.contiguous() for k, v in ours.state_dict().items()}
    if layout == "bfl":
        sd = _bfl(sd)
    elif layout == "comfy":  # ComfyUI's VAE saves top-level quant convs and the counter
        sd["bn.num_batches_tracked"] = torch.tensor(7)
    else:
        sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    path = tmp_path / "flux2-vae.safetensors"
    save_file(sd, str(path))
    if layout != "diffusers":  # detection reads original names, straight from the file's header
        assert infer_vae({k: tuple(v.shape) for k, v in sd.items()}, "") == TINY
    read, _ = read_vae(path)
    assert "bn.num_batches_tracked" not in read and "encoder.quant_conv.weight" not in read
    cfg = infer_vae({k: tuple(v.shape) for k, v in read.items()}, "")
    assert cfg == TINY
    vae = AutoencoderKL(cfg).eval()
    vae.load_state_dict(read, strict=True)
    _compare(vae, ref)


def test_detection_tells_flux2_from_flux1_and_sd():
    with torch.device("meta"):
        flux1 = {k: tuple(v.shape) for k, v in AutoencoderKL(FLUX_VAE).state_dict().items()}
        flux2 = {k: tuple(v.shape) for k, v in AutoencoderKL(FLUX2_VAE).state_dict().items()}
    assert infer_vae(flux1, "") == replace(FLUX_VAE, scaling_factor=0.18215, shift_factor=0.0)
    detected = infer_vae(flux2, "")
    assert detected == FLUX2_VAE and detected.latent_batch_norm and detected.embed_dim == 32
    assert infer_vae(_bfl(flux2), "") == FLUX2_VAE


def test_part_files_find_the_flux2_vae_apart_from_flux1s(tmp_path):
    def header(cfg, bfl=False):
        sd = {k: torch.zeros(v.shape[:1] + (1,) * (v.ndim - 1)) for k, v in AutoencoderKL(
            replace(cfg, ch=32, ch_mult=(1, 2), num_res_blocks=1)).state_dict().items()}
        return _bfl(sd) if bfl else sd

    for name, cfg, bfl, kind in (("ae", FLUX_VAE, False, ("vae", 0)), ("f2", FLUX2_VAE, True, ("flux2_vae", 0)),
                                 ("f2c", FLUX2_VAE, False, ("flux2_vae", 0))):
        save_file(header(cfg, bfl), str(tmp_path / f"{name}.safetensors"))
        assert _kind(tmp_path / f"{name}.safetensors") == kind, name


def test_full_size_layout_maps_key_for_key_on_meta():
    with torch.device("meta"):
        ref = AutoencoderKLFlux2()
        vae = AutoencoderKL(FLUX2_VAE)
    assert ref.config.latent_channels == 32 and ref.bn.num_features == 128
    mapped = vae_from_diffusers(ref.state_dict(), FLUX2_VAE)
    ours = vae.state_dict()
    assert mapped.keys() == ours.keys()
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in ours.items())
    assert ours["bn.running_mean"].shape == (128,) and vae.bn.eps == ref.config.batch_norm_eps == 1e-4


@torch.no_grad()
def test_latent_normalisation_equals_the_klein_pipelines(ours, ref):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1
    stub = SimpleNamespace(vae=ref, _patchify_latents=Flux2KleinPipeline._patchify_latents)
    expected = Flux2KleinPipeline._encode_vae_image(stub, x, generator=None)  # argmax: the posterior mean
    got = ours.bn.normalize(ours.encode(x)[0])
    side = SIZE // TINY.downscale // 2
    assert got.shape == (2, 128, side, side)
    assert_close_scaled(got, expected, 1e-5)
    # the sequence the transformer sees
    torch.testing.assert_close(L.tokens(got), Flux2KleinPipeline._pack_latents(got), rtol=0, atol=0)
    torch.testing.assert_close(L.from_tokens(L.tokens(got), side, side), got, rtol=0, atol=0)

    # after sampling: the pipeline's unpack, de-normalisation (eps inside the root) and unpatchify
    tokens = torch.randn(2, 16, 128, generator=g)
    ids = Flux2KleinPipeline._prepare_latent_ids(torch.zeros(2, 128, 4, 4))
    latent = Flux2KleinPipeline._unpack_latents_with_ids(tokens, ids, 4, 4)
    mean = ref.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(ref.bn.running_var.view(1, -1, 1, 1) + ref.config.batch_norm_eps)
    expected = Flux2KleinPipeline._unpatchify_latents(latent * std + mean)
    got = ours.bn.denormalize(L.from_tokens(tokens, 4, 4))
    assert got.shape == (2, 32, 8, 8)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.bn.normalize(got), L.from_tokens(tokens, 4, 4), rtol=1e-5, atol=1e-5)


def test_patch_order_is_flux1s_pack():
    from opensd.models.flux import pack
    z = torch.randn(2, 32, 6, 8)
    torch.testing.assert_close(L.tokens(L.patchify(z)), pack(z), rtol=0, atol=0)
    torch.testing.assert_close(L.unpatchify(L.patchify(z)), z, rtol=0, atol=0)
    torch.testing.assert_close(L.patchify(z), Flux2KleinPipeline._patchify_latents(z), rtol=0, atol=0)


def test_wrong_latents_are_refused_with_a_clear_message(ours):
    with pytest.raises(InvalidArgument, match="2x2 patches"):
        L.patchify(torch.zeros(1, 32, 5, 8))
    with pytest.raises(InvalidArgument, match="statistics have 128"):
        ours.bn.denormalize(torch.zeros(1, 64, 4, 4))
    with pytest.raises(InvalidArgument, match="do not fill"):
        L.from_tokens(torch.zeros(1, 15, 128), 4, 4)


@torch.no_grad()
def test_tiled_decode_works_on_the_32_channel_latent(ours):
    """The tiling is generic (any decode function): on the 32-channel latent one tile is the untiled
    decode exactly, and several differ from it only by per-tile statistics and attention."""
    z = torch.randn(1, 32, 24, 40, generator=torch.Generator().manual_seed(0))
    full = ours.decode(z)
    torch.testing.assert_close(tiled(ours.decode, z, tile=40, overlap=8, scale=TINY.downscale), full)
    tiles = tiled(ours.decode, z, tile=24, overlap=12, scale=TINY.downscale)
    assert tiles.shape == full.shape == (1, 3, 48, 80)
    other = ours.decode(torch.randn(1, 32, 24, 40, generator=torch.Generator().manual_seed(1)))
    assert (tiles - full).abs().mean() < 0.5 * (other - full).abs().mean()
