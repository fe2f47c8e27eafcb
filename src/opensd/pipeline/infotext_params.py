"""One generated image's A1111 parameters: built here for every face (the CLI and the A1111 API
write the same text for the same generation), and read back here for `opensd generate --from`.

What A1111 records is written under A1111's keys: hires fix ("Hires upscale", "Hires sampler",
"Hires prompt", ...), "VAE"/"VAE hash", "Lora hashes", "TI hashes", the inpainting keys, and
ControlNet units as its ControlNet extension writes them (``ControlNet 0: "Module: canny, Model:
name [hash], Weight: 1, ..."``). One thing A1111 cannot record is ours: LoRAs applied apart from the
prompt (``opensd generate --lora``) go under "Extra LoRAs" (``name: unet/te``), so --from can apply
them again; A1111 shows the key and ignores it. A prompt chosen from a template (wildcards, `{a|b}`:
opensd.pipeline.dynamic_batch) keeps the template under "Template" / "Negative Template", the keys
sd-dynamic-prompts writes.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from ..sampling import names, schedule_options
from ..sampling.schedules import DiscreteSchedule
from ..text.prompt_parser import EMPHASIS_LABELS, emphasis_id, extract_extra_networks, prompt_schedule, split_and
from ..upscale import label as upscaler_label
from ..upscale import latent_mode
from . import infotext_sampler
from .infotext import format_infotext, generation_params
from .params import Params
from .soft_inpaint_settings import SoftInpainting

EXTRA_LORAS = "Extra LoRAs"
EXTRA_HYPERNETS = "Extra hypernets"  # ours: --hypernet's, which no prompt tag records (name: strength)
DEEP_CACHE = "DeepCache interval"  # ours: step caching (models/deep_cache.py) has no A1111 key
# The ControlNet extension's labels (ours -> its).
CONTROL_RESIZE = {"just resize": "Just Resize", "crop and resize": "Crop and Resize",
                  "resize and fill": "Resize and Fill"}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")


def image_infotext(pipe, image, *, img2img: bool = False, mask: bool = False, model_hash: str | None = None,
                   vae: Path | None = None, controls: Sequence = (), extra_loras: Sequence = (),
                   extra_hypernets: Sequence = ()) -> str:
    """The infotext of ``image``, one result of ``pipe`` (its ``info`` holds the Params it was made
    with and its seed). ``img2img``/``mask``: the mode it ran in; ``model_hash``: the checkpoint's
    short hash if known; ``vae``: a standalone VAE file used; ``controls``: the ControlSpecs applied;
    ``extra_loras``: the LoraSpecs set apart from the prompt (Pipeline.set_loras); ``extra_hypernets``
    the (path, strength) pairs of Pipeline.set_hypernets."""
    from ..library.hashes import embedding_hash, model_hash as file_hash

    p: Params = image.info["params"]
    h = p.hires if not img2img else None
    sampler, schedule = pipe.sampler_and_schedule(p)
    extra: dict[str, Any] = _sampler_params(p, sampler)
    extra.update(_schedule_params(pipe, p, sampler, schedule, not img2img))
    extra.update(_token_merging_params(p, h))
    if h is not None:
        extra.update(_hires_params(p, sampler, schedule))
        if image.info.get("hires_model") is not None:
            extra["Hires checkpoint"] = checkpoint_title(image.info["hires_model"])
    if img2img and mask:
        blur_y = p.mask_blur if p.mask_blur_y is None else p.mask_blur_y  # A1111 writes one blur, or none
        extra.update({"Mask blur": p.mask_blur if blur_y == p.mask_blur else None,
                      "Mask mode": "Inpaint not masked" if p.invert_mask else None,
                      "Inpaint area": "Only masked" if p.inpaint_full_res else None,
                      "Masked area padding": p.inpaint_full_res_padding if p.inpaint_full_res else None,
                      "Masked content": None if p.inpainting_fill == "original" else p.inpainting_fill})
        if p.soft_inpainting is not None:
            extra.update(p.soft_inpainting.infotext())
    extra.update(_img2img_params(pipe, p, img2img, h is not None))
    extra.update(_refiner_params(image.info.get("refiner"), h is not None))
    # A1111 records its old refiner switch whenever the setting is on, with a refiner or not
    extra["Refiner switch by sampling steps"] = True if p.refiner_switch_by_sample_steps else None
    extra["Old prompt editing timelines"] = True if p.old_scheduling and _old_timelines_differ(p, h) else None
    if pipe.config.distilled_guidance:  # Forge's key; the shift only when set (the model's own otherwise)
        extra["Distilled CFG Scale"] = pipe.family.default_guidance if p.distilled_guidance is None else p.distilled_guidance
    extra["Shift"] = p.shift
    extra["Reference images"] = image.info.get("references")  # their count (Kontext/klein edits), not the images
    extra.update(image.info.get("cfg_skips") or {})  # "NGMS", "Skip Early CFG": only when applied (cfg_skips.py)
    extra.update(_speed_params(pipe, img2img or (h is not None and latent_mode(h.upscaler) is None)))
    for i, spec in enumerate(controls):
        extra[f"ControlNet {i}"] = control_unit_text(spec)
    extra.update({"Template": image.info.get("template"), "Negative Template": image.info.get("negative_template")})
    extra["Emphasis"] = _emphasis(p)
    if extra_loras:
        extra[EXTRA_LORAS] = {s.path.stem: f"{number_text(s.unet)}/{number_text(s.te_strength)}" for s in extra_loras}
    if extra_hypernets:
        extra[EXTRA_HYPERNETS] = {Path(path).stem: number_text(s) for path, s in extra_hypernets}
    ti = {e.name: embedding_hash(e.path) for e in used_embeddings(pipe, _prompts(p)) if e.path is not None}
    params = generation_params(
        steps=p.steps, sampler=sampler, cfg=p.cfg, seed=image.info["seed"], width=p.width, height=p.height,
        schedule=_schedule_or_none(sampler, schedule), model=pipe.name, model_hash=model_hash,
        vae=vae.name if vae is not None else None, vae_hash=file_hash(vae) if vae is not None else None,
        variation_seed=image.info.get("subseed"), variation_seed_strength=p.subseed_strength or 0.0,
        denoising_strength=p.strength if img2img else (h.denoise if h is not None else None),
        clip_skip=p.clip_skip, hires_upscale=h.scale if h is not None and not (h.width or h.height) else None,
        hires_steps=h.steps if h is not None else None,
        hires_upscaler=upscaler_label(h.upscaler) if h is not None else None,
        lora_hashes=pipe.lora_hashes() or None, ti_hashes=ti or None, tiling=p.tiling,
        extra={k: v for k, v in extra.items() if v is not None})
    return format_infotext(p.prompt, p.negative_prompt, params)


def _sampler_params(p: Params, sampler: str) -> dict[str, Any]:
    """The sampler options this sampler took (when off their defaults), ENSD and the seed resize,
    as A1111 writes them."""
    out = infotext_sampler.written(sampler, p.sampler_options)
    if p.noise_seed_delta:
        out["ENSD"] = p.noise_seed_delta
    resize = p.seed_resize()
    if resize is not None:
        out["Seed resize from"] = f"{resize[0]}x{resize[1]}"
    return out


def _emphasis(p: Params) -> str | None:
    """A1111's "Emphasis" key: its setting's name when not "Original" and a text it encoded (the
    prompts after tag removal, AND and prompt editing) holds "(" or "[", as A1111 writes it."""
    if p.emphasis == "original" or p.use_old_emphasis_implementation:  # A1111's old path writes no key
        return None
    steps = p.steps
    for prompt in _prompts(p):
        for part, _ in split_and(extract_extra_networks(prompt)[0]):
            if any("(" in text or "[" in text for _, text in prompt_schedule(part, steps)):
                return EMPHASIS_LABELS[p.emphasis]
    return None


def _schedule_params(pipe, p: Params, sampler: str, schedule: str, txt2img: bool) -> dict[str, Any]:
    """A1111's schedule settings this run took (schedule_options.py), under A1111's keys, for the
    first pass and a hires pass's own sampler and schedule."""
    if not p.schedule_options:
        return {}
    ms = pipe.model_sampling(p.width, p.height, p.shift)
    options = p.schedule_options
    if not isinstance(ms.schedule, DiscreteSchedule):  # flow models have no alphas_cumprod to rescale
        options = {k: v for k, v in options.items() if k not in schedule_options.MODEL_SETTINGS}
    runs = [(sampler, schedule, txt2img)]
    if p.hires is not None and txt2img:
        runs.append((*names.resolve(p.hires.sampler or p.sampler, p.hires.scheduler or p.scheduler), False))
    out: dict[str, Any] = {}
    for s, sched, first in runs:  # A1111's UniPC has no discard of its own; its "always" is written
        own = s in names.DISCARD_PENULTIMATE and s != "uni_pc"
        out.update(schedule_options.written(s, sched, options, first, own, ms.sigma_min, ms.sigma_max))
    return out


