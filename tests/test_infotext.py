"""Infotext (A1111's generation-parameters text): format, parse, and images that carry it."""
import json
import os
import struct

import pytest
from PIL import Image

from opensd.pipeline import infotext as it
from opensd.pipeline.infotext import (
    decode_usercomment,
    format_infotext,
    generation_params,
    parse_infotext,
    read_infotext,
    save_image,
)

# ------------------------------------------------------------------------------------- layout

FULL_PARAMS = {  # deliberately out of order: format_infotext must put them in A1111's order
    "My extension": "on",
    "Version": "v1.10.1",
    "TI hashes": {"easyneg": "c74b4e810b03"},
    "Lora hashes": {"add:detail": "7c6bad76eb54", "b,c": "0123456789ab"},
    "Hires upscaler": "Latent",
    "Hires steps": 10,
    "Hires upscale": 2.0,
    "Clip skip": 2,
    "Denoising strength": 0.7,
    "Seed resize from": (640, 448),
    "Variation seed strength": 0.25,
    "Variation seed": 5,
    "VAE": "vae-ft-mse-840000-ema-pruned.safetensors",
    "VAE hash": "735e4c3a44",
    "Model": "v1-5-pruned-emaonly",
    "Model hash": "6ce0161689",
    "Size": (512, 768),
    "Face restoration": "CodeFormer",
    "Seed": 1234,
    "CFG scale": 7.0,
    "Schedule type": "Karras",
    "Sampler": "Euler a",
    "Steps": 20,
    "ENSD": None,
}
FULL_LINE = (
    "Steps: 20, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 1234, "
    "Face restoration: CodeFormer, Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Variation seed: 5, "
    "Variation seed strength: 0.25, Seed resize from: 640x448, Denoising strength: 0.7, Clip skip: 2, "
    "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, "
    'Lora hashes: "adddetail: 7c6bad76eb54, bc: 0123456789ab", TI hashes: "easyneg: c74b4e810b03", '
    "My extension: on, Version: v1.10.1"
)


def test_format_is_a1111_layout_and_key_order():
    text = format_infotext("a red apple", "blurry", FULL_PARAMS)
    assert text == f"a red apple\nNegative prompt: blurry\n{FULL_LINE}"


def test_negative_prompt_line_only_when_there_is_one():
    params = {"Steps": 2, "Sampler": "Euler", "CFG scale": 7.5, "Seed": 3}
    assert format_infotext("cat", "", params) == "cat\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 3"
    assert format_infotext("", "", params) == "Steps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 3"
    assert format_infotext("", "dog", params) == \
        "Negative prompt: dog\nSteps: 2, Sampler: Euler, CFG scale: 7.5, Seed: 3"


