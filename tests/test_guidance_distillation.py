"""Guidance-distilled small models: the UNet takes the CFG scale as its "y", the pipeline calls it
once per step on the prompt (empty negative prompt) or at scale 1 in the usual CFG batch otherwise,
the trainer's target is the teacher's guided prediction, and a pruned UNet starts from its teacher."""
from dataclasses import replace

import pytest
import torch

from opensd.checkpoints.controlnet_files import compatible_config
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.controlnet import ControlNetConfig
from opensd.models.stable_diffusion import StableDiffusion
from opensd.models.unet import SpatialTransformer, UNetModel, guidance_embedding
from opensd.pipeline.guidance import Guidance
from opensd.pipeline.pipeline import load
from opensd.training import builtin as B
from opensd.training.builtin_teacher import negative_prompt_ids, transplant
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef

GUIDED = replace(TINY, unet=replace(TINY.unet, adm_in_channels=32, guidance_embed=True))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("g") / "guided.safetensors", GUIDED))


def _inputs(n=2, ctx=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 4, 8, 8, generator=g), torch.tensor([10, 900][:n]), torch.randn(n, 77, ctx, generator=g)


@torch.no_grad()
def test_detected_from_the_label_embedding_and_no_y_means_scale_one(pipe):
    assert pipe.config.unet.guidance_embed and pipe.config.unet.adm_in_channels == 32
    unet = pipe.model.unet.float()
    x, t, c = _inputs()
    one = guidance_embedding(torch.ones(2), 32)
    torch.testing.assert_close(unet(x, t, c), unet(x, t, c, one))
    assert not torch.allclose(unet(x, t, c), unet(x, t, c, guidance_embedding(torch.full((2,), 7.0), 32)))


def _calls(pipe, **kw):
    seen = []
    hook = pipe.model.unet.register_forward_hook(
        lambda m, args, out: seen.append((len(args[0]), None if len(args) < 4 else args[3])))
    try:
        pipe.txt2img(steps=2, seed=1, **kw)
    finally:
        hook.remove()
    return seen


def test_empty_negative_prompt_takes_one_call_at_the_scale(pipe):
    calls = _calls(pipe, prompt="a red apple", negative_prompt="", cfg=5.0)
    assert calls and all(n == 1 for n, _ in calls)
    want = guidance_embedding(torch.tensor([5.0]), 32)
    assert all(torch.allclose(y.float(), want) for _, y in calls)
    weighted = _calls(pipe, prompt="a red apple :0.5", negative_prompt="", cfg=5.0)  # a part's weight scales it
    assert all(torch.allclose(y.float(), guidance_embedding(torch.tensor([2.5]), 32)) for _, y in weighted)


@torch.no_grad()
def test_negative_prompt_is_cfg_rewritten_around_the_empty_prompt(pipe, monkeypatch):
    """Rows [empty, negative, prompt] all at scale s; the step's prediction is
    G_s(prompt) - (1 - 1/s) (G_s(negative) - G_s(empty)), i.e. u_n + s (c - u_n) when G_s = u + s (x - u).
    (Denoised predictions are affine in eps with the same x and sigma, so the combination carries over.)"""
    calls = _calls(pipe, prompt="a red apple", negative_prompt="blurry", cfg=5.0)
    assert calls and all(n == 3 for n, _ in calls)
    want = guidance_embedding(torch.tensor([5.0, 5.0, 5.0]), 32)
    assert all(torch.allclose(y.float(), want) for _, y in calls)
    import opensd.sampling.model_sampling as MS  # where the model's Denoiser is built since the family seam

    rows, results = [], []

    class Recording(MS.Denoiser):  # the per-row denoised predictions the guidance combines
        def __call__(self, *a, **k):
            rows.append(super().__call__(*a, **k))
            return rows[-1]

    real = pipe.denoiser

    def spy(*a, **k):
        inner = real(*a, **k)
        return lambda x, sigma: results.append(inner(x, sigma)) or results[-1]

    monkeypatch.setattr(MS, "Denoiser", Recording)
    monkeypatch.setattr(pipe, "denoiser", spy)
    pipe.txt2img(prompt="a red apple", negative_prompt="blurry", cfg=5.0, steps=1, seed=2)
    (d,), (got,) = rows, results  # one step: rows [empty, negative, prompt]
    torch.testing.assert_close(got, d[2:] - (1 - 1 / 5.0) * (d[1:2] - d[:1]))


