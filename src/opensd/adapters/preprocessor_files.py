"""What the learned preprocessors (Depth Anything V2, the line-art nets, PiDiNet, OpenPose,
controlnet_aux's HED) share about their model files: where a file is found in the models folder, the
check that a state dict fits the network, and the one network kept in memory."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgument
from ..library.models_dir import LAYOUT
from ..one_loaded import OneLoaded


def match_file(folders, name: str) -> Path | None:
    """The file for `name` in the models folder's preprocessor folders, as controlnet_aux names it
    ("depth_anything_v2_vitl.pth", in any subfolder), else one with its stem in another format, else a
    copy with a suffix ("depth_anything_v2_vitl_fp16.safetensors"; fp32 ones first); None if none."""
    files = folders.list("preprocessors") if folders is not None else []
    stem = Path(name).stem.lower()
    exact = [m for m in files if Path(m.name).name.lower() == name.lower()]
    same = [m for m in files if Path(m.name).stem.lower() == stem]
    copies = sorted((m for m in files if Path(m.name).stem.lower().startswith(stem + "_")),
                    key=lambda m: ("fp16" in m.name.lower() or "bf16" in m.name.lower(), m.name))
    for found in (exact, same, copies):
        if found:
            return found[0].path
    return None


def preprocessor_dirs() -> str:
    return " or ".join(f"models/{d}/" for d in LAYOUT["preprocessors"])


def require_file(folders, name: str, label: str, source: str) -> Path:
    """match_file's file for `name`, or an error for `label` naming the file, where to put it and where
    it is published."""
    found = match_file(folders, name)
    if found is None:
        raise InvalidArgument(f"{label}: {name} is not installed: put it in {preprocessor_dirs()} (any "
                              f"subfolder); it is published at {source}")
    return found


def require_file_near(folders, name: str, label: str, source: str, near: Path) -> Path:
    """match_file's file for `name`, else the one of that name next to the file `near`, else an error for
    `label` naming the file, where to put it and where it is published."""
    found = match_file(folders, name) if folders is not None else None
    if found is None and (near.parent / name).is_file():
        found = near.parent / name
    if found is None:
        raise InvalidArgument(f"{label}: {name} is not installed: put it in {preprocessor_dirs()} (any subfolder, "
                              f"or next to {near.name}); it is published at {source}")
    return found


def check_keys(path, sd: Mapping[str, torch.Tensor], want: Mapping[str, tuple], what: str) -> None:
    """A CheckpointError '<what>: missing ..; unexpected ..; wrong shape ..' unless `sd` has exactly the
    keys of `want` (key -> shape) with those shapes."""
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    wrong = [k for k in want if k in sd and tuple(sd[k].shape) != tuple(want[k])]
    if missing or extra or wrong:
        raise CheckpointError(path, f"{what}: " + "; ".join(
            f"{kind} {', '.join(keys[:3])}" for kind, keys in
            (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)) if keys))


def shapes(net: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def torch_device(device) -> torch.device:
    """`device`, or CUDA when there is one."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


_network = OneLoaded()


def cached(key: tuple, make: Callable[[], nn.Module]) -> nn.Module:
    """The network for `key` (file, device, ...), made once; one preprocessor network is kept at a time
    (Depth Anything's ViT-L alone is 1.3 GB), the previous one dropped."""
    return _network.get(key, make)


def load_network(tag: str, path, device, build: Callable[[dict, Path], nn.Module], *key) -> nn.Module:
    """`build(state dict, path)` of the file at `path`, on `device` (None: CUDA when there is one),
    through the one-network cache under (tag, file, *key, device)."""
    from ..checkpoints.files import read_state_dict

    device = torch_device(device)
    return cached((tag, str(Path(path).resolve()), *key, str(device)),
                  lambda: build(read_state_dict(path), path).to(device))
