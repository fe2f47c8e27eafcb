"""DeepDanbooru (KichangKim's resnet_custom_v3 Danbooru tagger) as A1111 runs it: the PyTorch port
``model-resnet_custom_v3.pt`` (AUTOMATIC1111/TorchDeepDanbooru), kept in the models folder's
``torch_deepdanbooru/`` (A1111's place for it).

The file is a pickled dict: convolution weights named ``n_Conv_<i>.weight`` / ``.bias`` (the ONNX
export's names) and the tag list under ``tags``. It is read only through opensd's restricted unpickler
(checkpoints/safe_pickle), which lets plain strings and tensors through and nothing else.

The network is not written out layer by layer here. DeepDanbooru publishes it as a bottleneck ResNet:
a 7x7 stride-2 stem and a 3x3 stride-2 max pool, then stages, each one block with a 1x1 projection
shortcut (its 3x3 convolution and shortcut stride 2, except in the first stage) followed by
`REPEATS[stage]` identity blocks; a block is 1x1 -> 3x3 -> 1x1 at a quarter of the stage's width, added
to the shortcut, then ReLU. The head is a bias-free 1x1 convolution to one channel per tag, averaged over
the picture, then a sigmoid. Padding is TensorFlow's "same" (the odd pixel after), -inf for the pool.
:func:`plan` walks the file's convolutions in index order with that pattern and reads every width from
the weights' shapes; the one thing the shapes must decide is where the export numbered each projection
shortcut (before its block's three convolutions, or after them, as in the fourth stage).

The input (A1111's deepbooru.py): the picture made RGB (an alpha channel dropped, not flattened),
fitted into 512x512 keeping its aspect with the borders filled by stretching its edge pixels (A1111's
"resize and fill" with no upscaler, pipeline/images.py), values /255, shape (1, 512, 512, 3). The scores: one per tag; tags named "rating:..." are the ratings.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..checkpoints.files import sniff_format
from ..checkpoints.safe_pickle import first_line, load_torch_object
from ..errors import CheckpointError, InvalidArgument
from ..one_loaded import OneLoaded, file_stamp
from ..pipeline.images import resize
from .tag_text import GENERAL, RATING, Scores

KIND = "deepbooru"
LABEL = "deepdanbooru"
FILE = "model-resnet_custom_v3.pt"
SIZE = 512
REPEATS = (2, 7, 19, 19, 2, 2)  # identity blocks after each stage's first block (resnet_custom_v3)
SHORTCUT_LAST = (3,)  # stages whose projection the export numbered after its block's three convolutions
TAGS_KEY = "tags"
WHERE = (f"put {FILE} (github.com/AUTOMATIC1111/TorchDeepDanbooru, release v1) in the models folder's "
         "torch_deepdanbooru/")


def conv_name(i: int) -> str:
    return f"n_Conv_{i}"


@dataclass(frozen=True)
class Block:
    body: tuple[int, int, int]  # conv indexes: 1x1 to the inner width, 3x3, 1x1 back out
    shortcut: int | None        # the 1x1 projection's index; None: the input is added as it is
    stride: int


@dataclass(frozen=True)
class Plan:
    blocks: tuple[Block, ...]
    head: int  # index of the last convolution, one output channel per tag
    tags: int


def _shape(shapes: Mapping[str, tuple], i: int, part: str = "weight"):
    s = shapes.get(f"{conv_name(i)}.{part}")
    return tuple(s) if s is not None else None


def _fits(shapes, block: Block, cin: int) -> int | None:
    """The block's output width when the shapes fit it for an input `cin` channels wide, else None."""
    a, b, c = (_shape(shapes, i) for i in block.body)
    if not (a and b and c and len(a) == len(b) == len(c) == 4):
        return None
    mid, out = a[0], c[0]
    ok = a[1:] == (cin, 1, 1) and b == (mid, mid, 3, 3) and c[1:] == (mid, 1, 1)
    if block.shortcut is None:
        ok = ok and out == cin
    else:
        ok = ok and _shape(shapes, block.shortcut) == (out, cin, 1, 1)
    convs = block.body + ((block.shortcut,) if block.shortcut is not None else ())
    return out if ok and all(_shape(shapes, i, "bias") == (_shape(shapes, i)[0],) for i in convs) else None


