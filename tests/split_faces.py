"""What the faces tests of the DiT families kept as split files share (Z-Image, FLUX.2 [klein]): the
pipeline's image, `opensd generate -m <network file>`, the A1111 API's txt2img with the network
copied into checkpoints/ (the API lists checkpoints/, not diffusion_models/), and a ComfyUI graph's
saved image."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from opensd.cli import main
from opensd.server.app import create_app
from opensd.server.settings import Settings


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def want(pipe, prompt, steps, seed, size, cfg=1.0, negative=""):
    return pipe.txt2img(prompt, negative, steps=steps, seed=seed, width=size, height=size, cfg=cfg,
                        sampler="euler", scheduler="simple")[0]


def cli_image(model_file, out, prompt, steps, seed, size, *extra: str) -> Image.Image:
    """`extra`: more command-line arguments."""
    assert main(["generate", prompt, "-m", str(model_file), "--steps", str(steps), "--seed", str(seed),
                 "--width", str(size), "--height", str(size), "--sampler", "euler", "--precision", "fp32",
                 "--device", "cpu", "-o", str(out), *extra]) == 0
    return Image.open(out)


def a1111_txt2img(models, unet: str, outputs, **request) -> tuple[Image.Image, str]:
    """(image, infotext) of /sdapi/v1/txt2img with the network `unet` of diffusion_models/ as the
    checkpoint."""
    (models / "checkpoints").mkdir(exist_ok=True)
    shutil.copyfile(models / "diffusion_models" / unet, models / "checkpoints" / unet)
    request = {**request, "sampler_name": "Euler", "scheduler": "Simple", "override_settings": {"sd_model_checkpoint": unet}}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=outputs)), base_url=BASE) as client:
        r = client.post("/sdapi/v1/txt2img", json=request)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    return image, json.loads(r.json()["info"])["infotexts"][0]


def graph_image(ctx, graph, execute, save: str = "9") -> np.ndarray:
    out = execute(graph, ctx)
    image = out[save]["images"][0]
    return np.asarray(Image.open(ctx.outputs_dir / image["subfolder"] / image["filename"])).astype(int)


def split_env(tmp, parts, write_folder, write_split_files):
    """(models folder of split files, the pipeline of the same weights from a diffusers folder, tmp)."""
    from opensd.pipeline.pipeline import load
    pipe = load(write_folder(tmp / "folder", parts), precision="fp32", device="cpu")
    write_split_files(tmp / "models", pipe.model, parts["tokenizer"])
    return tmp / "models", pipe, tmp
