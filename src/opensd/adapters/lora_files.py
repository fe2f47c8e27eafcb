"""Reading LoRA files into one normalised form: module name -> LoraWeights (a weight update).

Formats understood:

* kohya / A1111 / LyCORIS LoCon: ``<name>.lora_down.weight``, ``<name>.lora_up.weight``,
  ``<name>.alpha`` (scale = alpha / rank; no alpha means scale 1). Conv LoRAs may have a 3x3
  ``lora_down`` with a 1x1 ``lora_up`` (LoCon). LyCORIS full-weight diffs (``<name>.diff``) too.
* PEFT / diffusers: ``unet.<path>.lora_A.weight`` / ``.lora_B.weight`` (``text_encoder.``,
  ``text_encoder_2.`` for the text encoders), with per-module ``.alpha`` or the
  ``lora_adapter_metadata`` json diffusers writes (lora_alpha, r, alpha/rank patterns, rslora);
  without either, scale 1 (PEFT's alpha = rank).
* older diffusers attention processors: ``….attn1.processor.to_q_lora.down.weight``,
  ``….self_attn.to_q_lora.down.weight``, ``….lora_linear_layer.down.weight``.
* bias changes (``<name>.diff_b``: LyCORIS full / ComfyUI's LoraSave), with or without a weight
  update for the same module.
* LyCORIS LoHa (``hada_w1_a/b``, ``hada_w2_a/b``: (w1a @ w1b) * (w2a @ w2b) * alpha / rank) and LoKr
  (``lokr_w1`` or ``lokr_w1_a/b``, ``lokr_w2`` or ``lokr_w2_a/b``: kron(w1, w2) * alpha / rank of
  the decomposed factor, 1 when neither is), without Tucker cores.

Not supported, and reported rather than guessed at: DoRA (``dora_scale`` / ``lora_magnitude_vector``;
refused), Tucker-decomposed convs (``lora_mid``, ``hada_t1/t2``, ``lokr_t2``), sparse bias patches
(``bias_indices``), (IA)^3; the modules using them are left out and their keys returned as unsupported.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..checkpoints.files import read_metadata, read_state_dict
from ..errors import CheckpointError
from .lora_family import LABELS, dit_family

# suffix -> role; the longest matching suffix wins.
_SUFFIXES = {
    "lora_down.weight": "down", "lora_up.weight": "up",
    "lora_A.weight": "down", "lora_B.weight": "up",
    "lora_A.default.weight": "down", "lora_B.default.weight": "up",
    "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up",
    "lora.down.weight": "down", "lora.up.weight": "up",
    "down.weight": "down", "up.weight": "up",
    "alpha": "alpha", "diff": "diff", "diff_b": "diff_b",
    "dora_scale": "dora", "lora_magnitude_vector": "dora", "lora_magnitude_vector.weight": "dora",
}
# LyCORIS LoHa / LoKr factors (kept by name in LoraWeights.factors).
_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
            "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
_SUFFIXES.update({f: "factor" for f in _FACTORS})
# Tucker cores, bias patches, (IA)^3, norms: a module carrying any of these is not applied.
_UNSUPPORTED = re.compile(r"\.(hada_t[12]|lokr_t[12]|lora_mid\.weight|bias_indices|bias_values|bias_size"
                          r"|lora_B\.bias|on_input|w_norm|b_norm)$")
_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.", "transformer.", "diffusion_model.")
_OLD_ATTN = re.compile(r"\.processor\.to_(q|k|v|out)_lora$")
_OLD_TE_ATTN = re.compile(r"\.self_attn\.to_(q|k|v|out)_lora$")


@dataclass
class LoraWeights:
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    scale: float | None = None  # set by PEFT metadata; else alpha / rank
    factors: dict[str, torch.Tensor] = field(default_factory=dict)  # LoHa / LoKr
    diff_b: torch.Tensor | None = None  # a bias change, added as it is (like diff)

    @property
    def kind(self) -> str:
        if self.diff is not None:
            return "diff"
        if self.diff_b is not None and self.down is None and self.up is None and not self.factors:
            return "bias"  # a bias change alone
        if "hada_w1_a" in self.factors:
            return "loha"
        if self.factors:
            return "lokr"
        return "lora"

    @property
    def complete(self) -> bool:
        f = self.factors
        return {"diff": True, "bias": True, "lora": self.down is not None and self.up is not None,
                "loha": all(k in f for k in _FACTORS[:4]),
                "lokr": ("lokr_w1" in f or {"lokr_w1_a", "lokr_w1_b"} <= f.keys())
                and ("lokr_w2" in f or {"lokr_w2_a", "lokr_w2_b"} <= f.keys())}[self.kind]

    @property
    def rank(self) -> int | None:
        f = self.factors
        if self.kind == "loha":
            return f["hada_w1_b"].shape[0]
        if self.kind == "lokr":  # LyCORIS: the rank of whichever Kronecker factor is decomposed
            b = f.get("lokr_w1_b", f.get("lokr_w2_b"))
            return None if b is None else b.shape[0]
        return None if self.down is None else self.down.shape[0]

    def effective_scale(self) -> float:
        if self.scale is not None:
            return self.scale
        rank = self.rank
        return 1.0 if self.alpha is None or not rank else self.alpha / rank

    def _f(self, name: str, device) -> torch.Tensor:
        return self.factors[name].to(device, torch.float32)

    def _pair(self, a: str, b: str, whole: str, device) -> torch.Tensor:
        if whole in self.factors:
            return self._f(whole, device)
        return self._f(a, device).flatten(1) @ self._f(b, device).flatten(1)

    def _full(self, device=None) -> torch.Tensor:
        kind = self.kind
        if kind == "diff":
            return self.diff.to(device, torch.float32)
        if kind == "lora":
            return self.up.to(device, torch.float32).flatten(1) @ self.down.to(device, torch.float32).flatten(1)
        if kind == "loha":  # (w1a @ w1b) * (w2a @ w2b), element-wise
            return (self._f("hada_w1_a", device) @ self._f("hada_w1_b", device).flatten(1)) * \
                (self._f("hada_w2_a", device) @ self._f("hada_w2_b", device).flatten(1))
        w1 = self._pair("lokr_w1_a", "lokr_w1_b", "lokr_w1", device)
        w2 = self._pair("lokr_w2_a", "lokr_w2_b", "lokr_w2", device)
        if w2.ndim == 4:  # a full conv kernel as second factor
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2)

    def delta(self, shape: torch.Size, device=None) -> torch.Tensor:
        """The float32 weight update (before strength) reshaped to the target weight's shape."""
        scale = 1.0 if self.kind == "diff" else self.effective_scale()
        return self._full(device).reshape(shape) * scale

    def weight_update_on(self, device) -> LoraWeights:
        """The weight update alone (no bias change), its tensors on `device` in the file's dtype (a
        full diff stays as compact as the file has it; delta() computes in float32): what a stored
        weight keeps to add at each call (models.stored_weights.WeightPatch)."""
        def moved(t):
            return None if t is None else t.to(device)
        return replace(self, down=moved(self.down), up=moved(self.up), diff=moved(self.diff), diff_b=None,
                       factors={k: moved(v) for k, v in self.factors.items()})

    def _meta_full(self) -> torch.Tensor | None:
        """The update's shape (a meta tensor); None when the file's factors do not combine (an up
        of rank 8 with a down of rank 4, a 1-D factor)."""
        try:
            with torch.device("meta"):
                return self._full("meta")
        except (RuntimeError, IndexError):
            return None

    def fits(self, shape: torch.Size) -> bool:
        if self.kind == "bias":
            return True  # no weight update (the bias is checked by bias_fits)
        full = self._meta_full()
        return full is not None and full.numel() == shape.numel() and full.shape[0] == shape[0]

    def bias_fits(self, bias_shape: torch.Size | None) -> bool:
        return self.diff_b is None or (bias_shape is not None and self.diff_b.numel() == bias_shape.numel())

    def shape_text(self) -> str:
        if self.kind == "bias":
            return f"bias update {tuple(self.diff_b.shape)}"
        if self.kind == "lora":
            return f"up {tuple(self.up.shape)} down {tuple(self.down.shape)}"
        full = self._meta_full()
        if full is None:
            return f"{self.kind} factors " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.factors.items())
        return f"{self.kind} update {tuple(full.shape)}"


