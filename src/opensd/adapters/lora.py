"""Applying LoRAs by patching weights in place, and taking them off again bit-exactly.

``W += strength * scale * up @ down`` (scale = alpha / rank) for every module a file names, with
the UNet and text-encoder strengths separate (A1111's ``<lora:name:te:unet>``), and
``b += strength * diff_b`` where a file changes a bias. Before a weight is
first touched an exact copy is kept (on the CPU), so :meth:`LoraSet.restore` gives back the base
weights bit for bit, and switching from one LoRA set to another is "restore, then apply" -- the
same weights a fresh load plus the new set would give.

A Linear weight kept as its file stores it (float8, scaled float8, GGUF blocks: a StoredLinear
not in 16 bits) is not written to: the layer gets the LoRA's weights (factors, or a diff) as a
WeightPatch, added to the unpacked weight at each call, and restore() takes the patches off.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgument
from ..models.stable_diffusion import StableDiffusion
from ..models.stored_weights import HALF, StoredLinear, WeightPatch
from ..text.prompt_parser import ExtraNetwork, extract_extra_networks
from .lora_files import LoraFile, LoraWeights, guess_family, read_lora
from ..families import family_of
from .lora_dit import RowSlice
from .lora_keys import FusedQKVPart, LoraModule

log = logging.getLogger(__name__)

PROMPT_KINDS = ("lora", "lyco")
# ComfyUI's LoraLoader range (and our hypernetworks'): far past any use; <lora:x:99999999> made
# every value of the image NaN, reported as a broken model
MAX_STRENGTH = 100.0
_FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sdxl_refiner": "SDXL refiner", "small": "small",
                 "sd3": "SD3", "flux": "Flux.1"}


@dataclass
class LoraSpec:
    """One LoRA to apply: ``unet`` and ``te`` strengths (``te=None``: same as ``unet``)."""
    path: Path
    unet: float = 1.0
    te: float | None = None

    def __post_init__(self):
        self.path = Path(self.path)
        for what, v in (("unet", self.unet), ("te", self.te)):
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise InvalidArgument(f"lora {what} strength: {v!r} is not a finite number")
            if v is not None and abs(v) > MAX_STRENGTH:
                raise InvalidArgument(f"lora {what} strength: {v!r} is outside -{MAX_STRENGTH:g}..{MAX_STRENGTH:g}")

    @property
    def te_strength(self) -> float:
        return self.unet if self.te is None else self.te


@dataclass
class LoraMatch:
    """A LoRA file matched against one model: the modules it patches and the names it could not place."""
    file: LoraFile
    patches: list[tuple[LoraModule, LoraWeights]]
    unmatched: list[str] = field(default_factory=list)  # module names + unsupported keys


@dataclass
class LoraReport:
    name: str
    path: Path
    unet: float
    te: float
    patched: int
    unmatched: list[str]


def lookup_table(model: StableDiffusion) -> dict[str, LoraModule]:
    """Every name a LoRA file may use for a module (kohya, its aliases, PEFT) -> the module."""
    table: dict[str, LoraModule] = {}
    for m in family_of(model.config).lora_modules(model):
        for name in (m.kohya, *m.aliases, m.peft):
            table.setdefault(name, m)
        if m.component == "te":  # transformers >= 5 drops "text_model." from module paths
            table.setdefault(m.peft.replace(".text_model.", ".", 1), m)
    return table


def _slot(module: nn.Module) -> tuple[nn.Parameter, slice | None]:
    """The parameter a patch changes, and its rows when the module is a part of a fused one."""
    if isinstance(module, FusedQKVPart):
        return module.attn.in_proj_weight, module.rows
    return (module.fused_weight, module.rows) if isinstance(module, RowSlice) else (module.weight, None)


def _stored(module: nn.Module) -> StoredLinear | None:
    """The StoredLinear whose weight, kept packed (float8, scaled float8, GGUF blocks), a patch of
    `module` changes: such a weight takes the patch at each call instead of into itself."""
    owner = module.linear if isinstance(module, RowSlice) else module
    return owner if isinstance(owner, StoredLinear) and owner.weight.dtype not in HALF else None


def _patched(param: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """param + delta, summed in float32, in param's dtype."""
    return (param.detach().float() + delta).to(param.dtype)


def _bias_slot(module: nn.Module) -> tuple[nn.Parameter | None, slice | None]:
    """The bias a ``diff_b`` changes (None: the module has none), and its rows in a fused one."""
    if isinstance(module, FusedQKVPart):
        return module.attn.in_proj_bias, module.rows
    if isinstance(module, RowSlice):
        return module.linear.bias, module.rows
    return getattr(module, "bias", None), None


def _target_shape(module: nn.Module, bias: bool = False) -> torch.Size | None:
    if not bias and _stored(module) is not None:
        return torch.Size((module.out_features, module.in_features))
    param, rows = _bias_slot(module) if bias else _slot(module)
    if param is None:
        return None
    return param[rows].shape if rows is not None else param.shape


