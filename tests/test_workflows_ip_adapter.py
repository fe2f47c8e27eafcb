"""ComfyUI_IPAdapter_plus' nodes (IPAdapterModelLoader, IPAdapter, IPAdapterAdvanced, IPAdapterEncoder,
IPAdapterCombineEmbeds, IPAdapterEmbeds) on the tiny model with a tiny random IP-Adapter and CLIP
vision encoder:

* every UNet call while sampling equals the UNet patched by opensd's own IP-Adapter path
  (IPAdapterSpec's tokens, models.ip_adapter.patched) with the same image and weight;
* weight 0 and steps outside start_at..end_at are the plain UNet;
* Krita's chain (Encoder -> CombineEmbeds -> Embeds, attn_mask sent as null) samples what
  IPAdapterAdvanced does; weight types spread the weight over the layers cubiq names;
* a Plus file reads the penultimate hidden states, its negative a black image's (as cubiq's);
* what opensd does not do is refused in one line (FaceID: tests/test_workflows_ip_adapter_faceid.py).
"""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_ip_adapter import _adapter, _write
from test_ip_adapter_plus import FACEID, plus_adapter
from vision_fixtures import clip_vision, save_vision
from workflow_fixtures import sampling_env

from opensd.adapters.ip_adapter import IPAdapterSpec, image_features, load_ip_adapter_for
from opensd.adapters.ip_adapter_weights import layer_places, layer_weights
from opensd.errors import CheckpointError, InvalidArgument
from opensd.models import config as C
from opensd.models.ip_adapter import HIDDEN, cross_attentions, patched
from opensd.models.unet import UNetModel
from opensd.workflows import execute
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_clip_vision import clip_vision_loader
from opensd.workflows.nodes_ip_adapter import (ipadapter_advanced, ipadapter_combine_embeds, ipadapter_embeds,
                                               ipadapter_encoder, ipadapter_model_loader, ipadapter_simple)
from opensd.workflows.nodes_ip_adapter_presets import ipadapter_unified_loader

