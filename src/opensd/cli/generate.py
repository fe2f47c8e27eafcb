"""`opensd generate`: parse, call the pipeline, write files."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidArgument
from .common import BUILTIN_MODEL, float_arg, int_arg, open_image, read_image_infotext, set_threads

# Generation flags whose defaults are applied only after --from, so an image's parameters fill
# what the user did not type.
DEFAULTS = dict(negative="", steps=20, cfg=7.0, seed=-1, batch=1, sampler="euler", strength=0.75,
                resize_mode="just resize", mask_blur=4, inpainting_fill="original", inpaint_padding=32,
                hires_scale=2.0, hires_denoise=0.7, hires_upscaler="latent", subseed_strength=0.0)


def _sides(text: str) -> tuple[int, int, int, int]:
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,RIGHT,TOP,BOTTOM")
    return tuple(int_arg(p) for p in parts)  # type: ignore[return-value]


def register(sub) -> None:
    gen = sub.add_parser("generate", help="text to image, image to image, inpainting, outpainting")
    gen.add_argument("prompt", nargs="?", help="the prompt (A1111 syntax); optional with --from")
    gen.add_argument("--model", "-m", type=Path,
                     help="checkpoint file (.safetensors/.ckpt) or diffusers folder; default: the built-in model")
    gen.add_argument("--vae", type=Path, help="standalone VAE file replacing the checkpoint's VAE")
    gen.add_argument("--embeddings-dir", type=Path, help="folder of textual-inversion embeddings (use by file name)")
    gen.add_argument("--lora", action="append", default=[], metavar="NAME_OR_PATH[:UNET[:TE]]",
                     help="apply a LoRA (repeatable); strengths default to 1, TE to the UNet one")
    gen.add_argument("--loras-dir", type=Path, help="folder of LoRAs for --lora NAME and <lora:name:w> in prompts")
    gen.add_argument("--from", dest="from_image", type=Path,
                     help="reuse the generation parameters stored in this image (flags you give win)")
    g = gen.add_argument_group("sampling")
    g.add_argument("--negative", help="negative prompt")
    g.add_argument("--steps", type=int_arg)
    g.add_argument("--cfg", type=float_arg, help="classifier-free guidance scale (default 7)")
    g.add_argument("--seed", type=int_arg, help="-1 (default) picks a random seed")
    g.add_argument("--subseed", type=int_arg, help="variation seed")
    g.add_argument("--subseed-strength", type=float_arg, help="0..1, how far towards the variation seed")
    g.add_argument("--width", type=int_arg, help="default: the model's native size (or the init image's)")
    g.add_argument("--height", type=int_arg)
    g.add_argument("--batch", type=int_arg, help="images to generate (seeds seed..seed+N-1)")
    g.add_argument("--sampler", help='e.g. "Euler a", "DPM++ 2M", dpmpp_2m (default Euler)')
    g.add_argument("--scheduler", help="e.g. karras, exponential, sgm_uniform (default: automatic)")
    g.add_argument("--clip-skip", type=int_arg)
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
    i.add_argument("--outpaint", type=_sides, metavar="L,R,T,B", help="extend the init image by these pixels")
    h = gen.add_argument_group("hires fix")
    h.add_argument("--hires", action="store_true", help="upscale and repaint in a second pass")
    h.add_argument("--hires-scale", type=float_arg)
    h.add_argument("--hires-steps", type=int_arg, help="default: same as --steps")
    h.add_argument("--hires-denoise", type=float_arg)
    h.add_argument("--hires-upscaler", choices=["latent", "latent (nearest)", "lanczos"])
    h.add_argument("--hires-sampler")
    h.add_argument("--hires-prompt")
    c = gen.add_argument_group("controlnet")
    c.add_argument("--control", action="append", metavar="MODEL,IMAGE[,OPTIONS]",
                   help="MODEL,IMAGE[,weight=W][,start=S][,end=E][,pre=canny][,guess][,resize=crop]; repeatable")
    c.add_argument("--controlnet-dir", type=Path, help="folder where --control looks up ControlNets by name")
    d = gen.add_argument_group("device")
    d.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    d.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="cpu")
    d.add_argument("--prediction", choices=["eps", "v"], help="override eps/v for SD2 files that do not say")
    d.add_argument("--threads", type=int_arg, help="CPU threads for PyTorch (default: all cores)")
    gen.add_argument("-o", "--output", type=Path, default=Path("outputs/opensd.png"),
                     help="output path (.png, .jpg, .webp); with --batch N, files get -0, -1, ... suffixes")
    gen.set_defaults(func=cmd_generate)


def apply_infotext(args: argparse.Namespace) -> None:
    """Fill unset flags from an image's A1111 parameters (--from)."""
    from ..pipeline.infotext import parse_infotext

    text = read_image_infotext(args.from_image, "from")
    if text is None:
        raise InvalidArgument(f"from: {args.from_image} carries no generation parameters")
    prompt, negative, params = parse_infotext(text)
    fill = {"prompt": prompt, "negative": negative}
    table = {"Steps": ("steps", int), "CFG scale": ("cfg", float), "Seed": ("seed", int),
             "Sampler": ("sampler", str), "Schedule type": ("scheduler", str), "Clip skip": ("clip_skip", int),
             "Denoising strength": ("strength", float), "Variation seed": ("subseed", int),
             "Variation seed strength": ("subseed_strength", float), "Size-1": ("width", int),
             "Size-2": ("height", int), "Hires upscale": ("hires_scale", float), "Hires steps": ("hires_steps", int)}
    for key, (name, kind) in table.items():
        if key in params:
            try:
                fill[name] = kind(params[key])
            except ValueError:
                raise InvalidArgument(f"from: {key}: {params[key]!r} is not a valid value") from None
    if fill.get("scheduler") == "Automatic":
        fill["scheduler"] = None
    if "Hires upscale" in params:
        fill["hires"] = True
        fill["width"] = fill.get("width") and round(fill["width"] / fill.get("hires_scale", 2) / 8) * 8
        fill["height"] = fill.get("height") and round(fill["height"] / fill.get("hires_scale", 2) / 8) * 8
    for name, value in fill.items():
        if getattr(args, name, None) in (None, False) and value not in (None, ""):
            setattr(args, name, value)