@dataclass
class LoraFile:
    path: Path
    modules: dict[str, LoraWeights]
    unsupported: list[str] = field(default_factory=list)  # keys of formats we do not apply
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


def normalize_name(name: str) -> str:
    """One module name per module: kohya names stay as they are, PEFT/diffusers names lose the
    older processor spellings and gain the ``unet.`` prefix when a file left it out."""
    if name.startswith("lora_"):
        return name
    name = _OLD_ATTN.sub(lambda m: f".to_{m.group(1)}" + (".0" if m.group(1) == "out" else ""), name)
    name = _OLD_TE_ATTN.sub(lambda m: f".self_attn.{m.group(1)}_proj", name)
    for tail in (".lora_linear_layer", ".lora"):
        name = name.removesuffix(tail)
    if not name.startswith(_PREFIXES):
        name = "unet." + name
    return name


def _split(key: str) -> tuple[str, str] | None:
    best = None
    for suffix, role in _SUFFIXES.items():
        if key.endswith("." + suffix) and (best is None or len(suffix) > len(best[0])):
            best = (suffix, role)
    if best is None:
        return None
    return key[: -len(best[0]) - 1], best[1]


def _alpha(value, path: Path, key: str) -> float:
    """A LoRA's alpha (a one-number tensor, or PEFT metadata's number) as a float: one finite number,
    else the file is refused naming the key (a NaN alpha made every image NaN, a vector a bare error)."""
    try:
        alpha = float(value.float().item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        alpha = None
    if alpha is None or isinstance(value, bool) or not math.isfinite(alpha):
        shown = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) and value.numel() != 1 \
            else repr(value.item() if isinstance(value, torch.Tensor) else value)[:40]
        raise CheckpointError(path, f"{key}: alpha must be one finite number, not {shown}")
    return alpha