def _img2img_params(pipe, p: Params, img2img: bool, hires: bool) -> dict[str, Any]:
    """A1111's img2img settings where it writes them: the noise multiplier in img2img, the extra
    noise wherever an img2img-style pass ran (img2img, the hires pass), and the conditional mask
    weight whenever an inpainting model made the image (default included, as A1111), the image CFG
    scale whenever an edit (InstructPix2Pix) model made one from an image with one set."""
    return {"Conditional mask weight": p.mask_weight if pipe.config.inpainting else None,
            "Image CFG scale": p.image_cfg_scale if img2img and pipe.config.edit else None,
            "Noise multiplier": p.noise_multiplier if img2img and p.noise_multiplier != 1 else None,
            "Extra noise": p.extra_noise if (img2img or hires) and p.extra_noise > 0 else None}


def _token_merging_params(p: Params, h) -> dict[str, Any]:
    """A1111's keys for the token merging ratio of each pass, when not 0 (the hires pass's is the
    first pass's unless set, and written only for a hires run, as A1111 does)."""
    hires = None if h is None else (h.token_merging or p.token_merging)
    return {"Token merging ratio": p.token_merging or None, "Token merging ratio hr": hires or None}


def _speed_params(pipe, encoded: bool) -> dict[str, Any]:
    """A tiny autoencoder in place of the VAE under A1111's keys ("VAE Encoder"/"VAE Decoder":
    "TAESD"; the encoder only where an image was encoded), and step caching under ours."""
    from ..models.deep_cache import deep_cache_of

    cache = deep_cache_of(pipe.family.network(pipe.model))
    return {"VAE Encoder": "TAESD" if encoded and pipe.vae_encoder == "taesd" else None,
            "VAE Decoder": "TAESD" if pipe.vae_decoder == "taesd" else None,
            DEEP_CACHE: cache.interval if cache is not None else None}