def generation_kwargs(args: argparse.Namespace) -> dict:
    from ..pipeline.params import Hires

    kw = dict(steps=args.steps, cfg=args.cfg, seed=args.seed, width=args.width, height=args.height,
              batch_size=args.batch, sampler=args.sampler, scheduler=args.scheduler, clip_skip=args.clip_skip,
              subseed=args.subseed, subseed_strength=args.subseed_strength)
    if args.hires:
        kw["hires"] = Hires(scale=args.hires_scale, upscaler=args.hires_upscaler, steps=args.hires_steps,
                            denoise=args.hires_denoise, sampler=args.hires_sampler, prompt=args.hires_prompt)
    if args.init_image is not None:
        kw.update(strength=args.strength, resize_mode=args.resize_mode, mask_blur=args.mask_blur,
                  inpainting_fill=args.inpainting_fill, inpaint_full_res=args.inpaint_full_res,
                  inpaint_full_res_padding=args.inpaint_padding, invert_mask=args.invert_mask)
    return {k: v for k, v in kw.items() if v is not None}


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..pipeline.pipeline import load

    if args.from_image is not None:
        apply_infotext(args)
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not args.prompt and args.prompt != "":
        raise InvalidArgument("prompt: give a prompt (or --from IMAGE)")
    if (args.mask or args.outpaint) and args.init_image is None:
        raise InvalidArgument("init-image: --mask and --outpaint need --init-image")
    set_threads(args.threads)
    model = args.model or BUILTIN_MODEL
    if args.model is None and not BUILTIN_MODEL.is_file():
        raise InvalidArgument("model: no built-in model is installed; pass --model PATH")
    pipe = load(model, vae=args.vae, device=args.device, precision=args.precision, prediction=args.prediction,
                embeddings_dir=args.embeddings_dir, loras_dir=args.loras_dir)
    if args.lora:
        from ..adapters.lora import parse_lora_arg

        def find(name: str) -> Path:
            path = Path(name)
            if path.is_file() or pipe.lora_folders is None:
                if not path.is_file():
                    raise InvalidArgument(f"lora: {name} does not exist (give a file, or --loras-dir)")
                return path
            try:
                return pipe.resolve_lora(name)
            except InvalidArgument as e:
                raise InvalidArgument(f"lora: {str(e).removeprefix('prompt: ')}") from None

        pipe.set_loras([parse_lora_arg(text, find) for text in args.lora])
    kwargs = generation_kwargs(args)
    if args.control:
        from .control import controls_from_args
        kwargs["controls"] = controls_from_args(args, pipe)
    bars: list = []

    def progress(step: int, total: int) -> None:
        if not bars:  # created on the first step, so argument errors print no empty bar
            bars.append(tqdm(total=total, desc="sampling", unit="step", file=sys.stderr))
        bars[0].update(step - bars[0].n)

    try:
        if args.init_image is None:
            images = pipe.txt2img(args.prompt, args.negative, progress=progress, **kwargs)
        else:
            init = open_image(args.init_image, "init-image")
            mask = open_image(args.mask, "mask") if args.mask else None
            if args.outpaint:
                left, right, top, bottom = args.outpaint
                images = pipe.outpaint(init, args.prompt, args.negative, left=left, right=right, top=top,
                                       bottom=bottom, progress=progress, **kwargs)
            else:
                images = pipe.img2img(init, args.prompt, args.negative, mask=mask, progress=progress, **kwargs)
    finally:
        for bar in bars:
            bar.close()
    for n, image in enumerate(images):
        out = args.output if len(images) == 1 else args.output.with_name(
            f"{args.output.stem}-{n}{args.output.suffix or '.png'}")
        save_with_infotext(pipe, image, out, args, kwargs)
        print(out)
        print(f"opensd: wrote {out} (seed {image.info['seed']})", file=sys.stderr)
    return 0


