"""Decompress the carried bundle: teacher -> /tmp/teacher.safetensors, dataset -> /tmp/emoji."""
import lzma
import shutil
from pathlib import Path

out = Path("/tmp/emoji")
out.mkdir(parents=True, exist_ok=True)
for name in ("manifest.json", "train.json", "heldout.json", "concepts.json"):
    shutil.copy(Path("gpu/data") / name, out / name)
for src, dst in [("gpu/teacher.safetensors.xz", "/tmp/teacher.safetensors"),
                 ("gpu/data/train.npz.xz", out / "train.npz"), ("gpu/data/heldout.npz.xz", out / "heldout.npz")]:
    with lzma.open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
print("unpacked")