def plan(shapes: Mapping[str, tuple], repeats: tuple[int, ...] = REPEATS, what: str = "the file") -> Plan:
    """The blocks of a DeepDanbooru state dict (name -> shape) in order, or an InvalidArgument saying
    where the weights leave the resnet_custom_v3 pattern."""
    def wrong(problem: str):
        return InvalidArgument(f"{LABEL}: {what} is not a DeepDanbooru model ({FILE}): {problem}")

    stem = _shape(shapes, 0)
    if stem is None or len(stem) != 4 or stem[1:] != (3, 7, 7) or _shape(shapes, 0, "bias") != stem[:1]:
        found = f"it is {list(stem)}" if stem else "it is missing"
        raise wrong(f"{conv_name(0)}.weight should be a 7x7 convolution of the RGB picture with a bias; {found}")
    width, i, blocks = stem[0], 1, []
    for stage, count in enumerate(repeats):
        stride = 1 if stage == 0 else 2
        first = [Block((i + 1, i + 2, i + 3), i, stride), Block((i, i + 1, i + 2), i + 3, stride)]
        hit = next(((b, w) for b in first if (w := _fits(shapes, b, width)) is not None), None)
        if hit is None:
            raise wrong(f"the convolutions {conv_name(i)}..{i + 3} do not make a bottleneck block with a "
                        f"projection shortcut on a {width}-channel input (stage {stage + 1})")
        blocks.append(hit[0])
        width, i = hit[1], i + 4
        for _ in range(count):
            block = Block((i, i + 1, i + 2), None, 1)
            if _fits(shapes, block, width) is None:
                raise wrong(f"the convolutions {conv_name(i)}..{i + 2} do not make a bottleneck block on a "
                            f"{width}-channel input (stage {stage + 1})")
            blocks.append(block)
            i += 3
    head = _shape(shapes, i)
    if head is None or len(head) != 4 or head[1:] != (width, 1, 1) or _shape(shapes, i, "bias") is not None:
        raise wrong(f"{conv_name(i)}.weight should be the bias-free 1x1 head on {width} channels, one output per "
                    f"tag; it is {list(head) if head else 'missing'}")
    expected = {f"{conv_name(k)}.{p}" for k in range(i) for p in ("weight", "bias")} | {f"{conv_name(i)}.weight"}
    extra = sorted(set(shapes) - expected)
    if extra:
        raise wrong(f"it holds weights the network has no place for ({', '.join(extra[:3])})")
    return Plan(tuple(blocks), i, head[0])


