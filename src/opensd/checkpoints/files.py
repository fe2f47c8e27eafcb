"""Read one weight file into a flat ``{name: tensor}`` dict, safely; write safetensors atomically.

Which format a file is in is decided by its first bytes, never by its extension.

* safetensors: we validate the whole header ourselves (lengths, JSON, dtypes, shapes, offsets,
  coverage of the data region) before the safetensors library sees the file, so a damaged or
  hostile file gets a plain-words error instead of a library panic.  Loading is memory-mapped.
* PyTorch pickles (.ckpt/.pt/.pth/.bin, zip or legacy): only ever through
  ``torch.load(weights_only=True)``.  A short list of training-framework classes that real 2022
  Stable Diffusion checkpoints carry next to their weights (pytorch_lightning's ModelCheckpoint and
  friends) is mapped onto inert placeholder classes, which take any arguments and do nothing.
  Anything else the pickle asks for is refused; we never fall back to ``weights_only=False``.
  That side lives in :mod:`opensd.checkpoints.safe_pickle`.
* GGUF (quantised diffusion models): :mod:`opensd.checkpoints.gguf_files`.

Every failure is a :class:`~opensd.errors.CheckpointError` naming the file and the problem.
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from opensd.atomic import atomic_write
from opensd.errors import CheckpointError, InvalidArgument

from .gguf_files import MAGIC as GGUF_MAGIC, read_gguf
from .safe_pickle import first_line, load_torch
from .scaled_fp8 import unscale
from .tensor_checks import check_tensor

__all__ = [
    "Format",
    "sniff_format",
    "read_safetensors_header",
    "read_state_dict",
    "read_metadata",
    "save_safetensors",
    "SAFETENSORS_HEADER_CAP",
]

Format = Literal["safetensors", "torch-zip", "torch-legacy", "gguf"]

# A real header is a few hundred KiB even for SDXL; anything past this is damage or an attack.
SAFETENSORS_HEADER_CAP = 100 * 1024 * 1024

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80

# safetensors dtype tag -> torch dtype (only those this torch build has).
_ST_DTYPES: dict[str, torch.dtype] = {
    tag: dt
    for tag, dt in {
        "BOOL": torch.bool,
        "U8": torch.uint8,
        "I8": torch.int8,
        "I16": torch.int16,
        "U16": getattr(torch, "uint16", None),
        "F16": torch.float16,
        "BF16": torch.bfloat16,
        "I32": torch.int32,
        "U32": getattr(torch, "uint32", None),
        "F32": torch.float32,
        "F64": torch.float64,
        "I64": torch.int64,
        "U64": getattr(torch, "uint64", None),
        "C64": torch.complex64,
        "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
        "F8_E5M2": getattr(torch, "float8_e5m2", None),
    }.items()
    if dt is not None
}
_TORCH_TO_ST: dict[torch.dtype, str] = {dt: tag for tag, dt in _ST_DTYPES.items()}


# ----------------------------------------------------------------------------- opening & sniffing


def _open_for_reading(path: Path):
    """Open ``path`` for binary reading, turning every OS failure into a plain-words error."""
    try:
        if path.is_dir():
            raise CheckpointError(path, "is a folder, not a weight file")
        # O_NONBLOCK so that a named pipe cannot hang the open; refused just below.
        f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | getattr(os, "O_NONBLOCK", 0)))
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(path, "file does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(path, "is a folder, not a weight file") from None
    except PermissionError:
        raise CheckpointError(path, "permission denied: this file cannot be read") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot open file: {e.strerror or e}") from None
    try:
        st = os.fstat(f.fileno())
    except OSError as e:
        f.close()
        raise CheckpointError(path, f"cannot read file: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        f.close()
        raise CheckpointError(path, "is not a regular file (a pipe, socket or device); weights come from files")
    size = st.st_size
    if size == 0:
        f.close()
        raise CheckpointError(path, "file is empty (0 bytes)")
    return f, size


def _read_exact(f, path: Path, n: int) -> bytes:
    try:
        data = f.read(n)
    except OSError as e:
        raise CheckpointError(path, f"cannot read file: {e.strerror or e}") from None
    if len(data) != n:
        raise CheckpointError(path, f"file ended early: wanted {n} bytes, got {len(data)}")
    return data


def _classify_head(head: bytes) -> Format | None:
    # safetensors first: its first 8 bytes are a length whose low byte may be anything,
    # including 0x80 or 'P', but byte 8 is always the '{' that opens the JSON header.
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == _ZIP_MAGIC:
        return "torch-zip"
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "torch-legacy"
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    return None


def _describe_unknown(head: bytes, size: int) -> str:
    text = head.lstrip()
    lowered = text[:64].lower()
    if lowered.startswith(b"version https://git-lfs"):
        return "not a weight file we can read: it is a Git LFS pointer (a small text stub), not the weights themselves; download the actual file"
    if lowered.startswith((b"<!doctype", b"<html", b"<?xml", b"{")):
        return "not a weight file we can read: it is a text/HTML document (perhaps a failed download or an error page)"
    shown = " ".join(f"{b:02x}" for b in head[:8])
    return (
        f"not a weight file we can read: it starts with bytes [{shown}] ({size} bytes in all), which is "
        "neither a safetensors header, a GGUF file, a PyTorch zip checkpoint nor a PyTorch pickle"
    )


def sniff_format(path) -> Format:
    """Decide the file's format from its first bytes (the extension is ignored)."""
    path = Path(path)
    f, size = _open_for_reading(path)
    with f:
        try:
            head = f.read(64)
        except OSError as e:
            raise CheckpointError(path, f"cannot read file: {e.strerror or e}") from None
    fmt = _classify_head(head)
    if fmt is None:
        raise CheckpointError(path, _describe_unknown(head, size))
    return fmt


