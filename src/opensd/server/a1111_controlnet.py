"""ControlNet through the A1111 API, as the sd-webui-controlnet extension takes it:
``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`` on txt2img/img2img, plus its
``/controlnet/model_list``, ``/module_list``, ``/version`` and ``/detect`` routes.

A unit (webuiapi's ``ControlNetUnit.to_dict()`` shape): ``image`` (base64, or ``{"image": ..,
"mask": ..}``; older clients send ``input_image``), ``module`` (preprocessor), ``model``
("name [hash]"; "None" skips the unit), ``weight``, ``guidance_start``/``guidance_end``,
``control_mode`` (0 Balanced, 1 "My prompt is more important" = the 0.825 decay of the residuals,
2 "ControlNet is more important" = guess mode), ``resize_mode`` (0 Just Resize, 1 Crop and
Resize / Inner Fit, 2 Resize and Fill / Outer Fit), ``processor_res``, ``threshold_a``/``_b``
(canny low/high, binary and scribble_xdog threshold), ``pixel_perfect``, ``enabled``, ``guessmode``, and
``union_control_type`` for Union ControlNets (the extension's names "OpenPose", "Depth", "Soft
Edge", "Hard Edge", "Normal Map", "Segmentation", "Tile", "Inpaint"; "Unknown" or absent: no type,
as ComfyUI's "auto"; see adapters/union_types.py).

IP-Adapter units (module ip-adapter_*, an ip-adapter model) are read by a1111_ip_adapter; the inpaint
modules (inpaint / inpaint_global_harmonious, inpaint_only, inpaint_only+lama, with their ``mask``) by
a1111_cn_inpaint. A unit's ``mask`` with a DiT ControlNet that inpaints from one (Z-Image Fun 2.x, Qwen-Image
blockwise Inpaint) is its mask whatever the module (_dit_mask; adapters/dit_control_mask.py).

Accepted but not acted on (listed in info["unsupported_fields"]): ``mask`` of other modules with SD ControlNets, ``hr_option``
other than "Both", and modules we only approximate (depth/normal/seg estimators other than
depth_anything_v2 -> the image is used as the map as it is). openpose_hand/_face/_faceonly/_full run
OpenPose's hand and face nets; dw_openpose_full runs DWPose (adapters/dwpose.py; opensd[dwpose]). Modules
that run a model file (the learned lineart nets, PiDiNet's table5_pidinet.pth, OpenPose's
body_pose_model.pth and hand_pose_model.pth / facenet.pth, DWPose's yolox_l.onnx and
dw-ll_ucoco_384.onnx, Depth Anything V2) answer 422 naming the file when it is not installed."""
from __future__ import annotations

import math

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from ..adapters.union_types import FLUX_MODES, check_control_type, control_type_index
from ..errors import InvalidArgument, OpenSDError
from . import a1111_cn_inpaint as cn_inpaint, a1111_ip_adapter, images_io
from .a1111_units import HASH_SUFFIX, image_field, number, unit_list

RESIZE = {0: "just resize", 1: "crop and resize", 2: "resize and fill"}
_RESIZE_NAMES = {"just resize": 0, "crop and resize": 1, "inner fit": 1, "resize and fill": 2, "outer fit": 2,
                 "envelope": 2}
