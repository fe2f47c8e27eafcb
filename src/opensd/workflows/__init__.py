"""ComfyUI API-format node graphs ("prompts"): validation, execution with a per-node output
cache, and the node catalogue (``object_info``).

    from opensd.workflows import validate_prompt, execute, object_info, GraphError, ExecutionContext

A face over the pipeline: nothing below this package imports it.
"""
from __future__ import annotations

from . import (  # noqa: F401  (registers the nodes)
    nodes_alpha,
    nodes_batch,
    nodes_canny,
    nodes_cfg_rescaling,
    nodes_checkpoint_save,
    nodes_clip_vision,
    nodes_color_transfer,
    nodes_conditioning,
    nodes_controlnet,
    nodes_core,
    nodes_dataset_image,
    nodes_dataset_text,
    nodes_dit,
    nodes_easycache,
    nodes_fooocus_inpaint,
    nodes_gligen,
    nodes_guidance,
    nodes_guidance_cfg,
    nodes_image,
    nodes_image_filters,
    nodes_image_resize,
    nodes_image_ops,
    nodes_image_transform,
    nodes_inpaint_models,
    nodes_inpaint_ops,
    nodes_ip_adapter,
    nodes_ip_adapter_faceid,
    nodes_ip_adapter_faceid_presets,
    nodes_ip_adapter_presets,
    nodes_kontext,
    nodes_qwen_edit,
    nodes_latent,
    nodes_latent_files,
    nodes_latent_ops,
    nodes_loaders,
    nodes_logic,
    nodes_lora_extract,
    nodes_mask,
    nodes_math,
    nodes_preprocessors,
    nodes_model_merging,
    nodes_model_patch,
    nodes_model_patches,
    nodes_torch_compile,
    nodes_unclip,
    nodes_output,
    nodes_primitive,
    nodes_rebatch,
    nodes_regions,
    nodes_sampler_options,
    nodes_sampling_custom,
    nodes_sigmas,
    nodes_string,
    nodes_tagger,
    nodes_tiles,
    nodes_tooling,
    nodes_unet_attention,
    nodes_upscale,
    nodes_webcam,
)
from .autogrow import AUTOGROW, Autogrow
from .dynamic_combo import DYNAMIC_COMBO, DynamicCombo
from .executor import OutputCache, execute, validate_prompt
from .graph import check_prompt
from .types import NODES, SHOWN_EMPTY, Choices, ExecutionContext, GraphError, NodeError

__all__ = ["ExecutionContext", "GraphError", "NodeError", "OutputCache", "check_prompt", "execute",
           "object_info", "validate_prompt"]


def _spec_json(spec: tuple, ctx: ExecutionContext | None, pair: bool = False) -> list:
    """An input as object_info shows it: [type, options], options left out when there are none
    unless `pair` (an Autogrow template's or a DynamicCombo option's input, which ComfyUI always
    writes as a pair)."""
    kind, opts = spec[0], (dict(spec[1]) if len(spec) > 1 else {})
    if isinstance(kind, Autogrow):
        return [AUTOGROW, {**opts, "template": kind.json(lambda slot: _spec_json(slot, ctx, pair=True))}]
    if isinstance(kind, DynamicCombo):
        return [DYNAMIC_COMBO, {**opts, "options": kind.json(lambda spec: _spec_json(spec, ctx, pair=True))}]
    if isinstance(kind, Choices):
        kind = kind.values(ctx) or []
    elif isinstance(kind, (list, tuple)):
        kind = list(kind)
    return [kind, opts] if opts or pair or (len(spec) > 1 and spec[1] is SHOWN_EMPTY) else [kind]


def object_info(ctx: ExecutionContext | None = None, node_class: str | None = None) -> dict:
    """ComfyUI's ``GET /object_info`` (or ``/object_info/{node_class}``) for our nodes. Model and
    image lists come from ``ctx`` (its folders and inputs_dir); without it they are empty."""
    out = {}
    for name, node in NODES.items():
        if node_class is not None and name != node_class:
            continue
        inputs = {"required": {k: _spec_json(v, ctx) for k, v in node.required.items()}}
        if node.optional:
            inputs["optional"] = {k: _spec_json(v, ctx) for k, v in node.optional.items()}
        if node.hidden:
            inputs["hidden"] = dict(node.hidden)
        order = {"required": list(node.required)}
        if node.optional:
            order["optional"] = list(node.optional)
        out[name] = {
            "input": inputs,
            "input_order": order,
            "output": list(node.outputs),
            "output_is_list": list(node.output_is_list or (False,) * len(node.outputs)),
            "output_name": list(node.output_names or node.outputs),
            "name": name,
            "display_name": node.display_name or name,
            "description": node.description,
            "python_module": node.module,
            "category": node.category,
            "output_node": node.output_node,
        }
        if node.deprecated:
            out[name]["deprecated"] = True
        if node.experimental:
            out[name]["experimental"] = True
    return out
