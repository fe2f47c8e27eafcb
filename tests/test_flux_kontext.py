"""Flux.1 Kontext (image editing) on tiny random Flux dev weights built by diffusers: the network
with reference latents equals diffusers' transformer given the concatenated tokens and ids, several
references sit where ComfyUI's default ("offset") puts them, and a ComfyUI graph with ReferenceLatent
samples as diffusers' FluxKontextPipeline does (every network input, the whole run)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS
from PIL import Image

from dit_fixtures import flux_pair
from opensd.errors import CheckpointError, InvalidArgument
from opensd.families.flux import COMFY_SHIFT, KONTEXT_SIZES, kontext_size
from opensd.models.flux import reference_tokens
from opensd.pipeline.pipeline import load
from opensd.workflows import ksampler as K
from opensd.workflows import object_info
from opensd.workflows.nodes_core import clip_text_encode, vae_encode
from opensd.workflows.nodes_dit import empty_sd3_latent, flux_guidance
from opensd.workflows.nodes_kontext import flux_kontext_image_scale, reference_latent
from opensd.workflows.types import ClipRef, ModelRef, VaeRef
from reference import assert_close_scaled

PROMPT = "make the cat blue"
STEPS, SEED, SIZE, GUIDANCE = 4, 5, 64, 2.5
REF_W, REF_H = 80, 48  # a reference of another size and aspect than the image made
pack = FluxKontextPipeline._pack_latents
ids = FluxKontextPipeline._prepare_latent_image_ids


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=math.exp(COMFY_SHIFT))  # ComfyUI's constant shift
    return flux_pair(tmp_path_factory.mktemp("kontext"), "dev", FluxKontextPipeline, scheduler)


def picture(width=REF_W, height=REF_H):
    rng = np.random.default_rng(11)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_network_with_a_reference_equals_diffusers_transformer_on_the_joined_sequence(kontext):
    ours, ref = kontext
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 6, 10, generator=g)
    context, pooled = torch.randn(1, 7, 128, generator=g), torch.randn(1, 32, generator=g)
    t, guidance = torch.tensor([0.7]), torch.tensor([GUIDANCE])
    ref_ids = ids(1, 3, 5, "cpu", torch.float32)
    ref_ids[:, 0] = 1
    with torch.no_grad():
        want = ref.transformer(hidden_states=torch.cat([pack(x, 1, 16, 8, 8), pack(r, 1, 16, 6, 10)], 1),
                               timestep=t, guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=context, txt_ids=torch.zeros(7, 3),
                               img_ids=torch.cat([ids(1, 4, 4, "cpu", torch.float32), ref_ids]),
                               return_dict=False)[0]
        got = ours.model.network(x, t, context, pooled, guidance, [r])
        alone = ours.model.network(x, t, context, pooled, guidance)
    assert want.shape[1] == 16 + 15
    assert_close_scaled(pack(got, 1, 16, 8, 8), want[:, :16], rel=1e-5)
    assert (got - alone).abs().max() > 1e-2 * alone.abs().max()  # the reference is seen


def test_several_references_are_offset_as_comfyui_does():
    """ComfyUI's "offset": time id 1 for all; each next reference starts where the ones before end,
    along the side that keeps their bounding box squarer (sides in latent cells, halved per patch,
    an odd side padded to a whole patch)."""
    a, b, c = torch.zeros(1, 16, 4, 6), torch.zeros(1, 16, 6, 2), torch.zeros(1, 16, 3, 4)
    tokens, got = reference_tokens([a, b, c])
    # a at (0, 0), box 4 x 6; b: 6 + 4 > 2 + 6, so right of a (w offset 6 -> 3 patches), box 6 x 8;
    # c: 3 + 6 > 4 + 8 is false, so below (h offset 6 -> 3 patches), its 3 rows padded to 2 patches
    starts = [(0, 0, 2, 3), (0, 3, 3, 1), (3, 0, 2, 2)]
    want = torch.cat([torch.stack(torch.meshgrid(torch.arange(h) + dh, torch.arange(w) + dw, indexing="ij"), -1)
                      .reshape(-1, 2) for dh, dw, h, w in starts])
    assert tokens.shape == (1, len(want), 64)
    assert (got[:, 0] == 1).all() and torch.equal(got[:, 1:], want.float())


def test_kontext_sizes_as_diffusers_and_comfyui():
    """FluxKontextImageScale (ComfyUI) and FluxKontextPipeline's auto-resize pick the same size."""
    assert KONTEXT_SIZES == tuple(PREFERRED_KONTEXT_RESOLUTIONS)
    assert kontext_size(REF_W, REF_H) == (1328, 800)  # 5:3 -> 1.66
    assert kontext_size(1000, 1000) == (1024, 1024) and kontext_size(100, 400) == (672, 1568)
    image = torch.from_numpy(np.asarray(picture(), np.float32) / 255)[None]
    out = flux_kontext_image_scale(None, image)[0]
    assert out.shape == (1, 800, 1328, 3) and 0.3 < out.mean() < 0.7


