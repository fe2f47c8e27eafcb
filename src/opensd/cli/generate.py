"""`opensd generate`: parse, call the pipeline, write files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidArgument
from ..pipeline.memory_modes import MODES
from ..text.prompt_parser import EMPHASIS_LABELS
from . import cfg_skip_flags, ip_adapter_flags, sampling_flags
from ..pipeline.soft_inpaint_settings import SETTINGS as SOFT_SETTINGS, SoftInpainting
from .common import BUILTIN_MODEL, float_arg, int_arg, open_image, set_threads
from .control import CONTROL_HELP, controls_from_args
from .from_image import PARAM_DEST, apply_infotext, missing_lora, report_differences
from .model_flags import add_models_dir_flag, resolve_generate_models, resolve_model, use_folders
from .output_files import DEFAULT_DIR, check_output, numbered_output
from .scripts import CliFace, add_flags, apply_styles_flag, chosen, run_script

# Generation flags have no argparse defaults: unset ones are filled by --from, and the rest by the
# pipeline's defaults for the mode (outpainting's differ from img2img's).


def _sides(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,RIGHT,TOP,BOTTOM")
    return tuple(int_arg(p) for p in parts)  # type: ignore[return-value]


def _size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT")
    return int_arg(w), int_arg(h)


def register(sub) -> None:
    gen = sub.add_parser("generate", help="text to image, image to image, inpainting, outpainting")
    gen.add_argument("prompt", nargs="?", help="the prompt (A1111 syntax); optional with --from")
    gen.add_argument("--model", "-m", type=Path,
                     help="checkpoint file (.safetensors/.ckpt) or diffusers folder, or its name (or A1111 title "
                          "'name [hash]', or short hash) in the models folder; default: the built-in model")
    add_models_dir_flag(gen)
    gen.add_argument("--vae", type=Path, help="standalone VAE (file, or name in the models folder) replacing the "
                                              "checkpoint's VAE")
    gen.add_argument("--text-encoder", action="append", default=[], type=Path, metavar="FILE_OR_NAME",
                     help="a text encoder file (or name in the models folder's text_encoders/) for SD3/Flux models "
                          "that come without theirs: clip_l, clip_g, t5xxl (repeatable; default: found beside the model)")
    gen.add_argument("--embeddings-dir", type=Path, help="folder of textual-inversion embeddings (use by file name)")
    gen.add_argument("--lora", action="append", default=[], metavar="NAME_OR_PATH[:UNET[:TE]]",
                     help="apply a LoRA (repeatable); strengths default to 1, TE to the UNet one")
    gen.add_argument("--loras-dir", type=Path, help="folder of LoRAs for --lora NAME and <lora:name:w> in prompts")
    gen.add_argument("--hypernet", action="append", default=[], metavar="NAME_OR_PATH[:STRENGTH]",
                     help="apply an A1111 hypernetwork (repeatable, chained in order; a NAME and the prompt's "
                          "<hypernet:name:m> are looked up in the models folder's hypernetworks/)")
    gen.add_argument("--from", dest="from_image", type=Path,
                     help="reuse the generation parameters stored in this image (flags you give win)")
    g = gen.add_argument_group("sampling")
    g.add_argument("--negative", help="negative prompt")
    g.add_argument("--steps", type=int_arg, help="sampling steps (default: the model family's, 20 but Z-Image "
                                                 "Turbo 8, Flux.1 schnell 4, Qwen-Image 50)")
    g.add_argument("--cfg", type=float_arg, help="classifier-free guidance scale (default: the model family's, 7 "
                                                 "but Flux.1 and Z-Image 1, Chroma 5, Qwen-Image 4)")
    g.add_argument("--seed", type=int_arg, help="-1 (default) picks a random seed")
    g.add_argument("--subseed", type=int_arg, help="variation seed")
    g.add_argument("--subseed-strength", type=float_arg, help="0..1, how far towards the variation seed")
    g.add_argument("--seed-resize-from", type=_size, metavar="WxH",
                   help="draw the seed's noise at this size and centre it in the image (A1111's \"Resize seed "
                        "from\"): a seed keeps its composition at another size")
    g.add_argument("--width", type=int_arg, help="default: the model's native size (or the init image's)")
    g.add_argument("--height", type=int_arg)
    g.add_argument("--batch", type=int_arg, help="images to generate (seeds seed..seed+N-1)")
    g.add_argument("--sampler", help='e.g. "Euler a", "DPM++ 2M", dpmpp_2m (default Euler)')
    g.add_argument("--scheduler", help="e.g. karras, exponential, sgm_uniform (default: automatic)")
    g.add_argument("--clip-skip", type=int_arg)
    g.add_argument("--shift", type=float_arg, help="SD3/Flux: the flow schedule's shift (default: SD3 3.0; Flux dev "
                                                   "from the image size, mu 0.5 at 256 tokens to 1.15 at 4096)")
    g.add_argument("--guidance", type=float_arg, help="Flux dev, FLUX.2 [dev]: the distilled guidance the model takes "
                                                      "(default 3.5; FLUX.2 [dev] 4); "
                                                      "--cfg stays real CFG (default 1 for Flux)")
    g.add_argument("--tiling", action="store_true", help="seamless tiling: the image wraps around its edges")
    g.add_argument("--token-merging", type=float_arg, metavar="RATIO",
                   help="merge this ratio (0..0.9) of similar tokens in the UNet's full-resolution self-attention "
                        "(ToMe, A1111's token merging ratio): faster, a little less detail")
    g.add_argument("--hypertile", action="store_true",
                   help="the UNet's self-attention works in tiles (A1111's Hypertile): faster at large sizes")
    g.add_argument("--hypertile-vae", action="store_true", help="the VAE decoder's attention works in tiles too")
    sampling_flags.add_flags(gen)
    t = gen.add_argument_group("prompt encoding (A1111's settings of these names)")
    t.add_argument("--emphasis", choices=list(EMPHASIS_LABELS),
                   help="(word:1.2) weights: original (default; weights, then the mean restored), no_norm (weights "
                        "only), ignore (syntax removed, no weights), none (brackets are plain text)")
    t.add_argument("--comma-padding-backtrack", type=int_arg, metavar="TOKENS",
                   help="0..74 (default 20): a 75-token chunk that fills up within this many tokens after a comma "
                        "ends at the comma")
    t.add_argument("--sdxl-clip-l-skip", action="store_true",
                   help="SDXL: --clip-skip (default 1, the last layer) picks CLIP-L's layer too")
    t.add_argument("--old-prompt-timelines", dest="old_scheduling", action="store_true",
                   help="A1111's old prompt editing timelines: [a:b:N] below 1 is a fraction, else a step, and a "
                        "hires pass runs on the first pass's timeline")
    t.add_argument("--old-emphasis", dest="use_old_emphasis_implementation", action="store_true",
                   help="A1111's old emphasis: bracket tokens weigh the words after them (no (word:1.2) syntax), "
                        "the prompt cut at 75 tokens")
    t.add_argument("--sdxl-crop-top", type=int_arg, help="SDXL's crop-coordinates conditioning (default 0)")
    t.add_argument("--sdxl-crop-left", type=int_arg)
    cfg_skip_flags.add_flags(gen)
    i = gen.add_argument_group("img2img / inpainting / outpainting")
    i.add_argument("--init-image", type=Path, help="start from this image (img2img)")
    i.add_argument("--strength", type=float_arg, help="denoising strength 0..1 (default 0.75)")
    i.add_argument("--resize-mode", choices=["just resize", "crop and resize", "resize and fill"])
    i.add_argument("--mask", type=Path, help="inpainting mask (white = repaint), same size as the init image")
    i.add_argument("--mask-blur", type=int_arg)
    i.add_argument("--inpainting-fill", choices=["fill", "original", "latent noise", "latent nothing"])
    i.add_argument("--inpaint-full-res", action="store_true", help='inpaint "only masked" at full resolution')
    i.add_argument("--inpaint-padding", type=int_arg, help="pixels around the mask for --inpaint-full-res")
    i.add_argument("--invert-mask", action="store_true")
    i.add_argument("--noise-multiplier", type=float_arg, help="scale img2img's initial noise (A1111's "
                   "initial_noise_multiplier, default 1)")
    i.add_argument("--extra-noise", type=float_arg, help="add the noise again, times this, after noising: img2img "
                   "and the hires pass (A1111's img2img_extra_noise, default 0; keep it below the denoising strength)")
    i.add_argument("--mask-weight", type=float_arg, help="inpainting models: how much of the masked area their "
                   "conditioning image blanks, 0..1 (A1111's inpainting_mask_weight, default 1)")
    i.add_argument("--image-cfg-scale", type=float_arg, help="InstructPix2Pix (edit) models: how closely the "
                   "result follows the init image, 0..30 (A1111's Image CFG scale, default 1.5; 1: off)")
    i.add_argument("--color-correction", action="store_true",
                   help="match the results' colours to the init image's (A1111's img2img_color_correction)")
    i.add_argument("--soft-inpainting", action="store_true",
                   help="A1111's soft inpainting: the mask's grey levels blend the original with the new content "
                        "(use a large --mask-blur); settings: the --soft-* flags")
    for name, (label, _, low, high) in SOFT_SETTINGS.items():
        i.add_argument(f"--soft-{name.replace('_', '-')}", type=float_arg, metavar="X",
                       help=f"soft inpainting's {label.lower()}, {low:g}..{high:g} (default "
                            f"{getattr(SoftInpainting(), name):g})")
    i.add_argument("--outpaint", type=_sides, metavar="L,R,T,B", help="extend the init image by these pixels")
    i.add_argument("--reference-image", type=Path, action="append", metavar="FILE",
                   help="Flux.1 Kontext, FLUX.2 [klein], Qwen-Image-Edit: an image the model edits or draws from "
                        "(fitted as the model's diffusers pipeline fits it); repeat for several (Qwen-Image-Edit: one; "
                        "Edit-2509/2511: several)")
    h = gen.add_argument_group("hires fix")
    h.add_argument("--hires", action="store_true", help="upscale and repaint in a second pass")
    h.add_argument("--hires-scale", type=float_arg)
    h.add_argument("--hires-steps", type=int_arg, help="default: same as --steps")
    h.add_argument("--hires-denoise", type=float_arg)
    h.add_argument("--hires-upscaler", metavar="NAME", help="a latent mode (Latent, Latent (bicubic), ...), "
                   "None, Lanczos, Nearest, or an upscaler model file (default Latent)")
    h.add_argument("--hires-width", type=int_arg, help="second-pass size instead of --hires-scale")
    h.add_argument("--hires-height", type=int_arg)
    h.add_argument("--hires-sampler", help="default: same as --sampler")
    h.add_argument("--hires-scheduler", help="default: same as --scheduler")
    h.add_argument("--hires-prompt", help="default: same prompt")
    h.add_argument("--hires-negative", help="default: same negative prompt")
    h.add_argument("--hires-checkpoint", metavar="FILE_OR_NAME",
                   help="the checkpoint the second pass runs on, of the model's family (default: the same)")
    h.add_argument("--hires-token-merging", type=float_arg, metavar="RATIO", help="default: same as --token-merging")
    h.add_argument("--hires-hypertile", action="store_true", help="Hypertile in the second pass")
    c = gen.add_argument_group("controlnet")
    c.add_argument("--control", action="append", metavar="MODEL,IMAGE[,OPTIONS]", help=CONTROL_HELP)
    c.add_argument("--controlnet-dir", type=Path, help="folder where --control looks up ControlNets by name")
    ip_adapter_flags.add_flags(gen)
    d = gen.add_argument_group("device")
    d.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="auto (default): fp16 on CUDA, bf16 on CPUs with native bf16 for SD-size models, else fp32")
    d.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                   help="auto (default): CUDA, else MPS, else the CPU")
    d.add_argument("--vae-tiling", action="store_true",
                   help="run the VAE in overlapping tiles (bounded memory); automatic above 1024x1024 pixels")
    d.add_argument("--vae-decoder", choices=["full", "taesd"],
                   help="taesd: decode with the tiny autoencoder of --taesd (much faster, fewer details)")
    d.add_argument("--vae-encoder", choices=["full", "taesd"],
                   help="taesd: encode init images (img2img, hires fix with an image upscaler) with the tiny "
                        "autoencoder of --taesd")
    d.add_argument("--taesd", type=Path, metavar="FILE_OR_FOLDER",
                   help="tiny autoencoder: a taesd/taesdxl decoder or encoder file, or a folder holding them "
                        "(default: the models folder's VAE-approx / vae_approx)")
    d.add_argument("--memory", choices=MODES, default="auto",
                   help="GPU memory mode: medvram moves text encoders, UNet and VAE to the GPU in turns, lowvram "
                        "also the UNet block by block, medvram-sdxl medvram for SDXL models only; auto (default) "
                        "chooses from free VRAM (normal on a CPU)")
    d.add_argument("--compile", action="store_true",
                   help="run the UNet through torch.compile (minutes to compile each new size, cached on disk; "
                        "then faster steps)")
    d.add_argument("--deep-cache", type=int_arg, metavar="N",
                   help="step caching: the whole UNet runs every Nth call, its shallowest blocks in between "
                        "(N=3: about half the time of the built-in model, 4 levels of 255 off; docs/benchmarks.md)")
    d.add_argument("--backend", choices=["torch", "openvino"], default="torch",
                   help="openvino: run the UNet through OpenVINO on the CPU (pip install \"opensd[openvino]\"; "
                        "converted once per model and LoRA set, cached under ~/.cache/opensd/openvino)")
    d.add_argument("--prediction", choices=["eps", "v"], help="override eps/v for SD2 files that do not say")
    d.add_argument("--threads", type=int_arg, help="CPU threads for PyTorch (default: all cores)")
    add_flags(gen)
    gen.add_argument("-o", "--output", type=Path,
                     help="output path (.png, .jpg, .webp); with --batch N, files get -0, -1, ... suffixes; "
                          f"default: {DEFAULT_DIR}/NNNNN-SEED.png, numbered, never replacing a file")
    gen.set_defaults(func=cmd_generate)


def generation_kwargs(args: argparse.Namespace) -> dict:
    from ..pipeline.params import Hires
    from ..pipeline.speedups import HyperTile

    kw = dict(steps=args.steps, cfg=args.cfg, seed=args.seed, width=args.width, height=args.height,
              batch_size=args.batch, sampler=args.sampler, scheduler=args.scheduler, clip_skip=args.clip_skip,
              subseed=args.subseed, subseed_strength=args.subseed_strength, tiling=args.tiling or None,
              sampler_options=sampling_flags.sampler_options(args) or None,
              schedule_options=sampling_flags.schedule_options(args) or None, shift=args.shift,
              distilled_guidance=args.guidance, emphasis=args.emphasis,
              refiner_switch_by_sample_steps=args.refiner_switch_by_sample_steps or None,
              old_scheduling=args.old_scheduling or None,
              comma_padding_backtrack=args.comma_padding_backtrack, sdxl_clip_l_skip=args.sdxl_clip_l_skip or None,
              sdxl_crop_top=args.sdxl_crop_top, sdxl_crop_left=args.sdxl_crop_left,
              use_old_emphasis_implementation=args.use_old_emphasis_implementation or None,
              extra_noise=args.extra_noise, mask_weight=args.mask_weight, token_merging=args.token_merging,
              **cfg_skip_flags.kwargs(args))
    if args.seed_resize_from is not None:
        kw.update(seed_resize_from_w=args.seed_resize_from[0], seed_resize_from_h=args.seed_resize_from[1])
    if args.hypertile or args.hypertile_vae or args.hires_hypertile:
        kw["hypertile"] = HyperTile(unet=args.hypertile, unet_hires=args.hires_hypertile, vae=args.hypertile_vae)
    if args.hires:
        hires = dict(scale=args.hires_scale, upscaler=args.hires_upscaler, steps=args.hires_steps,
                     denoise=args.hires_denoise, width=args.hires_width, height=args.hires_height,
                     sampler=args.hires_sampler, scheduler=args.hires_scheduler, prompt=args.hires_prompt,
                     negative_prompt=args.hires_negative, token_merging=args.hires_token_merging)
        kw["hires"] = Hires(**{k: v for k, v in hires.items() if v is not None})
    if args.init_image is not None:
        kw.update(strength=args.strength, resize_mode=args.resize_mode, mask_blur=args.mask_blur,
                  inpainting_fill=args.inpainting_fill, inpaint_full_res=args.inpaint_full_res or None,
                  inpaint_full_res_padding=args.inpaint_padding, invert_mask=args.invert_mask or None,
                  noise_multiplier=args.noise_multiplier, color_correction=args.color_correction or None,
                  soft_inpainting=_soft_inpainting(args), image_cfg_scale=args.image_cfg_scale)
    return {k: v for k, v in kw.items() if v is not None}


def _soft_inpainting(args: argparse.Namespace) -> SoftInpainting | None:
    given = {name: getattr(args, f"soft_{name}") for name in SOFT_SETTINGS if getattr(args, f"soft_{name}") is not None}
    if not args.soft_inpainting:
        if given:
            raise InvalidArgument(f"soft-{next(iter(given)).replace('_', '-')}: a soft inpainting setting needs "
                                  "--soft-inpainting")
        return None
    return SoftInpainting(**given)


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..pipeline import dynamic_batch
    from ..pipeline.pipeline import load
    from ..upscale import Upscalers
    from ..text.wildcards import Wildcards

    user_loras = bool(args.lora)
    source = apply_infotext(args) if args.from_image is not None else None
    if args.prompt is None:
        raise InvalidArgument("prompt: give a prompt (or --from IMAGE)")
    script = chosen(args)
    apply_styles_flag(args)
    if (args.mask or args.outpaint) and args.init_image is None:
        raise InvalidArgument("init-image: --mask and --outpaint need --init-image")
    if args.mask and args.outpaint:
        raise InvalidArgument("mask: --outpaint makes its own mask; give --mask or --outpaint, not both")
    check_output(args.output)
    folders = resolve_generate_models(args, source)
    _check_paths(args, folders)
    ip_adapter_flags.check(args)
    set_threads(args.threads)
    if args.model is None and not BUILTIN_MODEL.is_file():
        raise InvalidArgument("model: no built-in model is installed; pass --model PATH")
    init = open_image(args.init_image, "init-image") if args.init_image is not None else None
    mask = open_image(args.mask, "mask") if args.mask is not None else None

    def open_pipe(model, vae):
        """A pipeline as the flags set it up (also one a script's checkpoint or VAE axis asks for)."""
        pipe = load(model, vae=vae, device=args.device, precision=args.precision, prediction=args.prediction,
                    embeddings_dir=args.embeddings_dir, loras_dir=args.loras_dir, memory=args.memory,
                    text_encoders=args.text_encoder)
        pipe.upscalers = Upscalers(None, pipe.device, allow_paths=True)  # --hires-upscaler may be a model file
        use_folders(pipe, folders, args.loras_dir)
        if args.vae_tiling:
            pipe.vae_tiling = True
        if args.compile:
            from ..pipeline.compiled import compile_in_place
            compile_in_place(pipe.family.network(pipe.model))
        if args.deep_cache is not None:
            from ..models.deep_cache import enable_deep_cache
            pipe.family.require("deep_cache", "deep-cache")
            enable_deep_cache(pipe.family.network(pipe.model), interval=args.deep_cache)
        if args.taesd is not None:
            _use_taesd(pipe, args)
        if args.backend == "openvino":
            from ..pipeline.openvino_unet import use_openvino
            use_openvino(pipe)
        return pipe

    pipe = open_pipe(args.model or BUILTIN_MODEL, args.vae)
    loras = _loras(args, pipe, from_image=source is not None and not user_loras)
    pipe.set_loras(loras)
    pipe.set_hypernets(_hypernets(args, pipe))
    kwargs = generation_kwargs(args)
    refiner = sampling_flags.refiner(args, folders, open_pipe)
    if refiner is not None:
        kwargs["refiner"] = refiner
    if args.hires_checkpoint is not None:
        if not args.hires or init is not None:
            raise InvalidArgument("hires-checkpoint: needs --hires (a txt2img hires fix)")
        kwargs["hires_model"] = open_pipe(resolve_model(folders, "checkpoints", args.hires_checkpoint,
                                                        "hires-checkpoint"), None)
    if args.control:
        kwargs["controls"] = controls_from_args(args, pipe, folders)
    if args.ip_adapter:
        kwargs["ip_adapter"] = ip_adapter_flags.spec_from_args(args, pipe, folders)
    if args.reference_image:
        kwargs["references"] = [open_image(f, "reference-image") for f in args.reference_image]
    bars: list = []

    def progress(step: int, total: int) -> None:
        if not bars:  # created on the first step, so argument errors print no empty bar
            memory = "" if pipe.memory == "normal" else f"; memory: {pipe.memory}"
            print(f"opensd: {pipe.precision.line(pipe.device)}{memory}", file=sys.stderr)
            bars.append(tqdm(total=total, desc="sampling", unit="step", file=sys.stderr))
        bars[0].update(step - bars[0].n)

    def make_call(pipe, init, mask, kw):
        return _pipeline_call(pipe, args, init, mask, kw)

    def texts_of(pipe, images, vae):
        return _infotexts(pipe, images, args, kwargs.get("controls", ()), loras, vae)

    try:
        if script is not None:
            face = CliFace(args, pipe, kwargs, init, mask, folders, open_pipe, make_call, texts_of)
            result = run_script(script, args, face, progress)
            images, texts = result.images, result.infotexts
            first = result.made[0].seed if result.made else -1
            made = [m.seed for m in result.made] if len(images) == result.grids + len(result.made) else []
            seeds = [first] * result.grids + made + [first] * (len(images) - result.grids - len(made))
        else:
            images = dynamic_batch.generate(make_call(pipe, init, mask, kwargs), args.prompt, args.negative or "",
                                            seed=kwargs.get("seed"), subseed=kwargs.get("subseed"),
                                            batch_size=kwargs.get("batch_size", 1),
                                            wildcards=Wildcards(args.wildcards_dir), progress=progress)
            texts, seeds = texts_of(pipe, images, args.vae), [image.info["seed"] for image in images]
    except InvalidArgument as e:
        raise _in_flag_terms(e, args) from None
    finally:
        for bar in bars:
            bar.close()
    if source is not None and script is None:
        report_differences(source, texts[0])
    for n, (image, text, seed) in enumerate(zip(images, texts, seeds)):
        if args.output is None:
            out = numbered_output(DEFAULT_DIR, seed)
        else:
            out = args.output if len(images) == 1 else args.output.with_name(
                f"{args.output.stem}-{n}{args.output.suffix}")
        _save(image, out, text)
        print(out)
        print(f"opensd: wrote {out} (seed {seed})", file=sys.stderr)
    peaks = [image.info["peak_memory"] for image in images if "peak_memory" in image.info]
    if peaks:  # pipeline/peak_memory.py: resident RAM on a CPU, allocated VRAM on CUDA
        print(f"opensd: {max(peaks, key=lambda m: m.bytes).line()}", file=sys.stderr)
    return 0


def _pipeline_call(pipe, args: argparse.Namespace, init, mask, kwargs: dict):
    """call(prompt, negative, progress, **changes): one pipeline run in the mode the flags ask for."""
    def call(prompt: str, negative: str, progress, **changes):
        kw = dict(kwargs, **changes)
        if init is None:
            return pipe.txt2img(prompt, negative, progress=progress, **kw)
        if args.outpaint:
            left, right, top, bottom = args.outpaint
            return pipe.outpaint(init, prompt, negative, left=left, right=right, top=top, bottom=bottom,
                                 progress=progress, **kw)
        return pipe.img2img(init, prompt, negative, mask=mask, progress=progress, **kw)
    return call


def _in_flag_terms(e: InvalidArgument, args: argparse.Namespace) -> InvalidArgument:
    """The pipeline's message with the parameter it names spelled as our flag ("clip_skip: ..." ->
    "clip-skip: ...", "hires scale: ..." -> "hires-scale: ...")."""
    name, sep, rest = str(e).partition(": ")
    dest = PARAM_DEST.get(name, name.replace(" ", "_"))
    return InvalidArgument(f"{dest.replace('_', '-')}: {rest}") if sep and hasattr(args, dest) else e


def _check_paths(args: argparse.Namespace, folders) -> None:
    """Files and folders the flags name, checked before anything loads, each error naming its flag."""
    from ..adapters.lora import prompt_lora_tags

    for flag, path in (("model", args.model), ("vae", args.vae), ("taesd", args.taesd)):
        if path is not None and not path.exists():
            raise InvalidArgument(f"{flag}: {path} does not exist")
    if args.backend == "openvino" and (args.compile or args.deep_cache is not None):
        raise InvalidArgument(f"backend: openvino cannot be combined with --{'compile' if args.compile else 'deep-cache'}")
    if args.deep_cache is not None and (args.deep_cache < 2 or args.compile):
        raise InvalidArgument(f"deep-cache: {args.deep_cache} must be 2 or more" if args.deep_cache < 2 else
                              "deep-cache: cannot be combined with --compile")
    for part in ("decoder", "encoder"):
        if getattr(args, f"vae_{part}") == "taesd" and args.taesd is None:
            found = [f for f in folders.folders("vae_approx") if f.is_dir()] if folders.root is not None else []
            if not found:
                raise InvalidArgument(f"taesd: --vae-{part} taesd needs --taesd FILE_OR_FOLDER (taesd_{part}."
                                      f"safetensors / taesdxl_{part}.safetensors, or their folder)")
            args.taesd = found[0]
    for flag, folder in (("embeddings-dir", args.embeddings_dir), ("loras-dir", args.loras_dir),
                         ("controlnet-dir", args.controlnet_dir)):
        if folder is not None and not folder.is_dir():
            raise InvalidArgument(f"{flag}: {folder} is not a folder")
    if args.loras_dir is None and folders.root is None and \
            any(prompt_lora_tags(t or "") for t in (args.prompt, args.hires_prompt)):
        raise InvalidArgument("loras-dir: the prompt's <lora:...> tags need --loras-dir FOLDER (or a models "
                              "folder, --models-dir) to find them in")


def _use_taesd(pipe, args: argparse.Namespace) -> None:
    from ..pipeline.tiny_vae import find_tiny_vae, tiny_vae_stem

    paths = [args.taesd] if args.taesd.is_file() else find_tiny_vae([args.taesd], pipe.config)
    if not paths:
        stem = tiny_vae_stem(pipe.config)
        raise InvalidArgument(f"taesd: no {stem}_decoder file in {args.taesd}" if stem else
                              f"taesd: no tiny autoencoder is published for this model's latent space "
                              f"({pipe.config.family})")
    pipe.use_tiny_vae(paths)
    pipe.vae_decoder, pipe.vae_encoder = args.vae_decoder or "full", args.vae_encoder or "full"


def _loras(args: argparse.Namespace, pipe, from_image: bool) -> list:
    """--lora NAME_OR_PATH[:UNET[:TE]] (or the LoRAs the --from image applied) as LoraSpecs."""
    from ..adapters.lora import parse_lora_arg

    def find(name: str) -> Path:
        path = Path(name)
        if path.is_file():
            return path
        if pipe.lora_folders is None:
            if from_image:
                raise missing_lora(name)
            raise InvalidArgument(f"lora: {name} is not a file (give a file, or --loras-dir to look it up in)")
        try:
            return pipe.resolve_lora(name)
        except InvalidArgument as e:
            raise InvalidArgument(f"lora: {str(e).removeprefix('prompt: ')}") from None

    return [parse_lora_arg(text, find) for text in args.lora]


def _hypernets(args: argparse.Namespace, pipe) -> list:
    """--hypernet NAME_OR_PATH[:STRENGTH] as (path, strength) pairs."""
    from ..adapters.hypernetwork import parse_hypernet_arg

    out = []
    for text in args.hypernet:
        name, strength = parse_hypernet_arg(text)
        path = Path(name)
        if not path.is_file():
            try:
                path = pipe.resolve_hypernet(name)
            except InvalidArgument as e:
                raise InvalidArgument(f"hypernet: {name} is not a file ({str(e).removeprefix('prompt: ')})") from None
        out.append((path, strength))
    return out


def _infotexts(pipe, images, args: argparse.Namespace, controls, loras, vae) -> list[str]:
    from ..library.hashes import model_hash
    from ..pipeline.infotext_params import image_infotext

    path = pipe.loaded.path
    hash_ = model_hash(path) if path.is_file() else None
    return [image_infotext(pipe, image, img2img=args.init_image is not None,
                           mask=args.mask is not None or bool(args.outpaint), model_hash=hash_, vae=vae,
                           controls=controls, extra_loras=loras, extra_hypernets=pipe.hypernet_specs)
            for image in images]


def _save(image, out: Path, text: str) -> None:
    from ..pipeline.infotext import save_image

    try:
        save_image(image, out, text)
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"output: cannot write {out} ({e})") from None