MAX_UNITS = 10  # enabled units in one request: sd-webui-controlnet's own most (its unit number setting)
MAX_LISTED_UNITS = 100  # units listed, disabled ones too (500,000 disabled units took 23 s to go through)
CONTROL_MODES = {"balanced": 0, "my prompt is more important": 1, "controlnet is more important": 2}
# extension module name -> (our preprocessor, exact?)
MODULES: dict[str, tuple[str, bool]] = {
    "none": ("none", True), "canny": ("canny", True), "invert": ("invert", True), "binary": ("binary", True),
    "softedge_hed": ("softedge", True), "hed": ("softedge", True), "softedge_hedsafe": ("softedge_safe", True),
    "hed_safe": ("softedge_safe", True), "softedge_pidinet": ("softedge_pidinet", True),
    "pidinet": ("softedge_pidinet", True), "softedge_pidisafe": ("softedge_pidisafe", True),
    "pidinet_safe": ("softedge_pidisafe", True),
    "scribble_hed": ("scribble", True), "scribble": ("scribble", True), "fake_scribble": ("scribble", True),
    "scribble_pidinet": ("scribble_pidinet", True), "pidinet_scribble": ("scribble_pidinet", True),
    "t2ia_sketch_pidi": ("t2ia_sketch_pidi", True), "pidinet_sketch": ("t2ia_sketch_pidi", True),
    "scribble_xdog": ("scribble_xdog", True),
    "lineart_standard": ("lineart_standard", True), "lineart": ("lineart_realistic", True),
    "lineart_realistic": ("lineart_realistic", True), "lineart_coarse": ("lineart_coarse", True),
    "lineart_anime": ("lineart_anime", True), "lineart_anime_denoise": ("lineart_manga", True),
    "t2ia_color_grid": ("color", True), "color": ("color", True),
    "depth_anything_v2": ("depth_anything_v2", True),
    "openpose": ("openpose", True), "openpose_hand": ("openpose_hand", True), "openpose_face": ("openpose_face", True),
    "openpose_faceonly": ("openpose_faceonly", True), "openpose_full": ("openpose_full", True),
    "dw_openpose_full": ("dw_openpose_full", True),
    "inpaint": ("inpaint", True), "inpaint_global_harmonious": ("inpaint", True),
    "inpaint_only": ("inpaint_only", True), "inpaint_only+lama": ("inpaint_only+lama", True),
}
_LISTED_ALIASES = ("inpaint_global_harmonious",)  # a label of the extension's, not a module name
_PASSTHROUGH = ("depth", "dw_openpose", "normal", "seg", "segmentation")


def _module(name, field: str) -> tuple[str, bool]:
    if name is None:
        return "none", True
    if not isinstance(name, str):
        raise InvalidArgument(f"{field}: expected a preprocessor name, got {name!r}")
    key = name.strip().lower().split(" (", 1)[0].strip()
    if key in ("", "none"):
        return "none", True
    if key in MODULES:
        return MODULES[key]
    if key.startswith(_PASSTHROUGH):
        return "passthrough", False
    raise InvalidArgument(f"{field}: unknown preprocessor {name!r} (supported: {', '.join(module_list())})")


def module_list(alias_names: bool = False) -> list[str]:
    """The extension's module names (`alias_names`: its labels, inpaint_global_harmonious for inpaint)."""
    names = [m for m in MODULES if m not in _LISTED_ALIASES] + ["depth", "depth_midas", "normal_bae", "seg_ofade20k"] \
        + list(a1111_ip_adapter.MODULES)
    return [cn_inpaint.LABELS.get(m, m) for m in names] if alias_names else names


def _resize(value, field: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in RESIZE:
        return RESIZE[value]
    if isinstance(value, str):
        key = value.strip().lower()
        for name, idx in _RESIZE_NAMES.items():
            if key.startswith(name):
                return RESIZE[idx]
    raise InvalidArgument(f"{field}.resize_mode: {value!r} is not 0/1/2, Just Resize, Crop and Resize or "
                          "Resize and Fill")


def _control_mode(unit: dict, field: str) -> int:
    value = unit.get("control_mode")
    if value is None:
        return 2 if unit.get("guessmode") in (True, 2) else 0
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, 2):
        return value
    if isinstance(value, str) and value.strip().lower() in CONTROL_MODES:
        return CONTROL_MODES[value.strip().lower()]
    raise InvalidArgument(f"{field}.control_mode: {value!r} is not 0/1/2, Balanced, My prompt is more "
                          "important or ControlNet is more important")