IP_FILE = "ip-adapter_tiny.safetensors"
PLUS_FILE = "ip-adapter-plus_tiny.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ipa")
    call, model, pos, neg = sampling_env(tmp)
    root = call.ctx.folders.root
    (root / "ipadapter").mkdir()
    _write(_adapter(model.pipe.family.network(model.pipe.model)), root / "ipadapter" / IP_FILE)
    _write(plus_adapter(model.pipe.family.network(model.pipe.model)), root / "ipadapter" / PLUS_FILE)
    save_vision(clip_vision(), root / "clip_vision" / "cv.safetensors")
    # what IPAdapterUnifiedLoader's PLUS preset finds by name: the Plus file and a ViT-H/14 encoder
    shutil.copy(root / "ipadapter" / PLUS_FILE, root / "ipadapter" / "ip-adapter-plus_sd15.safetensors")
    shutil.copy(root / "clip_vision" / "cv.safetensors",
                root / "clip_vision" / "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    (ipa,) = ipadapter_model_loader(call, IP_FILE)
    (cv,) = clip_vision_loader(call, "cv.safetensors")
    return call, model, pos, neg, ipa, cv


def picture(seed=0, size=40):
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(arr), torch.from_numpy(arr.astype(np.float32) / 255.0)[None]


LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


def calls(model, pos, neg, steps=2, cfg=5.0):
    """(args, output) of every UNet call while sampling `model`."""
    network = model.pipe.family.network(model.pipe.model)
    seen = []
    hook = network.register_forward_hook(lambda m, args, out: seen.append((args, out.clone())))
    try:
        out = K.sample(model, pos, neg, LATENT, seed=4, steps=steps, cfg=cfg, sampler_name="euler", scheduler="normal")
    finally:
        hook.remove()
    return seen, out["samples"]


def with_spec(env, image, scale, file=IP_FILE):
    """The UNet output of a call's inputs under opensd's own IP-Adapter path (IPAdapterSpec's tokens,
    negative rows first as the pipeline batches them), in the call's row order. A Plus file's
    negative is cubiq's: the tokens of a black image's hidden states."""
    call, model, *_, cv = env
    pipe = model.pipe
    network = pipe.family.network(pipe.model)
    loaded = load_ip_adapter_for(call.ctx.folders.root / "ipadapter" / file, pipe)
    spec = IPAdapterSpec(loaded, cv.model, image, scale)
    cond, uncond = spec.tokens()
    if loaded.adapter.source == HIDDEN:
        size = cv.model.config.image_size
        with torch.no_grad():
            uncond = loaded.adapter.project(image_features(cv.model, torch.zeros(1, size, size, 3), HIDDEN))

    def run(args):
        rows = len(args[0])
        order = list(range(rows))[::-1]  # [positive, negative] -> [negative, positive]
        flipped = [a[order] if isinstance(a, torch.Tensor) and len(a) == rows else a for a in args]
        with torch.no_grad(), patched(network, spec.model.adapter, cond, uncond, scale, n_uncond=rows - 1):
            return network(*flipped)[order]
    return run


def plain(model, args):
    with torch.no_grad():
        return model.pipe.family.network(model.pipe.model)(*args)


def test_each_unet_call_equals_opensds_own_ip_adapter_path(env):
    call, model, pos, neg, ipa, cv = env
    pil, image = picture()
    (patched_model,) = ipadapter_advanced(call, model, ipa, image, 0.8, "linear", "concat", 0.0, 1.0, "V only",
                                          clip_vision=cv)
    seen, _ = calls(patched_model, pos, neg)
    ref = with_spec(env, pil, 0.8)
    assert len(seen) == 2 and all(len(args[0]) == 2 for args, _ in seen)  # [positive, negative] per call
    for args, out in seen:
        torch.testing.assert_close(out, ref(args), rtol=1e-5, atol=1e-5)
        assert (out - plain(model, args)).abs().max() > 1e-4
    # the simple node with the encoder connected is the same model ("standard" is linear)
    (simple,) = ipadapter_simple(call, model, ipa, image, 0.8, 0.0, 1.0, "standard", clip_vision=cv)
    assert torch.equal(calls(simple, pos, neg)[1], calls(patched_model, pos, neg)[1])


def test_weight_zero_and_steps_outside_start_end_are_the_plain_unet(env):
    call, model, pos, neg, ipa, cv = env
    pil, image = picture(1)
    (zero,) = ipadapter_advanced(call, model, ipa, image, 0.0, "linear", "concat", 0.0, 1.0, "V only", clip_vision=cv)
    base_seen, base = calls(model, pos, neg, steps=4)
    zero_seen, zero_out = calls(zero, pos, neg, steps=4)
    assert torch.equal(zero_out, base)
    (late,) = ipadapter_advanced(call, model, ipa, image, 1.0, "linear", "concat", 0.5, 1.0, "V only", clip_vision=cv)
    seen, _ = calls(late, pos, neg, steps=4)
    ref = with_spec(env, pil, 1.0)
    same = [torch.equal(out, plain(model, args)) for args, out in seen]
    assert same[0] and not same[-1] and same == sorted(same, reverse=True)  # off while sigma > sigma(0.5), then on
    for (args, out), off in zip(seen, same):
        if not off:
            torch.testing.assert_close(out, ref(args), rtol=1e-5, atol=1e-5)
    (early,) = ipadapter_advanced(call, model, ipa, image, 1.0, "linear", "concat", 0.0, 0.5, "V only", clip_vision=cv)
    early_same = [torch.equal(out, plain(model, args)) for args, out in calls(early, pos, neg, steps=4)[0]]
    assert early_same == [not s for s in same]


def test_krita_chain_samples_what_ipadapter_advanced_does(env, tmp_path):
    call, model, pos, neg, ipa, cv = env
    _, image = picture(2)
    _, other = picture(3)
    (advanced,) = ipadapter_advanced(call, model, ipa, torch.cat([image, other]), 0.7, "ease in", "concat", 0.0, 1.0,
                                     "V only", clip_vision=cv)
    first, neg_embed = ipadapter_encoder(call, ipa, image, 1.0, clip_vision=cv)
    second, _ = ipadapter_encoder(call, ipa, other, 1.0, clip_vision=cv)
    (both,) = ipadapter_combine_embeds(call, first, "concat", second)
    (embeds,) = ipadapter_embeds(call, model, ipa, both, 0.7, "ease in", 0.0, 1.0, "V only", neg_embed=neg_embed,
                                 attn_mask=None, clip_vision=cv)
    # (the two images encoded in one batch or apart differ in rounding only)
    got, want = calls(embeds, pos, neg)[1], calls(advanced, pos, neg)[1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    assert (want - calls(model, pos, neg)[1]).abs().max() > 1e-2 * want.abs().max()
    (average,) = ipadapter_combine_embeds(call, first, "average", second)
    torch.testing.assert_close(average, (first + second) / 2)
    half, _ = ipadapter_encoder(call, ipa, image, 0.5, clip_vision=cv)
    torch.testing.assert_close(half, first * 0.5)


def test_a_krita_graph_with_a_null_attn_mask_runs(env, tmp_path):
    call, model, *_ = env
    call.ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    picture(4)[0].save(call.ctx.inputs_dir / "ref.png")
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "cv.safetensors"}},
        "3": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": IP_FILE}},
        "4": {"class_type": "LoadImage", "inputs": {"image": "ref.png"}},
        "5": {"class_type": "IPAdapterEncoder", "inputs": {"image": ["4", 0], "weight": 0.9, "ipadapter": ["3", 0],
                                                           "clip_vision": ["2", 0]}},
        "6": {"class_type": "IPAdapterCombineEmbeds", "inputs": {"method": "concat", "embed1": ["5", 0]}},
        "7": {"class_type": "IPAdapterEmbeds", "inputs": {
            "model": ["1", 0], "ipadapter": ["3", 0], "pos_embed": ["6", 0], "clip_vision": ["2", 0], "weight": 0.8,
            "weight_type": "linear", "embeds_scaling": "V only", "start_at": 0.0, "end_at": 1.0, "attn_mask": None}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
        "9": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "10": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "positive": ["8", 0], "negative": ["8", 0], "latent_image": ["9", 0], "seed": 1,
            "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ipa", "images": ["11", 0]}},
    }
    out = execute(graph, call.ctx)
    assert len(out["12"]["images"]) == 1