@pytest.mark.parametrize("value,written", [
    ("Latent", "Latent"),
    ("R-ESRGAN 4x+ Anime6B", "R-ESRGAN 4x+ Anime6B"),
    ("a, b", '"a, b"'),
    ("k: v", '"k: v"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("two\nlines", '"two\\nlines"'),
    ("猫, 桜", '"猫, 桜"'),  # JSON-quoted without \\u escapes, as A1111's ensure_ascii=False
    ("back\\slash, x", '"back\\\\slash, x"'),
    (" padded ", '" padded "'),
])
def test_quoting_rule_and_unquoting(value, written):
    params = {"Steps": 1, "Sampler": "Euler", "Seed": 1, "Hires upscaler": value}
    text = format_infotext("p", "", params)
    assert text.endswith(f"Hires upscaler: {written}")
    assert parse_infotext(text)[2]["Hires upscaler"] == value


def test_values_are_written_like_a1111():
    params = {"Steps": 30, "CFG scale": 7.0, "Seed": 1, "Denoising strength": 0.35, "Tiling": True,
              "Hires upscale": 1.5, "Token merging ratio": 0.0, "Init image hash": None}
    line = format_infotext("", "", params)
    assert line == ("Steps: 30, CFG scale: 7, Seed: 1, Denoising strength: 0.35, Token merging ratio: 0, "
                    "Tiling: True, Hires upscale: 1.5")


@pytest.mark.parametrize("key", ["a", "Bad:key", "x,y", "", 'q"uote', "ok\nno"])
def test_keys_that_cannot_be_read_back_are_refused(key):
    with pytest.raises(ValueError, match="cannot be read back"):
        format_infotext("p", "", {"Steps": 1, key: "v"})


def test_generation_params_maps_ids_and_drops_defaults():
    params = generation_params(steps=20, sampler="euler_ancestral", schedule="karras", cfg=7.0, seed=9, width=512,
                               height=768, model="m", model_hash="0123456789", clip_skip=1,
                               variation_seed=77, variation_seed_strength=0.0, hires_steps=0,
                               lora_hashes={}, extra={"Emphasis": "Original"}, version="v9")
    assert params == {"Steps": 20, "Sampler": "Euler a", "Schedule type": "Karras", "CFG scale": 7.0,
                      "Seed": 9, "Size": "512x768", "Model hash": "0123456789", "Model": "m",
                      "Emphasis": "Original", "Version": "v9"}
    assert list(params)[-1] == "Version"
    assert generation_params(steps=1, sampler="mine", cfg=1, seed=1, width=8, height=8,
                             clip_skip=2)["Sampler"] == "mine"
    assert generation_params(steps=1, sampler="DPM++ 2M", schedule="Karras", cfg=1, seed=1, width=8,
                             height=8)["Sampler"] == "DPM++ 2M"
    assert generation_params(steps=1, sampler="euler", cfg=1, seed=1, width=8, height=8,
                             clip_skip=2)["Clip skip"] == 2


# -------------------------------------------------------------------------------------- parse

PROMPTS = [
    ("a red apple", "blurry"),
    ("a red apple, studio light, (masterpiece:1.2)", ""),
    ("first line\nsecond line, with: colon\n\nafter a blank line", "neg one\nneg two"),
    ("", "only negative"),
    ("", ""),
    ("猫と桜, 日本画 <lora:ukiyo:0.8>", "ぼやけた"),
    ('quotes "inside" prompt, Steps: 5, Seed: 6, CFG scale: 7', "x"),  # params-looking prompt line
]


@pytest.mark.parametrize("prompt,negative", PROMPTS)
def test_round_trip(prompt, negative):
    text = format_infotext(prompt, negative, FULL_PARAMS)
    got_prompt, got_negative, params = parse_infotext(text)
    assert (got_prompt, got_negative) == (prompt, negative)
    expected = parse_infotext(f"x\n{FULL_LINE}")[2]
    assert params == expected
    assert params["Size"] == "512x768" and params["Size-1"] == "512" and params["Size-2"] == "768"
    assert params["Seed resize from-1"] == "640" and params["Seed resize from-2"] == "448"
    assert params["Lora hashes"] == "adddetail: 7c6bad76eb54, bc: 0123456789ab"
    assert params["CFG scale"] == "7" and params["Model hash"] == "6ce0161689"
    # and back again: the parsed params format to the same text
    params = {k: v for k, v in params.items() if not k.endswith(("-1", "-2"))}
    assert format_infotext(got_prompt, got_negative, params) == text


def test_parse_a1111_docstring_example():
    # The example in A1111's parse_generation_parameters docstring (pre-1.0, 8-digit model hash).
    text = ("girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, "
            "by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate\n"
            "Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, "
            "poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b\n")
    prompt, negative, params = parse_infotext(text)
    assert prompt.startswith("girl with an artist's beret") and prompt.endswith("detailed, intricate")
    assert negative.startswith("ugly, fat,") and negative.endswith("messy drawing")
    assert params == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "965400086",
                      "Size": "512x512", "Size-1": "512", "Size-2": "512", "Model hash": "45dee52b"}


def test_parse_a1111_extension_keys_quotes_and_blank_prompt_lines():
    # As A1111 1.5 wrote it with ADetailer: a blank line inside the prompt, keys with '/', a quoted
    # value holding a LoRA tag, quoted "Lora hashes", Windows line endings from a copy-paste.
    text = ("photo of a sabre-toothed tiger , sunny day, 35mm photograph,film,professional,4k,highly detailed\r\n"
            "\r\n<lora:12gb_settings-000007:1>\r\n"
            "Negative prompt: drawing,painting,crayon,sketch,graphite,impressionist,noisy,blurry,soft,deformed,ugly\r\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1935425320, Size: 1280x720, Model hash: 31e35c80fc, "
            "Model: sd_xl_base_1.0, Denoising strength: 0.5, ADetailer model: face_yolov8n.pt, "
            'ADetailer prompt: "face photo of ohwx man <lora:12gb_settings-000007:1>", ADetailer confidence: 0.3, '
            "ADetailer dilate/erode: 4, ADetailer mask blur: 4, ADetailer denoising strength: 0.4, "
            "ADetailer inpaint only masked: True, ADetailer inpaint padding: 32, ADetailer version: 23.7.11, "
            'Hires upscale: 1.6, Hires upscaler: Latent, Lora hashes: "12gb_settings-000007: f9b455fdd697", '
            "Version: v1.5.1")
    prompt, negative, params = parse_infotext(text)
    assert prompt == ("photo of a sabre-toothed tiger , sunny day, 35mm photograph,film,professional,4k,"
                      "highly detailed\n\n<lora:12gb_settings-000007:1>")
    assert negative == "drawing,painting,crayon,sketch,graphite,impressionist,noisy,blurry,soft,deformed,ugly"
    assert params["ADetailer prompt"] == "face photo of ohwx man <lora:12gb_settings-000007:1>"
    assert params["ADetailer dilate/erode"] == "4"
    assert params["Lora hashes"] == "12gb_settings-000007: f9b455fdd697"
    assert params["Size-1"] == "1280" and params["Size-2"] == "720"
    assert params["Model"] == "sd_xl_base_1.0" and params["Version"] == "v1.5.1"
    assert len([k for k in params if not k.endswith(("-1", "-2"))]) == 21


