"""An image's A1111 parameters (infotext) turned back into the txt2img request that makes the same
pixels: seed, size, sampler, schedule, CFG, variation seed, CLIP skip, hires fix (with its own
sampler, schedule, prompts and checkpoint), the refiner and the model (a checkpoint found by its
hash, else by its name). What cannot be applied is listed, never silently dropped."""
from __future__ import annotations

from ..pipeline.infotext import parse_infotext
from ..pipeline.infotext_params import split_title

# infotext key -> (request field, type)
_FIELDS = {
    "Steps": ("steps", int), "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Size-1": ("width", int), "Size-2": ("height", int),
    "Variation seed": ("subseed", int), "Variation seed strength": ("subseed_strength", float),
    "Seed resize from-1": ("seed_resize_from_w", int), "Seed resize from-2": ("seed_resize_from_h", int),
    "Hires upscale": ("hr_scale", float), "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str), "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int), "Denoising strength": ("denoising_strength", float),
    "Hires sampler": ("hr_sampler_name", str), "Hires schedule type": ("hr_scheduler", str),
    "Hires prompt": ("hr_prompt", str), "Hires negative prompt": ("hr_negative_prompt", str),
    "Refiner switch at": ("refiner_switch_at", float),
}
# Keys that need no field: what they record is in the prompt (LoRA/TI tags) or handled below.
_KNOWN = {"Size", "Hires resize", "Hires checkpoint", "Refiner", "Seed resize from", "Model", "Model hash", "VAE",
          "VAE hash", "Clip skip", "Version", "Lora hashes", "TI hashes", "VAE Decoder", "VAE Encoder",
          "Reference images"}
# infotext key -> the A1111 setting it records (A1111 reads these back as override settings)
_SETTINGS = {"VAE Decoder": "sd_vae_decode_method", "VAE Encoder": "sd_vae_encode_method", "Emphasis": "emphasis"}
_NUMBER_SETTINGS = {"Token merging ratio": "token_merging_ratio", "Token merging ratio hr": "token_merging_ratio_hr"}


def request_from_infotext(text: str, checkpoints: list[tuple[str, str | None]]) -> tuple[dict, list[str]]:
    """(txt2img request fields, notes). `checkpoints` are (name, short hash or None) of the models
    available, to find the image's model."""
    prompt, negative, params = parse_infotext(text)
    request: dict = {"prompt": prompt, "negative_prompt": negative, "batch_size": 1, "n_iter": 1}
    notes: list[str] = []
    for key, (name, kind) in _FIELDS.items():
        if key in params:
            try:
                request[name] = kind(params[key])
            except ValueError:
                notes.append(f"{key}: {params[key]!r} is not a valid value; not applied")
    if request.get("scheduler") == "Automatic":
        del request["scheduler"]
    request["enable_hr"] = "Hires upscale" in params or "Hires resize" in params
    overrides = {}
    if "Clip skip" in params:
        try:
            overrides["CLIP_stop_at_last_layers"] = int(params["Clip skip"])
        except ValueError:
            notes.append(f"Clip skip: {params['Clip skip']!r} is not a whole number; not applied")
    model = _find_model(params.get("Model hash"), params.get("Model"), checkpoints)
    if model is not None:
        overrides["sd_model_checkpoint"] = model
    elif "Model" in params or "Model hash" in params:
        notes.append(f"Model: {params.get('Model', '')} [{params.get('Model hash', '')}] is not in the models "
                     "folder; the current model is used")
    for key, field, instead in (("Hires checkpoint", "hr_checkpoint_name", "the hires pass uses the model"),
                                ("Refiner", "refiner_checkpoint", "no refiner is used")):
        if params.get(key, "Use same checkpoint") == "Use same checkpoint" or (key == "Hires checkpoint"
                                                                              and not request["enable_hr"]):
            continue
        name, hash_ = split_title(params[key])
        found = _find_model(hash_, name, checkpoints)
        if found is not None:
            request[field] = found
        else:
            notes.append(f"{key}: {params[key]} is not in the models folder; {instead}")
    overrides["sd_vae"] = params.get("VAE", "None")  # no VAE recorded: the checkpoint's own
    overrides.update({setting: params[key] for key, setting in _SETTINGS.items() if key in params})
    for key, setting in _NUMBER_SETTINGS.items():
        if key in params:
            try:
                overrides[setting] = float(params[key])
            except ValueError:
                notes.append(f"{key}: {params[key]!r} is not a number; not applied")
    request["override_settings"] = overrides
    if "Reference images" in params:  # their count only (pipeline/infotext_params.py)
        notes.append(f"Reference images: it was made with {params['Reference images']}, which the image does not "
                     "hold; add them again")
    unknown = sorted(k for k in params if k not in _FIELDS and k not in _KNOWN and k not in _NUMBER_SETTINGS)
    if unknown:
        notes.append("not applied: " + ", ".join(unknown))
    return request, notes


def _find_model(hash_: str | None, name: str | None, checkpoints: list[tuple[str, str | None]]) -> str | None:
    if hash_:
        for model, short in checkpoints:
            if short and short.lower().startswith(hash_.lower()):
                return model
    if name:
        for model, _ in checkpoints:
            stem = model.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            if name in (model, stem):
                return model
    return None


def with_infotext(req, checkpoints: list[tuple[str, str | None]]):
    """A1111's `infotext` request field (its api.apply_infotext): the parameters it records fill the
    fields the request leaves unset, and its settings the override_settings the request does not
    name. (the request, notes on what could not be applied)."""
    from pydantic import ValidationError

    from ..errors import InvalidArgument

    found, notes = request_from_infotext(req.infotext, checkpoints)
    _, _, params = parse_infotext(req.infotext)
    given = req.model_fields_set
    fields = {k: v for k, v in found.items() if k in type(req).model_fields and k not in given
              and k not in ("batch_size", "n_iter", "override_settings")}
    settings = dict(found["override_settings"])
    if "VAE" not in params:
        settings.pop("sd_vae", None)  # request_from_infotext's "the checkpoint's own" is for remaking an image
    merged = {**req.model_dump(exclude_unset=True), **fields}
    merged["override_settings"] = {**settings, **(req.override_settings or {})}
    try:
        return type(req).model_validate(merged), notes
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidArgument(f"infotext: {where}: {first['msg']}") from None
