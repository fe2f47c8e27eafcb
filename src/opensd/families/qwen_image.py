"""Qwen-Image (Alibaba Qwen's 20B text-to-image MMDiT): double-stream blocks on rectified flow,
conditioned on Qwen2.5-VL-7B's last hidden states of the chat-templated prompt (the template's
first 34 tokens dropped, the padding masked), with its own VAE (Wan 2.1's for single frames, the
latent normalised per channel) seen as 2x2 patches.

Files: the network alone as ComfyUI keeps it (diffusion_models/qwen_image_fp8_e4m3fn.safetensors or
_bf16, diffusers' own key names, with or without `model.diffusion_model.`; a GGUF), or a
QwenImagePipeline folder; the text encoder from text_encoders/ (qwen_2.5_vl_7b*.safetensors) and the
VAE from vae/ (qwen_image_vae.safetensors).

Sampling is QwenImagePipeline's: times 1, 1 - 1/n, ..., 1/n shifted exponentially by mu, linear in
the image's 2x2-patch tokens (base_shift 0.5 at 256 tokens, max_shift 0.9 at 8192: its scheduler
config), then stretched so the last step's sigma is shift_terminal (0.02); the network takes sigma
and answers the velocity. True CFG (CFG 4 against the negative prompt, the empty one by default)
is renormalised as the pipeline does: the combined prediction rescaled, per 2x2 latent patch, to
the prompt's own prediction's norm. img2img and inpainting run the generic flow paths, which are
QwenImageImg2ImgPipeline's and QwenImageInpaintPipeline's but for A1111's step count, mask and
paste-back and the posterior's mean (docs/model-families.md); with the init image also the
reference, inpainting is QwenImageEditInpaintPipeline's. ComfyUI runs plain CFG (no renormalisation) on the shift its
graph sets (ModelSamplingAuraFlow; 1.15 without one), and its graphs here do the same.

Qwen-Image-Edit (QwenImageEditPipeline) is the same network: a reference image (--reference-image)
makes a generation an edit (pipeline/qwen_edit_image fits it, the VAE encodes it into latent tokens
the network sees after the image's, and the prompts are encoded with it through Qwen2.5-VL's vision
tower, which is then loaded from the text-encoder file). Edit-2509/2511 ("Edit Plus",
QwenImageEditPlusPipeline) take several references, each fitted twice (pipeline/qwen_edit_image:
~1 MP for the VAE, ~384x384 for the vision tower) and named "Picture N:" in the prompt; 2511's
network modulates the reference tokens at time 0 (zero_cond_t). Their shapes are Qwen-Image's own,
so the variant is told by the folder's pipeline class and transformer config, a single file's
name (edit + 2509/2511/plus; 2511: zero_cond_t) or ComfyUI's 2511 marker key
(`__index_timestep_zero__`, which makes 2511 files default to that reference method there).
Qwen-Image-Layered is refused in one line: its folders by pipeline class, its network by its extra
time input.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import detect as D
from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import META_QWEN_VAE_STATS, QWEN_IMAGE_PARTS
from ..checkpoints.families import what_else
from ..checkpoints.files import read_state_dict
from ..checkpoints.keymap_qwen_image import qwen_image_rows
from ..checkpoints.keymap_qwen25vl import is_qwen25vl, qwen25vl_config, qwen25vl_state_dict
from ..checkpoints.keymap_qwen25vl_vision import has_qwen25vl_vision, qwen25vl_vision_config, qwen25vl_vision_state_dict
from ..checkpoints.qwen_vocab import load_qwen_tokenizer
from ..checkpoints.keymap_qwen_vae import is_qwen_vae, qwen_vae_config, qwen_vae_state_dict
from ..errors import CheckpointError, InvalidArgument
from ..models.config_dit import QWEN_IMAGE, FlowShiftConfig, QwenImageModelConfig
from ..models.dit_models import QwenImageModel
from ..models.qwen_vae import QWEN_IMAGE_VAE
from ..models.stored_weights import is_stored, unpack
from ..pipeline.qwen_edit_image import CONDITION_AREA, fit_edit_image
from ..sampling.flow import FlowSampling, flux_mu, flux_shift, sd3_shift
from .dit import compute_dtype, resolution_of
from .chroma import text_mask
from .qwen_dit import QwenDiTFamily, require_parts
from .qwen_image_prompts import QwenImageConditioner

log = logging.getLogger(__name__)

PLUS_PIPELINE = "QwenImageEditPlusPipeline"
# QwenImageEditInpaintPipeline folders hold Qwen-Image-Edit: inpainting with the init image as the
# reference is that pipeline (tests/test_qwen_edit_inpaint.py)
PIPELINES = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline", "QwenImageEditPipeline",
             "QwenImageEditInpaintPipeline", PLUS_PIPELINE)
ZERO_METHOD = "index_timestep_zero"  # ComfyUI's reference_latents_method for Edit-2511
ZERO_COND_MARK = "__" + ZERO_METHOD + "__"  # ComfyUI's (empty) marker tensor in its Edit-2511 network files
COMFY_SHIFT = 1.15  # ComfyUI's Qwen-Image sampling shift when its graph sets none (an SD3-style shift)
TRUE_CFG = 4.0  # QwenImagePipeline's true_cfg_scale default
STEPS = 50  # QwenImagePipeline's num_inference_steps default
_TEXT = DD.QWEN25_VISUAL[:-len("visual.")]  # the text encoder's prefix (visual.* under it)
VISION = "qwen25vl_vision"  # the vision tower among the "encoders" of a text-encoder file (present_encoders)
LAYERED_KEY = "time_text_embed.addition_t_embedding.weight"
# FlowMatchEulerDiscreteScheduler's defaults: what a scheduler_config.json leaves out
SCHEDULER_DEFAULTS = {"base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
META_SCHEDULE = "opensd.qwen_image_schedule"  # a QwenImagePipeline folder's scheduler config (JSON)
RESOLUTION = 1328
ENCODER_FILE = "Qwen2.5-VL-7B text encoder (text_encoders/qwen_2.5_vl_7b.safetensors)"
ENCODER = "the " + ENCODER_FILE
EDIT_REFUSAL = ("{}: not supported; Qwen-Image, Qwen-Image-Edit (QwenImageEditPipeline, QwenImageEditInpaintPipeline) "
                "and Edit-2509/2511 (QwenImageEditPlusPipeline) are")
LAYERED_REFUSAL = "Qwen-Image-Layered (layer decomposition): not supported; Qwen-Image (text to image) is"


def is_edit_file(path) -> bool:
    """Whether a single file's name says Qwen-Image-Edit (qwen_image_edit_*, Qwen-Image-Edit-2509*,
    QwenImageEdit*): its network's shapes are Qwen-Image's own. Folders are told by their pipeline class."""
    path = Path(str(path))
    return not path.is_dir() and re.search(r"(?<![a-z])edit|imageedit", path.name.lower()) is not None


def is_edit_plus_file(path) -> bool:
    """Whether a single file's name says Edit-2509/2511 or Edit Plus (several reference images)."""
    return is_edit_file(path) and re.search(r"2509|2511|plus", Path(str(path)).name.lower()) is not None


