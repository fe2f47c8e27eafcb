"""The upscalers a user has, by A1111's names: None, Lanczos and Nearest, plus every model in the
models folder's upscaler folders (ESRGAN/, upscale_models/, ...), and A1111's rules for using them
(its Upscaler.upscale for the extras tab, its resize_image for the hires fix's non-latent upscalers).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidArgument
from ..library.models_dir import ModelFile, ModelFolders
from .model_file import load_upscale_model
from .names import CLASSIC, LANCZOS, LATENT_MODES, NEAREST, NONE, known, model_name
from .tiles import check_tiling, tiled_scale

Progress = Callable[[int, int], None] | None
_RESAMPLE = {LANCZOS: Image.LANCZOS, NEAREST: Image.NEAREST}


class Upscalers:
    """`folders`: where the models are (None: the classic ones only). `allow_paths`: a name may also
    be a model file's path (the command line; never the servers, whose names come from clients).
    `tile`/`overlap`: the default tiling of model runs (tiles.py)."""

    def __init__(self, folders: ModelFolders | None, device: str | torch.device = "cpu",
                 allow_paths: bool = False, tile: int = 512, overlap: int = 32, keep: int = 2):
        self.folders = folders
        self.device = torch.device(device)
        self.allow_paths = allow_paths
        self.tile, self.overlap = check_tiling(tile, overlap)
        self._keep = keep
        self._models: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    # --- what there is ------------------------------------------------------------------------

    def model_files(self) -> list[ModelFile]:
        return self.folders.list("upscale_models") if self.folders is not None else []

    def names(self) -> list[str]:
        return list(CLASSIC) + [model_name(m.name) for m in self.model_files()]

    def listing(self) -> list[dict]:
        """A1111's GET /sdapi/v1/upscalers: the classic ones, then each model. A model's scale is
        read from its name as A1111's UI does ("4x-UltraSharp", "RealESRGAN_x2plus"), else 4."""
        out = [{"name": n, "model_name": None, "model_path": None, "model_url": None, "scale": 4} for n in CLASSIC]
        for m in self.model_files():
            out.append({"name": model_name(m.name), "model_name": m.name, "model_path": str(m.path),
                        "model_url": None, "scale": _scale_in_name(model_name(m.name))})
        return out

    def find(self, name: str, field: str = "upscaler") -> str | Path:
        """A classic upscaler's A1111 name, or the model file `name` stands for."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(f"{field}: an upscaler name is required (e.g. {', '.join(CLASSIC)})")
        spelled = known(name)
        if spelled in CLASSIC:
            return spelled
        if spelled in LATENT_MODES:
            raise InvalidArgument(f"{field}: {spelled!r} is a latent upscale mode, which only the hires fix takes")
        files = self.model_files()
        for match in (lambda m: model_name(m.name) == name or m.name == name,
                      lambda m: model_name(m.name).lower() == name.strip().lower()):
            hits = [m.path for m in files if match(m)]
            if hits:
                return hits[0]
        if self.allow_paths and Path(name).is_file():
            return Path(name)
        hint = ""
        if self.folders is None:
            hint = "; give a model file's path, or a models folder to find it in" if self.allow_paths else \
                "; no models folder is set"
        raise InvalidArgument(f"{field}: no upscaler named {name!r} (available: {', '.join(self.names())}){hint}")

    def model(self, path: Path):
        """The loaded model of an upscaler file; the last few stay loaded."""
        path = Path(path)
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        loaded = load_upscale_model(path, self.device)
        with self._lock:
            self._models[key] = loaded
            while len(self._models) > self._keep:
                self._models.popitem(last=False)
        return loaded

    # --- using them ---------------------------------------------------------------------------

    def run_model(self, model, image: Image.Image, tile: int | None = None, overlap: int | None = None,
                  progress: Progress = None) -> Image.Image:
        """One pass of `model` over `image`, tiled: the image times the model's own scale."""
        x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1)[None].to(self.device)
        y = tiled_scale(x, model, model.scale, self.tile if tile is None else tile,
                        self.overlap if overlap is None else overlap, progress)
        pixels = (y[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255.0).round().astype(np.uint8)
        return Image.fromarray(pixels, "RGB")

    def upscale(self, image: Image.Image, scale: float, name: str, field: str = "upscaler", *,
                tile: int | None = None, overlap: int | None = None, progress: Progress = None,
                multiple: int = 8) -> Image.Image:
        """A1111's Upscaler.upscale: the target is the size times `scale` rounded down to a multiple
        of 8 (`multiple`); the upscaler runs (a model at its own scale, up to three times) until the
        image is at least that big, then Lanczos gives the exact size. "None" only resizes."""
        target = self.find(name, field)
        dest = tuple(max(1, int(round(side * scale, 6) // multiple * multiple)) for side in image.size)
        model = self.model(target) if isinstance(target, Path) else None
        for _ in range(3):
            before = image.size
            if model is not None:
                image = self.run_model(model, image, tile, overlap, progress)
            elif target != NONE:
                image = image.resize((int(image.width * scale), int(image.height * scale)), _RESAMPLE[target])
            if image.size == before or (image.width >= dest[0] and image.height >= dest[1]):
                break
        return image if image.size == dest else image.resize(dest, Image.LANCZOS)

    def resize(self, image: Image.Image, width: int, height: int, name: str, field: str = "upscaler",
               progress: Progress = None) -> Image.Image:
        """A1111's resize_image(just resize) with an upscaler, as its hires fix uses it: upscale while
        the target is bigger, then Lanczos to the exact size; "None" is Lanczos alone."""
        if self.find(name, field) != NONE:
            scale = max(width / image.width, height / image.height)
            if scale > 1.0:
                image = self.upscale(image, scale, name, field, progress=progress)
        return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)


def _scale_in_name(name: str) -> int:
    m = re.search(r"(\d)[xX]|[xX](\d)", name)
    return int(m.group(1) or m.group(2)) if m else 4
