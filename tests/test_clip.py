"""CLIP text encoders (opensd.models.clip) and their transformers key map, checked against
transformers' CLIP text models and diffusers' own ldm -> diffusers converters. Small random
configs; nothing is downloaded."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers import CLIPTextConfig
from transformers import CLIPTextModel as HFCLIPTextModel
from transformers import CLIPTextModelWithProjection

from opensd.checkpoints.keymap_clip import clip_from_transformers, clip_to_transformers
from opensd.errors import InvalidArgument
from opensd.models.clip import (
    CLIPTextModel,
    HFEmbedder,
    OpenCLIPEmbedder,
    OpenCLIPTextModel,
    build_text_encoder,
)
from opensd.models.config import CLIP_L, OPENCLIP_BIGG, OPENCLIP_H, TextEncoderConfig

EOS = 49407
W, LAYERS, HEADS, PROJ, T = 64, 4, 4, 48, 77


@pytest.fixture(autouse=True)
def _one_thread():  # tiny matrices: one thread is fastest and immune to a busy machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def hf_config(width=W, layers=LAYERS, heads=HEADS, proj=PROJ, act="quick_gelu") -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=T, projection_dim=proj, hidden_act=act,
        layer_norm_eps=1e-5, eos_token_id=EOS, bos_token_id=49406, pad_token_id=1,
        attention_dropout=0.0,
    )


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if "norm" in name or ".ln_" in name or name.startswith("ln_"):
                # LayerNorm: scale around 1 and a bias, each different per channel
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
    return model.eval()


def hf_model(cls, seed=0, **kw):
    torch.manual_seed(seed)
    m = cls(hf_config(**kw))
    m.config._attn_implementation = "eager"  # the plainest reference path
    return randomize(m, seed)


def flat_hf_state(m) -> dict:
    """State dict of a transformers CLIP text model in file layout (keys with ``text_model.``)."""
    sd = m.state_dict()
    if not hasattr(m, "text_model"):  # transformers >= 5.6 builds CLIPTextModel without that level
        sd = {("text_projection.weight" if k == "text_projection.weight" else "text_model." + k): v
              for k, v in sd.items()}
    return sd


def load_into_hf(m, sd: dict) -> None:
    """Load a file-layout state dict (``text_model.`` keys) into a transformers model, strictly."""
    if not hasattr(m, "text_model"):
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    m.load_state_dict(sd, strict=True)


def make_ids(batch_lengths, pad: int, seed=0) -> torch.Tensor:
    """BOS, random tokens, EOS, then ``pad`` to T: the two padding styles of OpenAI and open_clip."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in batch_lengths:
        toks = torch.randint(0, 49406, (n,), generator=g)
        row = torch.cat([torch.tensor([49406]), toks, torch.tensor([EOS])])
        rows.append(torch.cat([row, torch.full((T - row.numel(),), pad)]))
    return torch.stack(rows)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel=1e-4):
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = ref.abs().max().item()
    assert scale > 1e-3, "reference is degenerate; the comparison would prove nothing"
    err = (ours - ref).abs().max().item()
    assert err <= rel * scale, f"max abs diff {err:.3e} > {rel:.0e} * {scale:.3e}"


def run_hf(m, ids):
    with torch.no_grad():
        return m(input_ids=ids, output_hidden_states=True)


def hf_final_norm(m):
    return (m.text_model if hasattr(m, "text_model") else m).final_layer_norm


def our_cfg(naming, **kw) -> TextEncoderConfig:
    base = dict(naming=naming, width=W, layers=LAYERS, heads=HEADS, max_length=T)
    base.update(kw)
    return TextEncoderConfig(**base)


# --- 1. transformers CLIPTextModel (quick_gelu) -> our HF-naming model --------------------------


