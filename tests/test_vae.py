"""Our AutoencoderKL equals diffusers' on the same random weights, through both key paths.

Path 1 uses our diffusers key map; path 2 uses diffusers' own LDM single-file converter on our
state dict, which proves our attribute names are the original LDM layout.
"""
from __future__ import annotations

import re

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersVAE
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from opensd.checkpoints.keymap_vae import fix_ldm_vae_shapes, vae_from_diffusers, vae_to_diffusers
from opensd.models.attention import attention
from opensd.models.config import SD_VAE, VAEConfig
from opensd.models.vae import AutoencoderKL

SIZE = 32
_QK = re.compile(r"(\.q|\.k|to_q|to_k)\.weight$")
ATTN_W = [f"{s}.mid.attn_1.{n}.weight" for s in ("encoder", "decoder") for n in ("q", "k", "v", "proj_out")]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: threads buy nothing, and on a busy 2-core box OpenMP
    # oversubscription made each small conv ~40x slower. Restored afterwards.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _diffusers_kwargs(cfg: VAEConfig) -> dict:
    n = len(cfg.ch_mult)
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_ch,
        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.ch * m for m in cfg.ch_mult),
        layers_per_block=cfg.num_res_blocks, latent_channels=cfg.z_channels, norm_num_groups=32,
        sample_size=SIZE, scaling_factor=cfg.scaling_factor,
    )


def _randomize_(module: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Every parameter random, so no mapping error hides behind a default init.

    Norm scales stay near 1 and attention q/k get a larger spread so the attention logits are
    O(1): with tiny q/k the softmax is flat and a q/k mix-up or a wrong scale would go unseen.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim == 1 and name.endswith("weight"):  # only norms have 1-D weights
                p.copy_(1 + 0.1 * r)
            elif _QK.search(name):
                p.copy_(0.3 * r)
            else:
                p.copy_(std * r)
    return module


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (ours - ref).abs().max().item() / max(ref.abs().max().item(), 1e-6)


def _inputs(cfg: VAEConfig, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, cfg.in_channels, SIZE, SIZE, generator=g) * 2 - 1
    z = torch.randn(2, cfg.embed_dim, SIZE // cfg.downscale, SIZE // cfg.downscale, generator=g)
    return x, z


@torch.no_grad()
def _reference_outputs(ref: DiffusersVAE, cfg: VAEConfig) -> dict[str, torch.Tensor]:
    x, z = _inputs(cfg)
    post = ref.encode(x).latent_dist
    return {"mean": post.mean, "logvar": post.logvar, "decode": ref.decode(z).sample}


@torch.no_grad()
def _errors(ours: AutoencoderKL, want: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, float]:
    x, z = _inputs(cfg)
    mean, logvar = ours.encode(x)
    got = {"mean": mean, "logvar": logvar, "decode": ours.decode(z)}
    return {k: _rel_err(got[k], want[k]) for k in want}


_CACHE: dict[int, tuple] = {}


def _pair(blocks: int):
    """Random diffusers VAE, its outputs, and our VAE loaded through vae_from_diffusers (cached)."""
    if blocks not in _CACHE:
        cfg = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=blocks)
        ref = _randomize_(DiffusersVAE(**_diffusers_kwargs(cfg)), seed=blocks).eval()
        ours = AutoencoderKL(cfg).eval()
        ours.load_state_dict(vae_from_diffusers(ref.state_dict(), cfg), strict=True)
        _CACHE[blocks] = (cfg, ref, _reference_outputs(ref, cfg), ours)
    return _CACHE[blocks]


@pytest.mark.parametrize("blocks", [1, 2])
def test_matches_diffusers_via_keymap(blocks):
    cfg, _, want, ours = _pair(blocks)
    errs = _errors(ours, want, cfg)
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.parametrize("blocks", [1, 2])
def test_matches_diffusers_via_ldm_converter(blocks):
    cfg = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=blocks)
    # Fresh random weights in OUR model, converted by diffusers' own LDM converter.
    ours = _randomize_(AutoencoderKL(cfg), seed=10 + blocks).eval()
    ldm = {f"first_stage_model.{k}": v for k, v in ours.state_dict().items()}
    kw = _diffusers_kwargs(cfg)
    ref = DiffusersVAE(**kw).eval()
    ref.load_state_dict(convert_ldm_vae_checkpoint(ldm, kw), strict=True)
    errs = _errors(ours, _reference_outputs(ref, cfg), cfg)
    assert max(errs.values()) <= 1e-4, errs


# Swaps of same-shaped tensors that a wrong key map could plausibly make: each must be caught.
SWAPS = [
    ("encoder.mid.attn_1.q.weight", "encoder.mid.attn_1.k.weight"),
    ("decoder.mid.attn_1.v.weight", "decoder.mid.attn_1.proj_out.weight"),
    ("encoder.mid.block_1.conv1.weight", "encoder.mid.block_2.conv1.weight"),
    ("encoder.down.0.block.0.conv1.weight", "encoder.down.0.block.0.conv2.weight"),
    ("decoder.up.1.block.0.norm1.weight", "decoder.up.1.block.1.norm1.weight"),
    ("decoder.up.0.block.1.conv2.weight", "decoder.up.0.block.2.conv2.weight"),
    ("encoder.down.0.downsample.conv.weight", "decoder.up.0.block.1.conv1.weight"),
]


