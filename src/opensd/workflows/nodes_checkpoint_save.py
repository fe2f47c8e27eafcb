"""CheckpointSave, CLIPSave, ModelSave and VAESave (ComfyUI comfy_extras.nodes_model_merging).

CheckpointSave: a MODEL, a CLIP and a VAE written as
one original-layout checkpoint -- model.diffusion_model.*, the text encoders (cond_stage_model.* or
SDXL's conditioner.*), first_stage_model.* -- each branch's LoRAs (and CLIPAttentionMultiply's
factors) baked in, in its weights' dtype.
Named as SaveImage names its files (checkpoints/ComfyUI_00001_.safetensors), inside the output
folder only, with ComfyUI's metadata: modelspec for SDXL base and refiner, the prediction key, the
prompt and the workflow; v-prediction models get the "v_pred" marker tensor (and "ztsnr" on a
zero-terminal-SNR schedule) and continuous ones (ModelSamplingContinuousEDM/V v_prediction, a
CosXL checkpoint's own) their sigma bounds, which loaders read back (checkpoints/markers.py).

The three parts must fit one model: the CLIP's and the VAE's tensors the names and shapes the
MODEL's checkpoint has for them. Stable Diffusion 1.x/2.x/XL models only. ModelSave writes the
MODEL's part alone the same way (diffusion_models/ComfyUI_00001_.safetensors); VAESave the VAE's
tensors under their own names (vae/ComfyUI_vae_00001_.safetensors) with the prompt and workflow;
CLIPSave each text encoder in transformers' layout (clip/ComfyUI_clip_l_00001_.safetensors, _clip_g,
_clip_h), as CLIPLoader and DualCLIPLoader read them."""
from __future__ import annotations

import json

import torch

from ..checkpoints.keymap_clip import clip_to_transformers
from ..errors import InvalidArgument
from ..sampling.model_sampling import ContinuousSampling
from .clip_patches import scaled_tensors
from .loras import activate
from .nodes_image import SAVE_HIDDEN, check_prefix, save_numbered_safetensors, save_path
from .types import NodeDef, register

PARTS = {"unet": ("model.",), "te": ("cond_stage_model.", "conditioner."), "vae": ("first_stage_model.",)}
_LABELS = {"unet": "diffusion model", "te": "text encoder", "vae": "VAE"}
ARCHITECTURES = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


def _tensors(pipe, part: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in pipe.model.state_dict().items() if k.startswith(PARTS[part])}


