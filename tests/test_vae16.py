"""The 16-channel VAEs of SD3 and Flux: our AutoencoderKL without quant convs equals diffusers'
AutoencoderKL built with use_quant_conv=False, loaded through our key map and through diffusers' own
single-file converter; the full-size layout maps key for key on the meta device."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from opensd.checkpoints.keymap_vae import vae_from_diffusers, vae_to_diffusers
from opensd.models.config_dit import FLUX_VAE, SD3_VAE
from opensd.models.vae import AutoencoderKL
from reference import assert_vae_matches, randomize_

SIZE = 16
TINY = replace(SD3_VAE, ch=32, ch_mult=(1, 2), num_res_blocks=1)


def _kwargs(cfg) -> dict:
    n = len(cfg.ch_mult)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
                layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels, norm_num_groups=32,
                sample_size=SIZE, scaling_factor=cfg.scaling_factor, shift_factor=cfg.shift_factor,
                use_quant_conv=False, use_post_quant_conv=False)


def _compare(ours: AutoencoderKL, ref: DiffusersVAE) -> None:
    assert ours.cfg.embed_dim == 16
    assert_vae_matches(ours, ref, SIZE)


def test_no_quant_convs_in_the_16_channel_vaes():
    keys = AutoencoderKL(TINY).state_dict().keys()
    assert not any("quant_conv" in k for k in keys)
    assert "quant_conv.weight" in AutoencoderKL(replace(TINY, use_quant_conv=True)).state_dict()
    assert (SD3_VAE.shift_factor, FLUX_VAE.shift_factor) == (0.0609, 0.1159)


def test_matches_diffusers_via_keymap_both_ways():
    ref = randomize_(DiffusersVAE(**_kwargs(TINY)), seed=1).eval()
    ours = AutoencoderKL(TINY).eval()
    ours.load_state_dict(vae_from_diffusers(ref.state_dict(), TINY), strict=True)
    _compare(ours, ref)
    back = vae_to_diffusers(ours.state_dict(), TINY)
    assert back.keys() == ref.state_dict().keys()


def test_matches_diffusers_via_its_single_file_converter():
    ours = randomize_(AutoencoderKL(TINY), seed=2).eval()
    kw = _kwargs(TINY)
    ref = DiffusersVAE(**kw).eval()
    ldm = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    ref.load_state_dict(convert_ldm_vae_checkpoint(ldm, kw), strict=True)
    _compare(ours, ref)


@pytest.mark.parametrize("cfg", [SD3_VAE, FLUX_VAE])
def test_full_size_layout_on_meta(cfg):
    with torch.device("meta"):
        ref = DiffusersVAE(**_kwargs(cfg))
        ours = AutoencoderKL(cfg)
    got = {k: tuple(v.shape) for k, v in vae_from_diffusers(ref.state_dict(), cfg).items()}
    assert got == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert got["encoder.conv_out.weight"] == (32, 512, 3, 3)
    assert got["decoder.conv_in.weight"] == (512, 16, 3, 3)