def _sdxl_weights(weight_type):
    with torch.device("meta"):
        unet = UNetModel(C.SDXL_UNET)
    layers = cross_attentions(unet)
    weights = layer_weights(weight_type, 0.6, layer_places(unet), sdxl=True)
    return unet, layers, weights


def test_weight_types_keep_the_layers_cubiq_names():
    unet, layers, weights = _sdxl_weights("style transfer")  # SDXL style: output block 1's 10 layers
    style = {id(b.attn2) for b in unet.output_blocks[1].modules() if hasattr(b, "attn2")}
    assert {id(a) for a, w in zip(layers, weights) if w} == style and set(weights) == {0.0, 0.6}
    unet, layers, weights = _sdxl_weights("composition")  # SDXL composition: input block 8's
    comp = {id(b.attn2) for b in unet.input_blocks[8].modules() if hasattr(b, "attn2")}
    assert {id(a) for a, w in zip(layers, weights) if w} == comp
    _, _, weights = _sdxl_weights("weak middle")
    assert weights.count(pytest.approx(0.12)) == 10 and weights.count(0.6) == 60
    with torch.device("meta"):
        sd1 = UNetModel(C.SD1_UNET)
    places = layer_places(sd1)
    assert [t for _, t in places] == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 6]  # middle runs 7th
    ease = layer_weights("ease in", 1.0, places, sdxl=False)
    assert ease[0] == pytest.approx(1.0) and ease[-2] == pytest.approx(0.05 + 0.95 / 16)