@pytest.mark.parametrize("pad", [EOS, 0])
def test_hf_naming_matches_transformers(pad):
    ref = hf_model(HFCLIPTextModel, seed=1, act="quick_gelu")
    ids = make_ids([5, 20, 75], pad)
    out = run_hf(ref, ids)

    cfg = our_cfg("hf", act="quick_gelu", skip=1, final_norm=True)
    ours = CLIPTextModel(cfg)
    ours.load_state_dict(clip_from_transformers(flat_hf_state(ref), cfg), strict=True)
    ours.eval()
    with torch.no_grad():
        o1 = ours(ids)  # cfg.skip = 1
        o2 = ours(ids, skip=2)
        o2n = CLIPTextModel(replace(cfg, final_norm=False, pooled=True))
        o2n.load_state_dict(ours.state_dict())
        o2n = o2n(ids, skip=2)

    assert_close(o1.hidden, out.last_hidden_state)
    assert_close(o1.pooled, out.pooler_output)
    # SD1 "clip skip 2": penultimate layer, final LayerNorm applied
    assert_close(o2.hidden, hf_final_norm(ref)(out.hidden_states[-2]))
    assert o2.pooled is None  # pooled not asked for and the last layer was not computed
    # SDXL's CLIP-L: penultimate layer without the final LayerNorm, pooled still from the last layer
    assert_close(o2n.hidden, out.hidden_states[-2])
    assert_close(o2n.pooled, out.pooler_output)


def test_hf_naming_with_projection():
    ref = hf_model(CLIPTextModelWithProjection, seed=2, act="quick_gelu")
    ids = make_ids([3, 40], EOS)
    out = run_hf(ref, ids)
    cfg = our_cfg("hf", projection_dim=PROJ)
    ours = CLIPTextModel(cfg)
    ours.load_state_dict(clip_from_transformers(flat_hf_state(ref), cfg), strict=True)
    with torch.no_grad():
        o = ours.eval()(ids)
    assert_close(o.hidden, out.last_hidden_state)
    assert_close(o.pooled, out.text_embeds)


# --- 2. transformers CLIPTextModelWithProjection (gelu) -> our OpenCLIP model -------------------


@pytest.mark.parametrize("pad", [0, EOS])
def test_openclip_matches_transformers(pad):
    ref = hf_model(CLIPTextModelWithProjection, seed=3, act="gelu")
    ids = make_ids([4, 30, 75], pad, seed=pad)
    out = run_hf(ref, ids)

    cfg = our_cfg("openclip", act="gelu", projection_dim=PROJ, skip=2, final_norm=False,
                  pad_token=0, pooled=True)  # SDXL bigG style
    ours = OpenCLIPTextModel(cfg)
    sd = clip_from_transformers(flat_hf_state(ref), cfg)
    assert sd["logit_scale"].item() == pytest.approx(math.log(1 / 0.07))
    ours.load_state_dict(sd, strict=True)
    ours.eval()
    sd2 = OpenCLIPTextModel(replace(cfg, final_norm=True, pooled=False))  # SD2 style
    sd2.load_state_dict(sd)
    with torch.no_grad():
        o = ours(ids)
        o_last = ours(ids, skip=1)
        o_sd2 = sd2.eval()(ids)

    assert_close(o.hidden, out.hidden_states[-2])
    assert_close(o.pooled, out.text_embeds)
    assert_close(o_last.hidden, out.hidden_states[-1])
    assert_close(o_sd2.hidden, hf_final_norm(ref)(out.hidden_states[-2]))
    assert o_sd2.pooled is None


def test_sd2_diffusers_23_layer_form():
    """Diffusers' SD2 text_encoder is the ViT-H tower with its last layer dropped. Loaded as an
    openclip config with layers-1, skip=1, final_norm=True, it must equal the full model at skip=2."""
    full = hf_model(CLIPTextModelWithProjection, seed=4, act="gelu")
    ids = make_ids([6, 50], 0)
    cfg_full = our_cfg("openclip", act="gelu", projection_dim=PROJ, skip=2, final_norm=True)
    ours_full = OpenCLIPTextModel(cfg_full)
    ours_full.load_state_dict(clip_from_transformers(flat_hf_state(full), cfg_full))

    # what diffusers' folder holds: a CLIPTextModel of LAYERS-1 layers, no projection
    trunc = hf_model(HFCLIPTextModel, seed=0, act="gelu", layers=LAYERS - 1)
    fsd = flat_hf_state(full)
    tsd = {k: v for k, v in fsd.items()
           if k != "text_projection.weight" and f"layers.{LAYERS - 1}." not in k}
    load_into_hf(trunc, tsd)

    cfg23 = replace(cfg_full, layers=LAYERS - 1, skip=1, final_norm=True, projection_dim=0)
    ours23 = OpenCLIPTextModel(cfg23)
    mapped = clip_from_transformers(flat_hf_state(trunc), cfg23)
    assert "text_projection" not in mapped
    ours23.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        a = ours_full.eval()(ids)
        b = ours23.eval()(ids)
        ref = run_hf(trunc, ids)
    assert_close(b.hidden, ref.last_hidden_state)
    assert_close(b.hidden, a.hidden)
    assert_close(b.pooled, ref.pooler_output)  # unprojected pooled when there is no projection


