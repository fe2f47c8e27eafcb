"""`opensd generate --from IMAGE`: fill the flags the user did not give from the image's infotext,
and after generating, say exactly what differs from the image (what could not be reproduced)."""
from __future__ import annotations

import argparse
import sys

from ..errors import InvalidArgument
from .common import read_image_infotext
from .sampling_flags import fill_from

# Params field -> generate's flag (its argparse dest), where the names differ
PARAM_DEST = {"negative_prompt": "negative", "batch_size": "batch", "inpaint_full_res_padding": "inpaint_padding",
              "refiner_switch_at": "refiner_switch", "hires_fix_refiner_pass": "refiner_hires_pass",
              "distilled_guidance": "guidance", "seed_resize_from_w": "seed_resize_from",
              "seed_resize_from_h": "seed_resize_from"}
# Recorded hires field -> flag
_HIRES_FLAG = {"negative_prompt": "hires_negative"}
# Recorded keys that are not settings: the version, and a dynamic prompt's template (the image's
# prompt is what it chose, so it reproduces without the template).
_NOT_SETTINGS = ("Version", "Template", "Negative Template")
# What the user can pass to bring a recorded thing back.
_HINTS = {"VAE": "--vae FILE", "VAE hash": "--vae FILE", "TI hashes": "--embeddings-dir FOLDER",
          "Lora hashes": "--loras-dir FOLDER or --lora FILE", "Extra LoRAs": "--loras-dir FOLDER or --lora FILE",
          "Model hash": "--model FILE", "Refiner": "--refiner FILE (or its name, with a models folder)",
          "Hires checkpoint": "--hires-checkpoint FILE (or its name, with a models folder)",
          "VAE Decoder": "--taesd FILE_OR_FOLDER", "VAE Encoder": "--taesd FILE_OR_FOLDER"}


def apply_infotext(args: argparse.Namespace):
    """Set every flag still unset from the image's parameters; return what the image records."""
    from ..pipeline.infotext import parse_infotext
    from ..pipeline.infotext_params import number_text, recorded

    text = read_image_infotext(args.from_image, "from")
    if text is None:
        raise InvalidArgument(f"from: {args.from_image} carries no generation parameters")
    prompt, negative, params = parse_infotext(text)
    rec = recorded(prompt, negative, params)
    fill = {"prompt": prompt, "negative": negative}
    settings = dict(rec.settings)
    resize = settings.pop("seed_resize_from_w", None), settings.pop("seed_resize_from_h", None)
    fill.update({PARAM_DEST.get(k, k): v for k, v in settings.items()})
    fill["seed_resize_from"] = resize if None not in resize else None  # one flag, --seed-resize-from WxH
    fill.update(vae_decoder=rec.vae_decoder, vae_encoder=rec.vae_encoder)
    if not args.compile and args.backend == "torch":  # step caching is for the eager PyTorch UNet
        fill["deep_cache"] = rec.deep_cache
    if rec.hires is not None:
        fill["hires"] = True
        fill.update({_HIRES_FLAG.get(k, f"hires_{k}"): v for k, v in rec.hires.items()})
        if rec.hires_checkpoint is not None:
            fill["hires_checkpoint"] = rec.hires_checkpoint[0]
    for name, value in fill.items():
        if getattr(args, name) in (None, False) and value not in (None, "", False):
            setattr(args, name, value)
    fill_from(args, rec)
    if rec.soft_inpainting is not None:  # the --soft-* flags given now win, one by one
        args.soft_inpainting = True
        for name, value in vars(rec.soft_inpainting).items():
            if getattr(args, f"soft_{name}") is None:
                setattr(args, f"soft_{name}", value)
    if not args.lora and rec.extra_loras:  # --lora given now wins over the recorded ones
        args.lora = [f"{name}:{number_text(unet)}:{number_text(te)}" for name, unet, te in rec.extra_loras]
    if not args.hypernet and rec.extra_hypernets:
        args.hypernet = [f"{name}:{number_text(s)}" for name, s in rec.extra_hypernets]
    return params


def report_differences(source: dict, made: str) -> None:
    """One line per infotext key whose value differs between the image and this run."""
    from ..pipeline.infotext import parse_infotext

    _, _, now = parse_infotext(made)
    for key in sorted(set(source) | set(now), key=lambda k: (k not in source, k)):
        if key in _NOT_SETTINGS or key.endswith(("-1", "-2")) or source.get(key) == now.get(key):
            continue
        hint = _HINTS.get(key)
        if key.startswith("ControlNet "):
            hint = "--control MODEL,IMAGE,... (the control image is not stored in the image)"
        fix = f"; to reproduce it, pass {hint}" if hint and key in source else ""
        print(f"opensd: from: {key} differs: the image has {source.get(key, '(none)')!r}, this run "
              f"{now.get(key, '(none)')!r}{fix}", file=sys.stderr)


def missing_lora(name: str) -> InvalidArgument:
    return InvalidArgument(f"from: the image applied LoRA {name!r} apart from its prompt: give --loras-dir "
                           "FOLDER that holds it, or --lora PATH")
