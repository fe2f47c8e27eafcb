"""ComfyUI's conditioning nodes and how sampling composes conditioning entries: the node outputs as
exact tensors, the per-step composition (areas, masks, strengths, timestep ranges, partners of the
same area in the negative) against its definition with a recording model, and regional prompting
on a real tiny model: one step changes the latent only inside the prompt's area or mask."""
from types import SimpleNamespace

import pytest
import torch
from workflow_fixtures import Loader, make_ctx, make_models

from opensd.sampling.schedules import DiscreteSchedule, scaled_linear_alphas_cumprod
from opensd.workflows import conds as C
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_conditioning as N
from opensd.workflows.model_sampling import ModelSampling
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef

CPU = torch.device("cpu")


def cond(value, length=77, dim=8, **extra):
    return [[torch.full((1, length, dim), float(value)), dict(extra)]]


# --- node outputs ------------------------------------------------------------------------------

def test_combine_concat_zero_out_and_the_setters():
    a, b = cond(1.0, pooled_output=torch.ones(1, 4)), cond(2.0, length=154)
    (both,) = N.combine(None, a, b)
    assert len(both) == 2 and both[0][0] is a[0][0] and both[1][0] is b[0][0]
    (cat,) = N.concat(None, a, b)
    assert cat[0][0].shape == (1, 231, 8) and cat[0][0][0, :77].eq(1).all() and cat[0][0][0, 77:].eq(2).all()
    assert cat[0][1]["pooled_output"] is a[0][1]["pooled_output"]
    (zero,) = N.zero_out(None, a)
    assert zero[0][0].eq(0).all() and zero[0][1]["pooled_output"].eq(0).all() and a[0][0].eq(1).all()
    (area,) = N.set_area(None, a, 200, 100, 17, 64, 1.5)
    assert area[0][1]["area"] == (12, 25, 8, 2) and area[0][1]["strength"] == 1.5
    assert area[0][1]["set_area_to_bounds"] is False and "area" not in a[0][1]
    (pct,) = N.set_area_percentage(None, a, 0.5, 0.25, 0.1, 0.2, 1.0)
    assert pct[0][1]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1)
    (masked,) = N.set_mask(None, a, torch.ones(4, 4), 0.7, "mask bounds")
    assert masked[0][1]["mask"].shape == (1, 4, 4) and masked[0][1]["mask_strength"] == 0.7
    assert masked[0][1]["set_area_to_bounds"] is True
    (rng,) = N.set_timestep_range(None, a, 0.2, 0.6)
    assert (rng[0][1]["start_percent"], rng[0][1]["end_percent"]) == (0.2, 0.6)


def test_average_lerps_contexts_and_pooled_and_pads_the_shorter_source_with_zeros():
    to = cond(1.0, length=154, pooled_output=torch.full((1, 4), 1.0))
    src = cond(3.0, pooled_output=torch.full((1, 4), 5.0))
    (out,) = N.average(None, to, src, 0.25)
    ctx = out[0][0]
    assert torch.allclose(ctx[0, :77], torch.full((77, 8), 0.25 + 0.75 * 3))
    assert torch.allclose(ctx[0, 77:], torch.full((77, 8), 0.25))  # zeros where the source is shorter
    assert torch.allclose(out[0][1]["pooled_output"], torch.full((1, 4), 0.25 + 0.75 * 5))
    (out,) = N.average(None, cond(1.0), src, 0.5)  # no pooled on the target: it blends the source's with itself
    assert torch.equal(out[0][1]["pooled_output"], src[0][1]["pooled_output"])
    (out,) = N.average(None, cond(1.0, pooled_output=None), src, 0.5)  # an explicit None: the source's
    assert out[0][1]["pooled_output"] is src[0][1]["pooled_output"]
    (out,) = N.average(None, cond(1.0), cond(3.0, length=154), 0.5)  # longer source: cut
    assert out[0][0].shape == (1, 77, 8) and torch.allclose(out[0][0], torch.full((1, 77, 8), 2.0))


# --- composition in one step -------------------------------------------------------------------

PIPE = SimpleNamespace(device=CPU, config=SimpleNamespace(size_conditioned=False, pooled_y=False,
                                                          vae=SimpleNamespace(downscale=8)))
SAMPLING = ModelSampling(DiscreteSchedule(scaled_linear_alphas_cumprod()))


class Recorder:
    """A model whose prediction for an entry is its context's value everywhere; records each
    call's crops and areas."""

    def __init__(self):
        self.calls = []

    def __call__(self, crops, sigma, entries, areas):
        self.calls.append((crops.clone(), [float(e.context[0, 0, 0]) for e in entries], list(areas)))
        return torch.stack([torch.full(crops.shape[1:], float(e.context[0, 0, 0])) for e in entries])


