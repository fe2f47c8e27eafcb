"""GGUF weight files of diffusion models, as city96's ComfyUI-GGUF and stable-diffusion.cpp write them,
read with the `gguf` package (memory-mapped: nothing is read until a tensor is used).

* Names are the original checkpoint's (``double_blocks.0.img_attn.qkv.weight``), bare as city96's
  converter writes them or under ``model.diffusion_model.`` as sd.cpp keeps them; detection
  handles both, as for safetensors.
* GGUF lists a tensor's dimensions fastest first; the shape is their reverse, or the
  ``comfy.gguf.orig_shape.<name>`` entry city96 writes for tensors it flattened to rows of 256.
* F32/F16/BF16 tensors become plain tensors; quantised ones (Q8_0, Q4_K, ...) stay as their blocks
  (models.stored_weights.Quantized) and are unpacked per layer when the model runs.
* String entries of the header (``general.architecture``, ours such as ``opensd.head_dim``) are
  the file's metadata.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import gguf
import numpy as np
import torch

from ..errors import CheckpointError
from ..models.stored_weights import Quantized

MAGIC = b"GGUF"
_SHAPE_KEY = "comfy.gguf.orig_shape."
_PLAIN = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F64,
          gguf.GGMLQuantizationType.I8, gguf.GGMLQuantizationType.I16, gguf.GGMLQuantizationType.I32,
          gguf.GGMLQuantizationType.I64}


def _reader(path: Path) -> gguf.GGUFReader:
    try:
        return gguf.GGUFReader(path, "c")  # copy-on-write map: torch may view it without a copy
    except (ValueError, KeyError, IndexError, OSError, TypeError) as e:
        raise CheckpointError(path, f"not a GGUF file we can read: {e}") from None


def _strings(reader: gguf.GGUFReader) -> dict[str, str]:
    out = {}
    for name, field in reader.fields.items():
        if field.types == [gguf.GGUFValueType.STRING]:
            out[name] = bytes(field.parts[field.data[0]]).decode("utf-8", "replace")
    return out


def _orig_shape(reader: gguf.GGUFReader, name: str) -> tuple[int, ...] | None:
    field = reader.fields.get(_SHAPE_KEY + name)
    if field is None:
        return None
    return tuple(int(field.parts[i][0]) for i in field.data)


def _shape(path: Path, reader: gguf.GGUFReader, t) -> tuple[int, ...]:
    """The tensor's shape: ComfyUI's orig_shape entry, else the stored dims (reversed). An orig_shape
    must hold the stored count of values: a quantised tensor keeps its claimed shape until the first
    dequantization, where a lie would fail mid-generation."""
    shape = _orig_shape(reader, t.name) or tuple(int(d) for d in reversed(t.shape.tolist()))
    if math.prod(shape) != int(t.n_elements):
        raise CheckpointError(path, f"tensor {t.name!r}: shape {list(shape)} does not match its "
                                    f"{int(t.n_elements)} stored values")
    return shape


def gguf_shapes(path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """({name: shape}, string metadata) of a GGUF file, from its header alone (no tensor data read)."""
    path = Path(path)
    reader = _reader(path)
    return {t.name: _shape(path, reader, t) for t in reader.tensors}, _strings(reader)


def _tensor(t, shape: tuple[int, ...]):
    with warnings.catch_warnings():  # numpy's memmap views; torch shares them
        warnings.simplefilter("ignore", UserWarning)
        data = torch.from_numpy(np.asarray(t.data))
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        return data.contiguous().view(torch.bfloat16).reshape(shape)
    if t.tensor_type in _PLAIN:
        return data.reshape(shape)
    return Quantized(data, int(t.tensor_type), torch.Size(shape))


def read_gguf(path) -> tuple[dict, dict[str, str]]:
    """({name: tensor or Quantized}, string metadata) of a GGUF file."""
    path = Path(path)
    reader = _reader(path)
    if not reader.tensors:
        raise CheckpointError(path, "contains no tensors")
    sd = {}
    for t in reader.tensors:
        shape = _shape(path, reader, t)
        try:
            sd[t.name] = _tensor(t, shape)
        except (RuntimeError, ValueError) as e:
            raise CheckpointError(path, f"tensor {t.name!r}: its data does not fit shape {shape}: {e}") from None
    return sd, _strings(reader)


def read_gguf_fields(path, names: tuple[str, ...]) -> dict:
    """Those of the header entries `names` that a GGUF file has (arrays as lists, strings as str);
    no tensor is read. A llama.cpp language model keeps its tokenizer so (tokenizer.ggml.*)."""
    reader = _reader(Path(path))
    return {name: reader.fields[name].contents() for name in names if name in reader.fields}
