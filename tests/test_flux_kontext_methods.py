"""FluxKontextMultiReferenceLatentMethod (ComfyUI's comfy_extras.nodes_flux) and the three places Flux
puts Kontext's reference latents in RoPE space ("offset", "index", "uxo"): ids against hand-worked
values for two references, the network against diffusers' transformer fed those ids, and a tiny
random Flux graph whose result the method changes."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

from dit_fixtures import flux_pair
from opensd.errors import InvalidArgument
from opensd.families.flux import COMFY_SHIFT
from opensd.models.flux import reference_offsets, reference_tokens
from opensd.workflows import ksampler as K
from opensd.workflows import object_info
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.nodes_dit import empty_sd3_latent, flux_guidance
from opensd.workflows.nodes_kontext import flux_kontext_multi_reference_latent_method as set_method
from opensd.workflows.nodes_kontext import reference_latent
from opensd.workflows.types import ClipRef, ModelRef
from reference import assert_close_scaled

pack = FluxKontextPipeline._pack_latents
# an image of 4 x 4 patches (8 x 8 latent cells) and two references of 5 x 6 and 3 x 4 cells (odd sides:
# padded to 3 x 3 and 2 x 2 patches)
IMAGE, SIZES = (4, 4), [(5, 6), (3, 4)]
# worked by hand from ComfyUI's Flux._forward / process_img (offsets in cells, halved rounding half up):
HAND = {
    # offset: a at 0; b: 3 + 5 > 4 + 6 is false, so below a (5 cells -> 3 patches); time id 1
    "offset": [(1, 0, 0), (1, 3, 0)],
    # index: time ids 1, 2, no offsets
    "index": [(1, 0, 0), (2, 0, 0)],
    # uxo: time id 0; a past the image (8 cells -> 4 patches each way); b past the image and a:
    # rows 8 + 5 = 13 -> 7, columns 8 + 6 = 14 -> 7
    "uxo": [(0, 4, 4), (0, 7, 7)],
}


def grid(t, dh, dw, h, w):
    rows, cols = torch.meshgrid(torch.arange(h) + dh, torch.arange(w) + dw, indexing="ij")
    return torch.stack([torch.full_like(rows, t), rows, cols], -1).reshape(-1, 3).float()


@pytest.mark.parametrize("method", list(HAND))
def test_two_references_are_placed_as_worked_by_hand(method):
    assert reference_offsets(SIZES, method, IMAGE) == HAND[method]
    refs = [torch.zeros(1, 16, *s) for s in SIZES]
    tokens, ids = reference_tokens(refs, method, IMAGE)
    (ta, ha, wa), (tb, hb, wb) = HAND[method]
    assert tokens.shape == (1, 9 + 4, 64)
    assert torch.equal(ids.float(), torch.cat([grid(ta, ha, wa, 3, 3), grid(tb, hb, wb, 2, 2)]))


def test_an_unknown_method_is_one_line():
    with pytest.raises(InvalidArgument, match=r"^reference_latents_method: 'uno' is not one of offset, index, uxo"):
        reference_offsets(SIZES, "uno", IMAGE)


def test_node_sets_the_method_on_every_entry_as_comfyui():
    ctx = torch.zeros(1, 2, 4)
    cond = [[ctx, {"guidance": 2.0}], [ctx, None]]
    for choice, stored in (("offset", "offset"), ("index", "index"), ("uxo/uno", "uxo"),
                           ("index_timestep_zero", "index_timestep_zero")):
        out = set_method(None, cond, choice)[0]
        assert [e[1] for e in out] == [{"guidance": 2.0, "reference_latents_method": stored},
                                       {"reference_latents_method": stored}]
        assert out[0][0] is ctx
    assert cond[0][1] == {"guidance": 2.0}  # the input is not changed
    with pytest.raises(InvalidArgument, match=r"^reference_latents_method: 'uxo' is not one of offset, index, "):
        set_method(None, cond, "uxo")


def test_object_info_is_comfyuis():
    assert object_info(None)["FluxKontextMultiReferenceLatentMethod"] == {
        "input": {"required": {"conditioning": ["CONDITIONING"],
                               # index_timestep_zero: ComfyUI's since Qwen-Image-Edit-2511
                               "reference_latents_method": [["offset", "index", "uxo/uno", "index_timestep_zero"]]}},
        "input_order": {"required": ["conditioning", "reference_latents_method"]},
        "output": ["CONDITIONING"], "output_is_list": [False], "output_name": ["CONDITIONING"],
        "name": "FluxKontextMultiReferenceLatentMethod", "display_name": "FluxKontextMultiReferenceLatentMethod",
        "description": "", "python_module": "comfy_extras.nodes_flux", "category": "advanced/conditioning/flux",
        "output_node": False, "experimental": True}


@pytest.fixture(scope="module")
def kontext(tmp_path_factory):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=math.exp(COMFY_SHIFT))
    return flux_pair(tmp_path_factory.mktemp("kontext_methods"), "dev", FluxKontextPipeline, scheduler)


@pytest.mark.parametrize("method", list(HAND))
def test_network_equals_diffusers_transformer_with_the_methods_ids(kontext, method):
    """diffusers' transformer on the image and both references (even sides here) with the ids worked
    out above for that method: our network given the method sees the same sequence."""
    ours, ref = kontext
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 8, 8, generator=g)
    refs = [torch.randn(1, 16, 6, 6, generator=g), torch.randn(1, 16, 4, 4, generator=g)]
    context, pooled = torch.randn(1, 7, 128, generator=g), torch.randn(1, 32, generator=g)
    t, guidance = torch.tensor([0.6]), torch.tensor([2.5])
    # 6 x 6 then 4 x 4 cells: offset: b 4 + 6 > 4 + 6 is false -> below (6 -> 3); uxo: 8 + 6 = 14 -> 7
    shifts = {"offset": [(1, 0, 0), (1, 3, 0)], "index": [(1, 0, 0), (2, 0, 0)], "uxo": [(0, 4, 4), (0, 7, 7)]}
    (ta, ha, wa), (tb, hb, wb) = shifts[method]
    ids = torch.cat([grid(0, 0, 0, 4, 4), grid(ta, ha, wa, 3, 3), grid(tb, hb, wb, 2, 2)])
    tokens = torch.cat([pack(x, 1, 16, 8, 8), pack(refs[0], 1, 16, 6, 6), pack(refs[1], 1, 16, 4, 4)], 1)
    with torch.no_grad():
        want = ref.transformer(hidden_states=tokens, timestep=t, guidance=guidance, pooled_projections=pooled,
                               encoder_hidden_states=context, txt_ids=torch.zeros(7, 3), img_ids=ids,
                               return_dict=False)[0][:, :16]
        got = ours.model.network(x, t, context, pooled, guidance, refs, ref_method=method)
    assert_close_scaled(pack(got, 1, 16, 8, 8), want, rel=1e-5)


def test_graph_result_follows_the_method(kontext):
    """CLIPTextEncode -> FluxGuidance -> ReferenceLatent x 2 -> FluxKontextMultiReferenceLatentMethod ->
    KSampler: "offset" equals the graph without the node (ComfyUI's default), "index" and "uxo" each
    change the result, and the network is called with the method set."""
    ours, _ = kontext
    clip, model = ClipRef(ours, "tiny"), ModelRef(ours, "tiny")
    g = torch.Generator().manual_seed(3)
    pos = flux_guidance(None, clip_text_encode(None, "a red cube", clip)[0], 2.5)[0]
    for shape in ((1, 16, 6, 6), (1, 16, 4, 8)):
        pos = reference_latent(None, pos, {"samples": torch.randn(*shape, generator=g)})[0]
    neg = clip_text_encode(None, "", clip)[0]
    latent = empty_sd3_latent(None, 64, 64)[0]
    seen = []
    hook = ours.family.network(ours.model).register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs.get("ref_method")), with_kwargs=True)

    def run(cond):
        return K.sample(model, cond, neg, latent, seed=4, steps=2, cfg=1.0, sampler_name="euler",
                        scheduler="simple")["samples"]

    try:
        plain = run(pos)
        out = {m: run(set_method(None, pos, m)[0]) for m in ("offset", "index", "uxo/uno")}
    finally:
        hook.remove()
    assert seen == ["offset"] * 4 + ["index"] * 2 + ["uxo"] * 2
    assert torch.equal(out["offset"], plain)
    for m in ("index", "uxo/uno"):
        assert (out[m] - plain).abs().max() > 1e-3 * plain.abs().max()
    assert (out["index"] - out["uxo/uno"]).abs().max() > 1e-3 * plain.abs().max()
