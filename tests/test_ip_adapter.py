"""IP-Adapter (base): our patched UNet equals diffusers' UNet2DConditionModel with the same adapter
loaded by its own loader, on SD1-like and SDXL-like tiny UNets; the pipeline applies it per pass and
leaves the UNet as it was; other files are refused in one line (Plus and Full Face:
test_ip_adapter_plus.py)."""
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from PIL import Image
from safetensors.torch import save_file

from opensd.adapters.ip_adapter import IPAdapterSpec, image_features, load_ip_adapter_for
from opensd.checkpoints.clip_vision_files import load_clip_vision
from opensd.checkpoints.ip_adapter_files import load_ip_adapter
from opensd.checkpoints.keymap_unet import unet_from_diffusers
from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.models.ip_adapter import IPAdapter, cross_attentions, patched
from opensd.models.unet import UNetModel
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled, diffusers_unet_kwargs, randomize_
from test_unet import CONFIGS, _inputs, _run_ours
from vision_fixtures import clip_vision, save_vision

PROJECTION = 24  # the tiny CLIP vision model's projection_dim


def _adapter(unet, seed=7, image_dim=PROJECTION) -> IPAdapter:
    inners = [attn.to_k.out_features for attn in cross_attentions(unet)]
    return randomize_(IPAdapter(image_dim, unet.config.context_dim, inners), seed=seed, std=0.2).eval()


def _write(adapter: IPAdapter, path):
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_clip_vision(save_vision(clip_vision(), tmp_path_factory.mktemp("cv") / "clip_vision.safetensors"))


def _picture(seed=0, size=40):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_matches_diffusers_load_ip_adapter(name, tmp_path, encoder):
    cfg = CONFIGS[name]
    ref = randomize_(UNet2DConditionModel(**diffusers_unet_kwargs(cfg)), seed=3).eval()
    ours = UNetModel(cfg).eval()
    ours.load_state_dict(unet_from_diffusers(ref.state_dict(), cfg), strict=True)
    adapter = load_ip_adapter(_write(_adapter(ours), tmp_path / "ip.safetensors"))
    # diffusers' own loader, from the file's two halves as its load_ip_adapter splits them
    sd = adapter.state_dict()
    ref._load_ip_adapter_weights([{"image_proj": {k[len("image_proj."):]: v for k, v in sd.items()
                                                  if k.startswith("image_proj.")},
                                   "ip_adapter": {k[len("ip_adapter."):]: v for k, v in sd.items()
                                                  if k.startswith("ip_adapter.")}}])
    pixels = torch.from_numpy(np.asarray(_picture(), dtype=np.float32) / 255)[None]
    with torch.no_grad():
        embeds = image_features(encoder, pixels)  # (1, 24)
        both = torch.cat([torch.zeros_like(embeds), embeds])  # row 0 unconditional, as diffusers' CFG batch
        x, t, ctx, pooled, time_ids = _inputs(cfg)
        added = {"image_embeds": [both[:, None]]}
        if cfg.adm_in_channels:
            added.update(text_embeds=pooled, time_ids=time_ids)
        want = ref(x, t, ctx, added_cond_kwargs=added).sample
        proj = adapter.image_proj
        with patched(ours, adapter, proj(embeds), proj(torch.zeros_like(embeds)), 1.0, n_uncond=1):
            got = _run_ours(ours, cfg, x, t, ctx, pooled, time_ids)
        plain = _run_ours(ours, cfg, x, t, ctx, pooled, time_ids)
    assert_close_scaled(got, want)
    assert (got - plain).abs().max() > 1e-3 * plain.abs().max()  # the adapter did change the output


def test_scale_zero_is_the_plain_unet_and_the_hooks_go(tmp_path):
    cfg = CONFIGS["sd1"]
    unet = randomize_(UNetModel(cfg), seed=2).eval()
    adapter = _adapter(unet)
    tokens = adapter.image_proj(torch.randn(1, PROJECTION))
    inputs = _inputs(cfg)
    with torch.no_grad():
        plain = _run_ours(unet, cfg, *inputs)
        with patched(unet, adapter, tokens, tokens, 0.0, n_uncond=1):
            zero = _run_ours(unet, cfg, *inputs)
        with patched(unet, adapter, tokens, tokens, 0.5, n_uncond=1):
            half = _run_ours(unet, cfg, *inputs)
        after = _run_ours(unet, cfg, *inputs)
    assert torch.equal(zero, plain) and torch.equal(after, plain)
    assert not torch.equal(half, plain)
    assert all(not a._forward_hooks for a in cross_attentions(unet))


# --- the pipeline ------------------------------------------------------------------------------

FAST = dict(steps=2, seed=5, cfg=5.0, width=64, height=64)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("m") / "tiny.safetensors"))


