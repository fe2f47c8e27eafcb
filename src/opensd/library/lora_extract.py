"""LoRA extraction: a LoRA file made from the difference between a fine-tuned model and its base.

For every layer a LoRA can patch, ``delta = W_tuned - W_base`` is approximated by a truncated SVD
``delta ~= up @ down`` of rank r: ``up = U[:, :r] * S[:r]`` (the singular values go into ``up``, as
kohya's sd-scripts and ComfyUI put them), ``down = Vh[:r]``; a conv kernel is flattened to
``(out, in*kh*kw)`` first, so a 3x3 conv gets a 3x3 ``down`` and a 1x1 ``up`` (LoCon). Both factors
are then clamped to +-q, q the ``clamp_quantile`` quantile of their values taken together (0.99,
as both tools do; ``None`` or 1 keeps the exact SVD). ``alpha = rank``, so the file's scale is 1.

Which layers (``layers="kohya"``, sd-scripts' LoRA targets): the linears and 1x1 convs of the
UNet's attention blocks at ``rank``; with a ``conv_rank`` also the resnet / down- / upsample blocks
(their 3x3 convs at ``conv_rank``, their linears and 1x1 convs at ``rank``); every linear of the
text encoders' attention and MLP (both of SDXL's). ``layers="all"`` takes every Linear/Conv2d of
the UNet (ComfyUI's LoraSave does). A layer whose largest change is below ``min_diff`` (kohya's
``--min_diff``, 0.01; applied per layer here, where kohya uses it to tell whether a text encoder
changed at all) is left out.

Names are the kohya ones A1111, ComfyUI, kohya and diffusers read (``lora_unet_…``, ``lora_te_…``,
SDXL's ``lora_te1_…`` / ``lora_te2_…``), taken from adapters.lora_keys, the same table our loader
reads them with. UNet families only (SD1, SD2, SDXL base and refiner, the built-in small model);
SD3 and Flux models are refused.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters.lora_keys import LoraModule, lora_modules
from ..checkpoints.files import save_safetensors
from ..errors import InvalidArgument
from ..models.stable_diffusion import StableDiffusion
from .merge import describe

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl_refiner", "small")
LORA_TYPES = ("standard", "full_diff")
LAYER_SETS = ("kohya", "all")
DEFAULT_MIN_DIFF = 0.01
DEFAULT_CLAMP = 0.99
_ATTENTION = (".attentions.",)  # kohya: Transformer2DModel
_CONV_BLOCKS = (".resnets.", ".downsamplers.", ".upsamplers.")  # kohya: ResnetBlock2D, Down/Upsample2D
# sd-scripts' ss_base_model_version values
_BASE_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0", "sdxl_refiner": "sdxl_refiner_v1-0"}
Progress = Callable[[int, int], None]  # (layers done, layers); may raise to stop


@dataclass
class Extraction:
    """An extracted LoRA: its tensors and metadata (ready to save), and what was left out."""
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    layers: int = 0  # modules written
    skipped: list[str] = field(default_factory=list)  # modules whose change was below min_diff


def _is_3x3(weight: torch.Tensor) -> bool:
    return weight.ndim == 4 and tuple(weight.shape[2:]) != (1, 1)


def layer_rank(m: LoraModule, rank: int, conv_rank: int | None, layers: str = "kohya") -> int | None:
    """The rank module ``m`` is extracted at, or None when it is not extracted."""
    weight = m.module.weight
    if m.component == "te" or (layers == "all" and not _is_3x3(weight)) or any(b in m.peft for b in _ATTENTION):
        return rank
    if not conv_rank or (layers == "kohya" and not any(b in m.peft for b in _CONV_BLOCKS)):
        return None
    return conv_rank if _is_3x3(weight) else rank


def low_rank(delta: torch.Tensor, rank: int, clamp_quantile: float | None = DEFAULT_CLAMP
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down), float32, with ``up @ down`` the best rank-``rank`` approximation of ``delta``
    (a Linear's or a Conv2d's weight change), clamped as the module docstring says."""
    mat = delta.detach().float().flatten(1)
    rank = min(rank, *mat.shape)
    try:
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    except torch.linalg.LinAlgError:  # rare non-convergence in float32: float64 converges
        u, s, vh = (t.float() for t in torch.linalg.svd(mat.double(), full_matrices=False))
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp_quantile is not None and clamp_quantile < 1:
        both = torch.cat([up.flatten(), down.flatten()])
        # the q-quantile by rank order (torch.quantile refuses tensors over 16M values)
        k = min(both.numel(), max(1, math.ceil(clamp_quantile * both.numel())))
        hi = both.kthvalue(k).values
        if hi > 0:
            up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    if delta.ndim == 4:
        up = up.reshape(delta.shape[0], rank, 1, 1)
        down = down.reshape(rank, *delta.shape[1:])
    return up.contiguous(), down.contiguous()


def _check_family(model, what: str) -> None:
    family = getattr(getattr(model, "config", None), "family", None)
    if not isinstance(model, StableDiffusion) or family not in FAMILIES:
        raise InvalidArgument(f"{what}: LoRA extraction supports SD1, SD2 and SDXL models (UNet families); "
                              f"this one is {family or type(model).__name__}")


