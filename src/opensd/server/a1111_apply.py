"""What the A1111 settings in effect for a request (a1111_options: the saved ones, then its
override_settings) change in its job, as A1111 applies them:

- CLIP_stop_at_last_layers: the clip skip;
- eta_ancestral / eta_ddim (unless the request's `eta`; for A1111's samplers only, so TCD keeps
  its own 0.3 unless the request says), s_churn, s_tmin, s_tmax, s_noise, and
  uni_pc_order / _variant / _lower_order_final: the sampler's options, for the samplers A1111 passes
  them to. A1111 ignores the request's s_* fields; here one that differs from the neutral value
  (what clients such as webuiapi send by default) wins over the setting;
- eta_noise_seed_delta (ENSD): for samplers A1111 applies it to (Euler a, DPM2 a, DPM++ 2S a, DDIM,
  DPM fast, DPM adaptive, with eta > 0), the noise drawn after the initial noise comes from seed + ENSD;
- sigma_min, sigma_max, rho, use_old_karras_scheduler_sigmas, always_discard_next_to_last_sigma,
  sd_noise_schedule, use_downcasted_alpha_bar, sgm_noise_multiplier, beta_dist_alpha / _beta,
  uni_pc_skip_type: the generation's schedule_options (sampling/schedule_options.py);
- randn_source: "CPU" (our default) draws noise on the CPU, "GPU" on the device;
- emphasis, comma_padding_backtrack, sdxl_clip_l_skip, sdxl_crop_top / sdxl_crop_left,
  use_old_emphasis_implementation: how prompts are encoded (Params' fields of those names);
- s_min_uncond (unless the request's), s_min_uncond_all, skip_early_cond: evaluations without the
  negative prompt (pipeline/cfg_skips.py); a value out of range is a 422 naming it;
- pad_cond_uncond, pad_cond_uncond_v0: how a prompt and negative prompt of different lengths are
  batched (pipeline/cond_padding.py);
- sd_vae: "Automatic" (a VAE named like the checkpoint, else the checkpoint's own), "None", or a file;
- sd_lora / sd_hypernetwork: appends <lora:name:extra_networks_default_multiplier> / <hypernet:…>
  unless the prompt names it; `disable_extra_networks` removes every tag and adds none;
- tiling (unless the request's `tiling`);
- token_merging_ratio (txt2img), token_merging_ratio_img2img (img2img, where not 0, unless the
  request's override_settings set token_merging_ratio), token_merging_ratio_hr (the hires pass,
  where not 0): tomesd's token merging at that ratio (pipeline/speedups.py);
- hypertile_* (A1111's built-in Hypertile extension): tiled self-attention in the UNet's first
  pass (hypertile_enable_unet), its hires pass (…_secondpass) and the VAE decoder (…_vae);
- sd_vae_decode_method / sd_vae_encode_method "TAESD": the model's tiny autoencoder (its files in
  the models folder's VAE-approx or vae_approx) decodes / encodes instead of the VAE; without the
  file the request is refused in one line naming the setting;
- initial_noise_multiplier (unless the request's), img2img_extra_noise, inpainting_mask_weight,
  img2img_color_correction: img2img's noise, inpainting models' conditioning and colour matching
  (pipeline/params.py); in txt2img the hires pass takes the extra noise and the mask weight;
- samples_format, jpeg_quality, webp_lossless, outdir_samples / outdir_txt2img_samples /
  outdir_img2img_samples: how and where the images are saved (and the format they are returned in).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from PIL import ImageColor

from ..errors import InvalidArgument
from ..sampling import schedule_options as SO
from ..pipeline.params import Params, check_img2img_setting
from ..pipeline.cfg_skips import check
from ..sampling.names import A1111_SAMPLERS
from ..sampling.samplers import sampler_options as options_of
from ..text.prompt_parser import emphasis_id, extract_extra_networks
from .a1111_option_table import DEFAULTS

ENSD_SAMPLERS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "ddim", "dpm_fast", "dpm_adaptive")
# The sigma settings A1111 passes to each sampler (its sampler_extra_params; Euler a gets none).
_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
SIGMA_OPTIONS = {"euler": _CHURN, "heun": _CHURN, "dpm_2": _CHURN, "dpm_2_ancestral": ("s_noise",),
                 "dpmpp_2s_ancestral": ("s_noise",), "dpmpp_sde": ("s_noise",), "dpmpp_2m_sde": ("s_noise",),
                 "dpmpp_3m_sde": ("s_noise",), "dpm_fast": ("s_noise",)}
NEUTRAL = {"s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0}  # what clients send for "unset"
FORMATS = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg", "webp": ".webp"}


def sampler_options(sampler: str, req, opts: dict) -> dict:
    """The options this sampler gets that differ from its defaults (JSON-safe: plain numbers)."""
    taken = options_of(sampler)
    setting = opts["eta_ddim" if sampler == "ddim" else "eta_ancestral"] if sampler in A1111_SAMPLERS else None
    eta = req.eta if req.eta is not None else setting
    wanted = {} if eta is None else {"eta": eta}
    for name in SIGMA_OPTIONS.get(sampler, ()):
        value = getattr(req, name)
        wanted[name] = opts[name] if value is None or value == NEUTRAL[name] else value
    if not wanted.get("s_tmax", 1):
        del wanted["s_tmax"]  # 0 means infinity, the samplers' default
    if sampler == "uni_pc":
        wanted.update(order=opts["uni_pc_order"], variant=opts["uni_pc_variant"],
                      lower_order_final=opts["uni_pc_lower_order_final"])
    return {k: v for k, v in wanted.items() if k in taken and v != taken[k]}


def schedule_options(opts: dict) -> dict:
    """A1111's noise-schedule settings in effect (sampling.schedule_options), those off its defaults;
    a combination that cannot run is a 422 naming the setting."""
    wanted = {}
    for name, (default, _) in SO.SETTINGS.items():
        value = opts[name]
        if name in SO.CHOICES:  # A1111's choices, whatever case the client sent
            value = next((c for c in SO.CHOICES[name] if c.lower() == str(value).lower()), value)
        if value != default:
            wanted[name] = value
    return SO.check(wanted, "")
def cfg_skips(req, opts: dict) -> dict:
    """The job's kwargs for A1111's negative-prompt skips and cond padding that are on (A1111 takes
    the request's s_min_uncond when given, else the setting)."""
    ngms = req.s_min_uncond if req.s_min_uncond is not None else opts["s_min_uncond"]
    check(ngms, opts["s_min_uncond_all"], opts["skip_early_cond"])
    wanted = {"s_min_uncond": ngms, "s_min_uncond_all": opts["s_min_uncond_all"],
              "skip_early_cond": opts["skip_early_cond"], "pad_cond_uncond": opts["pad_cond_uncond"],
              "pad_cond_uncond_v0": opts["pad_cond_uncond_v0"]}
    return {k: v for k, v in wanted.items() if v}


def noise_seed_delta(sampler: str, options: dict, opts: dict) -> int:
    """ENSD where A1111 applies it: samplers that draw fresh noise each step, with eta > 0."""
    if sampler not in ENSD_SAMPLERS:
        return 0
    eta = options.get("eta", options_of(sampler)["eta"])
    return opts["eta_noise_seed_delta"] if eta else 0


# pipeline attribute -> the A1111 setting that sets it to "taesd"
TINY_SETTINGS = {"vae_decoder": "sd_vae_decode_method", "vae_encoder": "sd_vae_encode_method"}


# A1111's prompt-encoding settings, each a Params field of the same name
TEXT_SETTINGS = ("emphasis", "comma_padding_backtrack", "sdxl_clip_l_skip", "sdxl_crop_top", "sdxl_crop_left",
                 "use_old_emphasis_implementation")


def text_settings(opts: dict) -> dict:
    """The job's kwargs for A1111's prompt-encoding settings that are off their defaults."""
    out = {k: opts[k] for k in TEXT_SETTINGS if opts[k] != DEFAULTS[k]}
    if "emphasis" in out:
        out["emphasis"] = emphasis_id(out["emphasis"])
    return out


def vae_methods(opts: dict) -> dict:
    """The job's kwargs for A1111's TAESD settings (taken out again by `tiny_autoencoder`)."""
    return {name: "taesd" for name, setting in TINY_SETTINGS.items() if opts[setting].lower() == "taesd"}


@contextmanager
def tiny_autoencoder(pipe, kw: dict):
    """Within: `pipe` decodes/encodes as the job's kwargs `kw` say (taken out of them); the tiny
    autoencoder's part must be loaded for that (ModelCache loads it from vae_approx)."""
    wanted = {name: kw.pop(name) for name in TINY_SETTINGS if name in kw}
    for name in wanted:
        part = name.removeprefix("vae_")
        if pipe.tiny_vae is None or getattr(pipe.tiny_vae, part) is None:
            raise InvalidArgument(f"{TINY_SETTINGS[name]}: TAESD needs the tiny autoencoder's {part} file for this "
                                  f"model (taesd_{part}, taesdxl_{part}, ...) in the models folder's VAE-approx or "
                                  "vae_approx folder; none was found")
    pipe.vae_decoder, pipe.vae_encoder = wanted.get("vae_decoder", "full"), wanted.get("vae_encoder", "full")
    try:
        yield
    finally:
        pipe.vae_decoder = pipe.vae_encoder = "full"


def vae_path(folders, opts: dict, model_path: Path, where: str = "sd_vae") -> Path | None:
    choice = opts["sd_vae"]
    if choice == "None":
        return None
    if choice == "Automatic":  # A1111: the first VAE whose file name starts with the checkpoint's
        stem = model_path.name.rsplit(".", 1)[0]
        same = [m.path for m in folders.list("vae") if m.path.name.startswith(stem)]
        return same[0] if same else None
    try:
        return folders.resolve("vae", choice)
    except InvalidArgument as e:
        raise InvalidArgument(f"{where}: {str(e).split(': ', 1)[-1]}") from None


def token_merging(req, opts: dict, img2img: bool) -> float:
    """The first pass's ratio, as A1111's get_token_merging_ratio picks it."""
    if not img2img:
        return opts["token_merging_ratio"]
    overridden = "token_merging_ratio" in (req.override_settings or {})
    return (overridden and opts["token_merging_ratio"]) or opts["token_merging_ratio_img2img"] \
        or opts["token_merging_ratio"]


def hypertile(opts: dict) -> dict | None:
    """The hypertile_* settings as the pipeline's HyperTile fields (JSON), None when all are off."""
    on = {"unet": opts["hypertile_enable_unet"], "unet_hires": opts["hypertile_enable_unet_secondpass"],
          "vae": opts["hypertile_enable_vae"]}
    if not any(on.values()):
        return None
    return {**on, "unet_max_depth": opts["hypertile_max_depth_unet"], "unet_max_tile": opts["hypertile_max_tile_unet"],
            "unet_swap_size": opts["hypertile_swap_size_unet"], "vae_max_tile": opts["hypertile_max_tile_vae"],
            "vae_swap_size": opts["hypertile_swap_size_vae"]}


# Settings that add an extra network to every prompt: setting -> (tag kinds, folder kind, what)
PROMPT_NETWORK_SETTINGS = {"sd_lora": (("lora", "lyco"), "loras", "LoRA"),
                           "sd_hypernetwork": (("hypernet",), "hypernetworks", "hypernetworks")}


def prompt(req, opts: dict, folders) -> tuple[str, list[tuple[str, str]]]:
    """The prompt to run and what could not be applied ((setting, message) pairs)."""
    text = req.prompt
    if req.disable_extra_networks:
        return extract_extra_networks(text)[0], []
    gaps = []
    tags = extract_extra_networks(text)[1]
    for setting, (kinds, kind, what) in PROMPT_NETWORK_SETTINGS.items():
        name = opts[setting]
        if name == "None" or any(n.name == name for n in tags if n.kind in kinds):
            continue
        try:
            folders.resolve(kind, name)
        except InvalidArgument:
            gaps.append((setting, f"{name!r} is no longer in the {what} folder; not applied"))
            continue
        text = f"{text}<{kinds[0]}:{name}:{opts['extra_networks_default_multiplier']}>"
    return text, gaps


def background(opts: dict) -> str:
    """img2img_background_color as '#rrggbb': what an init image's transparent parts are painted
    over (A1111's images.flatten); a value PIL cannot read is a 422."""
    value = opts["img2img_background_color"]
    try:
        r, g, b = ImageColor.getrgb(value)[:3] if isinstance(value, str) else (None,) * 3
        return f"#{r:02x}{g:02x}{b:02x}"
    except (ValueError, TypeError):
        raise InvalidArgument(f"img2img_background_color: {value!r} is not a colour (e.g. '#ffffff')") from None


# Params field -> the A1111 setting that sets it
IMG2IMG_SETTINGS = {"noise_multiplier": "initial_noise_multiplier", "extra_noise": "img2img_extra_noise",
                    "mask_weight": "inpainting_mask_weight", "color_correction": "img2img_color_correction"}
_TXT2IMG = ("extra_noise", "mask_weight")  # what txt2img uses: the hires pass, and the infotext's mask weight


def img2img_settings(req, opts: dict, img2img: bool) -> dict:
    """The job's kwargs for A1111's img2img settings that are off their defaults (the settings are
    checked as options are; the request's initial_noise_multiplier, checked here, wins over its
    setting, as in A1111)."""
    out = {}
    for name, key in IMG2IMG_SETTINGS.items():
        value = opts[key]
        if name == "noise_multiplier" and getattr(req, key, None) is not None:
            value = req.initial_noise_multiplier
            try:
                check_img2img_setting(name, value)
            except InvalidArgument as e:
                raise InvalidArgument(f"{key}: {str(e).split(': ', 1)[1]}") from None
        if (img2img or name in _TXT2IMG) and value != getattr(Params, name):
            out[name] = value
    return out


def output(opts: dict, mode: str, grids: bool = False) -> dict:
    """Where and how the job saves its images; the folder is created now, so a bad one is a 422.
    With `grids` (a script that makes grids) also where its grids go: A1111's grids folder, in
    grid_format."""
    out = {"folder": str(_folder(opts, "outdir_samples", f"outdir_{mode}_samples")),
           "suffix": FORMATS[opts["samples_format"].lower()]}
    if grids:
        out["grids_folder"] = str(_folder(opts, "outdir_grids", f"outdir_{mode}_grids"))
        out["grids_suffix"] = FORMATS.get(str(opts["grid_format"]).lower(), out["suffix"])
    return {**out, "quality": opts["jpeg_quality"], "lossless": opts["webp_lossless"],
            "pnginfo": bool(opts["enable_pnginfo"])}  # False: files without their parameters, as A1111


def _folder(opts: dict, common: str, own: str) -> Path:
    """The folder A1111 saves into: the common setting when set, else the mode's own; created now."""
    key = common if opts[common] else own
    folder = Path(opts[key])
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidArgument(f"{key}: cannot create the folder {str(folder)!r} ({e.strerror})") from None
    return folder
