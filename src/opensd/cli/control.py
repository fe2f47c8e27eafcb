"""ControlNet commands: `opensd preprocess`, `opensd train-controlnet`, and the parsing of
`opensd generate --control ...` (see docs/controlnet.md)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..adapters.union_types import control_type_index
from ..errors import InvalidArgument
from ..training.controlnet_args import add_arguments
from .common import open_image
from .model_flags import add_models_dir_flag, model_folders, resolve_model

CONTROL_HELP = ("MODEL,IMAGE[,weight=W][,start=S][,end=E][,pre=NAME][,guess][,resize=MODE][,type=TYPE]: a ControlNet "
                "(path, or name in --controlnet-dir or the models folder) and its control image; pre runs a preprocessor "
                "(canny, softedge, scribble, lineart, depth_anything_v2, openpose, invert, ...) on the image first; type picks a "
                "Union ControlNet's control type (openpose, depth, softedge, canny, normal, segment, tile, repaint; "
                "default auto); mask=FILE (white = repaint) and inpaint_image=FILE: a Z-Image Fun ControlNet 2.x's "
                "inpainting (mask=: the Qwen-Image blockwise Inpaint file's too; with --mask both default to the "
                "inpainting's mask and init image), refiner_in_model its 2.x refiner residuals in alibaba-pai's and ComfyUI's order (default: "
                "diffusers'). Repeatable.")
_RESIZE = {"just": "just resize", "crop": "crop and resize", "fill": "resize and fill"}


def register(sub) -> None:
    pre = sub.add_parser("preprocess", help="make a ControlNet control image (canny, softedge, scribble, ...)")
    pre.add_argument("kind", help="canny, softedge (HED), softedge_safe, scribble (HED fake scribble), "
                                  "scribble_xdog, scribble_threshold, tile, color, lineart (simple), "
                                  "lineart_standard, lineart_realistic / lineart_coarse / lineart_anime / "
                                  "lineart_manga (learned), softedge_pidinet / softedge_pidisafe / scribble_pidinet / "
                                  "t2ia_sketch_pidi (PiDiNet), invert, binary, depth_anything_v2 (Depth Anything V2 depth), "
                                  "openpose (body skeletons; body_pose_model.pth), openpose_hand / openpose_face / "
                                  "openpose_faceonly / openpose_full (with hand_pose_model.pth / facenet.pth), "
                                  "dw_openpose_full (DWPose: yolox_l.onnx and dw-ll_ucoco_384.onnx; "
                                  'pip install "opensd[dwpose]"), depth/pose (passthrough)')
    pre.add_argument("image", type=Path)
    pre.add_argument("-o", "--output", type=Path, required=True)
    pre.add_argument("--low", type=int, help="canny: low threshold (default 100)")
    pre.add_argument("--high", type=int, help="canny: high threshold (default 200)")
    pre.add_argument("--threshold", type=float,
                     help="lineart: 0..1 (0.08); binary: 0..255 (127; 0: Otsu); scribble_xdog: 1..255 (32)")
    pre.add_argument("--width", type=int, help="resize the result to this width (with --height)")
    pre.add_argument("--height", type=int)
    pre.add_argument("--resize-mode", choices=list(_RESIZE.values()), default="just resize")
    pre.add_argument("--weights", help="depth_anything_v2 / lineart_* / openpose: the model file, a path or a name in the models "
                                       "folder's ControlNetPreprocessor/ (default: the installed vitl, vitb or vits; "
                                       "sk_model.pth, sk_model2.pth, netG.pth, erika.pth; *pidinet*: table5_pidinet.pth; "
                                       "openpose*: body_pose_model.pth (hand_pose_model.pth and facenet.pth "
                                       "are looked for next to it and in the models folder); "
                                       "dw_openpose_full: dw-ll_ucoco_384.onnx (yolox_l.onnx next to it or in the "
                                       "models folder); "
                                       "softedge/scribble: "
                                       "ControlNetHED.pth if installed)")
    add_models_dir_flag(pre)
    pre.set_defaults(func=cmd_preprocess)

    tr = sub.add_parser("train-controlnet", help="train a ControlNet (Canny) for a model on an image dataset")
    add_arguments(tr)  # the flags of `python -m opensd.training.controlnet_train`
    add_models_dir_flag(tr)  # --model may name a checkpoint in the models folder
    tr.set_defaults(func=cmd_train)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ..adapters.preprocessors import fit_image, preprocess

    options = {}
    if args.low is not None:
        options["low"] = args.low
    if args.high is not None:
        options["high"] = args.high
    if args.threshold is not None:
        options["threshold"] = args.threshold
    folders = model_folders(args)
    if args.weights is not None:
        options["weights"] = resolve_model(folders, "preprocessors", args.weights, "weights")
    out = preprocess(args.kind, open_image(args.image, "image"), folders=folders, **options)
    if args.width or args.height:
        if not (args.width and args.height) or args.width < 1 or args.height < 1:
            raise InvalidArgument("width/height: give both, as positive integers")
        out = fit_image(out, args.width, args.height, args.resize_mode)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        out.save(args.output)
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"output: cannot write {args.output} ({e})") from None
    print(args.output)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.controlnet_train import run

    args.model = resolve_model(model_folders(args), "checkpoints", args.model, "model")
    out = run(args)
    if out is not None:  # data-parallel: only rank 0 writes
        print(out)
    return 0


# --- generate --control ------------------------------------------------------------------------

def parse_control(text: str) -> dict:
    """'MODEL,IMAGE,weight=0.8,pre=canny,guess' -> {'model':..., 'image':..., 'weight': 0.8, ...}."""
    spec: dict = {}
    positional = ["model", "image"]
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        key, eq, value = part.partition("=")
        key = key.strip().lower()
        if not eq:
            if key in ("guess", "guess_mode"):
                spec["guess_mode"] = True
                continue
            if key == "refiner_in_model":
                spec["refiner_in_model"] = True
                continue
            if not positional:
                raise InvalidArgument(f"control: unexpected {part!r} in {text!r}")
            spec[positional.pop(0)] = part
            continue
        value = value.strip()
        if key in ("weight", "start", "end"):
            try:
                spec[key] = float(value)
            except ValueError:
                raise InvalidArgument(f"control {key}: {value!r} is not a number") from None
        elif key in ("pre", "preprocessor"):
            spec["pre"] = value
        elif key == "resize":
            spec["resize_mode"] = _RESIZE.get(value.lower(), value.lower())
        elif key in ("guess", "guess_mode"):
            spec["guess_mode"] = value.lower() in ("1", "true", "yes", "on")
        elif key in ("type", "control_type"):
            spec["control_type"] = control_type_index(value, "control type")
        elif key in ("mask", "inpaint_image"):
            spec[key] = value
        elif key in ("model", "image"):
            spec[key] = value
            if key in positional:
                positional.remove(key)
        else:
            raise InvalidArgument(f"control: unknown option {key!r} (weight, start, end, pre, guess, resize, type, mask, "
                                  "inpaint_image)")
    if "model" not in spec or "image" not in spec:
        raise InvalidArgument(f"control: {text!r} needs a model and an image (MODEL,IMAGE[,options])")
    return spec


def resolve_controlnet(name: str, folder: Path | None, models=None) -> Path:
    """A path, else a name in --controlnet-dir, the models folder (a ModelFolders) or among the
    built-in ControlNets."""
    from ..library.models_dir import AmbiguousName, ModelFolders

    path = Path(name)
    if path.exists():
        return path
    if folder is not None and not folder.is_dir():
        raise InvalidArgument(f"controlnet-dir: {folder} is not a folder")
    tried = [ModelFolders(None, include_builtin=False, extra={"controlnet": [folder]})] if folder else []
    if models is not None and models.root is not None:
        tried.append(ModelFolders(models.root, include_builtin=False))
    tried.append(ModelFolders(None))  # the built-in model's ControlNets: user folders win
    for folders in tried:
        try:
            return folders.resolve("controlnet", name)
        except AmbiguousName as e:
            raise InvalidArgument(f"control: {str(e).split(': ', 1)[-1]}") from None
        except InvalidArgument as e:
            problem = e
    raise InvalidArgument(f"control: ControlNet {name!r} not found as a path, in --controlnet-dir, the models "
                          f"folder or built in ({problem})")


def controls_from_args(args: argparse.Namespace, pipe, models=None) -> list:
    from ..adapters.controlnet import ControlSpec, load_controlnet
    from ..adapters.preprocessors import preprocess

    specs, cache = [], {}
    for text in args.control or []:
        s = parse_control(text)
        image = open_image(Path(s.pop("image")), "control image")  # a typo shows before a slow load
        for key in ("mask", "inpaint_image"):
            if key in s:
                s[key] = open_image(Path(s[key]), f"control {key.replace('_', ' ')}")
        path = resolve_controlnet(s.pop("model"), getattr(args, "controlnet_dir", None), models)
        if path not in cache:
            cache[path] = load_controlnet(path, pipe)
        pre = s.pop("pre", None)
        if pre:
            image = preprocess(pre, image, folders=models)
        specs.append(ControlSpec(cache[path], image, preprocessor=pre or "none", **s))
        specs[-1].validate()  # a type for a plain ControlNet, or beyond this union file's types
        print(f"opensd: control {cache[path].name} weight {specs[-1].weight}", file=sys.stderr)
    return specs