def parse_units(req, folders, max_pixels: int, img2img: bool) -> list[dict]:
    """Check every unit (422 naming the field) and return the enabled ones as plain JSON: the
    job's stored plan. Images are decoded here to be checked, and again in the worker."""
    out, units = [], unit_list(req)
    if len(units) > MAX_LISTED_UNITS:
        raise InvalidArgument(f"alwayson_scripts.controlnet.args: {len(units):,} units; at most {MAX_LISTED_UNITS}, "
                              f"{MAX_UNITS} of them enabled")
    for i, unit in enumerate(units):
        field = f"alwayson_scripts.controlnet.args[{i}]"
        if not isinstance(unit, dict):
            raise InvalidArgument(f"{field}: expected a ControlNet unit object")
        if unit.get("enabled", True) is False:
            continue
        model = unit.get("model")
        if model is None or (isinstance(model, str) and model.strip() in ("", "None", "none")):
            continue
        if not isinstance(model, str):
            raise InvalidArgument(f"{field}.model: expected a ControlNet name, got {model!r}")
        if a1111_ip_adapter.is_unit(unit):
            out.append(a1111_ip_adapter.parse_unit(unit, i, field, folders, max_pixels))
            continue
        try:
            path = folders.resolve("controlnet", HASH_SUFFIX.sub("", model))
        except InvalidArgument as e:
            raise InvalidArgument(f"{field}.model: {str(e).split(': ', 1)[-1]}") from None
        pre, exact = _module(unit.get("module"), f"{field}.module")
        has_mask = bool(getattr(req, "mask", None))
        inpaint = cn_inpaint.plan(unit, pre, field, max_pixels, img2img, has_mask, folders) \
            if cn_inpaint.is_inpaint(pre) else None
        mask_source = inpaint["mask_source"] if inpaint is not None else _dit_mask(unit, path, field, model, max_pixels)
        pre = pre if inpaint is None else inpaint["module"]
        weights = _weights(pre, folders, f"{field}.module") if inpaint is None else inpaint["weights"]
        image = image_field(unit)
        if image is None and not img2img:
            raise InvalidArgument(f"{field}.image: a control image is required for txt2img")
        if image is not None:
            images_io.decode_b64(image, f"{field}.image", max_pixels)
        start = number(unit, "guidance_start", field, 0.0, 0.0, 1.0)
        end = number(unit, "guidance_end", field, 1.0, 0.0, 1.0)
        if start > end:
            raise InvalidArgument(f"{field}.guidance_start: {start} is after guidance_end {end}")
        res = unit.get("processor_res", 512)
        res = 512 if res is None or res == -1 else res
        if isinstance(res, bool) or not isinstance(res, (int, float)) or not math.isfinite(res) or not 64 <= res <= 2048:
            raise InvalidArgument(f"{field}.processor_res: {res!r} must be -1 or 64..2048")
        out.append({
            "index": i, "path": str(path), "module": pre, "exact": exact,
            "weight": number(unit, "weight", field, 1.0, 0.0, 2.0), "start": start, "end": end,
            "control_mode": _control_mode(unit, field), "resize_mode": _resize(unit.get("resize_mode", 0), field),
            "processor_res": int(res), "pixel_perfect": bool(unit.get("pixel_perfect", False)),
            "threshold_a": number(unit, "threshold_a", field, -1, -1, 1024),
            "threshold_b": number(unit, "threshold_b", field, -1, -1, 1024),
            "control_type": _union_type(unit.get("union_control_type"), f"{field}.union_control_type"),
            "control_type_name": unit.get("union_control_type"),  # a Flux Union's modes have names of their own
            "weights": weights, "mask_source": mask_source,
        })
        if len(out) > MAX_UNITS:
            raise InvalidArgument(f"{field}: more than {MAX_UNITS} enabled ControlNet units (sd-webui-controlnet's "
                                  "most); each runs its network at every step")
    a1111_ip_adapter.check_count(out)
    return out


