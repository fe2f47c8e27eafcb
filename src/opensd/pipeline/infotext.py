"""A1111-style generation parameters ("infotext") and saving PNGs that carry them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .. import __version__

# Our sampler ids -> the names A1111 writes, so its readers recognise them.
SAMPLER_LABELS = {"euler": "Euler"}


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def infotext(prompt: str, negative_prompt: str, **params) -> str:
    """`prompt`, an optional `Negative prompt:` line, then `Key: value` pairs in A1111's order."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{k}: {_fmt(v)}" for k, v in params.items() if v is not None))
    return "\n".join(lines)


def save_png(image: Image.Image, path: Path, *, prompt: str, negative_prompt: str, steps: int,
             sampler: str, cfg: float, seed: int, model: str) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written image."""
    text = infotext(prompt, negative_prompt, **{
        "Steps": steps, "Sampler": SAMPLER_LABELS.get(sampler, sampler), "CFG scale": cfg, "Seed": seed,
        "Size": f"{image.width}x{image.height}", "Model": model, "Version": f"opensd {__version__}"})
    info = PngInfo()
    info.add_text("parameters", text)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
