"""/object_info for the ComfyUI core nodes added with the comfynodes branch, against ComfyUI's own
definitions (its V3 schemas: input names in order, types, defaults, bounds, steps, tooltips, the
"advanced" and "display" flags; outputs, categories, display names and modules), transcribed here
as JSON and compared exactly by test_workflows_object_info.check_object_info."""
import pytest
from test_workflows_object_info import check_object_info


def f(default, lo, hi, step, **extra):
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **extra}]


TSR_K = ("Controls the rescaling strength.\nLower k produces more detailed results; higher k produces smoother "
         "results in image generation. Setting k = 1 disables rescaling.")
TSR_SIGMA = "Controls how early rescaling takes effect.\nLarger values take effect earlier."

# name: (required, outputs, category, display name, python module, extra fields)
EXPECTED = {
    # comfy_extras/nodes_eps.py
    "Epsilon Scaling": ({"model": ["MODEL"],
                         "scaling_factor": f(1.005, 0.5, 1.5, 0.001, display="number", advanced=True)},
                        ["MODEL"], "model/patch/unet", "Epsilon Scaling", "comfy_extras.nodes_eps", {}),
    "TemporalScoreRescaling": (
        {"model": ["MODEL"], "tsr_k": f(0.95, 0.01, 100.0, 0.001, display="number", tooltip=TSR_K, advanced=True),
         "tsr_sigma": f(1.0, 0.01, 100.0, 0.001, display="number", tooltip=TSR_SIGMA, advanced=True)},
        ["MODEL"], "model/patch/unet", "TSR - Temporal Score Rescaling", "comfy_extras.nodes_eps",
        {"output_name": ["patched_model"], "description": "[Post-CFG Function]\nTSR - Temporal Score Rescaling "
         "(2510.01184)\n\nRescaling the model's score or noise to steer the sampling diversity.\n"}),
    # comfy_extras/nodes_lumina2.py
    "RenormCFG": ({"model": ["MODEL"], "cfg_trunc": ["FLOAT", {"default": 100, "min": 0.0, "max": 100.0,
                                                              "step": 0.01, "advanced": True}],
                   "renorm_cfg": f(1.0, 0.0, 100.0, 0.01, advanced=True)},
                  ["MODEL"], "model/patch", "RenormCFG", "comfy_extras.nodes_lumina2", {}),
    # comfy_extras/nodes_custom_sampler.py
    "ManualSigmas": ({"sigmas": ["STRING", {"default": "1, 0.5", "multiline": False}]}, ["SIGMAS"],
                     "experimental/custom_sampling", "ManualSigmas", "comfy_extras.nodes_custom_sampler",
                     {"experimental": True}),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_object_info_matches_comfyui(name):
    check_object_info(name, EXPECTED[name])
