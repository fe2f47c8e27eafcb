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
    "seed_resize_from_h": ((-1, 0), "seed resize is not implemented; the noise is drawn at the image size"),
    "seed_resize_from_w": ((-1, 0), "seed resize is not implemented; the noise is drawn at the image size"),
    "restore_faces": ((None, False), "no face restoration model here; images are returned as generated"),
    "hr_checkpoint_name": ((None, "", "Use same checkpoint"), "a separate hires checkpoint is not implemented; "
                                                              "the hires pass uses the main model"),
    "firstphase_width": ((0,), "ignored (A1111 before 1.0); the first pass uses width and height"),
    "firstphase_height": ((0,), "ignored (A1111 before 1.0); the first pass uses width and height"),
    "initial_noise_multiplier": ((None, 1.0), "not implemented; img2img noise is used at full strength"),
    "latent_mask": ((None, ""), "not implemented; the mask is used for the latents too"),
    "infotext": ((None, ""), "not applied; send its parameters as the request's fields"),
    "firstpass_image": ((None, ""), "not implemented; the first pass is generated"),
    "force_task_id": ((None, ""), "task ids are not used; every job has its own id (/opensd/v1/jobs)"),
}

# A1111 setting -> what happens here when it is not A1111's default (settings that change A1111's
# images and that opensd does not act on; the ones it acts on are read in a1111_run).
_NOT_IMPLEMENTED = "not implemented"
_TOKEN_MERGING = "token merging is not implemented"
_HYPERTILE = "Hypertile is not implemented"
_SIGMA_RANGE = "not implemented; schedules use the model's own sigma range"
SETTINGS: dict[str, str] = {
    "face_restoration": REQUEST_FIELDS["restore_faces"][1],
    "initial_noise_multiplier": REQUEST_FIELDS["initial_noise_multiplier"][1],
    "img2img_extra_noise": "extra img2img noise is not implemented",
    "img2img_color_correction": "img2img color correction is not implemented",
    "img2img_fix_steps": "not implemented; img2img runs steps x denoising strength steps (A1111's default)",
    "inpainting_mask_weight": "not implemented; inpainting models get the full mask",
    "token_merging_ratio": _TOKEN_MERGING,
    "token_merging_ratio_img2img": _TOKEN_MERGING,
    "token_merging_ratio_hr": _TOKEN_MERGING,
    "emphasis": "only A1111's 'Original' emphasis is implemented",
    "use_old_emphasis_implementation": _NOT_IMPLEMENTED,
    "use_old_karras_scheduler_sigmas": _NOT_IMPLEMENTED,
    "no_dpmpp_sde_batch_determinism": _NOT_IMPLEMENTED,
    "use_old_hires_fix_width_height": _NOT_IMPLEMENTED,
    "hires_fix_use_firstpass_conds": _NOT_IMPLEMENTED,
    "use_old_scheduling": "not implemented; prompt editing uses A1111's current timelines",
    "use_downcasted_alpha_bar": _NOT_IMPLEMENTED,
    "sd_noise_schedule": "only the model's own noise schedule is implemented",
    "always_discard_next_to_last_sigma": _NOT_IMPLEMENTED,
    "sgm_noise_multiplier": _NOT_IMPLEMENTED,
    "sigma_min": _SIGMA_RANGE,
    "sigma_max": _SIGMA_RANGE,
    "rho": "not implemented; the Karras schedule uses rho 7",
    "enable_quantization": _NOT_IMPLEMENTED,
    "sdxl_clip_l_skip": _NOT_IMPLEMENTED,
    "sdxl_crop_top": "not implemented; SDXL's crop coordinates are 0",
    "sdxl_crop_left": "not implemented; SDXL's crop coordinates are 0",
    "uni_pc_skip_type": "only 'time_uniform' is implemented",
    "ddim_discretize": "only 'uniform' is implemented",
    "comma_padding_backtrack": _NOT_IMPLEMENTED,
    "hypertile_enable_unet": _HYPERTILE,
    "hypertile_enable_unet_secondpass": _HYPERTILE,
    "hypertile_enable_vae": _HYPERTILE,
    "beta_dist_alpha": "not implemented; the Beta schedule uses 0.6",
    "beta_dist_beta": "not implemented; the Beta schedule uses 0.6",
    "enable_pnginfo": "not implemented; images always carry their infotext",
    "lora_functional": _NOT_IMPLEMENTED,
    "refiner_switch_by_sample_steps": "not implemented; the refiner switches at a noise level (A1111's default)",
}

# Always-on scripts of a stock A1111 (core and built-in extensions) that opensd does not have:
# A1111 would run them, so naming one is reported, not refused.
A1111_ALWAYSON = {"seed": "use the request's seed fields",
                  "sampler": "use the request's sampler fields", "comments": "comments are not used",
                  "hypertile": "Hypertile is not implemented", "soft inpainting": "soft inpainting is not "
                  "implemented", "extra options": "use override_settings"}


def request_gaps(req) -> list[tuple[str, str]]:
    """(field, what happens instead) for the request's fields that ask for something not done here."""
    data = req.model_dump()
    gaps = [(name, message) for name, (off, message) in REQUEST_FIELDS.items()
            if name in req.model_fields_set and data.get(name) not in off]
    gaps += [(name, "not an AUTOMATIC1111 field; ignored") for name in sorted(req.model_extra or {})]
    if data.get("mask_blur") is None and data.get("mask_blur_x", 4) != data.get("mask_blur_y", 4):
        gaps.append(("mask_blur_x", "separate x and y blur is not implemented; the mask is blurred by the larger"))
    if len(data.get("init_images") or []) > 1:
        gaps.append(("init_images[1:]", "every image of the batch starts from the first init image"))
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