def _check_options(rank, conv_rank, min_diff, clamp_quantile, lora_type, layers) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise InvalidArgument(f"rank: {rank!r} must be a whole number of at least 1")
    if conv_rank is not None and (not isinstance(conv_rank, int) or conv_rank < 0):
        raise InvalidArgument(f"conv_rank: {conv_rank!r} must be a whole number (0: no 3x3 conv layers)")
    if not isinstance(min_diff, (int, float)) or not 0 <= min_diff < math.inf:
        raise InvalidArgument(f"min_diff: {min_diff!r} must be a number of at least 0")
    if clamp_quantile is not None and not (isinstance(clamp_quantile, (int, float)) and 0 < clamp_quantile <= 1):
        raise InvalidArgument(f"clamp_quantile: {clamp_quantile!r} must be in (0, 1] (1: no clamping)")
    if lora_type not in LORA_TYPES:
        raise InvalidArgument(f"lora_type: {lora_type!r} is not one of {', '.join(LORA_TYPES)}")
    if layers not in LAYER_SETS:
        raise InvalidArgument(f"layers: {layers!r} is not one of {', '.join(LAYER_SETS)}")


def _unused_layer(model: StableDiffusion) -> str | None:
    """SD2 reads its text encoder's penultimate layer, so the last one never matters; sd-scripts
    loads that encoder without it (138 modules, not 144)."""
    if model.config.family != "sd2":
        return None
    return f".encoder.layers.{model.config.text_encoders[0].layers - 1}."


def _check_pair(base: StableDiffusion, tuned: StableDiffusion, base_of: dict, plan) -> None:
    """One family and every extracted layer the same shape in both, checked before any SVD. Configs
    may differ where weights cannot tell (a diffusers folder's head size or VAE scale vs a file's)."""
    misfit = []
    for m, _ in plan:
        other = base_of.get(m.kohya)
        if other is None or other.module.weight.shape != m.module.weight.shape:
            there = "absent" if other is None else f"{tuple(other.module.weight.shape)}"
            misfit.append(f"{m.kohya} is {tuple(m.module.weight.shape)} in the tuned model, {there} in the base")
    if base.config.family != tuned.config.family or misfit:
        detail = f": {len(misfit)} layers differ, e.g. {misfit[0]}" if misfit else ""
        raise InvalidArgument(f"models: the tuned model is {describe(tuned.config)} but the base is "
                              f"{describe(base.config)}{detail}; a LoRA is extracted from a model and its own base")


def layer_plan(model: StableDiffusion, parts, rank: int, conv_rank: int | None, layers: str = "kohya"
               ) -> list[tuple[LoraModule, int]]:
    """(module, rank) for every layer extracted from `model` (parts: "unet" and/or "te")."""
    out = []
    unused = _unused_layer(model)
    for m in lora_modules(model, text_encoder="te" in parts):
        if unused and m.component == "te" and unused in m.peft:
            continue
        r = layer_rank(m, rank, conv_rank, layers) if m.component in parts else None
        if r is not None:
            out.append((m, r))
    return out


def _difference(name: str, module, base_module, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight change, bias change or None) in float32 on `device`; without a base module, the
    module's own weights (a model holding differences)."""
    def f32(t):
        return None if t is None else t.detach().to(device, torch.float32)

    for what, mod in (("tuned model", module), ("base model", base_module)):
        if mod is not None and mod.weight.is_meta:
            raise InvalidArgument(f"models: the {what} has no weights for {name} (a partial file?)")
    weight, bias = f32(module.weight), f32(getattr(module, "bias", None))
    if base_module is None:
        return weight, bias
    base_bias = f32(getattr(base_module, "bias", None))
    return weight - f32(base_module.weight), None if bias is None or base_bias is None else bias - base_bias


def extract_lora(base: StableDiffusion | None, tuned: StableDiffusion, *, rank: int = 32,
                 conv_rank: int | None = None, min_diff: float = DEFAULT_MIN_DIFF,
                 clamp_quantile: float | None = DEFAULT_CLAMP, parts=("unet", "te"), lora_type: str = "standard",
                 bias_diff: bool = False, layers: str = "kohya", dtype: torch.dtype = torch.float16,
                 device: str | torch.device | None = None, progress: Progress | None = None) -> Extraction:
    """The LoRA taking ``base`` to ``tuned``. ``base=None``: ``tuned`` already holds the differences
    (ComfyUI's ModelMergeSubtract / CLIPMergeSubtract output). ``parts``: "unet" and/or "te".
    ``lora_type="full_diff"`` stores each layer's whole change (``.diff``) instead of up/down;
    ``bias_diff`` adds bias changes (``.diff_b``). Tensors are stored as ``dtype``. The SVDs run on
    ``device`` (default: where the weights are), one layer at a time."""
    _check_options(rank, conv_rank, min_diff, clamp_quantile, lora_type, layers)
    _check_family(tuned, "tuned" if base is not None else "model")
    plan = layer_plan(tuned, parts, rank, conv_rank, layers)
    base_of: dict[str, LoraModule] = {}
    if base is not None:
        _check_family(base, "base")
        base_of = {m.kohya: m for m in lora_modules(base, text_encoder="te" in parts)}
        _check_pair(base, tuned, base_of, plan)
    out = Extraction({}, {})
    report = progress or (lambda done, total: None)
    for i, (m, r) in enumerate(plan):
        report(i, len(plan))
        weight, bias = _difference(m.kohya, m.module, base_of[m.kohya].module if base is not None else None, device)
        changed = weight.abs().max().item() > min_diff  # kohya: different when > min_diff
        bias_changed = bias_diff and bias is not None and bias.abs().max().item() > min_diff
        if not (changed or bias_changed):
            out.skipped.append(m.kohya)
            continue
        if changed:
            _add_layer(out.tensors, m.kohya, weight, r, lora_type, clamp_quantile, dtype)
        if bias_changed:
            out.tensors[f"{m.kohya}.diff_b"] = bias.detach().to("cpu", dtype).contiguous()
        out.layers += 1
    report(len(plan), len(plan))
    out.metadata = lora_metadata(tuned.config.family, rank, conv_rank, lora_type)
    return out


