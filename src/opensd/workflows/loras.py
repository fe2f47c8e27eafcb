"""Putting a node branch's LoRA stack onto the shared pipeline right before its weights are used.

MODEL and CLIP values carry the LoRAs LoraLoader nodes stacked on them (:class:`LoraEntry`);
the model holds one patched set at a time. For a MODEL only the UNet strengths count, for a CLIP
only the text-encoder strengths. The pipeline's own LoRA state is used (``set_loras`` plus
``apply_loras``, which patch through the pipeline's single ``LoraSet``), so the workflow and the
other faces never fight over the weights; after a run the pipeline gets back the LoRA list it
had before (:func:`release_all`).
"""
from __future__ import annotations

import weakref

from .types import LoraEntry

_BEFORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> its LoRA list before the run


def _apply(pipe, specs: list) -> None:
    pipe.set_loras(specs)
    pipe.apply_loras("")  # patch now: the nodes call the UNet / text encoder directly


def activate(pipe, loras: tuple[LoraEntry, ...], part: str = "unet") -> None:
    """Make ``pipe`` run with exactly ``loras`` (only their ``part`` strength: "unet" or "te")."""
    from ..adapters.lora import LoraSpec
    if pipe not in _BEFORE:
        _BEFORE[pipe] = pipe.lora_specs
    specs = [LoraSpec(e.path, e.unet if part == "unet" else 0.0, e.te if part == "te" else 0.0) for e in loras]
    _apply(pipe, specs)


def release_all() -> None:
    """Give every pipeline a run patched its LoRA list from before the run (base weights if none):
    the pipelines are shared with the other faces (server, CLI)."""
    for pipe, before in list(_BEFORE.items()):
        _apply(pipe, before)
    _BEFORE.clear()