def _updates(mod: LoraModule, w: LoraWeights, device=None):
    """(parameter, rows or None, its float32 update before strength, on `device` or the parameter's)
    for the weight and the bias a patch changes (not a stored weight's: see _stored_patch)."""
    if w.kind != "bias" and _stored(mod.module) is None:
        param, rows = _slot(mod.module)
        yield param, rows, w.delta(_target_shape(mod.module), device or param.device)
    if w.diff_b is not None:
        param, rows = _bias_slot(mod.module)
        yield param, rows, w.diff_b.to(device or param.device, torch.float32).reshape(_target_shape(mod.module, True))


def _stored_patch(mod: LoraModule, w: LoraWeights, strength: float) -> tuple[StoredLinear, WeightPatch] | None:
    """The layer and the patch a stored weight takes for `w` (its weight update only), if it is one."""
    owner = _stored(mod.module)
    if owner is None or w.kind == "bias":
        return None
    device = owner.weight.device
    return owner, WeightPatch(w.weight_update_on(device), _target_shape(mod.module), strength,
                              getattr(mod.module, "rows", None), device)


def match_lora(lf: LoraFile, model: StableDiffusion, table: dict[str, LoraModule] | None = None) -> LoraMatch:
    """Place every module of ``lf`` on ``model``. A file made for another architecture (module
    shapes that do not fit, or no module in common) raises CheckpointError; names that match
    nothing are returned in ``unmatched`` and logged, never dropped silently."""
    table = table if table is not None else lookup_table(model)
    patches, unmatched, misfit = [], [], []
    for name, w in lf.modules.items():
        mod = table.get(name)
        if mod is None:
            unmatched.append(name)
        elif not w.fits(_target_shape(mod.module)):
            misfit.append(f"{name}: {w.shape_text()} vs weight {tuple(_target_shape(mod.module))}")
        elif not w.bias_fits(_target_shape(mod.module, bias=True)):
            misfit.append(f"{name}: bias update {tuple(w.diff_b.shape)} vs bias "
                          f"{tuple(_target_shape(mod.module, bias=True) or ())}")
        else:
            patches.append((mod, w))
    family = _FAMILY_NAMES.get(model.config.family, model.config.family)
    # A few misfits (say a conv_in LoCon from an inpainting model) are skipped and reported; a
    # cross-attention misfit or a majority of them means the file is for another architecture.
    foreign = any("attn2" in m for m in misfit) or len(misfit) >= len(patches)
    if (misfit and foreign) or not patches:
        guess = guess_family(lf)
        looks = f"it looks like a LoRA for {guess}" if guess else "it was made for another model"
        if misfit:
            detail = f"{len(misfit)} module(s) have other shapes, e.g. {misfit[0]}"
        else:
            detail = f"none of its {len(unmatched)} module names exist in this model, e.g. {unmatched[0]}"
        raise CheckpointError(lf.path, f"LoRA does not fit this {family} model ({looks}): {detail}")
    unmatched += [f"{m} (shape does not fit)" for m in misfit] + lf.unsupported
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (" …" if len(unmatched) > 5 else "")
        log.warning("LoRA %s: %d key(s) match nothing in this %s model and were not applied: %s",
                    lf.path.name, len(unmatched), family, shown)
    return LoraMatch(lf, patches, unmatched)


def _stamp(path: Path) -> tuple:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(path, f"cannot read LoRA file: {e.strerror or e}") from None
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


class LoraSet:
    """The LoRAs currently patched into one model, with the exact base weights they replaced.

    ``apply(specs)`` makes the model equal base + exactly ``specs`` (a no-op if that is already
    so); ``restore()`` returns it to the base weights. Parsed files are cached by path, size and
    modification time.
    """

    def __init__(self, model: StableDiffusion):
        self.model = model
        self._table: dict[str, LoraModule] | None = None
        self._files: dict[str, tuple[tuple, LoraMatch]] = {}
        self._backup: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        self._carrying: dict[int, StoredLinear] = {}  # stored layers given WeightPatches
        self._active: tuple = ()
        self.reports: list[LoraReport] = []
        self.changed = False  # whether the last apply() changed any weight

    def match(self, path) -> LoraMatch:
        path = Path(path)
        stamp = _stamp(path)
        hit = self._files.get(stamp[0])
        if hit is not None and hit[0] == stamp:
            return hit[1]
        if self._table is None:
            self._table = lookup_table(self.model)
        m = match_lora(read_lora(path), self.model, self._table)
        self._files[stamp[0]] = (stamp, m)
        return m

    def apply(self, specs: Sequence[LoraSpec]) -> list[LoraReport]:
        """Make the model's weights base + ``specs``. Files are all read and checked before any
        weight changes, so a bad file leaves the model as it was."""
        specs = [s if isinstance(s, LoraSpec) else LoraSpec(*s) for s in specs]
        key = tuple((_stamp(s.path), s.unet, s.te_strength) for s in specs)
        self.changed = False
        if key == self._active:
            return self.reports
        matches = [self.match(s.path) for s in specs]
        self.changed = bool(self._backup or self._carrying) or bool(specs)
        self.restore()
        deltas: dict[int, tuple[nn.Parameter, torch.Tensor]] = {}
        for mod, w, strength in _weighted_patches(specs, matches):
            carried = _stored_patch(mod, w, strength)
            if carried is not None:
                owner, patch = carried
                owner.patches += (patch,)
                self._carrying[id(owner)] = owner
            for param, rows, update in _updates(mod, w):
                if id(param) not in deltas:
                    deltas[id(param)] = (param, torch.zeros(param.shape, dtype=torch.float32, device=param.device))
                d = deltas[id(param)][1]
                target = d[rows] if rows is not None else d
                target += update * strength
        reports = _reports(specs, matches)
        with torch.no_grad():
            for pid, (param, d) in deltas.items():
                self._backup[pid] = (param, param.detach().to("cpu", copy=True))
                param.copy_(_patched(param, d))
        self._active = key
        self.reports = reports
        return reports

    def restore(self) -> None:
        """Put back the exact base weights (and take the stored layers' patches off)."""
        with torch.no_grad():
            for param, saved in self._backup.values():
                param.copy_(saved)
        for layer in self._carrying.values():
            layer.patches = ()
        self._backup.clear()
        self._carrying.clear()
        self._active = ()
        self.reports = []