def test_object_info_entries_are_comfyuis():
    info = object_info(None)
    assert info["ReferenceLatent"] == {
        "input": {"required": {"conditioning": ["CONDITIONING"]}, "optional": {"latent": ["LATENT"]}},
        "input_order": {"required": ["conditioning"], "optional": ["latent"]},
        "output": ["CONDITIONING"], "output_is_list": [False], "output_name": ["CONDITIONING"],
        "name": "ReferenceLatent", "display_name": "ReferenceLatent",
        "description": "This node sets the guiding latent for an edit model. If the model supports it you can "
                       "chain multiple to set multiple reference images.",
        "python_module": "comfy_extras.nodes_edit_model", "category": "advanced/conditioning/edit_models",
        "output_node": False}
    assert info["FluxKontextImageScale"] == {
        "input": {"required": {"image": ["IMAGE"]}}, "input_order": {"required": ["image"]},
        "output": ["IMAGE"], "output_is_list": [False], "output_name": ["IMAGE"],
        "name": "FluxKontextImageScale", "display_name": "FluxKontextImageScale",
        "description": "This node resizes the image to one that is more optimal for flux kontext.",
        "python_module": "comfy_extras.nodes_flux", "category": "advanced/conditioning/flux", "output_node": False}


def record(module, packed: bool):
    """The image part of every call's input to our network (packed here) or diffusers' transformer."""
    ins = []

    def pre(m, args, kwargs):
        x = kwargs["hidden_states"] if packed else args[0]
        ins.append(x.detach().clone() if packed else pack(x.detach(), len(x), x.shape[1], *x.shape[2:]))

    return ins, module.register_forward_pre_hook(pre, with_kwargs=True)


