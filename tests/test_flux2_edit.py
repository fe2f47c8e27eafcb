"""FLUX.2 [klein] editing with reference images on tiny random weights: each reference's latent is
appended to the image tokens at its own time id (10, 20, ...), as diffusers' Flux2KleinPipeline
(image=[...]) and ComfyUI's ReferenceLatent place them; our txt2img with `references` equals the
pipeline step by step and in pixels with one and two references (one centre-cropped to whole
tokens), and the Kontext placements stay available through FluxKontextMultiReferenceLatentMethod."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from PIL import Image

from dit_fixtures import spy_euler
from opensd.errors import InvalidArgument
from opensd.models.flux2 import reference_tokens
from reference import assert_close_scaled
from test_flux2_pipeline import PROMPT, SEED, SIZE, STEPS, _pair


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def klein(tmp_path_factory):
    from flux2_fixtures import flux2_parts
    return _pair(tmp_path_factory.mktemp("kleinedit") / "model", flux2_parts(), True)


def test_reference_ids_are_the_pipelines():
    refs = [torch.zeros(1, 128, 3, 2), torch.zeros(1, 128, 2, 4)]
    tokens, ids = reference_tokens(refs, "index", (5, 5))
    assert tokens.shape == (1, 14, 128)
    assert torch.equal(ids, Flux2KleinPipeline._prepare_image_ids(refs)[0])
    _, offset = reference_tokens(refs, "offset", (5, 5))  # ComfyUI's Kontext placement: time id 1, unscaled
    assert offset[:, 0].unique().tolist() == [1] and offset[6:, 1:3].min(0).values.tolist() == [3, 0]
    _, uxo = reference_tokens(refs, "uxo", (5, 5))  # diagonally past the 5x5 image and the first reference
    assert uxo[:, 0].unique().tolist() == [0] and uxo[6:, 1:3].min(0).values.tolist() == [8, 7]
    with pytest.raises(InvalidArgument, match="reference_latents_method"):
        reference_tokens(refs, "sideways")


@pytest.mark.parametrize("sizes", [[(64, 72)], [(64, 72), (70, 66)]])
def test_txt2img_with_references_equals_the_pipeline(klein, sizes, monkeypatch):
    """One reference, then two (the second 70x66, centre-cropped to 68x64 on both sides): the
    latents after every step and the image equal Flux2KleinPipeline(image=[...])'s."""
    ours, ref = klein
    images = [picture(w, h, i) for i, (w, h) in enumerate(sizes)]
    ours_steps = spy_euler(monkeypatch)
    (got,) = ours.txt2img(PROMPT, "", references=images, steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0)
    noise = ours.noise([SEED], SIZE // 4, SIZE // 4)
    steps, seen = [], []

    def on_step_end(p, i, t, kwargs):
        steps.append(kwargs["latents"].clone())
        return {}

    hook = ref.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]),
                                                     with_kwargs=True)
    try:
        with torch.no_grad():
            want = ref(image=images, prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                       guidance_scale=1.0, latents=noise, output_type="np", callback_on_step_end=on_step_end).images[0]
    finally:
        hook.remove()
    cells = sum((w // 4) * (h // 4) for w, h in sizes)
    assert seen[0] == (SIZE // 4) ** 2 + cells  # the references' tokens were seen
    assert len(ours_steps["steps"]) == len(steps) == STEPS
    for mine, theirs in zip(ours_steps["steps"], steps):
        assert_close_scaled(mine.flatten(2).transpose(1, 2), theirs, rel=1e-4)
    got_8bit, want_8bit = np.asarray(got).astype(int), np.round(want * 255).astype(int)
    assert np.abs(got_8bit - want_8bit).max() <= 1 and want_8bit.std() > 1
    (plain,) = ours.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0)
    assert np.abs(np.asarray(plain).astype(int) - got_8bit).max() > 8  # the references change the image


@pytest.mark.parametrize("size", [(1100, 1000), (1030, 770)])
def test_a_reference_is_fitted_as_the_pipeline_fits_it(size):
    """Above 1 MP scaled down to 1 MP (Lanczos), then centre-cropped to whole 16-pixel tokens: the
    pixels Flux2KleinPipeline's image processor gives (klein's released VAE: 16 pixels a token)."""
    from types import SimpleNamespace

    from diffusers.pipelines.flux2.image_processor import Flux2ImageProcessor

    from opensd.families.flux2 import FLUX2_FAMILY
    image = picture(*size, seed=3)
    got = FLUX2_FAMILY.fit_reference(SimpleNamespace(config=SimpleNamespace(size_multiple=16)), image)
    proc = Flux2ImageProcessor(vae_scale_factor=8, vae_latent_channels=32)
    fitted = proc._resize_to_target_area(image, 1024 * 1024) if size[0] * size[1] > 1024 * 1024 else image
    w, h = fitted.width // 16 * 16, fitted.height // 16 * 16
    want = proc.preprocess(fitted, height=h, width=w, resize_mode="crop")
    assert got.size == (w, h)
    torch.testing.assert_close(torch.from_numpy(np.asarray(got, np.float32) / 127.5 - 1).permute(2, 0, 1)[None],
                               want.float(), atol=1e-6, rtol=0)
