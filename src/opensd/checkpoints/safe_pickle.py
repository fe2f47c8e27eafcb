"""Load a PyTorch pickle checkpoint (.ckpt/.pt/.pth/.bin, zip or legacy) into a flat ``{name: tensor}`` dict, safely.

Pickles are only ever read through ``torch.load(weights_only=True)``.  A short list of
training-framework classes that real 2022 Stable Diffusion checkpoints carry next to their weights
(pytorch_lightning's ModelCheckpoint and friends) is mapped onto inert placeholder classes, which
take any arguments and do nothing.  Anything else the pickle asks for is refused; we never fall
back to ``weights_only=False``.

The loaded object is then unwrapped (LDM's ``state_dict``, ``model``, ``module`` nesting) and
flattened to dotted tensor names; bookkeeping such as epoch counters is dropped.

Every failure is a :class:`~opensd.errors.CheckpointError` naming the file and the problem.
Deciding *whether* a file is a pickle is :mod:`opensd.checkpoints.files`' job, not this module's.
"""
from __future__ import annotations

import pickle
import re
import threading
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch

from opensd.errors import CheckpointError

from .tensor_checks import check_tensor

__all__ = ["TorchFormat", "first_line", "load_torch", "load_torch_object"]

# The two pickle containers opensd.checkpoints.files can sniff.
TorchFormat = Literal["torch-zip", "torch-legacy"]

# Wrapper keys under which training code nests the real state dict, in order of preference.
_WRAPPER_KEYS = ("state_dict", "model", "module")


class _Inert:
    """Stands in for an allow-listed training-framework class in a pickle.

    Whatever the pickle does with it (call it, instantiate it, set its state) is accepted and
    discarded; no code from the original class ever runs.
    """

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self):
        return f"<inert stand-in for {type(self)._opensd_stands_for}>"


# Classes that 2022-era Lightning checkpoints pickle next to the weights (callbacks' state), and the
# numpy scalar/dtype constructors some of them use for a "best score".  None carries weights.
_INERT_NAMES = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.early_stopping.EarlyStopping",
    "lightning.pytorch.callbacks.lr_monitor.LearningRateMonitor",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
)


def _torch_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", torch.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


# torch >= 2.6 accepts (object, "module.Qualname") pairs in safe_globals; older versions key the
# allow-list on the object's own __module__/__name__, so there we give each stand-in those names.
_TUPLE_SAFE_GLOBALS = _torch_version() >= (2, 6)


def _make_inert_classes() -> dict[str, type]:
    out = {}
    for full in _INERT_NAMES:
        module, _, name = full.rpartition(".")
        cls = type(name, (_Inert,), {"__slots__": (), "_opensd_stands_for": full})
        out[full] = cls
    return out


_INERT_CLASSES = _make_inert_classes()


def _safe_globals_entries(use_tuples: bool | None = None) -> list:
    if use_tuples is None:
        use_tuples = _TUPLE_SAFE_GLOBALS
    if use_tuples:
        return [(cls, full) for full, cls in _INERT_CLASSES.items()]
    named = []
    for full, cls in _INERT_CLASSES.items():
        module, _, name = full.rpartition(".")
        alias = type(name, (cls,), {"__slots__": ()})
        alias.__module__, alias.__qualname__ = module, name
        named.append(alias)
    return named