def save_with_infotext(pipe, image, out: Path, args, kwargs) -> None:
    from ..library.hashes import model_hash
    from ..pipeline.infotext import format_infotext, generation_params, save_image
    from ..sampling.names import resolve, schedule_label

    hires = kwargs.get("hires")
    sampler, schedule = resolve(args.sampler, args.scheduler)
    if schedule_label(sampler, schedule) == "Automatic":
        schedule = None  # A1111 writes no "Schedule type" for a sampler's plain default schedule
    params = generation_params(
        steps=args.steps, sampler=sampler, cfg=args.cfg, seed=image.info["seed"],
        width=image.width if hires is None else args.width or pipe.config.resolution,
        height=image.height if hires is None else args.height or pipe.config.resolution,
        schedule=schedule, model=pipe.name,
        model_hash=model_hash(pipe.loaded.path) if pipe.loaded.path.is_file() else None,
        variation_seed=args.subseed, variation_seed_strength=args.subseed_strength or 0.0,
        denoising_strength=args.strength if args.init_image is not None else (
            hires.denoise if hires is not None else None),
        clip_skip=args.clip_skip,
        hires_upscale=hires.scale if hires is not None else None,
        hires_steps=hires.steps if hires is not None else None,
        hires_upscaler=hires.upscaler if hires is not None else None,
        lora_hashes=pipe.lora_hashes() or None)
    try:
        save_image(image, out, format_infotext(args.prompt, args.negative, params))
    except ValueError as e:
        raise InvalidArgument(f"output: {e}") from None

