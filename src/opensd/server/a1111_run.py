"""Runs an A1111 txt2img/img2img job on the worker thread: request -> pipeline calls -> PNG files
(with A1111 infotext) in the outputs folder, plus the `info` A1111 returns."""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidArgument
from ..library.hashes import model_hash
from ..pipeline import dynamic_batch
from ..pipeline import limits as L
from ..pipeline.infotext import save_image
from ..pipeline.infotext_params import image_infotext
from ..pipeline.params import Hires
from ..pipeline.speedups import HyperTile
from ..sampling.names import DEFAULT_SCHEDULES, SAMPLER_LABELS, resolve
from ..upscale import Upscalers, latent_mode
from ..upscale import label as upscaler_label
from ..upscale.names import model_name
from ..scripts.spec import Generated, Made
from . import a1111_apply, a1111_controlnet, a1111_ip_adapter, a1111_refiner, a1111_scripts, a1111_unsupported
from . import a1111_references, a1111_soft_inpaint
from .a1111_models import Img2ImgRequest, Txt2ImgRequest
from ..image_read import WHITE, flatten
from .images_io import decode_b64
from .jobs import LOADING, SAMPLING, Control, Stopped

RESIZE = {0: "just resize", 1: "crop and resize", 2: "resize and fill", 3: "just resize"}
FILL = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}


def _down8(v: int) -> int:
    return max(8, v - v % 8)


def sampler_of(req) -> tuple[str, str]:
    name = req.sampler_name or req.sampler_index or "Euler"
    try:
        return resolve(name, req.scheduler)
    except InvalidArgument as e:
        raise InvalidArgument(f"sampler_name/scheduler: {str(e).split(': ', 1)[-1]}") from None


def hires_sampler(req, sampler: str, schedule: str | None) -> tuple[str, str | None]:
    """(sampler, schedule) of the hires pass as A1111 picks them: `hr_sampler_name`, else the first
    pass's sampler; `hr_scheduler`, else the first pass's schedule (`schedule`; None: "Automatic",
    which then means the hires sampler's own default). A1111's UI values "Use same sampler" / "Use
    same scheduler" are the same as none."""
    name = None if req.hr_sampler_name in (None, "", "Use same sampler") else req.hr_sampler_name
    chosen = None if req.hr_scheduler in (None, "", "Use same scheduler") else req.hr_scheduler
    if name is None and chosen is None:
        return sampler, schedule
    try:
        hs, hsched = resolve(name or sampler, chosen if chosen is not None else schedule)
    except InvalidArgument as e:
        raise InvalidArgument(f"hr_sampler_name/hr_scheduler: {str(e).split(': ', 1)[-1]}") from None
    automatic = (chosen or "automatic").strip().lower() == "automatic" and schedule is None
    return hs, None if automatic and hsched == DEFAULT_SCHEDULES[hs] else hsched


def hires_upscaler(name: str | None, upscalers: Upscalers) -> str:
    """A1111's `hr_upscaler` as the pipeline takes it: a latent mode, None/Lanczos/Nearest or an
    installed upscaler model's name; any other name is refused before queueing, as A1111 refuses it."""
    name = (name or "Latent").strip()
    if latent_mode(name) is not None:
        return upscaler_label(name)
    found = upscalers.find(name, "hr_upscaler")
    return found if isinstance(found, str) else model_name(found.name)  # A1111's spelling of its name