def is_2511_file(path) -> bool:
    """Whether a single file's name says Edit-2511 (zero_cond_t; ComfyUI's own 2511 files also
    carry ZERO_COND_MARK)."""
    return is_edit_file(path) and "2511" in Path(str(path)).name.lower()


def _vision_config(shapes, path):
    """The text encoder's vision tower config, or None (no tower, or not one opensd can build: then
    it is left out and a reference image is refused)."""
    if not has_qwen25vl_vision(shapes, _TEXT):
        return None
    try:
        return qwen25vl_vision_config(shapes, _TEXT, path)
    except CheckpointError as e:
        log.warning("%s: the vision tower is not loaded: %s", path, e)
        return None


def has_vae(shapes) -> bool:
    return is_qwen_vae(shapes, D.VAE)


def has_encoder(shapes) -> bool:
    return DD.QWEN25 + "model.embed_tokens.weight" in shapes


def _vae_stats(metadata) -> dict:
    if META_QWEN_VAE_STATS not in metadata:
        return {}
    return {k: tuple(float(x) for x in v) for k, v in json.loads(metadata[META_QWEN_VAE_STATS]).items()}


def schedule_of(metadata) -> FlowShiftConfig:
    """The scheduler settings a folder's metadata carries (the released ones without)."""
    if META_SCHEDULE not in metadata:
        return FlowShiftConfig()
    given = json.loads(metadata[META_SCHEDULE])
    return FlowShiftConfig(**{f.name: type(getattr(FlowShiftConfig(), f.name))(given[f.name])
                              for f in fields(FlowShiftConfig)})