# --- 3. our attribute names ARE the original layout: diffusers' own converters -----------------


def test_openclip_names_match_diffusers_converter():
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    cfg = our_cfg("openclip", act="gelu", projection_dim=PROJ, skip=2, final_norm=False, pooled=True)
    ours = randomize(OpenCLIPEmbedder(cfg), seed=5)
    prefix = "conditioner.embedders.1."
    ldm = {prefix + k: v for k, v in ours.state_dict().items()}
    assert prefix + "model.transformer.resblocks.0.attn.in_proj_weight" in ldm

    ref = CLIPTextModelWithProjection(hf_config(act="gelu"))
    ref.config._attn_implementation = "eager"
    conv = convert_open_clip_checkpoint(ref, ldm, prefix=prefix + "model.")
    load_into_hf(ref, conv)  # strict: nothing missing, nothing extra
    ids = make_ids([8, 60], 0)
    with torch.no_grad():
        o = ours.eval()(ids)
        out = run_hf(ref.eval(), ids)
    assert_close(o.hidden, out.hidden_states[-2])
    assert_close(o.pooled, out.text_embeds)

    # and our inverse map agrees with diffusers' converter key for key, value for value
    inv = clip_to_transformers(ours.model.state_dict(), cfg)
    assert inv.keys() == conv.keys()
    for k in inv:
        assert torch.equal(inv[k], conv[k]), k


@pytest.mark.parametrize("prefix", ["cond_stage_model.", "conditioner.embedders.0."])
def test_hf_names_match_diffusers_converter(prefix):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    cfg = our_cfg("hf", skip=2, final_norm=False, pooled=True)
    ours = randomize(build_text_encoder(cfg), seed=6)
    assert isinstance(ours, HFEmbedder)
    ldm = {prefix + k: v for k, v in ours.state_dict().items()}
    assert prefix + "transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in ldm
    conv = convert_ldm_clip_checkpoint(ldm)
    ref = HFCLIPTextModel(hf_config())
    ref.config._attn_implementation = "eager"
    load_into_hf(ref, conv)
    ids = make_ids([10, 70], EOS)
    with torch.no_grad():
        o = ours.eval()(ids)
        out = run_hf(ref.eval(), ids)
    assert_close(o.hidden, out.hidden_states[-2])
    assert_close(o.pooled, out.pooler_output)


# --- 4. full-size shapes on the meta device ------------------------------------------------------


def _meta_hf(cls, width, layers, heads, proj, act):
    c = hf_config(width=width, layers=layers, heads=heads, proj=proj, act=act)
    with torch.device("meta"):
        return cls(c)


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.mark.parametrize(
    "name,cfg,cls,dims",
    [
        ("clip_l", CLIP_L, HFCLIPTextModel, (768, 12, 12, 768, "quick_gelu")),
        ("openclip_h", OPENCLIP_H, CLIPTextModelWithProjection, (1024, 24, 16, 1024, "gelu")),
        ("openclip_bigg", OPENCLIP_BIGG, CLIPTextModelWithProjection, (1280, 32, 20, 1280, "gelu")),
        ("sd2_diffusers_23", replace(OPENCLIP_H, layers=23, skip=1, projection_dim=0),
         HFCLIPTextModel, (1024, 23, 16, 1024, "gelu")),
    ],
)
def test_full_size_keys_and_shapes(name, cfg, cls, dims):
    ref = _meta_hf(cls, *dims)
    ref_sd = flat_hf_state(ref)
    mapped = clip_from_transformers(ref_sd, cfg)
    with torch.device("meta"):
        ours = build_text_encoder(cfg)
    inner = ours.transformer if cfg.naming == "hf" else ours.model
    expect = _shapes(inner.state_dict())
    got = _shapes(mapped)
    assert got.keys() == expect.keys(), (sorted(got.keys() - expect.keys()), sorted(expect.keys() - got.keys()))
    assert got == expect
    back = clip_to_transformers(mapped, cfg)
    assert _shapes(back) == _shapes(ref_sd)
    # the embedder wrapper reproduces the checkpoint prefix
    top = "transformer.text_model." if cfg.naming == "hf" else "model.transformer.resblocks."
    assert any(k.startswith(top) for k in ours.state_dict())
    assert all("position_ids" not in k for k in ours.state_dict())


