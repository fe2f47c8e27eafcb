"""A user's own ControlNet training data: (image, control image, caption) triples.

The images and captions are a fine-tuning folder (finetune_data: kohya's layout, `N_name`
repeat folders, `.txt` sidecars, --caption for the rest); the control images (edges, depth,
pose, ... already made) sit in a second folder under the same relative names, as kohya
sd-scripts' --conditioning_data_dir has them (any image extension). Every image is centre-cropped
to resolution x resolution, its control image the same way, and the VAE latents are computed once
and cached in the run folder (recomputed when the files change).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_write
from ..errors import InvalidArgument
from ..pipeline import images as I
from .finetune_data import IMAGE_EXTS, MAX_REPORTED, Dataset, load_dataset


def control_images(ds: Dataset, conditioning: Path) -> list[Path]:
    """The control image of each dataset item; every missing one is reported together."""
    if not conditioning.is_dir():
        raise InvalidArgument(f"conditioning-dir: {conditioning} is not a folder")
    found, missing = [], []
    for it in ds.items:
        rel = it.path.relative_to(ds.root)
        candidates = [conditioning / rel] + [(conditioning / rel).with_suffix(ext) for ext in IMAGE_EXTS]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            missing.append(str(rel))
        found.append(hit)
    if missing:
        shown = ", ".join(missing[:MAX_REPORTED]) + (f" and {len(missing) - MAX_REPORTED} more" if
                                                     len(missing) > MAX_REPORTED else "")
        raise InvalidArgument(f"conditioning-dir: no control image in {conditioning} for {shown} "
                              "(give each image one under the same name)")
    return found


def _control_pixels(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
        raise InvalidArgument(f"conditioning-dir: {path} is not a readable image ({type(e).__name__}: {e})") from None
    return np.asarray(I.resize(rgb, size, size, "crop and resize"), dtype=np.uint8)


def _sources(ds: Dataset, controls: list[Path]) -> list[list]:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in [it.path for it in ds.items] + controls]


@torch.no_grad()
def prepare_pairs(loaded, data: Path, conditioning: Path, resolution: int | None, caption: str,
                  cache: Path, batch: int = 16) -> tuple[dict, list[str]]:
    """({"latents", "hints" (N, H, W, 3) uint8, "order" (indices, repeats counted)}, captions)."""
    res = resolution or loaded.config.resolution
    step = loaded.config.vae.downscale * 8
    if res % step:
        raise InvalidArgument(f"resolution: {res} must be a multiple of {step} for this model")
    ds = load_dataset(data, res, step=step, default_caption=caption, buckets=False)
    controls = control_images(ds, conditioning)
    sources = _sources(ds, controls)
    captions = [it.caption for it in ds.items]
    if cache.is_file():
        cached = torch.load(cache, weights_only=True)
        if cached.get("sources") == sources:
            return cached, captions
    vae = loaded.model.vae
    latents = []
    for i in range(0, len(ds.items), batch):
        px = torch.stack([ds.pixels(j) for j in range(i, min(i + batch, len(ds.items)))])
        mean, _ = vae.encode(px.to(next(vae.parameters()).dtype))
        latents.append(loaded.config.vae.scaled(mean.float()))
    out = {"latents": torch.cat(latents), "sources": sources,
           "hints": torch.from_numpy(np.stack([_control_pixels(p, res) for p in controls])),
           "order": torch.tensor([i for i, it in enumerate(ds.items) for _ in range(it.repeats)])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(cache) as f:
        torch.save(out, f)
    return out, captions