def bake_into_state_dict(sd: dict[str, torch.Tensor], cfg, specs: Sequence[LoraSpec]) -> list[LoraReport]:
    """Add ``specs`` permanently to an original-layout checkpoint state dict (in place; tensors keep
    their dtype, the sum is computed in float32). Used to save a model with LoRAs merged in."""
    with torch.device("meta"):
        model = StableDiffusion(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    table = lookup_table(model)
    matches = [match_lora(read_lora(s.path), model, table) for s in specs]
    deltas: dict[str, torch.Tensor] = {}
    for mod, w, strength in _weighted_patches(specs, matches):
        for param, rows, update in _updates(mod, w, "cpu"):
            key = names[id(param)]
            if key not in deltas:
                deltas[key] = torch.zeros(sd[key].shape, dtype=torch.float32)
            target = deltas[key][rows] if rows is not None else deltas[key]
            target += update * strength
    for key, d in deltas.items():
        sd[key] = (sd[key].float() + d).to(sd[key].dtype)
    return _reports(specs, matches)


def _weighted_patches(specs: Sequence[LoraSpec], matches: list):
    """(target module, LoRA weights, strength) for every patch whose part (UNet or text encoder)
    has a non-zero strength in its spec."""
    for spec, m in zip(specs, matches):
        for mod, w in m.patches:
            strength = spec.unet if mod.component == "unet" else spec.te_strength
            if strength != 0:
                yield mod, w, strength


def _reports(specs: Sequence[LoraSpec], matches: list) -> list[LoraReport]:
    return [LoraReport(m.file.name, spec.path, spec.unet, spec.te_strength, len(m.patches), list(m.unmatched))
            for spec, m in zip(specs, matches)]


# --- prompts ---------------------------------------------------------------------------------


def prompt_lora_tags(prompt: str) -> list[ExtraNetwork]:
    """The ``<lora:…>`` / ``<lyco:…>`` tags of a prompt, in order."""
    return [n for n in extract_extra_networks(prompt)[1] if n.kind in PROMPT_KINDS]


def specs_from_tags(tags: Sequence[ExtraNetwork], resolve) -> list[LoraSpec]:
    """A1111 semantics: ``<lora:name>`` = 1, ``<lora:name:w>`` both = w, ``<lora:name:te:unet>``,
    named ``te=`` / ``unet=``. ``resolve(name) -> Path`` finds the file."""
    out = []
    for tag in tags:
        try:
            te, unet = tag.multipliers()
        except ValueError:
            raise InvalidArgument(f"prompt: <{tag.kind}:{tag.name}:{':'.join(tag.args)}> has a strength "
                                  "that is not a number") from None
        out.append(LoraSpec(resolve(tag.name), unet=unet, te=te))
    return out


def parse_lora_arg(text: str, resolve) -> LoraSpec:
    """Command-line form ``NAME_OR_PATH[:UNET[:TE]]`` (a path may itself contain ':' on Windows,
    so the strengths are taken from the right)."""
    parts = text.rsplit(":", 2)
    strengths: list[float] = []
    while len(parts) > 1:
        try:
            value = float(parts[-1])
        except ValueError:
            break
        strengths.insert(0, value)
        parts = parts[:-1]
        if len(strengths) == 2:
            break
    name = ":".join(parts) if len(parts) > 1 else parts[0]
    if not name:
        raise InvalidArgument(f"lora: {text!r} names no LoRA")
    unet = strengths[0] if strengths else 1.0
    te = strengths[1] if len(strengths) > 1 else None
    return LoraSpec(resolve(name), unet=unet, te=te)
