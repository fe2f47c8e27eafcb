"""Reading an emoji-datasource npm tarball: emoji.json, the 64x64 images, skin tones and captions.

Part of :mod:`opensd.training.emoji_data`, which re-exports every public name here.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .emoji_sources import IMAGE_SIZE, SOURCES, MalformedTarball

MAX_CAPTION_TOKENS = 75  # CLIP context 77 minus BOS/EOS

# Fitzpatrick modifiers as used in emoji.json skin_variations keys.
_TONE_BY_CODE = {
    "1F3FB": "light",
    "1F3FC": "medium-light",
    "1F3FD": "medium",
    "1F3FE": "medium-dark",
    "1F3FF": "dark",
}
_SINGLE_TONES = tuple(_TONE_BY_CODE.values())
# tone_id is the index here: 'none', the 5 single tones, then the 20 ordered pairs of different tones.
TONES: tuple[str, ...] = ("none",) + _SINGLE_TONES + tuple(
    f"{a}/{b}" for a in _SINGLE_TONES for b in _SINGLE_TONES if a != b
)


# -- reading tarballs ---------------------------------------------------------------------------


@dataclass
class _Package:
    style: str
    path: Path
    emoji: list[dict]
    package_json: dict
    license_text: str | None
    readme: str | None
    images: dict[str, bytes]  # file name under img/<style>/64/ -> png bytes

    @property
    def by_unified(self) -> dict[str, dict]:
        return {e["unified"]: e for e in self.emoji}


def _read_package(style: str, path: Path) -> _Package:
    """One streaming pass over an npm tarball: metadata files and every img/<style>/64/*.png."""
    img_prefix = f"img/{style}/{IMAGE_SIZE}/"
    wanted_meta = {"emoji.json", "package.json", "LICENSE", "README.md"}
    meta: dict[str, bytes] = {}
    images: dict[str, bytes] = {}
    try:
        # Decompress ourselves and drain the gzip stream after the tar end marker: that is what checks
        # the gzip CRC and length, so a truncated or bit-flipped download cannot pass silently.
        with gzip.open(path, "rb") as gz, tarfile.open(fileobj=gz, mode="r|") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                parts = m.name.lstrip("./").split("/", 1)  # npm tarballs have one top folder, usually package/
                if len(parts) != 2:
                    continue
                rel = parts[1]
                if rel in wanted_meta or (rel.startswith(img_prefix) and rel.endswith(".png")
                                          and "/" not in rel[len(img_prefix):]):
                    f = tar.extractfile(m)
                    data = f.read() if f is not None else b""
                    if rel in wanted_meta:
                        meta[rel] = data
                    else:
                        images[rel[len(img_prefix):]] = data
            while gz.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise MalformedTarball(f"{path}: not a readable .tgz ({type(e).__name__}: {e})") from e

    if "emoji.json" not in meta:
        raise MalformedTarball(f"{path}: no emoji.json in the package; is this an emoji-datasource tarball?")
    try:
        emoji = json.loads(meta["emoji.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedTarball(f"{path}: emoji.json is not valid JSON: {e}") from e
    if not isinstance(emoji, list) or not emoji:
        raise MalformedTarball(f"{path}: emoji.json is not a non-empty list of emoji")
    for i, e in enumerate(emoji):
        if not isinstance(e, dict) or not all(isinstance(e.get(k), str) and e.get(k) for k in
                                              ("unified", "name", "image")):
            raise MalformedTarball(f"{path}: emoji.json entry {i} lacks unified/name/image: {str(e)[:200]}")
    try:
        package_json = json.loads(meta["package.json"].decode("utf-8")) if "package.json" in meta else {}
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedTarball(f"{path}: package.json is not valid JSON: {e}") from e
    if not images:
        raise MalformedTarball(f"{path}: no images under {img_prefix}; is this the '{style}' package?")
    def text(key: str) -> str | None:
        return meta[key].decode("utf-8", errors="replace") if key in meta else None

    return _Package(style, path, emoji, package_json, text("LICENSE"), text("README.md"), images)


def _readme_facts(readme: str | None, style: str) -> dict:
    """The README's image-source row and licence line for ``style`` (best effort, for the manifest)."""
    out: dict = {"upstream": None, "license_statement": None}
    if not readme:
        return out
    label = {"google": "Google", "twitter": "Twitter"}[style]
    for line in readme.splitlines():
        s = line.strip()
        if out["upstream"] is None and s.startswith(f"| {label}"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if len(cells) >= 2:
                out["upstream"] = re.sub(r"\[([^\]]*)\]\(([^)]*)\)", r"\1 (\2)", cells[1])
        if out["license_statement"] is None and s.startswith("*") and f"{label}" in s and "licen" in s.lower():
            out["license_statement"] = s.lstrip("* ").strip()
    return out


def _to_rgb_on_white(png: bytes) -> tuple[np.ndarray, bool]:
    """(64,64,3) uint8 of ``png`` composited onto white, and whether it had to be resized."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        im.load()
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
    rgb, a = rgba[..., :3], rgba[..., 3:4]
    out = ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    resized = out.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE)
    if resized:
        out = np.asarray(Image.fromarray(out).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS))
    return out, resized


# -- captions -----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    text = text.lower().replace("_", " ").replace("-", " ")
    return re.sub(r"\s+", " ", text).strip()


def tone_label(code: str | None) -> str:
    """'none' / 'medium' / 'light/dark' for a skin_variations key ('' or None = base image)."""
    if not code:
        return "none"
    parts = code.upper().split("-")
    if not all(p in _TONE_BY_CODE for p in parts) or len(parts) > 2:
        raise ValueError(f"unknown skin tone code {code!r}")
    names = [_TONE_BY_CODE[p] for p in parts]
    if len(names) == 2 and names[0] != names[1]:
        return f"{names[0]}/{names[1]}"
    return names[0]


def tone_phrase(tone: str) -> str | None:
    if tone == "none":
        return None
    if "/" in tone:
        a, b = tone.split("/")
        return f"{a} and {b} skin tones"
    return f"{tone} skin tone"


def caption_parts(entry: dict, tone: str, style: str) -> tuple[str, list[str], list[str]]:
    """(name, optional pieces, fixed tail) of a caption.

    Optional pieces are up to 2 short names not repeating the name, then the subcategory; the tail is
    the tone phrase (if any) and the style phrase.
    """
    name = _clean(entry["name"])
    shorts: list[str] = []
    seen = {name}
    for s in entry.get("short_names") or [entry.get("short_name") or ""]:
        c = _clean(s)
        if c and c not in seen:
            seen.add(c)
            shorts.append(c)
        if len(shorts) == 2:
            break
    sub = _clean(entry.get("subcategory") or "")
    optional = shorts + ([sub] if sub and sub not in seen else [])
    tp = tone_phrase(tone)
    tail = ([tp] if tp else []) + [SOURCES[style].style_phrase]
    return name, optional, tail


def make_caption(entry: dict, tone: str, style: str, count_tokens=None) -> str:
    """e.g. 'waving hand sign, wave, hand fingers open, medium skin tone, twemoji style'.

    With ``count_tokens``, optional pieces (subcategory, then short names) are dropped until the
    caption fits in MAX_CAPTION_TOKENS.
    """
    name, optional, tail = caption_parts(entry, tone, style)
    caption = ", ".join([name, *optional, *tail])
    while count_tokens is not None and optional and count_tokens(caption) > MAX_CAPTION_TOKENS:
        optional.pop()
        caption = ", ".join([name, *optional, *tail])
    return caption


def _token_counter():
    # Imported here: it pulls in torch, which loading a split does not need.
    from ..text.tokenizer import CLIPTokenizer

    tok = CLIPTokenizer()
    return lambda text: len(tok.encode(text))
