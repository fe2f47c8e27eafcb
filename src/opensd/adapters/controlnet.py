"""Apply ControlNets during sampling.

    from opensd.adapters.controlnet import ControlSpec, load_controlnet
    cn = load_controlnet("control_v11p_sd15_canny.safetensors", pipe)
    pipe.txt2img("a house", controls=[ControlSpec(cn, edges, weight=0.8, end=0.6)])

Semantics follow A1111's ControlNet extension and diffusers:
- the control image is resized to each pass's output size by `resize_mode` (hires fix gets it at
  the hires size) and fed in [0, 1];
- `weight` scales the residuals; the ControlNet runs only while the step fraction step/steps of the
  pass is within [start, end];
- `guess_mode` ("ControlNet is more important"): the ControlNet acts on the conditional half only
  (the unconditional rows get no residuals) and residual i of n is scaled by 0.825 ** (n - 1 - i)
  (the deepest, middle one by 1), as in lllyasviel's reference code;
- several ControlNets at once: their residuals are summed;
- a Union ControlNet (ControlNet++) takes `control_type`, an index of union_types.py (None: unset,
  ComfyUI's "auto");
- `mask` (white = repaint) marks the hint's masked pixels -1 for ControlNet 1.1's inpaint model, and
  `inpaint` picks sd-webui-controlnet's handling of the rest of the image (controlnet_inpaint.py).

A T2I-Adapter loads through the same calls and is applied the same way, through the UNet's Control:
its features (computed once per image, as they depend on nothing else) are scaled by `weight` and
added inside the UNet's encoder (models/t2i_adapter.py says where); its hint is the control image at
the output size rounded up to a multiple of its pixel unshuffle (ComfyUI's rule), averaged to grey
for one-channel adapters; soft injection scales its four features by 0.25, 0.62, 0.825, 1 (A1111's
extension), guess mode also drops them from the unconditional rows.
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from ..checkpoints.controlnet_files import compatible_config, is_control_lora, read_controlnet
from ..checkpoints.files import read_state_dict
from ..checkpoints.flux_controlnet_files import is_flux_controlnet, is_sd3_controlnet, refuse_other_dit_controlnets
from ..checkpoints.t2i_adapter_files import (compatible_slots, is_t2i_adapter, is_t2i_adapter_folder,
                                             read_t2i_adapter)
from ..checkpoints.qwen_image_controlnet_files import (FOLDER_CLASS as QWEN_FOLDER, is_qwen_image_blockwise,
                                                       is_qwen_image_controlnet)
from ..checkpoints.xlabs_controlnet_files import is_xlabs_controlnet
from ..checkpoints.z_image_controlnet_files import is_z_image_controlnet
from ..errors import CheckpointError, InvalidArgument
from ..models.config import Family, ModelConfig
from ..models.controlnet import ControlNet
from ..models.flux_controlnet import FluxControlNet
from ..models.sd3_controlnet import SD3ControlNet, SD35ControlNet
from ..models.t2i_adapter import T2IAdapter
from ..models.qwen_image_blockwise import QwenImageBlockwiseControlNet
from ..models.qwen_image_controlnet import QwenImageControlNet
from ..models.z_image_controlnet import ZImageControlNet
from ..models.unet import Control
from .control_lora import control_lora_config, control_lora_state_dict
from .dit_control_mask import takes_mask
from .controlnet_inpaint import check_inpaint, fit_mask, fit_mask_image, marked_hint
from .flux_controlnet import FOLDER_CLASS as FLUX_FOLDER, DEFAULT_GUIDANCE, flux_residuals, load_flux_controlnet
from .sd3_controlnet import FOLDER_CLASS as SD3_FOLDER, load_sd3_controlnet, sd3_residuals
from .qwen_image_controlnet import load_qwen_image_controlnet, qwen_image_residuals
from .preprocessors import RESIZE_MODES, control_image, fit_image
from .union_types import check_control_type, control_type_index, flux_mode_index
from .z_image_controlnet import check_z_image_inpaint, load_z_image_controlnet, z_image_inpaint_hint, z_image_residuals

MAX_WEIGHT = 2.0
DIT_NAMES = {"flux": "Flux.1", "mmdit": "SD3", "z_image": "Z-Image", "qwen_image": "Qwen-Image"}  # model config field -> family
GUESS_MODE_DECAY = 0.825
ADAPTER_SOFT_SCALES = (0.25, 0.62, 0.825, 1.0)


@dataclass
class LoadedControlNet:
    """A loaded ControlNet or T2I-Adapter (`slots`: where the adapter's features go in the UNet)."""
    net: ControlNet | T2IAdapter | FluxControlNet | SD3ControlNet | SD35ControlNet | ZImageControlNet | QwenImageControlNet
    family: Family
    path: Path
    slots: tuple[int, ...] | None = None
    n_slots: int = 0  # the UNet's input blocks + 1 (the middle)
    pipe: object = None  # a DiT ControlNet's pipeline (a weakref): its VAE encodes the control image

    @property
    def is_flux(self) -> bool:
        return isinstance(self.net, FluxControlNet)

    @property
    def is_z_image(self) -> bool:
        return isinstance(self.net, ZImageControlNet)

    @property
    def is_qwen_image(self) -> bool:
        return isinstance(self.net, (QwenImageControlNet, QwenImageBlockwiseControlNet))

    @property
    def is_dit(self) -> bool:
        """A Flux, SD3, Z-Image or Qwen-Image ControlNet (its control image goes through the VAE, but
        for XLabs' and MistoLine's Flux ones)."""
        return isinstance(self.net, (FluxControlNet, SD3ControlNet, SD35ControlNet, ZImageControlNet,
                                     QwenImageControlNet, QwenImageBlockwiseControlNet))

    @property
    def n_residuals(self) -> int:
        if self.is_adapter:
            return len(self.slots)
        return self.net.n_residuals if self.is_dit else len(self.net.zero_convs) + 1

    @property
    def is_adapter(self) -> bool:
        return isinstance(self.net, T2IAdapter)

    @property
    def union_types(self) -> int:
        if self.is_flux:
            return self.net.config.union_modes
        return 0 if self.is_adapter or self.is_dit else self.net.config.union_types

    def hint_size(self, width: int, height: int) -> tuple[int, int]:
        """The control image's size for an output of width x height pixels."""
        if not self.is_adapter:
            return width, height
        u = self.net.config.unshuffle
        return -(-width // u) * u, -(-height // u) * u

    def residuals(self, x, hint, t, context, y, control_type=None, scales=None, cache=None,
                  guidance: float | None = None, encoder=None, in_model: bool = False) -> Control:
        """What this network adds to the UNet call on x (scaled by `scales`, one per residual/feature);
        an adapter's features come from `cache` (keyed by the hint) when computed before. A Flux
        ControlNet's (a FluxControl) take the distilled `guidance` and cache the hint's latent (encoded by
        `encoder`, a Pipeline, default the one it was loaded for)."""
        if self.is_flux:
            return flux_residuals(self, x, hint, t, context, y, control_type, scales, cache,
                                  DEFAULT_GUIDANCE if guidance is None else guidance, encoder)
        if self.is_z_image:
            return z_image_residuals(self, x, hint, scales, cache, encoder, in_model)
        if self.is_qwen_image:
            return qwen_image_residuals(self, x, hint, t, context, scales, cache, encoder)
        if self.is_dit:
            return sd3_residuals(self, x, hint, t, context, y, scales, cache, encoder)
        if not self.is_adapter:
            out = self.net(x[:, :4], hint.expand(len(x), -1, -1, -1), t, context, y, control_type=control_type)
            return Control(outputs=[r.float() * s for r, s in zip(out, scales or [1.0] * len(out))])
        key = id(hint)
        feats = None if cache is None else cache.get(key)
        if feats is None:
            if self.net.config.in_channels == 1 and hint.shape[1] != 1:
                hint = hint.mean(1, keepdim=True)
            feats = [f.float() for f in self.net(hint)]
            if cache is not None:
                cache[key] = feats
        inner: list = [None] * self.n_slots
        for f, slot, s in zip(feats, self.slots, scales or [1.0] * len(feats)):
            inner[slot] = f.expand(len(x), -1, -1, -1) * s
        return Control(inner=inner)

    @property
    def name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name


@dataclass
class ControlSpec:
    model: LoadedControlNet
    image: Image.Image
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    resize_mode: str = "just resize"
    soft_injection: bool = False  # the 0.825 decay without dropping the unconditional rows (A1111 ControlNet
    # extension's "My prompt is more important"; guess_mode implies it)
    preprocessor: str = "none"  # what made `image` from the user's picture; recorded in the infotext
    control_type: int | str | None = None  # a Union ControlNet's type: a name or index (union_types.py)
    mask: Image.Image | None = None  # white = repaint: its pixels are -1 in the hint (controlnet_inpaint.py)
    inpaint: str | None = None  # sd-webui-controlnet's inpaint mode: global, only, only+lama (controlnet_inpaint.py)
    # a Z-Image Fun ControlNet 2.x's image to inpaint (with `mask`; None: grey), as ZImageControlNetInpaintPipeline
    inpaint_image: Image.Image | None = None
    # a Z-Image Fun ControlNet 2.x's refiner residuals added to the model's refiner (alibaba-pai's and
    # ComfyUI's order) instead of the ControlNet's own pass (diffusers')
    refiner_in_model: bool = False
    given_type: int | str | None = field(default=None, init=False, repr=False)  # as given (Flux's names differ)

    def __post_init__(self):
        self.given_type = self.control_type
        if not (isinstance(self.model, LoadedControlNet) and self.model.is_flux):
            self.control_type = control_type_index(self.control_type)

    def validate(self, base: ModelConfig | None = None) -> None:
        if not isinstance(self.model, LoadedControlNet):
            raise InvalidArgument("controlnet: model must be a ControlNet loaded with load_controlnet()")
        if not isinstance(self.image, Image.Image):
            raise InvalidArgument("control image: a PIL image is required")
        for name, value, low, high in (("control weight", self.weight, 0.0, MAX_WEIGHT),
                                       ("control start", self.start, 0.0, 1.0),
                                       ("control end", self.end, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not low <= value <= high:
                raise InvalidArgument(f"{name}: {value!r} must be a number in {low:g}..{high:g}")
        if self.start > self.end:
            raise InvalidArgument(f"control start: {self.start} is after control end {self.end}")
        if self.resize_mode not in RESIZE_MODES:
            raise InvalidArgument(f"control resize_mode: {self.resize_mode!r} is not one of {', '.join(RESIZE_MODES)}")
        check_inpaint(self)
        if self.model.is_z_image and (self.mask is not None or self.inpaint_image is not None):
            check_z_image_inpaint(self)
        elif self.inpaint_image is not None:
            raise InvalidArgument(f"control inpaint_image: {self.model.name} is not a Z-Image Fun ControlNet 2.x; "
                                  "give SD inpaint ControlNets the mask alone")
        elif self.mask is not None and self.model.is_qwen_image and takes_mask(self.model):
            if self.inpaint is not None:
                raise InvalidArgument(f"control inpaint {self.inpaint!r}: sd-webui-controlnet's inpaint modes are "
                                      "for SD ControlNets; a Qwen-Image blockwise Inpaint file takes the mask alone")
        elif self.mask is not None and (self.model.is_dit or self.model.is_adapter):
            raise InvalidArgument(f"control mask: {self.model.name} takes no mask; masks are for ControlNet 1.1's "
                                  "inpaint model, Z-Image Fun ControlNet 2.x files and DiffSynth's Qwen-Image "
                                  "blockwise Inpaint file")
        if self.model.is_flux:
            self.control_type = flux_mode_index(self.given_type, self.model.union_types, self.model.name)
        else:
            check_control_type(self.control_type, self.model.union_types, self.model.name)
        if self.model.is_dit:
            kind = ("flux" if self.model.is_flux else "z_image" if self.model.is_z_image
                    else "qwen_image" if self.model.is_qwen_image else "mmdit")
            if base is not None and getattr(base, kind, None) is None:
                raise InvalidArgument(f"controlnet: {self.model.name} is a {DIT_NAMES[kind]} ControlNet; the model "
                                      "is not of that family")
        elif base is not None and any(getattr(base, k, None) is not None for k in DIT_NAMES):
            raise InvalidArgument(f"controlnet: {self.model.name} is for SD models; this model takes ControlNets "
                                  "made for its own family")
        elif base is not None and self.model.is_adapter:
            compatible_slots(self.model.net.config, base, self.model.path)
        elif base is not None:
            compatible_config(self.model.net.config, self.model.family, base, self.model.path)


def load_controlnet(path, base, device=None, dtype: torch.dtype | None = None, diff_base=None) -> LoadedControlNet:
    """Load a ControlNet file/folder for `base` (a Pipeline, or a ModelConfig with device/dtype given);
    CheckpointError if it was made for another model family. A diff ControlNet gets the weights of
    `diff_base`'s network (a Pipeline; default `base` when it is one) added to its own, by name, as
    ComfyUI's DiffControlNetLoader and A1111's extension add them. A Control-LoRA is built from the same
    network's weights (control_lora.py); a T2I-Adapter loads as itself."""
    config = base.config if hasattr(base, "config") else base
    device = device or getattr(base, "device", "cpu")
    dtype = dtype or getattr(base, "dtype", torch.float32)
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "does not exist")
    sd = None if path.is_dir() else read_state_dict(path)
    if sd is not None:
        refuse_other_dit_controlnets(sd, path)
    blockwise = sd is not None and is_qwen_image_blockwise(sd)
    if blockwise or (_folder_class(path) == QWEN_FOLDER if sd is None else is_qwen_image_controlnet(sd)):  # before Flux
        net, pipe = load_qwen_image_controlnet(path, sd, base,
                                               lambda cls, cfg, weights: _built(cls, cfg, weights, path, device, dtype),
                                               blockwise)
        return LoadedControlNet(net, "qwen_image", path, pipe=pipe)
    if _folder_class(path) == FLUX_FOLDER if sd is None else is_flux_controlnet(sd) or is_xlabs_controlnet(sd):
        net, pipe = load_flux_controlnet(path, sd, base, device, dtype,
                                         lambda cls, cfg, weights: _built(cls, cfg, weights, path, device, dtype))
        return LoadedControlNet(net, "flux", path, pipe=pipe)
    if _folder_class(path) == SD3_FOLDER if sd is None else is_sd3_controlnet(sd):
        net, pipe = load_sd3_controlnet(path, sd, base,
                                        lambda cls, cfg, weights: _built(cls, cfg, weights, path, device, dtype))
        return LoadedControlNet(net, "sd3", path, pipe=pipe)
    if sd is not None and is_z_image_controlnet(sd):
        net, pipe = load_z_image_controlnet(path, sd, base,
                                            lambda cls, cfg, weights: _built(cls, cfg, weights, path, device, dtype))
        return LoadedControlNet(net, "z_image", path, pipe=pipe)
    if getattr(config, "z_image", None) is not None:
        raise CheckpointError(path, "is not a Z-Image ControlNet (an SD, Flux or SD3 one, or another kind); the "
                                    "loaded model is Z-Image: use alibaba-pai's Z-Image-Turbo-Fun-Controlnet-Union")
    if getattr(config, "qwen_image", None) is not None:
        raise CheckpointError(path, "is not a Qwen-Image ControlNet (an SD, Flux, SD3 or Z-Image one, or another "
                                    "kind); the loaded model is Qwen-Image: use InstantX's Qwen-Image-ControlNet-Union or "
                                    "DiffSynth's Qwen-Image-Blockwise-ControlNet files")
    if getattr(config, "flux", None) is not None:
        raise CheckpointError(path, "is not a Flux.1 ControlNet (an SD one, or another kind); the loaded model is "
                                    "Flux.1: use a Flux ControlNet (InstantX, Shakker-Labs, XLabs, MistoLine)")
    if getattr(config, "mmdit", None) is not None:
        raise CheckpointError(path, "is not an SD3 ControlNet (an SD one, or another kind); the loaded model is "
                                    "SD3: use an SD3 ControlNet (InstantX's, Stability's SD3.5 ones)")
    if is_t2i_adapter_folder(path) if sd is None else is_t2i_adapter(sd):
        return _load_adapter(path, sd, config, device, dtype)
    if sd is not None and is_control_lora(sd):
        pipe = diff_base or (base if hasattr(base, "model") else None)
        return _load_control_lora(path, sd, pipe, config, device, dtype)
    sd, family, cfg = read_controlnet(path, sd)
    cfg = compatible_config(cfg, family, config, path)
    if cfg.difference:
        sd = _made_whole(sd, diff_base or (base if hasattr(base, "model") else None), path)
    return LoadedControlNet(_built(ControlNet, cfg, sd, path, device, dtype), family, path)


def _folder_class(path: Path) -> str | None:
    import json
    try:
        return json.loads((path / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None


def _built(cls, cfg, sd: dict, path: Path, device, dtype):
    """cls(cfg) holding `sd` (every key, right shapes), on device/dtype, frozen."""
    with torch.device("meta"):
        net = cls(cfg)
    try:
        net.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as e:
        what = "T2I-Adapter" if cls is T2IAdapter else "ControlNet"
        raise CheckpointError(path, f"{what} weights do not fit the detected layout: {str(e)[:300]}") from None
    return net.to(device).eval().requires_grad_(False)


def _load_adapter(path: Path, sd, base: ModelConfig, device, dtype) -> LoadedControlNet:
    sd, family, cfg = read_t2i_adapter(path, sd)
    where = compatible_slots(cfg, base, path)
    n_slots = len(base.unet.channel_mult) * (base.unet.num_res_blocks + 1) + 1
    return LoadedControlNet(_built(T2IAdapter, cfg, sd, path, device, dtype), family, path, where, n_slots)


def _load_control_lora(path: Path, sd, pipe, base: ModelConfig, device, dtype) -> LoadedControlNet:
    cfg = control_lora_config(sd, base, path)
    with torch.device("meta"):
        wanted = {k: tuple(v.shape) for k, v in ControlNet(cfg).state_dict().items()}
    sd = control_lora_state_dict(path, sd, pipe, wanted)
    return LoadedControlNet(_built(ControlNet, cfg, sd, path, device, dtype), base.family, path)


def _made_whole(sd: dict, pipe, path: Path) -> dict:
    """A diff ControlNet's weights plus those of `pipe`'s network of the same name and shape."""
    if pipe is None:
        raise CheckpointError(path, "is a diff ControlNet (its weights are differences from a model's) and no "
                                    "model was given to add them to")
    network = pipe.family.network(pipe.model).state_dict()
    out = {}
    for name, weight in sd.items():
        own = network.get(name)
        fits = own is not None and own.shape == weight.shape
        out[name] = weight.float() + own.to("cpu", torch.float32) if fits else weight
    return out


# pipe -> its loaded ControlNets; goes with the pipeline
_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_controlnet(path, pipe, keep: int = 4, diff_base=None) -> LoadedControlNet:
    """load_controlnet through a small per-pipeline cache (on the pipe's device/dtype), keyed by the
    file's path, size and mtime (and the diff base given); the `keep` most recently used stay loaded."""
    path = Path(path)
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns, id(diff_base))
    except OSError as e:
        raise InvalidArgument(f"controlnet: cannot read {path.name} ({e})") from None
    cache = _CACHES.setdefault(pipe, {})
    if key in cache:
        cache[key] = cache.pop(key)  # most recently used last
        return cache[key]
    loaded = load_controlnet(path, pipe, diff_base=diff_base)
    cache[key] = loaded
    while len(cache) > keep:
        cache.pop(next(iter(cache)))
    return loaded


def scales(spec: ControlSpec, n: int) -> list[float]:
    if spec.model.is_dit:  # the per-depth decay is a UNet rule; a DiT ControlNet's blocks get the weight
        return [spec.weight] * n
    if (spec.guess_mode or spec.soft_injection) and spec.model.is_adapter:
        return [spec.weight * s for s in ADAPTER_SOFT_SCALES[-n:]]
    if spec.guess_mode or spec.soft_injection:
        return [spec.weight * GUESS_MODE_DECAY ** (n - 1 - i) for i in range(n)]
    return [spec.weight] * n


class ControlApplier:
    """The ControlNets of one sampling pass at one output size; called with the UNet's inputs."""

    def __init__(self, specs: list[ControlSpec], width: int, height: int, device, dtype: torch.dtype,
                 guidance: float | None = None):
        self.guidance = guidance  # Flux ControlNets': the generation's distilled guidance (None: default)
        self.items = []
        self.features: dict = {}  # the adapters' features, computed once
        for spec in specs:
            hint = control_image(spec.image, *spec.model.hint_size(width, height), spec.resize_mode)
            if spec.mask is not None and (spec.model.is_z_image or spec.model.is_qwen_image):  # the 7-channel hint
                hint = z_image_inpaint_hint(spec, hint, width, height)
            elif spec.mask is not None:
                hint = marked_hint(hint, fit_mask(spec.mask, width, height, spec.resize_mode))
            self.items.append((spec, hint.to(device, dtype)))

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None,
                 fraction: float, n_uncond: int = 1) -> Control | None:
        """Summed residuals for the batch (rows [:n_uncond] are the unconditional ones), or None."""
        total = None
        for spec, hint in self.items:
            if not spec.start <= fraction <= spec.end or spec.weight == 0:
                continue
            rows = slice(n_uncond, None) if spec.guess_mode else slice(None)
            xs, ctx = x[rows], context[rows]
            if len(xs) == 0:
                continue
            n = spec.model.n_residuals
            with torch.no_grad():
                res = spec.model.residuals(xs, hint, t.expand(len(x))[rows], ctx, None if y is None else y[rows],
                                           spec.control_type, scales(spec, n), self.features, self.guidance,
                                           in_model=spec.refiner_in_model)
            if spec.guess_mode:  # the unconditional rows get nothing
                res = res.map(lambda r: torch.cat([torch.zeros_like(r[:1]).expand(n_uncond, *r.shape[1:]), r]))
            total = res if total is None else total + res
        return total


def cropped(spec: ControlSpec, box: tuple[int, int, int, int], size: tuple[int, int]) -> ControlSpec:
    """`spec` with its image (and mask) fitted to `size`, the init image's, by its resize mode and cut
    to `box`: img2img's "only masked" region, whose crop the ControlNets then see as sd-webui-controlnet
    crops its units' images (the box has the output's aspect ratio, so it is then just resized)."""
    image = fit_image(spec.image, *size, spec.resize_mode).crop(box)
    mask = None if spec.mask is None else fit_mask_image(spec.mask, *size, spec.resize_mode).crop(box)
    inpaint = None if spec.inpaint_image is None else fit_image(spec.inpaint_image, *size, spec.resize_mode).crop(box)
    return replace(spec, image=image, mask=mask, inpaint_image=inpaint, resize_mode="just resize")


def validate_controls(controls, base: ModelConfig) -> list[ControlSpec]:
    if controls is None:
        return []
    if isinstance(controls, ControlSpec):
        controls = [controls]
    if not isinstance(controls, (list, tuple)) or not all(isinstance(c, ControlSpec) for c in controls):
        raise InvalidArgument("controls: expected a list of ControlSpec")
    for c in controls:
        c.validate(base)
    return list(controls)
