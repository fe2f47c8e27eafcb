"""Every place a user hands us an image, fed the images users really have (16-bit, palette with
transparency, LA/RGBA, CMYK, EXIF-rotated, animated, MPO, TIFF, ICO, odd sizes) and hostile ones
(decompression bomb, truncated or corrupt data, text named .png, bad base64): each is read as A1111
(modules/images.py read/flatten/create_binary_mask) or ComfyUI (LoadImage, LoadImageMask) reads it,
or refused in one line with a 4xx, and a normal request still works afterwards."""
from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from reference import randomize_
from server_live import BASE, models_dir

from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.image_read import MAX_ENCODED_CHARS, b64_bytes, flatten, mask_from
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.server import images_io
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.workflows import types as wf_types
from opensd.workflows.nodes_image import _decoded
from opensd.workflows.nodes_mask import load_image_mask

# --- the inputs, made small -----------------------------------------------------------------------


def enc(im, fmt, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w=16, h=8) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.arange(w)[None] * 255 // max(w - 1, 1)
    a[..., 1] = 100
    a[..., 2] = np.arange(h)[:, None] * 255 // max(h - 1, 1)
    return Image.fromarray(a, "RGB")


def half_transparent(mode: str) -> bytes:
    """Left half opaque, right half transparent (red RGBA, grey LA, blue/red palette)."""
    if mode == "P":
        im = Image.new("P", (16, 8), 0)
        im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
        im.paste(1, (0, 0, 8, 8))  # left: blue; right: index 0, red, the transparent one
        return enc(im, "PNG", transparency=0)
    a = np.zeros((8, 16, len(mode)), np.uint8)
    a[..., 0] = 200
    a[:, :8, -1] = 255
    return enc(Image.fromarray(a, mode), "PNG")


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: view it rotated 90 degrees clockwise
    return enc(gradient(16, 8), "JPEG", exif=exif, quality=95)


def animated(fmt: str, n: int) -> bytes:
    frames = [Image.new("RGB", (16, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))[:n]]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    return enc(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, loop=0, **extra)


