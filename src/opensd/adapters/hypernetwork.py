"""Hypernetworks as AUTOMATIC1111 trains them (2022) and A1111 / ComfyUI apply them.

A file holds, per attention input width (768, 320, 640, 1280 for SD1), two small MLPs: one
transforms what an attention's ``to_k`` reads, the other what its ``to_v`` reads, each as
``x + mlp(x) * strength``. That is every attention whose input has that width: cross-attention
reads the text context, self-attention its own hidden states (A1111's ``default(context, x)``,
ComfyUI's attn1 and attn2 patches). Several hypernetworks chain, each on the previous output.

The pickle layout (``torch.save`` of a dict): int width -> ``(k_state_dict, v_state_dict)`` whose
keys are ``linear.<i>.weight|bias`` of one ``nn.Sequential`` built from the settings beside them:
``layer_structure`` (sizes as multiples of the width, e.g. [1, 2, 1]), ``activation_func``,
``is_layer_norm``, ``activate_output`` (an activation after the last linear too),
``dropout_structure`` or ``use_dropout`` + ``last_layer_dropout`` (dropouts hold no weights, but
they take places in the numbering), plus ``name``, ``step``, ``sd_checkpoint(_name)``.
Pickles are read only through :func:`opensd.checkpoints.safe_pickle.load_torch_object`. No
safetensors layout is published; we read the natural one: ``"<width>.<0|1>.linear.<i>.weight"``
tensors with the settings as JSON text in the metadata.

Applying is a forward pre-hook on each matching ``to_k`` / ``to_v`` for as long as a ``with``
block runs, so the model itself is never changed and nothing stays behind.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..checkpoints.files import read_metadata, read_state_dict, sniff_format
from ..checkpoints.safe_pickle import load_torch_object
from ..checkpoints.tensor_checks import check_tensor
from ..errors import CheckpointError, InvalidArgument
from ..models.module_patches import removed_after
from ..models.unet import CrossAttention
from ..text.prompt_parser import ExtraNetwork, extract_extra_networks

PROMPT_KIND = "hypernet"
# A1111's own names ("swish" is its name for Hardswish), then ComfyUI's two extras.
_NAMED = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
          "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish}
MAX_LAYERS = 16
MAX_WIDTH = 1 << 16  # widest layer, in features (layers are built on the meta device, checked against the file)
MAX_STRENGTH = 100.0


def activation(name) -> nn.Module:
    """A1111's activation by name: its own table, else any torch.nn activation module that takes no
    arguments, by its class name in lower case ("gelu", "silu", "prelu"), as A1111 also accepts."""
    cls = _NAMED.get(name) if isinstance(name, str) else None
    if cls is None and isinstance(name, str) and name != "multiheadattention":
        cls = next((c for n, c in vars(nn.modules.activation).items() if n.lower() == name and isinstance(c, type)
                    and issubclass(c, nn.Module) and c.__module__ == nn.modules.activation.__name__), None)
    if cls is not None:
        try:
            return cls()
        except TypeError:  # needs arguments a file cannot give (Threshold)
            pass
    raise ValueError(f"unsupported activation_func {name!r} (supported: {', '.join(_NAMED)}, "
                     "or a torch.nn activation without arguments)")


class HypernetMLP(nn.Module):
    """One of a width's two transforms: ``x + linear(x) * strength``, in float32 (as A1111 runs it)."""

    def __init__(self, dim: int, layer_structure: Sequence[float], activation_func, layer_norm: bool,
                 activate_output: bool, dropout_structure: Sequence[float]):
        super().__init__()
        layers: list[nn.Module] = []
        last = len(layer_structure) - 2
        for i in range(last + 1):
            width_in, width_out = int(dim * layer_structure[i]), int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(width_in, width_out))
            if activation_func not in (None, "linear") and (i < last or activate_output):
                layers.append(activation(activation_func))
            if layer_norm:
                layers.append(nn.LayerNorm(width_out))
            if dropout_structure[i + 1] > 0:
                layers.append(nn.Identity())  # a dropout: nothing at inference, but it keeps the numbering
        self.linear = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        if self.linear[0].weight.device != x.device:  # follows the network (offloading moves it per call)
            self.to(x.device)
        x32 = x.float()
        return (x32 + self.linear(x32) * strength).to(x.dtype)


@dataclass
class Hypernetwork:
    """A hypernetwork file, read: its MLP pairs per input width and the settings it was trained with."""
    path: Path
    layers: dict[int, tuple[HypernetMLP, HypernetMLP]]
    settings: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.stem


# --- reading ---------------------------------------------------------------------------------