@pytest.mark.parametrize("line", [
    # A1111 1.6 with hires fix, LoRA and TI hashes
    ('Steps: 40, Sampler: DPM++ 2M Karras, CFG scale: 8, Seed: 1429876294, Size: 512x512, Model hash: 61bc7001e8, '
    'Model: anyhentai_20, Denoising strength: 0.7, Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, '
    'Hires upscaler: Latent, Lora hashes: "concept_sunbathing: 7b93421e39bd", '
    'TI hashes: "EasyNegativeV2: 339cc9210f70, FastNegativeV2: a7465e7cc2a2", Version: 1.6.0'),
    # A1111 1.6 with a VAE and token merging
    ("Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 874390029, Size: 768x768, Model hash: f8bb2922e1, "
    "Model: revAnimated_v122, VAE hash: 551eac7037, VAE: vae-ft-mse-840000-ema-pruned.ckpt, Clip skip: 2, "
    "Token merging ratio: 0.2, Version: v1.6.0"),
    # A1111 1.9+ with the separate schedule type
    ("Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3158555784, Size: 572x1024, "
    "Model hash: d64c08ec07, Model: divingIllustriousSemi_v10, Denoising strength: 0.7, Clip skip: 2, "
    "Hires upscale: 2, Hires upscaler: Latent, Version: v1.10.1"),
])
def test_a1111_lines_parse_and_format_back_identically(line):
    text = f"masterpiece, best quality\nNegative prompt: worst quality\n{line}"
    prompt, negative, params = parse_infotext(text)
    assert (prompt, negative) == ("masterpiece, best quality", "worst quality")
    assert params["Steps"] and params["Seed"] and params["Model hash"]
    shuffled = dict(reversed([(k, v) for k, v in params.items() if not k.endswith(("-1", "-2"))]))
    assert format_infotext(prompt, negative, shuffled) == text


def test_parse_json_object_values_and_escaped_quotes():
    text = ('p\nSteps: 30, Sampler: DPM++ 2M SDE, CFG scale: 5, Seed: 42, Size: 832x1216, '
            'ADetailer prompt: "a \\"quoted\\" word, ok", '
            'Hashes: {"model": "31e35c80fc", "lora:add-detail-xl": "9c783c8ce46c"}, Version: v1.10.1')
    _, _, params = parse_infotext(text)
    assert params["ADetailer prompt"] == 'a "quoted" word, ok'
    assert json.loads(params["Hashes"]) == {"model": "31e35c80fc", "lora:add-detail-xl": "9c783c8ce46c"}
    assert params["Version"] == "v1.10.1"
    assert "lora" not in params and "model" not in params


def test_text_without_a_params_line_is_all_prompt():
    assert parse_infotext("style: anime, mood: dark\nline two") == ("style: anime, mood: dark\nline two", "", {})
    assert parse_infotext("a cat\nNegative prompt: dog\nstyle: anime, mood: dark") == \
        ("a cat", "dog\nstyle: anime, mood: dark", {})
    assert parse_infotext("") == ("", "", {})


# ------------------------------------------------------------------------------- image files

TEXT = format_infotext("a red apple, 猫\nline two", "blurry, ugly", {
    "Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Seed": 1234, "Size": "64x48",
    "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly", "Version": "opensd 0.1.0"})


def _image(mode="RGB"):
    image = Image.new(mode, (64, 48))
    image.putdata([(x * 4 % 256, y * 5 % 256, 90, 200)[:len(mode)] for y in range(48) for x in range(64)])
    return image


