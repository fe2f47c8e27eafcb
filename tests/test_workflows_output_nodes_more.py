"""SaveAnimatedPNG and MaskPreview (ComfyUI's comfy_extras.nodes_images / nodes_mask): the APNG's
frames, timing and "comf" metadata chunks read back, the mask preview's grey pixels."""
import json
import zlib

import numpy as np
import torch
from PIL import Image

from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, execute


def _ctx(tmp_path):
    return ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                            temp_dir=tmp_path / "temp", extra_pnginfo={"workflow": {"nodes": [1]}})


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert zlib.crc32(kind + body) == int.from_bytes(data[at + 8 + length:at + 12 + length], "big")
        out.append((kind, body))
        at += 12 + length
    return out


def test_save_animated_png_writes_frames_and_comf_chunks(tmp_path):
    graph = {"a": {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 4, "batch_size": 1, "color": 0xFF0000}},
             "b": {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 4, "batch_size": 1, "color": 0x0000FF}},
             "c": {"class_type": "EmptyImage", "inputs": {"width": 6, "height": 4, "batch_size": 1, "color": 0x00FF00}},
             "j": {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}},
             "k": {"class_type": "ImageBatch", "inputs": {"image1": ["j", 0], "image2": ["c", 0]}},
             "s": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["k", 0], "filename_prefix": "anim/x",
                                                               "fps": 4.0, "compress_level": 9}}}
    ui = execute(graph, _ctx(tmp_path))["s"]
    assert list(ui["animated"]) == [True]
    path = tmp_path / "out" / ui["images"][0]["subfolder"] / ui["images"][0]["filename"]
    assert path.name == "x_00001_.png"
    with Image.open(path) as im:
        assert im.n_frames == 3 and im.info["duration"] == 250
        frames = []
        for i in range(3):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB"))[0, 0].tolist())
    assert frames == [[255, 0, 0], [0, 0, 255], [0, 255, 0]]
    chunks = _chunks(path.read_bytes())
    kinds = [k for k, _ in chunks]
    comf = [body for kind, body in chunks if kind == b"comf"]
    assert kinds.index(b"comf") > max(i for i, k in enumerate(kinds) if k in (b"IDAT", b"fdAT"))  # after the image
    key, value = comf[0].split(b"\0", 1)
    assert key == b"prompt" and json.loads(value) == graph
    assert comf[1] == b"workflow\0" + json.dumps({"nodes": [1]}).encode()


def test_mask_preview_shows_the_mask_in_grey(tmp_path):
    graph = {"m": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 5, "height": 3}},
             "p": {"class_type": "MaskPreview", "inputs": {"mask": ["m", 0]}}}
    shown = execute(graph, _ctx(tmp_path))["p"]["images"]
    assert shown[0]["type"] == "temp"
    with Image.open(tmp_path / "temp" / shown[0]["subfolder"] / shown[0]["filename"]) as im:
        assert im.size == (5, 3) and im.convert("RGB").getpixel((2, 1)) == (127, 127, 127)
