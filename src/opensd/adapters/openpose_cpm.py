"""The OpenPose hand and face networks (CMU; Simon et al., "Hand Keypoint Detection in Single Images using
Multiview Bootstrapping", CVPR 2017, and the face detector of the same release), as lllyasviel/Annotators
ships them in ``hand_pose_model.pth`` and ``facenet.pth`` for ControlNet's openpose_hand / _face / _full.

Both are one convolutional pose machine with a single branch per stage: a VGG-19 front (conv1_1 ..
conv5_2 with three 2x2 max pools: stride 8) and conv5_3_CPM make 128 features; stage 1 (conv6_1_CPM 1x1
to 512, conv6_2_CPM 1x1) predicts the heatmaps; stages 2..6 (Mconv1..7_stage{s}: five 7x7 convs of
128, a 1x1 of 128, a 1x1 to the heatmaps) read the previous heatmaps concatenated with the features.
Every conv is followed by a ReLU except each stage's last. The hand net has 22 heatmaps (21 hand
joints and the background), the face net 71 (70 landmarks and the background). The files' keys are
the layer names ("conv1_1.weight", "Mconv7_stage6.bias"), read only by the restricted unpickler
(checkpoints/files.py -> checkpoints/safe_pickle.py) and checked key by key against the layout here.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .openpose import FILE as BODY_FILE
from .openpose import SOURCE, ConvBlock, build_checked
from .openpose import build as build_body
from .preprocessor_files import load_network, require_file, require_file_near

HAND_FILE, FACE_FILE = "hand_pose_model.pth", "facenet.pth"
HAND_MAPS, FACE_MAPS = 22, 71
FEATURES = 128
_FRONT = [("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool", ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool",
          ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool",
          ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512),
          ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3_CPM", 512, FEATURES)]


def _stage_layers(stage: int, maps: int) -> list[tuple[str, int, int, int]]:
    """(name, in, out, kernel) of one stage."""
    if stage == 1:
        return [("conv6_1_CPM", FEATURES, 512, 1), ("conv6_2_CPM", 512, maps, 1)]
    names = [f"Mconv{i}_stage{stage}" for i in range(1, 8)]
    return list(zip(names, [maps + FEATURES] + [128] * 6, [128] * 6 + [maps], [7] * 5 + [1, 1]))


class KeypointNet(nn.Module):
    """Image (B, 3, H, W; BGR / 256 - 0.5) -> the last stage's heatmaps (B, maps, H/8, W/8)."""

    def __init__(self, maps: int):
        super().__init__()
        self.front = ConvBlock(_FRONT, last_linear=False)
        self.stages = nn.ModuleList(ConvBlock(_stage_layers(s, maps), last_linear=True) for s in range(1, 7))

    def forward(self, x):
        features = self.front(x)
        h = self.stages[0](features)
        for stage in self.stages[1:]:
            h = stage(torch.cat([h, features], 1))
        return h

    def file_keys(self) -> dict[str, str]:
        """Our state-dict key -> the file's key (the layer name and weight/bias)."""
        return {k: ".".join(k.split(".")[-2:]) for k in self.state_dict()}


_KINDS = {"hand": (HAND_MAPS, HAND_FILE, "OpenPose hand model"), "face": (FACE_MAPS, FACE_FILE, "OpenPose face model")}


def build(kind: str, sd: dict[str, torch.Tensor], path="<state dict>") -> KeypointNet:
    """The hand or face network (`kind`) for a state dict in the published layout, every key and shape
    checked."""
    maps, file, what = _KINDS[kind]
    return build_checked(lambda: KeypointNet(maps), sd, path, f"is not the {what} ({file})")


class PoseNets(nn.Module):
    """The body network and, when asked for, the hand and face networks (None otherwise)."""

    def __init__(self, body: nn.Module, hand: nn.Module | None, face: nn.Module | None):
        super().__init__()
        self.body, self.hand, self.face = body, hand, face


def load(files: dict, device=None) -> PoseNets:
    """The networks of `files` ({"body": path, "hand": path, "face": path}; hand and face optional),
    kept as the one cached preprocessor network (preprocessor_files.load_network)."""
    from ..checkpoints.files import read_state_dict

    hand, face = files.get("hand"), files.get("face")

    def make(sd, path):
        return PoseNets(build_body(sd, path),
                        build("hand", read_state_dict(hand), hand) if hand else None,
                        build("face", read_state_dict(face), face) if face else None)

    key = [str(Path(p).resolve()) if p else None for p in (hand, face)]
    return load_network("openpose_full", files["body"], device, make, *key)


def find(folders, hand: bool = False, face: bool = False, body=None) -> dict[str, str]:
    """The files an OpenPose run needs: body_pose_model.pth (`body` when given, else the installed one),
    and hand_pose_model.pth / facenet.pth when asked for, found in the models folder's preprocessor
    folders or next to the body file; an InvalidArgument naming a missing one and where to put it."""
    body = Path(body) if body is not None else require_file(folders, BODY_FILE, "openpose", SOURCE)
    files = {"body": str(body)}
    for part, name, wanted in (("hand", HAND_FILE, hand), ("face", FACE_FILE, face)):
        if not wanted:
            continue
        files[part] = str(require_file_near(folders, name, f"openpose {part}s", SOURCE, body))
    return files