def _copy(ref, part: str, param: str, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part's tensors of `ref`'s pipeline as they are now, copied (the pipeline is shared and
    the next part may repatch it), after checking they are there and fit the model."""
    found = _tensors(ref.pipe, part)
    if not found or any(t.is_meta for t in found.values()):
        raise InvalidArgument(f"{param}: {ref.name} holds no {_LABELS[part]} weights to save")
    if {k: tuple(t.shape) for k, t in found.items()} != {k: tuple(t.shape) for k, t in expected.items()}:
        raise InvalidArgument(f"{param}: the {_LABELS[part]} of {ref.name} does not fit the model's checkpoint layout")
    return {k: t.detach().to("cpu", copy=True).contiguous() for k, t in found.items()}


def _extra(model, pipe) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """ComfyUI's prediction metadata and marker tensors."""
    metadata, extra = {}, {}
    cfg, sampling = pipe.config, model.sampling
    own_edm = getattr(cfg, "edm", None)  # a CosXL checkpoint as loaded: its own continuous sampling
    if isinstance(sampling, ContinuousSampling) and sampling.prediction == "v":
        bounds = (sampling.sigma_max, sampling.sigma_min)
    elif sampling is None and own_edm is not None and cfg.prediction == "v":
        bounds = (own_edm.sigma_max, own_edm.sigma_min)
    else:
        bounds = None
    if bounds is not None:
        extra["edm_vpred.sigma_max"] = torch.tensor(bounds[0]).float()
        extra["edm_vpred.sigma_min"] = torch.tensor(bounds[1]).float()
    if cfg.vae.latents_mean:  # Playground v2.5: ComfyUI reads its EDM type and latent format off these two
        extra["edm_mean"] = torch.tensor(cfg.vae.latents_mean).float().view(1, -1, 1, 1)
        extra["edm_std"] = torch.tensor(cfg.vae.latents_std).float().view(1, -1, 1, 1)
    if own_edm is not None:  # ComfyUI's type for it is EDM (v-prediction): neither key below
        return metadata, extra
    if cfg.prediction == "eps":
        metadata["modelspec.predict_key"] = "epsilon"
    elif cfg.prediction == "v":
        metadata["modelspec.predict_key"] = "v"
        extra["v_pred"] = torch.tensor([])
        if getattr(sampling, "zsnr", False) if sampling is not None else getattr(cfg, "zsnr", False):
            extra["ztsnr"] = torch.tensor([])
    return metadata, extra


def _run_metadata(prompt, extra_pnginfo) -> dict[str, str]:
    """The prompt and the workflow as JSON strings, as ComfyUI's save nodes store them."""
    return {"prompt": "" if prompt is None else json.dumps(prompt),
            **{key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()}}


def checkpoint_save(call, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
    """clip and vae None: the diffusion model alone (ModelSave), as ComfyUI's save_checkpoint."""
    pipe = model.pipe
    pipe.family.require("checkpoint_save", "model")
    target, sub, name, counter = save_path(call.ctx.outputs_dir, filename_prefix, 0, 0)
    activate(model)
    tensors = _copy(model, "unet", "model", _tensors(pipe, "unet"))
    if clip is not None:
        activate(clip, part="te")
        te = _copy(clip, "te", "clip", _tensors(pipe, "te"))
        tensors |= te if clip.attention is None else scaled_tensors(te, clip.attention)  # CLIPAttentionMultiply
    if vae is not None:
        tensors |= _copy(vae, "vae", "vae", _tensors(pipe, "vae"))
    metadata, extra = _extra(model, pipe)
    if pipe.config.family in ARCHITECTURES:
        metadata |= {"modelspec.architecture": ARCHITECTURES[pipe.config.family], "modelspec.sai_model_spec": "1.0.0",
                     "modelspec.implementation": "sgm", "modelspec.title": f"{name} {counter}"}
    save_numbered_safetensors(target, name, counter, ".safetensors", tensors | extra,
                              metadata | _run_metadata(prompt, extra_pnginfo))
    return {"result": ()}


def model_save(call, model, filename_prefix, prompt=None, extra_pnginfo=None):
    return checkpoint_save(call, model, None, None, filename_prefix, prompt, extra_pnginfo)


def vae_save(call, vae, filename_prefix, prompt=None, extra_pnginfo=None):
    """The VAE's own tensors (first_stage_model.* without the prefix: a separate VAE file's layout)."""
    target, sub, name, counter = save_path(call.ctx.outputs_dir, filename_prefix, 0, 0)
    prefix = PARTS["vae"][0]
    tensors = {k.removeprefix(prefix): t for k, t in _copy(vae, "vae", "vae", _tensors(vae.pipe, "vae")).items()}
    save_numbered_safetensors(target, name, counter, ".safetensors", tensors, _run_metadata(prompt, extra_pnginfo))
    return {"result": ()}


# the text encoders of each family's checkpoint: (ComfyUI's name for it, where its tensors start)
_ENCODERS = {"sd1": (("clip_l", "cond_stage_model."),), "small": (("clip_l", "cond_stage_model."),),
             "sd2": (("clip_h", "cond_stage_model."),),
             "sdxl": (("clip_l", "conditioner.embedders.0."), ("clip_g", "conditioner.embedders.1.")),
             "sdxl_refiner": (("clip_g", "conditioner.embedders.0."),)}


def clip_save(call, clip, filename_prefix, prompt=None, extra_pnginfo=None):
    """Each text encoder of the CLIP, LoRAs and merges baked in, as a file of its own in transformers'
    layout (what CLIPLoader reads), named ``<prefix>_<clip_l|clip_g|clip_h>_00001_.safetensors``."""
    pipe = clip.pipe
    encoders = _ENCODERS.get(pipe.config.family)
    if encoders is None:
        raise InvalidArgument(f"clip: CLIPSave writes the text encoders of SD 1.x/2.x/XL models; this CLIP is "
                              f"{pipe.family.label}'s")
    activate(clip, part="te")
    te = _copy(clip, "te", "clip", _tensors(pipe, "te"))
    te = te if clip.attention is None else scaled_tensors(te, clip.attention)
    metadata = {"format": "pt"} | _run_metadata(prompt, extra_pnginfo)
    for (label, start), cfg in zip(encoders, pipe.config.text_encoders):
        inner = start + ("transformer." if cfg.naming == "hf" else "model.")
        tensors = clip_to_transformers({k[len(inner):]: v for k, v in te.items() if k.startswith(inner)}, cfg)
        target, sub, name, counter = save_path(call.ctx.outputs_dir, f"{filename_prefix}_{label}", 0, 0)
        save_numbered_safetensors(target, name, counter, ".safetensors", tensors, metadata)
    return {"result": ()}


register(NodeDef(
    "CheckpointSave", checkpoint_save,
    {"model": ("MODEL", {}), "clip": ("CLIP", {}), "vae": ("VAE", {}),
     "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"})},
    hidden=SAVE_HIDDEN, category="advanced/model_merging", display_name="Save Checkpoint", output_node=True,
    module="comfy_extras.nodes_model_merging", check=check_prefix))
for _name, _fn, _kind, _prefix in (("CLIPSave", clip_save, "CLIP", "clip/ComfyUI"),
                                   ("ModelSave", model_save, "MODEL", "diffusion_models/ComfyUI"),
                                   ("VAESave", vae_save, "VAE", "vae/ComfyUI_vae")):
    register(NodeDef(
        _name, _fn, {_kind.lower(): (_kind, {}), "filename_prefix": ("STRING", {"default": _prefix})},
        hidden=SAVE_HIDDEN, category="advanced/model_merging", output_node=True,
        module="comfy_extras.nodes_model_merging", check=check_prefix))
