"""IP-Adapter FaceID (models/ip_adapter_faceid.py, checkpoints/ip_adapter_files.py, adapters/ip_adapter.py):

* the FaceID / Portrait projection and the FaceID Plus projection (v1 and v2's shortcut) equal a plain
  torch re-implementation of the published formula (h94's MLPProjModel / ProjModelFaceIdPlus) on tiny
  random weights;
* files in each release's key layout (FaceID, Portrait, FaceID Plus; with their LoRA keys; as .safetensors
  and as the .bin pickles h94 publishes) are detected and load with their values; the FaceID LoRA file
  and Portrait "unnorm" are refused in one line;
* the full-size key tables of the releases build (meta device) with exactly their keys (LoRA keys aside),
  as many parameters as diffusers' FaceID projections;
* end to end on the tiny pipeline with the tiny InsightFace models of test_insightface: the face tokens
  change the picture, another face changes it again, scale 0 is no adapter; FaceID Plus runs with the
  tiny CLIP vision model on the aligned face; the errors are one line.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from diffusers.models.embeddings import IPAdapterFaceIDImageProjection, IPAdapterFaceIDPlusImageProjection  # noqa: E402
from reference import randomize_  # noqa: E402
from test_insightface import BIG_KPS, H, W, models_root  # noqa: E402,F401 (fixture)
from test_ip_adapter_plus import _ip_layers  # noqa: E402
from vision_fixtures import clip_vision, save_vision  # noqa: E402

from opensd.adapters import insightface as IF  # noqa: E402
from opensd.adapters.ip_adapter import IPAdapterSpec, load_ip_adapter_for  # noqa: E402
from opensd.adapters.ip_adapter_faceid import crop_size  # noqa: E402
from opensd.checkpoints.clip_vision_files import load_clip_vision  # noqa: E402
from opensd.checkpoints.ip_adapter_files import build_ip_adapter, describe_ip_adapter, load_ip_adapter  # noqa: E402
from opensd.checkpoints.ip_adapter_files import variant  # noqa: E402
from opensd.errors import CheckpointError, InvalidArgument  # noqa: E402
from opensd.library.synthetic import write_random_checkpoint  # noqa: E402
from opensd.models import config as C  # noqa: E402
from opensd.models.ip_adapter import IPAdapter, cross_attentions  # noqa: E402
from opensd.models.ip_adapter_faceid import FACE, FaceIDPlusProjection, FaceIDProjection, project_faces  # noqa: E402
from opensd.pipeline.pipeline import load  # noqa: E402

# --- the formula, written out ---------------------------------------------------------------------------


def _ln(x, sd, key):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"])


def _lin(x, sd, key, bias=True):
    return F.linear(x, sd[key + ".weight"], sd.get(key + ".bias") if bias else None)


def ref_id_tokens(sd, ids, tokens):
    """MLPProjModel (FaceID): linear - GELU - linear to tokens x width, reshape, LayerNorm."""
    x = _lin(F.gelu(_lin(ids, sd, "proj.0")), sd, "proj.2")
    return _ln(x.reshape(len(ids), tokens, -1), sd, "norm")


def ref_perceiver(sd, latents, hidden, depth):
    """FacePerceiverResampler: per block, attention of the latents over [projected states, latents]
    (heads of 64, softmax(q k^T / 8)), then a feed-forward, both residual; then proj_out and norm_out."""
    x = _lin(hidden, sd, "perceiver_resampler.proj_in")
    for n in range(depth):
        p = f"perceiver_resampler.layers.{n}"
        xn, ln = _ln(x, sd, f"{p}.0.norm1"), _ln(latents, sd, f"{p}.0.norm2")
        q = _lin(ln, sd, f"{p}.0.to_q", False)
        k, v = _lin(torch.cat([xn, ln], 1), sd, f"{p}.0.to_kv", False).chunk(2, -1)
        heads = q.shape[-1] // 64
        split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, 64).transpose(1, 2)  # noqa: E731
        w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(64), -1)
        out = (w @ split(v)).transpose(1, 2).reshape(q.shape)
        latents = _lin(out, sd, f"{p}.0.to_out", False) + latents
        h = _lin(F.gelu(_lin(_ln(latents, sd, f"{p}.1.0"), sd, f"{p}.1.1", False)), sd, f"{p}.1.3", False)
        latents = h + latents
    return _ln(_lin(latents, sd, "perceiver_resampler.proj_out"), sd, "perceiver_resampler.norm_out")


def test_faceid_projection_is_the_published_formula():
    proj = randomize_(FaceIDProjection(id_dim=8, width=12, tokens=4, hidden=16), seed=1, std=0.3)
    ids = torch.randn(3, 8)
    sd = proj.state_dict()
    out = proj(ids)
    assert out.shape == (3, 4, 12)
    torch.testing.assert_close(out, ref_id_tokens(sd, ids, 4))
    portrait = randomize_(FaceIDProjection(8, 12, 16, 16), seed=2, std=0.3)
    assert portrait(ids).shape == (3, 16, 12)


@pytest.mark.parametrize("shortcut, scale", [(False, 1.0), (True, 1.0), (True, 2.5)])
def test_faceid_plus_projection_is_the_published_formula(shortcut, scale):
    proj = randomize_(FaceIDPlusProjection(id_dim=8, width=128, tokens=4, hidden=16, clip_dim=20, depth=2, heads=2,
                                           ff_inner=256), seed=3, std=0.2)
    ids, hidden = torch.randn(2, 8), torch.randn(2, 7, 20)
    sd = proj.state_dict()
    tokens = ref_id_tokens(sd, ids, 4)
    want = ref_perceiver(sd, tokens, hidden, 2)
    want = tokens + scale * want if shortcut else want
    got = proj(ids, hidden, scale, shortcut)
    assert got.shape == (2, 4, 128)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# --- files -------------------------------------------------------------------------------------------------

TINY_UNET_WIDTH = 64  # the tiny pipeline's context width (what write_random_checkpoint makes)


def _lora_keys(n_attn: int) -> dict[str, torch.Tensor]:
    """The LoRA'd attention every FaceID file carries beside its adapter (rank 4 here, 128 in the releases)."""
    out = {}
    for n in range(n_attn):
        for part in ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora"):
            out[f"ip_adapter.{n}.{part}.down.weight"] = torch.randn(4, 8)
            out[f"ip_adapter.{n}.{part}.up.weight"] = torch.randn(8, 4)
    return out


