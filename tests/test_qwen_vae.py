"""Qwen-Image's VAE as 2-D convolutions: equal to diffusers' AutoencoderKLQwenImage on one frame
(B, C, 1, H, W) on tiny random weights, read from diffusers' layout and from the Wan layout
(ComfyUI's qwen_image_vae.safetensors; its names checked against diffusers' own Wan converter);
the latent normalisation equals QwenImagePipeline's; detected from shapes without touching the
other VAEs' detection; the full-size layout maps key for key on the meta device."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKLQwenImage
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img import QwenImageImg2ImgPipeline

from opensd.checkpoints import keymap_qwen_vae as K
from opensd.errors import CheckpointError
from opensd.models.qwen_vae import QWEN_IMAGE_VAE, QwenImageVAE, QwenVAEConfig

TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
SIZE = 32


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _reference(seed: int = 0, **kw) -> AutoencoderKLQwenImage:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    z = kw.get("z_dim", TINY["z_dim"])
    mean = torch.randn(z, generator=g).tolist()
    std = (torch.rand(z, generator=g) * 2 + 0.5).tolist()
    ref = AutoencoderKLQwenImage(**{**TINY, **kw}, latents_mean=mean, latents_std=std)
    with torch.no_grad():  # convs keep their (seeded, random) default init; norms and biases randomised
        for name, p in ref.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if name.endswith("gamma") else p + 0.05 * noise if name.endswith("bias") else p)
    return ref.eval()


@pytest.fixture(scope="module")
def ref():
    return _reference()


def _ours(ref, sd=None) -> QwenImageVAE:
    sd = ref.state_dict() if sd is None else sd
    cfg = K.qwen_vae_config(_shapes(sd), latents_mean=tuple(ref.config.latents_mean),
                            latents_std=tuple(ref.config.latents_std))
    vae = QwenImageVAE(cfg).eval()
    vae.load_state_dict(K.qwen_vae_state_dict(sd), strict=True)
    return vae


def _wan(ref) -> dict:
    """The reference's weights in the Wan layout (5-D, time convs kept), named by our map."""
    per_level = TINY["num_res_blocks"] + 2
    return {K.wan_key(k, per_level): v for k, v in ref.state_dict().items()}


def test_config_from_shapes(ref):
    cfg = K.qwen_vae_config(_shapes(ref.state_dict()))
    assert (cfg.base_dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks, cfg.input_channels) == (8, 4, (1, 2, 4, 4), 2, 3)
    assert K.qwen_vae_config(_shapes(_wan(ref))) == cfg
    assert cfg.downscale == 8 and cfg.embed_dim == 4
    # inside a whole-model file: under a prefix, other parts' keys ignored
    whole = {**{"first_stage_model." + k: v for k, v in _wan(ref).items()}, "model.diffusion_model.x": torch.zeros(1)}
    assert K.qwen_vae_config(_shapes(whole), "first_stage_model.") == cfg
    assert K.qwen_vae_state_dict(whole, "first_stage_model.").keys() == K.qwen_vae_state_dict(ref.state_dict()).keys()
    other = _reference(dim_mult=[1, 2, 2], temperal_downsample=[False, True], num_res_blocks=1, z_dim=6)
    c2 = K.qwen_vae_config(_shapes(other.state_dict()))
    assert (c2.dim_mult, c2.num_res_blocks, c2.z_dim) == ((1, 2, 2), 1, 6)


def test_wan_names_are_diffusers_converters(ref):
    """diffusers' own Wan -> diffusers converter turns our Wan-layout names back into the reference's
    state dict, key for key and tensor for tensor: the names we read are Wan's."""
    back = convert_wan_vae_to_diffusers(_wan(ref))
    want = ref.state_dict()
    assert set(back) == set(want)
    assert all(torch.equal(back[k], want[k]) for k in want)