def plan(req, img2img: bool, max_prompt: int, opts: dict, upscalers: Upscalers | None = None
         ) -> tuple[dict, list[tuple[str, str]]]:
    """Validate what the queue cannot check later (names, sizes); return the pipeline kwargs as
    plain JSON, so the job can be stored and re-run after a restart, and what of the request or
    the settings `opts` is not done here ((name, message) pairs, a1111_unsupported).
    `upscalers`: the hires fix's (default: the classic ones only)."""
    for field in ("prompt", "negative_prompt"):
        if len(getattr(req, field)) > max_prompt:
            raise InvalidArgument(f"{field}: longer than {max_prompt} characters")
    sampler, schedule = sampler_of(req)
    if (req.scheduler or "automatic").strip().lower() == "automatic" and schedule == DEFAULT_SCHEDULES[sampler]:
        schedule = None  # "Automatic": the model's family chooses (Flux: simple), else the sampler's default
    width, height = first_phase_size(req)
    kw = {"steps": req.steps, "cfg": req.cfg_scale, "width": _down8(width), "height": _down8(height),
          "batch_size": req.batch_size, "sampler": sampler, "scheduler": schedule,
          "subseed_strength": req.subseed_strength}
    if req.seed_resize_from_w > 0 and req.seed_resize_from_h > 0:
        kw.update(seed_resize_from_w=req.seed_resize_from_w, seed_resize_from_h=req.seed_resize_from_h)
    L.check_size(kw["width"], kw["height"])
    if req.distilled_cfg_scale is not None:
        kw["distilled_guidance"] = req.distilled_cfg_scale
    if req.shift is not None:
        kw["shift"] = req.shift
    gaps: list[tuple[str, str]] = []
    clip = opts["CLIP_stop_at_last_layers"]
    kw["clip_skip"] = clip if clip > 1 else None
    kw["tiling"] = req.tiling if req.tiling is not None else opts["tiling"]
    kw.update(a1111_apply.vae_methods(opts))
    kw.update(a1111_apply.text_settings(opts))
    options = a1111_apply.sampler_options(sampler, req, opts)
    settings = {"refiner_switch_by_sample_steps": opts["refiner_switch_by_sample_steps"],
                "old_scheduling": opts["use_old_scheduling"],
                "token_merging": a1111_apply.token_merging(req, opts, img2img),
                "hypertile": a1111_apply.hypertile(opts), "sampler_options": options,
                "schedule_options": a1111_apply.schedule_options(opts),
                "noise_seed_delta": a1111_apply.noise_seed_delta(sampler, options, opts),
                "device_noise": opts["randn_source"].upper() == "GPU"}
    kw.update({k: v for k, v in settings.items() if v})  # what is off stays out of the stored job
    kw.update(a1111_apply.img2img_settings(req, opts, img2img))
    kw.update(a1111_apply.cfg_skips(req, opts))
    if img2img:
        if opts["img2img_fix_steps"]:
            kw["fix_steps"] = True
        kw.update(strength=req.denoising_strength, resize_mode=RESIZE[req.resize_mode],
                  mask_blur=req.mask_blur if req.mask_blur is not None else req.mask_blur_x,
                  mask_blur_y=req.mask_blur if req.mask_blur is not None else req.mask_blur_y,
                  inpainting_fill=FILL[req.inpainting_fill], inpaint_full_res=req.inpaint_full_res,
                  inpaint_full_res_padding=req.inpaint_full_res_padding,
                  invert_mask=bool(req.inpainting_mask_invert))
        kw.update(a1111_soft_inpaint.kwargs(req))
        kw["image_cfg_scale"] = req.image_cfg_scale  # None: plain CFG, as A1111's API (edit models only)
        count = len(req.init_images)
        if count > req.batch_size:  # A1111's own RuntimeError (a 500 there), refused before queueing here
            raise InvalidArgument(f"init_images: bad number of images passed: {count}; expecting "
                                  f"{req.batch_size} or less (batch_size)")
        if count > 1:  # A1111 makes one image per init image: its batch shrinks to their count
            kw["batch_size"] = count
    elif req.enable_hr:
        upscaler = hires_upscaler(req.hr_upscaler, upscalers or Upscalers(None))
        hs, hsched = hires_sampler(req, sampler, schedule)
        kw["hires"] = {"scale": req.hr_scale, "upscaler": upscaler, "steps": req.hr_second_pass_steps or None,
                       "denoise": 0.7 if req.denoising_strength is None else req.denoising_strength,
                       "width": req.hr_resize_x or None, "height": req.hr_resize_y or None,
                       "sampler": hs, "scheduler": hsched, "prompt": req.hr_prompt or None,
                       "negative_prompt": req.hr_negative_prompt or None,
                       "token_merging": opts["token_merging_ratio_hr"] or None}
        if opts["hires_fix_use_firstpass_conds"]:
            kw["hires"]["firstpass_conds"] = True
        if opts["use_old_hires_fix_width_height"]:  # width x height is the final size (A1111 before 1.0)
            kw["hires"].update(width=kw["width"], height=kw["height"])
            kw["width"], kw["height"] = old_first_pass(kw["width"], kw["height"])
    return kw, gaps