@pytest.mark.parametrize("prompt,cfg,rows", [("apple AND pear", 5.0, 3), ("a red apple", 0.5, 2), ("a red apple", 14.0, 2)])
def test_and_parts_or_untrained_scales_run_plain_cfg_at_scale_one(pipe, prompt, cfg, rows):
    calls = _calls(pipe, prompt=prompt, negative_prompt="", cfg=cfg)
    assert calls and all(n == rows and y is None for n, y in calls)


@pytest.mark.parametrize("negative,cfg,rows,scale", [("", 5.0, 1, 5.0), ("blurry", 5.0, 3, 5.0), ("", 14.0, 2, None)])
def test_comfyui_ksampler_guides_a_guided_model_like_the_pipeline(pipe, negative, cfg, rows, scale):
    """ComfyUI sends the negative as a tensor: the empty prompt's encoding takes the one-call path, another
    negative the [empty, negative, prompt] rows, a scale outside the trained range plain CFG; and the
    one-call result is the pipeline's own for the same noise."""
    clip = ClipRef(pipe, "g")
    pos, neg = clip_text_encode(None, "a red apple", clip)[0], clip_text_encode(None, negative, clip)[0]
    seen = []
    hook = pipe.model.unet.register_forward_hook(
        lambda m, args, out: seen.append((len(args[0]), None if len(args) < 4 else args[3])))
    try:
        out = K.sample(ModelRef(pipe, "g"), pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=3, steps=2, cfg=cfg,
                       sampler_name="euler", scheduler="normal")["samples"]
    finally:
        hook.remove()
    assert seen and all(n == rows for n, _ in seen)
    if scale is None:
        assert all(y is None for _, y in seen)
        return
    want = guidance_embedding(torch.full((rows,), scale), 32)
    assert all(torch.allclose(y.float(), want) for _, y in seen)
    if rows == 1:  # the same guided denoiser as the pipeline's, on ComfyUI's noise and sigmas
        sigmas = K.comfy_sigmas(pipe.schedule, "euler", "normal", 2, 1.0).float()
        noise = K.prepare_noise(torch.zeros(1, 4, 8, 8), 3)
        cond = pipe.cond_schedule("a red apple", None, 2, 64, 64)
        denoise = pipe.denoiser(Guidance(cond, (), cfg, cfg), sigmas)
        x = noise * (1 + sigmas[0] ** 2) ** 0.5
        for i in range(2):  # Euler
            d = (x - denoise(x, sigmas[i])) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        torch.testing.assert_close(out, (x / pipe.config.vae.scaling_factor).float())


def test_controlnets_with_or_without_the_guidance_embedding_fit_a_guided_base():
    base = GUIDED
    plain = compatible_config(ControlNetConfig(TINY.unet, hint_downscale=8), "small", base)
    assert not plain.unet.guidance_embed
    own = compatible_config(ControlNetConfig(replace(TINY.unet, adm_in_channels=32), hint_downscale=8), "small", base)
    assert own.unet.guidance_embed  # no "y" then means scale 1, as in the base
    with pytest.raises(Exception, match="ControlNet is for"):
        compatible_config(ControlNetConfig(replace(TINY.unet, adm_in_channels=16), hint_downscale=8), "small", base)