def _schedule_metadata(path: Path) -> dict[str, str]:
    """A folder's scheduler/scheduler_config.json as metadata, what it leaves out at diffusers'
    FlowMatchEulerDiscreteScheduler defaults (as the pipeline reads it); a missing or unreadable one:
    none (the released settings)."""
    try:
        j = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(j, dict):
        return {}
    if j.get("time_shift_type", "exponential") != "exponential":
        raise CheckpointError(path, f"scheduler_config.json: time_shift_type {j['time_shift_type']!r} is not supported "
                                    "(Qwen-Image's is exponential)")
    given = {**SCHEDULER_DEFAULTS,
             **{k: v for k, v in j.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    dynamic = j.get("use_dynamic_shifting", False) is not False
    out = {k: given[k] for k in asdict(FlowShiftConfig()) if k in given}
    out["shift_terminal"] = given.get("shift_terminal") or 0.0
    out["fixed_shift"] = 0.0 if dynamic else float(given.get("shift", 1.0))
    return {META_SCHEDULE: json.dumps(out)}


class QwenImageFamily(QwenDiTFamily):
    name = "qwen_image"
    label = "Qwen-Image"
    members = ("qwen_image",)
    pipeline_prefix = PIPELINES
    folder_parts = QWEN_IMAGE_PARTS
    required = ("qwen_vae", "qwen25vl")
    default_vae = QWEN_IMAGE_VAE
    encoder_label = ENCODER
    smaller_files = ("for Qwen-Image (20B: 41 GB in bf16) ComfyUI's diffusion_models/qwen_image_fp8_e4m3fn.safetensors "
                     "(20 GB) or a GGUF of it (Q4_K: about 13 GB), and text_encoders/"
                     "qwen_2.5_vl_7b_fp8_scaled.safetensors (9 GB)")
    resolution = RESOLUTION
    released_network = QWEN_IMAGE
    default_scheduler = "simple"  # 1, 1 - 1/n, ... (shifted), as the pipeline's sigmas
    default_cfg = TRUE_CFG
    default_steps = STEPS
    adapters = frozenset({"lora", "controlnet"})  # InstantX's and DiffSynth's (adapters/qwen_image_controlnet.py)
    unused_keys = (ZERO_COND_MARK,)

    network_config = staticmethod(DD.qwen_image_config)
    network_config_diffusers = staticmethod(DD.qwen_image_config)

    # --- files --------------------------------------------------------------------------------

    def layout(self, shapes):
        """The released single file's names are diffusers' own: one layout."""
        p = DD.prefix_of(shapes, DD.QWEN_IMAGE_MARK[0])
        return ("original", p) if p is not None and p + DD.QWEN_IMAGE_MARK[1] in shapes else None

    def network_of(self, shapes, metadata, path: str = "<state dict>"):
        found = self.layout(shapes)
        if found is None:
            return None
        if found[1] + LAYERED_KEY in shapes:
            raise CheckpointError(path, LAYERED_REFUSAL)
        net = DD.qwen_image_config(shapes, found[1], metadata, path)
        zero = net.zero_cond_t or found[1] + ZERO_COND_MARK in shapes or is_2511_file(path)
        if zero or is_edit_plus_file(path):
            net = replace(net, edit_plus=True, zero_cond_t=zero)
        return net

    def read_folder(self, path, index):
        """A QwenImagePipeline folder (the Edit and Edit Plus ones too), its scheduler config's shift
        settings kept; other Edit pipelines' and Layered's folders are refused."""
        name = str(index.get("_class_name", ""))
        if name.startswith("QwenImageEdit") and name not in PIPELINES:
            raise CheckpointError(path, EDIT_REFUSAL.format(name))
        if name.startswith("QwenImageLayered"):
            raise CheckpointError(path, LAYERED_REFUSAL)
        if name not in PIPELINES:
            return None
        found = super().read_folder(path, index)
        if found is None:
            return None
        sd, metadata = found
        metadata.update(_schedule_metadata(Path(path)))
        if name == PLUS_PIPELINE:
            metadata[DD.META_QI_EDIT_PLUS] = "1"
        return sd, metadata

    def detect(self, shapes, metadata, path, prediction=None):
        net = self.network_of(shapes, metadata, path)
        if net is None:
            return None
        vae = qwen_vae_config(shapes, D.VAE, path, **_vae_stats(metadata)) if has_vae(shapes) else QWEN_IMAGE_VAE
        encoder = self.encoder_config("qwen25vl", shapes, path) if has_encoder(shapes) else None
        vision = _vision_config(shapes, path) if encoder is not None else None
        return QwenImageModelConfig(net, vae, encoder, vision, resolution=resolution_of(metadata, RESOLUTION),
                                    schedule=schedule_of(metadata))

    def from_diffusers(self, net, cfg):
        return net  # the same names

    def canonical(self, sd, cfg):
        """The network under our prefix; the VAE (either layout) as QwenImageVAE's keys."""
        out = super().canonical(sd, cfg)
        vae = qwen_vae_state_dict(out, D.VAE) if has_vae(out) else {}
        vision = cfg.qwen25vl_vision is not None
        out = {k: v for k, v in out.items() if not k.startswith(D.VAE) and (vision or not k.startswith(DD.QWEN25_VISUAL))}
        out.update({D.VAE + k: v for k, v in vae.items()})
        return out

    def make_config(self, net, vae, encoders, resolution) -> QwenImageModelConfig:
        return QwenImageModelConfig(net, vae, encoders.get("qwen25vl"), encoders.get(VISION),
                                    resolution=resolution)

    def missing_parts(self, shapes):
        return ([] if has_vae(shapes) else ["qwen_vae"]) + ([] if has_encoder(shapes) else ["qwen25vl"])

    def needed_parts(self, shapes):
        return self.missing_parts(shapes)

    def check_complete(self, cfg, shapes, path):
        if D.VAE + "encoder.conv_in.weight" in shapes:
            raise CheckpointError(path, "the VAE is an SD/Flux-style VAE; Qwen-Image takes its own "
                                        "(qwen_image_vae.safetensors, the Wan 2.1 VAE)")
        require_parts(path, "Qwen-Image", (("VAE (--vae; qwen_image_vae.safetensors in vae/)", has_vae(shapes)),
                                           (ENCODER_FILE + " (--text-encoder)", has_encoder(shapes))))
        width = shapes[DD.QWEN25 + "model.embed_tokens.weight"][1]
        if width != cfg.qwen_image.joint_attention_dim:
            raise CheckpointError(path, f"the text encoder is {width} wide; this Qwen-Image network takes "
                                        f"{cfg.qwen_image.joint_attention_dim}-wide features (Qwen2.5-VL-7B: 3584)")

    def encoder_config(self, name, shapes, path):
        if name == VISION:
            return _vision_config(shapes, path)
        return qwen25vl_config(shapes, DD.QWEN25, path)

    def present_encoders(self, shapes):
        """The language model; its vision tower (VISION) where the file has one."""
        if not has_encoder(shapes):
            return []
        return ["qwen25vl", VISION] if has_qwen25vl_vision(shapes, _TEXT) else ["qwen25vl"]

    def encoder_tensors(self, files):
        """Qwen2.5-VL-7B from its own file (ComfyUI's text_encoders/qwen_2.5_vl_7b*.safetensors,
        Qwen's or transformers' names, a llama.cpp GGUF): the language model, and the vision tower
        where the file has it (Qwen-Image-Edit's image prompts; about 0.7B parameters more)."""
        if len(files) > 1:
            raise CheckpointError(files[1], f"{len(files)} text encoders given; a Qwen-Image model takes one, "
                                            f"{ENCODER}")
        sd = read_state_dict(files[0], keep_quantized=True)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        if not is_qwen25vl(shapes):
            raise CheckpointError(files[0], f"not a Qwen2.5-VL text encoder (a Qwen-Image model takes {ENCODER}): "
                                            + what_else(shapes, D.UNET))
        language, _ = qwen25vl_state_dict(sd)
        # the vision tower in plain floats: ComfyUI's fp8 files may store it as (scaled) float8
        visual = {DD.QWEN25_VISUAL + k: (unpack(v, torch.float32, None) if is_stored(v) else v)
                  for k, v in qwen25vl_vision_state_dict(sd).items()}
        if not visual:
            log.info("%s: no vision tower: Qwen-Image-Edit's reference images need the file that has it", files[0])
        return {**{DD.QWEN25 + k: v for k, v in language.items()}, **visual}

    def finish(self, loaded, explicit_prediction) -> None:
        if loaded.config.qwen25vl is not None:
            loaded.tokenizers["qwen"] = load_qwen_tokenizer(loaded.path, *loaded.part_paths)

    def conditioner(self, pipe, clip_skip, **text):
        return QwenImageConditioner(pipe, clip_skip, **text)

    def build(self, cfg: QwenImageModelConfig) -> QwenImageModel:
        return QwenImageModel(cfg)

    # --- sampling and the network ---------------------------------------------------------------

    def sampling(self, pipe, width, height, shift=None, steps=None) -> FlowSampling:
        """The pipeline's schedule when the size and step count are known; `shift` (--shift,
        ComfyUI's ModelSamplingAuraFlow): an SD3-style shift instead, as ComfyUI runs Qwen-Image,
        whose own default (1.15) serves where the size or steps are unknown."""
        if shift is not None or width is None or height is None or not steps:
            return FlowSampling.aura_flow(COMFY_SHIFT if shift is None else shift)
        s = pipe.config.schedule
        if s.fixed_shift:
            return FlowSampling.shifted(lambda t: sd3_shift(s.fixed_shift, t), steps, s.shift_terminal)
        side = pipe.config.size_multiple
        mu = flux_mu((width // side) * (height // side), s.base_shift, s.max_shift, s.base_image_seq_len,
                     s.max_image_seq_len)
        return FlowSampling.shifted(lambda t: flux_shift(mu, t), steps, s.shift_terminal)

    reference_latents = True  # Qwen-Image-Edit: one reference image, Edit-2509/2511 several (pipeline/kontext.py)

    def fit_reference(self, pipe, image):
        """The reference as QwenImageEditPipeline / QwenImageEditPlusPipeline fit it for the VAE
        (about 1 MP, sides multiples of 32)."""
        return fit_edit_image(image)

    def prompt_image(self, pipe, image, fitted):
        """What the vision encoder sees of a reference: the fitted image (Edit), or the original
        fitted to about 384x384 (Edit-2509/2511)."""
        return fit_edit_image(image, CONDITION_AREA) if pipe.config.qwen_image.edit_plus else fitted

    def reference_limit(self, cfg) -> int | None:
        """How many reference images a model takes: Qwen-Image-Edit one; Edit-2509/2511 as many as
        QwenImageEditPlusPipeline (None: no cap of its own; the front ends' apply, ComfyUI's node has three inputs)."""
        return None if cfg.qwen_image.edit_plus else 1

    def check_references(self, cfg, count: int) -> None:
        """Refuse more references than `reference_limit` (the pipeline on loading, the A1111 routes before queueing)."""
        if count > (self.reference_limit(cfg) or count):
            raise InvalidArgument(f"Qwen-Image-Edit takes one reference image ({count} given); Edit-2509/2511 "
                                  "(QwenImageEditPlusPipeline) take several")

    reference_method = "index"  # ComfyUI's default placement for Qwen-Image (reference i at frame i)

    def default_reference_method(self, cfg) -> str:
        """ComfyUI's default for a model: its 2511 files (zero_cond_t) place the references by index
        at time 0."""
        return ZERO_METHOD if cfg.qwen_image.zero_cond_t else self.reference_method

    def net_fn(self, model, guidance=None, references=None, reference_method=None):
        """`references`: Qwen-Image-Edit's reference latents (model latents, each (1 or B, 16, h, w)).
        `reference_method` is set by ComfyUI graphs (conds.py), whose model differs from diffusers'
        in two ways followed there: the text's RoPE starts past the image's own grid only, and a
        reference latent of an odd side is padded (circularly) to whole 2x2 patches. ComfyUI's
        "index" placement is supported, and "index_timestep_zero" (the same, the references
        modulated at time 0: Edit-2511's zero_cond_t, whatever the model's config); without a
        method (diffusers' way) the config's zero_cond_t holds."""
        net = model.network
        dtype = compute_dtype(net)
        comfy = reference_method is not None  # ComfyUI's model takes any number of references
        if references and len(references) > 1 and not (comfy or net.cfg.edit_plus):
            raise InvalidArgument(f"Qwen-Image-Edit takes one reference image ({len(references)} given); "
                                  "Edit-2509/2511 (QwenImageEditPlusPipeline) take several")
        if comfy and reference_method not in ("index", ZERO_METHOD):
            raise InvalidArgument(f"reference_latents_method {reference_method!r}: Qwen-Image-Edit here places its "
                                  f"references by 'index' or '{ZERO_METHOD}' only")
        zero = (reference_method == ZERO_METHOD) if comfy else None
        if comfy:
            references = [F.pad(r, (0, r.shape[-1] % 2, 0, r.shape[-2] % 2), mode="circular") for r in references or ()]

        def call(x, t, context, y, control=None):
            """t: sigma (multiplier 1), the network's own time; the context's all-zero rows (past
            each prompt's tokens) are masked. `control`: a QwenImageControl (models/qwen_image_controlnet.py)."""
            mask = text_mask(context)
            refs = [r.to(x.device, dtype).expand(len(x), -1, -1, -1) for r in references or ()]
            return net(x.to(dtype), t, context.to(dtype), None if bool(mask.all()) else mask, refs,
                       text_after_refs=not comfy, zero_cond_t=zero,
                       control=control and control.ordered())

        return call

    def lora_modules(self, model):
        """As the other Qwen-encoder DiTs, and the bare diffusers path (`transformer_blocks.N.attn.to_q`,
        as Qwen-Image-Lightning's LoRAs are written), which the LoRA reader files under `unet.`."""
        modules = super().lora_modules(model)
        names = {n for m in modules for n in (m.kohya, m.peft, *m.aliases)}
        for m in modules:
            bare = "unet." + m.peft[len("transformer."):] if m.peft.startswith("transformer.") else None
            if bare and bare not in names:
                m.aliases.append(bare)
                names.add(bare)
        return modules

    def key_rows(self, cfg):
        return qwen_image_rows(cfg.qwen_image)

    def context_width(self, cfg) -> int:
        return cfg.qwen_image.joint_attention_dim


QWEN_IMAGE_FAMILY = QwenImageFamily()