def _add_layer(tensors, name, delta, rank, lora_type, clamp_quantile, dtype) -> None:
    if lora_type == "full_diff":
        tensors[f"{name}.diff"] = delta.to("cpu", dtype).contiguous()
        return
    up, down = low_rank(delta, rank, clamp_quantile)
    tensors[f"{name}.lora_up.weight"] = up.to("cpu", dtype)
    tensors[f"{name}.lora_down.weight"] = down.to("cpu", dtype)
    tensors[f"{name}.alpha"] = torch.tensor(float(down.shape[0]), dtype=dtype)  # alpha = rank: scale 1


def lora_metadata(family: str, rank: int, conv_rank: int | None, lora_type: str = "standard") -> dict[str, str]:
    """sd-scripts' ``ss_`` keys that A1111 and the LoRA browsers show (alpha = rank)."""
    meta = {"ss_network_module": "networks.lora" if lora_type == "standard" else "lycoris.kohya",
            "ss_network_dim": str(rank), "ss_network_alpha": str(rank), "ss_v2": str(family == "sd2"),
            "ss_training_comment": "extracted from a fine-tune and its base by opensd"}
    if family in _BASE_VERSION:
        meta["ss_base_model_version"] = _BASE_VERSION[family]
    if conv_rank:
        meta["ss_network_args"] = json.dumps({"conv_dim": str(conv_rank), "conv_alpha": str(conv_rank)})
    if lora_type == "full_diff":
        meta["ss_network_args"] = json.dumps({"algo": "full"})
    return meta


def base_model_metadata(path) -> dict[str, str]:
    """What kohya records of the base model: its file name and hashes (the SHA-256 is cached)."""
    from .hashes import file_sha256, legacy_model_hash
    path = Path(path)
    meta = {"ss_sd_model_name": path.name}
    if path.is_file():
        meta |= {"ss_new_sd_model_hash": file_sha256(path), "ss_sd_model_hash": legacy_model_hash(path)}
    return meta


def save_lora(extraction: Extraction, output, metadata: dict[str, str] | None = None) -> Path:
    """Write ``extraction`` atomically to ``output`` (the caller has checked the path: see
    convert.check_output). Refuses an extraction with no layers (the models do not differ)."""
    if not extraction.tensors:
        raise InvalidArgument(f"models: no layer changed by min_diff or more ({len(extraction.skipped)} compared); "
                              "there is no LoRA to extract (the same model twice?)")
    save_safetensors(extraction.tensors, output, metadata=extraction.metadata | (metadata or {}))
    return Path(output)


def load_for_extraction(path) -> StableDiffusion:
    """A model file or diffusers folder as a StableDiffusion holding the file's tensors as they are
    (their own dtype; the VAE is not loaded)."""
    from .convert import read_checkpoint
    sd, _, cfg = read_checkpoint(path)
    if cfg.family not in FAMILIES:
        raise InvalidArgument(f"model: {Path(path).name} is {cfg.family}; LoRA extraction supports SD1, SD2 and SDXL")
    with torch.device("meta"):
        model = StableDiffusion(cfg)
    wanted = {k for k in model.state_dict() if not k.startswith("first_stage_model.")}
    model.load_state_dict({k: v for k, v in sd.items() if k in wanted}, strict=False, assign=True)
    return model


def extract_lora_to_file(output, base, tuned, *, overwrite: bool = False, progress: Progress | None = None,
                         **options) -> tuple[Path, Extraction]:
    """Load ``base`` and ``tuned`` (files or diffusers folders), extract (``options``: see
    :func:`extract_lora`) and save to ``output``, which may not be an input nor, without
    ``overwrite``, an existing file."""
    from .convert import check_output
    out = check_output(output, [base, tuned], overwrite)
    extraction = extract_lora(load_for_extraction(base), load_for_extraction(tuned), progress=progress, **options)
    save_lora(extraction, out, base_model_metadata(base))
    return out, extraction
