"""Guidance (pipeline/guidance.py): at CFG scale 1 the negative prompt's UNet row is not run (as
ComfyUI and Forge skip it), in the pipeline and in ComfyUI's KSampler, and the step's prediction is
the prompt's own."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.pipeline.params import Params
from opensd.pipeline.pipeline import load
from opensd.sampling.denoiser import Denoiser
from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef

GUIDED = replace(TINY, unet=replace(TINY.unet, adm_in_channels=32, guidance_embed=True))


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return load(write_random_checkpoint(tmp_path_factory.mktemp("cfg1") / "tiny.safetensors"))


def _batches(pipe, run):
    """UNet batch sizes of every call `run()` makes, and its result."""
    seen = []
    hook = pipe.model.unet.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    try:
        return seen, run()
    finally:
        hook.remove()


@torch.no_grad()
def test_cfg_one_runs_the_prompt_alone_and_predicts_exactly_its_denoised(pipe):
    estimates = []
    pipe.on_latents = estimates.append
    try:
        seen, _ = _batches(pipe, lambda: pipe.txt2img("a red apple", "blurry", steps=1, seed=3, cfg=1.0))
    finally:
        pipe.on_latents = None
    assert seen == [1]
    # the reference: the UNet on the prompt's encoding only, through the eps -> denoised wrapper
    sigmas = pipe.sigmas(Params(), 1)
    x = pipe.noise([3], 8, 8) * sigmas[0]
    context = pipe.conditioner().encode("a red apple").context
    own = Denoiser(lambda x, t: pipe.model.unet(x, t, context).float(), pipe.schedule, pipe.config.prediction)
    torch.testing.assert_close(estimates[0], own(x, sigmas[0]), rtol=0, atol=1e-6)


def test_cfg_one_ignores_the_negative_prompt_and_other_scales_keep_it(pipe):
    seen, with_negative = _batches(pipe, lambda: pipe.txt2img("a red apple", "blurry", steps=2, seed=4, cfg=1.0))
    assert seen == [1, 1]
    without = pipe.txt2img("a red apple", steps=2, seed=4, cfg=1.0)
    assert np.array_equal(np.asarray(with_negative[0]), np.asarray(without[0]))
    seen, _ = _batches(pipe, lambda: pipe.txt2img("a red apple", "blurry", steps=2, seed=4, cfg=1.5))
    assert seen == [2, 2]
    # AND parts whose weights times the scale do not sum to 1 still need the negative's row
    seen, _ = _batches(pipe, lambda: pipe.txt2img("a red apple AND a pear", steps=1, seed=4, cfg=1.0))
    assert seen == [3]
    seen, _ = _batches(pipe, lambda: pipe.txt2img("a red apple :0.5 AND a pear :0.5", steps=1, seed=4, cfg=1.0))
    assert seen == [2]


def test_comfyui_ksampler_at_cfg_one_runs_batch_one(pipe):
    clip = ClipRef(pipe, "tiny")
    pos = clip_text_encode(None, "a red apple", clip)[0]
    outs = []
    for negative, cfg, rows in (("blurry", 1.0, 1), ("", 1.0, 1), ("blurry", 2.0, 2)):
        neg = clip_text_encode(None, negative, clip)[0]
        seen, out = _batches(pipe, lambda: K.sample(ModelRef(pipe, "tiny"), pos, neg, {"samples": torch.zeros(1, 4, 8, 8)},
                                                    seed=5, steps=2, cfg=cfg, sampler_name="euler",
                                                    scheduler="normal")["samples"])
        assert seen and set(seen) == {rows}
        outs.append(out)
    assert torch.equal(outs[0], outs[1])  # the negative no longer matters


def test_guided_model_at_scale_one_drops_the_negative_rows(tmp_path):
    guided = load(write_random_checkpoint(tmp_path / "guided.safetensors", GUIDED))
    seen, _ = _batches(guided, lambda: guided.txt2img("a red apple", "blurry", steps=2, seed=1, cfg=1.0))
    assert seen == [1, 1]
    seen, _ = _batches(guided, lambda: guided.txt2img("a red apple", "blurry", steps=2, seed=1, cfg=3.0))
    assert seen == [3, 3]
