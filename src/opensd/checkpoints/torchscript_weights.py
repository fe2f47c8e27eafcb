"""The weights inside a TorchScript archive (torch.jit.save's zip: `<name>/data.pkl`, the tensors
under `<name>/data/<key>`, compiled code under `<name>/code/`), read without running any of it.

Such files circulate as model downloads (LaMa's big-lama.pt). torch.load refuses them with
weights_only=True and torch.jit.load would run their code; here data.pkl is read by our own
restricted unpickler instead: the module objects it builds (GLOBAL `__torch__.<class>`) become
inert records of their attributes, tensors are rebuilt from the archive's storage records (with
their bounds checked), a few container helpers of TorchScript's pickler are allowed, and anything
else the pickle asks for is refused. The code/ folder is never read. The result is the module's
state dict: every tensor attribute under its dotted path ("generator.model.1.bn_l.running_mean"),
as torch.jit.load(...).state_dict() names it.
"""
from __future__ import annotations

import math
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

from ..errors import CheckpointError
from .safe_pickle import first_line
from .tensor_checks import check_tensor

__all__ = ["is_torchscript", "read_torchscript_weights"]

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MAX_DEPTH = 64


def is_torchscript(path) -> bool:
    """Whether `path` is a zip whose top folder holds TorchScript's constants.pkl (what torch.load
    itself looks for to tell a TorchScript archive from a torch.save one)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


class _Record:
    """Stands in for a TorchScript object (a scripted module): keeps the attribute dict its pickle
    sets, runs nothing. (One subclass per class name the pickle asks for, as NEWOBJ wants a type.)"""

    stands_for = ""

    def __new__(cls, *args):
        self = object.__new__(cls)
        self.state = {}
        return self

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


_RECORD_CLASSES: dict[str, type] = {}


def _record_class(name: str) -> type:
    if name not in _RECORD_CLASSES:
        _RECORD_CLASSES[name] = type("Record", (_Record,), {"stands_for": name})
    return _RECORD_CLASSES[name]


def _same(obj, *args):
    return obj


def _as_list(obj):
    return list(obj)


def _rebuild_tensor(storage, offset, size, stride, *rest):
    """torch._utils._rebuild_tensor_v2's arguments -> a tensor viewing `storage` (a flat tensor),
    refused when the view would reach outside it."""
    if not isinstance(storage, torch.Tensor) or not all(isinstance(v, int) for v in (offset, *size, *stride)):
        raise pickle.UnpicklingError("a tensor record with malformed storage, size or stride")
    if len(size) != len(stride) or offset < 0 or any(v < 0 for v in (*size, *stride)):
        raise pickle.UnpicklingError("a tensor record with malformed size or stride")
    if math.prod(size) and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.numel():
        raise pickle.UnpicklingError("a tensor reaches past the end of its storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), offset)


def _rebuild_parameter(data, requires_grad, *rest):
    return data


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "restore_type_tag"): _same,
    ("torch.jit._pickle", "build_intlist"): _as_list,
    ("torch.jit._pickle", "build_doublelist"): _as_list,
    ("torch.jit._pickle", "build_boollist"): _as_list,
    ("torch.jit._pickle", "build_tensorlist"): _as_list,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root, self.storages = archive, root, {}

    def find_class(self, module, name):
        if module == "__torch__" or module.startswith("__torch__."):
            return _record_class(f"{module}.{name}")
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not plain tensor data")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"an unknown persistent record {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype) or not isinstance(key, str) or not key.isalnum():
            raise pickle.UnpicklingError("a storage record with a malformed type or key")
        if key not in self.storages:
            try:
                raw = self.archive.read(f"{self.root}/data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"storage {key} is missing from the archive") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key} holds {len(raw)} bytes for {numel} elements")
            self.storages[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        return self.storages[key]


def _checked_entries(path: Path, z: zipfile.ZipFile) -> str:
    """The archive's top folder, once every entry we will read (data.pkl and data/*) is checked:
    stored uncompressed (a compressed one could unpack to far more than the file's size) and
    within the file, and no name is stored twice. (torch compresses the code/ entries, which are
    never read.)"""
    size, seen = path.stat().st_size, set()
    roots = {n.split("/", 1)[0] for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")}
    if len(roots) != 1:
        raise CheckpointError(path, "is not a TorchScript archive (no single <name>/data.pkl in it)")
    root = roots.pop()
    for info in z.infolist():
        if info.filename in seen:
            raise CheckpointError(path, f"the zip holds the entry {info.filename[:80]!r} twice; the file is "
                                        "damaged or crafted")
        seen.add(info.filename)
        if info.filename != f"{root}/data.pkl" and not info.filename.startswith(f"{root}/data/"):
            continue
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(path, f"zip entry {info.filename[:80]!r} is compressed, which torch.jit.save "
                                        "never does for weights (a zip bomb could hide there); refusing")
        if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
            raise CheckpointError(path, f"zip entry {info.filename[:80]!r} claims {info.file_size} bytes, more "
                                        f"than the {size}-byte file holds; the file is damaged or crafted")
    return root


def _flatten(path: Path, obj: _Record) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}

    def walk(record: _Record, prefix: str, depth: int):
        if depth > _MAX_DEPTH:
            raise CheckpointError(path, f"modules nested too deeply under {prefix.rstrip('.')!r}")
        for key, value in record.state.items():
            if not isinstance(key, str):
                continue
            name = prefix + key
            if isinstance(value, torch.Tensor):
                check_tensor(path, name, value.shape)
                out[name] = value
            elif isinstance(value, _Record):
                walk(value, name + ".", depth + 1)

    walk(obj, "", 0)
    return out


def read_torchscript_weights(path) -> dict[str, torch.Tensor]:
    """{dotted name: tensor} of a TorchScript archive's parameters and buffers (CheckpointError
    naming the file when it is not one, is damaged, or its pickle asks for anything else)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            root = _checked_entries(path, z)
            with z.open(f"{root}/data.pkl") as fh:
                obj = _Unpickler(fh, z, root).load()
    except CheckpointError:
        raise
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, f"refusing to load this TorchScript archive: {first_line(e)}; we read "
                                    "only plain tensor data from it and never run its code") from None
    except Exception as e:  # noqa: BLE001 - a damaged archive or pickle
        raise CheckpointError(path, f"TorchScript archive is damaged: {first_line(e)}") from None
    if not isinstance(obj, _Record):
        raise CheckpointError(path, "TorchScript archive holds no module")
    tensors = _flatten(path, obj)
    if not tensors:
        raise CheckpointError(path, "TorchScript archive holds no weights")
    return tensors
