"""Sampler and schedule names: our ids, A1111 display names, ComfyUI names, and how they combine.

Our ids are ComfyUI's names (`dpmpp_2m`, `karras`, ...). Accepted spellings, matched without
regard to case or surrounding spaces:

* samplers: the id, the A1111 display name ("DPM++ 2M"), A1111's `k_...` aliases, and ComfyUI's
  `*_gpu` variants (same algorithm; ComfyUI only moves its Brownian tree to the GPU);
* schedules: the id, the A1111 "Schedule type" label ("Karras", "SGM Uniform", ...), plus
  "Automatic", "Uniform" and "Normal".

`resolve` follows A1111 (1.9+) `get_sampler_and_scheduler` + `KDiffusionSampler.get_sigmas`:

* a schedule named at the end of the sampler name ("DPM++ 2M Karras", or any
  "<sampler> <schedule>") wins over the separate scheduler argument, as in A1111;
* no scheduler, or "Automatic", means the sampler's A1111 default: Karras for DPM++ 2M, DPM++ SDE,
  DPM++ 2S a, DPM2, DPM2 a and Restart; Exponential for DPM++ 2M SDE, DPM++ 2M SDE Heun and
  DPM++ 3M SDE; DDIM's uniform timesteps for DDIM and PLMS; the model's own schedule ("normal") for
  the rest.

`resolve` always returns a concrete schedule id, never "automatic".
"""
from __future__ import annotations

from ..errors import InvalidArgument

# id -> (A1111 display name, A1111 default schedule id, extra accepted spellings)
_SAMPLERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "euler": ("Euler", "normal", ("k_euler",)),
    "euler_ancestral": ("Euler a", "normal", ("k_euler_a", "k_euler_ancestral")),
    "heun": ("Heun", "normal", ("k_heun",)),
    "dpm_2": ("DPM2", "karras", ("k_dpm_2",)),
    "dpm_2_ancestral": ("DPM2 a", "karras", ("k_dpm_2_a",)),
    "lms": ("LMS", "normal", ("k_lms",)),
    "dpmpp_2s_ancestral": ("DPM++ 2S a", "karras", ("k_dpmpp_2s_a",)),
    "dpmpp_sde": ("DPM++ SDE", "karras", ("k_dpmpp_sde", "dpmpp_sde_gpu")),
    "dpmpp_2m": ("DPM++ 2M", "karras", ("k_dpmpp_2m",)),
    "dpmpp_2m_sde": ("DPM++ 2M SDE", "exponential", ("k_dpmpp_2m_sde", "dpmpp_2m_sde_gpu")),
    "dpmpp_3m_sde": ("DPM++ 3M SDE", "exponential", ("k_dpmpp_3m_sde", "dpmpp_3m_sde_gpu")),
    "ddim": ("DDIM", "ddim_uniform", ()),
    "uni_pc": ("UniPC", "normal", ("unipc",)),
    "lcm": ("LCM", "normal", ("k_lcm",)),
    "plms": ("PLMS", "ddim_uniform", ()),
    "dpm_fast": ("DPM fast", "normal", ("k_dpm_fast",)),
    "dpm_adaptive": ("DPM adaptive", "normal", ("k_dpm_ad",)),
    "restart": ("Restart", "karras", ()),
    "dpmpp_2m_sde_heun": ("DPM++ 2M SDE Heun", "exponential", ("k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu")),
    # Not in A1111: Forge's labels where it has the sampler, else ours.
    "deis": ("DEIS", "normal", ()),
    "euler_cfg_pp": ("Euler CFG++", "normal", ()),
    "euler_ancestral_cfg_pp": ("Euler a CFG++", "normal", ()),
    "dpmpp_2m_cfg_pp": ("DPM++ 2M CFG++", "normal", ()),
    "tcd": ("TCD", "normal", ()),
    # Not in A1111 or Forge: ComfyUI's name is the label (none is made up).
    "heunpp2": ("heunpp2", "normal", ()),
    "dpmpp_2s_ancestral_cfg_pp": ("dpmpp_2s_ancestral_cfg_pp", "normal", ()),
    "ddpm": ("ddpm", "normal", ()),
    "ipndm": ("ipndm", "normal", ()),
    "ipndm_v": ("ipndm_v", "normal", ()),
    "res_multistep": ("res_multistep", "normal", ()),
    "res_multistep_cfg_pp": ("res_multistep_cfg_pp", "normal", ()),
    "res_multistep_ancestral": ("res_multistep_ancestral", "normal", ()),
    "res_multistep_ancestral_cfg_pp": ("res_multistep_ancestral_cfg_pp", "normal", ()),
    "gradient_estimation": ("gradient_estimation", "normal", ()),
    "gradient_estimation_cfg_pp": ("gradient_estimation_cfg_pp", "normal", ()),
    "er_sde": ("er_sde", "normal", ()),
    "uni_pc_bh2": ("uni_pc_bh2", "normal", ()),
    "seeds_2": ("seeds_2", "normal", ()),
    "seeds_3": ("seeds_3", "normal", ()),
    "sa_solver": ("sa_solver", "normal", ()),
    "sa_solver_pece": ("sa_solver_pece", "normal", ()),
}

# id -> (A1111 "Schedule type" label, extra accepted spellings)
_SCHEDULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "normal": ("Automatic", ("Uniform", "Normal")),
    "karras": ("Karras", ()),
    "exponential": ("Exponential", ()),
    "sgm_uniform": ("SGM Uniform", ("SGMUniform",)),
    "simple": ("Simple", ()),
    "beta": ("Beta", ()),
    "ddim_uniform": ("DDIM", ()),
    "align_your_steps": ("Align Your Steps", ()),
    "linear_quadratic": ("Linear Quadratic", ()),  # Forge's label; not in A1111
    "kl_optimal": ("KL Optimal", ()),
}

