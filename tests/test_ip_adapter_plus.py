"""IP-Adapter Plus (Resampler over CLIP vision's penultimate hidden states) and Full Face (MLP per
hidden state):

* our projections equal diffusers' IPAdapterPlusImageProjection / IPAdapterFullImageProjection
  loaded through diffusers' own conversion of the released key layout;
* a tiny Plus file, written in that layout, loads, is detected, and our patched UNet (with the image
  and negative tokens of IPAdapterSpec) equals diffusers' UNet with the file loaded by its loader
  and the hidden states of transformers' CLIP vision model (negative: zero pixel values);
* our txt2img with a tiny Plus file equals diffusers' StableDiffusionPipeline with the same file
  loaded by its load_ip_adapter (and the same hidden states as ip_adapter_image_embeds);
* the pipeline applies Plus and Full Face files (scale 0 = no adapter);
* the full-size layouts of ip-adapter-plus_sd15, ip-adapter-plus_sdxl_vit-h and
  ip-adapter-full-face_sd15 build (meta device) with exactly their keys and shapes;
* incomplete FaceID files are detected as FaceID and refused in one line.
"""
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import IPAdapterFullImageProjection, IPAdapterPlusImageProjection
from PIL import Image
from safetensors.torch import save_file

from opensd.adapters.ip_adapter import IPAdapterSpec, LoadedIPAdapter, load_ip_adapter_for
from opensd.checkpoints.clip_vision_files import load_clip_vision
from opensd.checkpoints.ip_adapter_files import build_ip_adapter, load_ip_adapter, variant
from opensd.checkpoints.keymap_unet import unet_from_diffusers
from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.models import config as C
from opensd.models.clip_vision import preprocess
from opensd.models.ip_adapter import HIDDEN, IPAdapter, MLPProjection, Resampler, cross_attentions, patched
from opensd.models.unet import UNetModel
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled, diffusers_unet_kwargs, randomize_
from test_pipeline_equivalence import _check_equal, _run_ref, sd1, vocab_dir  # noqa: F401 (fixtures)
from test_pipeline_equivalence import _run_ours as _txt2img
from test_unet import CONFIGS, _inputs, _run_ours
from vision_fixtures import clip_vision, save_vision

HIDDEN_WIDTH = 32  # the tiny CLIP vision model's hidden size (what Plus and Full Face read)


def plus_adapter(unet, seed=5, image_dim=HIDDEN_WIDTH, dim=48, heads=2, tokens=16) -> IPAdapter:
    """A random Plus adapter for `unet` (depth 4 and feed-forward x4, as every release; heads of 64)."""
    width = unet.config.context_dim
    inners = [attn.to_k.out_features for attn in cross_attentions(unet)]
    proj = Resampler(image_dim, width, dim, 4, heads, 4 * dim, tokens)
    return randomize_(IPAdapter(image_dim, width, inners, image_proj=proj), seed=seed, std=0.2).eval()


def full_face_adapter(unet, seed=6, image_dim=HIDDEN_WIDTH) -> IPAdapter:
    width = unet.config.context_dim
    inners = [attn.to_k.out_features for attn in cross_attentions(unet)]
    proj = MLPProjection(image_dim, width)
    return randomize_(IPAdapter(image_dim, width, inners, image_proj=proj), seed=seed, std=0.2).eval()


def write(adapter: IPAdapter, path):
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(path))
    return path


