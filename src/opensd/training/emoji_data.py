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

This module holds the cache: build, split, manifest, loading and the CLI. It builds on
:mod:`.emoji_npm` (fetching and verifying the tarballs), :mod:`.emoji_package` (reading a
package: emoji.json, images, skin tones, captions) and :mod:`.emoji_sources` (the pinned sources,
styles and error classes), and re-exports their public names; they never import this module.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OpenSDError

# The fetching, package-reading and source/error pieces live in sibling modules; every name that
# used to be defined here is re-exported so `from opensd.training.emoji_data import X` keeps working.
from .emoji_npm import (  # noqa: F401
    NPM_TIMEOUT_S,
    _fetch_pinned,
    _sha256_file,
    _sri_sha512,
)
from .emoji_package import (  # noqa: F401
    MAX_CAPTION_TOKENS,
    TONES,
    _Package,
    _read_package,
    _readme_facts,
    _to_rgb_on_white,
    _token_counter,
    caption_parts,
    make_caption,
    tone_label,
    tone_phrase,
)
from .emoji_sources import (  # noqa: F401
    IMAGE_SIZE,
    SOURCES,
    STYLES,
    CacheMissing,
    EmojiDataError,
    MalformedTarball,
    NpmNotFound,
    RegistryError,
    SourceSpec,
)

# -- constants ----------------------------------------------------------------------------------

FORMAT = "opensd-emoji-dataset"
# Bump when anything that changes the cached arrays or captions changes (caption text, split rule,
# image processing): a cache built by another format version is rebuilt.
FORMAT_VERSION = 1

DEFAULT_HELD_OUT_FRACTION = 0.05
SPLIT_SALT = "opensd-emoji-split-v1"
SPLITS = ("train", "heldout")


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
