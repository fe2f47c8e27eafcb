"""Generation parameters ("infotext") in AUTOMATIC1111's format, and images that carry them.

The text has A1111's layout, so its "PNG Info" tab, Civitai and other readers understand ours::

    a red apple, studio light
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: opensd 0.1.0

- the prompt (any number of lines), then a ``Negative prompt:`` line only when there is one, then one
  line of ``Key: value`` pairs joined by ``", "``, keys in the order A1111's ``create_infotext`` writes
  them, values that hold ``,`` ``:`` ``"`` or a newline written as JSON strings;
- PNG: a ``parameters`` text chunk (tEXt, or iTXt when the text is not Latin-1, as Pillow chooses);
- JPEG and WebP: the EXIF ``UserComment`` (Exif IFD tag 0x9286, type UNDEFINED), ``UNICODE\\0``
  followed by UTF-16 big-endian text in a big-endian TIFF block, the bytes A1111 writes with piexif.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..atomic import atomic_write
from ..sampling import names
from ..version import __version__

log = logging.getLogger(__name__)

VERSION = f"opensd {__version__}"

# The keys A1111's create_infotext writes itself, in its order (modules/processing.py).
_FIXED_KEYS = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE",
    "Variation seed", "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio", "Token merging ratio hr",
    "Init image hash", "RNG", "Tiling",
)
# Keys that reach it through p.extra_generation_params, in the order A1111 adds them during a run
# (hires fix in txt2img init, LoRA hashes when extra networks activate, TI hashes when the prompts
# are encoded). Keys nobody here knows follow these, in the caller's order.
_EXTRA_KEYS = (
    "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Lora hashes", "TI hashes",
    "Emphasis", "Noise multiplier", "Extra noise",
)
_LAST_KEYS = ("Version", "User")
_RANK = {k: i for i, k in enumerate(_FIXED_KEYS + _EXTRA_KEYS)}

# A key A1111's reader accepts: a word character, then word characters, spaces, '-' or '/'.
_KEY_RE = re.compile(r"\w[\w \-/]+")
_KEY_CHAR = re.compile(r"[\w \-/]")  # a parameter key is \w[\w \-/]+ followed by ':'
_WORD = re.compile(r"\w")
_SIZE_RE = re.compile(r"^(\d+)x(\d+)$")
_SIZE_KEYS = {"Size", "Seed resize from", "Hires resize"}

_USERCOMMENT = 0x9286
_EXIF_IFD = 0x8769
_UC_UNICODE = b"UNICODE\x00"
_UC_ASCII = b"ASCII\x00\x00\x00"
_UC_JIS = b"JIS\x00\x00\x00\x00\x00"
_JPEG_MAX_EXIF = 65533  # one APP1 segment: 65535 minus its length field

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


# ---------------------------------------------------------------------------------------- format

def quote(value: str) -> str:
    """A1111's rule, widened: a value holding ``,`` ``:`` ``"`` or a newline (A1111: ``,`` ``:``
    newline), or with spaces at either end, is written as a JSON string; A1111 reads both back."""
    if any(c in value for c in ',:"\n') or value != value.strip():
        return json.dumps(value, ensure_ascii=False)
    return value


def _value_text(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, Mapping):  # "Lora hashes" / "TI hashes": "name: hash, name: hash"
        return ", ".join(f"{_clean_name(k)}: {v}" for k, v in value.items())
    if isinstance(value, (tuple, list)) and key in _SIZE_KEYS and len(value) == 2:
        return f"{int(value[0])}x{int(value[1])}"
    return str(value)


def _clean_name(name: Any) -> str:
    # A1111 strips these from LoRA/embedding names so "name: hash" lists split back apart.
    return str(name).replace(":", "").replace(",", "")


def _ordered(params: Mapping[str, Any]) -> list[tuple[str, Any]]:
    known = sorted((k for k in params if k in _RANK), key=_RANK.__getitem__)
    other = [k for k in params if k not in _RANK and k not in _LAST_KEYS]
    last = [k for k in _LAST_KEYS if k in params]
    return [(k, params[k]) for k in known + other + last]


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """The infotext A1111 would write for these parameters.

    ``params`` maps A1111 labels ("Steps", "CFG scale", "Model hash", ...) to values; None values are
    left out, floats that are whole numbers are written without ".0", a (w, h) pair for "Size" is
    written "wxh", and a mapping (for "Lora hashes"/"TI hashes") as "name: hash, name: hash". Keys are
    put in A1111's order; keys it does not write itself come after the ones it does, before "Version".
    """
    pairs = []
    for key, value in _ordered(params):
        if value is None:
            continue
        if not isinstance(key, str) or not _KEY_RE.fullmatch(key):
            raise ValueError(f"infotext key {key!r} cannot be read back: use letters, digits, "
                             "spaces, '-', '/' or '_', at least two characters")
        pairs.append(f"{key}: {quote(_value_text(key, value))}")
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{', '.join(pairs)}".strip()


def a1111_sampler_names(sampler: str, schedule: str | None = None) -> tuple[str, str | None]:
    """A1111's "Sampler" and "Schedule type" for our ids (A1111 names pass through unchanged)."""
    label = names.SAMPLER_LABELS.get(sampler, sampler)
    if not schedule:
        return label, None
    if sampler in names.SAMPLER_LABELS and schedule in names.SCHEDULER_LABELS:
        return label, names.schedule_label(sampler, schedule)
    return label, names.SCHEDULER_LABELS.get(schedule, schedule)