def _dit_mask(unit: dict, path, field: str, model: str, max_pixels: int) -> str | None:
    """"unit" when a unit of another module gives a mask its DiT ControlNet file inpaints from (Z-Image
    Fun 2.x, Qwen-Image blockwise Inpaint: passed as the CLI's mask=, fitted like the control image);
    a mask for a Z-Image / Qwen-Image file without mask channels is refused as the CLI refuses it; an
    SD ControlNet's is accepted and not applied, as before (unsupported). Without a mask of its own,
    an img2img inpainting request's mask reaches the unit in the pipeline (adapters/dit_control_mask)."""
    from ..adapters.dit_control_mask import file_takes_mask

    b64, where = cn_inpaint.mask_field(unit, field)
    takes = None if b64 is None else file_takes_mask(path)
    if takes is False:
        raise InvalidArgument(f"{where}: {HASH_SUFFIX.sub('', model)} takes no mask; masks are for ControlNet 1.1's "
                              "inpaint modules, Z-Image Fun ControlNet 2.x files and DiffSynth's Qwen-Image "
                              "blockwise Inpaint file")
    if not takes:
        return None
    images_io.decode_b64(b64, where, max_pixels)
    return "unit"


def _weights(module: str, folders, field: str) -> str | dict | None:
    """The model file a module runs (Depth Anything V2's, the learned lineart nets'; OpenPose with hands or
    face: {"body", "hand", "face"} paths), found when the request comes: a missing file is the client's
    422 naming where to put it, not a failed job."""
    from ..adapters.preprocessors import installed_weights, needs_weights, optional_weights

    if not needs_weights(module):
        found = optional_weights(module, folders)  # controlnet_aux's HED when the user has it
        return None if found is None else str(found)
    try:
        found = installed_weights(module, folders)
        return found if isinstance(found, dict) else str(found)
    except InvalidArgument as e:
        raise InvalidArgument(f"{field}: {module}: {str(e).split(': ', 1)[-1]}") from None


def preprocess_image(image, module: str, res: int, threshold_a: float, threshold_b: float, max_pixels: int,
                     weights: str | None = None):
    """Run one of our preprocessors as the extension would: on the image scaled so that its short
    side is `res` (modules other than none/passthrough). The scaled size is checked against
    `max_pixels` first: a thin image (1 x 4000) would grow to 512 x 2,048,000 pixels. `weights`:
    the model file of a module that runs one (_weights)."""
    from ..adapters.preprocessors import preprocess

    if module in ("none", "passthrough"):
        return image.convert("RGB")
    w, h = image.size
    k = res / min(w, h)
    if abs(k - 1) > 1e-6:
        from ..adapters.preprocessors import fit_image
        sw, sh = max(1, round(w * k)), max(1, round(h * k))
        if sw * sh > max_pixels:
            raise InvalidArgument(f"image of {w}x{h} pixels scaled to a {res}-pixel short side would be "
                                  f"{sw}x{sh}, more than the {max_pixels}-pixel limit")
        image = fit_image(image, sw, sh)
    options = {}
    if module == "canny":
        low = 100 if threshold_a < 0 else threshold_a
        high = 200 if threshold_b < 0 else threshold_b
        options = {"low": int(min(low, 255)), "high": int(min(high, 255))}
    elif module == "binary" and threshold_a >= 0:
        options = {"threshold": int(min(threshold_a, 255))}
    elif module == "scribble_xdog" and threshold_a >= 1:
        options = {"threshold": int(min(threshold_a, 255))}
    elif weights is not None:
        options = {"weights": weights}
    return preprocess(module, image, **options)


def _pixel_perfect_res(image, width: int, height: int, resize_mode: str) -> int:
    """The extension's pixel-perfect resolution: the map's short side at the scale it is fitted by."""
    from ..adapters.preprocessors import pixel_perfect_resolution

    return pixel_perfect_resolution(*image.size, width, height, resize_mode == "resize and fill")


def _union_type(value, field: str):
    """The ControlNet++ type index of a name, None for a Flux Union mode name (resolved once the file is
    known to be a Flux ControlNet); InvalidArgument for neither."""
    try:
        return control_type_index(value, field)
    except InvalidArgument:
        if isinstance(value, str) and value.strip().lower() in FLUX_MODES:
            return None
        raise


