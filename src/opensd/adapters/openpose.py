"""The CMU OpenPose body network (Cao et al., "Realtime Multi-Person 2D Pose Estimation using Part
Affinity Fields", CVPR 2017), as lllyasviel/Annotators ships it in ``body_pose_model.pth`` for
ControlNet's openpose preprocessor.

A VGG-19 front (conv1_1 .. conv4_2, three 2x2 max pools: stride 8) and two CPM convs make 128 features;
six stages follow, each with two branches: L1 predicts the 38 part affinity field channels (19 limbs,
x and y), L2 the 19 heatmaps (18 joints and the background). Stages 2..6 read their predecessor's two
outputs concatenated with the features (38 + 19 + 128 = 185 channels). Every conv is followed by a
ReLU except each branch's last. The file's keys are the layer names alone ("conv1_1.weight",
"Mconv7_stage6_L2.bias"); here each block is a module of its own, so the state dict is loaded after
naming each key's block. The file is a pickle and is read only by the restricted unpickler
(checkpoints/files.py -> checkpoints/safe_pickle.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .preprocessor_files import check_keys, load_network, require_file

FILE = "body_pose_model.pth"
SOURCE = "huggingface.co/lllyasviel/Annotators"
PAFS, HEATMAPS, FEATURES = 38, 19, 128

# the VGG front: (name, in, out) for 3x3 convs, "pool" for a 2x2 max pool
_FRONT = [("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool", ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
          ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
          ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, FEATURES)]


def _stage_layers(stage: int, branch: int) -> list[tuple[str, int, int, int]]:
    """(name, in, out, kernel) of one branch (1: PAFs, 2: heatmaps) of one stage."""
    out = PAFS if branch == 1 else HEATMAPS
    if stage == 1:
        names = [f"conv5_{i}_CPM_L{branch}" for i in range(1, 6)]
        return list(zip(names, [FEATURES] * 4 + [512], [128, 128, 128, 512, out], [3, 3, 3, 1, 1]))
    names = [f"Mconv{i}_stage{stage}_L{branch}" for i in range(1, 8)]
    ins = [PAFS + HEATMAPS + FEATURES] + [128] * 6
    return list(zip(names, ins, [128] * 6 + [out], [7] * 5 + [1, 1]))


class ConvBlock(nn.Module):
    """Named convs (padding keeps the size), each followed by a ReLU unless it is the block's last
    (`last_linear`), and 2x2 max pools where `layers` says "pool"."""

    def __init__(self, layers, last_linear: bool):
        super().__init__()
        self.order: list[str] = []
        for i, layer in enumerate(layers):
            if layer == "pool":
                self.order.append("pool")
                continue
            name, cin, cout, *k = layer
            k = k[0] if k else 3
            self.add_module(name, nn.Conv2d(cin, cout, k, padding=k // 2))
            self.order.append(name if (last_linear and i == len(layers) - 1) else name + "+relu")

    def forward(self, x):
        for step in self.order:
            if step == "pool":
                x = nn.functional.max_pool2d(x, 2, 2)
                continue
            name = step.removesuffix("+relu")
            x = getattr(self, name)(x)
            if step.endswith("+relu"):
                x = torch.relu(x)
        return x


class BodyPoseNet(nn.Module):
    """Image (B, 3, H, W; BGR / 256 - 0.5) -> (PAFs (B, 38, H/8, W/8), heatmaps (B, 19, H/8, W/8))."""

    def __init__(self):
        super().__init__()
        self.front = ConvBlock(_FRONT, last_linear=False)
        self.stages = nn.ModuleList(
            nn.ModuleList(ConvBlock(_stage_layers(s, b), last_linear=True) for b in (1, 2)) for s in range(1, 7))

    def forward(self, x):
        features = self.front(x)
        h = features
        for paf_branch, heat_branch in self.stages:
            paf, heat = paf_branch(h), heat_branch(h)
            h = torch.cat([paf, heat, features], 1)
        return paf, heat

    def file_keys(self) -> dict[str, str]:
        """Our state-dict key -> the file's key (the layer name and weight/bias)."""
        return {k: ".".join(k.split(".")[-2:]) for k in self.state_dict()}


def build_checked(make, sd: dict[str, torch.Tensor], path, what: str) -> nn.Module:
    """`make()`'s network (one with ``file_keys``) loaded from a state dict in the file's layout, every key
    and shape checked first (a CheckpointError '<path>: <what>: missing ..' otherwise)."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    with torch.device("meta"):
        shapes = make()
    names = shapes.file_keys()
    want = {names[k]: tuple(v.shape) for k, v in shapes.state_dict().items()}
    check_keys(path, sd, want, what)
    net = make()
    net.load_state_dict({ours: sd[theirs].float() for ours, theirs in names.items()}, strict=True)
    return net.eval().requires_grad_(False)


def build(sd: dict[str, torch.Tensor], path="<state dict>") -> BodyPoseNet:
    """The body network for a state dict in the published layout, every key and shape checked."""
    return build_checked(BodyPoseNet, sd, path, f"is not the OpenPose body model ({FILE})")


def load(path, device=None) -> BodyPoseNet:
    """The net in `path` (cached: one per file and device); device None: CUDA if there is one."""
    return load_network("openpose", path, device, build)


def find(folders) -> Path:
    """The installed body_pose_model.pth, or an error naming it and where to put it."""
    return require_file(folders, FILE, "openpose", SOURCE)
