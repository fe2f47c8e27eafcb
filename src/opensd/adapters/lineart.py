"""Learned line-art extractors, the ones ControlNet 1.1's lineart models were trained on:

* realistic / coarse: the "informative drawings" generator (Chan, Durand & Isola, CVPR 2022): a
  ResNet-style image-to-image net (7x7 stem, two stride-2 downsamplings, residual blocks, two
  transposed-conv upsamplings, 7x7 head, sigmoid), instance norm without affine parameters and
  reflection padding. lllyasviel/Annotators ships it as ``sk_model.pth`` (realistic) and
  ``sk_model2.pth`` (coarse), both with 3 residual blocks.
* anime: a pix2pix U-Net generator (8 down/up levels, 64 base channels, instance norm, LeakyReLU 0.2
  down, ReLU up, tanh out), ``netG.pth``.
* manga (lineart_anime_denoise): the manga line extractor of lineart_manga.py, ``erika.pth``.

The module layout (Sequential indices) follows the published files' key names so they load as they
are; the files are pickles and are read only by the restricted unpickler (checkpoints/files.py).
Both nets draw dark lines on white; the preprocessors return them inverted (white on black).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InvalidArgument
from .preprocessor_files import check_keys, load_network, require_file, shapes

# preprocessor -> the file controlnet_aux (and sd-webui-controlnet) load for it
FILES = {"realistic": "sk_model.pth", "coarse": "sk_model2.pth", "anime": "netG.pth", "manga": "erika.pth"}
SOURCE = "huggingface.co/lllyasviel/Annotators"


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels)  # no affine weights, no running stats: nothing in the files


class _Residual(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        # indices 1 and 5 are the convs, as in the files (conv_block.1 / conv_block.5)
        self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch), nn.ReLU(),
                                        nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm(ch))

    def forward(self, x):
        return x + self.conv_block(x)


class SketchGenerator(nn.Module):
    """The informative-drawings generator: RGB in 0..1 -> one line channel in 0..1 (1 = paper)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1, n_blocks: int = 3, base: int = 64):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_ch, base, 7), _norm(base), nn.ReLU())
        down, ch = [], base
        for _ in range(2):
            down += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), _norm(ch * 2), nn.ReLU()]
            ch *= 2
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*(_Residual(ch) for _ in range(n_blocks)))
        up = []
        for _ in range(2):
            up += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1), _norm(ch // 2), nn.ReLU()]
            ch //= 2
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(base, out_ch, 7), nn.Sigmoid())

    def forward(self, x):
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


class _UnetLevel(nn.Module):
    """One U-Net level: down conv, the inner levels, up conv; its input is concatenated to its output
    (except on the outermost level). `kind`: "outer", "inner" (the bottleneck) or "mid"."""

    def __init__(self, outer: int, inner: int, kind: str, sub: nn.Module | None = None, in_ch: int | None = None):
        super().__init__()
        self.outermost = kind == "outer"
        down = nn.Conv2d(in_ch or outer, inner, 4, stride=2, padding=1)
        if kind == "outer":
            layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif kind == "inner":
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1),
                      _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), sub, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], 1)


class AnimeGenerator(nn.Module):
    """The pix2pix U-Net of lineart_anime: RGB in -1..1 -> one line channel in -1..1 (1 = paper).
    Input sides must be multiples of 2**levels (256 for the published file)."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1, levels: int = 8, base: int = 64):
        super().__init__()
        level = _UnetLevel(base * 8, base * 8, "inner")
        for _ in range(levels - 5):
            level = _UnetLevel(base * 8, base * 8, "mid", level)
        for mult in (4, 2, 1):
            level = _UnetLevel(base * mult, base * mult * 2, "mid", level)
        self.model = _UnetLevel(out_ch, base, "outer", level, in_ch)
        self.levels = levels

    def forward(self, x):
        return self.model(x)


def _build(kind: str) -> nn.Module:
    if kind == "manga":
        from .lineart_manga import MangaLineNet
        return MangaLineNet()
    return AnimeGenerator() if kind == "anime" else SketchGenerator()


def build(sd: dict[str, torch.Tensor], kind: str, path="<state dict>") -> nn.Module:
    """The `kind` net ("realistic", "coarse", "anime", "manga") for a state dict, every key and shape
    checked (batch norms' step counters may be absent: files from before PyTorch 0.4.1 lack them)."""
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    net = _build(kind)
    want = net.state_dict()
    for k in want:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = want[k]
    check_keys(path, sd, shapes(net), f"is not the {kind} line-art model ({FILES[kind]})")
    net.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return net.eval().requires_grad_(False)


def load(path, kind: str, device=None) -> nn.Module:
    """The net in `path` (cached: one per file, kind and device); device None: CUDA if there is one."""
    return load_network("lineart", path, device, lambda sd, p: build(sd, kind, p), kind)


def find(folders, kind: str) -> Path:
    """`kind`'s file in the models folder's preprocessor folders, or an error naming it and where to put it."""
    return require_file(folders, FILES[kind], f"lineart_{kind}", SOURCE)


def _pad_to(arr: np.ndarray, multiple: int) -> np.ndarray:
    h, w = arr.shape[:2]
    return np.pad(arr, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="edge")


def kind_of(net: nn.Module) -> str:
    return {"MangaLineNet": "manga", "AnimeGenerator": "anime"}.get(type(net).__name__, "sketch")


def detect_resolution(kind: str, resolution: int) -> int:
    """The short side controlnet_aux runs `kind` at for a requested `resolution` (the manga net: the next
    multiple of 256)."""
    return -(-resolution // 256) * 256 if kind == "manga" else resolution


@torch.no_grad()
def extract(image: Image.Image, net: nn.Module) -> Image.Image:
    """White-on-black line art of `image` at its own size."""
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    device = next(net.parameters()).device
    if kind_of(net) == "manga":
        import cv2

        grey = cv2.cvtColor(_pad_to(rgb, 64), cv2.COLOR_RGB2GRAY)
        x = torch.from_numpy(grey).float()[None, None].to(device)
        line = net(x)[0, 0, :h, :w].clamp(0, 255).cpu().numpy().astype(np.uint8)
    elif isinstance(net, AnimeGenerator):
        import cv2

        # the U-Net needs sides in multiples of 256: the image is stretched up to them, and back
        side = 2 ** net.levels
        hn, wn = -(-h // side) * side, -(-w // side) * side
        x = torch.from_numpy(cv2.resize(rgb, (wn, hn), interpolation=cv2.INTER_CUBIC)).float()
        x = (x / 127.5 - 1.0).permute(2, 0, 1)[None].to(device)
        line = (net(x)[0, 0] * 127.5 + 127.5).clamp(0, 255).cpu().numpy().astype(np.uint8)
        line = cv2.resize(line, (w, h), interpolation=cv2.INTER_AREA)
    else:
        x = torch.from_numpy(_pad_to(rgb, 64)).float().div(255.0).permute(2, 0, 1)[None].to(device)
        line = (net(x)[0, 0, :h, :w] * 255.0).clamp(0, 255).cpu().numpy().astype(np.uint8)
    return Image.fromarray(255 - line, "L").convert("RGB")


def lineart_model(image: Image.Image, kind: str, weights=None, device=None) -> Image.Image:
    if weights is None:
        raise InvalidArgument(f"lineart_{kind}: no weights file ({FILES[kind]})")
    return extract(image, load(weights, kind, device))