def build_controls(units: list[dict], req, pipe, init, max_pixels: int, width: int, height: int,
                   mask=None) -> list:
    """ControlSpecs for the planned units (on the worker, with the loaded pipeline); `mask`: an img2img
    request's inpaint mask, as decoded (inpaint units without an image of their own use it)."""
    from ..adapters.controlnet import ControlSpec, cached_controlnet

    raw = unit_list(req)
    specs = []
    for u in units:
        if u.get("kind") == "ip_adapter":  # a1111_ip_adapter.build makes its spec
            continue
        field = f"alwayson_scripts.controlnet.args[{u['index']}]"
        b64 = image_field(raw[u["index"]])
        image = images_io.decode_b64(b64, f"{field}.image", max_pixels) if b64 is not None else init
        res = _pixel_perfect_res(image, width, height, u["resize_mode"]) if u["pixel_perfect"] else u["processor_res"]
        try:
            net = cached_controlnet(u["path"], pipe)
            if not net.is_flux:  # a Flux ControlNet's mode is checked by its ControlSpec
                control_type_index(u.get("control_type_name"), "union_control_type")  # not a Flux-only name
                check_control_type(u.get("control_type"), net.union_types, net.name, "union_control_type")
            unit_mask, resize_mode, inpaint = None, u["resize_mode"], cn_inpaint.MODES.get(u["module"])
            if inpaint is not None:
                unit_mask = cn_inpaint.mask_of(raw[u["index"]], u, field, max_pixels, mask, req, image.size)
                hint, unit_mask, resize_mode = cn_inpaint.preprocess(image, unit_mask, u["module"], u.get("weights"),
                                                                     resize_mode, width, height)
            else:
                hint = preprocess_image(image, u["module"], res, u["threshold_a"], u["threshold_b"], max_pixels,
                                        u.get("weights"))
                if u.get("mask_source") == "unit":  # a DiT file's mask (_dit_mask)
                    unit_mask = cn_inpaint.mask_of(raw[u["index"]], u, field, max_pixels, None, req, image.size)
        except (InvalidArgument, OpenSDError) as e:
            raise InvalidArgument(f"{field}: {e}") from None
        specs.append(ControlSpec(net, hint, weight=u["weight"], start=u["start"], end=u["end"],
                                 guess_mode=u["control_mode"] == 2, soft_injection=u["control_mode"] == 1,
                                 resize_mode=resize_mode, preprocessor=u["module"],
                                 control_type=u.get("control_type_name") if net.is_flux else u.get("control_type"),
                                 mask=unit_mask, inpaint=inpaint))
        if inpaint is not None or net.is_dit:  # refused with the unit's field (a mask on a file without its channels)
            try:
                specs[-1].validate(pipe.config)
            except InvalidArgument as e:
                raise InvalidArgument(f"{field}: {e}") from None
    return specs


def unsupported(req, planned: list[dict] = ()) -> list[tuple[str, str]]:
    """(field, what happens instead) for unit fields accepted but not acted on (or only approximated);
    `planned`: parse_units' answer (a DiT file's mask is acted on)."""
    used_masks = {u["index"] for u in planned if u.get("mask_source") == "unit"}
    found: list[tuple[str, str]] = []
    try:
        units = unit_list(req)
    except InvalidArgument:
        return found
    for i, unit in enumerate(units):
        if not isinstance(unit, dict):
            continue
        field = f"alwayson_scripts.controlnet.args[{i}]"
        if a1111_ip_adapter.is_unit(unit):
            found += a1111_ip_adapter.unsupported(unit, field)
            continue
        image = unit.get("image")
        try:
            module, exact = _module(unit.get("module"), "")
        except InvalidArgument:
            module, exact = None, True
        if not cn_inpaint.is_inpaint(module) and i not in used_masks and (unit.get("mask") or unit.get("mask_image") or
                                                 (isinstance(image, dict) and image.get("mask"))):
            found.append((f"{field}.mask", "unit masks are not implemented for non-inpaint modules; the hint "
                                           "covers the whole image"))
        if module == "inpaint_only" and getattr(req, "mask", None) and getattr(req, "init_images", None):
            found.append((f"{field}.module", "inpaint_only with img2img's own inpaint mask falls back to "
                                             "inpaint_global_harmonious (as sd-webui-controlnet does)"))
        if unit.get("hr_option") not in (None, "Both", "both", 0):
            found.append((f"{field}.hr_option", "not implemented; the unit applies to both passes"))
        if module is None:
            continue
        if module == "passthrough":
            found.append((f"{field}.module", f"no {unit.get('module')!r} estimator here; the image is used "
                                             "as the map as it is"))
        elif not exact:
            found.append((f"{field}.module", f"{unit.get('module')!r} is approximated by {module!r}"))
    return found


