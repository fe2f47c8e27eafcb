"""What an A1111 request may ask for that opensd accepts but does not do, in one place.

A client is never left guessing: each such field or setting, when it asks for something other
than A1111's "off" value, is named in the response's info, in "unsupported_fields" (the names) and
"opensd_warnings" ("name: what happens instead"). Where A1111 itself refuses a request (a script
or checkpoint it does not have), opensd refuses it the same way before any work
(a1111_scripts, a1111_run.plan); everything else listed here A1111 would run, so we run and say.
"""
from __future__ import annotations

# request field -> (values meaning "off", what happens here instead)
REQUEST_FIELDS: dict[str, tuple[tuple, str]] = {
    "restore_faces": ((None, False), "no face restoration model here; images are returned as generated"),
    "force_task_id": ((None, ""), "task ids are not used; every job has its own id (/opensd/v1/jobs)"),
}

# A1111 setting -> what happens here when it is not A1111's default (settings that change A1111's
# images and that opensd does not act on; the ones it acts on are read in a1111_run). ddim_discretize
# is not here: A1111 1.6+ accepts it and does nothing with it (its DDIM is a timestep sampler).
SETTINGS: dict[str, str] = {
    "face_restoration": REQUEST_FIELDS["restore_faces"][1],
    # A1111 then seeds one noise tree per batch from torch's global generator: batch-dependent noise
    "no_dpmpp_sde_batch_determinism": "not done; DPM++ SDE's noise stays tied to each image's seed, so an "
                                      "image does not depend on its batch",
    "lora_functional": "not done; LoRAs are merged into the weights, which gives the same images up to "
                       "rounding",
}

# Always-on scripts of a stock A1111 (core and built-in extensions) that opensd does not have:
# A1111 would run them, so naming one is reported, not refused.
A1111_ALWAYSON = {"seed": "use the request's seed fields",
                  "sampler": "use the request's sampler fields", "comments": "comments are not used",
                  "extra options": "use override_settings"}


def request_gaps(req) -> list[tuple[str, str]]:
    """(field, what happens instead) for the request's fields that ask for something not done here."""
    data = req.model_dump()
    gaps = [(name, message) for name, (off, message) in REQUEST_FIELDS.items()
            if name in req.model_fields_set and data.get(name) not in off]
    gaps += [(name, "not an AUTOMATIC1111 field; ignored") for name in sorted(req.model_extra or {})]
    if data.get("latent_mask") and not data.get("mask"):
        gaps.append(("latent_mask", "used with a mask only, as in A1111; ignored"))
    for name in (req.alwayson_scripts or {}):
        if name.lower() in A1111_ALWAYSON:
            gaps.append((f"alwayson_scripts.{name}", f"not available here: {A1111_ALWAYSON[name.lower()]}"))
    return gaps


def setting_gaps(settings: dict, overrides: dict | None, defaults: dict) -> list[tuple[str, str]]:
    """(setting, what happens instead) for settings in effect that A1111 would act on and we do not."""
    overrides = overrides or {}
    return [(f"override_settings.{key}" if key in overrides else key, message)
            for key, message in SETTINGS.items() if settings.get(key) != defaults.get(key)]


def info_fields(gaps: list[tuple[str, str]]) -> dict:
    """The entries of a response's info that report the gaps."""
    return {"unsupported_fields": sorted({name for name, _ in gaps}),
            "opensd_warnings": [f"{name}: {message}" for name, message in gaps]}