# --- key map details -------------------------------------------------------------------------------


def test_roundtrip_values_and_position_ids_dropped():
    ref = hf_model(CLIPTextModelWithProjection, seed=7, act="gelu")
    sd = flat_hf_state(ref)
    sd["text_model.embeddings.position_ids"] = torch.arange(T)[None]  # as old files carry it
    cfg = our_cfg("openclip", act="gelu", projection_dim=PROJ)
    ours = clip_from_transformers(sd, cfg)
    assert not any("position_ids" in k for k in ours)
    w = ours["transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(w[W:2 * W], sd["text_model.encoder.layers.1.self_attn.k_proj.weight"])
    assert torch.equal(ours["text_projection"], sd["text_projection.weight"].T)
    back = clip_to_transformers(ours, cfg)
    del sd["text_model.embeddings.position_ids"]
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)

    hf_cfg = our_cfg("hf", projection_dim=PROJ)
    same = clip_to_transformers(clip_from_transformers(sd, hf_cfg), hf_cfg)
    assert same.keys() == sd.keys() and all(torch.equal(same[k], sd[k]) for k in sd)


def test_unknown_keys_raise():
    ref = hf_model(HFCLIPTextModel, seed=8)
    sd = flat_hf_state(ref)
    cfg = our_cfg("openclip")
    with pytest.raises(KeyError, match="vision_model.foo"):
        clip_from_transformers({**sd, "vision_model.foo": torch.zeros(1)}, cfg)
    with pytest.raises(KeyError, match="layers.9"):  # beyond cfg.layers
        clip_from_transformers({**sd, "text_model.encoder.layers.9.mlp.fc1.bias": torch.zeros(1)}, cfg)
    with pytest.raises(KeyError, match="text_projection"):  # cfg has no projection
        clip_from_transformers({**sd, "text_projection.weight": torch.zeros(W, W)}, cfg)
    with pytest.raises(KeyError, match="bogus"):
        clip_to_transformers({"bogus": torch.zeros(1)}, cfg)
    with pytest.raises(KeyError, match="bogus"):
        clip_to_transformers({"text_model.bogus": torch.zeros(1)}, our_cfg("hf"))


# --- forward behaviour -----------------------------------------------------------------------------


def test_early_stop_and_skip_validation():
    cfg = our_cfg("openclip", act="gelu", projection_dim=PROJ, skip=2, pooled=False)
    m = randomize(OpenCLIPTextModel(cfg), seed=9)
    called = []
    for i, blk in enumerate(m.transformer.resblocks):
        blk.register_forward_hook(lambda mod, a, o, i=i: called.append(i))
    ids = make_ids([5], 0)
    with torch.no_grad():
        out = m(ids)
    assert called == list(range(LAYERS - 1)) and out.pooled is None
    called.clear()
    with torch.no_grad():
        out = m(ids, skip=1)
    assert called == list(range(LAYERS)) and out.pooled is not None
    for bad in (0, LAYERS + 1):
        with pytest.raises(InvalidArgument):
            m(ids, skip=bad)
    assert isinstance(build_text_encoder(cfg), OpenCLIPEmbedder)


def test_eos_pooling_picks_first_eos():
    """Padding after EOS does not change the pooled vector or the tokens up to EOS (causal)."""
    cfg = our_cfg("openclip", act="gelu", projection_dim=PROJ, pooled=True, skip=1)
    m = randomize(OpenCLIPTextModel(cfg), seed=10).eval()
    a, b = make_ids([12], 0), make_ids([12], EOS)
    with torch.no_grad():
        oa, ob = m(a), m(b)
    assert_close(oa.pooled, ob.pooled, rel=1e-6)
    assert_close(oa.hidden[:, :14], ob.hidden[:, :14], rel=1e-6)
    assert not torch.allclose(oa.hidden[:, 20:], ob.hidden[:, 20:])  # padding tokens differ