def bomb(w=20000, h=20000) -> bytes:
    """A tiny PNG whose header claims w x h pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def corrupt() -> bytes:
    data = bytearray(enc(gradient(64, 64), "PNG"))
    data[60:80] = b"\xff" * 20
    return bytes(data)


PNG = enc(gradient(64, 64), "PNG")
INPUTS = {
    "16-bit PNG": enc(Image.fromarray(np.full((8, 16), 32768, np.uint16)), "PNG"),
    "palette + transparency": half_transparent("P"),
    "LA": half_transparent("LA"),
    "RGBA": half_transparent("RGBA"),
    "CMYK JPEG": enc(Image.new("CMYK", (16, 8), (0, 255, 255, 0)), "JPEG"),
    "grayscale": enc(Image.new("L", (16, 8), 77), "PNG"),
    "EXIF orientation 6": exif_rotated(),
    "animated GIF": animated("GIF", 3),
    "animated WebP": animated("WEBP", 2),
    "MPO": enc(Image.new("RGB", (16, 8), (255, 0, 0)), "MPO", save_all=True,
               append_images=[Image.new("RGB", (16, 8), (0, 0, 255))]),
    "TIFF": enc(gradient(), "TIFF"),
    "ICO": enc(Image.new("RGBA", (32, 32), (0, 200, 0, 255)), "ICO", sizes=[(16, 16), (32, 32)]),
    "1x1": enc(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
    "4097x8": enc(Image.new("RGB", (4097, 8), (9, 9, 9)), "PNG"),
    "67x45 (not /8)": enc(gradient(67, 45), "PNG"),
}
HOSTILE = {  # name: (bytes, words of the one-line refusal)
    "decompression bomb": (bomb(), "too large"),
    "bomb under PIL's limit": (bomb(5000, 5000), "too large"),
    "truncated PNG": (PNG[:-40], "not a readable image"),
    "corrupt PNG": (corrupt(), "not a readable image"),
    "text named .png": (b"hello, I am not an image\n", "not a readable image"),
    "empty file": (b"", "not a readable image"),
}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# What A1111 makes of each as an init image (images.read then flatten onto img2img_background_color
# white): (size, {pixel: RGB}).
A1111_INIT = {
    "16-bit PNG": ((16, 8), {(0, 0): (128, 128, 128)}),  # PIL's own conversion gave white
    "palette + transparency": ((16, 8), {(0, 0): (0, 0, 255), (15, 0): (255, 255, 255)}),
    "LA": ((16, 8), {(0, 0): (200, 200, 200), (15, 0): (255, 255, 255)}),
    "RGBA": ((16, 8), {(0, 0): (200, 0, 0), (15, 0): (255, 255, 255)}),
    "CMYK JPEG": ((16, 8), {(8, 4): (255, 0, 0)}),
    "grayscale": ((16, 8), {(0, 0): (77, 77, 77)}),
    "EXIF orientation 6": ((8, 16), {}),  # upright: 16x8 stored, 8x16 shown
    "animated GIF": ((16, 8), {(0, 0): (255, 0, 0)}),  # the first frame
    "animated WebP": ((16, 8), {(0, 0): (255, 0, 0)}),
    "MPO": ((16, 8), {}),
    "TIFF": ((16, 8), {(15, 0): (255, 100, 0)}),
    "ICO": ((32, 32), {(0, 0): (0, 200, 0)}),  # the largest size
    "1x1": ((1, 1), {(0, 0): (9, 9, 9)}),
    "4097x8": ((4097, 8), {}),
    "67x45 (not /8)": ((67, 45), {}),
}


def close(a, b, tol=3):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


@pytest.mark.parametrize("name", list(INPUTS))
def test_api_decoding_matches_a1111(name):
    size, pixels = A1111_INIT[name]
    for text in (b64(INPUTS[name]), "data:image/png;base64," + b64(INPUTS[name])):
        image = flatten(images_io.decode_b64(text, "init_images[0]", 4096 * 4096))
        assert image.mode == "RGB" and image.size == size
        for xy, rgb in pixels.items():
            assert close(image.getpixel(xy), rgb), (xy, image.getpixel(xy), rgb)


def test_exif_rotation_is_applied_not_just_the_size():
    stored = gradient(16, 8)
    image = images_io.decode_b64(b64(INPUTS["EXIF orientation 6"]), "x", 1 << 20)
    # orientation 6: the stored top-left corner is shown at the top right
    assert close(image.getpixel((7, 0)), stored.getpixel((0, 0)), 30)  # JPEG blurs colour
    assert close(image.getpixel((0, 15)), stored.getpixel((15, 7)), 30)


def test_png_text_survives_decoding():
    from PIL.PngImagePlugin import PngInfo
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 3")
    data = enc(Image.fromarray(np.full((8, 8), 1000, np.uint16)), "PNG", pnginfo=info)
    assert images_io.decode_b64(b64(data), "image", 1 << 20).info["parameters"] == "a cat\nSteps: 3"


def test_masks_read_as_a1111_create_binary_mask():
    rgba = images_io.decode_b64(b64(INPUTS["RGBA"]), "mask", 1 << 20)
    m = mask_from(rgba)  # transparent parts: the alpha channel is the mask (opaque = repaint)
    assert m.mode == "L" and m.getpixel((0, 0)) == 255 and m.getpixel((15, 0)) == 0
    opaque = Image.new("RGBA", (4, 4), (100, 100, 100, 255))  # fully opaque: its grey, as any other
    assert mask_from(opaque).getpixel((0, 0)) == 100
    assert mask_from(Image.new("L", (4, 4), 30)).getpixel((0, 0)) == 30


@pytest.mark.parametrize("text, words", [
    ("", "expected a base64-encoded image"),
    ("not base64!", "invalid base64"),
    ("data:image/png,iVBOR", "not base64"),
    (b64(b"hello"), "not a readable image"),
])
def test_bad_base64_is_one_line(text, words):
    with pytest.raises(Exception) as e:
        images_io.decode_b64(text, "init_images[0]", 1 << 20)
    assert words in str(e.value) and "\n" not in str(e.value) and "init_images[0]" in str(e.value)


def test_base64_with_newlines_and_spaces_is_read():
    text = b64(PNG)
    wrapped = "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\n "
    assert images_io.decode_b64(wrapped, "x", 1 << 20).size == (64, 64)


# --- ComfyUI LoadImage / LoadImageMask ------------------------------------------------------------

class _Ctx:
    def __init__(self, folder):
        self.inputs_dir = folder


class _Call:
    def __init__(self, folder):
        self.ctx = _Ctx(folder)


COMFY = {  # name: (IMAGE shape, mask mean), as ComfyUI's LoadImage makes them
    "16-bit PNG": ((1, 8, 16, 3), 0.0),
    "palette + transparency": ((1, 8, 16, 3), 0.5),  # ComfyUI: P with transparency -> mask
    "LA": ((1, 8, 16, 3), 0.5),
    "RGBA": ((1, 8, 16, 3), 0.5),
    "CMYK JPEG": ((1, 8, 16, 3), 0.0),
    "grayscale": ((1, 8, 16, 3), 0.0),
    "EXIF orientation 6": ((1, 16, 8, 3), 0.0),
    "animated GIF": ((3, 8, 16, 3), 0.0),  # a batch of the frames
    "animated WebP": ((2, 8, 16, 3), 0.0),
    "MPO": ((1, 8, 16, 3), 0.0),  # ComfyUI's excluded_formats: only the first
    "TIFF": ((1, 8, 16, 3), 0.0),
    "ICO": ((1, 32, 32, 3), 0.0),
    "1x1": ((1, 1, 1, 3), 0.0),
    "4097x8": ((1, 8, 4097, 3), 0.0),
    "67x45 (not /8)": ((1, 45, 67, 3), 0.0),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_load_image_matches_comfyui(name, tmp_path):
    (tmp_path / "in.png").write_bytes(INPUTS[name])
    image, mask = _decoded(tmp_path / "in.png")
    shape, mean = COMFY[name]
    assert tuple(image.shape) == shape and image.dtype == torch.float32
    assert abs(float(mask.mean()) - mean) < 1e-6 and mask.shape[0] == (shape[0] if mean else mask.shape[0])
    if name == "16-bit PNG":
        assert abs(float(image.mean()) - 0.5) < 0.01  # mid grey, not clipped to white
    if name == "RGBA":  # MASK is 1 - alpha: the transparent right half is selected
        assert float(mask[0, 0, 0]) == 0.0 and float(mask[0, 0, 15]) == 1.0
    if name in ("RGBA", "palette + transparency", "16-bit PNG"):
        (m,) = load_image_mask(_Call(tmp_path), "in.png", "alpha")
        assert tuple(m.shape) == (1, 8, 16) and abs(float(m.mean()) - mean) < 1e-6


def test_load_image_counts_frames_against_the_node_limit(tmp_path, monkeypatch):
    (tmp_path / "in.gif").write_bytes(INPUTS["animated GIF"])
    monkeypatch.setattr(wf_types, "MAX_ELEMENTS", 2 * 8 * 16 * 3)  # room for two frames of three
    with pytest.raises(Exception, match="LoadImage: 3 x 8 x 16 x 3"):
        _decoded(tmp_path / "in.gif")


@pytest.mark.parametrize("name", ["truncated PNG", "corrupt PNG", "text named .png"])
def test_load_image_of_a_broken_file_fails_not_returns_garbage(name, tmp_path):
    (tmp_path / "in.png").write_bytes(HOSTILE[name][0])
    with pytest.raises(OSError):
        _decoded(tmp_path / "in.png")


# --- through the servers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    models = models_dir(root)
    (models / "ControlNet").mkdir()
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=1)
    save_controlnet(net, models / "ControlNet" / "control_tiny_canny.safetensors", "small", dtype=torch.float32)
    settings = Settings(models_dir=models, outputs_dir=root / "out", max_image_pixels=1 << 20)
    with TestClient(create_app(settings), base_url=BASE) as c:
        yield c


TINY_REQ = {"prompt": "x", "steps": 1, "width": 64, "height": 64, "denoising_strength": 0.5,
            "override_settings": {"sd_model_checkpoint": "tiny"}}


def unit(image: str) -> dict:
    return {"alwayson_scripts": {"controlnet": {"args": [
        {"image": image, "module": "none", "model": "control_tiny_canny"}]}}}


PLACES = {  # place: a request body holding the image as base64
    "init_images": lambda s: ("/sdapi/v1/img2img", {**TINY_REQ, "init_images": [s]}),
    "mask": lambda s: ("/sdapi/v1/img2img", {**TINY_REQ, "init_images": [b64(PNG)], "mask": s}),
    "controlnet": lambda s: ("/sdapi/v1/txt2img", {**TINY_REQ, **unit(s)}),
    "extra-single-image": lambda s: ("/sdapi/v1/extra-single-image", {"image": s, "upscaling_resize": 1}),
    "extra-batch-images": lambda s: ("/sdapi/v1/extra-batch-images",
                                     {"imageList": [{"data": s, "name": "a.png"}], "upscaling_resize": 1}),
    "png-info": lambda s: ("/sdapi/v1/png-info", {"image": s}),
}
FIELD = {"init_images": "init_images[0]", "mask": "mask", "controlnet": "args[0].image",
         "extra-single-image": "image", "extra-batch-images": "imageList", "png-info": "image"}

API_CASES = [(p, n) for p in PLACES for n in INPUTS]


@pytest.mark.parametrize("place, name", API_CASES)
def test_a1111_places_take_what_a1111_takes(client, place, name):
    path, body = PLACES[place](b64(INPUTS[name]))
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    if place == "init_images":  # A1111 resizes the init image to the request's size
        out = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
        assert out.size == (64, 64)


@pytest.mark.parametrize("place", list(PLACES))
@pytest.mark.parametrize("name", [n for n in HOSTILE if n != "empty file"] + ["invalid base64", "empty string"])
def test_a1111_places_refuse_bad_images_in_one_line(client, place, name):
    text = {"invalid base64": "%%%not base64", "empty string": ""}.get(name) or b64(HOSTILE.get(name, (b"",))[0])
    if name == "empty string" and place in ("mask", "png-info"):
        pytest.skip("A1111 reads an empty mask as none and png-info of nothing as empty")
    path, body = PLACES[place](text)
    r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    detail = detail if isinstance(detail, str) else str(detail)
    assert FIELD[place] in detail and "\n" not in detail, detail
    words = HOSTILE[name][1] if name in HOSTILE else ("base64" if name == "invalid base64" else "")
    assert words in detail, detail


def test_a1111_still_works_after_the_hostile_images(client):
    r = client.post("/sdapi/v1/img2img", json={**TINY_REQ, "init_images": [b64(PNG)]})
    assert r.status_code == 200 and len(r.json()["images"]) == 1, r.text


def test_img2img_background_color_paints_the_transparent_parts(client):
    def made(init: Image.Image, **settings) -> np.ndarray:
        over = {"sd_model_checkpoint": "tiny", **settings}
        r = client.post("/sdapi/v1/img2img", json={**TINY_REQ, "seed": 3, "init_images": [b64(enc(init, "PNG"))],
                                                   "override_settings": over})
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))

    clear = Image.new("RGBA", (64, 64), (0, 255, 0, 0))  # its hidden colour is green
    assert (made(clear, img2img_background_color="#ff0000") == made(Image.new("RGB", (64, 64), "red"))).all()
    assert (made(clear) == made(Image.new("RGB", (64, 64), "white"))).all()  # A1111's default
    r = client.post("/sdapi/v1/img2img", json={**TINY_REQ, "init_images": [b64(PNG)], "override_settings": {
        "sd_model_checkpoint": "tiny", "img2img_background_color": "no colour"}})
    assert r.status_code == 422 and "img2img_background_color: 'no colour' is not a colour" in r.text, r.text


def test_comfy_upload_takes_images_and_refuses_the_rest(client):
    for name, data in INPUTS.items():
        r = client.post("/upload/image", files={"image": ("in.png", data, "image/png")},
                        data={"overwrite": "true"})
        assert r.status_code == 200, (name, r.text)
    for name, (data, words) in HOSTILE.items():
        r = client.post("/upload/image", files={"image": ("bad.png", data, "image/png")})
        assert 400 <= r.status_code < 500 and words in r.text, (name, r.text)
    r = client.post("/upload/image", files={"image": ("ok.png", PNG, "image/png")})
    assert r.status_code == 200, r.text


# --- the CLI --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_images")
    write_random_checkpoint(root / "m.safetensors", dtype=torch.float32)
    for name, (data, _) in HOSTILE.items():
        (root / f"{name.replace(' ', '_')}.png").write_bytes(data)
    (root / "ok.png").write_bytes(PNG)
    return root


@pytest.mark.parametrize("flag", ["--init-image", "--mask", "--control"])
@pytest.mark.parametrize("name", list(HOSTILE))
def test_cli_image_options_refuse_bad_images_in_one_line(cli_files, capsys, monkeypatch, flag, name):
    monkeypatch.chdir(cli_files)
    bad = f"{name.replace(' ', '_')}.png"
    args = {"--init-image": ["--init-image", bad], "--mask": ["--init-image", "ok.png", "--mask", bad],
            "--control": ["--control", f"m.safetensors,{bad}"]}[flag]
    rc = main(["generate", "x", "-m", "m.safetensors", "--steps", "1", *args])
    err = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
    # the CLI's pixel limit is PIL's own (89M): a local user's big files are theirs to open; a 5000 x
    # 5000 header over no data is then found unreadable
    words = "not a readable image" if name == "bomb under PIL's limit" else HOSTILE[name][1]
    assert rc == 2 and len(err) == 1 and bad in err[0] and words in err[0], err


def test_cli_reads_an_exif_rotated_init_image_upright(cli_files):
    from opensd.cli.common import open_image
    (cli_files / "rot.jpg").write_bytes(INPUTS["EXIF orientation 6"])
    assert open_image(cli_files / "rot.jpg", "init-image").size == (8, 16)


def test_comfy_upload_mask_puts_the_painted_alpha_into_the_original(client, tmp_path):
    from PIL.PngImagePlugin import PngInfo
    meta = PngInfo()
    meta.add_text("prompt", '{"1": {}}')
    original = enc(gradient(16, 8), "PNG", pnginfo=meta)
    assert client.post("/upload/image", files={"image": ("orig.png", original, "image/png")},
                       data={"overwrite": "true"}).status_code == 200
    ref = '{"filename": "orig.png", "subfolder": "", "type": "input"}'
    r = client.post("/upload/mask", files={"image": ("clipspace-mask.png", INPUTS["RGBA"], "image/png")},
                    data={"original_ref": ref, "overwrite": "true"})
    assert r.status_code == 200 and r.json() == {"name": "clipspace-mask.png", "subfolder": "", "type": "input"}
    stored = client.get("/view", params={"filename": "clipspace-mask.png", "type": "input"}).content
    (tmp_path / "m.png").write_bytes(stored)
    saved = Image.open(tmp_path / "m.png")
    assert saved.mode == "RGBA" and saved.info.get("prompt") == '{"1": {}}'
    assert np.array_equal(np.asarray(saved)[..., :3], np.asarray(gradient(16, 8)))
    image, mask = _decoded(tmp_path / "m.png")  # LoadImage: MASK = 1 - alpha, the painted right half
    assert float(mask[0, 0, 0]) == 0.0 and float(mask[0, 0, 15]) == 1.0


@pytest.mark.parametrize("mask, ref, words", [
    (INPUTS["RGBA"], '{"filename": "nothere.png", "type": "input"}', "not found"),
    (INPUTS["RGBA"], "not json", "original_ref"),
    (INPUTS["RGBA"], '{"filename": "../orig.png", "type": "input"}', "filename"),
    (INPUTS["RGBA"], '{"filename": "orig.png", "type": "elsewhere"}', "original_ref: type"),
    (INPUTS["ICO"], '{"filename": "orig.png", "type": "input"}', "differs from the original"),
    (b"hello", '{"filename": "orig.png", "type": "input"}', "not a readable image"),
    (bomb(), '{"filename": "orig.png", "type": "input"}', "too large"),
    (INPUTS["RGBA"], '{"filename": "orig.png [input]"}', ""),  # ComfyUI's annotated name: accepted
])
def test_comfy_upload_mask_refuses_in_one_line(client, mask, ref, words):
    client.post("/upload/image", files={"image": ("orig.png", enc(gradient(16, 8), "PNG"), "image/png")},
                data={"overwrite": "true"})
    r = client.post("/upload/mask", files={"image": ("m.png", mask, "image/png")}, data={"original_ref": ref})
    if not words:
        assert r.status_code == 200, r.text
        return
    assert 400 <= r.status_code < 500 and words in r.text and "\n" not in r.text, r.text


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_png_info_reads_parameters_of_png_jpeg_and_webp(client, tmp_path, suffix):
    from opensd.pipeline.infotext import save_image
    text = "a cat\nNegative prompt: dog\nSteps: 3, Sampler: Euler, Seed: 7, Size: 16x8"
    path = save_image(gradient(), tmp_path / f"x{suffix}", text)
    r = client.post("/sdapi/v1/png-info", json={"image": b64(path.read_bytes())})
    assert r.status_code == 200 and r.json()["info"] == text, r.text
    assert r.json()["parameters"]["Seed"] in (7, "7")


def _run_graph(client, name: str) -> list[dict]:
    """LoadImage(name) -> SaveImage through POST /prompt; the run's websocket messages."""
    import json
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
             "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "in"}}}
    with client.websocket_connect("ws://127.0.0.1:7860/ws?clientId=imgs") as ws:
        ws.receive_json()
        r = client.post("/prompt", json={"prompt": graph, "client_id": "imgs"})
        assert r.status_code == 200, r.text
        pid, messages = r.json()["prompt_id"], []
        while True:
            m = ws.receive()
            if m.get("text"):
                messages.append(json.loads(m["text"]))
                done = messages[-1]
                if done["type"] == "executing" and done["data"]["node"] is None and done["data"]["prompt_id"] == pid:
                    return messages