def faceid_adapter(unet, kind="faceid", seed=11, clip_dim=32) -> IPAdapter:
    width = unet.config.context_dim
    inners = [a.to_k.out_features for a in cross_attentions(unet)]
    if kind == "faceid_plus":
        proj = FaceIDPlusProjection(512, width, 4, 32, clip_dim, 2, 1, 4 * width)
    else:
        proj = FaceIDProjection(512, width, 16 if kind == "portrait" else 4, 32)
    return randomize_(IPAdapter(512, width, inners, image_proj=proj), seed=seed, std=0.2).eval()


def write_faceid(adapter, path, pickle=False):
    sd = {k: v.contiguous() for k, v in adapter.state_dict().items()}
    sd.update(_lora_keys(2 * len(adapter.ip_adapter)))
    if pickle:  # h94's layout: {"image_proj": {...}, "ip_adapter": {...}}
        nested = {"image_proj": {}, "ip_adapter": {}}
        for k, v in sd.items():
            head, rest = k.split(".", 1)
            nested[head][rest] = v
        torch.save(nested, str(path))
    else:
        save_file(sd, str(path))
    return path


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.mark.parametrize("kind, name, pickle", [
    ("faceid", "ip-adapter-faceid_sd15.bin", True),
    ("portrait", "ip-adapter-faceid-portrait_sd15.safetensors", False),
    ("faceid_plus", "ip-adapter-faceid-plusv2_sd15.bin", True),
])
def test_each_faceid_layout_is_detected_and_loads_its_values(pipe, tmp_path, kind, name, pickle):
    unet = pipe.family.network(pipe.model)
    adapter = faceid_adapter(unet, kind)
    path = write_faceid(adapter, tmp_path / name, pickle)
    loaded = load_ip_adapter(path)
    assert loaded.source == FACE and variant(loaded.state_dict()) == ("faceid_plus" if kind == "faceid_plus"
                                                                       else "faceid")
    assert loaded.image_proj.tokens == (16 if kind == "portrait" else 4) and loaded.image_dim == 512
    for k, v in adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert tuple(describe_ip_adapter(path).state_dict()) == tuple(adapter.state_dict())
    model = load_ip_adapter_for(path, pipe)
    assert model.v2 == (kind == "faceid_plus")  # "plusv2" in its name


def test_the_faceid_lora_and_portrait_unnorm_are_refused_in_one_line(tmp_path):
    lora = tmp_path / "ip-adapter-faceid_sd15_lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight":
               torch.zeros(4, 8)}, str(lora))
    unnorm = {"image_proj.latents": (1, 16, 1280), "image_proj.proj_in.weight": (1280, 512)}
    for attempt, words in [(lambda: load_ip_adapter(lora), "load it as a LoRA"),
                           (lambda: build_ip_adapter(unnorm), "Portrait unnorm")]:
        with pytest.raises(CheckpointError) as e:
            attempt()
        assert words in str(e.value) and "\n" not in str(e.value)
    broken = {"image_proj.proj.0.weight": (1024, 512), "image_proj.proj.2.weight": (3000, 1024),
              "image_proj.norm.weight": (768,)}
    with pytest.raises(CheckpointError, match="3000 rows, not tokens of the norm's 768"):
        build_ip_adapter(broken)