@pytest.fixture(scope="module")
def ip_file(pipe, tmp_path_factory):
    unet = pipe.family.network(pipe.model)
    return _write(_adapter(unet), tmp_path_factory.mktemp("ip") / "ip-adapter_tiny.safetensors")


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_pipeline_scale_zero_equals_no_adapter_and_plain_runs_after_are_unchanged(pipe, ip_file, encoder):
    loaded = load_ip_adapter_for(ip_file, pipe)
    before = _pixels(pipe.txt2img("a cat", **FAST)[0])
    zero = _pixels(pipe.txt2img("a cat", ip_adapter=IPAdapterSpec(loaded, encoder, _picture(), 0.0), **FAST)[0])
    full = _pixels(pipe.txt2img("a cat", ip_adapter=IPAdapterSpec(loaded, encoder, _picture(), 2.0), **FAST)[0])
    other = _pixels(pipe.txt2img("a cat", ip_adapter=IPAdapterSpec(loaded, encoder, _picture(3), 2.0), **FAST)[0])
    after = _pixels(pipe.txt2img("a cat", **FAST)[0])
    assert np.array_equal(zero, before) and np.array_equal(after, before)
    assert not np.array_equal(full, before) and not np.array_equal(full, other)
    assert all(not a._forward_hooks for a in cross_attentions(pipe.family.network(pipe.model)))


def test_evaluations_without_the_negative_give_the_prompt_row_the_image_tokens(pipe, ip_file, encoder):
    # NGMS on every evaluation runs the prompt's row alone, as CFG 1 does: both must see the image's
    # tokens (the adapter is told each call's negative rows), so the two images are the same
    spec = IPAdapterSpec(load_ip_adapter_for(ip_file, pipe), encoder, _picture(), 2.0)
    alone = _pixels(pipe.txt2img("a cat", "dull", ip_adapter=spec, **{**FAST, "cfg": 1.0})[0])
    skipped = _pixels(pipe.txt2img("a cat", "dull", s_min_uncond=100.0, s_min_uncond_all=True, ip_adapter=spec,
                                   **FAST)[0])
    assert np.array_equal(alone, skipped)


def test_pipeline_input_errors_are_one_line(pipe, ip_file, encoder, tmp_path):
    loaded = load_ip_adapter_for(ip_file, pipe)
    cases = [(IPAdapterSpec(loaded, None, _picture()), "clip_vision"),
             (IPAdapterSpec(loaded, encoder, _picture(), 2.5), "scale"),
             (IPAdapterSpec(loaded, encoder, "x.png"), "image")]
    wide = load_clip_vision(save_vision(clip_vision(), tmp_path / "cv.safetensors"))
    object.__setattr__(wide, "config", type(wide.config)(**{**wide.config.__dict__, "projection_dim": 12}))
    cases.append((IPAdapterSpec(loaded, wide, _picture()), "clip_vision"))
    for spec, word in cases:
        with pytest.raises(InvalidArgument) as e:
            pipe.txt2img("a cat", ip_adapter=spec, **FAST)
        assert word in str(e.value) and "\n" not in str(e.value)


def test_files_made_for_another_unet_and_other_variants_are_refused(pipe, tmp_path):
    other = UNetModel(CONFIGS["sd1"])  # context width 48, not the tiny model's 64
    wrong = _write(_adapter(other), tmp_path / "sd1.safetensors")
    bin_file = tmp_path / "ip-adapter_sd15.bin"
    bin_file.write_bytes(b"\x80\x02}q\x00.")
    sd = {k: v.contiguous() for k, v in _adapter(other).state_dict().items()}
    plus = tmp_path / "ip-adapter-plus_sd15.safetensors"  # a Resampler's latents and nothing else of it
    save_file({**sd, "image_proj.latents": torch.zeros(1, 16, 48)}, str(plus))
    faceid = tmp_path / "ip-adapter-faceid_sd15.safetensors"
    save_file({"image_proj.proj.0.weight": torch.zeros(4, 4), "image_proj.norm.weight": torch.zeros(4),
               "ip_adapter.1.to_k_lora.down.weight": torch.zeros(4, 4)}, str(faceid))
    for path, words in [(wrong, "another model"), (bin_file, "not a PyTorch checkpoint"),
                        (plus, "Plus file lacks 'image_proj.proj_in.weight'"),
                        (faceid, "FaceID")]:
        with pytest.raises(CheckpointError) as e:
            load_ip_adapter_for(path, pipe)
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_the_openvino_backend_is_refused_in_one_line(pipe, ip_file, encoder):
    from opensd.pipeline.openvino_unet import OpenVINOUNet

    unet = pipe.family.network(pipe.model)
    unet._compiled_call_impl = OpenVINOUNet.__new__(OpenVINOUNet)  # what use_openvino sets
    try:
        with pytest.raises(InvalidArgument, match="openvino"):
            pipe.txt2img("a cat", ip_adapter=IPAdapterSpec(load_ip_adapter_for(ip_file, pipe), encoder, _picture()),
                         **FAST)
    finally:
        unet._compiled_call_impl = None


def test_released_unets_have_the_layer_counts_of_the_released_files():
    """ip-adapter_sd15 holds 16 layer pairs (1..31) of inner width 320/640/1280, the SDXL files 70 (1..139)."""
    from opensd.models import config as C

    for cfg, count, widths in ((C.SD1_UNET, 16, {320, 640, 1280}), (C.SDXL_UNET, 70, {640, 1280})):
        with torch.device("meta"):
            layers = cross_attentions(UNetModel(cfg))
        assert len(layers) == count and {a.to_k.out_features for a in layers} == widths
        assert {a.to_k.in_features for a in layers} == {cfg.context_dim}