def test_comfy_graph_loads_an_uploaded_exif_photo_upright_and_a_broken_file_fails_in_one_message(client):
    client.post("/upload/image", files={"image": ("photo.jpg", INPUTS["EXIF orientation 6"], "image/jpeg")},
                data={"overwrite": "true"})
    saved = [m["data"]["output"]["images"][0] for m in _run_graph(client, "photo.jpg") if m["type"] == "executed"]
    out = Image.open(io.BytesIO(client.get("/view", params=saved[0]).content))
    assert out.size == (8, 16)  # upright, as ComfyUI's exif_transpose makes it
    # a broken file put in the input folder by hand (uploads refuse it): the run fails in one message
    folder = client.app.state.opensd.settings.data_dir / "inputs"
    (folder / "broken.png").write_bytes(PNG[:-40])
    errors = [m["data"] for m in _run_graph(client, "broken.png") if m["type"] == "execution_error"]
    assert errors and "truncated" in errors[0]["exception_message"] and errors[0]["node_id"] == "1", errors
    assert client.post("/upload/image", files={"image": ("ok.png", PNG, "image/png")}).status_code == 200


def test_an_image_over_the_size_limit_is_refused_in_megabytes():
    """The web UI shows this line after a too-big picture: its size and the limit in MB, not characters."""
    with pytest.raises(InvalidArgument) as refused:
        b64_bytes("A" * (MAX_ENCODED_CHARS + 4), "init_images[0]")
    assert str(refused.value) == ("init_images[0]: the image file is about 36.0 MB, more than the 36 MB one image may "
                                  "be: send a smaller file (fewer pixels, or JPEG/WebP)")