# safe_globals edits one process-wide set; serialise our loads so one load's exit cannot remove
# entries another load is using.
_LOAD_LOCK = threading.Lock()

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(e: BaseException, limit: int = 300) -> str:
    text = _ANSI.sub("", str(e)).strip() or type(e).__name__
    line = text.splitlines()[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _unpickler_reason(message: str) -> str:
    message = _ANSI.sub("", message)
    marker = "WeightsUnpickler error:"
    if marker in message:
        message = message.rsplit(marker, 1)[1]
        message = message.split("Check the documentation of torch.load")[0]
        lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
        return lines[0] if lines else "unknown reason"
    # Without the marker torch puts its own advice first and the actual complaint last.
    message = message.split("Check the documentation of torch.load")[0]
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown reason"


_REFUSAL_PATTERNS = (
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
    re.compile(r"unrecognized function (.+?)(?: which belongs to|$)"),
    re.compile(r"but got (<class '[^']+'>)"),
)


def _refusal_or_damage(path: Path, e: pickle.UnpicklingError) -> CheckpointError:
    reason = _unpickler_reason(str(e))
    for pattern in _REFUSAL_PATTERNS:
        m = pattern.search(reason)
        if m:
            offender = m.group(1).strip("<>").removeprefix("class ").strip("'")
            return CheckpointError(
                path,
                f"refusing to load: the pickle asks for {offender!r}, which is not plain tensor data. "
                "Loading it could run code hidden in the file, and we refuse to run code from pickles. "
                "Get a .safetensors version of these weights instead.",
            )
    if "Weights only load failed" in str(e) and "Unsupported" in reason:
        return CheckpointError(
            path,
            f"refusing to load: the pickle contains something other than plain tensor data ({reason}); "
            "we refuse to run code from pickles",
        )
    return CheckpointError(path, f"the pickle inside this PyTorch checkpoint is damaged: {reason}")


def _classify_torch_error(path: Path, fmt: TorchFormat, e: BaseException) -> CheckpointError:
    if isinstance(e, CheckpointError):
        return e
    if isinstance(e, pickle.UnpicklingError):
        return _refusal_or_damage(path, e)
    msg = _ANSI.sub("", str(e))
    if "TorchScript" in msg:
        return CheckpointError(path, "is a TorchScript program (a compiled model), not a weight file; we do not load those")
    if "Invalid magic number" in msg:
        return CheckpointError(
            path, "is a Python pickle but not a PyTorch checkpoint (no torch.save magic number); it holds no weights we can read"
        )
    if "PytorchStreamReader" in msg or "zip archive" in msg:
        return CheckpointError(path, f"PyTorch zip checkpoint is damaged or truncated ({first_line(e)})")
    if "storage has wrong byte size" in msg:
        return CheckpointError(path, "is damaged: a tensor's storage claims another size than the data stored for it")
    if "can't allocate memory" in msg or isinstance(e, MemoryError):
        return CheckpointError(path, "ran out of memory while reading it: a tensor in it needs more memory than "
                                     "is free (if the file itself is small, it is damaged or crafted)")
    if isinstance(e, EOFError):
        return CheckpointError(path, "file is truncated: the checkpoint ends before its data does")
    kind = "zip" if fmt == "torch-zip" else "legacy"
    return CheckpointError(path, f"could not read this PyTorch ({kind}) checkpoint: {first_line(e)}")


def _check_zip(path: Path) -> None:
    """Refuse what torch.save never writes before torch sees the archive: compressed records (which
    can expand far past the file's size, a zip bomb, and which memory-mapped loading would read
    as raw weights), records claiming more bytes than the file holds, and a name stored twice (two
    readers may each pick a different one)."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(path, f"PyTorch zip checkpoint is damaged or truncated ({first_line(e)})") from None
    size = path.stat().st_size
    seen: set[str] = set()
    for info in infos:
        name = repr(info.filename[:80])
        if info.filename in seen:
            raise CheckpointError(path, f"the zip holds the entry {name} twice; the file is damaged or crafted")
        seen.add(info.filename)
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(path, f"zip entry {name} is compressed, which torch.save never does, and a "
                                        "compressed entry can unpack to far more memory than the file's size (a "
                                        "zip bomb); refusing. Re-save the weights with torch.save or as safetensors")
        if info.file_size != info.compress_size or info.header_offset + info.file_size > size:
            raise CheckpointError(path, f"zip entry {name} claims {info.file_size} bytes, more than the "
                                        f"{size}-byte file holds; the file is damaged or crafted")


def _torch_load(path: Path, fmt: TorchFormat):
    def attempt(use_mmap: bool):
        with _LOAD_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.serialization.safe_globals(_safe_globals_entries()):
                # torch.load hands any *path* ending in ".safetensors" to the safetensors library;
                # content decides here, so a renamed pickle is given as an open file instead.
                if str(path).endswith(".safetensors"):
                    with open(path, "rb") as fh:
                        return torch.load(fh, map_location="cpu", weights_only=True, mmap=False)
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=use_mmap)

    use_mmap = fmt == "torch-zip"
    if fmt == "torch-zip":
        _check_zip(path)
    try:
        return attempt(use_mmap)
    except pickle.UnpicklingError as e:  # refusal or broken pickle: retrying changes nothing
        raise _classify_torch_error(path, fmt, e) from None
    except Exception as e:
        if not use_mmap:
            raise _classify_torch_error(path, fmt, e) from None
    # mmap can fail where a plain read works (unusual zip layouts); try once without it.
    try:
        return attempt(False)
    except Exception as e:
        raise _classify_torch_error(path, fmt, e) from None


def _has_tensor(obj, depth: int = 0) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if depth > 8:
        return False
    if isinstance(obj, Mapping):
        return any(_has_tensor(v, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v, depth + 1) for v in obj)
    return False


def _unwrap(path: Path, obj):
    """Find the state dict inside a loaded pickle (LDM's ``state_dict``, ``model``, ``module``)."""
    if isinstance(obj, torch.Tensor):
        raise CheckpointError(path, "holds a single bare tensor, not a dict of named weights")
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            path, f"holds a {type(obj).__name__}, not a dict of named weights"
        )
    for _ in range(4):
        wrapper = next(
            (k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping) and _has_tensor(obj[k])), None
        )
        if wrapper is None:
            return obj
        direct = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
        if direct:
            raise CheckpointError(
                path,
                f"holds tensors both at the top level (e.g. {str(direct[0])!r}) and under {wrapper!r}; "
                "cannot tell which are the model weights",
            )
        obj = obj[wrapper]
    return obj