def _ramp(n: int, start: bool, end: bool) -> torch.Tensor:
    """ComfyUI's edge fade of an area side of n cells: (t + 1) / 8 on the t-th cell from an inner edge."""
    r = torch.ones(n)
    for i in range(n):
        if start and i < 8:
            r[i] *= (i + 1) / 8
        if end and n - 1 - i < 8:
            r[i] *= (n - i) / 8
    return r


def test_an_area_entry_runs_on_its_crop_and_blends_in_with_feathered_edges():
    x = torch.randn(1, 4, 24, 32, generator=torch.Generator().manual_seed(0))
    (area,) = N.set_area(None, cond(5.0), 128, 128, 32, 24, 2.0)  # 16x16 cells at (x=4, y=3)
    prepared = C.prepare({"positive": cond(1.0) + area}, x.shape, PIPE, SAMPLING)["positive"]
    rec = Recorder()
    (out,) = C.calc_cond_batch(rec, [prepared], x, torch.tensor(5.0))
    crops = {tuple(a[0]) if a[0] else None: c for c, _, a in rec.calls}
    assert torch.equal(crops[(16, 16, 3, 4)], x[:, :, 3:19, 4:20])  # the area entry saw only its region
    assert torch.equal(crops[None], x)
    mult = 2.0 * torch.outer(_ramp(16, True, True), _ramp(16, True, True))  # all four edges are inside
    expect = torch.ones(24, 32)
    expect[3:19, 4:20] = (1.0 + 5.0 * mult) / (1.0 + mult)
    assert torch.allclose(out[0, 0], expect) and torch.allclose(out[0, 3], expect)


def test_mask_entries_weigh_by_mask_times_strengths_and_edges_touching_the_border_do_not_fade():
    x = torch.zeros(1, 4, 16, 16)
    mask = torch.zeros(32, 32)
    mask[8:24, 0:16] = 1.0  # at twice the latent size: resized bilinear to rows 4..11, cols 0..7
    (masked,) = N.set_mask(None, cond(3.0), mask, 0.5, "default")
    masked[0][1]["strength"] = 4.0
    (edge,) = N.set_area(None, cond(7.0), 64, 128, 64, 0, 1.0)  # 8x16 cells at the top right: only the left edge is inner
    prepared = C.prepare({"positive": cond(1.0) + masked + edge}, x.shape, PIPE, SAMPLING)["positive"]
    (out,) = C.calc_cond_batch(Recorder(), [prepared], x, torch.tensor(1.0))
    m = torch.zeros(16, 16)
    m[4:12, 0:8] = 2.0  # mask x mask_strength 0.5 x strength 4
    e = torch.zeros(16, 16)
    e[0:16, 8:16] = _ramp(8, True, False)[None, :]
    expect = (1.0 + 3.0 * m + 7.0 * e) / (1.0 + m + e)
    assert torch.allclose(out[0, 0], expect)


def test_strengths_weigh_full_image_entries_and_nothing_covered_gives_zero():
    x = torch.zeros(1, 4, 8, 8)
    strong = N.set_values(cond(4.0), strength=3.0)
    prepared = C.prepare({"positive": cond(1.0) + strong}, x.shape, PIPE, SAMPLING)["positive"]
    (out,) = C.calc_cond_batch(Recorder(), [prepared], x, torch.tensor(1.0))
    assert torch.allclose(out, torch.full_like(x, (1.0 + 3 * 4.0) / 4))
    (area,) = N.set_area(None, cond(2.0), 64, 64, 0, 0, 1.0)
    only = C.prepare({"positive": area}, (1, 4, 16, 16), PIPE, SAMPLING)["positive"]
    (out,) = C.calc_cond_batch(Recorder(), [only], torch.zeros(1, 4, 16, 16), torch.tensor(1.0))
    assert out[0, 0, :8, :8].gt(0).all() and out[0, 0, 8:].eq(0).all() and out[0, 0, :, 8:].eq(0).all()


def test_set_area_strength_weighs_an_area_entry_against_the_rest():
    (area,) = N.set_area(None, cond(4.0), 64, 64, 0, 0, 1.0)
    (strong,) = N.set_area_strength(None, area, 3.0)
    assert strong[0][1]["area"] == area[0][1]["area"] and area[0][1]["strength"] == 1.0  # input kept
    x = torch.zeros(1, 4, 16, 16)
    prepared = C.prepare({"positive": cond(1.0) + strong}, x.shape, PIPE, SAMPLING)["positive"]
    (out,) = C.calc_cond_batch(Recorder(), [prepared], x, torch.tensor(1.0))
    fade = _ramp(8, False, True)  # the area's inner edges fade in over its 8 cells
    weight = 3.0 * fade[:, None] * fade[None, :]
    assert torch.allclose(out[0, 0, :8, :8], (1.0 + 4.0 * weight) / (1.0 + weight))
    assert out[0, 0, 8:].eq(1).all() and out[0, 0, :, 8:].eq(1).all()


