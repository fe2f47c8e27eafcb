"""`opensd generate`'s flags for A1111's evaluations without the negative prompt
(pipeline/cfg_skips.py): --s-min-uncond (A1111's "Negative Guidance minimum sigma", NGMS),
--s-min-uncond-all and --skip-early-cond, and how a prompt and negative prompt of different lengths
are batched (pipeline/cond_padding.py): --pad-conds, --pad-conds-v0. --from fills them from an
image's "NGMS", "NGMS all steps", "Skip Early CFG", "Pad conds" and "Pad conds v0" (their dests are
the Params names)."""
from __future__ import annotations

import argparse

from .common import float_arg


def add_flags(gen: argparse.ArgumentParser) -> None:
    g = gen.add_argument_group("negative prompt skipping (A1111's optimizations; faster, changes the image)")
    g.add_argument("--s-min-uncond", type=float_arg, metavar="SIGMA",
                   help="NGMS: below this sigma, every other evaluation runs without the negative prompt "
                        "(0 = off, the default)")
    g.add_argument("--s-min-uncond-all", action="store_true", help="NGMS on every evaluation, not every other")
    g.add_argument("--skip-early-cond", type=float_arg, metavar="FRACTION",
                   help="the first FRACTION (0..1) of each pass's evaluations run without the negative prompt "
                        "(0 = off, the default)")
    g.add_argument("--pad-conds", dest="pad_cond_uncond", action="store_true",
                   help="a prompt and negative prompt of different lengths: pad the shorter with empty prompts "
                        "and run both in one UNet call (default: two calls, as A1111)")
    g.add_argument("--pad-conds-v0", dest="pad_cond_uncond_v0", action="store_true",
                   help="as --pad-conds, but the negative repeats its last token, or is cut (A1111 before 1.6)")


def kwargs(args: argparse.Namespace) -> dict:
    out = {"s_min_uncond": args.s_min_uncond, "skip_early_cond": args.skip_early_cond,
           "s_min_uncond_all": args.s_min_uncond_all or None, "pad_cond_uncond": args.pad_cond_uncond or None,
           "pad_cond_uncond_v0": args.pad_cond_uncond_v0 or None}
    return {k: v for k, v in out.items() if v is not None}
