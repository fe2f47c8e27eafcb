"""Read a GLIGEN file (ComfyUI's models/gligen, e.g. gligen_sd14_textbox_pruned.safetensors): the
position net under ``position_net.*`` and one gated self-attention layer per UNet transformer under
``<input_blocks|middle_block|output_blocks>.<n>.<...>.fuser.*``, taken in the order the UNet runs its
transformers, as ComfyUI's load_gligen takes them. Head split as ComfyUI's: 8 heads over 768-wide
phrase embeddings (SD 1.x), else 64-wide heads."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.gligen import GatedSelfAttention, Gligen, PositionNet
from .files import read_state_dict

_FUSER = re.compile(r"\b(input_blocks|middle_block|output_blocks)\.(\d+)\..*?fuser\.(.+)$")
_ORDER = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}
POSITION = "position_net."


def _load(module: torch.nn.Module, sd: dict[str, torch.Tensor], path, what: str) -> None:
    want = module.state_dict()
    for key, value in want.items():
        if key not in sd:
            raise CheckpointError(path, f"its {what} lacks {key!r}")
        if tuple(sd[key].shape) != tuple(value.shape):
            raise CheckpointError(path, f"its {what} has {key!r} {tuple(sd[key].shape)}, expected {tuple(value.shape)}")
    module.load_state_dict({k: sd[k].float() for k in want})


def load_gligen(path) -> Gligen:
    path = Path(path)
    sd = read_state_dict(path)
    groups: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if m := _FUSER.search(key):
            groups.setdefault((_ORDER[m.group(1)], int(m.group(2))), {})[m.group(3)] = value
    if POSITION + "null_positive_feature" not in sd or not groups:
        raise CheckpointError(path, "is not a GLIGEN model (no position_net.* and <block>.fuser.* tensors)")
    fusers, key_dim = [], 768
    for where in sorted(groups):
        inner = groups[where]
        if "linear.weight" not in inner or inner["linear.weight"].ndim != 2:
            raise CheckpointError(path, "a GLIGEN fuser lacks its 2-D linear.weight")
        query_dim, key_dim = inner["linear.weight"].shape
        head = query_dim // 8 if key_dim == 768 else 64
        if query_dim % head:
            raise CheckpointError(path, f"a GLIGEN fuser {query_dim} wide does not split into {head}-wide heads")
        fuser = GatedSelfAttention(query_dim, key_dim, query_dim // head, head)
        _load(fuser, inner, path, "gated self-attention")
        fusers.append(fuser)
    position = {k[len(POSITION):]: v for k, v in sd.items() if k.startswith(POSITION)}
    if "linears.4.weight" not in position:
        raise CheckpointError(path, "its position net lacks 'position_net.linears.4.weight'")
    net = PositionNet(position["null_positive_feature"].shape[0], position["linears.4.weight"].shape[0])
    _load(net, position, path, "position net")
    return Gligen(fusers, net, key_dim).eval()
