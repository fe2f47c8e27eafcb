"""Krita AI Diffusion's sampler presets (ai_diffusion/presets/samplers.json) on our ComfyUI server: every
preset's sampler and scheduler is offered and runs, and the "Fast - UniPC BH2" preset's GITS schedule
(GITSScheduler) gives the published table's sigmas, with ComfyUI's rules past the table and for denoise."""
from __future__ import annotations

import math

import numpy as np
import pytest
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.errors import InvalidArgument
from opensd.workflows import execute
from opensd.workflows import nodes_sampling_custom as S
from opensd.workflows.nodes_core import SAMPLERS, SCHEDULERS

# (preset, sampler, scheduler) as samplers.json lists them; Krita turns "gits" into a GITSScheduler node
# (coeff 1.2) and every other scheduler into BasicScheduler.
PRESETS = [
    ("Default - DPM++ 2M", "dpmpp_2m", "karras"),
    ("Alternative - Euler A", "euler_ancestral", "normal"),
    ("Creative - DPM++ 2M SDE", "dpmpp_2m_sde_gpu", "karras"),
    ("Fast - UniPC BH2", "uni_pc_bh2", "gits"),
    ("Turbo/Lightning Merge - DPM++ SDE", "dpmpp_sde_gpu", "karras"),
    ("Lightning Merge - Euler A Uniform", "euler_ancestral", "sgm_uniform"),
    ("Realtime - Hyper", "euler", "sgm_uniform"),
    ("Realtime - LCM", "lcm", "sgm_uniform"),
    ("Realtime - Lightning", "euler", "sgm_uniform"),
    ("SD3 - DPM++ 2M Uniform", "dpmpp_2m", "sgm_uniform"),
    ("Flux - Euler simple", "euler", "simple"),
    ("Flux - Turbo", "euler", "simple"),
]

# Rows of the published GITS table (SD 1.5), for the preset's coefficient and two others.
GITS_1_20_12 = [14.61464119, 5.85520077, 3.07277966, 1.98035145, 1.36964464, 0.95350921, 0.69515091, 0.50118381,
                0.36617002, 0.25053367, 0.17026083, 0.09824532, 0.02916753]
GITS_1_20_20 = [14.61464119, 7.49001646, 4.65472794, 3.07277966, 2.19988537, 1.61558151, 1.24153244, 0.95350921,
                0.74807048, 0.59516323, 0.50118381, 0.41087446, 0.34370604, 0.29807833, 0.25053367, 0.22545385,
                0.19894916, 0.17026083, 0.13792117, 0.09824532, 0.02916753]
GITS_0_80_2 = [14.61464119, 7.49001646, 0.02916753]
GITS_1_50_5 = [14.61464119, 1.24153244, 0.54755926, 0.25053367, 0.09824532, 0.02916753]


def _gits(coeff, steps, denoise=1.0) -> np.ndarray:
    return S.gits_scheduler(None, coeff, steps, denoise)[0].numpy()


def test_gits_gives_the_published_schedule_with_the_last_sigma_zero():
    for coeff, row in ((1.20, GITS_1_20_12), (1.20, GITS_1_20_20), (0.80, GITS_0_80_2), (1.50, GITS_1_50_5)):
        got = _gits(coeff, len(row) - 1)
        np.testing.assert_allclose(got, row[:-1] + [0.0], rtol=1e-7)
    np.testing.assert_array_equal(_gits(1.2000001, 12), _gits(1.20, 12))  # the coefficient is rounded to 0.01


def test_gits_past_20_steps_interpolates_the_20_step_schedule_log_linearly():
    got = _gits(1.20, 40)  # 41 levels: the even ones are the 21 published, the odd ones their geometric means
    assert got.shape == (41,) and got[-1] == 0.0
    np.testing.assert_allclose(got[0:40:2], GITS_1_20_20[:-1], rtol=1e-6)
    means = [math.sqrt(a * b) for a, b in zip(GITS_1_20_20, GITS_1_20_20[1:])]
    np.testing.assert_allclose(got[1:40:2], means, rtol=1e-6)


def test_gits_denoise_keeps_the_tail_of_the_full_schedule():
    np.testing.assert_allclose(_gits(1.20, 12, 0.5), GITS_1_20_12[6:-1] + [0.0], rtol=1e-7)  # round(6) steps
    assert _gits(1.20, 12, 0.0).shape == (0,)


def test_gits_refuses_coefficients_and_step_counts_without_a_table_in_words():
    with pytest.raises(InvalidArgument, match="0.80 to 1.50 in steps of 0.05"):
        _gits(0.82, 10)
    with pytest.raises(InvalidArgument, match="start at 2 steps"):
        _gits(1.20, 1)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("presets")
    folders = make_models(tmp / "models")
    return make_ctx(folders, Loader(folders), tmp)


def _custom_graph(sampler: str, scheduler: str) -> dict:
    """Krita's sampling chain (workflow.py's sample): guider, sigmas, noise, sampler, SamplerCustomAdvanced."""
    g = default_graph()
    g["3"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["20", 0], "guider": ["21", 0], "sampler": ["22", 0], "sigmas": ["23", 0], "latent_image": ["5", 0]}}
    g["20"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
    g["21"] = {"class_type": "CFGGuider", "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                                      "cfg": 4.0}}
    g["22"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    if scheduler == "gits":
        g["23"] = {"class_type": "GITSScheduler", "inputs": {"coeff": 1.2, "steps": 2, "denoise": 1.0}}
    else:
        g["23"] = {"class_type": "BasicScheduler", "inputs": {"model": ["4", 0], "scheduler": scheduler, "steps": 2,
                                                               "denoise": 1.0}}
    return g


@pytest.mark.parametrize("preset, sampler, scheduler", PRESETS, ids=[p[0] for p in PRESETS])
def test_every_krita_preset_runs_two_steps(ctx, preset, sampler, scheduler):
    assert sampler in SAMPLERS
    assert scheduler == "gits" or scheduler in SCHEDULERS
    out = execute(_custom_graph(sampler, scheduler), ctx)
    assert len(out["9"]["images"]) == 1
    if scheduler != "gits":  # and as a plain KSampler
        out = execute(default_graph(sampler_name=sampler, scheduler=scheduler, steps=2), ctx)
        assert len(out["9"]["images"]) == 1