def _diffusers_halves(sd: dict) -> dict:
    """The file's two halves as diffusers' load_ip_adapter splits a .safetensors."""
    return {part: {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")}
            for part in ("image_proj", "ip_adapter")}


def _rel_err(got, want):
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture(scope="module")
def diffusers_unet():
    return UNet2DConditionModel(**diffusers_unet_kwargs(CONFIGS["sd1"])).eval()


# --- the projections against diffusers' ------------------------------------------------------------

@pytest.mark.parametrize("image_dim, dim, heads, tokens", [(32, 48, 2, 16), (40, 64, 1, 8)])
def test_resampler_equals_diffusers_plus_projection(diffusers_unet, image_dim, dim, heads, tokens):
    unet = UNetModel(CONFIGS["sd1"])
    adapter = plus_adapter(unet, image_dim=image_dim, dim=dim, heads=heads, tokens=tokens)
    sd = _diffusers_halves(adapter.state_dict())["image_proj"]
    # diffusers' own conversion of the released layout (to_kv split, ln0/ln1, ff renames; heads = to_q rows / 64)
    ref = diffusers_unet._convert_ip_adapter_image_proj_to_diffusers(sd, low_cpu_mem_usage=False)
    assert isinstance(ref, IPAdapterPlusImageProjection)
    hidden = torch.randn(3, 17, image_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = adapter.project(hidden), ref(hidden)
    assert got.shape == (3, tokens, unet.config.context_dim)
    assert _rel_err(got, want) <= 1e-5


def test_mlp_projection_equals_diffusers_full_projection(diffusers_unet):
    adapter = full_face_adapter(UNetModel(CONFIGS["sd1"]))
    ref = diffusers_unet._convert_ip_adapter_image_proj_to_diffusers(
        _diffusers_halves(adapter.state_dict())["image_proj"], low_cpu_mem_usage=False)
    assert isinstance(ref, IPAdapterFullImageProjection)
    hidden = torch.randn(2, 17, HIDDEN_WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = adapter.project(hidden), ref(hidden)
    assert got.shape == (2, 17, CONFIGS["sd1"].context_dim)  # one token per hidden state
    assert _rel_err(got, want) <= 1e-5


# --- a Plus file end to end against diffusers' UNet ---------------------------------------------------

@pytest.fixture(scope="module")
def hf_vision():
    return clip_vision()


@pytest.fixture(scope="module")
def encoder(hf_vision, tmp_path_factory):
    return load_clip_vision(save_vision(hf_vision, tmp_path_factory.mktemp("cv") / "clip_vision.safetensors"))


def _picture(seed=0, size=40):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_plus_file_matches_diffusers_load_ip_adapter(name, tmp_path, encoder, hf_vision):
    cfg = CONFIGS[name]
    ref = randomize_(UNet2DConditionModel(**diffusers_unet_kwargs(cfg)), seed=3).eval()
    ours = UNetModel(cfg).eval()
    ours.load_state_dict(unet_from_diffusers(ref.state_dict(), cfg), strict=True)
    path = write(plus_adapter(ours), tmp_path / "ip-adapter-plus_tiny.safetensors")
    adapter = load_ip_adapter(path)
    assert isinstance(adapter.image_proj, Resampler) and adapter.source == HIDDEN
    assert adapter.image_proj.tokens == 16 and adapter.image_proj.layers[0][0].heads == 2
    ref._load_ip_adapter_weights([_diffusers_halves(adapter.state_dict())])
    spec = IPAdapterSpec(LoadedIPAdapter(adapter, path), encoder, _picture(), 1.0)
    spec.validate()
    cond, uncond = spec.tokens()
    both = _hidden_pair(hf_vision, encoder, _picture())  # as diffusers' pipeline computes them
    with torch.no_grad():
        x, t, ctx, pooled, time_ids = _inputs(cfg)
        added = {"image_embeds": [both]}
        if cfg.adm_in_channels:
            added.update(text_embeds=pooled, time_ids=time_ids)
        want = ref(x, t, ctx, added_cond_kwargs=added).sample
        with patched(ours, adapter, cond, uncond, 1.0, n_uncond=1):
            got = _run_ours(ours, cfg, x, t, ctx, pooled, time_ids)
        with patched(ours, adapter, cond, uncond, 0.0, n_uncond=1):
            zero = _run_ours(ours, cfg, x, t, ctx, pooled, time_ids)
        plain = _run_ours(ours, cfg, x, t, ctx, pooled, time_ids)
    assert_close_scaled(got, want)
    assert torch.equal(zero, plain)
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max()  # the adapter did change the output
    assert not torch.allclose(cond, uncond)


def _hidden_pair(hf_vision, encoder, image):
    """diffusers' pipeline input for a Plus adapter: transformers' hidden_states[-2] of zero pixel
    values and of the image's, stacked (2, 1 image, tokens, hidden): row 0 the negative."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None]
    pixel_values = preprocess(pixels, encoder.config, crop=True)
    with torch.no_grad():
        states = [hf_vision(p, output_hidden_states=True).hidden_states[-2]
                  for p in (torch.zeros_like(pixel_values), pixel_values)]
    return torch.cat(states)[:, None]


def test_sd1_txt2img_with_a_plus_file_equals_diffusers_load_ip_adapter(sd1, monkeypatch, tmp_path, encoder,
                                                                       hf_vision):
    ours, ref = sd1
    path = write(plus_adapter(ours.family.network(ours.model)), tmp_path / "ip-adapter-plus_tiny.safetensors")
    spec = IPAdapterSpec(load_ip_adapter_for(path, ours), encoder, _picture(), 0.7)
    ref.load_ip_adapter(str(tmp_path), subfolder="", weight_name=path.name, image_encoder_folder=None)
    try:
        ref.set_ip_adapter_scale(0.7)
        image, got = _txt2img(ours, monkeypatch, 64, 64, ip_adapter=spec)
        expected_image, expected = _run_ref(ref, ours, 64, 64,
                                            ip_adapter_image_embeds=[_hidden_pair(hf_vision, encoder, _picture())])
    finally:
        ref.unload_ip_adapter()
    _check_equal(ours, image, got, expected_image, expected)
    latents = got["latents"]  # (the next run's spy calls this one's, which then records that run)
    _, plain = _txt2img(ours, monkeypatch, 64, 64)
    assert (plain["latents"] - latents).abs().max() > 1e-2 * latents.abs().max()


# --- the pipeline ------------------------------------------------------------------------------------

FAST = dict(steps=2, seed=5, cfg=5.0, width=64, height=64)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.mark.parametrize("make", [plus_adapter, full_face_adapter])
def test_pipeline_applies_plus_and_full_face_files(pipe, encoder, tmp_path, make):
    unet = pipe.family.network(pipe.model)
    loaded = load_ip_adapter_for(write(make(unet), tmp_path / "ipa.safetensors"), pipe)

    def run(spec=None):
        return np.asarray(pipe.txt2img("a cat", ip_adapter=spec, **FAST)[0], dtype=np.int16)

    before = run()
    zero = run(IPAdapterSpec(loaded, encoder, _picture(), 0.0))
    full = run(IPAdapterSpec(loaded, encoder, _picture(), 2.0))
    other = run(IPAdapterSpec(loaded, encoder, _picture(3), 2.0))
    assert np.array_equal(zero, before) and np.array_equal(run(), before)
    assert not np.array_equal(full, before) and not np.array_equal(full, other)


def test_an_encoder_of_another_hidden_width_is_refused_in_one_line(pipe, tmp_path):
    unet = pipe.family.network(pipe.model)
    loaded = load_ip_adapter_for(write(plus_adapter(unet, image_dim=40), tmp_path / "ipa.safetensors"), pipe)
    wrong = load_clip_vision(save_vision(clip_vision(), tmp_path / "cv.safetensors"))  # 32-wide hidden states
    with pytest.raises(InvalidArgument) as e:
        pipe.txt2img("a cat", ip_adapter=IPAdapterSpec(loaded, wrong, _picture()), **FAST)
    assert "40-wide CLIP hidden states" in str(e.value) and "gives 32-wide" in str(e.value)
    assert "\n" not in str(e.value)


# --- full-size layouts (meta device) -----------------------------------------------------------------

def _ip_layers(unet_cfg, width):
    with torch.device("meta"):
        inners = [a.to_k.out_features for a in cross_attentions(UNetModel(unet_cfg))]
    return {f"ip_adapter.{2 * k + 1}.{part}.weight": (inner, width)
            for k, inner in enumerate(inners) for part in ("to_k_ip", "to_v_ip")}


def released_plus(unet_cfg, image_dim, dim, heads, width, tokens=16, depth=4):
    """The key shapes of h94's Plus releases: Resampler(dim, depth 4, dim_head 64, heads, num_queries
    16, embedding_dim = the encoder's hidden size, output_dim = the UNet's context width, ff_mult 4)."""
    inner = 64 * heads
    shapes = {"image_proj.latents": (1, tokens, dim),
              "image_proj.proj_in.weight": (dim, image_dim), "image_proj.proj_in.bias": (dim,),
              "image_proj.proj_out.weight": (width, dim), "image_proj.proj_out.bias": (width,),
              "image_proj.norm_out.weight": (width,), "image_proj.norm_out.bias": (width,)}
    for n in range(depth):
        p = f"image_proj.layers.{n}"
        for norm in (f"{p}.0.norm1", f"{p}.0.norm2", f"{p}.1.0"):
            shapes.update({f"{norm}.weight": (dim,), f"{norm}.bias": (dim,)})
        shapes.update({f"{p}.0.to_q.weight": (inner, dim), f"{p}.0.to_kv.weight": (2 * inner, dim),
                       f"{p}.0.to_out.weight": (dim, inner),
                       f"{p}.1.1.weight": (4 * dim, dim), f"{p}.1.3.weight": (dim, 4 * dim)})
    return {**shapes, **_ip_layers(unet_cfg, width)}


@pytest.mark.parametrize("unet_cfg, image_dim, dim, heads, width", [
    (C.SD1_UNET, 1280, 768, 12, 768),     # ip-adapter-plus_sd15 / plus-face_sd15 (ViT-H/14)
    (C.SDXL_UNET, 1280, 1280, 20, 2048),  # ip-adapter-plus_sdxl_vit-h / plus-face_sdxl_vit-h
])
def test_released_plus_layouts_build_with_exactly_their_keys(unet_cfg, image_dim, dim, heads, width):
    shapes = released_plus(unet_cfg, image_dim, dim, heads, width)
    adapter = build_ip_adapter(shapes)
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == shapes
    proj = adapter.image_proj
    assert variant(shapes) == "plus" and adapter.source == HIDDEN and adapter.image_dim == image_dim
    assert proj.tokens == 16 and len(proj.layers) == 4 and {blk[0].heads for blk in proj.layers} == {heads}
    assert len(adapter.ip_adapter) == (16 if unet_cfg is C.SD1_UNET else 70)
    with torch.device("meta"):
        ref = IPAdapterPlusImageProjection(embed_dims=image_dim, output_dims=width, hidden_dims=dim, heads=heads,
                                           num_queries=16)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in proj.parameters())


def test_released_full_face_layout_builds_with_exactly_its_keys():
    shapes = {"image_proj.proj.0.weight": (1280, 1280), "image_proj.proj.0.bias": (1280,),
              "image_proj.proj.2.weight": (768, 1280), "image_proj.proj.2.bias": (768,),
              "image_proj.proj.3.weight": (768,), "image_proj.proj.3.bias": (768,), **_ip_layers(C.SD1_UNET, 768)}
    adapter = build_ip_adapter(shapes)
    assert {k: tuple(v.shape) for k, v in adapter.state_dict().items()} == shapes
    assert variant(shapes) == "full" and adapter.source == HIDDEN and adapter.image_dim == 1280


def test_incomplete_or_misshapen_plus_files_are_refused_in_one_line():
    shapes = released_plus(C.SD1_UNET, 1280, 768, 12, 768)
    cases = [({k: v for k, v in shapes.items() if k != "image_proj.layers.2.0.to_kv.weight"},
              "lacks 'image_proj.layers.2.0.to_kv.weight'"),
             ({**shapes, "image_proj.layers.1.1.3.weight": (768, 1000)}, "image_proj.layers.1.1.3.weight has shape"),
             ({**shapes, "image_proj.layers.0.0.to_q.weight": (700, 768)}, "heads of 64"),
             ({k: v for k, v in shapes.items() if not k.startswith("image_proj.layers.1.")}, "numbered [0, 2, 3]")]
    for bad, words in cases:
        with pytest.raises(CheckpointError) as e:
            build_ip_adapter(bad)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


# --- FaceID stubs (tests/test_ip_adapter_faceid.py runs FaceID) --------------------------------------------

FACEID = {  # the image projections of h94's FaceID releases (and their LoRA'd attention), no ip layers
    "faceid": {"image_proj.proj.0.weight": (1024, 512), "image_proj.proj.2.weight": (3072, 1024),
               "image_proj.norm.weight": (768,), "ip_adapter.1.to_k_lora.down.weight": (128, 320)},
    "faceid-portrait": {"image_proj.proj.0.weight": (1024, 512), "image_proj.proj.2.weight": (12288, 1024),
                        "image_proj.norm.weight": (768,), "ip_adapter.1.to_k_ip.weight": (320, 768)},
    "faceid-plusv2": {"image_proj.proj.0.weight": (1024, 512), "image_proj.norm.weight": (768,),
                      "image_proj.perceiver_resampler.proj_in.weight": (768, 1280)},
}


@pytest.mark.parametrize("name", sorted(FACEID))
def test_incomplete_faceid_files_are_detected_and_refused_in_one_line(name, tmp_path):
    assert variant(FACEID[name]) == ("faceid_plus" if "plus" in name else "faceid")
    path = tmp_path / f"ip-adapter-{name}_sd15.safetensors"
    save_file({k: torch.zeros(s) for k, s in FACEID[name].items()}, str(path))
    for attempt in (lambda: build_ip_adapter(FACEID[name]), lambda: load_ip_adapter(path)):
        with pytest.raises(CheckpointError) as e:
            attempt()
        assert "\n" not in str(e.value)