def _dropout_structure(path: Path, raw: Mapping, n: int) -> list[float]:
    """A1111's rule: the file's dropout_structure, else from use_dropout / last_layer_dropout
    (0.3 after each hidden layer, the last hidden one only with last_layer_dropout)."""
    given = raw.get("dropout_structure")
    if given is not None:
        if not isinstance(given, (list, tuple)) or len(given) != n or \
                not all(isinstance(p, (int, float)) and 0 <= p < 1 for p in given):
            raise CheckpointError(path, f"hypernetwork dropout_structure {given!r} is not {n} numbers in [0, 1)")
        return [float(p) for p in given]
    if not raw.get("use_dropout", False):
        return [0.0] * n
    return [0.0] + [0.3] * (n - 3) + [0.3 if raw.get("last_layer_dropout", False) else 0.0, 0.0]


def _layer_structure(path: Path, raw: Mapping) -> list[float]:
    ls = raw.get("layer_structure") or [1, 2, 1]
    ok = isinstance(ls, (list, tuple)) and 2 <= len(ls) <= MAX_LAYERS + 1 and \
        all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 64 for x in ls)
    if not ok or ls[0] != 1 or ls[-1] != 1:
        raise CheckpointError(path, f"hypernetwork layer_structure {ls!r} is not a list of sizes that starts "
                                    "and ends with 1 (e.g. [1, 2, 1])")
    return [float(x) for x in ls]


def _width(key) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    return int(key) if isinstance(key, str) and key.isdigit() else None


_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


def _mlp(path: Path, dim: int, which: str, sd, raw: Mapping, layer_structure, dropouts) -> HypernetMLP:
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(path, f"hypernetwork width {dim}: the {which} part is not a dict of tensors")
    sd = {_OLD_KEYS.get(k, k): v for k, v in sd.items()}  # the first hypernetworks' two-layer names
    for k, v in sd.items():
        check_tensor(path, f"{dim}.{which}.{k}", v.shape)
    try:
        with torch.device("meta"):  # built from the file's settings: nothing allocated until checked
            mlp = HypernetMLP(dim, layer_structure, raw.get("activation_func"), bool(raw.get("is_layer_norm")),
                              bool(raw.get("activate_output", True)), dropouts)
        mlp.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    except (ValueError, RuntimeError) as e:
        detail = str(e).strip().splitlines()
        raise CheckpointError(path, f"hypernetwork width {dim} ({which}): the weights do not fit its settings "
                                    f"(layer_structure {layer_structure}): {detail[-1 if len(detail) > 1 else 0]}"
                                    ) from None
    return mlp.eval().requires_grad_(False)


def _from_safetensors(path: Path) -> dict:
    """The safetensors layout as the pickle's: {width: (k, v), setting: value}."""
    raw: dict = {}
    for key, value in read_metadata(path).items():
        try:
            raw[key] = json.loads(value)
        except ValueError:
            raw[key] = value
    for name, t in read_state_dict(path).items():
        width, part, rest = (name.split(".", 2) + ["", ""])[:3]
        if _width(width) is None or part not in ("0", "1") or not rest:
            raise CheckpointError(path, f"tensor {name!r} is not '<width>.<0|1>.<layer>' of a hypernetwork")
        raw.setdefault(int(width), ({}, {}))[int(part)][rest] = t
    return raw


def read_hypernetwork(path) -> Hypernetwork:
    """Read an A1111 hypernetwork (.pt pickle, restricted loader only; or the safetensors layout)."""
    path = Path(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        raw = _from_safetensors(path)
    elif fmt in ("torch-zip", "torch-legacy"):
        if path.suffix.lower() == ".safetensors":
            raise CheckpointError(path, "named .safetensors but its content is a pickle; refusing to unpickle a "
                                        "disguised file")
        raw = load_torch_object(path, fmt)
    else:
        raise CheckpointError(path, f"is a {fmt} file, not a hypernetwork (.pt)")
    if not isinstance(raw, Mapping):
        raise CheckpointError(path, f"holds a {type(raw).__name__}, not an A1111 hypernetwork's dict")
    layer_structure = _layer_structure(path, raw)
    if max(layer_structure) * max((_width(k) or 0 for k in raw), default=0) > MAX_WIDTH:
        raise CheckpointError(path, f"hypernetwork layers wider than {MAX_WIDTH} features; the file is damaged "
                                    "or crafted")
    try:
        activation(raw.get("activation_func") or "linear")
    except ValueError as e:
        raise CheckpointError(path, f"hypernetwork: {e}") from None
    dropouts = _dropout_structure(path, raw, len(layer_structure))
    layers = {}
    for key, pair in raw.items():
        dim = _width(key)
        if dim is None:
            continue
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not 0 < dim <= MAX_WIDTH:
            raise CheckpointError(path, f"hypernetwork width {key!r}: not a (k, v) pair of state dicts")
        layers[dim] = tuple(_mlp(path, dim, which, sd, raw, layer_structure, dropouts)
                            for which, sd in zip(("k", "v"), pair))
    if not layers:
        if any(isinstance(v, torch.Tensor) for v in raw.values()) or "state_dict" in raw:
            raise CheckpointError(path, "is a model checkpoint or LoRA, not a hypernetwork (no per-width k/v pairs)")
        raise CheckpointError(path, "is not a hypernetwork: it has no per-width k/v layers")
    settings = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool, list))
                and not isinstance(v, torch.Tensor)}
    return Hypernetwork(path, layers, settings)