def parse_lora(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> LoraFile:
    metadata = metadata or {}
    modules: dict[str, LoraWeights] = {}
    unsupported: list[str] = []
    dora: list[str] = []
    bad: set[str] = set()
    for key, value in sd.items():
        split, odd = _split(key), _UNSUPPORTED.search(key)
        if odd or split is None:
            unsupported.append(key)
            if odd:
                bad.add(normalize_name(key[: odd.start()]))
            continue
        raw, role = split
        if role == "dora":
            dora.append(key)
            continue
        w = modules.setdefault(normalize_name(raw), LoraWeights())
        if role == "alpha":
            w.alpha = _alpha(value, path, key)
        elif role == "factor":
            w.factors[key[len(raw) + 1:]] = value
        else:
            setattr(w, role, value)
    if dora:
        raise CheckpointError(path, f"DoRA LoRAs are not supported yet ({len(dora)} dora_scale/magnitude "
                                    f"keys, e.g. {dora[0]})")
    for name, w in list(modules.items()):
        if name in bad:  # a module with a part we cannot apply (a Tucker core, ...) is not applied at all
            del modules[name]
            unsupported.append(f"{name} (uses an unsupported {w.kind} variant)")
        elif not w.complete:
            del modules[name]
            unsupported.append(f"{name} (incomplete {w.kind} weights)")
    _apply_peft_metadata(modules, metadata, path)
    return LoraFile(path, modules, unsupported, metadata)


def _apply_peft_metadata(modules: dict[str, LoraWeights], metadata: dict[str, str], file: Path) -> None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return
    try:
        meta = json.loads(raw)
    except ValueError:
        return
    for name, w in modules.items():
        if name.startswith("lora_") or w.alpha is not None or w.down is None:
            continue
        component, _, path = name.partition(".")
        alpha = meta.get(f"{component}.lora_alpha")
        for pattern, value in (meta.get(f"{component}.alpha_pattern") or {}).items():
            if re.fullmatch(rf"(.*\.)?{pattern}", path):
                alpha = value
        if alpha is None:
            continue
        rank = w.rank
        rs = bool(meta.get(f"{component}.use_rslora"))
        if rank:  # a rank-0 module changes nothing
            alpha = _alpha(alpha, file, f"lora_adapter_metadata {component}.lora_alpha")
            w.scale = alpha / (rank ** 0.5 if rs else rank)


def read_lora(path) -> LoraFile:
    """Read and normalise a LoRA file (safetensors, or a safely unpickled .pt/.ckpt)."""
    path = Path(path)
    sd = read_state_dict(path)
    lf = parse_lora(sd, path, read_metadata(path))
    if not lf.modules:
        raise CheckpointError(path, "no LoRA weights found (expected lora_down/lora_up or lora_A/lora_B keys)")
    return lf


# --- which model a file was made for ---------------------------------------------------------

_CONTEXT_FAMILY = {768: "SD1", 1024: "SD2", 2048: "SDXL", 1280: "SDXL refiner"}


def guess_family(lf: LoraFile) -> str | None:
    """"SD1" / "SD2" / "SDXL" / … from the cross-attention width a LoRA's attn2 to_k expects."""
    for name, w in lf.modules.items():
        full = None if w.kind == "bias" or "attn2" not in name or not name.endswith(("to_k", "to_v")) \
            else w._meta_full()
        if full is not None and full.ndim > 1:
            width = full.shape[1]
            return _CONTEXT_FAMILY.get(width, f"a model with {width}-wide cross-attention")
    dit = dit_family(lf.modules)
    if dit is not None:
        return LABELS[dit]
    if any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for n in lf.modules):
        return "SDXL"
    return None
