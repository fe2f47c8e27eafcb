"""InstructPixToPixConditioning on a tiny 8-channel edit model: the node's outputs (both
conditionings carry the image's raw latent, an empty latent to sample) and what the model's image
channels receive: that latent for the conditionings that carry it, zeros for a negative without
it, as DualCFGGuider's image guidance in ComfyUI runs it (cond1 = positive, cond2 = the node's
negative, negative = the plain one)."""
import pytest
import torch
from workflow_fixtures import concat_model_refs, sampling_env

from opensd.workflows import ksampler as K
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.nodes_core import instruct_pix2pix_conditioning, vae_encode
from opensd.workflows.types import NoiseRef, SamplerRef


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    call = sampling_env(tmp_path_factory.mktemp("env"))[0]  # a NodeCall for the custom sampling nodes
    return (*concat_model_refs(tmp_path_factory.mktemp("ip2p") / "tiny-edit.safetensors", 8, "make it snow"), call)


def _pixels():
    return torch.rand(1, 68, 66, 3, generator=torch.Generator().manual_seed(0))  # cropped to 64x64


def _seen_image_channels(pipe, run):
    seen = []
    net = pipe.family.network(pipe.model)
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4:].detach().cpu()))
    try:
        run()
    finally:
        hook.remove()
    return torch.cat(seen)


def test_outputs_carry_the_images_raw_latent(refs):
    pipe, _, vae, pos, neg, _ = refs
    pos2, neg2, latent = instruct_pix2pix_conditioning(None, pos, neg, vae, _pixels())
    image = vae_encode(None, _pixels(), vae)[0]["samples"]
    assert latent["samples"].shape == image.shape and not latent["samples"].any()
    for cond, before in ((pos2, pos), (neg2, neg)):
        (ctx, extra), = cond
        assert ctx is before[0][0] and torch.equal(extra["concat_latent_image"], image)


def test_ksampler_rows_see_the_image_and_dual_cfg_s_negative_sees_zeros(refs):
    pipe, model, vae, pos, neg, call = refs
    pos2, neg2, latent = instruct_pix2pix_conditioning(None, pos, neg, vae, _pixels())
    image = vae_encode(None, _pixels(), vae)[0]["samples"]  # raw, as ComfyUI's SD1 edit model takes it
    rows = _seen_image_channels(pipe, lambda: K.sample(model, pos2, neg2, latent, seed=1, steps=2, cfg=4.0,
                                                       sampler_name="euler", scheduler="normal"))
    assert len(rows) == 4
    for row in rows:
        torch.testing.assert_close(row[None], image, rtol=1e-5, atol=1e-5)
    (dual,) = S.dual_cfg_guider(None, model, pos2, neg2, neg, 7.0, 1.5)
    (sigmas,) = S.basic_scheduler(None, model, "normal", 2, 1.0)
    rows = _seen_image_channels(pipe, lambda: S.sampler_custom_advanced(call, NoiseRef(3), dual, SamplerRef("euler"),
                                                                        sigmas, latent))
    zero = [not r.any() for r in rows]
    assert len(rows) == 6 and sum(zero) == 2  # per step: the plain negative's row on zeros
    for row, z in zip(rows, zero):
        if not z:
            torch.testing.assert_close(row[None], image, rtol=1e-5, atol=1e-5)
