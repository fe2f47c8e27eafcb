"""PiDiNet, Pixel Difference Networks for efficient edge detection (Su et al., ICCV 2021): the soft-edge
net of sd-webui-controlnet's softedge_pidinet / softedge_pidisafe / scribble_pidinet and controlnet_aux's
PiDiNetPreprocessor. lllyasviel/Annotators ships it as ``table5_pidinet.pth`` (the "carv4" layout: 60
base channels, dilation module width 24, spatial attention).

The file's 3x3 depthwise kernels are pixel-difference convolutions (PDC), one kind per layer, repeating
cd / ad / rd / cv:
  cd (central):  sum_i w_i (x_i - x_centre)
  ad (angular):  sum_i w_i (x_i - x_next(i)), neighbours taken clockwise around the centre
  rd (radial):   sum over the 8 directions w_i (x_outer(i) - x_inner(i)) on a 5x5 window
Each is linear in x, so it equals a vanilla convolution with rewritten weights (3x3 for cd/ad, 5x5 for
rd); we rewrite them once at load (`to_vanilla`) and run plain convs.

Network: init conv, 4 stages of residual blocks (depthwise PDC -> ReLU -> 1x1; the first block of stages
2-4 max-pools by 2 and has a 1x1 shortcut, doubling width up to 4C), per stage a dilated module (1x1 then
four 3x3 convs dilated 5/7/9/11, summed), a spatial attention (ReLU, 1x1 to 4, 3x3 to 1, sigmoid gate)
and a 1x1 to one map; the 4 maps are resized (bilinear) to the input and fused by a 1x1 conv; the edge
map is the sigmoid of the fused map. Input: BGR in 0..1. The file is a pickle, read only by the
restricted unpickler (checkpoints/files.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .preprocessor_files import check_keys, load_network, require_file

FILE = "table5_pidinet.pth"
SOURCE = "huggingface.co/lllyasviel/Annotators"
CARV4 = ("cd", "ad", "rd", "cv") * 4  # layer i's difference kind: init conv, then the 15 blocks in order
STAGES = (3, 4, 4, 4)  # blocks per stage (stage 1 follows the init conv, which is layer 0)
# ad: x_i - x_next(i) moves w_i onto the next tap with a minus, so each tap (row-major) loses the weight
# of the one before it clockwise
_AD_NEXT = [3, 0, 1, 6, 4, 2, 7, 8, 5]
# rd: 5x5 taps of the 8 outer ring points and of the inner ones on the same rays (3x3 taps 1..8)
_RD_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
_RD_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def block_names() -> list[str]:
    return [f"block{s}_{b}" for s, n in enumerate(STAGES, 1) for b in range(1, n + 1)]


def to_vanilla(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """A PDC kernel (out, in, 3, 3) of `kind` as the plain convolution kernel that computes the same."""
    if kind == "cv":
        return weight
    o, i = weight.shape[:2]
    flat = weight.reshape(o, i, 9)
    if kind == "cd":  # subtracting sum_i w_i * x_centre: the centre tap loses the kernel's sum
        out = flat.clone()
        out[:, :, 4] -= flat.sum(dim=2)
        return out.reshape(o, i, 3, 3)
    if kind == "ad":
        return (flat - flat[:, :, _AD_NEXT]).reshape(o, i, 3, 3)
    if kind == "rd":  # taps 1..8 give the 8 rays; tap 0 is unused
        out = weight.new_zeros(o, i, 25)
        out[:, :, _RD_OUTER] = flat[:, :, 1:]
        out[:, :, _RD_INNER] = -flat[:, :, 1:]
        return out.reshape(o, i, 5, 5)
    raise ValueError(f"unknown pixel-difference kind {kind!r}")


def _pdc_conv(cin: int, cout: int, kind: str, groups: int = 1) -> nn.Conv2d:
    k = 5 if kind == "rd" else 3
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)


class _Block(nn.Module):
    def __init__(self, kind: str, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(cin, cout, 1)
        self.conv1 = _pdc_conv(cin, cin, kind, groups=cin)
        self.conv2 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        if self.stride > 1:
            x = F.max_pool2d(x, 2, 2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class _Dilated(nn.Module):
    """The compact dilation module: ReLU, 1x1, then the sum of four 3x3 convs dilated 5, 7, 9, 11."""

    def __init__(self, cin: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1)
        for n, d in enumerate((5, 7, 9, 11), 1):
            setattr(self, f"conv2_{n}", nn.Conv2d(width, width, 3, dilation=d, padding=d, bias=False))

    def forward(self, x):
        x = self.conv1(F.relu(x))
        return sum(getattr(self, f"conv2_{n}")(x) for n in range(1, 5))


class _Attention(nn.Module):
    """The compact spatial attention: x gated by sigmoid(3x3(1x1(ReLU x)))."""

    def __init__(self, ch: int, mid: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, mid, 1)
        self.conv2 = nn.Conv2d(mid, 1, 3, padding=1, bias=False)

    def forward(self, x):
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class _Reduce(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, 1, 1)

    def forward(self, x):
        return self.conv(x)


class PiDiNet(nn.Module):
    """PiDiNet with its PDC layers as vanilla convs (load PDC weights through `build`): BGR in 0..1 ->
    edge probability (B, 1, H, W)."""

    def __init__(self, width: int = 60, dil: int = 24, kinds=CARV4):
        super().__init__()
        self.kinds = tuple(kinds)
        self.init_block = _pdc_conv(3, width, self.kinds[0])
        layer, ch, planes = 1, width, []
        for s, n in enumerate(STAGES, 1):
            for b in range(1, n + 1):
                down = s > 1 and b == 1
                cout = min(ch * 2, width * 4) if down else ch
                setattr(self, f"block{s}_{b}", _Block(self.kinds[layer], ch, cout, 2 if down else 1))
                ch, layer = cout, layer + 1
            planes.append(ch)
        self.dilations = nn.ModuleList(_Dilated(p, dil) for p in planes)
        self.attentions = nn.ModuleList(_Attention(dil) for _ in planes)
        self.conv_reduces = nn.ModuleList(_Reduce(dil) for _ in planes)
        self.classifier = nn.Conv2d(len(planes), 1, 1)

    def forward(self, x):
        size, h, maps = x.shape[-2:], self.init_block(x), []
        for s, n in enumerate(STAGES, 1):
            for b in range(1, n + 1):
                h = getattr(self, f"block{s}_{b}")(h)
            i = s - 1
            e = self.conv_reduces[i](self.attentions[i](self.dilations[i](h)))
            maps.append(F.interpolate(e, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(maps, 1)))


def pdc_layers(net: PiDiNet) -> dict[str, str]:
    """State-dict key of each difference-convolution kernel -> its kind (the file stores them 3x3)."""
    names = ["init_block.weight"] + [f"{b}.conv1.weight" for b in block_names()]
    return dict(zip(names, net.kinds))


def file_shapes(net: PiDiNet) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of the published file (no "module." prefix) for `net`'s configuration."""
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for key in pdc_layers(net):
        shapes[key] = shapes[key][:2] + (3, 3)
    return shapes


