"""Emoji dataset builder on tiny fixture tarballs in the real emoji-datasource npm layout (no network)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from opensd.errors import OpenSDError
from opensd.training import emoji_data as ed
from opensd.training.emoji_data import (
    CacheMissing,
    MalformedTarball,
    NpmNotFound,
    RegistryError,
    build_emoji_dataset,
    load_manifest,
    load_split,
)

TONE_CODES = ["1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"]


def _entry(unified, name, shorts, sub, order, *, google=True, twitter=True, skins=()):
    e = {
        "name": name, "unified": unified, "non_qualified": None, "image": f"{unified.lower()}.png",
        "sheet_x": 0, "sheet_y": 0, "short_name": shorts[0], "short_names": list(shorts),
        "text": None, "texts": None, "category": "Test", "subcategory": sub, "sort_order": order,
        "added_in": "1.0", "has_img_apple": True, "has_img_google": google, "has_img_twitter": twitter,
        "has_img_facebook": False,
    }
    if skins:
        e["skin_variations"] = {
            code: {"unified": f"{unified}-{code}", "non_qualified": None, "image": f"{unified}-{code}".lower() + ".png",
                   "sheet_x": 0, "sheet_y": 0, "added_in": "2.0", "has_img_apple": True,
                   "has_img_google": google, "has_img_twitter": twitter, "has_img_facebook": False}
            for code in skins
        }
    return e


EMOJI = [
    # sort_order deliberately not in list order: concept ids follow sort_order.
    _entry("1F603", "SMILING FACE WITH OPEN MOUTH", ["smiley"], "face-smiling", 2),
    _entry("1F600", "GRINNING FACE", ["grinning"], "face-smiling", 1),
    _entry("1F44B", "WAVING HAND SIGN", ["wave"], "hand-fingers-open", 3, skins=TONE_CODES),
    _entry("1F91D", "HANDSHAKE", ["handshake"], "hands", 4, skins=["1F3FB", "1F3FB-1F3FF"]),
    _entry("1F431", "CAT FACE", ["cat"], "animal-mammal", 5),
    _entry("1F680", "ROCKET", ["rocket"], "transport-air", 6),
    _entry("1F1FA-1F1F8", "United States Flag", ["us", "flag-us"], "country-flag", 7),
    _entry("1F9EA", "TEST TUBE", ["test_tube"], "science", 8, twitter=False),  # no Twemoji image
    _entry("1F4A9", "PILE OF POO", ["hankey", "poop", "shit"], "face-costume", 9),
]
N_EXAMPLES = {"google": 9 + 5 + 2, "twitter": 8 + 5 + 2}
BIG_IMAGE = ("google", "1f680.png")  # stored at 128x128: the builder must resize it


def _color(style: str, image: str) -> tuple[int, int, int]:
    d = hashlib.sha256(f"{style}/{image}".encode()).digest()
    return d[0], d[1], d[2]


def _png(style: str, image: str) -> bytes:
    """Left half opaque colour (rows 0-47) / half-alpha black (rows 48-63), right half transparent.

    Google images are RGBA, Twemoji ones palette images with tRNS, like the real packages.
    """
    color = _color(style, image)
    if style == "google":
        a = np.zeros((64, 64, 4), np.uint8)
        a[:48, :32] = (*color, 255)
        a[48:, :32] = (0, 0, 0, 128)
        a[:, 32:] = (7, 200, 9, 0)  # colour under zero alpha must not leak through
        im = Image.fromarray(a, "RGBA")
        if (style, image) == BIG_IMAGE:
            im = im.resize((128, 128), Image.Resampling.NEAREST)
        kw = {}
    else:
        idx = np.zeros((64, 64), np.uint8)
        idx[:48, :32] = 1
        idx[48:, :32] = 2
        im = Image.fromarray(idx, "P")
        im.putpalette([9, 9, 9, *color, 0, 0, 0] + [0] * (253 * 3))
        kw = {"transparency": bytes([0, 255, 128])}
    buf = io.BytesIO()
    im.save(buf, format="PNG", **kw)
    return buf.getvalue()


def expected_pixels(style: str, image: str) -> np.ndarray:
    out = np.full((64, 64, 3), 255, np.uint8)
    out[:48, :32] = _color(style, image)
    out[48:, :32] = 127  # 0 * 128/255 + 255 * 127/255 = 127
    return out


def _images_for(style: str, emoji: list[dict]) -> list[str]:
    names = []
    for e in emoji:
        if e[f"has_img_{style}"]:
            names.append(e["image"])
        for v in (e.get("skin_variations") or {}).values():
            if v[f"has_img_{style}"]:
                names.append(v["image"])
    return names


def make_tarball(path: Path, style: str, *, emoji=EMOJI, drop_images=(), extra_files=None,
                 image_style: str | None = None, omit=()) -> Path:
    """An npm tarball like `npm pack emoji-datasource-<style>` produces, with tiny content."""
    image_style = image_style or style
    files: dict[str, bytes] = {
        "package/package.json": json.dumps({"name": f"emoji-datasource-{style}", "version": "16.0.0",
                                            "license": "MIT"}).encode(),
        "package/LICENSE": b"The MIT License (MIT)\n\nCopyright (c) 2013 Cal Henderson\n",
        "package/README.md": (
            b"| Image Set | Source Version | Supported Emoji | Missing Images |\n| --- | --- | --- | --- |\n"
            b"| Google    | [Noto Emoji](https://github.com/googlefonts/noto-emoji), v2.048 | Emoji 16.0 | 0 |\n"
            b"| Twitter   | [Twemoji (fork)](https://github.com/jdecked/twemoji), v16.0.1 | Emoji 16.0 | 0 |\n\n"
            b"* Android/Google/Noto images, are available under the [Apache License 2.0](x).\n"
            b"* Twitter images are available under the [Creative Commons Attribution 4.0 license](y).\n"
        ),
        "package/emoji.json": json.dumps(emoji).encode(),
        f"package/img/{image_style}/sheets/64.png": b"not read by the builder",
    }
    for name in _images_for(style, emoji):
        if name not in drop_images:
            files[f"package/img/{image_style}/64/{name}"] = _png(style, name)
    files.update(extra_files or {})
    for k in omit:
        files.pop(k)
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def tarballs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tgz")
    return {s: make_tarball(d / f"emoji-datasource-{s}-16.0.0.tgz", s) for s in ("google", "twitter")}


@pytest.fixture(scope="module")
def built(tarballs, tmp_path_factory) -> Path:
    """Everything in train (fraction 0) for content checks."""
    return build_emoji_dataset(tmp_path_factory.mktemp("all"), tarballs=tarballs, held_out_fraction=0.0)


def _examples(cache: Path) -> dict[tuple[str, str], tuple[str, np.ndarray, int, str]]:
    """(style, code) -> (caption, image, concept_id, tone) over both splits."""
    out = {}
    for split in ("train", "heldout"):
        s = load_split(cache, split)
        for i in range(len(s)):
            key = (s.styles[i], s.codes[i])
            assert key not in out, f"duplicate example {key}"
            out[key] = (s.captions[i], s.images[i], int(s.concept_ids[i]), s.tones[i])
    return out


# -- content ------------------------------------------------------------------------------------


def test_captions(built):
    ex = _examples(built)
    cap = {k: v[0] for k, v in ex.items()}
    assert cap[("google", "1F600")] == "grinning face, grinning, face smiling, noto emoji style"
    assert cap[("twitter", "1F603")] == "smiling face with open mouth, smiley, face smiling, twemoji style"
    assert cap[("twitter", "1F44B-1F3FD")] == "waving hand sign, wave, hand fingers open, medium skin tone, twemoji style"
    assert cap[("google", "1F44B-1F3FC")] == (
        "waving hand sign, wave, hand fingers open, medium-light skin tone, noto emoji style")
    # short name equal to the name is not repeated; a two-tone variant names both tones
    assert cap[("google", "1F91D-1F3FB-1F3FF")] == "handshake, hands, light and dark skin tones, noto emoji style"
    assert cap[("twitter", "1F1FA-1F1F8")] == "united states flag, us, flag us, country flag, twemoji style"
    assert cap[("google", "1F9EA")] == "test tube, science, noto emoji style"  # underscores become spaces
    assert cap[("google", "1F4A9")] == "pile of poo, hankey, poop, face costume, noto emoji style"  # at most 2

    from opensd.text.tokenizer import CLIPTokenizer
    tok = CLIPTokenizer()
    assert max(len(tok.encode(c)) for c in cap.values()) <= 75


def test_long_caption_is_shortened_to_fit_clip():
    entry = {"name": "X " * 68, "short_names": ["aa", "bb"], "subcategory": "cc"}
    words = lambda t: len(t.replace(",", " ").split())  # 1 token per word here
    full = ed.make_caption(entry, "medium", "google")
    assert words(full) == 77
    short = ed.make_caption(entry, "medium", "google", count_tokens=words)
    assert short == "x " * 67 + "x, aa, medium skin tone, noto emoji style"  # subcategory, then 2nd short name dropped
    assert words(short) == 75


def test_images_alpha_composited_on_white_and_aligned(built):
    ex = _examples(built)
    assert len(ex) == sum(N_EXAMPLES.values())
    checked = 0
    for (style, code), (caption, img, _, _) in ex.items():
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        name = code.lower() + ".png"
        if (style, name) == BIG_IMAGE:
            continue
        np.testing.assert_array_equal(img, expected_pixels(style, name), err_msg=f"{style} {code} {caption}")
        checked += 1
    assert checked == sum(N_EXAMPLES.values()) - 1
    big = ex[BIG_IMAGE[0], "1F680"][1]
    np.testing.assert_array_equal(big[:40, :28], np.broadcast_to(_color(*BIG_IMAGE), (40, 28, 3)))
    np.testing.assert_array_equal(big[:, 36:], 255)
    assert load_manifest(built)["images_resized"] == 1


def test_skin_variants_are_separate_examples(built):
    ex = _examples(built)
    for style in ("google", "twitter"):
        wave = {code: v for (s, code), v in ex.items() if s == style and code.startswith("1F44B")}
        assert sorted(wave) == ["1F44B"] + [f"1F44B-{t}" for t in TONE_CODES]
        assert sorted(v[3] for v in wave.values()) == sorted(
            ["none", "light", "medium-light", "medium", "medium-dark", "dark"])
        assert len({v[2] for v in wave.values()}) == 1  # one concept for all tones
        hs = {code: v[3] for (s, code), v in ex.items() if s == style and code.startswith("1F91D")}
        assert hs == {"1F91D": "none", "1F91D-1F3FB": "light", "1F91D-1F3FB-1F3FF": "light/dark"}
    # the images really differ per tone (different files were read)
    g = [ex["google", c][1] for c in ["1F44B"] + [f"1F44B-{t}" for t in TONE_CODES]]
    assert len({a.tobytes() for a in g}) == 6
    # has_img_twitter false: no Twemoji example for the test tube
    assert ("google", "1F9EA") in ex and ("twitter", "1F9EA") not in ex
    m = load_manifest(built)
    assert m["counts"]["total"] == sum(N_EXAMPLES.values())
    assert m["counts"]["train"]["by_style"] == N_EXAMPLES
    assert m["counts"]["train"]["toned"] == 2 * (5 + 2)


def test_concept_ids_follow_sort_order(built):
    ex = _examples(built)
    concepts = json.loads((built / "concepts.json").read_text())
    assert [c["unified"] for c in concepts][:3] == ["1F600", "1F603", "1F44B"]
    for (style, code), (_, _, cid, _) in ex.items():
        assert code.startswith(concepts[cid]["unified"]), (code, cid)


def test_manifest_records_sources_and_licences(built, tarballs):
    m = load_manifest(built)
    g, t = m["sources"]["google"], m["sources"]["twitter"]
    assert (g["package"], g["version"], t["package"], t["version"]) == (
        "emoji-datasource-google", "16.0.0", "emoji-datasource-twitter", "16.0.0")
    assert g["image_license"] == "Apache-2.0" and t["image_license"] == "CC-BY-4.0"
    assert g["package_license"] == "MIT" and "Cal Henderson" in g["package_license_text"]
    assert g["sha256"] == hashlib.sha256(tarballs["google"].read_bytes()).hexdigest()
    assert g["upstream_version"].endswith("v2.048") and t["upstream_version"].endswith("v16.0.1")
    assert "Apache License 2.0" in g["image_license_statement_in_package"]
    assert "Creative Commons Attribution 4.0" in t["image_license_statement_in_package"]
    assert "CC-BY 4.0" in m["licenses"]["attribution"] and "Apache" in m["licenses"]["attribution"]
    for name, rec in m["files"].items():
        assert hashlib.sha256((built / name).read_bytes()).hexdigest() == rec["sha256"]


# -- split --------------------------------------------------------------------------------------


def _split_keys(cache: Path, split: str) -> list[tuple[str, str]]:
    s = load_split(cache, split)
    return list(zip(s.styles, s.codes))


def test_split_is_deterministic_and_heldout_concepts_are_in_train(tarballs, tmp_path):
    a = build_emoji_dataset(tmp_path / "a", tarballs=tarballs, held_out_fraction=0.3)
    b = build_emoji_dataset(tmp_path / "b", tarballs=tarballs, held_out_fraction=0.3)
    assert _split_keys(a, "heldout") == _split_keys(b, "heldout")
    assert _split_keys(a, "train") == _split_keys(b, "train")
    tr, ho = load_split(a, "train"), load_split(a, "heldout")
    assert 0 < len(ho) < len(tr)
    assert len(tr) + len(ho) == sum(N_EXAMPLES.values())
    assert not set(_split_keys(a, "train")) & set(_split_keys(a, "heldout"))
    train_concepts = set(tr.concept_ids.tolist())
    for cid, style, tone in zip(ho.concept_ids.tolist(), ho.styles, ho.tones):
        assert cid in train_concepts
        # the same concept appears in training in the other style or with another tone
        assert any(c == cid and (s != style or t != tone)
                   for c, s, t in zip(tr.concept_ids.tolist(), tr.styles, tr.tones))
    # the held-out images/captions are the held-out examples (not shifted rows)
    for i in range(len(ho)):
        np.testing.assert_array_equal(ho.images[i], expected_pixels(ho.styles[i], ho.codes[i].lower() + ".png"))


def test_split_rule_keeps_one_example_per_concept_in_train():
    examples = [(f"C{i}", s, "none") for i in range(50) for s in ("google", "twitter")]
    held = ed.assign_split(examples, 0.999999)
    assert sum(held) == 50
    for i in range(50):
        assert held[2 * i] != held[2 * i + 1]
    assert ed.assign_split(examples, 0.0) == [False] * 100
    # membership is a per-example hash: another concept being present changes nothing
    more = ed.assign_split(examples + [("Z", "google", "none"), ("Z", "twitter", "none")], 0.3)
    assert more[:100] == ed.assign_split(examples, 0.3)
    frac = np.mean(ed.assign_split([(f"C{i}", "google", t) for i in range(2000) for t in ("none", "dark")], 0.05))
    assert 0.035 < frac < 0.065


def test_split_hash_is_stable():
    # Pinned: a change here silently reshuffles which examples are held out.
    assert ed._split_score("1F600", "google", "none") == pytest.approx(
        int.from_bytes(hashlib.sha256(b"opensd-emoji-split-v1|1F600|google|none").digest()[:8], "big") / 2**64)
    assert ed.SPLIT_SALT == "opensd-emoji-split-v1"


# -- cache --------------------------------------------------------------------------------------

OLD = 1_000_000_000  # 2001, as ns below


def _age(cache: Path) -> None:
    for p in cache.iterdir():
        if p.is_file():
            os.utime(p, ns=(OLD * 10**9, OLD * 10**9))


def _mtimes(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.is_file() and p.name != ".lock"}


def test_warm_cache_is_a_noop_and_changed_inputs_rebuild(tarballs, tmp_path):
    cache = build_emoji_dataset(tmp_path / "c", tarballs=tarballs, held_out_fraction=0.3)
    _age(cache)
    before = _mtimes(cache)
    assert set(before) >= {"manifest.json", "train.npz", "train.json", "heldout.npz", "heldout.json", "concepts.json"}
    assert build_emoji_dataset(cache, tarballs=tarballs, held_out_fraction=0.3) == cache
    assert _mtimes(cache) == before
    # source order does not matter
    build_emoji_dataset(cache, sources=("twitter", "google"), tarballs=tarballs, held_out_fraction=0.3)
    assert _mtimes(cache) == before

    # ... but other parameters or other source bytes do rebuild
    build_emoji_dataset(cache, tarballs=tarballs, held_out_fraction=0.2)
    assert all(v != OLD * 10**9 for v in _mtimes(cache).values())
    _age(cache)
    other = make_tarball(tmp_path / "g2.tgz", "google", emoji=EMOJI[:4])
    build_emoji_dataset(cache, tarballs={**tarballs, "google": other}, held_out_fraction=0.2)
    assert _mtimes(cache)["manifest.json"] != OLD * 10**9
    assert load_manifest(cache)["counts"]["total"] == (4 + 5 + 2) + N_EXAMPLES["twitter"]
    _age(cache)
    build_emoji_dataset(cache, sources=("google",), tarballs=tarballs, held_out_fraction=0.2)
    assert load_manifest(cache)["counts"]["train"]["by_style"].keys() == {"google"}


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(p: Path):  # same size: only the hash can tell
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x01
    p.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", [
    ("train.npz", _truncate),
    ("heldout.npz", _flip_byte),
    ("train.json", _flip_byte),
    ("concepts.json", lambda p: p.unlink()),
    ("manifest.json", lambda p: p.unlink()),
    ("manifest.json", _truncate),
])
def test_corrupt_cache_is_detected_and_rebuilt(tarballs, tmp_path, damage):
    name, fn = damage
    cache = build_emoji_dataset(tmp_path / "c", tarballs=tarballs, held_out_fraction=0.3)
    good = {split: load_split(cache, split) for split in ("train", "heldout")}
    _age(cache)
    fn(cache / name)
    if name.endswith(".npz") or name == "train.json" or name == "manifest.json":
        split = "heldout" if name.startswith("heldout") else "train"
        with pytest.raises(CacheMissing):
            load_split(cache, split, verify=True)
    build_emoji_dataset(cache, tarballs=tarballs, held_out_fraction=0.3)
    assert (cache / name).stat().st_mtime_ns != OLD * 10**9
    for split, g in good.items():
        s = load_split(cache, split, verify=True)
        np.testing.assert_array_equal(s.images, g.images)
        assert s.captions == g.captions and s.codes == g.codes


def test_crash_mid_build_leaves_no_manifest(tarballs, tmp_path, monkeypatch):
    calls = []
    real = np.savez

    def failing_savez(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real(*a, **k)

    cache = build_emoji_dataset(tmp_path / "c", tarballs=tarballs, held_out_fraction=0.3)
    other = make_tarball(tmp_path / "g2.tgz", "google", emoji=EMOJI[:4])
    monkeypatch.setattr(ed.np, "savez", failing_savez)
    with pytest.raises(OSError, match="simulated"):
        build_emoji_dataset(cache, tarballs={**tarballs, "google": other}, held_out_fraction=0.3)
    monkeypatch.undo()
    assert not list(cache.glob(".build-*"))
    # the old complete build is still intact and valid (nothing was moved in)
    assert load_split(cache, "train", verify=True)
    assert load_manifest(cache)["sources"]["google"]["sha256"] == hashlib.sha256(
        tarballs["google"].read_bytes()).hexdigest()


def test_crash_while_publishing_leaves_no_manifest(tarballs, tmp_path, monkeypatch):
    """A manifest on disk always describes a complete build: it goes before the files are swapped."""
    cache = build_emoji_dataset(tmp_path / "c", tarballs=tarballs, held_out_fraction=0.3)
    old_heldout = load_split(cache, "heldout").captions
    real, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut (simulated)")
        return real(src, dst)

    monkeypatch.setattr(ed.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated"):
        build_emoji_dataset(cache, tarballs=tarballs, held_out_fraction=0.2)
    monkeypatch.undo()
    assert not (cache / "manifest.json").exists()
    with pytest.raises(CacheMissing):
        load_split(cache, "heldout")
    build_emoji_dataset(cache, tarballs=tarballs, held_out_fraction=0.2)
    assert load_manifest(cache)["params"]["held_out_fraction"] == 0.2
    # the rebuilt split is the 0.2 one (as a clean build makes it), not the 0.3 files left behind
    clean = build_emoji_dataset(tmp_path / "clean", tarballs=tarballs, held_out_fraction=0.2)
    heldout, expected = load_split(cache, "heldout", verify=True), load_split(clean, "heldout")
    assert heldout.captions == expected.captions != old_heldout
    assert np.array_equal(heldout.images, expected.images)


def test_load_split_errors(tmp_path, built):
    with pytest.raises(CacheMissing, match="python -m opensd.training.emoji_data"):
        load_split(tmp_path / "nothing", "train")
    with pytest.raises(OpenSDError, match="unknown split"):
        load_split(built, "validation")


# -- malformed input ----------------------------------------------------------------------------


def test_malformed_tarballs(tarballs, tmp_path):
    raw = tarballs["google"].read_bytes()
    flipped = bytearray(raw)
    flipped[-6] ^= 1  # in the gzip CRC: every member reads fine, only the trailer check can tell
    for i, bad in enumerate([raw[: len(raw) // 2], raw[:-4], bytes(flipped), b"not gzip at all"]):
        p = tmp_path / f"bad{i}.tgz"
        p.write_bytes(bad)
        with pytest.raises(MalformedTarball, match="not a readable"):
            build_emoji_dataset(tmp_path / "c1", sources=("google",), tarballs={"google": p})

    no_json = make_tarball(tmp_path / "nojson.tgz", "google", omit=["package/emoji.json"])
    with pytest.raises(MalformedTarball, match="no emoji.json"):
        build_emoji_dataset(tmp_path / "c2", sources=("google",), tarballs={"google": no_json})

    missing = make_tarball(tmp_path / "missing.tgz", "google", drop_images=["1f44b-1f3fd.png"])
    with pytest.raises(MalformedTarball, match="1f44b-1f3fd.png"):
        build_emoji_dataset(tmp_path / "c3", sources=("google",), tarballs={"google": missing})

    with pytest.raises(MalformedTarball, match="img/twitter/64"):  # Noto tarball given as the Twemoji one
        build_emoji_dataset(tmp_path / "c4", sources=("twitter",), tarballs={"twitter": tarballs["google"]})

    bad_png = make_tarball(tmp_path / "badpng.tgz", "google",
                           extra_files={"package/img/google/64/1f600.png": b"\x89PNG garbage"})
    with pytest.raises(MalformedTarball, match="1f600.png is not a readable image"):
        build_emoji_dataset(tmp_path / "c5", sources=("google",), tarballs={"google": bad_png})

    with pytest.raises(MalformedTarball, match="not found"):
        build_emoji_dataset(tmp_path / "c6", sources=("google",), tarballs={"google": tmp_path / "nope.tgz"})
    for d in ("c1", "c2", "c3", "c4", "c5"):
        assert not (tmp_path / d / "manifest.json").exists()


def test_bad_arguments(tmp_path, tarballs):
    with pytest.raises(OpenSDError, match="sources"):
        build_emoji_dataset(tmp_path, sources=("apple",), tarballs=tarballs)
    with pytest.raises(OpenSDError, match="held_out_fraction"):
        build_emoji_dataset(tmp_path, tarballs=tarballs, held_out_fraction=1.0)


# -- npm ----------------------------------------------------------------------------------------


def _fake_npm(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    p = bin_dir / "npm"
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


_PACK_TO_DEST = (
    'while [ $# -gt 0 ]; do [ "$1" = "--pack-destination" ] && dest="$2"; shift; done\n'
    'echo "$dest" >> "$LOG"\n'
    'cp "$FIXTURE" "$dest/emoji-datasource-google-16.0.0.tgz"\n'
    "echo '[]'\n"
)


@pytest.mark.skipif(os.name != "posix", reason="fake npm is a shell script")
def test_npm_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(NpmNotFound, match="npm not found"):
        build_emoji_dataset(tmp_path / "c", sources=("google",))


@pytest.mark.skipif(os.name != "posix", reason="fake npm is a shell script")
def test_registry_unreachable(tmp_path, monkeypatch):
    _fake_npm(tmp_path / "bin", "echo 'npm error code ENOTFOUND' >&2\n"
                                "echo 'npm error network request to https://registry.npmjs.org failed' >&2\nexit 1\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RegistryError, match="cannot reach the npm registry"):
        build_emoji_dataset(tmp_path / "c", sources=("google",))
    _fake_npm(tmp_path / "bin", "echo 'npm error code E404' >&2\nexit 1\n")
    with pytest.raises(RegistryError, match="not on the npm registry"):
        build_emoji_dataset(tmp_path / "c", sources=("google",))


@pytest.mark.skipif(os.name != "posix", reason="fake npm is a shell script")
def test_npm_fetch_checks_integrity_and_caches_download(tarballs, tmp_path, monkeypatch):
    _fake_npm(tmp_path / "bin", _PACK_TO_DEST)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FIXTURE", str(tarballs["google"]))
    monkeypatch.setenv("LOG", str(tmp_path / "npm.log"))
    monkeypatch.chdir(tmp_path)
    cache = Path("c")  # relative, as in `--cache data/emoji`
    # the fixture is not the real package: its sha512 does not match the pinned integrity
    with pytest.raises(MalformedTarball, match="does not match the pinned"):
        build_emoji_dataset(cache, sources=("google",))
    assert not list((cache / "downloads").glob("*.tgz"))

    sri = ed._sri_sha512(tarballs["google"])
    monkeypatch.setitem(ed.SOURCES, "google", dataclasses.replace(ed.SOURCES["google"], integrity=sri))
    build_emoji_dataset(cache, sources=("google",), held_out_fraction=0.3)
    src = load_manifest(cache)["sources"]["google"]
    assert src["fetched_with_npm"] and src["integrity"] == sri and src["version"] == "16.0.0"
    assert len(load_split(cache, "train")) + len(load_split(cache, "heldout")) == N_EXAMPLES["google"]
    assert len((tmp_path / "npm.log").read_text().splitlines()) == 2

    # warm cache: npm is not run again; a damaged cache is rebuilt from the kept download
    _fake_npm(tmp_path / "bin", "echo 'npm error code ENOTFOUND' >&2\nexit 1\n")
    _age(cache)
    build_emoji_dataset(cache, sources=("google",), held_out_fraction=0.3)
    assert _mtimes(cache)["manifest.json"] == OLD * 10**9
    _truncate(cache / "train.npz")
    build_emoji_dataset(cache, sources=("google",), held_out_fraction=0.3)
    assert load_split(cache, "train", verify=True)
    # a damaged download is fetched again, which here fails with the registry error
    _truncate(cache / "downloads" / "emoji-datasource-google-16.0.0.tgz")
    _truncate(cache / "train.npz")
    with pytest.raises(RegistryError):
        build_emoji_dataset(cache, sources=("google",), held_out_fraction=0.3)


def test_cli(tarballs, tmp_path, capsys):
    rc = ed.main(["--cache", str(tmp_path / "c"), "--quiet", "--held-out-fraction", "0.3",
                  "--tarball", f"google={tarballs['google']}", "--tarball", f"twitter={tarballs['twitter']}"])
    out = capsys.readouterr().out
    assert rc == 0
    m = load_manifest(tmp_path / "c")
    assert f"{m['counts']['total']} examples" in out
    assert f"train: {m['counts']['train']['total']} (google {m['counts']['train']['by_style']['google']}" in out
    assert "emoji-datasource-twitter@16.0.0" in out
    rc = ed.main(["--cache", str(tmp_path / "d"), "--quiet", "--sources", "twitter",
                  "--tarball", f"twitter={tmp_path / 'missing.tgz'}"])
    assert rc == 1 and "error:" in capsys.readouterr().err