def generation_params(*, steps: int, sampler: str, cfg: float, seed: int, width: int, height: int,
                      schedule: str | None = None, model: str | None = None,
                      model_hash: str | None = None, vae: str | None = None,
                      vae_hash: str | None = None, variation_seed: int | None = None,
                      variation_seed_strength: float = 0.0, denoising_strength: float | None = None,
                      clip_skip: int | None = None, hires_upscale: float | None = None,
                      hires_steps: int | None = None, hires_upscaler: str | None = None,
                      lora_hashes: Mapping[str, str] | None = None,
                      ti_hashes: Mapping[str, str] | None = None, tiling: bool = False,
                      extra: Mapping[str, Any] | None = None,
                      version: str | None = VERSION) -> dict[str, Any]:
    """Our generation settings as A1111's labelled params, with A1111's omissions.

    Sampler and schedule ids become A1111's names through opensd.sampling.names (names already in
    A1111's form, and unknown ones, are written as given). "Clip skip" is left out at 1 or less and
    the variation seed when its strength is 0, as A1111 does. ``model`` is the checkpoint file's
    stem, ``vae`` the VAE's file name; the hashes come from opensd.library.hashes (model_hash for
    model and VAE, lora_hash and embedding_hash for the name -> hash maps). ``extra`` keys go after
    ours, before "Version".
    """
    sampler_label, schedule_label = a1111_sampler_names(sampler, schedule)
    params: dict[str, Any] = {
        "Steps": steps,
        "Sampler": sampler_label,
        "Schedule type": schedule_label,
        "CFG scale": cfg,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model,
        "VAE hash": vae_hash,
        "VAE": vae,
        "Variation seed": variation_seed if variation_seed_strength else None,
        "Variation seed strength": variation_seed_strength or None,
        "Denoising strength": denoising_strength,
        "Clip skip": clip_skip if clip_skip is not None and clip_skip > 1 else None,
        "Tiling": True if tiling else None,
        "Hires upscale": hires_upscale,
        "Hires steps": hires_steps or None,
        "Hires upscaler": hires_upscaler,
        "Lora hashes": dict(lora_hashes) if lora_hashes else None,
        "TI hashes": dict(ti_hashes) if ti_hashes else None,
    }
    params.update(extra or {})
    params["Version"] = version
    return {k: v for k, v in params.items() if v is not None}


# ----------------------------------------------------------------------------------------- parse