def test_comfyui_graph_with_reference_latent_samples_as_diffusers_kontext(kontext):
    """CLIPTextEncode -> FluxGuidance -> ReferenceLatent(VAEEncode(image)) -> KSampler (euler, simple,
    CFG 1) on EmptySD3LatentImage: each step's image tokens and the whole run equal
    FluxKontextPipeline's (no auto-resize; ComfyUI's constant shift)."""
    ours, ref = kontext
    image = picture()
    pixels = torch.from_numpy(np.asarray(image, np.float32) / 255)[None]
    clip = ClipRef(ours, "tiny")
    model, vae = ModelRef(ours, "tiny"), VaeRef(ours, "tiny")
    pos = flux_guidance(None, clip_text_encode(None, PROMPT, clip)[0], GUIDANCE)[0]
    pos = reference_latent(None, pos, vae_encode(None, pixels, vae)[0])[0]
    neg = clip_text_encode(None, "", clip)[0]
    latent = empty_sd3_latent(None, SIZE, SIZE)[0]
    ins, hook = record(ours.family.network(ours.model), packed=False)
    try:
        res = K.sample(model, pos, neg, latent, seed=SEED, steps=STEPS, cfg=1.0, sampler_name="euler",
                       scheduler="simple")["samples"]
    finally:
        hook.remove()
    noise = pack(K.prepare_noise(latent["samples"], SEED), 1, 16, SIZE // 8, SIZE // 8)
    ref_ins, hook = record(ref.transformer, packed=True)
    try:
        with torch.no_grad():
            out = ref(image=image, prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                      guidance_scale=GUIDANCE, latents=noise, max_sequence_length=ours.config.t5_length,
                      output_type="latent", max_area=SIZE * SIZE, _auto_resize=False).images
    finally:
        hook.remove()
    n = (SIZE // 16) ** 2
    assert len(ins) == len(ref_ins) == STEPS and ref_ins[0].shape[1] == n + (REF_W // 16) * (REF_H // 16)
    for x, y in zip(ins, ref_ins):
        assert_close_scaled(x, y[:, :n], rel=1e-4)
    unpacked = FluxKontextPipeline._unpack_latents(out, SIZE, SIZE, 8)
    assert_close_scaled(res, ours.config.vae.unscaled(unpacked), rel=1e-4)
    plain = K.sample(model, clip_text_encode(None, PROMPT, clip)[0], neg, latent, seed=SEED, steps=STEPS, cfg=1.0,
                     sampler_name="euler", scheduler="simple")["samples"]
    assert (plain - res).abs().max() > 1e-2 * res.abs().max()  # the reference changes the result


def test_a_reference_from_another_vae_is_one_line(kontext):
    """An SD latent (4 channels) as Kontext's reference: one error line, before the network runs."""
    ours, _ = kontext
    clip = ClipRef(ours, "tiny")
    pos = reference_latent(None, clip_text_encode(None, PROMPT, clip)[0], {"samples": torch.zeros(1, 4, 8, 8)})[0]
    with pytest.raises(InvalidArgument, match=r"reference_latents: .*\(batch, 16, height, width\).*\(1, 4, 8, 8\)"):
        K.sample(ModelRef(ours, "tiny"), pos, pos, empty_sd3_latent(None, SIZE, SIZE)[0], seed=SEED, steps=1,
                 cfg=1.0, sampler_name="euler", scheduler="simple")


@pytest.fixture(scope="module")
def pipeline_run(kontext):
    """Our txt2img with a reference image, and diffusers' FluxKontextPipeline's (auto-resize on, its
    size-dependent shift) from the same noise, both 8-bit."""
    ours, ref = kontext
    dev = FluxKontextPipeline(**{**ref.components, "scheduler": FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        shift=3.0)})
    dev.set_progress_bar_config(disable=True)
    image = picture()
    got = ours.txt2img(PROMPT, references=[image], steps=STEPS, seed=SEED, width=SIZE, height=SIZE,
                       distilled_guidance=GUIDANCE)[0]
    noise = pack(ours.noise([SEED], SIZE // 8, SIZE // 8), 1, 16, SIZE // 8, SIZE // 8)
    ins, hook = record(dev.transformer, packed=True)
    try:
        with torch.no_grad():
            want = dev(image=image, prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                       guidance_scale=GUIDANCE, latents=noise, max_sequence_length=ours.config.t5_length,
                       max_area=SIZE * SIZE, output_type="np").images[0]
    finally:
        hook.remove()
    return image, np.asarray(got).astype(int), np.round(want * 255).astype(int), ins


def test_pipeline_with_a_reference_image_equals_diffusers_kontext(pipeline_run):
    """The reference is fitted to 1328x800 (83 x 50 tokens after the image's 16) on both sides."""
    _, got, want, ins = pipeline_run
    assert ins[0].shape[1] == 16 + 83 * 50
    assert np.abs(got - want).max() <= 1 and want.std() > 1


def test_cli_reference_image_is_the_pipelines(kontext, pipeline_run, tmp_path):
    ours, _ = kontext
    image, got, _, _ = pipeline_run
    image.save(tmp_path / "ref.png")
    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "opensd.cli", "generate", PROMPT, "--model", str(ours.loaded.path),
                        "--precision", "fp32", "--device", "cpu", "--steps", str(STEPS), "--seed", str(SEED),
                        "--width", str(SIZE), "--height", str(SIZE), "--guidance", str(GUIDANCE),
                        "--reference-image", str(tmp_path / "ref.png"), "-o", str(out)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")).astype(int), got)


def test_a_reference_image_too_small_is_one_line(kontext):
    ours, _ = kontext
    with pytest.raises(InvalidArgument, match=r"^reference-image: 10x40 is too small \(at least 16x16 pixels\)$"):
        ours.txt2img(PROMPT, references=[Image.new("RGB", (10, 40))], steps=1, width=SIZE, height=SIZE)


def test_a_kontext_folder_loads_as_flux_dev_and_kontext_inpainting_is_named(kontext, tmp_path):
    ours, _ = kontext
    cfg = ours.config
    assert (cfg.family, cfg.flux.in_channels, cfg.flux.guidance_embed) == ("flux", 64, True)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text('{"_class_name": "FluxKontextInpaintPipeline"}')
    (tmp_path / "m" / "transformer").mkdir()
    with pytest.raises(CheckpointError, match="this is a Flux.1 Kontext inpainting diffusers folder .*not supported"):
        load(tmp_path / "m", precision="fp32", device="cpu")


def test_references_over_16_megapixels_are_one_line(kontext):
    """Every step attends over the references, which the server's work budget does not count."""
    ours, _ = kontext
    clip = ClipRef(ours, "tiny")
    pos = clip_text_encode(None, PROMPT, clip)[0]
    for _ in range(2):
        pos = reference_latent(None, pos, {"samples": torch.zeros(1, 16, 512, 257)})[0]  # 2 x 8.4 MP
    with pytest.raises(InvalidArgument, match=r"^reference_latents: .* 16.8 megapixels, more than the 16 one"):
        K.sample(ModelRef(ours, "tiny"), pos, pos, empty_sd3_latent(None, SIZE, SIZE)[0], seed=SEED, steps=1,
                 cfg=1.0, sampler_name="euler", scheduler="simple")


def test_reference_images_for_a_model_without_them_are_one_line():
    from types import SimpleNamespace

    from opensd.families import unet
    from opensd.pipeline.kontext import reference_latents
    sd = SimpleNamespace(family=unet.UNET)  # the SD 1/2/XL family
    with pytest.raises(InvalidArgument, match=r"^reference-image: .* models take no reference images; only FLUX.2, Qwen-Image \(Edit\), Flux.1 \(Kontext\) models do"):
        reference_latents(sd, [picture()])
    assert reference_latents(sd, []) == []
