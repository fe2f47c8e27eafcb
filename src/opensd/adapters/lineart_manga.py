"""The manga line extractor (MangaLineExtraction, Li et al. 2017; lllyasviel/Annotators' ``erika.pth``),
lineart_anime_denoise / controlnet_aux's Manga2Anime_LineArt_Preprocessor: a residual U-Net on the grey
image in 0..255 whose output is the line drawing in 0..255 (255 = paper).

Every conv is pre-activated: batch norm (eps 1e-3, running statistics) -> LeakyReLU 0.2 -> conv. A
residual unit is two such convs plus a shortcut (a 1x1 conv when the width or stride changes). The
encoder's stages (24, 48, 96, 192, 384 channels; 2, 3, 5, 7, 12 units) halve the size in their last
unit (not the first stage); the decoder's stages (192, 96, 48, 24; 7, 5, 3, 2 units) double it in their
first unit (nearest upsampling after its first conv and its shortcut) and add the encoder stage of the
same size through a shortcut; a last 16-channel stage and a 1x1 conv give the one output channel.
Module names follow the published file's keys.
"""
from __future__ import annotations

from torch import nn

ENCODER = ((24, 2), (48, 3), (96, 5), (192, 7), (384, 12))


class _PreConv(nn.Module):
    """BN -> LeakyReLU 0.2 -> conv (same padding); up: nearest x2 after the conv."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, up: bool = False):
        super().__init__()
        layers = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2), nn.Conv2d(cin, cout, k, stride, k // 2)]
        self.model = nn.Sequential(*layers, *([nn.Upsample(scale_factor=2, mode="nearest")] if up else []))

    def forward(self, x):
        return self.model(x)


class _Shortcut(nn.Module):
    """x + y, x through a 1x1 conv (then nearest x2 when `up`) when its width or stride differs."""

    def __init__(self, cin: int, cout: int, stride: int = 1, up: bool = False):
        super().__init__()
        self.model = None
        if cin != cout or stride != 1:
            conv = nn.Conv2d(cin, cout, 1, stride)
            self.model = nn.Sequential(conv, nn.Upsample(scale_factor=2, mode="nearest")) if up else nn.Sequential(conv)

    def forward(self, x, y):
        return y + (x if self.model is None else self.model(x))


class _Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, up: bool = False):
        super().__init__()
        self.conv1 = _PreConv(cin, cout, 3, stride, up)
        self.residual = _PreConv(cout, cout)
        self.shortcut = _Shortcut(cin, cout, stride, up)

    def forward(self, x):
        return self.shortcut(x, self.residual(self.conv1(x)))


class _Stage(nn.Module):
    def __init__(self, cin: int, cout: int, units: int, down: bool = False, up: bool = False):
        super().__init__()
        self.model = nn.Sequential(*(
            _Unit(cin if i == 0 else cout, cout, stride=2 if down and i == units - 1 else 1, up=up and i == 0)
            for i in range(units)))

    def forward(self, x):
        return self.model(x)


class MangaLineNet(nn.Module):
    def __init__(self):
        super().__init__()
        cin = 1
        for i, (width, units) in enumerate(ENCODER):
            setattr(self, f"block{i}", _Stage(cin, width, units, down=i > 0))
            cin = width
        for i, (width, units) in enumerate(reversed(ENCODER[:-1])):
            setattr(self, f"block{5 + i}", _Stage(cin, width, units, up=True))
            setattr(self, f"res{1 + i}", _Shortcut(width, width))
            cin = width
        self.block9 = _Stage(24, 16, 2)
        self.conv15 = _PreConv(16, 1, k=1)

    def forward(self, grey):
        """grey: (B, 1, H, W) in 0..255, sides multiples of 16 -> lines (B, 1, H, W), ~0..255."""
        skips, h = [], grey
        for i in range(5):
            h = getattr(self, f"block{i}")(h)
            skips.append(h)
        for i in range(4):
            h = getattr(self, f"res{1 + i}")(skips[3 - i], getattr(self, f"block{5 + i}")(h))
        return self.conv15(self.block9(h))
