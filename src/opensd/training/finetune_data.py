"""Fine-tuning data: a folder of images with optional caption sidecars, validated before training.

Layout (the kohya sd-scripts convention, which most LoRA datasets follow):

    data/
      img001.png  img001.txt          images at the top level: repeat 1, default caption
      10_sks dog/                     "N_words": every image here counts N times per epoch and is
        a.jpg  a.txt                  captioned "sks dog" unless it has a sidecar
      extra/                          a folder without a number prefix: a plain folder, repeat 1

A caption sidecar has the image's name with `.txt`; its first non-empty line is the caption.
UTF-8, UTF-8 with BOM and UTF-16 with BOM are read; anything else is an error naming the file.

Aspect-ratio buckets: sizes of about resolution^2 pixels whose sides are multiples of `step`
(64 for SD models: VAE downscale 8 times 8); each image goes to the bucket with the nearest aspect
ratio and is scaled to cover it and centre-cropped. A batch draws from one bucket only.

Every problem (empty folder, no images, unreadable or tiny images, undecodable captions) is found
by :func:`load_dataset` and reported together in one :class:`InvalidArgument` before training.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from ..errors import InvalidArgument
from ..pipeline import images as I

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_REPEAT_DIR = re.compile(r"^(\d+)_(.*)$")
MAX_REPORTED = 10


@dataclass
class Item:
    path: Path
    caption: str
    repeats: int
    folder: str              # the dataset sub-folder ("" for the top level), for tag statistics
    size: tuple[int, int]    # original (width, height)
    bucket: tuple[int, int] = (0, 0)


@dataclass
class Dataset:
    root: Path
    items: list[Item]
    resolution: int
    step: int
    flip: bool = False
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_images(self) -> int:
        return len(self.items)

    @property
    def num_repeated(self) -> int:
        """Images per epoch, repeats counted (kohya's ss_num_train_images)."""
        return sum(it.repeats for it in self.items)

    @property
    def buckets(self) -> dict[tuple[int, int], int]:
        """bucket (w, h) -> images per epoch in it."""
        out: Counter = Counter()
        for it in self.items:
            out[it.bucket] += it.repeats
        return dict(sorted(out.items()))

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per folder, how many images carry each comma-separated tag."""
        out: dict[str, Counter] = {}
        for it in self.items:
            tags = [t.strip() for t in it.caption.split(",") if t.strip()]
            out.setdefault(it.folder or self.root.name, Counter()).update(tags)
        return {k: dict(v) for k, v in out.items()}

    def pixels(self, index: int) -> torch.Tensor:
        """Item `index` at its bucket size: (3, h, w) float in [-1, 1] (alpha composited on white)."""
        if index not in self._cache:
            it = self.items[index]
            with Image.open(it.path) as im:
                img = _rgb(im)
            w, h = it.bucket
            self._cache[index] = I.to_tensor(I.resize(img, w, h, "crop and resize"))[0]
        return self._cache[index]

    def batch_plan(self, batch_size: int, seed: int, epoch: int) -> list[list[tuple[int, bool]]]:
        """One epoch's batches as lists of (item index, flipped): each item appears `repeats`
        times, batches never mix buckets, order is a pure function of (seed, epoch) so a resumed
        run sees the same data."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(self.items):
            by_bucket.setdefault(it.bucket, []).extend([i] * it.repeats)
        batches = []
        for key in sorted(by_bucket):
            idx = by_bucket[key]
            order = torch.randperm(len(idx), generator=g).tolist()
            flips = (torch.rand(len(idx), generator=g) < 0.5).tolist()
            shuffled = [(idx[o], self.flip and f) for o, f in zip(order, flips)]
            batches += [shuffled[k:k + batch_size] for k in range(0, len(shuffled), batch_size)]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[o] for o in order]

    def steps_per_epoch(self, batch_size: int) -> int:
        return sum(math.ceil(n / batch_size) for n in self.buckets.values())

    def batches(self, batch_size: int, seed: int, start: int = 0):
        """Yields (step, [(index, flipped), ...]) from step `start` on, forever."""
        per_epoch = self.steps_per_epoch(batch_size)
        step = start
        while True:
            epoch, pos = divmod(step, per_epoch)
            plan = self.batch_plan(batch_size, seed, epoch)
            for b in plan[pos:]:
                yield step, b
                step += 1


# --- buckets ---------------------------------------------------------------------------------