def _read_value(line: str, start: int) -> tuple[str, int]:
    """The value starting at ``start`` and the index just past its terminating comma."""
    n = len(line)
    if start < n and line[start] == '"':  # a JSON string, if it closes right before a comma/end
        i = start + 1
        while i < n and line[i] != '"':
            i += 2 if line[i] == "\\" else 1
        if i < n and i > start + 1:
            after = i + 1
            while after < n and line[after] in " \t":
                after += 1
            if after == n or line[after] == ",":
                raw = line[start:i + 1]
                try:
                    return json.loads(raw), after + 1
                except ValueError:
                    return raw, after + 1
    if start < n and line[start] in "{[":  # a JSON object/array written bare, e.g. "Hashes: {...}"
        try:
            _, end = json.JSONDecoder().raw_decode(line, start)
        except (ValueError, RecursionError):  # RecursionError: '[' nested past Python's limit
            pass
        else:
            after = end
            while after < n and line[after] in " \t":
                after += 1
            if after == n or line[after] == ",":
                return line[start:end], after + 1
    comma = line.find(",", start)
    if comma == -1:
        comma = n
    value = line[start:comma].rstrip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            value = json.loads(value)
        except ValueError:
            pass
    return value, comma + 1


def _next_key(line: str, pos: int) -> tuple[str, int] | None:
    """(key, index past its ':' and the blanks after) of the first ``Key:`` at or after ``pos``: what
    searching for \\s*(\\w[\\w \\-/]+):\\s* finds, in linear time (that search rescans the rest of
    the line from every start, minutes for a 100,000-character line with no colon). A key cannot
    hold ':', so it is the run of key characters just before some colon, from its first word character."""
    while (colon := line.find(":", pos)) != -1:
        start = colon
        while start > pos and _KEY_CHAR.match(line, start - 1):
            start -= 1
        while start < colon - 1 and not _WORD.match(line, start):
            start += 1
        if start < colon - 1:
            end = colon + 1
            while end < len(line) and line[end].isspace():
                end += 1
            return line[start:colon].strip(), end
        pos = colon + 1
    return None


def _split_params(line: str) -> list[tuple[str, str]]:
    pairs = []
    pos = 0
    while pos < len(line):
        found = _next_key(line, pos)
        if found is None:
            break
        value, pos = _read_value(line, found[1])
        pairs.append((found[0], value))
    return pairs


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """``(prompt, negative_prompt, params)`` from an infotext, read the way A1111 reads it.

    The last line holds the parameters when it has at least three ``Key: value`` pairs; the lines
    before it are the prompt, up to a line starting with ``Negative prompt:``, and the negative
    prompt after. Lines are stripped, as A1111 does. Quoted values are un-JSON-ed. A value
    ``WxH`` (Size, Hires resize, ...) is also split into ``Key-1`` = W and ``Key-2`` = H.
    """
    lines = text.replace("\r\n", "\n").strip().split("\n")
    pairs = _split_params(lines[-1])
    if len(pairs) >= 3:
        lines = lines[:-1]
    else:
        pairs = []
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()
        if target is prompt and line.startswith("Negative prompt:"):
            target = negative
            line = line[len("Negative prompt:"):].strip()
        target.append(line)
    params: dict[str, str] = {}
    for key, value in pairs:
        params[key] = value
        m = _SIZE_RE.match(value)
        if m:
            params[f"{key}-1"], params[f"{key}-2"] = m.group(1), m.group(2)
    return "\n".join(prompt), "\n".join(negative), params


# -------------------------------------------------------------------------------- image metadata