def _refiner_params(refiner, hires: bool) -> dict[str, Any]:
    """A1111's keys for a refiner that took over (pipeline/refiner.py): "Refiner: name [hash]"."""
    if refiner is None:
        return {}
    return {"Refiner": checkpoint_title(refiner.pipe), "Refiner switch at": refiner.switch_at,
            "Hires refiner": refiner.hires_pass if hires and refiner.hires_pass != "second pass" else None}


def checkpoint_title(pipe) -> str:
    """A checkpoint as A1111 names it in infotext (its short_title): "name [short hash]"; a
    diffusers folder, which has no file hash, by its name."""
    from ..library.hashes import model_hash as file_hash

    path = pipe.loaded.path
    return f"{pipe.name} [{file_hash(path)}]" if path.is_file() else pipe.name


def split_title(title: str) -> tuple[str, str | None]:
    """(name, short hash or None) of a "name [hash]" title as checkpoint_title writes it."""
    name, _, tag = title.rpartition(" [")
    return (name, tag[:-1]) if name and tag.endswith("]") else (title, None)


def _schedule_or_none(sampler: str, schedule: str) -> str | None:
    # A1111 writes no "Schedule type" for a sampler's own default schedule.
    return None if names.schedule_label(sampler, schedule) == "Automatic" else schedule


