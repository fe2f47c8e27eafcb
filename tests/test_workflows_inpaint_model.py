"""InpaintModelConditioning on a tiny 9-channel inpainting model: the node's outputs (the whole
image's latent, the mask as noise mask, the greyed image's latent and the mask on both
conditionings) and what the model's extra input channels receive while sampling: that mask
(latent size, rounded) and that latent (scaled), for the positive and the negative alike,
whether or not the latent carries the noise mask."""
import pytest
import torch
import torch.nn.functional as F
from workflow_fixtures import concat_model_refs

from opensd.workflows import ksampler as K
from opensd.workflows.nodes_core import inpaint_model_conditioning, vae_encode, vae_encode_for_inpaint


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    return concat_model_refs(tmp_path_factory.mktemp("inp") / "tiny-inpainting.safetensors", 9, "a red door")


def picture():
    pixels = torch.rand(1, 68, 66, 3, generator=torch.Generator().manual_seed(0))  # not a multiple of 8: cropped
    mask = torch.zeros(1, 68, 66)
    mask[:, 20:44, 12:40] = 1.0
    return pixels, mask


def test_outputs_are_the_images_latent_and_the_greyed_images(refs):
    pipe, _, vae, pos, neg = refs
    pixels, mask = picture()
    pos2, neg2, latent = inpaint_model_conditioning(None, pos, neg, vae, pixels, mask, True)
    assert torch.equal(latent["samples"], vae_encode(None, pixels, vae)[0]["samples"])
    assert torch.equal(latent["noise_mask"], mask[:, None, 2:66, 1:65])  # resized (same size) and cropped
    greyed = vae_encode_for_inpaint(None, pixels, vae, mask, 0)[0]["samples"]
    for cond, before in ((pos2, pos), (neg2, neg)):
        (ctx, extra), = cond
        assert ctx is before[0][0] and torch.equal(extra["concat_latent_image"], greyed)
        assert torch.equal(extra["concat_mask"], latent["noise_mask"])
    assert "noise_mask" not in inpaint_model_conditioning(None, pos, neg, vae, pixels, mask, False)[2]


@pytest.mark.parametrize("noise_mask", [True, False])
def test_the_model_sees_the_mask_and_the_greyed_latent(refs, noise_mask):
    pipe, model, vae, pos, neg = refs
    pixels, mask = picture()
    pos2, neg2, latent = inpaint_model_conditioning(None, pos, neg, vae, pixels, mask, noise_mask)
    seen = []
    net = pipe.family.network(pipe.model)
    hook = net.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4:].detach().cpu()))
    try:
        K.sample(model, pos2, neg2, latent, seed=1, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal")
    finally:
        hook.remove()
    h, w = latent["samples"].shape[2:]
    small = F.interpolate(latent["noise_mask"] if noise_mask else mask[:, None, 2:66, 1:65], size=(h, w),
                          mode="bilinear").round()
    greyed = pipe.config.vae.scaled(vae_encode_for_inpaint(None, pixels, vae, mask, 0)[0]["samples"])
    want = torch.cat([small, greyed], dim=1)
    rows = torch.cat(seen)
    assert len(rows) == 4  # two steps, the positive and the negative each
    for row in rows:
        torch.testing.assert_close(row[None], want, rtol=1e-5, atol=1e-5)
