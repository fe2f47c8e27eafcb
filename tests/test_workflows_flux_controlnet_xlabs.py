"""An XLabs Flux ControlNet in ComfyUI's ControlNetLoader + ControlNetApplyAdvanced (no vae input: it
takes the image's pixels) on a Flux model from diffusion_models/: the graph equals our txt2img with the
same ControlNet, strength 0 leaves the image as without the node, and the CLI's --control gives the
graph's image."""
from __future__ import annotations

import numpy as np
import pytest

from test_flux_controlnet_xlabs import tiny_xlabs
from test_workflows_dit import PROMPT, _flux_graph, _run, flux_encode_inputs
from test_workflows_flux_controlnet import _graph as controlnet_graph
from test_workflows_flux_controlnet import assert_graph_equals_txt2img, cli_image, controlnet_env

NAME = "flux-canny-controlnet-v3.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return controlnet_env(tmp_path_factory.mktemp("xlabswf"), NAME, tiny_xlabs(seed=4))


def _graph(strength=0.8):
    return controlnet_graph(strength, name=NAME, vae=False)


def test_graph_equals_our_txt2img_and_strength_zero_is_none(env):
    ctx = env[0]
    assert_graph_equals_txt2img(*env, _run(ctx, _graph()))
    assert np.array_equal(_run(ctx, _graph(strength=0.0)), _run(ctx, _flux_graph(flux_encode_inputs(PROMPT))))


def test_cli_control_equals_the_graph(env, tmp_path):
    ctx, _, cn = env
    assert np.abs(cli_image(ctx, cn, tmp_path).astype(int) - _run(ctx, _graph()).astype(int)).max() <= 1