def _flatten(path: Path, obj: Mapping) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}

    def walk(d: Mapping, prefix: str, depth: int):
        if depth > 8:
            raise CheckpointError(path, f"weights nested too deeply under {prefix.rstrip('.')!r}")
        for k, v in d.items():
            if isinstance(k, bool) or not isinstance(k, (str, int)):
                if _has_tensor(v):
                    raise CheckpointError(path, f"a tensor is stored under a non-text key {k!r}")
                continue
            name = f"{prefix}{k}"
            if isinstance(v, torch.Tensor):
                check_tensor(path, name, v.shape)
                if name in out:
                    raise CheckpointError(path, f"two tensors end up with the same name {name!r} when flattened")
                if v.layout != torch.strided:
                    raise CheckpointError(path, f"tensor {name!r} is sparse or otherwise not a plain tensor")
                out[name] = v.detach() if isinstance(v, torch.nn.Parameter) else v
            elif isinstance(v, Mapping):
                walk(v, name + ".", depth + 1)
            elif isinstance(v, (list, tuple)) and _has_tensor(v):
                raise CheckpointError(
                    path, f"{name!r} holds tensors inside a list, which is not a state dict we understand"
                )
            # Anything else (epoch, global_step, strings, inert stand-ins) is bookkeeping: dropped.

    walk(obj, "", 0)
    return out


def load_torch_object(path: Path, fmt: TorchFormat):
    """The object a pickle holds, read as safely as :func:`load_torch` reads it (plain containers,
    tensors and the inert stand-ins only), for files whose layout is not a flat state dict (Fooocus'
    inpaint patch: name -> (quantised diff, min, max); A1111 hypernetworks: a pair of
    state dicts per width). The caller checks its structure."""
    return _torch_load(Path(path), fmt)


def load_torch(path: Path, fmt: TorchFormat, device: torch.device) -> dict[str, torch.Tensor]:
    obj = _torch_load(path, fmt)
    tensors = _flatten(path, _unwrap(path, obj))
    if not tensors:
        raise CheckpointError(path, "contains no tensors")
    if device.type != "cpu":
        try:
            tensors = {k: v.to(device) for k, v in tensors.items()}
        except Exception as e:
            raise CheckpointError(path, f"could not move the weights to {device}: {first_line(e)}") from None
    return tensors