def make_buckets(resolution: int, step: int, min_side: int | None = None,
                 max_side: int | None = None) -> list[tuple[int, int]]:
    """(w, h) sizes with sides multiple of `step` and area at most resolution^2, from the square
    to the most elongated ratio allowed by min_side/max_side (default resolution/2 .. 2*resolution)."""
    area = resolution * resolution
    lo = max(step, (min_side or resolution // 2) // step * step)
    hi = max(lo, (max_side or resolution * 2) // step * step)
    out = set()
    w = lo
    while w <= hi:
        h = min(hi, area // w // step * step)
        if h >= lo:
            out.add((w, h))
            out.add((h, w))
        w += step
    out.add((resolution // step * step,) * 2)
    return sorted(out)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    ratio = math.log(size[0] / size[1])
    # closest aspect ratio; among equals the largest area
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1]))


# --- reading ---------------------------------------------------------------------------------


def read_caption(path: Path) -> str:
    """A sidecar caption's first non-empty line. Raises InvalidArgument naming the file when it is
    not UTF-8 / UTF-8-BOM / UTF-16-with-BOM text."""
    raw = path.read_bytes()
    try:
        if raw.startswith(b"\xef\xbb\xbf"):
            text = raw[3:].decode("utf-8")
        elif raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = raw.decode("utf-16")
        else:
            text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"data: caption file {path} is not UTF-8 text (bad byte 0x{raw[e.start]:02x} "
                              f"at offset {e.start}); save it as UTF-8") from None
    if "\x00" in text:
        raise InvalidArgument(f"data: caption file {path} contains NUL characters (UTF-16 without a BOM?); "
                              "save it as UTF-8")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def _rgb(im: Image.Image) -> Image.Image:
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def _concept_dirs(root: Path) -> list[tuple[Path, int, str | None]]:
    """(folder, repeats, default caption or None) for the top level and each sub-folder."""
    out = [(root, 1, None)]
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        m = _REPEAT_DIR.match(d.name)
        if m and int(m.group(1)) > 0:
            out.append((d, int(m.group(1)), m.group(2).strip() or None))
        else:
            out.append((d, 1, None))
    return out


def _images_in(folder: Path, top: bool) -> list[Path]:
    files = folder.iterdir() if top else folder.rglob("*")
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def load_dataset(root, resolution: int, *, step: int = 64, default_caption: str = "",
                 flip: bool = False, caption_ext: str = ".txt", min_fraction: float = 0.25,
                 buckets: bool = True) -> Dataset:
    """Scan and validate a dataset folder; raises InvalidArgument listing every problem found."""
    root = Path(root)
    if not root.exists():
        raise InvalidArgument(f"data: {root} does not exist")
    if not root.is_dir():
        raise InvalidArgument(f"data: {root} is not a folder")
    if resolution < step or resolution % step:
        raise InvalidArgument(f"resolution: {resolution} must be a positive multiple of {step}")
    if not any(root.iterdir()):
        raise InvalidArgument(f"data: {root} is empty; put training images (png/jpg/webp) in it")
    sizes = make_buckets(resolution, step) if buckets else [(resolution, resolution)]
    min_px = int(resolution * min_fraction)
    items, problems = [], []
    for folder, repeats, concept in _concept_dirs(root):
        rel = "" if folder == root else folder.name
        for path in _images_in(folder, top=folder == root):
            try:
                with Image.open(path) as im:
                    im.load()  # decode fully: truncated files fail here, not mid-training
                    size = ImageOps.exif_transpose(im).size
            except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
                problems.append(f"{path}: not a readable image ({type(e).__name__}: {e})")
                continue
            if size[0] * size[1] < min_px * min_px:
                problems.append(f"{path}: {size[0]}x{size[1]} is too small for resolution {resolution} "
                                f"(need at least about {min_px}x{min_px})")
                continue
            caption = concept if concept is not None else default_caption
            sidecar = path.with_suffix(caption_ext)
            if sidecar.is_file():
                try:
                    caption = read_caption(sidecar) or caption
                except InvalidArgument as e:
                    problems.append(str(e).removeprefix("data: "))
                    continue
            items.append(Item(path, caption, repeats, rel, size, nearest_bucket(size, sizes)))
    if problems:
        shown = "\n  ".join(problems[:MAX_REPORTED])
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise InvalidArgument(f"data: {len(problems)} problem(s) in {root}:\n  {shown}{more}")
    if not items:
        raise InvalidArgument(f"data: no images in {root} (looked for {', '.join(IMAGE_EXTS)} at the top "
                              "level and in its sub-folders)")
    return Dataset(root, items, resolution, step, flip)


def stack(ds: Dataset, batch: list[tuple[int, bool]]) -> tuple[torch.Tensor, list[str]]:
    """A planned batch -> ((B, 3, h, w) pixels, captions)."""
    px = [ds.pixels(i) for i, _ in batch]
    px = [p.flip(-1) if f else p for p, (_, f) in zip(px, batch)]
    return torch.stack(px), [ds.items[i].caption for i, _ in batch]


__all__ = [
    "IMAGE_EXTS",
    "Dataset",
    "Item",
    "load_dataset",
    "make_buckets",
    "nearest_bucket",
    "read_caption",
    "stack",
]