def _hires_params(p: Params, sampler: str, schedule: str) -> dict[str, Any]:
    h = p.hires
    out: dict[str, Any] = {}
    if h.width or h.height:
        w, hh = h.target(p.width, p.height)
        out["Hires resize"] = f"{w}x{hh}"
    hs, hsched = names.resolve(h.sampler or p.sampler, h.scheduler or p.scheduler)
    if hs != sampler:
        out["Hires sampler"] = names.SAMPLER_LABELS[hs]
    if hsched != schedule:
        out["Hires schedule type"] = names.SCHEDULER_LABELS.get(hsched, hsched)
    if h.prompt is not None and h.prompt != p.prompt:
        out["Hires prompt"] = h.prompt
    if h.negative_prompt is not None and h.negative_prompt != p.negative_prompt:
        out["Hires negative prompt"] = h.negative_prompt
    return out


def _old_timelines_differ(p: Params, h) -> bool:
    """Whether A1111's old prompt editing timelines change any prompt of the run (it records the
    setting only then)."""
    runs = [(t, None) for t in (p.prompt, p.negative_prompt)]
    if h is not None:
        runs += [(t, h.steps or p.steps) for t in (h.prompt or p.prompt, h.negative_prompt or p.negative_prompt)]
    return any(prompt_schedule(t, p.steps, hires, False) != prompt_schedule(t, p.steps, hires, True)
               for t, hires in runs)


def _prompts(p: Params) -> list[str]:
    texts = [p.prompt, p.negative_prompt]
    if p.hires is not None:
        texts += [t for t in (p.hires.prompt, p.hires.negative_prompt) if t]
    return texts


def used_embeddings(pipe, texts: Sequence[str]) -> list:
    """The textual-inversion embeddings these prompts name, each once, in order of appearance."""
    db = pipe.embeddings
    found: dict[str, Any] = {}
    if not db:
        return []
    for text in texts:
        ids = pipe.tokenizer.encode(text)
        pos = 0
        while pos < len(ids):
            hit = db.find(pipe.tokenizer, ids, pos)
            if hit is None:
                pos += 1
                continue
            found.setdefault(hit[0].name, hit[0])
            pos += hit[1]
    return list(found.values())


def control_unit_text(spec) -> str:
    """One ControlNet unit in the ControlNet extension's form ("Module: canny, Model: name [hash], ...")."""
    from ..library.hashes import model_hash as file_hash

    net = spec.model
    model = f"{net.name} [{file_hash(net.path)[:8]}]" if net.path.is_file() else net.name
    mode = 2 if spec.guess_mode else 1 if spec.soft_injection else 0
    fields = {"Module": spec.preprocessor, "Model": model, "Weight": spec.weight,
              "Resize Mode": CONTROL_RESIZE[spec.resize_mode], "Guidance Start": spec.start,
              "Guidance End": spec.end, "Control Mode": CONTROL_MODES[mode]}
    # Its reader splits on "," and ": ", so neither may appear inside a value.
    return ", ".join(f"{k}: {_plain(v)}" for k, v in fields.items())


def _plain(value: Any) -> str:
    text = number_text(value) if isinstance(value, float) else str(value)
    return text.replace(",", " ").replace(": ", " ")


