"""Test helpers for the server tests: a tiny models folder and a live uvicorn server in a thread."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Self

import uvicorn

from opensd.library.synthetic import write_random_checkpoint
from opensd.server.app import create_app
from opensd.server.settings import Settings

BASE = "http://127.0.0.1:7860"
COMFY_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 2, "cfg": 7.0, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                               "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "opensd-emoji.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a smiling cat", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def models_dir(root: Path) -> Path:
    """An A1111-layout models folder with one tiny random checkpoint (the built-in one is listed too)."""
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True, exist_ok=True)
    if not (ckpts / "tiny.safetensors").exists():
        write_random_checkpoint(ckpts / "tiny.safetensors")
    (root / "models" / "Lora").mkdir(exist_ok=True)
    return root / "models"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = settings.port = free_port()
        self.app = create_app(settings)
        self.state = self.app.state.opensd
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def write_lora(path):
    """A small kohya-format LoRA over the tiny model's text-encoder and attention linears."""
    import torch

    from opensd.adapters.lora_keys import lora_modules
    from opensd.checkpoints.files import save_safetensors
    from opensd.library.synthetic import TINY
    from opensd.models.stable_diffusion import StableDiffusion

    with torch.device("meta"):
        model = StableDiffusion(TINY)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for m in lora_modules(model):
        if m.component == "unet" and ".attentions." not in m.peft:
            continue
        w = m.module.weight
        sd[f"{m.kohya}.lora_down.weight"] = torch.randn(4, *w.shape[1:], generator=g) * 0.3
        sd[f"{m.kohya}.lora_up.weight"] = torch.randn(w.shape[0], 4, *([1] * (w.ndim - 2)), generator=g) * 0.3
        sd[f"{m.kohya}.alpha"] = torch.tensor(4.0)
    save_safetensors(sd, path)