@pytest.mark.parametrize("layout", ["diffusers", "wan"])
def test_encode_decode_equal_diffusers(ref, layout):
    ours = _ours(ref, None if layout == "diffusers" else _wan(ref))
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        dist = ref.encode(x[:, :, None]).latent_dist
        mean, logvar = ours.encode(x)
        torch.testing.assert_close(mean, dist.mean[:, :, 0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logvar, dist.logvar[:, :, 0], rtol=1e-5, atol=1e-5)
        z = torch.randn(2, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(4))
        want = ref.decode(z[:, :, None]).sample[:, :, 0]
        got = ours.decode(z)
    assert want.abs().max() > 0.1 and (want.abs() < 1).float().mean() > 0.5  # not all clamped away
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_latent_normalisation_equals_pipeline(ref):
    """Encode: QwenImageImg2ImgPipeline._encode_vae_image (a posterior sample, normalised); decode:
    the arithmetic QwenImagePipeline.__call__ applies before vae.decode."""
    ours = _ours(ref)
    cfg = ours.cfg
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        want = QwenImageImg2ImgPipeline._encode_vae_image(SimpleNamespace(vae=ref), x[:, :, None],
                                                           torch.Generator().manual_seed(6))[:, :, 0]
        mean, logvar = ours.encode(x)
        noise = torch.randn((1, 4, 1, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(6))[:, :, 0]
        got = cfg.scaled(mean + torch.exp(0.5 * logvar) * noise)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        latents = torch.randn(1, 4, 1, 4, 4)
        m = torch.tensor(ref.config.latents_mean).view(1, 4, 1, 1, 1)
        inv = 1.0 / torch.tensor(ref.config.latents_std).view(1, 4, 1, 1, 1)
        torch.testing.assert_close(cfg.unscaled(latents[:, :, 0]), (latents / inv + m)[:, :, 0], rtol=0, atol=0)
        torch.testing.assert_close(cfg.unscaled(cfg.scaled(mean)), mean, rtol=1e-5, atol=1e-5)


def test_half_precision_close(ref):
    ours = _ours(ref).to(torch.bfloat16)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = ref.decode(z[:, :, None]).sample[:, :, 0]
        got = ours.decode(z.bfloat16()).float()
    assert (got - want).abs().max() < 0.1


def test_full_size_key_table():
    """The released config (diffusers' defaults, as Qwen/Qwen-Image's vae/config.json) on the meta
    device: every diffusers tensor maps to one of ours with the 2-D shape, none left over."""
    with torch.device("meta"):
        ref = AutoencoderKLQwenImage()
        ours = QwenImageVAE(QWEN_IMAGE_VAE)
    shapes = _shapes(ref.state_dict())
    assert K.qwen_vae_config(shapes) == QWEN_IMAGE_VAE
    assert K.qwen_vae_shapes(shapes) == _shapes(ours.state_dict())
    assert QWEN_IMAGE_VAE.latents_mean == tuple(ref.config.latents_mean)
    assert QWEN_IMAGE_VAE.latents_std == tuple(ref.config.latents_std)


def test_detection(ref):
    from diffusers import AutoencoderKL, AutoencoderKLFlux2
    assert K.is_qwen_vae(_shapes(ref.state_dict())) and K.is_qwen_vae(_shapes(_wan(ref)))
    assert K.is_qwen_vae({"first_stage_model." + k: s for k, s in _shapes(_wan(ref)).items()}, "first_stage_model.")
    for other in (AutoencoderKL(block_out_channels=(32,), latent_channels=16, norm_num_groups=8),
                  AutoencoderKLFlux2(block_out_channels=(32,), down_block_types=("DownEncoderBlock2D",),
                                     up_block_types=("UpDecoderBlock2D",), norm_num_groups=8)):
        assert not K.is_qwen_vae(_shapes(other.state_dict()))
        with pytest.raises(CheckpointError, match="not a Qwen-Image .*VAE"):
            K.qwen_vae_config(_shapes(other.state_dict()), path="ae.safetensors")
    wan22 = {**_shapes(_wan(ref)), K._WAN22_MARK: (8, 8, 3, 3, 3)}
    with pytest.raises(CheckpointError, match="Wan 2.2"):
        K.qwen_vae_config(wan22, path="wan2.2_vae.safetensors")
    partial = {k: s for k, s in _shapes(_wan(ref)).items() if k != "conv2.weight"}
    with pytest.raises(CheckpointError, match="incomplete Qwen-Image VAE: no conv2.weight"):
        K.qwen_vae_config(partial)


def test_default_config_is_qwen_image():
    assert QwenVAEConfig() == QWEN_IMAGE_VAE and QWEN_IMAGE_VAE.base_dim == 96 and QWEN_IMAGE_VAE.z_dim == 16


@pytest.mark.parametrize("layout", ["diffusers", "wan"])
def test_part_kind_and_other_vaes_refuse(ref, layout, tmp_path):
    """A vae/ folder's Qwen-Image VAE is its own part kind (not the 16-channel "vae" of SD3/Flux, which
    its diffusers layout's 32-channel conv_out would otherwise look like); the SD/Flux VAE detection
    refuses it in one line."""
    from safetensors.torch import save_file

    from opensd.checkpoints.detect import infer_vae
    from opensd.checkpoints.part_files import _kind, label
    sd = ref.state_dict() if layout == "diffusers" else _wan(ref)
    path = tmp_path / "qwen_image_vae.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert _kind(path) == ("qwen_vae", 0) and label("qwen_vae") == "Qwen-Image VAE"
    from opensd.library.model_catalog import ModelFile, describe
    assert describe(ModelFile("vae", path.name, path)).detail == "Qwen-Image VAE, 4 latent channels"
    with pytest.raises(CheckpointError, match="Qwen-Image .*VAE"):
        infer_vae(_shapes(sd), "", str(path))


@torch.no_grad()
def test_tiled_decode_and_encode(ref):
    """The 2-D module runs through our tiled VAE path as is (pipeline/vae_codec): tiles blend to the
    whole image's result within the usual tiling error (the mid-block attention sees its tile only)."""
    from opensd.pipeline import vae_codec
    ours = _ours(ref)
    z = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(8))
    whole = ours.decode(z)
    tiled = vae_codec.decode(ours.decode, z, 8, tiling=True, tiles=(16, 8))
    assert tiled.shape == whole.shape == (1, 3, 192, 192)
    # random weights reach far (a real VAE's tiles agree much better); a misplaced tile would not correlate
    assert (tiled - whole).abs().mean() < 0.2 * whole.abs().mean()
    assert torch.corrcoef(torch.stack([tiled.flatten(), whole.flatten()]))[0, 1] > 0.95
    x = whole.clamp(-1, 1)
    enc = vae_codec.encode(lambda t: ours.encode(t)[0], x, 8, tiling=True, tiles=(128, 64))
    assert enc.shape == (1, 4, 24, 24)
    assert torch.corrcoef(torch.stack([enc.flatten(), ours.encode(x)[0].flatten()]))[0, 1] > 0.95


@torch.no_grad()
def test_written_in_the_wan_layout_diffusers_reads_it_back(ref):
    """qwen_vae_to_wan gives the Wan file's shapes: diffusers' Wan converter and a fresh
    AutoencoderKLQwenImage take it (only the temporal resamplers missing) and decode a frame as the
    original does."""
    wan = K.qwen_vae_to_wan(_ours(ref).state_dict())
    want_shapes = {k: s for k, s in _shapes(_wan(ref)).items() if ".time_conv." not in k}
    assert _shapes(wan) == want_shapes
    back = AutoencoderKLQwenImage(**TINY, latents_mean=ref.config.latents_mean, latents_std=ref.config.latents_std)
    missing, unexpected = back.load_state_dict(convert_wan_vae_to_diffusers(wan), strict=False)
    assert not unexpected and missing and all(".time_conv." in k for k in missing)
    z = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(back.eval().decode(z).sample, ref.decode(z).sample, rtol=1e-5, atol=1e-5)


def test_diffusers_config_statistics(ref):
    """A diffusers vae/config.json's statistics (checked against its z_dim) feed qwen_vae_config."""
    from opensd.checkpoints.diffusers_config import latent_stats
    stats = latent_stats(dict(ref.config))
    cfg = K.qwen_vae_config(_shapes(ref.state_dict()), **stats)
    assert cfg.latents_mean == tuple(ref.config.latents_mean) and cfg.latents_std == tuple(ref.config.latents_std)
    with pytest.raises(ValueError, match="lists of 4 numbers"):
        latent_stats({**ref.config, "latents_std": [1.0, 2.0]})