def test_timestep_ranges_switch_entries_by_sigma():
    (early,) = N.set_timestep_range(None, cond(2.0), 0.0, 0.5)
    (late,) = N.set_timestep_range(None, cond(3.0), 0.5, 1.0)
    prepared = C.prepare({"positive": early + late}, (1, 4, 8, 8), PIPE, SAMPLING)["positive"]
    boundary = float(SAMPLING.schedule.t_to_sigma(torch.tensor(0.5 * 999.0)))
    assert prepared[0].sigma_start == 999999999.9 and prepared[0].sigma_end == pytest.approx(boundary)
    assert prepared[1].sigma_start == pytest.approx(boundary) and prepared[1].sigma_end == 0.0
    for sigma, value in [(14.0, 2.0), (boundary * 1.01, 2.0), (boundary * 0.99, 3.0), (0.1, 3.0)]:
        (out,) = C.calc_cond_batch(Recorder(), [prepared], torch.zeros(1, 4, 8, 8), torch.tensor(sigma))
        assert torch.allclose(out, torch.full((1, 4, 8, 8), value)), sigma


def test_areas_get_a_same_area_partner_in_the_negative_and_percentages_and_mask_bounds_resolve():
    (area,) = N.set_area(None, cond(5.0), 64, 64, 64, 0, 1.5)
    (pct,) = N.set_area_percentage(None, cond(6.0), 0.5, 0.25, 0.5, 0.0, 1.0)
    mask = torch.zeros(1, 16, 32)
    mask[0, 3:6, 20:22] = 1.0
    (bounds,) = N.set_mask(None, cond(7.0), mask, 1.0, "mask bounds")
    (empty,) = N.set_mask(None, cond(8.0), torch.zeros(1, 16, 32), 1.0, "mask bounds")
    named = {"positive": cond(1.0) + area + pct + bounds + empty, "negative": cond(-1.0)}
    prepared = C.prepare(named, (1, 4, 16, 32), PIPE, SAMPLING)
    pos, neg = prepared["positive"], prepared["negative"]
    assert [e.area for e in pos] == [None, (8, 8, 0, 8), (4, 16, 0, 16), (8, 8, 3, 20), (8, 8, 0, 0)]
    # each area got a partner in the negative with the negative's text and the positive's weights
    assert [e.area for e in neg] == [None, (8, 8, 0, 8), (4, 16, 0, 16), (8, 8, 3, 20), (8, 8, 0, 0)]
    assert all(float(e.context[0, 0, 0]) == -1.0 for e in neg)
    assert neg[1].strength == 1.5 and neg[3].mask is pos[3].mask


def test_regional_prompt_changes_one_step_only_inside_its_area_and_mask(tmp_path):
    folders = make_models(tmp_path / "models")
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    pipe = ctx.load_pipeline("tiny.safetensors")
    clip, model = ClipRef(pipe, "tiny"), ModelRef(pipe, "tiny")
    base, neg = clip_text_encode(None, "a meadow", clip)[0], clip_text_encode(None, "blurry", clip)[0]
    region = clip_text_encode(None, "a red house", clip)[0]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    kw = {"seed": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal"}

    def sample(positive, steps=1):
        return K.sample(model, positive, neg, latent, steps=steps, **kw)["samples"]

    plain = sample(base)
    (area,) = N.set_area(None, region, 32, 32, 32, 0, 1.0)  # cells x 4..7, y 0..3
    regional = sample(base + area)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[0:4, 4:8] = True
    assert torch.equal(regional[..., ~inside], plain[..., ~inside])
    assert (regional[..., inside] - plain[..., inside]).abs().amin() > 0
    mask = torch.zeros(1, 64, 64)
    mask[:, 32:, :16] = 1.0  # cells y 4..7, x 0..1
    (masked,) = N.set_mask(None, region, mask, 1.0, "default")
    in_mask = torch.zeros(8, 8, dtype=torch.bool)
    in_mask[4:8, 0:2] = True
    out = sample(base + masked)
    assert torch.equal(out[..., ~in_mask], plain[..., ~in_mask])
    assert (out[..., in_mask] - plain[..., in_mask]).abs().amin() > 0
    # over several steps the UNet's receptive field carries the region's effect, but it stays mostly there
    many, many_plain = sample(base + area, steps=4), sample(base, steps=4)
    change = (many - many_plain).abs().mean(dim=1)[0]
    assert change[inside].mean() > 3 * change[~inside].mean()