def build(sd: dict[str, torch.Tensor], path="<state dict>", **config) -> PiDiNet:
    """The net for a state dict in the file's (PDC) form, every key and shape checked; the difference
    kernels are rewritten as vanilla ones."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    net = PiDiNet(**config)
    want = file_shapes(net)
    check_keys(path, sd, want, f"is not the PiDiNet soft-edge model ({FILE})")
    sd = {k: v.float() for k, v in sd.items()}
    for key, kind in pdc_layers(net).items():
        sd[key] = to_vanilla(sd[key], kind)
    net.load_state_dict(sd, strict=True)
    return net.eval().requires_grad_(False)


def load(path, device=None) -> PiDiNet:
    """The net in `path` (cached: one per file and device); device None: CUDA if there is one."""
    return load_network("pidinet", path, device, build)


def find(folders) -> Path:
    """table5_pidinet.pth in the models folder's preprocessor folders, or an error naming it and where."""
    return require_file(folders, FILE, "pidinet", SOURCE)


@torch.no_grad()
def edges(image: Image.Image, net: PiDiNet, crop: bool = True) -> np.ndarray:
    """The edge probability of `image` (float32), run as the originals do: on the image padded (edge
    pixels) to multiples of 64, BGR in 0..1; crop False: the padded map."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    bgr = np.pad(rgb, ((0, -h % 64), (0, -w % 64), (0, 0)), mode="edge")[:, :, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(bgr)).float().div(255.0).permute(2, 0, 1)[None]
    edge = net(x.to(next(net.parameters()).device))[0, 0].float().cpu().numpy()
    return edge[:h, :w] if crop else edge
