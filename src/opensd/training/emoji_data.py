"""Emoji training data: openly licensed emoji art (Noto Emoji, Twemoji) as 64x64 captioned images.

The images are never committed. At build time the pinned npm packages ``emoji-datasource-google``
and ``emoji-datasource-twitter`` are fetched with the ordinary ``npm`` client (``npm pack``), their
sha512 integrity is checked against the value pinned here, and the tarballs are read in one
streaming pass with :mod:`tarfile` (nothing is unpacked to disk).

Each example is one (concept, style, tone): a base emoji (the *concept*, ``concept_id``), drawn in
one style (``google`` = Noto Emoji, ``twitter`` = Twemoji) and one skin tone (``none`` for the
default yellow / toneless image). Images are alpha-composited onto white, uint8 RGB, 64x64.

Cache layout (``cache_dir``)::

    manifest.json       sources, versions, hashes, licences + attribution, counts, build parameters,
                        sha256 of every file below; written last, so it marks a complete build
    concepts.json       one record per concept_id (unified code, name, short names, category ...)
    train.npz           images (N,64,64,3) uint8, concept_id int64, style_id int8, tone_id int8
    train.json          captions, styles, tones, codes (one per example, same order as the npz)
    heldout.npz / heldout.json
    downloads/          the npm tarballs (kept so a rebuild does not need the network)

The held-out split holds ~5% of examples, picked by a salted sha256 of (concept, style, tone), so
membership of an example never depends on which other emoji exist. A held-out pick is returned to
training when it would be the last example of its concept, so every held-out concept is also in
training, in the other style or another tone.

Run ``python -m opensd.training.emoji_data --cache data/emoji`` to build and print counts.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OpenSDError

# -- constants ----------------------------------------------------------------------------------

FORMAT = "opensd-emoji-dataset"
# Bump when anything that changes the cached arrays or captions changes (caption text, split rule,
# image processing): a cache built by another format version is rebuilt.
FORMAT_VERSION = 1

IMAGE_SIZE = 64
DEFAULT_HELD_OUT_FRACTION = 0.05
SPLIT_SALT = "opensd-emoji-split-v1"
SPLITS = ("train", "heldout")
MAX_CAPTION_TOKENS = 75  # CLIP context 77 minus BOS/EOS
NPM_TIMEOUT_S = 900

# Canonical style order: style_id is the index here, whatever subset of sources is built.
STYLES = ("google", "twitter")


@dataclass(frozen=True)
class SourceSpec:
    style: str
    package: str
    version: str
    integrity: str  # npm's sha512 SRI for the pinned version (from `npm view NAME@VERSION dist.integrity`)
    style_phrase: str
    artwork: str
    image_license: str  # SPDX id of the artwork's licence
    license_url: str
    attribution: str


SOURCES: dict[str, SourceSpec] = {
    "google": SourceSpec(
        style="google",
        package="emoji-datasource-google",
        version="16.0.0",
        integrity="sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        style_phrase="noto emoji style",
        artwork="Noto Emoji (https://github.com/googlefonts/noto-emoji)",
        image_license="Apache-2.0",
        license_url="https://www.apache.org/licenses/LICENSE-2.0",
        attribution=(
            "Emoji images from Noto Emoji, Copyright Google LLC, licensed under the Apache License, "
            "Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0); obtained from the npm package "
            "emoji-datasource-google (emoji-data by Cal Henderson, MIT). Modified: alpha composited "
            "onto white, 64x64 RGB."
        ),
    ),
    "twitter": SourceSpec(
        style="twitter",
        package="emoji-datasource-twitter",
        version="16.0.0",
        integrity="sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        style_phrase="twemoji style",
        artwork="Twemoji (https://github.com/jdecked/twemoji)",
        image_license="CC-BY-4.0",
        license_url="https://creativecommons.org/licenses/by/4.0/",
        attribution=(
            "Twemoji graphics, Copyright Twitter, Inc and other contributors, licensed under CC-BY 4.0 "
            "(https://creativecommons.org/licenses/by/4.0/); obtained from the npm package "
            "emoji-datasource-twitter (emoji-data by Cal Henderson, MIT). Modified: alpha composited "
            "onto white, 64x64 RGB."
        ),
    ),
}

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


# -- errors -------------------------------------------------------------------------------------


class EmojiDataError(OpenSDError):
    """The emoji dataset cannot be fetched, read or built."""


class NpmNotFound(EmojiDataError):
    """The npm client is not installed / not on PATH."""


class RegistryError(EmojiDataError):
    """npm could not fetch a package (registry unreachable, version missing, npm failure)."""


class MalformedTarball(EmojiDataError):
    """A tarball is truncated, fails its integrity check, or does not have the emoji-datasource layout."""


class CacheMissing(EmojiDataError):
    """load_split found no complete, matching build in the cache folder."""


# -- public API ---------------------------------------------------------------------------------


@dataclass
class EmojiSplit:
    """One split, arrays in example order. ``images`` is (N, 64, 64, 3) uint8 RGB on white."""

    images: np.ndarray
    captions: list[str]
    concept_ids: np.ndarray  # (N,) int64, index into concepts.json
    styles: list[str]  # 'google' | 'twitter'
    tones: list[str]  # 'none', 'medium', 'light/dark', ...
    codes: list[str]  # unified code point sequence of the exact image, e.g. '1F44B-1F3FD'

    def __len__(self) -> int:
        return len(self.captions)


def build_emoji_dataset(
    cache_dir: Path,
    *,
    sources: Iterable[str] = ("google", "twitter"),
    tarballs: dict[str, Path] | None = None,
    held_out_fraction: float = DEFAULT_HELD_OUT_FRACTION,
    log=None,
) -> Path:
    """Build (or reuse) the dataset in ``cache_dir`` and return ``cache_dir``.

    ``sources``: styles to include, from ``STYLES``. ``tarballs``: local npm tarballs by style, used
    instead of fetching (tests, offline builds); any style not in it is fetched with npm at the pinned
    version. A complete cache built from the same inputs and parameters is left untouched; a missing,
    partial, corrupt or stale one is rebuilt (new files are written to a temp folder and moved in,
    manifest last).
    """
    cache_dir = Path(cache_dir)
    say = log if log is not None else (lambda msg: None)
    styles = _canonical_sources(sources)
    if not (isinstance(held_out_fraction, (int, float)) and 0.0 <= held_out_fraction < 1.0):
        raise EmojiDataError(f"held_out_fraction must be in [0, 1), got {held_out_fraction!r}")
    tarballs = {k: Path(v) for k, v in (tarballs or {}).items()}
    unknown = sorted(set(tarballs) - set(STYLES))
    if unknown:
        raise EmojiDataError(f"tarballs: unknown style(s) {unknown}; expected some of {list(STYLES)}")

    params = _build_params(styles, held_out_fraction)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir):
        # What each source must match in an existing manifest: sha256 of a given tarball, else the
        # pinned npm integrity.
        wanted: dict[str, dict] = {}
        for s in styles:
            if s in tarballs:
                if not tarballs[s].is_file():
                    raise MalformedTarball(f"{tarballs[s]}: tarball for '{s}' not found")
                wanted[s] = {"sha256": _sha256_file(tarballs[s])}
            else:
                wanted[s] = {"integrity": SOURCES[s].integrity}

        if _cache_is_current(cache_dir, params, wanted):
            say(f"{cache_dir}: cache is current, nothing to do")
            return cache_dir

        t0 = time.monotonic()
        paths: dict[str, Path] = {}
        for s in styles:
            paths[s] = tarballs[s] if s in tarballs else _fetch_pinned(s, cache_dir / "downloads", say)
        _build(cache_dir, styles, paths, fetched={s for s in styles if s not in tarballs},
               params=params, say=say)
        say(f"{cache_dir}: built in {time.monotonic() - t0:.1f}s")
    return cache_dir


def load_split(cache_dir: Path, split: str, *, verify: bool = False) -> EmojiSplit:
    """Read one split ('train' or 'heldout') of a built cache.

    Always checks that the manifest is complete and the files have their recorded sizes;
    ``verify=True`` also checks their sha256 (about a second for the full dataset).
    """
    cache_dir = Path(cache_dir)
    if split not in SPLITS:
        raise EmojiDataError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    manifest = _read_manifest(cache_dir)
    if manifest is None:
        raise CacheMissing(
            f"{cache_dir}: no complete emoji dataset here (format {FORMAT} v{FORMAT_VERSION}); build it with "
            f"`python -m opensd.training.emoji_data --cache {cache_dir}`"
        )
    names = (f"{split}.npz", f"{split}.json")
    if not _files_ok(cache_dir, manifest, names, full_hash=verify):
        raise CacheMissing(f"{cache_dir}: {split} files are missing or damaged; rebuild with "
                           f"`python -m opensd.training.emoji_data --cache {cache_dir}`")
    try:
        with np.load(cache_dir / names[0], allow_pickle=False) as z:
            images = z["images"]
            concept_ids = z["concept_id"].astype(np.int64)
        meta = json.loads((cache_dir / names[1]).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, zlib.error) as e:
        raise CacheMissing(f"{cache_dir}: cannot read {split}: {e}; rebuild the dataset") from e
    n = len(meta["captions"])
    if images.shape != (n, IMAGE_SIZE, IMAGE_SIZE, 3) or images.dtype != np.uint8 or len(concept_ids) != n:
        raise CacheMissing(f"{cache_dir}: {split} arrays do not match its captions; rebuild the dataset")
    return EmojiSplit(images=images, captions=meta["captions"], concept_ids=concept_ids,
                      styles=meta["styles"], tones=meta["tones"], codes=meta["codes"])


def load_manifest(cache_dir: Path) -> dict:
    """The manifest of a complete build (raises CacheMissing if there is none)."""
    m = _read_manifest(Path(cache_dir))
    if m is None:
        raise CacheMissing(f"{cache_dir}: no complete emoji dataset here")
    return m


# -- fetching -----------------------------------------------------------------------------------


def _sri_sha512(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode("ascii")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_NETWORK_CODES = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
                  "EHOSTUNREACH", "ERR_SOCKET_TIMEOUT", "network", "proxy")


def _fetch_pinned(style: str, dest: Path, say) -> Path:
    """The pinned tarball for ``style`` under ``dest``, fetched with ``npm pack`` unless already there."""
    spec = SOURCES[style]
    dest = dest.resolve()  # npm runs in a temp cwd: a relative --pack-destination would land elsewhere
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"{spec.package}-{spec.version}.tgz"
    if final.is_file():
        if _sri_sha512(final) == spec.integrity:
            return final
        final.unlink()  # damaged or partial: fetch again

    npm = shutil.which("npm")
    if npm is None:
        raise NpmNotFound(
            f"npm not found on PATH: it is needed to fetch {spec.package}@{spec.version}. Install Node.js/npm, "
            f"or download the tarball yourself and pass it with tarballs={{'{style}': PATH}} "
            f"(CLI: --tarball {style}=PATH)."
        )
    name = f"{spec.package}@{spec.version}"
    say(f"fetching {name} with npm pack ...")
    with tempfile.TemporaryDirectory(dir=dest, prefix=".npm-pack-") as tmp:
        cmd = [npm, "pack", name, "--pack-destination", tmp, "--json", "--ignore-scripts"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                                  check=False)
        except FileNotFoundError as e:
            raise NpmNotFound(f"cannot run npm ({npm}): {e}") from e
        except subprocess.TimeoutExpired as e:
            raise RegistryError(f"`npm pack {name}` did not finish in {NPM_TIMEOUT_S}s; is the npm registry "
                                f"reachable?") from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
            if any(code in tail for code in _NETWORK_CODES):
                raise RegistryError(f"cannot reach the npm registry to fetch {name}:\n{tail}")
            if "E404" in tail or "ETARGET" in tail:
                raise RegistryError(f"{name} is not on the npm registry:\n{tail}")
            raise RegistryError(f"`npm pack {name}` failed (exit {proc.returncode}):\n{tail}")
        tgzs = sorted(Path(tmp).glob("*.tgz"))
        if len(tgzs) != 1:
            raise RegistryError(f"`npm pack {name}` reported success but left {len(tgzs)} tarballs in {tmp}")
        got = _sri_sha512(tgzs[0])
        if got != spec.integrity:
            raise MalformedTarball(
                f"{name}: tarball integrity {got} does not match the pinned {spec.integrity}; "
                f"refusing to use it (registry or npm cache tampering, or a corrupt download: try "
                f"`npm cache verify` and rebuild)"
            )
        os.replace(tgzs[0], final)
    return final


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


# -- split --------------------------------------------------------------------------------------


def _split_score(unified: str, style: str, tone: str) -> float:
    """Stable uniform [0,1) number for one (concept, style, tone)."""
    h = hashlib.sha256(f"{SPLIT_SALT}|{unified}|{style}|{tone}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def assign_split(examples: list[tuple[str, str, str]], fraction: float) -> list[bool]:
    """held_out flag per (concept unified, style, tone): score < fraction, but never all of a concept."""
    scores = [_split_score(*ex) for ex in examples]
    held = [s < fraction for s in scores]
    by_concept: dict[str, list[int]] = {}
    for i, (c, _, _) in enumerate(examples):
        by_concept.setdefault(c, []).append(i)
    for idx in by_concept.values():
        if all(held[i] for i in idx):
            held[max(idx, key=lambda i: (scores[i], i))] = False
    return held


# -- build --------------------------------------------------------------------------------------


def _canonical_sources(sources: Iterable[str]) -> tuple[str, ...]:
    if isinstance(sources, str):
        sources = (sources,)
    sources = list(sources)
    bad = [s for s in sources if s not in STYLES]
    if bad or not sources:
        raise EmojiDataError(f"sources must be a non-empty subset of {list(STYLES)}, got {sources}")
    return tuple(s for s in STYLES if s in sources)


def _build_params(styles: tuple[str, ...], fraction: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "sources": list(styles),
        "image_size": IMAGE_SIZE,
        "background": "white",
        "held_out_fraction": float(fraction),
        "split_salt": SPLIT_SALT,
        "max_caption_tokens": MAX_CAPTION_TOKENS,
        "style_phrases": {s: SOURCES[s].style_phrase for s in styles},
    }


def _iter_examples(concepts: list[dict], pkgs: dict[str, _Package]) -> Iterator[tuple[int, dict, str, str, str, str]]:
    """(concept_id, entry, style, tone code, image file, unified code of the image) in canonical order."""
    index = {style: pkg.by_unified for style, pkg in pkgs.items()}
    for cid, entry in enumerate(concepts):
        for style in pkgs:
            own = index[style].get(entry["unified"])
            if own is None or not own.get(f"has_img_{style}", False):
                continue
            yield cid, entry, style, "", own["image"], own["unified"]
            variations = own.get("skin_variations") or {}
            for code in sorted(variations):
                v = variations[code]
                if isinstance(v, dict) and v.get(f"has_img_{style}", False) and v.get("image"):
                    yield cid, entry, style, code, v["image"], v.get("unified") or f"{own['unified']}-{code}"


def _build(cache_dir: Path, styles: tuple[str, ...], paths: dict[str, Path], fetched: set[str],
           params: dict, say) -> None:
    t0 = time.monotonic()
    pkgs: dict[str, _Package] = {}
    for s in styles:
        say(f"reading {paths[s]} ...")
        pkgs[s] = _read_package(s, paths[s])

    # Concepts: union of base emoji over sources, metadata from the first source that has it.
    merged: dict[str, dict] = {}
    for s in styles:
        for e in pkgs[s].emoji:
            merged.setdefault(e["unified"], e)
    concepts = sorted(merged.values(), key=lambda e: (e.get("sort_order", 1 << 30), e["unified"]))

    count_tokens = _token_counter()
    rows = []  # (cid, unified, style, tone, caption, code, image)
    seen: set[tuple[str, str, str]] = set()
    n_resized = 0
    missing: list[str] = []
    for cid, entry, style, code, image, variant_code in _iter_examples(concepts, pkgs):
        try:
            tone = tone_label(code)
        except ValueError as e:
            raise MalformedTarball(f"{paths[style]}: {entry['unified']}: {e}") from e
        key = (entry["unified"], style, tone)
        if key in seen:  # e.g. both '1F3FB' and '1F3FB-1F3FB' for one emoji: keep the first
            continue
        png = pkgs[style].images.get(image)
        if png is None:
            missing.append(f"img/{style}/{IMAGE_SIZE}/{image}")
            continue
        try:
            rgb, resized = _to_rgb_on_white(png)
        except Exception as e:
            raise MalformedTarball(f"{paths[style]}: img/{style}/{IMAGE_SIZE}/{image} is not a readable "
                                   f"image ({type(e).__name__}: {e})") from e
        n_resized += resized
        seen.add(key)
        rows.append((cid, entry["unified"], style, tone, make_caption(entry, tone, style, count_tokens),
                     variant_code, rgb))
    if missing:
        raise MalformedTarball(f"{len(missing)} image(s) listed in emoji.json are missing from the tarball(s), "
                               f"e.g. {missing[:5]}")
    if not rows:
        raise MalformedTarball("no usable images in the given tarball(s)")

    held = assign_split([(r[1], r[2], r[3]) for r in rows], params["held_out_fraction"])

    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
    try:
        files: dict[str, dict] = {}

        def put_json(name: str, obj) -> None:
            p = tmp / name
            p.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

        counts: dict = {"concepts": len({r[0] for r in rows}), "total": len(rows)}
        for split, flag in (("train", False), ("heldout", True)):
            sel = [r for r, h in zip(rows, held) if h == flag]
            images = (np.stack([r[6] for r in sel]) if sel
                      else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
            np.savez(tmp / f"{split}.npz", images=images,
                     concept_id=np.asarray([r[0] for r in sel], dtype=np.int64),
                     style_id=np.asarray([STYLES.index(r[2]) for r in sel], dtype=np.int8),
                     tone_id=np.asarray([TONES.index(r[3]) for r in sel], dtype=np.int8))
            put_json(f"{split}.json", {"captions": [r[4] for r in sel], "styles": [r[2] for r in sel],
                                       "tones": [r[3] for r in sel], "codes": [r[5] for r in sel]})
            counts[split] = {
                "total": len(sel),
                "by_style": {s: sum(r[2] == s for r in sel) for s in styles},
                "toned": sum(r[3] != "none" for r in sel),
                "concepts": len({r[0] for r in sel}),
            }
        put_json("concepts.json", [
            {"concept_id": cid, "unified": e["unified"], "name": e["name"],
             "short_names": e.get("short_names") or [], "category": e.get("category"),
             "subcategory": e.get("subcategory"), "sort_order": e.get("sort_order")}
            for cid, e in enumerate(concepts)
        ])
        for name in ("train.npz", "train.json", "heldout.npz", "heldout.json", "concepts.json"):
            p = tmp / name
            files[name] = {"bytes": p.stat().st_size, "sha256": _sha256_file(p)}

        src_info = {}
        for s in styles:
            pkg, spec = pkgs[s], SOURCES[s]
            facts = _readme_facts(pkg.readme, s)
            src_info[s] = {
                "package": pkg.package_json.get("name", spec.package),
                "version": pkg.package_json.get("version"),
                "fetched_with_npm": s in fetched,
                "tarball": paths[s].name,
                "tarball_bytes": paths[s].stat().st_size,
                "sha256": _sha256_file(paths[s]),
                "integrity": _sri_sha512(paths[s]),
                "pinned_integrity": spec.integrity if s in fetched else None,
                "images_dir": f"img/{s}/{IMAGE_SIZE}/",
                "images_used": sum(r[2] == s for r in rows),
                "style_phrase": spec.style_phrase,
                "artwork": spec.artwork,
                "upstream_version": facts["upstream"],
                "image_license": spec.image_license,
                "image_license_url": spec.license_url,
                "image_license_statement_in_package": facts["license_statement"],
                "package_license": pkg.package_json.get("license"),
                "package_license_text": pkg.license_text,
                "attribution": spec.attribution,
            }
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "builder": "opensd.training.emoji_data",
            "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - t0, 2),
            "params": params,
            "sources": src_info,
            "licenses": {
                "images": {s: f"{SOURCES[s].artwork}: {SOURCES[s].image_license}" for s in styles},
                "metadata": "emoji-datasource emoji.json (names, short names, categories): MIT, "
                            "Copyright (c) 2013 Cal Henderson",
                "attribution": " ".join(SOURCES[s].attribution for s in styles),
            },
            "styles": list(STYLES),
            "tones": list(TONES),
            "counts": counts,
            "images_resized": n_resized,
            "files": files,
        }
        # Publish: drop the old manifest first so a crash mid-way leaves no manifest claiming the
        # half-replaced files; move the data files in; write the manifest last.
        with contextlib.suppress(FileNotFoundError):
            (cache_dir / "manifest.json").unlink()
        for name in files:
            os.replace(tmp / name, cache_dir / name)
        put_json("manifest.json", manifest)
        _fsync(tmp / "manifest.json")
        os.replace(tmp / "manifest.json", cache_dir / "manifest.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


# -- cache checks -------------------------------------------------------------------------------


def _read_manifest(cache_dir: Path) -> dict | None:
    try:
        m = json.loads((cache_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        return None
    if not isinstance(m.get("files"), dict):
        return None
    return m


def _files_ok(cache_dir: Path, manifest: dict, names: Iterable[str], *, full_hash: bool) -> bool:
    for name in names:
        rec = manifest["files"].get(name)
        p = cache_dir / name
        try:
            if rec is None or p.stat().st_size != rec["bytes"]:
                return False
            if full_hash and _sha256_file(p) != rec["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _cache_is_current(cache_dir: Path, params: dict, wanted: dict[str, dict]) -> bool:
    m = _read_manifest(cache_dir)
    if m is None or m.get("params") != params:
        return False
    srcs = m.get("sources") or {}
    if set(srcs) != set(wanted):
        return False
    for s, want in wanted.items():
        got = srcs.get(s) or {}
        if "sha256" in want and got.get("sha256") != want["sha256"]:
            return False
        if "integrity" in want and (not got.get("fetched_with_npm") or got.get("integrity") != want["integrity"]):
            return False
    return _files_ok(cache_dir, m, m["files"].keys(), full_hash=True)


@contextlib.contextmanager
def _lock(cache_dir: Path):
    """Serialise builders on one cache folder (POSIX flock; no-op elsewhere). Cleans stale temp dirs."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    with open(cache_dir / ".lock", "a+") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            for stale in cache_dir.glob(".build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# -- CLI ----------------------------------------------------------------------------------------