def number_text(value: float) -> str:
    """A number as A1111 writes it (no ".0"), every digit kept so that it reads back the same."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# ------------------------------------------------------------------------------------- read back

@dataclass
class Recorded:
    """What an image's infotext says about how it was made, in our terms (for --from)."""
    prompt: str
    negative_prompt: str
    settings: dict[str, Any]                     # Params field -> value (no "hires")
    hires: dict[str, Any] | None = None          # Hires field -> value, when a hires pass ran
    model: tuple[str | None, str | None] = (None, None)   # (name, short hash)
    vae: tuple[str | None, str | None] = (None, None)
    lora_hashes: dict[str, str] = field(default_factory=dict)
    extra_loras: list[tuple[str, float, float]] = field(default_factory=list)  # (name, unet, te)
    extra_hypernets: list[tuple[str, float]] = field(default_factory=list)  # (name, strength)
    ti_hashes: dict[str, str] = field(default_factory=dict)
    controls: list[str] = field(default_factory=list)   # "ControlNet N" values, in order
    sampler_options: dict[str, Any] = field(default_factory=dict)
    schedule_options: dict[str, Any] = field(default_factory=dict)   # A1111's schedule settings
    refiner: dict[str, Any] | None = None   # name, hash, switch_at, hires_pass
    hires_checkpoint: tuple[str, str | None] | None = None  # (name, short hash) of the second pass's model
    vae_decoder: str = "full"                # "taesd" when the tiny autoencoder decoded / encoded
    vae_encoder: str = "full"
    deep_cache: int | None = None            # the step-caching interval
    soft_inpainting: SoftInpainting | None = None


# infotext key -> (Params field, type) for the plain settings
_SETTINGS = {"Steps": ("steps", int), "CFG scale": ("cfg", float), "Seed": ("seed", int),
             "Image CFG scale": ("image_cfg_scale", float),
             "Sampler": ("sampler", str), "Schedule type": ("scheduler", str), "Clip skip": ("clip_skip", int),
             "Variation seed": ("subseed", int), "Variation seed strength": ("subseed_strength", float),
             "Size-1": ("width", int), "Size-2": ("height", int), "Mask blur": ("mask_blur", int),
             "Masked area padding": ("inpaint_full_res_padding", int), "Masked content": ("inpainting_fill", str),
             "Distilled CFG Scale": ("distilled_guidance", float), "Shift": ("shift", float),
             "Seed resize from-1": ("seed_resize_from_w", int), "Seed resize from-2": ("seed_resize_from_h", int),
             "Emphasis": ("emphasis", emphasis_id),
             "Noise multiplier": ("noise_multiplier", float), "Extra noise": ("extra_noise", float),
             "Conditional mask weight": ("mask_weight", float), "Token merging ratio": ("token_merging", float),
             "NGMS": ("s_min_uncond", float), "Skip Early CFG": ("skip_early_cond", float)}
_HIRES = {"Hires upscale": ("scale", float), "Hires steps": ("steps", int), "Hires upscaler": ("upscaler", str),
          "Hires resize-1": ("width", int), "Hires resize-2": ("height", int), "Hires sampler": ("sampler", str),
          "Hires schedule type": ("scheduler", str), "Hires prompt": ("prompt", str),
          "Hires negative prompt": ("negative_prompt", str), "Token merging ratio hr": ("token_merging", float)}