# --- full-size layouts (meta device) -------------------------------------------------------------------------

def released_faceid(unet_cfg, width, tokens=4, plus=False, lora=True):
    """The key shapes of h94's FaceID releases: MLPProjModelFaceId(cross_attention_dim=width, id 512,
    num_tokens) or ProjModelFaceIdPlus (FacePerceiverResampler: dim = width, depth 4, heads = width / 64,
    embedding_dim 1280, ff_mult 4), the ip layers, and rank-128 LoRA on every attention."""
    shapes = {"image_proj.proj.0.weight": (1024, 512), "image_proj.proj.0.bias": (1024,),
              "image_proj.proj.2.weight": (tokens * width, 1024), "image_proj.proj.2.bias": (tokens * width,),
              "image_proj.norm.weight": (width,), "image_proj.norm.bias": (width,)}
    if plus:
        p = "image_proj.perceiver_resampler."
        shapes.update({p + "proj_in.weight": (width, 1280), p + "proj_in.bias": (width,),
                       p + "proj_out.weight": (width, width), p + "proj_out.bias": (width,),
                       p + "norm_out.weight": (width,), p + "norm_out.bias": (width,)})
        for n in range(4):
            q = f"{p}layers.{n}"
            for norm in (f"{q}.0.norm1", f"{q}.0.norm2", f"{q}.1.0"):
                shapes.update({f"{norm}.weight": (width,), f"{norm}.bias": (width,)})
            shapes.update({f"{q}.0.to_q.weight": (width, width), f"{q}.0.to_kv.weight": (2 * width, width),
                           f"{q}.0.to_out.weight": (width, width), f"{q}.1.1.weight": (4 * width, width),
                           f"{q}.1.3.weight": (width, 4 * width)})
    layers = _ip_layers(unet_cfg, width)
    extra = {}
    if lora:
        for n in range(2 * len(layers) // 2):
            extra[f"ip_adapter.{n}.to_q_lora.down.weight"] = (128, 320)
    return {**shapes, **layers}, extra


@pytest.mark.parametrize("unet_cfg, width, tokens, plus", [
    (C.SD1_UNET, 768, 4, False),    # ip-adapter-faceid_sd15
    (C.SD1_UNET, 768, 16, False),   # ip-adapter-faceid-portrait(-v11)_sd15
    (C.SD1_UNET, 768, 4, True),     # ip-adapter-faceid-plus_sd15, -plusv2_sd15
    (C.SDXL_UNET, 2048, 4, False),  # ip-adapter-faceid_sdxl
    (C.SDXL_UNET, 2048, 16, False),  # ip-adapter-faceid-portrait_sdxl
    (C.SDXL_UNET, 2048, 4, True),   # ip-adapter-faceid-plusv2_sdxl
])
def test_released_faceid_layouts_build_with_exactly_their_keys(unet_cfg, width, tokens, plus):
    shapes, lora = released_faceid(unet_cfg, width, tokens, plus)
    adapter = build_ip_adapter({**shapes, **lora})
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == shapes
    proj = adapter.image_proj
    assert adapter.source == FACE and proj.tokens == tokens and proj.clip_dim == (1280 if plus else None)
    assert len(adapter.ip_adapter) == (16 if unet_cfg is C.SD1_UNET else 70)
    assert crop_size(adapter) == (224 if unet_cfg is C.SD1_UNET else 256)  # cubiq's face crop for CLIP
    with torch.device("meta"):
        if plus:
            ref = IPAdapterFaceIDPlusImageProjection(embed_dims=width, output_dims=width, hidden_dims=1280,
                                                     heads=width // 64, num_tokens=4)
            assert {blk[0].heads for blk in proj.perceiver_resampler.layers} == {width // 64}
        else:
            ref = IPAdapterFaceIDImageProjection(512, width, mult=2, num_tokens=tokens)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in proj.parameters())


# --- end to end ----------------------------------------------------------------------------------------------

FAST = dict(steps=2, seed=5, cfg=5.0, width=64, height=64)


@pytest.fixture(scope="module")
def faces(models_root):  # noqa: F811
    return IF.load(IF.find_pack(None, str(models_root / "insightface" / "models" / "buffalo_l")))


def _face_picture(tint=(0, 0, 0)) -> Image.Image:
    """test_insightface's gradient picture (the tiny detector finds its faces at fixed places), tinted."""
    ys, xs = np.mgrid[0:H, 0:W]
    rgb = np.stack([np.minimum(xs, 255), ys, np.full_like(xs, 200)], -1) + np.array(tint)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def vision(tmp_path_factory):
    return load_clip_vision(save_vision(clip_vision(), tmp_path_factory.mktemp("cv") / "cv.safetensors"))


@pytest.mark.parametrize("kind", ["faceid", "faceid_plus"])
def test_face_tokens_change_the_picture(pipe, tmp_path, faces, vision, kind):
    unet = pipe.family.network(pipe.model)
    name = "ip-adapter-faceid-plusv2_sd15.bin" if kind == "faceid_plus" else "ip-adapter-faceid_sd15.bin"
    loaded = load_ip_adapter_for(write_faceid(faceid_adapter(unet, kind), tmp_path / name, pickle=True), pipe)
    encoder = vision if kind == "faceid_plus" else None

    def run(spec=None):
        return np.asarray(pipe.txt2img("a face", ip_adapter=spec, **FAST)[0], dtype=np.int16)

    before = run()
    zero = run(IPAdapterSpec(loaded, encoder, _face_picture(), 0.0, faces=faces))
    spec = IPAdapterSpec(loaded, encoder, _face_picture(), 1.5, faces=faces)
    one = run(spec)
    other = run(IPAdapterSpec(loaded, encoder, _face_picture((-60, 40, -100)), 1.5, faces=faces))
    assert np.array_equal(zero, before)
    assert not np.array_equal(one, before) and not np.array_equal(one, other)
    # the tokens are the projection of the face's normalised ArcFace embedding (and negative: of zeros)
    face = IF.largest_face(faces, np.asarray(_face_picture()))
    ids = torch.from_numpy(face.normed.astype(np.float32))[None]
    cond, uncond = spec.tokens()
    if kind == "faceid":
        torch.testing.assert_close(cond, project_faces(loaded.adapter, ids))
        torch.testing.assert_close(uncond, project_faces(loaded.adapter, torch.zeros_like(ids)))
    else:  # v2: shortcut on; the CLIP input is the face aligned at 224 x 224
        crop = IF.align(np.asarray(_face_picture()), BIG_KPS, 224)
        from opensd.adapters.ip_adapter import image_features
        hidden = image_features(vision, torch.from_numpy(crop.astype(np.float32) / 255)[None],
                                "penultimate_hidden_states")
        torch.testing.assert_close(cond, project_faces(loaded.adapter, ids, hidden, 1.0, True))


def test_faceid_errors_are_one_line(pipe, tmp_path, faces, vision):
    unet = pipe.family.network(pipe.model)
    plain = load_ip_adapter_for(write_faceid(faceid_adapter(unet), tmp_path / "ip-adapter-faceid_sd15.bin", True),
                                pipe)
    plus = load_ip_adapter_for(write_faceid(faceid_adapter(unet, "faceid_plus", clip_dim=40),
                                            tmp_path / "ip-adapter-faceid-plus_sd15.bin", True), pipe)
    assert not plus.v2
    for spec, words in [(IPAdapterSpec(plain, None, _face_picture()), "needs InsightFace's face analysis"),
                        (IPAdapterSpec(plus, None, _face_picture(), faces=faces), "needs the ViT-H/14"),
                        (IPAdapterSpec(plus, vision, _face_picture(), faces=faces), "40-wide CLIP hidden states"),
                        (IPAdapterSpec(plain, None, _face_picture(), 3.0, faces=faces), "ip_adapter_scale")]:
        with pytest.raises(InvalidArgument) as e:
            pipe.txt2img("a face", ip_adapter=spec, **FAST)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


# --- the separate FaceID LoRA ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, attentions", [(C.sd1, 32), (C.sdxl, 140)])
def test_faceid_lora_names_are_ones_our_lora_loader_knows(cfg, attentions):
    """ip-adapter-faceid*_lora.safetensors holds kohya-style names of diffusers' attention paths
    (lora_unet_up_blocks_2_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight, ...: h94
    converted them from the adapter's LoRA attention processors): one per to_q/to_k/to_v/to_out.0 of every
    attention of diffusers' UNet. Every such name must be one our LoRA loader patches."""
    from diffusers import UNet2DConditionModel
    from reference import diffusers_unet_kwargs

    from opensd.adapters.lora_keys import lora_modules
    from opensd.models.stable_diffusion import StableDiffusion

    config = cfg()
    with torch.device("meta"):
        ours = StableDiffusion(config)
        theirs = UNet2DConditionModel(**diffusers_unet_kwargs(config.unet))
    known = {m.kohya: m.module for m in lora_modules(ours)}
    known.update({a: m.module for m in lora_modules(ours) for a in m.aliases})
    processors = [p.removesuffix(".processor") for p in theirs.attn_processors]
    assert len(processors) == attentions
    names = [f"lora_unet_{p.replace('.', '_')}_{part}" for p in processors
             for part in ("to_q", "to_k", "to_v", "to_out_0")]
    missing = [n for n in names if n not in known]
    assert not missing, missing[:3]
    assert len({id(known[n]) for n in names}) == len(names)  # each patches its own layer