class DetectRequest(BaseModel):
    """/controlnet/detect's body (the extension's field names)."""
    model_config = ConfigDict(extra="allow")
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = []
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1
    controlnet_masks: list[str] = []  # one per image, for the inpaint modules (white = repaint)


def router(state) -> APIRouter:
    api = APIRouter(prefix="/controlnet", tags=["ControlNet (sd-webui-controlnet API)"])

    @api.get("/version")
    def version():
        return {"version": 2}

    @api.get("/model_list")
    def model_list(update: bool = True):
        names = []  # IP-Adapters of ipadapter/ too: units name them as model
        for m in state.folders.list("controlnet") + state.folders.list("ipadapter"):
            stem = m.name.rsplit(".", 1)[0] if m.path.is_file() else m.name
            full = state.cache.sha256(m.path, compute=True) if m.path.is_file() else None
            names.append(f"{stem} [{full[:8]}]" if full else stem)
        return {"model_list": names}

    @api.get("/module_list")
    def modules(alias_names: bool = False):
        return {"module_list": module_list(alias_names), "module_detail": {}}

    @api.post("/detect")
    def detect(body: DetectRequest):
        controlnet_module, controlnet_input_images = body.controlnet_module, body.controlnet_input_images
        controlnet_processor_res = body.controlnet_processor_res
        controlnet_threshold_a, controlnet_threshold_b = body.controlnet_threshold_a, body.controlnet_threshold_b
        pre, _ = _module(controlnet_module, "controlnet_module")
        if not controlnet_input_images or len(controlnet_input_images) > 16:
            raise InvalidArgument("controlnet_input_images: give 1 to 16 base64 images")
        if cn_inpaint.is_inpaint(pre):
            return {"images": cn_inpaint.detect(pre, controlnet_input_images, body.controlnet_masks, state.folders,
                                                state.settings.max_image_pixels), "info": "Success"}
        weights = _weights(pre, state.folders, "controlnet_module")
        res = 512 if controlnet_processor_res == -1 else controlnet_processor_res
        if not 64 <= res <= 2048:
            raise InvalidArgument(f"controlnet_processor_res: {res} must be -1 or 64..2048")
        for name, v in (("controlnet_threshold_a", controlnet_threshold_a),
                        ("controlnet_threshold_b", controlnet_threshold_b)):
            if not math.isfinite(v) or not -1 <= v <= 1024:
                raise InvalidArgument(f"{name}: {v!r} must be a number in -1..1024")
        out = []
        for k, b64 in enumerate(controlnet_input_images):
            field, max_pixels = f"controlnet_input_images[{k}]", state.settings.max_image_pixels
            image = images_io.decode_b64(b64, field, max_pixels)
            try:
                result = preprocess_image(image, pre, res, controlnet_threshold_a, controlnet_threshold_b, max_pixels,
                                          weights)
            except InvalidArgument as e:
                raise InvalidArgument(f"{field}: {e}") from None
            out.append(images_io.b64(images_io.png_bytes(result)))
        return {"images": out, "info": "Success"}

    return api