def test_what_opensd_does_not_do_is_refused_in_one_line(env, tmp_path):
    call, model, pos, neg, ipa, cv = env
    _, image = picture()
    cases = [
        (lambda: ipadapter_advanced(call, model, ipa, image, 1.0, "linear", "concat", 0, 1, "K+V", clip_vision=cv),
         "embeds_scaling"),
        (lambda: ipadapter_advanced(call, model, ipa, image, 1.0, "linear", "concat", 0, 1, "V only",
                                    attn_mask=torch.ones(1, 8, 8), clip_vision=cv), "attn_mask"),
        (lambda: ipadapter_advanced(call, model, ipa, image, 1.0, "linear", "concat", 0, 1, "V only"), "clip_vision"),
        (lambda: ipadapter_simple(call, model, ipa, image, 1.0, 0, 1, "standard"), "CLIPVisionLoader"),
        (lambda: ipadapter_embeds(call, model, ipa, torch.zeros(1, 7), 1.0, "linear", 0, 1, "V only"), "24-wide"),
    ]
    for fn, needle in cases:
        with pytest.raises(InvalidArgument, match=needle):
            fn()
    folder = call.ctx.folders.root / "ipadapter"
    save_file({k: torch.zeros(s) for k, s in FACEID["faceid-portrait"].items()},
              str(folder / "ip-adapter-faceid-portrait_sd15.safetensors"))
    with pytest.raises(CheckpointError, match="to_k_ip/to_v_ip"):  # a FaceID file without its ip layers
        ipadapter_model_loader(call, "ip-adapter-faceid-portrait_sd15.safetensors")
    (folder / "ip-adapter_sd15.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        ipadapter_model_loader(call, "ip-adapter_sd15.bin")


def test_a_plus_file_through_the_nodes(env):
    call, model, pos, neg, _, cv = env
    (plus,) = ipadapter_model_loader(call, PLUS_FILE)
    assert plus.source == HIDDEN and plus.image_dim == cv.model.config.hidden_size
    pil, image = picture(5)
    (patched_model,) = ipadapter_advanced(call, model, plus, image, 0.8, "linear", "concat", 0.0, 1.0, "V only",
                                          clip_vision=cv)
    seen, want = calls(patched_model, pos, neg)
    ref = with_spec(env, pil, 0.8, PLUS_FILE)
    for args, out in seen:
        torch.testing.assert_close(out, ref(args), rtol=1e-5, atol=1e-5)
        assert (out - plain(model, args)).abs().max() > 1e-4
    # Krita's chain: hidden states (images, tokens, width) as EMBEDS, the black image's as neg_embed
    first, neg_embed = ipadapter_encoder(call, plus, image, 1.0, clip_vision=cv)
    assert first.shape == (1, 17, 32) and neg_embed.shape == (1, 17, 32)
    (both,) = ipadapter_combine_embeds(call, first, "concat")
    (embeds,) = ipadapter_embeds(call, model, plus, both, 0.8, "linear", 0.0, 1.0, "V only", neg_embed=neg_embed)
    torch.testing.assert_close(calls(embeds, pos, neg)[1], want, rtol=0, atol=1e-5 * want.abs().max().item())
    with pytest.raises(InvalidArgument, match="black image"):  # no neg_embed and no encoder to make it
        ipadapter_embeds(call, model, plus, both, 0.8, "linear", 0.0, 1.0, "V only")
    with pytest.raises(InvalidArgument, match="hidden states"):  # pooled embeddings given to a Plus adapter
        ipadapter_embeds(call, model, plus, torch.zeros(1, 24), 0.8, "linear", 0.0, 1.0, "V only", clip_vision=cv)


def test_the_unified_loader_finds_a_preset_by_name_and_brings_its_encoder(env):
    call, model, pos, neg, _, cv = env
    same, plus = ipadapter_unified_loader(call, model, "PLUS (high strength)")
    assert same is model and plus.name == "ip-adapter-plus_sd15.safetensors" and plus.source == HIDDEN
    assert plus.clip_vision.name == "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    _, image = picture(6)
    (simple,) = ipadapter_simple(call, model, plus, image, 0.8, 0.0, 1.0, "standard")  # no clip_vision input
    (advanced,) = ipadapter_advanced(call, model, ipadapter_model_loader(call, PLUS_FILE)[0], image, 0.8, "linear",
                                     "concat", 0.0, 1.0, "V only", clip_vision=cv)
    assert torch.equal(calls(simple, pos, neg)[1], calls(advanced, pos, neg)[1])
    for preset, words in [("VIT-G (medium strength)", "no IP-Adapter file"), ("FACEID", "InsightFace")]:
        with pytest.raises(InvalidArgument, match=words):
            ipadapter_unified_loader(call, model, preset)