@pytest.mark.parametrize("name,fmt", [("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.JPEG", "JPEG"), ("a.webp", "WEBP")])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_save_then_read_round_trip(tmp_path, name, fmt, mode):
    path = save_image(_image(mode), tmp_path / "sub" / name, TEXT)
    assert path == tmp_path / "sub" / name
    with Image.open(path) as image:
        assert image.format == fmt and image.size == (64, 48)
    assert read_infotext(path) == TEXT
    assert parse_infotext(read_infotext(path))[0] == "a red apple, 猫\nline two"


def test_png_uses_a_parameters_text_chunk(tmp_path):
    latin = format_infotext("plain", "", {"Steps": 1, "Sampler": "Euler", "Seed": 2})
    for text in (latin, TEXT):
        path = save_image(_image(), tmp_path / "a.png", text)
        with Image.open(path) as image:
            assert image.text == {"parameters": text}
    data = path.read_bytes()
    assert b"iTXtparameters" in data  # not Latin-1: Pillow writes an international text chunk


def _usercomment_entry(exif: bytes):
    """(byte order, tag type, value) of UserComment in a raw EXIF block, read by hand."""
    tiff = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    order = tiff[:2]
    e = ">" if order == b"MM" else "<"
    (ifd0,) = struct.unpack(e + "I", tiff[4:8])
    (n,) = struct.unpack(e + "H", tiff[ifd0:ifd0 + 2])
    entries = [struct.unpack(e + "HHII", tiff[ifd0 + 2 + 12 * i: ifd0 + 14 + 12 * i]) for i in range(n)]
    exif_ifd = next(v for tag, _, _, v in entries if tag == 0x8769)
    (n,) = struct.unpack(e + "H", tiff[exif_ifd:exif_ifd + 2])
    for i in range(n):
        tag, typ, count, off = struct.unpack(e + "HHII", tiff[exif_ifd + 2 + 12 * i: exif_ifd + 14 + 12 * i])
        if tag == 0x9286:
            return order, typ, tiff[off:off + count]
    raise AssertionError("no UserComment")


@pytest.mark.parametrize("name", ["a.jpg", "a.webp"])
def test_exif_usercomment_is_what_a1111_writes(tmp_path, name):
    # piexif's UserComment.dump(text, encoding="unicode") in a big-endian TIFF, type UNDEFINED (7)
    path = save_image(_image(), tmp_path / name, TEXT)
    with Image.open(path) as image:
        order, typ, value = _usercomment_entry(image.info["exif"])
    assert order == b"MM" and typ == 7
    assert value == b"UNICODE\x00" + TEXT.encode("utf-16-be")


def test_usercomment_decoding_variants():
    text = "a cat, 猫\nSteps: 1"
    assert decode_usercomment(b"UNICODE\x00" + text.encode("utf-16-be")) == text
    assert decode_usercomment(b"UNICODE\x00" + text.encode("utf-16-le")) == text
    assert decode_usercomment(b"UNICODE\x00" + text.encode("utf-16")) == text  # with a BOM
    assert decode_usercomment(b"ASCII\x00\x00\x00Steps: 1\x00") == "Steps: 1"
    assert decode_usercomment(tuple(b"UNICODE\x00" + b"\x00h\x00i")) == "hi"
    assert decode_usercomment(b"\x00" * 8 + "héllo".encode()) == "héllo"


def test_read_usercomment_written_by_pillow_little_endian(tmp_path):
    # Another writer: Pillow's own Exif API, little-endian TIFF, UTF-16-LE text, BYTE type.
    exif = Image.Exif()
    exif.endian = "<"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + TEXT.encode("utf-16-le")
    path = tmp_path / "other.jpg"
    _image().save(path, exif=exif)
    with Image.open(path) as image:
        assert _usercomment_entry(image.info["exif"])[:2] == (b"II", 1)
    assert read_infotext(path) == TEXT


def test_images_without_infotext_read_as_none(tmp_path):
    for name in ("plain.png", "plain.jpg", "plain.webp"):
        _image().save(tmp_path / name)
        assert read_infotext(tmp_path / name) is None


def _only_final_files(folder, *names):
    assert sorted(os.listdir(folder)) == sorted(names)


