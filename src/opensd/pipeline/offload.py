"""Low-memory modes for GPUs, in the spirit of A1111's --medvram / --lowvram and ComfyUI's offload.

- normal: every part of the model stays on the device.
- medvram: the text encoders, the UNet and the VAE take turns: a part moves to the device when it
  is called and the part used before it moves back to the CPU.
- lowvram: as medvram, and the UNet itself runs block by block: each block moves in just before it
  runs and back out right after, so only one block's weights are on the device at a time.
- medvram-sdxl (A1111's --medvram-sdxl): medvram for SDXL models, auto for others.
- auto: from the device's free memory (free_memory): normal when the whole model fits with room for
  the largest part's activations, medvram when each part fits with room for its own, lowvram
  otherwise (activation_reserve: measured, scaled to the model's native size). Never offloads on a CPU.

Moves happen in forward pre-hooks, so every caller (pipeline, ControlNet, workflows) is covered
without knowing. `Offload.log` records each move for tests and the GPU check.

The weights' home stays in storage (pinned on CUDA): a move in copies them to the device without
waiting (the copies queue on the compute stream), a move out drops the device copy and points the
tensor home again, copying back only what changed while it was in (a LoRA patched in place). The
first version copied both ways and waited on every move: lowvram ran SD 1.5 at 2 it/s on an H200.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..families import family_of
from .memory_modes import check
from .peak_memory import system_ram

GIB = 1 << 30
# Activation memory per 512x512 pixels in a 2-byte dtype, measured on an H200 with
# bench/gpu_check.py (docs/benchmarks.md): the VAE decode is the peak, 0.66 GiB (SD 1.5 at 512x512
# peaked at 2.65 GiB with 1.99 of weights; SDXL at 1024x1024 at 8.94 with 6.46); a CFG step of the
# UNet about 0.15 (medvram's peak, less the UNet's weights). Reserves add a quarter, and 256 MiB for
# the CUDA workspace and fragmentation.
VAE_DECODE_PER_512 = 0.66 * GIB
NETWORK_STEP_PER_512 = 0.15 * GIB
SLACK = 256 << 20


def free_memory(device: torch.device) -> int:
    """Bytes free on a CUDA device now."""
    return torch.cuda.mem_get_info(device)[0]


def module_bytes(*modules: nn.Module) -> int:
    """Weights' bytes, buffers included (float8/GGUF-stored Linears keep their weights there)."""
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def parts(model) -> dict[str, list[nn.Module]]:
    """The parts that take turns in medvram: name -> the modules whose calls bring the part in
    (the VAE is called through encode/decode, so its submodules carry the hooks)."""
    family = family_of(model.config)
    vae = model.vae
    entries = [m for m in (vae.encoder, vae.decoder, vae.quant_conv, vae.post_quant_conv) if m is not None]
    return {"text": family.text_modules(model), "unet": [family.network(model)], "vae": entries}


def choose_mode(mode: str, device: torch.device, model) -> str:
    """The memory mode for `mode` ("auto" or one of memory_modes.MODES) on `device` for `model`."""
    if check(mode) == "medvram-sdxl":
        mode = "medvram" if getattr(model.config, "family", None) in ("sdxl", "sdxl_refiner") else "auto"
    if mode != "auto":
        return mode
    if device.type != "cuda":
        return "normal"
    free = free_memory(device)
    reserve = activation_reserve(model)
    if module_bytes(model) + max(reserve.values()) <= free:
        return "normal"
    family = family_of(model.config)
    weights = {"text": module_bytes(*family.text_modules(model)), "network": module_bytes(family.network(model)),
               "vae": module_bytes(model.vae)}
    return "medvram" if all(weights[k] + reserve[k] <= free for k in weights) else "lowvram"


def activation_reserve(model) -> dict[str, int]:
    """Device bytes to keep free for each part's activations at the model's native size (one image,
    CFG): "text", "network" (the UNet or transformer) and "vae"."""
    pixels = getattr(model.config, "resolution", 1024) ** 2 / 512 ** 2
    vae_bytes = next((p.element_size() for p in model.vae.parameters()), 2)
    return {"text": SLACK, "network": int(1.25 * NETWORK_STEP_PER_512 * pixels) + SLACK,
            "vae": int(1.25 * VAE_DECODE_PER_512 * pixels * vae_bytes / 2) + SLACK}