# --- applying --------------------------------------------------------------------------------

def _check_strength(strength) -> float:
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or abs(strength) > MAX_STRENGTH:
        raise InvalidArgument(f"hypernetwork strength: {strength!r} is not a number in "
                              f"[-{MAX_STRENGTH:g}, {MAX_STRENGTH:g}]")
    return float(strength)


def hooked_projections(network: nn.Module, nets: Sequence[tuple[Hypernetwork, float]]) -> list:
    """(projection, [(mlp, strength), ...]) for every attention to_k / to_v of `network` that some
    hypernetwork of `nets` (with a non-zero strength) has a width for, in chain order."""
    out = []
    for attn in (m for m in network.modules() if isinstance(m, CrossAttention)):
        for proj, part in ((attn.to_k, 0), (attn.to_v, 1)):
            chain = [(hn.layers[proj.in_features][part], s) for hn, s in nets
                     if s != 0 and proj.in_features in hn.layers]
            if chain:
                out.append((proj, chain))
    return out


def _transform(chain):
    def hook(module, args):
        x = args[0]
        for mlp, strength in chain:
            x = mlp(x, strength)
        return (x, *args[1:])
    return hook


@contextmanager
def hypernetworks_applied(network: nn.Module, nets: Sequence[tuple[Hypernetwork, float]]):
    """While the block runs, `network`'s attention keys and values read their inputs through
    `nets` ((hypernetwork, strength) pairs, applied in order); afterwards the network is as before.
    A set none of whose widths fits any attention is refused (it was made for another model)."""
    nets = [(hn, _check_strength(s)) for hn, s in nets]
    if not nets:
        yield
        return
    hooked = hooked_projections(network, nets)
    if not hooked and any(s != 0 for _, s in nets):
        widths = sorted({m.to_k.in_features for m in network.modules() if isinstance(m, CrossAttention)})
        names = ", ".join(f"{hn.name} ({', '.join(map(str, sorted(hn.layers)))})" for hn, _ in nets)
        raise InvalidArgument(f"hypernetwork: {names} has no layers for this model's attention widths "
                              f"({', '.join(map(str, widths))}); it was made for another model")
    with removed_after([proj.register_forward_pre_hook(_transform(chain)) for proj, chain in hooked]):
        yield


class HypernetCache:
    """Read hypernetwork files, kept while their size and modification time stay the same."""

    def __init__(self):
        self._files: dict[str, tuple[tuple, Hypernetwork]] = {}

    def get(self, path) -> Hypernetwork:
        path = Path(path)
        try:
            st = os.stat(path)
        except OSError as e:
            raise CheckpointError(path, f"cannot read hypernetwork file: {e.strerror or e}") from None
        key, stamp = str(path.resolve()), (st.st_mtime_ns, st.st_size)
        hit = self._files.get(key)
        if hit is None or hit[0] != stamp:
            hit = (stamp, read_hypernetwork(path))
            self._files[key] = hit
        return hit[1]


# --- prompts and flags -----------------------------------------------------------------------

def prompt_hypernet_tags(prompt: str) -> list[ExtraNetwork]:
    """The prompt's ``<hypernet:name[:multiplier]>`` tags, in order."""
    return [n for n in extract_extra_networks(prompt)[1] if n.kind == PROMPT_KIND]


def tag_strength(tag: ExtraNetwork) -> float:
    """A1111's rule: the first item after the name is the multiplier, 1 when absent."""
    try:
        value = float(tag.args[0]) if tag.args else 1.0
    except ValueError:
        raise InvalidArgument(f"prompt: <hypernet:{tag.name}:{':'.join(tag.args)}> has a multiplier that is "
                              "not a number") from None
    return _check_strength(value)


def parse_hypernet_arg(text: str) -> tuple[str, float]:
    """Command-line form ``NAME_OR_PATH[:STRENGTH]`` (the strength taken from the right, so a
    Windows path's drive colon stays in the name)."""
    name, sep, last = text.rpartition(":")
    try:
        strength = float(last) if sep else None
    except ValueError:
        strength = None
    if strength is None:
        name, strength = text, 1.0
    if not name:
        raise InvalidArgument(f"hypernet: {text!r} names no hypernetwork")
    return name, _check_strength(strength)