def test_atomic_save_leaves_no_temp_files_and_replaces(tmp_path):
    for name in ("a.png", "a.jpg", "a.webp"):
        save_image(_image(), tmp_path / name, "old")
        save_image(_image(), tmp_path / name, TEXT)  # overwrite in place
        assert read_infotext(tmp_path / name) == TEXT
    _only_final_files(tmp_path, "a.png", "a.jpg", "a.webp")


def test_failed_save_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = save_image(_image(), tmp_path / "a.png", "old text")
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half an image")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(_image(), target, TEXT)
    with pytest.raises(OSError, match="disk full"):
        save_image(_image(), tmp_path / "new.webp", TEXT)
    assert target.read_bytes() == before
    _only_final_files(tmp_path, "a.png")


def test_saved_files_get_normal_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_image(_image(), tmp_path / "a.jpg", TEXT)
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        path.chmod(0o600)
        save_image(_image(), path, TEXT)
        assert path.stat().st_mode & 0o777 == 0o600  # an overwritten file keeps its mode
    finally:
        os.umask(old)


def test_unsupported_extension_and_too_long_jpeg_text_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="unsupported image extension"):
        save_image(_image(), tmp_path / "a.gif", TEXT)
    with pytest.raises(ValueError, match="too long for a JPEG"):
        save_image(_image(), tmp_path / "a.jpg", "x" * 40000)
    _only_final_files(tmp_path)
    save_image(_image(), tmp_path / "a.webp", "x" * 40000)  # WebP has no such limit
    assert read_infotext(tmp_path / "a.webp") == "x" * 40000


# ------------------------------------------------------------------- a real third-party reader

@pytest.mark.parametrize("name", ["out.png", "out.jpg", "out.webp"])
def test_sd_parsers_reads_our_files(tmp_path, name):
    from sd_parsers import ParserManager  # the test extra's independent A1111 reader, used as is
    from sd_parsers.data import Generators

    prompt = "a red apple, studio light, (masterpiece:1.2)\nsecond line"
    negative = "blurry, lowres"
    params = generation_params(steps=23, sampler="euler_ancestral", schedule="karras", cfg=7.5, seed=987654321,
                               width=512, height=768, model="v1-5-pruned-emaonly", model_hash="6ce0161689",
                               clip_skip=2)
    path = save_image(_image(), tmp_path / name, format_infotext(prompt, negative, params))

    info = ParserManager().parse(path)
    assert info is not None and info.generator == Generators.AUTOMATIC1111
    (sampler,) = info.samplers
    assert sampler.name == "Euler a"
    assert sampler.parameters["steps"] == "23"
    assert sampler.parameters["seed"] == "987654321"
    assert sampler.parameters["cfg_scale"] == "7.5"
    assert sampler.parameters["scheduler"] == "Karras"
    assert [p.value for p in sampler.prompts] == [prompt]
    assert [p.value for p in sampler.negative_prompts] == [negative]
    assert sampler.model.name == "v1-5-pruned-emaonly" and sampler.model.hash == "6ce0161689"
    assert info.metadata["Size"] == "512x768"
    assert info.metadata["Clip skip"] == "2"


def test_parameter_keys_are_found_as_a1111s_pattern_finds_them():
    """_next_key walks colons instead of searching with A1111's key pattern (which rescans the rest
    of the line from every start); on random lines both find the same pairs."""
    import random
    import re

    pattern = re.compile(r"\s*(\w[\w \-/]+):\s*")

    def by_pattern(line):
        pairs, pos = [], 0
        while pos < len(line) and (m := pattern.search(line, pos)):
            value, pos = it._read_value(line, m.end())
            pairs.append((m.group(1).strip(), value))
        return pairs

    rng = random.Random(0)
    for _ in range(20000):
        line = "".join(rng.choice('ab :,\t-/"é_1[]{}\u3000.') for _ in range(rng.randint(0, 24)))
        assert it._split_params(line) == by_pattern(line), repr(line)


@pytest.mark.parametrize("line", ["a" * 1_000_000, "a b" * 300_000, "a:" * 300_000])
def test_a_huge_parameters_line_parses_in_linear_time(line):
    """A 100,000-character infotext (an API field, a PNG's text chunk) held the server for minutes."""
    import time

    start = time.perf_counter()
    parse_infotext("prompt\n" + line)
    assert time.perf_counter() - start < 10  # the old search needed hours for these


def test_deeply_nested_json_value_is_kept_as_text():
    params = parse_infotext("x\nSteps: " + "[" * 100_000 + ", Seed: 1, Size: 64x64")[2]
    assert params["Seed"] == "1" and params["Size-1"] == "64" and params["Steps"].startswith("[[[")