def expected_shapes(stem: int, widths, tags: int, repeats: tuple[int, ...] = REPEATS,
                    shortcut_last: tuple[int, ...] = SHORTCUT_LAST) -> dict[str, tuple]:
    """name -> shape of a DeepDanbooru state dict with these stage widths (the inner width a quarter of
    each), numbered as the export numbers them: for building tiny ones and checking the layout."""
    out = {f"{conv_name(0)}.weight": (stem, 3, 7, 7), f"{conv_name(0)}.bias": (stem,)}
    i, cin = 1, stem

    def add(cout, cin_, k):
        nonlocal i
        out[f"{conv_name(i)}.weight"], out[f"{conv_name(i)}.bias"] = (cout, cin_, k, k), (cout,)
        i += 1

    for stage, (width, count) in enumerate(zip(widths, repeats, strict=True)):
        for block in range(count + 1):
            if block == 0 and stage not in shortcut_last:
                add(width, cin, 1)
            add(width // 4, cin if block == 0 else width, 1)
            add(width // 4, width // 4, 3)
            add(width, width // 4, 1)
            if block == 0 and stage in shortcut_last:
                add(width, cin, 1)
        cin = width
    out[f"{conv_name(i)}.weight"] = (tags, cin, 1, 1)
    return out


def _same(x: torch.Tensor, k: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow's "same" padding for a k x k window at `stride` (the odd pixel after)."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((-(-n // stride) - 1) * stride + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class Network:
    """DeepDanbooru's forward pass over a state dict laid out as `plan` read it."""

    def __init__(self, weights: Mapping[str, torch.Tensor], layout: Plan):
        self.w, self.plan = weights, layout

    def conv(self, x, i: int, stride: int = 1):
        weight = self.w[f"{conv_name(i)}.weight"]
        return F.conv2d(_same(x, weight.shape[-1], stride), weight, self.w.get(f"{conv_name(i)}.bias"), stride)

    def stem(self, x):
        """(N, 3, H, W) -> the first stage's input."""
        x = F.relu(self.conv(x, 0, 2))
        return F.max_pool2d(_same(x, 3, 2, float("-inf")), 3, 2)

    def block(self, x, b: Block):
        a, m, c = b.body
        y = self.conv(F.relu(self.conv(F.relu(self.conv(x, a)), m, b.stride)), c)
        return F.relu(y + (x if b.shortcut is None else self.conv(x, b.shortcut, b.stride)))

    def features(self, x, count: int | None = None):
        """The output of the stem and the first `count` blocks (all when None), for a (N, 3, H, W) input."""
        x = self.stem(x)
        for b in self.plan.blocks[:count]:
            x = self.block(x, b)
        return x

    def __call__(self, nhwc: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) in 0..1 -> (N, tags) scores."""
        x = self.features(nhwc.permute(0, 3, 1, 2))
        return torch.sigmoid(self.conv(x, self.plan.head).mean(dim=(2, 3)))


@dataclass
class Tagger:
    name: str
    network: Network
    names: tuple[str, ...]
    categories: tuple[int, ...]
    device: torch.device


def from_state_dict(obj, name: str, device="cpu", repeats: tuple[int, ...] = REPEATS) -> Tagger:
    """A Tagger from a loaded DeepDanbooru dict (tensors and its `tags`), checked."""
    def wrong(problem: str):
        return InvalidArgument(f"{LABEL}: {name} is not a DeepDanbooru model ({FILE}): {problem}")

    if not isinstance(obj, Mapping):
        raise wrong(f"it holds a {type(obj).__name__}, not a dict of weights and tags")
    tags = obj.get(TAGS_KEY)
    if not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise wrong(f"its tag list (a list of strings under {TAGS_KEY!r}) is missing or not text")
    weights = {k: v for k, v in obj.items() if k != TAGS_KEY}
    bad = [k for k, v in weights.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise wrong(f"{bad[0]!r} is not a named tensor")
    layout = plan({k: tuple(v.shape) for k, v in weights.items()}, repeats, name)
    if layout.tags != len(tags):
        raise wrong(f"its head scores {layout.tags} tags but its tag list names {len(tags)}")
    try:
        dev = torch.device(device)
        weights = {k: v.to(dev, torch.float32) for k, v in weights.items()}
    except (RuntimeError, AssertionError) as e:  # an unknown device, or one this torch build lacks
        raise InvalidArgument(f"{LABEL}: cannot run on device {str(device)!r} ({first_line(e)})") from None
    categories = tuple(RATING if t.startswith("rating:") else GENERAL for t in tags)
    return Tagger(name, Network(weights, layout), tuple(tags), categories, dev)


def installed(folders) -> dict[str, Path]:
    """name -> path of every .pt in the models folder's torch_deepdanbooru/."""
    return {m.name: Path(m.path) for m in (folders.list(KIND) if folders is not None else [])}


def default_path(folders) -> Path | None:
    """The model A1111 would use: model-resnet_custom_v3.pt if installed, else the first by name."""
    models = installed(folders)
    named = [p for n, p in models.items() if n.rsplit("/", 1)[-1].lower() == FILE.lower()]
    return (named or [models[n] for n in sorted(models, key=str.lower)] or [None])[0]


def read(path: Path, device="cpu") -> Tagger:
    """The DeepDanbooru model in `path`, read through the restricted unpickler and checked."""
    path = Path(path)
    try:
        fmt = sniff_format(path)
        if fmt not in ("torch-zip", "torch-legacy"):
            raise CheckpointError(path, f"is a {fmt} file; DeepDanbooru's is a PyTorch pickle holding its tag list")
        obj = load_torch_object(path, fmt)
    except CheckpointError as e:
        raise InvalidArgument(f"{LABEL}: {path.name}: {e.problem}") from None  # the name only: answered over HTTP
    return from_state_dict(obj, path.name, device)


_tagger = OneLoaded()


def load(path: Path, device="cpu") -> Tagger:
    """`read`, kept loaded until another file is asked for (or this one changes)."""
    try:
        key = (file_stamp(path), str(device))
    except OSError as e:
        raise InvalidArgument(f"{LABEL}: cannot read {Path(path).name} ({e.strerror})") from None
    return _tagger.get(key, lambda: read(path, device))


def preprocess(image) -> np.ndarray:
    """The (1, 512, 512, 3) float32 RGB input in 0..1 for a PIL image, as A1111 makes it."""
    if not isinstance(image, Image.Image):
        raise InvalidArgument(f"{LABEL}: expected an image, got {type(image).__name__}")
    square = resize(image.convert("RGB"), SIZE, SIZE, "resize and fill")
    return (np.asarray(square, np.float32) / 255)[None]


def score(tagger: Tagger, image) -> Scores:
    """The model's score for every tag of its list, for one picture."""
    x = torch.from_numpy(preprocess(image)).to(tagger.device)
    with torch.inference_mode():
        probs = tagger.network(x)[0].double().cpu().tolist()
    return Scores(tagger.names, tagger.categories, tuple(probs))
