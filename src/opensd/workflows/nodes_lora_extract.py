"""LoraSave (ComfyUI comfy_extras.nodes_lora_extract): a LoRA file made from model differences.

``model_diff`` is a MODEL holding differences (ModelMergeSubtract's output: tuned - base, see
nodes_model_merging.py), ``text_encoder_diff`` a CLIP holding them (CLIPMergeSubtract's). Every
Linear/Conv2d layer that changed becomes a rank-``rank`` LoRA (truncated SVD, clamped to the 0.99
quantile, as ComfyUI extracts) or, with ``lora_type`` full_diff, a whole-weight ``.diff``;
``bias_diff`` adds the changed biases (``.diff_b``). The math is library.lora_extract's; the file
uses the kohya names (``lora_unet_…``, ``lora_te…``) that A1111, ComfyUI, kohya and diffusers all
read (ComfyUI itself writes ``diffusion_model.…`` / ``text_encoders.…`` names, which only it reads).
Norm-layer changes are not written. Saved like CheckpointSave: numbered
(loras/ComfyUI_extracted_lora_00001_.safetensors) inside the output folder only. SD1/SD2/SDXL."""
from __future__ import annotations

from ..errors import InvalidArgument
from ..library.lora_extract import FAMILIES, LORA_TYPES, extract_lora
from .loras import activate
from .nodes_image import check_prefix, save_numbered_safetensors, save_path
from .types import NodeDef, register


def _extract(ref, part: str, param: str, **options):
    model = ref.pipe.model
    family = getattr(getattr(model, "config", None), "family", None)
    if family not in FAMILIES:
        raise InvalidArgument(f"{param}: LoraSave supports SD1, SD2 and SDXL models; {ref.name} is {family}")
    activate(ref, part=part)  # the branch's weights (the merge's differences) into the network
    return extract_lora(None, model, parts=(part,), layers="all", min_diff=0.0, **options)


def lora_save(call, filename_prefix, rank, lora_type, bias_diff, model_diff=None, text_encoder_diff=None):
    if model_diff is None and text_encoder_diff is None:
        return {"result": ()}  # nothing to save, as ComfyUI
    options = dict(rank=int(rank), conv_rank=int(rank), lora_type=lora_type, bias_diff=bool(bias_diff))
    tensors, metadata = {}, {}
    for ref, part, param in ((model_diff, "unet", "model_diff"), (text_encoder_diff, "te", "text_encoder_diff")):
        if ref is not None:
            ext = _extract(ref, part, param, **options)
            tensors |= ext.tensors
            metadata = ext.metadata
    if not tensors:
        param = "model_diff" if model_diff is not None else "text_encoder_diff"
        raise InvalidArgument(f"{param}: no layer differs (connect ModelMergeSubtract / CLIPMergeSubtract outputs)")
    target, _, name, counter = save_path(call.ctx.outputs_dir, filename_prefix, 0, 0)
    save_numbered_safetensors(target, name, counter, ".safetensors", tensors, metadata)
    return {"result": ()}


register(NodeDef(
    "LoraSave", lora_save,
    {"filename_prefix": ("STRING", {"default": "loras/ComfyUI_extracted_lora"}),
     "rank": ("INT", {"default": 8, "min": 1, "max": 4096, "step": 1}),
     "lora_type": (list(LORA_TYPES), {}),
     "bias_diff": ("BOOLEAN", {"default": True})},
    optional={"model_diff": ("MODEL", {"tooltip": "The ModelSubtract output to be converted to a lora."}),
              "text_encoder_diff": ("CLIP", {"tooltip": "The CLIPSubtract output to be converted to a lora."})},
    category="_for_testing", display_name="Extract and Save Lora", output_node=True, experimental=True,
    module="comfy_extras.nodes_lora_extract", check=check_prefix))