@torch.no_grad()
def test_transplant_adds_a_silent_guidance_embedding_and_drops_transformers():
    torch.manual_seed(0)
    source = UNetModel(TINY.unet).eval()
    x, t, c = _inputs()
    same = UNetModel(GUIDED.unet).eval()
    same.load_state_dict(transplant(source, GUIDED.unet))
    y = guidance_embedding(torch.full((2,), 9.0), 32)
    torch.testing.assert_close(same(x, t, c, y), source(x, t, c))  # step 0 predicts as the source

    pruned_cfg = replace(GUIDED.unet, transformer_depth=(1, 0), transformer_depth_middle=0)
    state = transplant(source, pruned_cfg)
    pruned = UNetModel(pruned_cfg)
    pruned.load_state_dict(state)  # every key present, no extras
    src = source.state_dict()
    # output block 1 loses its transformer (index 1), so its upsample conv moves from index 2 to 1
    assert isinstance(source.output_blocks[1][1], SpatialTransformer)
    assert torch.equal(state["output_blocks.1.1.conv.weight"], src["output_blocks.1.2.conv.weight"])
    assert torch.equal(state["middle_block.1.in_layers.2.weight"], src["middle_block.2.in_layers.2.weight"])
    assert torch.equal(state["input_blocks.1.1.proj_in.weight"], src["input_blocks.1.1.proj_in.weight"])

    with pytest.raises(ValueError, match="differ in model_channels"):
        transplant(source, replace(GUIDED.unet, model_channels=64))
    with pytest.raises(ValueError, match=r"input_blocks\.3\.1 \(SpatialTransformer\) is not in its UNet"):
        transplant(UNetModel(pruned_cfg), GUIDED.unet)  # cannot add a transformer


@torch.no_grad()
def test_guided_distillation_target_is_uncond_plus_scale_times_the_difference():
    torch.manual_seed(0)
    cfg = replace(B.ARCHS["v1"], unet=replace(TINY.unet, context_dim=256), resolution=32)
    teacher = StableDiffusion(cfg).eval()
    student = StableDiffusion(replace(cfg, unet=replace(cfg.unet, adm_in_channels=32, guidance_embed=True))).eval()
    student.unet.load_state_dict(transplant(teacher.unet, student.config.unet))  # predicts the teacher's cond
    alphas = B.scaled_linear_alphas_cumprod().float()
    z0, t, noise = torch.randn(2, 4, 8, 8), torch.tensor([100, 700]), torch.randn(2, 4, 8, 8)
    context, empty = torch.randn(2, 77, 256), torch.randn(77, 256)
    at = lambda s: (z0, context, t, noise, torch.full((2,), s))
    assert B.diffusion_loss(student, at(1.0), alphas, teacher=teacher.unet, empty=empty) < 1e-10
    a = alphas[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    c, u = teacher.unet(zt, t, context), teacher.unet(zt, t, empty[None].expand(2, -1, -1))
    snr = a.view(-1) / (1 - a.view(-1))
    want = (torch.clamp(snr, max=B.MIN_SNR_GAMMA) / snr * ((c - (u + 3 * (c - u))) ** 2).mean(dim=(1, 2, 3))).mean()
    torch.testing.assert_close(B.diffusion_loss(student, at(3.0), alphas, teacher=teacher.unet, empty=empty), want)


def test_negative_prompt_texts_are_caption_parts_or_random_words():
    te = TINY.text_encoders[0]
    captions = ["grinning face, smiley, noto emoji style", "thumbs up, dark skin tone, twemoji style"]
    ids = negative_prompt_ids(captions, 40, te, seed=3)
    assert ids.shape == (40, 77) and torch.equal(ids, negative_prompt_ids(captions, 40, te, seed=3))
    known = {int(t) for t in B.tokenize(captions, te).flatten()}
    start, end = int(ids[0, 0]), te.pad_token
    for row in ids[:20]:  # parts of the captions: only their tokens
        assert {int(t) for t in row} <= known
    for row in ids[20:]:  # start, 1-6 random tokens, end, padding
        n = int((row != end).sum()) - 1
        assert row[0] == start and 1 <= n <= 6 and (row[n + 1:] == end).all()
    assert not {int(t) for t in ids[20:, 1:7].flatten()} <= known