def old_first_pass(width: int, height: int) -> tuple[int, int]:
    """A1111's first pass under use_old_hires_fix_width_height: about 512x512 pixels of the final
    size's aspect, each side rounded up to 64 (its old_hires_fix_first_pass_dimensions)."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def first_phase_size(req) -> tuple[int, int]:
    """The size of the image (of a hires fix's first pass): width and height, or A1111 1.x's
    firstphase_width and firstphase_height, which replace them when set (its txt2img __post_init__;
    the hires fix then scales that size)."""
    first = (getattr(req, "firstphase_width", 0), getattr(req, "firstphase_height", 0))
    if not any(first):
        return req.width, req.height
    if not all(first):  # A1111 would then sample a 0-pixel side and fail
        raise InvalidArgument("firstphase_width/firstphase_height: A1111 makes them the image's size "
                              "in place of width/height; give both, or neither")
    return first


def request_of(p: dict):
    """The stored job's A1111 request."""
    return (Img2ImgRequest if p["mode"] == "img2img" else Txt2ImgRequest).model_validate(p["request"])


def run(state, job, ctl: Control):
    p = job.payload
    if p.get("script"):  # a selectable script runs the whole job
        return a1111_scripts.find(p["script"], p["mode"]).run(state, job, ctl)
    req = request_of(p)
    return record(state, job, req, generate(state, p, req, ctl))


def record(state, job, req, made: Batch):
    """Save what `generate` made and answer as A1111 does: (stored result, live value). Ray workers
    generate elsewhere (opensd.distributed); this half runs where the outputs folder is."""
    p = job.payload
    files, pngs = save(state, job.id, p, [m.image for m in made.made], [m.infotext for m in made.made],
                       req.send_images)
    info = info_dict(req, p["kwargs"], made.model_name, made.model_hash, [m.seed for m in made.made],
                     [m.subseed for m in made.made], [m.infotext for m in made.made], p["mode"] == "img2img")
    info.update(made_fields(made), **a1111_unsupported.info_fields([tuple(g) for g in p.get("gaps", [])]))
    result = {"files": files, "info": info}
    return result, {"pngs": pngs, "info": info}


@dataclass
class Batch(Generated):
    """What one A1111 request (or one script cell) made, and with which models."""
    model_name: str = ""
    model_hash: str | None = None
    vae: Path | None = None


def made_fields(made: Batch) -> dict:
    """The info fields that come from the images made."""
    prompts = [m.prompt for m in made.made]
    negatives = [m.negative_prompt for m in made.made]
    peaks = [m.image.info["peak_memory"] for m in made.made if "peak_memory" in m.image.info]
    out = {"all_prompts": prompts, "all_negative_prompts": negatives, "interrupted": made.interrupted,
           "sd_vae_name": made.vae.name if made.vae else None,
           "sd_vae_hash": model_hash(made.vae) if made.vae else None,
           # ours: the run's peak memory (pipeline/peak_memory.py), null when the images came from elsewhere
           "opensd_peak_memory": max(peaks, key=lambda m: m.bytes).as_json() if peaks else None}
    if prompts:
        out.update(prompt=prompts[0], negative_prompt=negatives[0])
    return out


def generate(state, p: dict, req, ctl, init=None) -> Batch:
    """Run the generation the payload `p` and request `req` describe (`init`: an img2img image instead
    of the request's); stops early, keeping what is done, when the job is interrupted."""
    kw = dict(p["kwargs"])
    ctl.phase(LOADING)
    pipe = state.cache.get(Path(p["model_path"]), Path(p["vae_path"]) if p.get("vae_path") else None)
    with a1111_apply.tiny_autoencoder(pipe, kw):
        return _generate(state, p, req, ctl, init, pipe, kw)


def _generate(state, p: dict, req, ctl, init, pipe, kw: dict) -> Batch:
    mode = p["mode"]
    path = Path(p["model_path"])
    vae = Path(p["vae_path"]) if p.get("vae_path") else None
    refiner = a1111_refiner.load(state, p.get("refiner"), (path, vae))
    if refiner is not None:
        kw["refiner"] = refiner
    hires_model = a1111_refiner.load_hires(state, p.get("hires_checkpoint"), (path, vae))
    if hires_model is not None and init is None:
        kw["hires_model"] = hires_model
    prompt = p.get("prompt", req.prompt)  # with its styles and the sd_lora setting's tag, if any
    negative = p.get("negative_prompt", req.negative_prompt)
    hires = kw.pop("hires", None)
    if "attention_speedups" not in pipe.family.adapters:  # the settings are global; they patch UNets only
        kw.pop("token_merging", None)
        kw.pop("hypertile", None)
        hires = None if hires is None else {**hires, "token_merging": None}
    if hires is not None:
        kw["hires"] = Hires(**hires)
    if kw.get("hypertile"):
        kw["hypertile"] = HyperTile(**kw["hypertile"])
    mask, inits = None, [init]
    if mode == "img2img":
        limit = state.settings.max_image_pixels
        if init is None:
            inits = [init_image(req, p, limit, i) for i in range(len(req.init_images))]
            init = inits[0]
        mask = decode_b64(req.mask, "mask", limit) if req.mask else None
        # A1111's processing uses a latent mask with a mask only; its API hands the field on
        # undecoded (an error there), so it is read here as the image the processing takes
        if mask is not None and req.latent_mask:
            kw["latent_mask"] = decode_b64(req.latent_mask, "latent_mask", limit)
    elif hires is not None and req.firstpass_image:  # A1111's hires fix of an image already made
        kw["first_pass"] = decode_b64(req.firstpass_image, "firstpass_image", state.settings.max_image_pixels)
    controls = a1111_controlnet.build_controls(p.get("controlnet") or [], req, pipe, init,
                                               state.settings.max_image_pixels, kw["width"], kw["height"], mask)
    if controls:
        kw["controls"] = controls
    references = a1111_references.decode(req, state.settings.max_image_pixels)
    if references:
        kw["references"] = references
    image_prompt = a1111_ip_adapter.build(p.get("controlnet") or [], req, pipe, state.settings.max_image_pixels)
    if image_prompt is not None:
        kw["ip_adapter"] = image_prompt
    seed = req.seed if req.seed != -1 else random.randint(0, L.MAX_SEED - 10_000)
    subseed = req.subseed if req.subseed != -1 else random.randint(0, L.MAX_SEED - 10_000)
    per, varied = kw["batch_size"], bool(kw.get("subseed_strength"))
    images, interrupted = [], False
    ctl.phase(SAMPLING)
    for it in range(req.n_iter):
        ctl.image(it, req.n_iter)
        s, ss = (seed + it * per) % (L.MAX_SEED + 1), (subseed + it * per) % (L.MAX_SEED + 1)

        def progress(i, n, it=it):
            ctl.step(it * n + i, req.n_iter * n)

        def call(text, negative_text, report, **changes):
            args = {**kw, "seed": s, "subseed": ss if varied else None, **changes}
            if init is None:
                return pipe.txt2img(text, negative_text, progress=report, **args)
            # several init images: batch item k starts from image k (A1111's batch of them); each
            # item is then made alone, so its offset in the batch is its seed's
            start = inits[(args["seed"] - s) % (L.MAX_SEED + 1) % len(inits)]
            return pipe.img2img(start, text, negative_text, mask=mask, progress=report, **args)

        def on_latents(denoised):  # for /progress
            image = pipe.preview(denoised)
            if image is not None:
                ctl.preview(image)

        pipe.on_latents = on_latents
        try:
            out = dynamic_batch.generate(call, prompt, negative, seed=s, subseed=ss if varied else None,
                                         batch_size=per, wildcards=state.wildcards, progress=progress,
                                         one_by_one=len(inits) > 1)
        except Stopped as e:
            if e.skip:
                continue
            interrupted = True
            break
        finally:
            pipe.on_latents = None
        for k, image in enumerate(out):
            image.info["subseed"] = ss + k  # A1111 reports it even at strength 0
        images += out
    hash_ = state.cache.short_hash(path)
    made = [_made(image, image_infotext(pipe, image, img2img=mode == "img2img", mask=mask is not None,
                                        model_hash=hash_, controls=controls, vae=vae))
            for image in images]
    return Batch(made, interrupted, pipe.name, hash_, vae)


def init_image(req, p: dict, limit: int, i: int = 0):
    """The request's init image `i`, its transparent parts over img2img_background_color, as A1111
    flattens them."""
    return flatten(decode_b64(req.init_images[i], f"init_images[{i}]", limit), p.get("background") or WHITE)


def _made(image, infotext: str) -> Made:
    p = image.info["params"]
    return Made(image, infotext, image.info["seed"], image.info["subseed"], p.prompt, p.negative_prompt)


def save(state, job_id: str, p: dict, images: list, infotexts: list[str], send: bool,
         grids: int = 0) -> tuple[list[str], list[bytes]]:
    """Save the images (with their infotexts) as the request's settings say, the first `grids` of
    them (a script's grids) in the grids folder; (stored names, bytes to send)."""
    files, pngs = [], []
    out = p.get("output") or {"folder": str(state.settings.outputs_dir / "api"), "suffix": ".png",
                              "quality": 95, "lossless": False}  # jobs queued by older versions
    for k, (image, text) in enumerate(zip(images, infotexts)):
        grid = k < grids and "grids_folder" in out
        folder, suffix = (out["grids_folder"], out["grids_suffix"]) if grid else (out["folder"], out["suffix"])
        f = save_image(image, Path(folder) / f"{job_id}-{k}{suffix}", text if out.get("pnginfo", True) else None,
                       quality=out["quality"], lossless=out["lossless"])
        files.append(_stored_name(f, state.settings.outputs_dir))
        if send:  # A1111 answers in the saved format too (samples_format)
            pngs.append(f.read_bytes())
    return files, pngs


def info_dict(req, kw, model, hash_, seeds, subseeds, infotexts, img2img) -> dict:
    n = len(seeds)
    return {
        "prompt": req.prompt, "all_prompts": [req.prompt] * n,
        "negative_prompt": req.negative_prompt, "all_negative_prompts": [req.negative_prompt] * n,
        "seed": seeds[0] if seeds else req.seed, "all_seeds": seeds,
        "subseed": subseeds[0] if subseeds else req.subseed, "all_subseeds": subseeds,
        "subseed_strength": req.subseed_strength, "width": kw["width"], "height": kw["height"],
        "sampler_name": SAMPLER_LABELS.get(kw["sampler"], kw["sampler"]),
        "scheduler": kw["scheduler"] or "Automatic", "cfg_scale": kw["cfg"], "steps": kw["steps"],
        "batch_size": kw["batch_size"], "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model, "sd_model_hash": hash_, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": req.seed_resize_from_w, "seed_resize_from_h": req.seed_resize_from_h,
        "denoising_strength": kw.get("strength") if img2img else (
            kw["hires"]["denoise"] if kw.get("hires") else None),
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": infotexts,
        "styles": req.styles or [], "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "clip_skip": kw.get("clip_skip") or 1, "is_using_inpainting_conditioning": False,
        "version": "opensd",
    }


def _stored_name(path: Path, outputs: Path) -> str:
    """A saved file as the job records it: relative to the outputs folder when inside it."""
    try:
        return str(path.relative_to(outputs))
    except ValueError:
        return str(path.resolve())


def info_json(info: dict) -> str:
    return json.dumps(info, ensure_ascii=False)