# ----------------------------------------------------------------------------- safetensors


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _validate_header(path: Path, header_len: int, raw: bytes, data_len: int):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(path, f"safetensors header is not valid UTF-8 (bad byte at offset {e.start})") from None
    if not text.startswith("{"):
        raise CheckpointError(path, "safetensors header does not start with '{'")
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise CheckpointError(path, "safetensors header is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError is a ValueError, as are our hooks' complaints
        raise CheckpointError(path, f"safetensors header is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, "safetensors header is not a JSON object")

    metadata: dict[str, str] = {}
    if "__metadata__" in obj:
        md = obj.pop("__metadata__")
        if not isinstance(md, dict):
            raise CheckpointError(path, "safetensors __metadata__ is not a JSON object")
        for k, v in md.items():
            if not isinstance(v, str):
                raise CheckpointError(
                    path, f"safetensors __metadata__ entry {k!r} is not a string (got {type(v).__name__})"
                )
        metadata = dict(md)

    entries: dict[str, dict] = {}
    for name, info in obj.items():
        where = f"tensor {name[:60]!r}"
        if not isinstance(info, dict):
            raise CheckpointError(path, f"{where}: header entry is not a JSON object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in info:
                raise CheckpointError(path, f"{where}: header entry has no {field!r}")
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in _ST_DTYPES:
            raise CheckpointError(path, f"{where}: unknown dtype {dtype!r}")
        shape = info["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise CheckpointError(path, f"{where}: bad shape {shape!r} (must be a list of non-negative integers)")
        check_tensor(path, name, shape)
        offsets = info["data_offsets"]
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointError(path, f"{where}: bad data_offsets {offsets!r} (must be [begin, end])")
        begin, end = offsets
        if begin < 0 or end < begin:
            raise CheckpointError(path, f"{where}: bad data_offsets [{begin}, {end}] (need 0 <= begin <= end)")
        nbytes = math.prod(shape) * _ST_DTYPES[dtype].itemsize
        if end - begin != nbytes:
            raise CheckpointError(
                path,
                f"{where}: shape {shape} of {dtype} needs {nbytes} bytes but data_offsets [{begin}, {end}] "
                f"span {end - begin}",
            )
        entries[name] = {"dtype": dtype, "shape": tuple(shape), "data_offsets": (begin, end)}

    # The data region must be covered exactly: no overlaps, no gaps, nothing missing, nothing extra.
    spans = sorted((e["data_offsets"][0], e["data_offsets"][1], n) for n, e in entries.items())
    contiguous = all(b == pe for (b, _, _), (_, pe, _) in zip(spans[1:], spans[:-1])) and (
        not spans or spans[0][0] == 0
    )
    promised = spans[-1][1] if spans else 0
    if contiguous and promised > data_len:
        raise CheckpointError(
            path,
            f"file is truncated: header promises {promised} bytes of tensor data, file has {data_len}",
        )
    for begin, end, name in spans:
        if end > data_len:
            raise CheckpointError(
                path,
                f"tensor {name!r}: data_offsets [{begin}, {end}] lie outside the data region "
                f"(which holds {data_len} bytes)",
            )
    prev_end, prev_name = 0, None
    for begin, end, name in spans:
        if begin < prev_end:
            raise CheckpointError(
                path, f"tensors {prev_name!r} and {name!r} overlap in the data region (bytes {begin}..{prev_end})"
            )
        if begin > prev_end:
            raise CheckpointError(
                path, f"bytes {prev_end}..{begin} of the data region belong to no tensor (damaged header)"
            )
        prev_end, prev_name = end, name
    if prev_end < data_len:
        raise CheckpointError(
            path,
            f"the data region holds {data_len} bytes but the header only accounts for {prev_end} "
            "(extra bytes after the last tensor)",
        )
    return entries, metadata


def _read_header(f, path: Path, size: int):
    if size < 8:
        raise CheckpointError(path, f"file is too short to be a safetensors file ({size} bytes)")
    (header_len,) = struct.unpack("<Q", _read_exact(f, path, 8))
    if header_len > SAFETENSORS_HEADER_CAP:
        raise CheckpointError(
            path,
            f"safetensors header claims to be {header_len} bytes, more than our {SAFETENSORS_HEADER_CAP // 2**20} MiB "
            "limit; the file is damaged or not a safetensors file",
        )
    if 8 + header_len > size:
        raise CheckpointError(
            path,
            f"safetensors header claims to be {header_len} bytes but the file has only {size - 8} bytes after "
            "the length field; the file is truncated or damaged",
        )
    if header_len < 2:
        raise CheckpointError(path, f"safetensors header is too short ({header_len} bytes) to hold a JSON object")
    raw = _read_exact(f, path, header_len)
    return _validate_header(path, header_len, raw, size - 8 - header_len)


def read_safetensors_header(path) -> tuple[dict, dict[str, str]]:
    """Read and fully validate a safetensors header.

    Returns ``(entries, metadata)``: ``entries`` maps tensor name to
    ``{"dtype": str, "shape": tuple[int, ...], "data_offsets": (begin, end)}`` in header order;
    ``metadata`` is the ``__metadata__`` string map (``{}`` when absent).
    """
    path = Path(path)
    f, size = _open_for_reading(path)
    with f:
        head = f.read(9)
        fmt = _classify_head(head)
        if fmt != "safetensors":
            what = {"torch-zip": "a PyTorch zip checkpoint", "torch-legacy": "a PyTorch pickle"}.get(fmt)
            if what is not None:
                raise CheckpointError(path, f"not a safetensors file: its content is {what}")
            # Otherwise let the header checks below say precisely what is wrong.
        f.seek(0)
        return _read_header(f, path, size)


def _load_safetensors(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    entries, _ = read_safetensors_header(path)
    if not entries:
        raise CheckpointError(path, "contains no tensors")
    try:
        from safetensors.torch import load_file

        # Memory-mapped by the library: on CPU the tensors view the mapped file, no copy.
        tensors = load_file(str(path), device=str(device))
    except CheckpointError:
        raise
    except Exception as e:  # library panics surface as assorted exception types
        raise CheckpointError(path, f"the safetensors library could not read it: {first_line(e)}") from None
    if set(tensors) != set(entries):
        raise CheckpointError(path, "the safetensors library returned different tensors than the header lists")
    return {name: tensors[name] for name in entries}


# ----------------------------------------------------------------------------- public API


def _as_device(device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InvalidArgument(f"device: {device!r} is not a valid torch device") from None


def read_state_dict(path, device="cpu", keep_quantized: bool = False) -> dict[str, torch.Tensor]:
    """Read any supported weight file into a flat ``{name: tensor}`` dict on ``device``.

    A GGUF file's quantised tensors come as their blocks (``Quantized``, unpacked per layer when the
    model runs) for the model loaders, which say `keep_quantized`; any other reader refuses them.
    A scaled float8 file's weights (scaled_fp8.py) come as ``Scaled`` with `keep_quantized`, else
    dequantised to float32; its scales and markers are taken out."""
    path = Path(path)
    dev = _as_device(device)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return unscale(_load_safetensors(path, dev), read_safetensors_header(path)[1], path, keep_quantized)
    if fmt == "gguf":
        sd = read_gguf(path)[0]
        kinds = sorted({v.kind for v in sd.values() if not isinstance(v, torch.Tensor)})
        if kinds and not keep_quantized:
            raise CheckpointError(path, f"is a quantised GGUF file ({', '.join(kinds)}): only diffusion models are "
                                        "read from those (a model, or UNETLoader / UnetLoaderGGUF)")
        return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in sd.items()}
    if path.suffix.lower() == ".safetensors":
        # The name promises a format that cannot run code; a pickle behind it is mislabelled at
        # best and disguised at worst, so it is not unpickled even by the restricted loader.
        what = "PyTorch zip checkpoint" if fmt == "torch-zip" else "PyTorch pickle"
        raise CheckpointError(path, f"named .safetensors but its content is a {what} (a pickle), which a "
                                    "safetensors file never is; refusing to unpickle a disguised file. If you "
                                    "trust its source, rename it to .ckpt")
    return load_torch(path, fmt, dev)


def read_metadata(path) -> dict[str, str]:
    """The safetensors ``__metadata__`` map, a GGUF file's text entries; ``{}`` for other formats."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "gguf":
        return read_gguf(path)[1]
    if fmt != "safetensors":
        return {}
    return read_safetensors_header(path)[1]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without copying."""
    flat = t.reshape(-1).view(torch.uint8)
    return memoryview(flat.numpy()).cast("B")


def _write_tensor_data(f, t: torch.Tensor) -> None:
    if t.numel():
        f.write(_tensor_bytes(t))


def save_safetensors(state_dict, path, metadata: dict[str, str] | None = None) -> None:
    """Write ``state_dict`` as a safetensors file, atomically.

    The data goes to a temporary file in the target's folder, is flushed to disk, then renamed
    over the target: readers see the old file or the complete new one, never a half-written one.
    """
    path = Path(path)
    if sys.byteorder != "little":  # pragma: no cover - no big-endian hosts in practice
        raise CheckpointError(path, "cannot save safetensors on a big-endian machine")
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(path, f"cannot save: expected a dict of tensors, got {type(state_dict).__name__}")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise CheckpointError(path, "cannot save: metadata must map text keys to text values")

    prepared: list[tuple[str, torch.Tensor]] = []
    for name, t in state_dict.items():
        if not isinstance(name, str):
            raise CheckpointError(path, f"cannot save: tensor name {name!r} is not text")
        if name == "__metadata__":
            raise CheckpointError(path, "cannot save: '__metadata__' is reserved and cannot name a tensor")
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(path, f"cannot save: {name!r} is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided:
            raise CheckpointError(path, f"cannot save: {name!r} is not a dense tensor")
        if t.dtype not in _TORCH_TO_ST:
            raise CheckpointError(path, f"cannot save: {name!r} has dtype {t.dtype}, which safetensors cannot hold")
        prepared.append((name, t.detach().to("cpu").contiguous()))

    # Widest dtypes first: with an 8-aligned data start every tensor then starts on a multiple of
    # its own item size, which keeps memory-mapped reads aligned.
    prepared.sort(key=lambda nt: (-nt[1].element_size(), nt[0]))
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, t in prepared:
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _TORCH_TO_ST[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    folder = path.parent
    if not folder.is_dir():
        raise CheckpointError(path, f"cannot save: folder {str(folder)!r} does not exist")
    try:
        with atomic_write(path) as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for _, t in prepared:
                _write_tensor_data(f, t)
    except PermissionError:
        raise CheckpointError(path, f"cannot save: no permission to write in {str(folder)!r}") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot save: {e.strerror or e}") from None
