"""Putting a node branch's weights onto the shared pipeline right before they are used: its LoRA
stack and the models merged into it.

MODEL and CLIP values carry the LoRAs LoraLoader nodes stacked on them (:class:`LoraEntry`);
the model holds one patched set at a time. For a MODEL only the UNet strengths count, for a CLIP
only the text-encoder strengths. The pipeline's own LoRA state is used (``set_loras`` plus
``apply_loras``, which patch through the pipeline's single ``LoraSet``), so the workflow and the
other faces never fight over the weights; after a run the pipeline gets back the LoRA list it
had before (:func:`release_all`).

A merge node's value carries a :class:`MergeEntry` (ComfyUI's add_patches of another model's
whole weights): each weight of the branch before the merge times one strength plus the other
branch's times another, both branches as a whole (their own merges and LoRAs in, as ComfyUI's
nested patches are); the LoRAs stacked after the merge go on top. The merged weights are written
into the network (or text encoders) with the base kept aside, and put back by the next branch
that has no merge, or at the end of the run.

A MODEL may also carry weight patches (Fooocus inpaint's differences): added after its merge,
before its LoRAs, with the base weights kept aside and put back as a merge's are.

A CLIP value may also carry CLIPAttentionMultiply's factors: hooks on the text encoders
(clip_patches.py), installed by the same activation and removed by the next or at the end of the run.
"""
from __future__ import annotations

import weakref

import torch

from ..errors import InvalidArgument
from .clip_patches import attention_hooks
from .types import MergeEntry

_MERGED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> {part: {name: base weight}}
_WEIGHTS: dict = {}  # (MergeEntry, part) -> its merged weights, for the rest of the run
_SKIPPED = (".position_ids", ".logit_scale")  # a CLIP merge leaves these, as ComfyUI's does

_BEFORE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> its LoRA list before the run
_HOOKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # pipe -> its text encoders' hook handles


def _apply(pipe, specs: list) -> None:
    pipe.set_loras(specs)
    pipe.apply_loras("")  # patch now: the nodes call the UNet / text encoder directly


def activate(ref, part: str = "unet") -> None:
    """Make ``ref.pipe``'s network ("unet") or text encoders ("te") hold the weights of the MODEL
    or CLIP ``ref``: its merge if it has one, then its LoRAs (only their ``part`` strength)."""
    from ..adapters.lora import LoraSpec
    pipe = ref.pipe
    if pipe not in _BEFORE:
        _BEFORE[pipe] = pipe.lora_specs
    merged = None if ref.merge is None else _merged(ref.merge, part)  # may repatch pipelines meanwhile
    _unmerge(pipe, part)
    if merged is not None:
        _apply(pipe, [])  # LoRAs off: the weights kept aside must be the base ones
        params = _params(pipe, part)
        _MERGED.setdefault(pipe, {})[part] = {name: params[name].detach().to("cpu", copy=True) for name in merged}
        with torch.no_grad():
            for name, weight in merged.items():
                params[name].copy_(weight)
        _changed(pipe, part)
    if part == "unet" and getattr(ref, "weight_patches", ()):
        _add_weight_patches(ref)
    specs = [LoraSpec(e.path, e.unet if part == "unet" else 0.0, e.te if part == "te" else 0.0) for e in ref.loras]
    _apply(pipe, specs)
    if part == "te":
        _unhook(pipe)
        if getattr(ref, "attention", None) is not None:
            _HOOKS[pipe] = attention_hooks(pipe.family.text_modules(pipe.model), ref.attention)


def _add_weight_patches(ref) -> None:
    """Add a MODEL's weight patches (ModelRef.weight_patches) to its network, LoRAs off, keeping
    each changed weight's base aside with the merge's (put back by _unmerge)."""
    pipe = ref.pipe
    _apply(pipe, [])
    _refuse_stored(ref, "unet", "patched")
    params = _params(pipe, "unet")
    kept = _MERGED.setdefault(pipe, {}).setdefault("unet", {})
    for patch in ref.weight_patches:
        patch.check(params)
    with torch.no_grad():
        for patch in ref.weight_patches:
            for name, delta in patch.deltas(params):
                param = params[name]
                if name not in kept:
                    kept[name] = param.detach().to("cpu", copy=True)
                param.copy_((param.detach().float() + delta.to(param.device)).to(param.dtype))


_WHY = {"merged": "a merge gives every layer a new weight, which would have to be kept in full precision",
        "patched": "this patch's weight differences would have to be added into every layer in full precision"}