@pytest.mark.parametrize("a,b", SWAPS)
def test_a_swapped_mapping_is_caught(a, b):
    cfg, _, want, ours = _pair(2)
    sd = ours.state_dict()
    sd[a], sd[b] = sd[b], sd[a]
    bad = AutoencoderKL(cfg).eval()
    bad.load_state_dict(sd, strict=True)
    assert max(_errors(bad, want, cfg).values()) > 1e-2


def test_attention_goes_through_the_seam_and_its_scale_matters(monkeypatch):
    import opensd.models.vae as vae_mod
    cfg, _, want, ours = _pair(1)
    calls = []

    def spy(q, k, v, heads, mask=None):
        calls.append(heads)
        return attention(q, k, v, heads, mask)

    monkeypatch.setattr(vae_mod, "attention", spy)
    assert max(_errors(ours, want, cfg).values()) <= 1e-4
    assert calls == [1, 1]  # encoder mid + decoder mid, single head

    # A wrong softmax scale (e.g. per-head width of a multi-head split) must be caught.
    monkeypatch.setattr(vae_mod, "attention", lambda q, k, v, heads, mask=None: attention(q * 2, k, v, heads))
    assert max(_errors(ours, want, cfg).values()) > 1e-2


def test_keymap_roundtrip_values_and_errors():
    cfg, ref, _, _ = _pair(2)
    sd = ref.state_dict()
    back = vae_to_diffusers(vae_from_diffusers(sd, cfg), cfg)
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    with pytest.raises(KeyError, match="encoder.bogus.weight"):
        vae_from_diffusers({**sd, "encoder.bogus.weight": torch.zeros(1)}, cfg)
    with pytest.raises(KeyError, match="decoder.extra"):
        vae_to_diffusers({"decoder.extra": torch.zeros(1)}, cfg)


def test_legacy_diffusers_attention_names():
    # Old diffusers files name the attention query/key/value/proj_attn; they load the same.
    cfg, ref, _, ours = _pair(1)
    legacy = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value")
              .replace("to_out.0", "proj_attn"): v for k, v in ref.state_dict().items()}
    assert any(".query." in k for k in legacy)
    mapped = vae_from_diffusers(legacy, cfg)
    assert all(torch.equal(mapped[k], v) for k, v in ours.state_dict().items())


def test_full_size_keys_and_shapes_on_meta():
    cfg = SD_VAE
    with torch.device("meta"):
        ref = DiffusersVAE(**_diffusers_kwargs(cfg))
        ours = AutoencoderKL(cfg)
    assert dict(_diffusers_kwargs(cfg))["block_out_channels"] == (128, 256, 512, 512)
    dsd = ref.state_dict()
    mapped = vae_from_diffusers(dsd, cfg)
    want = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in mapped.items()}
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert got == want
    assert want["decoder.up.3.block.0.conv1.weight"] == (512, 512, 3, 3)
    assert want["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert want["encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    ours.load_state_dict(mapped, strict=True, assign=True)
    back = vae_to_diffusers(mapped, cfg)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in dsd.items()}


def test_fix_ldm_vae_shapes():
    cfg, _, _, ours = _pair(1)
    sd = ours.state_dict()
    flat = {f"first_stage_model.{k}": (v[:, :, 0, 0] if k in ATTN_W else v) for k, v in sd.items()}
    assert flat[f"first_stage_model.{ATTN_W[0]}"].ndim == 2
    fixed = fix_ldm_vae_shapes(flat)
    assert flat[f"first_stage_model.{ATTN_W[0]}"].ndim == 2  # input not modified
    for k, v in sd.items():
        out = fixed[f"first_stage_model.{k}"]
        if k in ATTN_W:
            assert out.shape == v.shape and torch.equal(out, v)
        else:
            assert out is flat[f"first_stage_model.{k}"]  # everything else untouched
    stripped = {k.removeprefix("first_stage_model."): v for k, v in fixed.items()}
    fresh = AutoencoderKL(cfg)
    fresh.load_state_dict(stripped, strict=True)
    # Without the fix the 2-D weights do not load, so the test above is not vacuous.
    with pytest.raises(RuntimeError, match="size mismatch"):
        AutoencoderKL(cfg).load_state_dict(
            {k.removeprefix("first_stage_model."): v for k, v in flat.items()}, strict=True)
    # Unprefixed files work too.
    assert fix_ldm_vae_shapes({ATTN_W[1]: sd[ATTN_W[1]][:, :, 0, 0]})[ATTN_W[1]].ndim == 4


def test_logvar_is_clamped_like_the_original():
    cfg, _, _, ours = _pair(1)
    m = AutoencoderKL(cfg).eval()
    m.load_state_dict(ours.state_dict())
    x, _ = _inputs(cfg)
    with torch.no_grad():
        m.quant_conv.bias[cfg.embed_dim:] = 1e3  # push logvar far out of range
        hi = m.encode(x)[1]
        m.quant_conv.bias[cfg.embed_dim:] = -1e3
        lo = m.encode(x)[1]
    assert hi.min().item() == 20.0 and hi.max().item() == 20.0
    assert lo.min().item() == -30.0 and lo.max().item() == -30.0