class Offload:
    """Installs the hooks of `mode` ("medvram" or "lowvram") on `model`, whose weights start in
    `storage`; compute happens on `device`."""

    def __init__(self, model, device: torch.device, mode: str, storage: torch.device = torch.device("cpu")):
        if mode not in ("medvram", "lowvram"):
            raise ValueError(f"Offload is for medvram/lowvram, not {mode!r}")
        self.device, self.storage, self.mode = torch.device(device), torch.device(storage), mode
        self.model = model.to(storage)
        if self.device.type == "cuda" and self.storage.type == "cpu":
            _pin(self.model)
        self.log: list[tuple[str, str]] = []  # (part or block name, "in" / "out")
        self._home: dict[torch.Tensor, tuple[torch.Tensor, int]] = {}  # tensor -> (its storage copy, version)
        self.resident: str | None = None
        self._handles = []
        self._parts = parts(model)
        # lowvram: the network's blocks one at a time, where its family lists them (else it moves whole)
        self._blocks = family_of(model.config).blocks(model) if mode == "lowvram" else None
        for name, modules in self._parts.items():
            if name == "unet" and self._blocks is not None:
                for i, block in enumerate(self._blocks):
                    self._hook(block, pre=partial(self._block_in, f"unet.{i}", block),
                               post=partial(self._block_out, f"unet.{i}", block))
                self._hook(modules[0], pre=partial(self._part_in, "unet"))
                continue
            for m in modules:
                self._hook(m, pre=partial(self._part_in, name))

    def _hook(self, module: nn.Module, pre, post=None) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda _m, _args: pre()))
        if post is not None:
            self._handles.append(module.register_forward_hook(lambda _m, _args, _out: post()))

    def _move(self, name: str, modules, where: str) -> None:
        for t in {t: None for m in modules for t in _tensors(m)}:  # once each, shared ones too
            if where == "in":
                if t not in self._home and (copy := _to_device(home := t.data, self.device)) is not home:
                    t.data = copy
                    self._home[t] = (home, t._version)
            elif (kept := self._home.pop(t, None)) is not None:
                home, version = kept
                if t._version != version:  # changed in place while in: keep the change
                    home.copy_(t.data)
                t.data = home
            elif t.device != self.storage:  # made on the device (not moved in by us)
                t.data = t.data.to(self.storage)
        self.log.append((name, where))

    def _part_in(self, name: str) -> None:
        if self.resident == name:
            return
        if self.resident is not None:
            self._move(self.resident, self._part_modules(self.resident), "out")
        # lowvram keeps the UNet's blocks in storage; its blocks come in one at a time
        self._move(name, self._part_modules(name), "in")
        self.resident = name

    def _part_modules(self, name: str) -> list[nn.Module]:
        if name == "unet" and self._blocks is not None:
            return []
        return [self.model.vae] if name == "vae" else self._parts[name]

    def _block_in(self, name: str, block: nn.Module) -> None:
        self._move(name, [block], "in")

    def _block_out(self, name: str, block: nn.Module) -> None:
        self._move(name, [block], "out")

    def remove(self) -> None:
        """Take the hooks off and put the whole model on the device (switching to normal mode)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._home.clear()
        self.model.to(self.device)
        self.resident = None


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The device copy of a home tensor (`t` itself where it already is on `device`)."""
    return t.to(device, non_blocking=True)


def _tensors(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def _pin(model: nn.Module) -> None:
    """Page-locked storage, so copies to the device run without the CPU waiting; where the system
    refuses to lock that much memory, the copies still work, only slower. Pinning copies weights that
    lie memory-mapped in their file into RAM, so only a model under half the available RAM is pinned
    (4 GiB where that cannot be read)."""
    found = system_ram()
    if module_bytes(model) > (found[1] // 2 if found is not None else 4 * GIB):
        return
    try:
        for t in {t: None for t in _tensors(model)}:
            if not t.is_pinned():
                t.data = t.data.pin_memory()
    except RuntimeError:
        pass


def set_memory_mode(pipe, mode: str) -> None:
    """Put `pipe`'s model in memory mode `mode` ("auto" chooses); `pipe.memory` says which,
    `pipe.offload` holds the hooks (None in normal mode)."""
    chosen = choose_mode(mode, pipe.device, pipe.model)
    if getattr(pipe, "offload", None) is not None:
        pipe.offload.remove()
    pipe.offload = None if chosen == "normal" else Offload(pipe.model, pipe.device, chosen)
    if chosen == "normal":
        pipe.model.to(pipe.device)
    pipe.memory = chosen
