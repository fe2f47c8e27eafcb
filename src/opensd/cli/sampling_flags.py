"""`opensd generate`'s sampler options (--eta, --s-noise, --s-churn, --s-tmin, --s-tmax and
--sampler-option NAME=VALUE for the rest), A1111's schedule settings (--sigma-min, --sigma-max, --rho,
--zero-terminal-snr and --schedule-option NAME=VALUE for the rest), the refiner (--refiner,
--refiner-switch, --refiner-hires-pass), and how --from fills them from an image."""
from __future__ import annotations

import argparse

from ..errors import InvalidArgument
from .common import float_arg

# flag dest -> sampler option; the options without a flag of their own go through --sampler-option
_OPTION_FLAGS = {"eta": "eta", "s_noise": "s_noise", "s_churn": "s_churn", "s_tmin": "s_tmin", "s_tmax": "s_tmax"}
_SCHEDULE_FLAGS = ("sigma_min", "sigma_max", "rho")  # schedule settings with a flag of their own


def add_flags(gen: argparse.ArgumentParser) -> None:
    g = gen.add_argument_group("sampler options (each sampler takes the ones it has; see docs)")
    g.add_argument("--eta", type=float_arg, help="noise added by ancestral/SDE samplers, DDIM, DPM fast/adaptive, "
                                                  "TCD (its gamma)")
    g.add_argument("--s-noise", type=float_arg, help="scale of the added noise (default 1)")
    g.add_argument("--s-churn", type=float_arg, help="Euler/Heun/DPM2 churn: noise added back each step (default 0)")
    g.add_argument("--s-tmin", type=float_arg, help="churn only at sigmas >= this (default 0)")
    g.add_argument("--s-tmax", type=float_arg, help="churn only at sigmas <= this (default: no limit)")
    g.add_argument("--sampler-option", action="append", default=[], metavar="NAME=VALUE",
                   help="any other sampler option, e.g. order=2 (UniPC, DPM adaptive), max_order=2 (DEIS), "
                        "rtol=0.01 (DPM adaptive); repeatable")
    n = gen.add_argument_group("noise schedule (A1111's settings of the same names)")
    n.add_argument("--sigma-min", type=float_arg, help="the schedule's smallest sigma (Karras, Exponential, KL Optimal, "
                                                       "SGM Uniform; default: the model's)")
    n.add_argument("--sigma-max", type=float_arg, help="the schedule's largest sigma (default: the model's)")
    n.add_argument("--rho", type=float_arg, help="Karras's rho (default 7)")
    n.add_argument("--zero-terminal-snr", action="store_true",
                   help="rescale the model's noise schedule to zero terminal SNR (for models trained so)")
    n.add_argument("--schedule-option", action="append", default=[], metavar="NAME=VALUE",
                   help="any other A1111 schedule setting, e.g. always_discard_next_to_last_sigma=true, "
                        "sgm_noise_multiplier=true, beta_dist_alpha=0.5, uni_pc_skip_type=logSNR, "
                        "use_downcasted_alpha_bar=true, use_old_karras_scheduler_sigmas=true, "
                        "enable_quantization=true; repeatable")
    r = gen.add_argument_group("refiner (A1111's refiner: sampling switches models part way)")
    r.add_argument("--refiner", metavar="FILE_OR_NAME", help="the checkpoint to finish sampling with")
    r.add_argument("--refiner-switch", type=float_arg, metavar="FRACTION",
                   help="switch when this fraction of the noise is removed (timestep 999..0; default 0.8)")
    r.add_argument("--refiner-switch-by-steps", dest="refiner_switch_by_sample_steps", action="store_true",
                   help="switch after that fraction of the pass's evaluations, not at a noise level (A1111's old "
                        "behaviour, its refiner_switch_by_sample_steps)")
    r.add_argument("--refiner-hires-pass", choices=["first pass", "second pass", "both passes"],
                   help="with --hires: which pass the refiner finishes (default: second pass)")


def sampler_options(args: argparse.Namespace) -> dict:
    """The sampler options the flags give."""
    out = {name: getattr(args, dest) for dest, name in _OPTION_FLAGS.items() if getattr(args, dest) is not None}
    return {**out, **_pairs(args.sampler_option, "sampler-option")}


def schedule_options(args: argparse.Namespace) -> dict:
    """A1111's schedule settings the flags give (checked when the generation starts)."""
    out = {name: getattr(args, name) for name in _SCHEDULE_FLAGS if getattr(args, name) is not None}
    if args.zero_terminal_snr:
        out["sd_noise_schedule"] = "Zero Terminal SNR"
    return {**out, **_pairs(args.schedule_option, "schedule-option")}


def _pairs(items: list[str], flag: str) -> dict:
    """NAME=VALUE items as {name: value} (numbers and true/false as such)."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise InvalidArgument(f"{flag}: {item!r} is not NAME=VALUE")
        out[name.strip()] = _value(text.strip())
    return out


def _value(text: str):
    if text in ("True", "False", "true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def refiner(args: argparse.Namespace, folders, open_pipe):
    """The Refiner the flags ask for (its checkpoint loaded by `open_pipe(path, vae)`), or None."""
    from ..pipeline.refiner import Refiner
    from .model_flags import resolve_model

    if args.refiner is None:
        for flag in ("refiner_switch", "refiner_hires_pass"):
            if getattr(args, flag) is not None:
                raise InvalidArgument(f"{flag.replace('_', '-')}: needs --refiner FILE_OR_NAME")
        return None
    path = resolve_model(folders, "checkpoints", args.refiner, "refiner")
    switch = 0.8 if args.refiner_switch is None else args.refiner_switch
    made = Refiner(None, switch, args.refiner_hires_pass or "second pass")
    made.check_settings()  # a bad fraction fails before the checkpoint loads
    return Refiner(open_pipe(path, None), made.switch_at, made.hires_pass)


def fill_from(args: argparse.Namespace, rec) -> None:
    """Set the sampler-option and refiner flags still unset from an image's Recorded parameters."""
    given = {name for name in _OPTION_FLAGS.values() if getattr(args, name) is not None}
    given |= {item.partition("=")[0].strip() for item in args.sampler_option}
    for name, value in rec.sampler_options.items():
        if name in given:
            continue
        if name in _OPTION_FLAGS:
            setattr(args, name, value)
        else:
            args.sampler_option.append(f"{name}={value}")
    given = {*(n for n in _SCHEDULE_FLAGS if getattr(args, n) is not None),
             *(item.partition("=")[0].strip() for item in args.schedule_option)}
    if args.zero_terminal_snr:
        given.add("sd_noise_schedule")
    for name, value in rec.schedule_options.items():
        if name in given:
            continue
        if name in _SCHEDULE_FLAGS:
            setattr(args, name, value)
        elif name == "sd_noise_schedule":
            args.zero_terminal_snr = value == "Zero Terminal SNR"
        else:
            args.schedule_option.append(f"{name}={value}")
    if rec.refiner is not None and args.refiner is None:
        args.refiner = rec.refiner["name"]
        if args.refiner_switch is None:
            args.refiner_switch = rec.refiner["switch_at"]
        if args.refiner_hires_pass is None:
            args.refiner_hires_pass = rec.refiner["hires_pass"]