def _refuse_stored(ref, part: str, verb: str) -> None:
    """InvalidArgument where the network ("unet") or text encoders ("te") of `ref` keep Linear
    weights packed (float8 or GGUF blocks): a merge or a whole-weight patch would unpack them all
    for good. LoRAs are not refused: they ride along as patches (models.stored_weights.WeightPatch)."""
    from ..models.stored_weights import HALF, StoredLinear
    family, model = ref.pipe.family, ref.pipe.model
    modules = [family.network(model)] if part == "unet" else family.text_modules(model)
    packed = (m for module in modules for m in module.modules() if isinstance(m, StoredLinear))
    if any(m.weight.dtype not in HALF for m in packed):  # 16-bit ones are float weights: merged in place
        raise InvalidArgument(f"{'model' if part == 'unet' else 'clip'}: {ref.name} keeps its weights stored as "
                              f"float8/GGUF blocks, unpacked one layer at a time, so it cannot be {verb}: "
                              f"{_WHY[verb]}, taking back the memory the stored format saves (use a float "
                              "safetensors copy of the model; LoRAs do work on it as it is)")


def _unhook(pipe) -> None:
    for handle in _HOOKS.pop(pipe, []):
        handle.remove()


def _params(pipe, part: str) -> dict:
    from ..models.stored_weights import float_weights
    if part == "unet":
        return float_weights(pipe.family.network(pipe.model))
    return {f"{i}.{name}": p for i, module in enumerate(pipe.family.text_modules(pipe.model))
            for name, p in float_weights(module).items()}


def _changed(pipe, part: str) -> None:
    if part == "te":  # encodings the pipeline cached came from other text-encoder weights
        pipe.forget_encodings()


def _unmerge(pipe, part: str) -> None:
    """The base weights back where merged ones were (LoRAs off first: they were applied on top)."""
    base = _MERGED.get(pipe, {}).pop(part, None)
    if base is None:
        return
    _apply(pipe, [])
    params = _params(pipe, part)
    with torch.no_grad():
        for name, weight in base.items():
            params[name].copy_(weight)
    _changed(pipe, part)


def _snapshot(ref, part: str) -> dict[str, torch.Tensor]:
    activate(ref, part)
    _refuse_stored(ref, part, "merged")
    return {name: p.detach().to("cpu", copy=True) for name, p in _params(ref.pipe, part).items()}


def _strengths(entry: MergeEntry, name: str) -> tuple[float, float]:
    """(self, other) strengths for weight `name`: the entry's, or for a block merge (an entry with
    `blocks`, (prefix, ratio) pairs) the ratio of the longest prefix the name starts with (the
    first pair's when none does) and 1 - ratio, as ComfyUI's ModelMergeBlocks picks them."""
    blocks = getattr(entry, "blocks", ())
    if not blocks:
        return entry.self_strength, entry.other_strength
    ratio, longest = blocks[0][1], 0
    for prefix, value in blocks:
        if name.startswith(prefix) and len(prefix) > longest:
            ratio, longest = value, len(prefix)
    return ratio, 1.0 - ratio


def _merged(entry: MergeEntry, part: str) -> dict[str, torch.Tensor]:
    """w * self_strength + other's w * other_strength for each weight both branches have (others
    stay as they are), in float32, stored in the weight's dtype."""
    key = (entry, part)
    if key not in _WEIGHTS:
        mine, theirs = _snapshot(entry.base, part), _snapshot(entry.other, part)
        what = "model2" if part == "unet" else "clip2"
        for name, weight in mine.items():
            other = theirs.get(name)
            if other is None or (part == "te" and name.endswith(_SKIPPED)):
                continue
            if other.shape != weight.shape:
                raise InvalidArgument(f"{what}: {entry.other.name} does not fit {entry.base.name} "
                                      f"({name} is {tuple(other.shape)}, not {tuple(weight.shape)})")
            own, theirs_strength = _strengths(entry, name)
            mine[name] = (weight.float() * own + other.float() * theirs_strength).to(weight.dtype)
        _WEIGHTS[key] = mine
    return _WEIGHTS[key]


def release_all() -> None:
    """Give every pipeline a run patched its base weights back and the LoRA list from before the
    run (base weights if none): the pipelines are shared with the other faces (server, CLI)."""
    for pipe in list(_MERGED.keys()):
        for part in list(_MERGED[pipe]):
            _unmerge(pipe, part)
    _MERGED.clear()
    _WEIGHTS.clear()
    for pipe in list(_HOOKS.keys()):
        _unhook(pipe)
    for pipe, before in list(_BEFORE.items()):
        _apply(pipe, before)
    _BEFORE.clear()