def _summary(cache_dir: Path) -> str:
    m = load_manifest(cache_dir)
    c = m["counts"]
    lines = [f"emoji dataset in {cache_dir} ({c['total']} examples, {c['concepts']} concepts)"]
    for s, info in m["sources"].items():
        lines.append(f"  source {s}: {info['package']}@{info['version']} images {info['image_license']}, "
                     f"package {info['package_license']}")
    for split in SPLITS:
        sc = c[split]
        by = ", ".join(f"{k} {v}" for k, v in sc["by_style"].items())
        lines.append(f"  {split}: {sc['total']} ({by}; {sc['toned']} skin-tone variants; "
                     f"{sc['concepts']} concepts)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opensd.training.emoji_data",
                                 description="Build the cached emoji training dataset (fetches pinned npm packages).")
    ap.add_argument("--cache", type=Path, default=Path("data/emoji"), help="cache folder (default data/emoji)")
    ap.add_argument("--sources", nargs="+", default=list(STYLES), choices=list(STYLES))
    ap.add_argument("--tarball", action="append", default=[], metavar="STYLE=PATH",
                    help="use a local npm tarball for STYLE instead of fetching it")
    ap.add_argument("--held-out-fraction", type=float, default=DEFAULT_HELD_OUT_FRACTION)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    tarballs = {}
    for item in args.tarball:
        style, sep, path = item.partition("=")
        if not sep:
            ap.error(f"--tarball expects STYLE=PATH, got {item!r}")
        tarballs[style] = Path(path)
    log = None if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    try:
        t0 = time.monotonic()
        build_emoji_dataset(args.cache, sources=args.sources, tarballs=tarballs,
                            held_out_fraction=args.held_out_fraction, log=log)
        print(_summary(args.cache))
        print(f"  ({time.monotonic() - t0:.1f}s)")
    except OpenSDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