def recorded(prompt: str, negative_prompt: str, params: Mapping[str, str], where: str = "from") -> Recorded:
    """Read parse_infotext's result back into settings; a value that does not parse names its key."""
    def value(key: str, kind):
        try:
            return kind(params[key])
        except ValueError:
            raise InvalidArgument(f"{where}: {key}: {params[key]!r} is not a valid value") from None

    settings = {name: value(key, kind) for key, (name, kind) in _SETTINGS.items() if key in params}
    if "Hypernet" in params:  # A1111 before 1.0 kept it as a setting; it reads that back as a prompt tag
        prompt += f"<hypernet:{params['Hypernet']}:{params.get('Hypernet strength', '1.0')}>"
    if settings.get("scheduler") == "Automatic":
        del settings["scheduler"]
    settings["inpaint_full_res"] = params.get("Inpaint area") == "Only masked"
    settings["invert_mask"] = params.get("Mask mode") == "Inpaint not masked"
    settings["tiling"] = params.get("Tiling") == "True"
    settings["s_min_uncond_all"] = params.get("NGMS all steps") == "True"
    settings["pad_cond_uncond"] = params.get("Pad conds") == "True"
    settings["pad_cond_uncond_v0"] = params.get("Pad conds v0") == "True"
    settings["refiner_switch_by_sample_steps"] = params.get("Refiner switch by sampling steps") == "True"
    settings["old_scheduling"] = params.get("Old prompt editing timelines") == "True"
    hires, hires_checkpoint = None, None
    if "Hires upscale" in params or "Hires resize" in params:
        hires = {name: value(key, kind) for key, (name, kind) in _HIRES.items() if key in params}
        hires["upscaler"] = hires.get("upscaler", "latent").lower()
        if "Denoising strength" in params:  # in a hires image it is the second pass's
            hires["denoise"] = value("Denoising strength", float)
        if params.get("Hires checkpoint", "Use same checkpoint") != "Use same checkpoint":
            hires_checkpoint = split_title(params["Hires checkpoint"])
    elif "Denoising strength" in params:
        settings["strength"] = value("Denoising strength", float)
    try:
        options = infotext_sampler.read(names.sampler_id(settings.get("sampler", "Euler")), params, where)
    except InvalidArgument as e:
        if not str(e).startswith("sampler:"):
            raise
        options = {}  # a sampler we do not have: generating says so
    refiner = None
    if "Refiner" in params:
        name, hash_ = split_title(params["Refiner"])
        refiner = {"name": name, "hash": hash_,
                   "switch_at": value("Refiner switch at", float) if "Refiner switch at" in params else 0.8,
                   "hires_pass": params.get("Hires refiner", "second pass")}
    return Recorded(prompt, negative_prompt, settings, hires, sampler_options=options,
                    schedule_options=schedule_options.read(params, where), refiner=refiner,
                    hires_checkpoint=hires_checkpoint,
                    vae_decoder=params.get("VAE Decoder", "full").lower(),
                    vae_encoder=params.get("VAE Encoder", "full").lower(),
                    deep_cache=value(DEEP_CACHE, int) if DEEP_CACHE in params else None,
                    soft_inpainting=SoftInpainting.from_infotext(params, where),
                    model=(params.get("Model"), params.get("Model hash")),
                    vae=(params.get("VAE"), params.get("VAE hash")),
                    lora_hashes=_pairs(params.get("Lora hashes", "")),
                    extra_loras=_extra_loras(params.get(EXTRA_LORAS, ""), where),
                    extra_hypernets=_extra_hypernets(params.get(EXTRA_HYPERNETS, ""), where),
                    ti_hashes=_pairs(params.get("TI hashes", "")),
                    controls=[params[k] for k in sorted((k for k in params if _is_unit(k)), key=_unit_index)])


def _pairs(text: str) -> dict[str, str]:
    out = {}
    for item in text.split(","):
        name, sep, value = item.strip().rpartition(": ")
        if sep:
            out[name.strip()] = value.strip()
    return out


def _extra_loras(text: str, where: str) -> list[tuple[str, float, float]]:
    out = []
    for name, strengths in _pairs(text).items():
        unet, _, te = strengths.partition("/")
        try:
            out.append((name, float(unet), float(te or unet)))
        except ValueError:
            raise InvalidArgument(f"{where}: {EXTRA_LORAS}: {name}: {strengths!r} is not UNET/TE") from None
    return out


def _extra_hypernets(text: str, where: str) -> list[tuple[str, float]]:
    try:
        return [(name, float(strength)) for name, strength in _pairs(text).items()]
    except ValueError:
        raise InvalidArgument(f"{where}: {EXTRA_HYPERNETS}: {text!r} is not 'name: strength, ...'") from None


def _is_unit(key: str) -> bool:
    return key.startswith("ControlNet ") and key[len("ControlNet "):].isdigit()


def _unit_index(key: str) -> int:
    return int(key[len("ControlNet "):])