# Ours and ComfyUI's, not A1111's: A1111's sampler options (eta and such) do not apply to them.
_NOT_A1111 = frozenset({"deis", "euler_cfg_pp", "euler_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "tcd", "heunpp2",
                        "dpmpp_2s_ancestral_cfg_pp", "ddpm", "ipndm", "ipndm_v", "res_multistep",
                        "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                        "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "uni_pc_bh2", "seeds_2",
                        "seeds_3", "sa_solver", "sa_solver_pece"})

# A1111's old combined aliases ("k_dpmpp_2m_ka" = DPM++ 2M Karras).
_KARRAS_ALIASES = {f"k_{a}_ka": s for a, s in [
    ("lms", "lms"), ("dpm_2", "dpm_2"), ("dpm_2_a", "dpm_2_ancestral"), ("dpmpp_2s_a", "dpmpp_2s_ancestral"),
    ("dpmpp_2m", "dpmpp_2m"), ("dpmpp_sde", "dpmpp_sde"), ("dpmpp_2m_sde", "dpmpp_2m_sde")]}

# Samplers that run on steps+1 sigmas with the next-to-last dropped: A1111 does this for DPM2,
# DPM2 a and DPM++ 3M SDE; ComfyUI for dpm_2, dpm_2_ancestral and uni_pc (for UniPC it lands the
# steps on the same time grid as A1111's own UniPC) and uni_pc_bh2. We use the union.
DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "dpmpp_3m_sde", "uni_pc", "uni_pc_bh2"})

SAMPLER_LABELS: dict[str, str] = {k: v[0] for k, v in _SAMPLERS.items()}
A1111_SAMPLERS = frozenset(SAMPLER_LABELS) - _NOT_A1111
SCHEDULER_LABELS: dict[str, str] = {k: v[0] for k, v in _SCHEDULES.items()}
DEFAULT_SCHEDULES: dict[str, str] = {k: v[1] for k, v in _SAMPLERS.items()}


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


_SAMPLER_NAMES = {_key(n): k for k, (label, _, extra) in _SAMPLERS.items() for n in (k, label, *extra)}
_SCHEDULE_NAMES = {_key(n): k for k, (label, extra) in _SCHEDULES.items() for n in (k, label, *extra)}
_SCHEDULE_NAMES[_key("automatic")] = None  # "Automatic": the sampler's default


def _valid_samplers() -> str:
    return ", ".join([*SAMPLER_LABELS.values(), *SAMPLER_LABELS])


def _valid_schedules() -> str:
    return ", ".join(["Automatic", *(v for v in SCHEDULER_LABELS.values() if v != "Automatic"), *SCHEDULER_LABELS])


def _split_sampler(name: str) -> tuple[str, str | None]:
    """(sampler id, schedule id implied by the name or None); raises for unknown names."""
    if not isinstance(name, str):
        raise InvalidArgument(f"sampler: expected a name, got {name!r}; valid: {_valid_samplers()}")
    key = _key(name)
    if key in _SAMPLER_NAMES:
        return _SAMPLER_NAMES[key], None
    if key in _KARRAS_ALIASES:
        return _KARRAS_ALIASES[key], "karras"
    for sched_key, sched in _SCHEDULE_NAMES.items():
        head = key[: -len(sched_key) - 1]
        if key.endswith(" " + sched_key) and head in _SAMPLER_NAMES and sched is not None:
            return _SAMPLER_NAMES[head], sched
    raise InvalidArgument(f"sampler: unknown sampler {name!r}; valid: {_valid_samplers()}")


def sampler_id(name: str) -> str:
    """Our id for any accepted sampler spelling (a schedule suffix is allowed and ignored)."""
    return _split_sampler(name)[0]


def scheduler_id(name: str | None, sampler: str | None = None) -> str:
    """Our id for a schedule name; None/"Automatic" give `sampler`'s default ("normal" without one)."""
    if name is not None and not isinstance(name, str):
        raise InvalidArgument(f"scheduler: expected a name, got {name!r}; valid: {_valid_schedules()}")
    key = None if name is None else _key(name)
    if key is not None and key not in _SCHEDULE_NAMES:
        raise InvalidArgument(f"scheduler: unknown schedule type {name!r}; valid: {_valid_schedules()}")
    sched = None if key is None else _SCHEDULE_NAMES[key]
    if sched is None:
        sched = DEFAULT_SCHEDULES[sampler_id(sampler)] if sampler is not None else "normal"
    return sched


def resolve(sampler_name: str, scheduler_name: str | None = None) -> tuple[str, str]:
    """(sampler id, schedule id) from A1111 or ComfyUI names; see the module docstring for the rules."""
    sampler, implied = _split_sampler(sampler_name)
    explicit = scheduler_id(scheduler_name, sampler)  # validated even when the name overrides it
    return sampler, implied if implied is not None else explicit


def schedule_label(sampler: str, schedule: str) -> str:
    """The "Schedule type" to write in infotext so A1111 reproduces the run.

    Same as SCHEDULER_LABELS except for the model's own schedule under a sampler whose A1111
    default is something else: there "Automatic" would mean e.g. Karras, so we write "Uniform".
    """
    if schedule == "normal" and DEFAULT_SCHEDULES[sampler] != "normal":
        return "Uniform"
    return SCHEDULER_LABELS[schedule]