def usercomment_exif(text: str) -> bytes:
    """An EXIF block (``Exif\\0\\0`` + big-endian TIFF) holding only ``text`` as UserComment."""
    payload = _UC_UNICODE + text.encode("utf-16-be", errors="surrogatepass")
    ifd0 = 8                        # after the 8-byte TIFF header
    exif_ifd = ifd0 + 2 + 12 + 4    # one entry, then the next-IFD offset
    data = exif_ifd + 2 + 12 + 4
    tiff = b"MM\x00\x2a" + struct.pack(">I", ifd0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", _EXIF_IFD, 4, 1, exif_ifd) + struct.pack(">I", 0)
    tiff += struct.pack(">H", 1) + struct.pack(">HHII", _USERCOMMENT, 7, len(payload), data)
    tiff += struct.pack(">I", 0) + payload
    return b"Exif\x00\x00" + tiff


def decode_usercomment(value: bytes | tuple | str) -> str:
    """The text of an EXIF UserComment, whatever its declared character code."""
    if isinstance(value, str):
        return value.rstrip("\x00")
    if isinstance(value, tuple):  # written as BYTE rather than UNDEFINED by some tools
        value = bytes(value)
    prefix, body = value[:8], value[8:]
    if prefix == _UC_UNICODE:
        if body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text = body.decode("utf-16", errors="replace")  # a lone surrogate is not text
        else:
            # A1111 (piexif), sd-parsers and we use big-endian; a few writers use little-endian.
            # ASCII-heavy UTF-16 has its zero bytes on the high side: count them to tell.
            even, odd = body[0::2].count(0), body[1::2].count(0)
            text = body.decode("utf-16-le" if odd > even else "utf-16-be", errors="replace")
    elif prefix == _UC_JIS:
        text = body.decode("shift_jis", errors="replace")
    elif prefix in (_UC_ASCII, b"\x00" * 8):  # "ASCII" is often UTF-8 in practice; 8 NULs: undefined
        text = body.decode("utf-8", errors="replace")
    else:
        text = value.decode("utf-8", errors="replace")
    return text.rstrip("\x00")


def read_infotext(path: str | os.PathLike) -> str | None:
    """The infotext stored in an image file (PNG text chunk, else EXIF UserComment), or None."""
    with Image.open(path) as image:
        text = image.info.get("parameters")
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if text:
            return text
        try:
            comment = image.getexif().get_ifd(_EXIF_IFD).get(_USERCOMMENT)
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a damaged EXIF block
            log.debug("%s: unreadable EXIF: %s", path, e)
            return None
        if comment:
            return decode_usercomment(comment) or None
    return None


# ---------------------------------------------------------------------------------------- saving

def save_image(image: Image.Image, path: str | os.PathLike, infotext: str | None, *, quality: int = 95,
               lossless: bool = False) -> Path:
    """Save ``image`` with ``infotext`` where A1111 puts it (None: with no parameters at all, A1111's
    enable_pnginfo off); the format follows the extension.

    ``.png``: a ``parameters`` text chunk. ``.jpg``/``.jpeg``/``.webp``: the EXIF UserComment
    (``quality`` applies to both, ``lossless`` to WebP). JPEG has no alpha: RGBA and other modes
    are converted to RGB. The write is atomic: a temp file in the same folder
    renamed over ``path``, so readers never see a half-written image and a failure leaves none.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image extension {path.suffix!r}; "
                         f"use one of {', '.join(FORMATS)}")
    return _save(image, path, infotext, fmt, quality=quality, lossless=lossless)


def _save(image: Image.Image, path: Path, infotext: str | None, fmt: str, *, quality: int = 95,
          lossless: bool = False) -> Path:
    if fmt == "PNG":
        info = PngInfo()
        if infotext is not None:
            info.add_text("parameters", infotext)
        kwargs: dict[str, Any] = {"pnginfo": info}
    else:
        kwargs = {"quality": quality}
        if infotext is not None:
            kwargs["exif"] = usercomment_exif(infotext)
        if fmt == "JPEG":
            if len(kwargs.get("exif", b"")) > _JPEG_MAX_EXIF:
                raise ValueError(f"{path}: the parameters text is too long for a JPEG's EXIF "
                                 f"({len(infotext)} characters); save as PNG or WebP")
            if image.mode not in ("RGB", "L", "CMYK"):
                image = image.convert("RGB")
        else:
            kwargs["lossless"] = lossless
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        image.save(f, format=fmt, **kwargs)
    return path
