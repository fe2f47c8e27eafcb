"""ComfyUI's "scaled" float8 files: each float8 Linear weight comes with a scale, the weight being
the float8 values times it. Two layouts are in circulation:

* the older one (t5xxl_fp8_e4m3fn_scaled, the first *_fp8_scaled networks): a marker tensor
  `scaled_fp8` (its dtype the float8 kind; two elements where the file asks for full-precision
  matrix products) and, beside each scaled `X.weight`, a scalar `X.scale_weight` and often an
  `X.scale_input`;
* the newer per-layer one ("fp8mixed", "fp8_scaled" files since late 2025): beside each quantised
  `X.weight`, `X.comfy_quant` (a uint8 tensor holding JSON: {"format": "float8_e4m3fn", ...}),
  `X.weight_scale` and possibly `X.input_scale`; layers without `comfy_quant` keep their plain
  weights (bf16 in "mixed" files). The same per-layer JSON may instead be in the safetensors
  metadata, as {"layers": {"X": {...}}} under `_quantization_metadata`.

An input scale only matters to a float8 x float8 matrix product (the input quantised with it);
computing in bf16/fp16/fp32, as ComfyUI does without fp8 matmuls and as opensd always does, the
weight is data * scale and the input scale is not used: it is read and dropped here. Formats other
than per-tensor (or per-row) float8 (nvfp4, mxfp8, int8 ...) are refused by name.
"""
from __future__ import annotations

import json
from collections.abc import Mapping

import torch

from ..errors import CheckpointError
from ..models.stored_weights import FLOAT8, Scaled

MARKER = "scaled_fp8"
QUANT = ".comfy_quant"
METADATA = "_quantization_metadata"
_FLOAT8_FORMATS = {str(t).removeprefix("torch."): t for t in FLOAT8}
_OLD_SCALES = (".scale_weight", ".scale_input")
_NEW_SCALES = (".weight_scale", ".input_scale", ".weight_scale_2")


def is_marker(key: str) -> bool:
    return key == MARKER or key.endswith("." + MARKER)


def is_scaled(keys, metadata: Mapping[str, str] | None = None) -> bool:
    """Whether a file with these tensor names (and metadata) is a scaled float8 file."""
    return METADATA in (metadata or {}) or any(is_marker(k) or k.endswith(QUANT) for k in keys)


def scale_keys(keys) -> set[str]:
    """The names in a scaled file that are not model weights (marker, scales, per-layer formats), for
    header-only readers."""
    return {k for k in keys if is_marker(k) or k.endswith((QUANT, *_OLD_SCALES, *_NEW_SCALES))}


def _formats(sd: Mapping, metadata: Mapping[str, str], path) -> dict[str, str]:
    """{layer: format} from the per-layer JSON (tensors, or the file's metadata)."""
    confs = {}
    if METADATA in metadata:
        try:
            confs.update(json.loads(metadata[METADATA])["layers"])
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(path, f"its {METADATA} is not the JSON of ComfyUI's quantised layers") from None
    for key, value in sd.items():
        if key.endswith(QUANT):
            try:
                confs[key[:-len(QUANT)]] = json.loads(value.cpu().numpy().tobytes())
            except (ValueError, TypeError, AttributeError):
                raise CheckpointError(path, f"{key} is not a JSON layer description") from None
    out = {}
    for layer, conf in confs.items():
        fmt = conf.get("format") if isinstance(conf, dict) else None
        if fmt not in _FLOAT8_FORMATS:
            raise CheckpointError(path, f"layer {layer} is stored in ComfyUI's {fmt!r} format, which opensd "
                                        f"does not read (it reads {' and '.join(_FLOAT8_FORMATS)} scaled "
                                        "layers): use a float8, bf16 or GGUF file")
        out[layer] = fmt
    return out


def unscale(sd: dict[str, torch.Tensor], metadata: Mapping[str, str], path, keep: bool) -> dict:
    """`sd` of a scaled float8 file with every scaled weight as a Scaled (`keep`) or dequantised to
    float32, and the marker, scales and layer descriptions taken out; other files unchanged."""
    if not is_scaled(sd, metadata):
        return sd
    formats = _formats(sd, metadata, path)
    marker = next((v for k, v in sd.items() if is_marker(k)), None)
    old_kind = marker.dtype if marker is not None and marker.dtype in FLOAT8 else torch.float8_e4m3fn
    out = {}
    for key, value in sd.items():
        if key in scale_keys((key,)):
            continue
        layer = key[:-len(".weight")] if key.endswith(".weight") else None
        scale = sd.get(f"{layer}.weight_scale", sd.get(f"{layer}.scale_weight")) if layer else None
        if scale is None:
            out[key] = value
            continue
        kind = _FLOAT8_FORMATS[formats[layer]] if layer in formats else old_kind
        data = value.view(kind) if value.dtype == torch.uint8 else value
        if data.dtype not in FLOAT8 or (scale.numel() != 1 and scale.numel() != data.shape[0]):
            raise CheckpointError(path, f"{key} ({str(value.dtype).removeprefix('torch.')}, {tuple(value.shape)}) "
                                        f"does not fit a scaled float8 weight with {scale.numel()} scales")
        stored = Scaled(data, scale)
        out[key] = stored if keep else stored.dequantize(torch.float32)
    return out
