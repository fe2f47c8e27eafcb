"""ComfyUI's sampler-option nodes: a SAMPLER for SamplerCustom / SamplerCustomAdvanced with the
options KSamplerSelect leaves at their defaults (eta and s_noise of the ancestral and SDE samplers,
DPM++ 2M SDE's solver, LMS's order, DPM adaptive's tolerances and step controller, TCD's eta).

`noise_device` chooses where ComfyUI's Brownian tree lives (its *_gpu sampler names); our SDE
samplers draw the step noise from the seed the same way wherever they run, so both choices give the
same sampler. SamplerTCD is not a core ComfyUI node: it is the comfyui-tcd-scheduler pack's
(`eta`, as its README names the paper's gamma), run by our TCD sampler on the model's schedule.
SamplerLCMUpscale: LCM that enlarges the latent between steps (sampling/lcm_upscale.py).
SamplerER_SDE: er_sde with its solver type (sampling/er_sde.py). SamplerSASolver: sa_solver with
its options (sampling/sa_solver.py). SamplerEulerCFGpp: its "regular"
version is euler_cfg_pp; its "alternative" one (a different Euler CFG++ variant ComfyUI keeps in
that node only) is refused at validation.
"""
from __future__ import annotations

from .ksampler import LCM_UPSCALE
from ..sampling.er_sde import SOLVER_TYPES
from .types import NodeDef, SamplerRef, register

_CATEGORY = "sampling/custom_sampling/samplers"
_NOISE_DEVICE = (["gpu", "cpu"], {})


def _float(default: float, hi: float = 100.0):
    return ("FLOAT", {"default": default, "min": 0.0, "max": hi, "step": 0.01, "round": False})


def _sampler_node(name: str, sampler: str, inputs: dict, display: str | None = None,
                  module: str = "comfy_extras.nodes_custom_sampler") -> None:
    def make(call, noise_device="cpu", **options):
        return (SamplerRef(sampler, tuple(options.items())),)

    register(NodeDef(name, make, inputs, ("SAMPLER",), category=_CATEGORY, display_name=display, module=module))


_ETA_NOISE = {"eta": _float(1.0), "s_noise": _float(1.0)}
_sampler_node("SamplerEulerAncestral", "euler_ancestral", _ETA_NOISE)
_sampler_node("SamplerEulerAncestralCFGPP", "euler_ancestral_cfg_pp",
              {"eta": _float(1.0, hi=1.0), "s_noise": _float(1.0, hi=10.0)}, display="SamplerEulerAncestralCFG++")
_sampler_node("SamplerLMS", "lms", {"order": ("INT", {"default": 4, "min": 1, "max": 100})})
_sampler_node("SamplerDPMPP_3M_SDE", "dpmpp_3m_sde", {**_ETA_NOISE, "noise_device": _NOISE_DEVICE})
_sampler_node("SamplerDPMPP_2M_SDE", "dpmpp_2m_sde",
              {"solver_type": (["midpoint", "heun"], {}), **_ETA_NOISE, "noise_device": _NOISE_DEVICE})
_sampler_node("SamplerDPMPP_SDE", "dpmpp_sde", {**_ETA_NOISE, "r": _float(0.5), "noise_device": _NOISE_DEVICE})
_sampler_node("SamplerDPMPP_2S_Ancestral", "dpmpp_2s_ancestral", _ETA_NOISE)
_sampler_node("SamplerDPMAdaptative", "dpm_adaptive",
              {"order": ("INT", {"default": 3, "min": 2, "max": 3}), "rtol": _float(0.05), "atol": _float(0.0078),
               "h_init": _float(0.05), "pcoeff": _float(0.0), "icoeff": _float(1.0), "dcoeff": _float(0.0),
               "accept_safety": _float(0.81), "eta": _float(0.0), "s_noise": _float(1.0)})
_sampler_node("SamplerTCD", "tcd",
              {"eta": ("FLOAT", {"default": 0.3, "min": 0, "max": 1.0, "step": 0.01, "round": False})},
              module="custom_nodes.comfyui-tcd-scheduler")

_sampler_node("SamplerER_SDE", "er_sde",
              {"solver_type": (list(SOLVER_TYPES), {}), "max_stage": ("INT", {"default": 3, "min": 1, "max": 3}),
               "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01, "round": False,
                                 "tooltip": "Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to "
                                            "deterministic ODE. This setting doesn't apply to ER-SDE solver type."}),
               "s_noise": _float(1.0)})



def _sa_solver(call, model, **options):
    # ComfyUI turns the percents into sigmas with this model's sampling; the sampler does so with the
    # model it samples, which is this one in any graph that wires the node as intended
    return (SamplerRef("sa_solver", tuple(options.items())),)


_PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
register(NodeDef(
    "SamplerSASolver", _sa_solver,
    {"model": ("MODEL", {}), "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "round": False}),
     "sde_start_percent": ("FLOAT", {"default": 0.2, **_PERCENT}),
     "sde_end_percent": ("FLOAT", {"default": 0.8, **_PERCENT}), "s_noise": _float(1.0),
     "predictor_order": ("INT", {"default": 3, "min": 1, "max": 6}),
     "corrector_order": ("INT", {"default": 4, "min": 0, "max": 6}),
     "use_pece": ("BOOLEAN", {}), "simple_order_2": ("BOOLEAN", {})},
    ("SAMPLER",), category=_CATEGORY, module="comfy_extras.nodes_custom_sampler"))

def _euler_cfg_pp_version(ctx, inputs) -> str | None:
    if inputs.get("version") == "alternative":
        return "SamplerEulerCFGpp: version 'alternative' is not supported here; 'regular' (euler_cfg_pp) is"
    return None


register(NodeDef(
    "SamplerEulerCFGpp", lambda call, version: (SamplerRef("euler_cfg_pp"),),
    {"version": (["regular", "alternative"], {})}, ("SAMPLER",), category="_for_testing", display_name="SamplerEulerCFG++",
    module="comfy_extras.nodes_advanced_samplers", experimental=True, check=_euler_cfg_pp_version))


def _lcm_upscale(call, scale_ratio, scale_steps, upscale_method):
    options = (("total_upscale", scale_ratio), ("upscale_steps", None if scale_steps < 0 else scale_steps),
               ("upscale_method", upscale_method))
    return (SamplerRef(LCM_UPSCALE, options),)


register(NodeDef(
    "SamplerLCMUpscale", _lcm_upscale,
    {"scale_ratio": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 20.0, "step": 0.01}),
     "scale_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "step": 1}),
     "upscale_method": (["bislerp", "nearest-exact", "bilinear", "area", "bicubic"], {})},
    ("SAMPLER",), category=_CATEGORY, module="comfy_extras.nodes_advanced_samplers"))
