"""Shared pieces of the workflow tests: a models folder with a tiny random checkpoint, a context
factory and ComfyUI's default text-to-image graph in API format."""
import copy
from dataclasses import replace
from pathlib import Path

import torch

from opensd.library.models_dir import ModelFolders
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.pipeline.pipeline import load
from opensd.workflows import ExecutionContext, OutputCache
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, ModelRef, NodeCall, VaeRef

# The graph ComfyUI's basic API example script submits, at test size.
DEFAULT_GRAPH = {
    "3": {"class_type": "KSampler", "inputs": {
        "cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0], "negative": ["7", 0],
        "positive": ["6", 0], "sampler_name": "euler", "scheduler": "normal", "seed": 8566257, "steps": 3}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "masterpiece (best quality:1.2) girl"},
          "_meta": {"title": "CLIP Text Encode (Prompt)"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "bad hands"}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def default_graph(**sampler_inputs) -> dict:
    g = copy.deepcopy(DEFAULT_GRAPH)
    g["3"]["inputs"].update(sampler_inputs)
    return g


def make_models(root: Path) -> ModelFolders:
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    (root / "loras").mkdir(exist_ok=True)
    write_random_checkpoint(root / "checkpoints" / "tiny.safetensors")
    return ModelFolders(root, include_builtin=False)


class Loader:
    """ctx.load_pipeline with a cache and a call count."""

    def __init__(self, folders: ModelFolders):
        self.folders, self.pipes, self.calls = folders, {}, 0

    def __call__(self, name: str):
        self.calls += 1
        if name not in self.pipes:
            self.pipes[name] = load(self.folders.resolve("checkpoints", name))
        return self.pipes[name]


def make_ctx(folders: ModelFolders, loader: Loader, tmp: Path, **kw) -> ExecutionContext:
    kw.setdefault("cache", OutputCache())
    return ExecutionContext(folders, loader, tmp / "output", tmp / "input", temp_dir=tmp / "temp", **kw)


def sampling_env(tmp: Path):
    """(a NodeCall, the tiny MODEL, a positive and a negative CONDITIONING) for calling sampling nodes."""
    folders = make_models(tmp / "models")
    ctx = make_ctx(folders, Loader(folders), tmp)
    pipe = ctx.load_pipeline("tiny.safetensors")
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, "a lighthouse", clip)[0], clip_text_encode(None, "fog", clip)[0]
    return NodeCall(ctx, "1", {}, lambda kind, data: None), ModelRef(pipe, "tiny"), pos, neg


def module_calls(modules, run) -> list:
    """(module, input, output) of every call of `modules` while run() runs (no grad)."""
    seen = []
    handles = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0].clone(), out.clone())))
               for m in modules]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def concat_model_refs(path: Path, in_channels: int, prompt: str):
    """(pipe, MODEL, VAE, positive, negative "fog") of a tiny model with `in_channels` UNet inputs
    (9: inpainting, 8: InstructPix2Pix edit), written to `path`."""
    cfg = replace(TINY, unet=replace(TINY.unet, in_channels=in_channels))
    pipe = load(write_random_checkpoint(path, cfg))
    clip = ClipRef(pipe, "tiny")
    pos, neg = clip_text_encode(None, prompt, clip)[0], clip_text_encode(None, "fog", clip)[0]
    return pipe, ModelRef(pipe, "tiny"), VaeRef(pipe, "tiny"), pos, neg
