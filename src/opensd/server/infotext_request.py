"""An image's A1111 parameters (infotext) turned back into the txt2img request that makes the same
pixels: seed, size, sampler, schedule, CFG, variation seed, CLIP skip, hires fix and the model
(found by its hash, else by its name). What cannot be applied is listed, never silently dropped."""
from __future__ import annotations

from ..pipeline.infotext import parse_infotext

# infotext key -> (request field, type)
_FIELDS = {
    "Steps": ("steps", int), "Sampler": ("sampler_name", str), "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float), "Seed": ("seed", int), "Size-1": ("width", int), "Size-2": ("height", int),
    "Variation seed": ("subseed", int), "Variation seed strength": ("subseed_strength", float),
    "Hires upscale": ("hr_scale", float), "Hires steps": ("hr_second_pass_steps", int),
    "Hires upscaler": ("hr_upscaler", str), "Hires resize-1": ("hr_resize_x", int),
    "Hires resize-2": ("hr_resize_y", int), "Denoising strength": ("denoising_strength", float),
}
# Keys that need no field: what they record is in the prompt (LoRA/TI tags) or handled below.
_KNOWN = {"Size", "Hires resize", "Model", "Model hash", "VAE", "VAE hash", "Clip skip", "Version",
          "Lora hashes", "TI hashes", "VAE Decoder", "VAE Encoder"}
# infotext key -> the A1111 setting it records (A1111 reads these back as override settings)
_SETTINGS = {"VAE Decoder": "sd_vae_decode_method", "VAE Encoder": "sd_vae_encode_method"}
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
    overrides["sd_vae"] = params.get("VAE", "None")  # no VAE recorded: the checkpoint's own
    overrides.update({setting: params[key] for key, setting in _SETTINGS.items() if key in params})
    for key, setting in _NUMBER_SETTINGS.items():
        if key in params:
            try:
                overrides[setting] = float(params[key])
            except ValueError:
                notes.append(f"{key}: {params[key]!r} is not a number; not applied")
    request["override_settings"] = overrides
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
