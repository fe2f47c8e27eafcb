"""Z-Image (Tongyi-MAI's Z-Image, Z-Image-Turbo): a single-stream DiT on rectified flow, conditioned on
Qwen3-4B's second-to-last hidden states of the chat-templated prompt, with Flux's VAE.

Files: the network alone as ComfyUI keeps it (diffusion_models/z_image_turbo_bf16.safetensors, the
released naming, with or without `model.diffusion_model.`), diffusers' transformer file, or a
ZImagePipeline folder; the text encoder from text_encoders/ (qwen_3_4b.safetensors, Qwen3's own
`model.layers.N...` keys) and the VAE from vae/ (ae.safetensors).

Sampling is diffusers' ZImagePipeline's and ComfyUI's (ModelSamplingAuraFlow, shift 3): sigma =
3 t / (1 + 2 t), the network fed 1 - sigma, its output minus the velocity. Z-Image-Turbo runs
without CFG (the pipeline's guidance_scale 0 is CFG 1 here: diffusers' pos + g (pos - neg) is CFG
g + 1); the caption's padding is masked (the conditioner leaves the context rows past each
prompt's tokens zero, and net_fn masks all-zero rows, as Chroma's)."""
from __future__ import annotations

import json
from dataclasses import replace


from ..checkpoints import detect as D
from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import Z_IMAGE_PARTS
from ..checkpoints.keymap_z_image import UNUSED_KEYS, z_image_from_diffusers, z_image_rows
from ..errors import CheckpointError
from ..models.config_dit import FLUX_VAE, Z_IMAGE, ZImageModelConfig
from ..models.dit_models import ZImageModel
from ..sampling.flow import FlowSampling
from .chroma import text_mask
from .dit import compute_dtype
from .qwen_dit import QwenDiTFamily, has_qwen3, has_vae, require_parts
from .z_image_prompts import ZImageConditioner

ENCODER = "Qwen3-4B text encoder (text_encoders/qwen_3_4b.safetensors)"


class ZImageFamily(QwenDiTFamily):
    name = "z_image"
    label = "Z-Image"
    members = ("z_image",)
    encoder_label = "the " + ENCODER
    unused_keys = UNUSED_KEYS
    telltale = "layers.0.adaLN_modulation.0.weight"  # both layouts; Lumina 2's first adaLN layer is a SiLU
    folder_parts = Z_IMAGE_PARTS
    pipeline_prefix = ("ZImagePipeline", "ZImageImg2ImgPipeline")
    default_vae = FLUX_VAE
    released_network = Z_IMAGE
    default_scheduler = "simple"  # diffusers' 1, 1 - 1/n, ... (shifted)
    default_cfg = 1.0  # Z-Image-Turbo: no CFG (ZImagePipeline's guidance_scale 0)
    default_steps = 8  # Z-Image-Turbo is distilled to 8 network evaluations
    adapters = frozenset({"lora", "controlnet"})  # Fun ControlNets (adapters/z_image_controlnet.py)

    network_config = staticmethod(DD.z_image_config)
    network_config_diffusers = staticmethod(DD.z_image_config_diffusers)

    # --- files --------------------------------------------------------------------------------

    def layout(self, shapes):
        p = DD.prefix_of(shapes, "cap_embedder.1.weight")
        if p is None or p + self.telltale not in shapes:
            return None
        if p + "x_embedder.weight" in shapes:
            return "original", p
        return ("diffusers", p) if p + "all_x_embedder.2-1.weight" in shapes else None

    def detect(self, shapes, metadata, path, prediction=None):
        cfg = super().detect(shapes, metadata, path, prediction)
        if cfg is None:
            return None
        if DD.META_SHIFT in metadata:
            cfg = replace(cfg, shift=float(metadata[DD.META_SHIFT]))
        return replace(cfg, qwen3=self.encoder_config("qwen3", shapes, path)) if has_qwen3(shapes) else cfg

    def read_folder(self, path, index):
        """A ZImagePipeline folder; its scheduler config's shift (Turbo's 3.0) becomes the model's."""
        found = super().read_folder(path, index)
        if found is None:
            return None
        sd, metadata = found
        try:
            shift = json.loads((path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))["shift"]
            metadata[DD.META_SHIFT] = str(float(shift))
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no scheduler config: the released 3.0
        return sd, metadata

    def from_diffusers(self, net, cfg):
        return z_image_from_diffusers(net, cfg.z_image, lazy=True)

    def make_config(self, net, vae, encoders, resolution) -> ZImageModelConfig:
        return ZImageModelConfig(net, vae, encoders.get("qwen3"), resolution=resolution)

    def missing_parts(self, shapes):
        vae = [] if D.VAE + "encoder.conv_in.weight" in shapes else ["vae"]
        return vae + ([] if has_qwen3(shapes) else ["qwen3"])

    def check_complete(self, cfg, shapes, path):
        require_parts(path, "Z-Image", (("VAE (--vae; Flux's ae.safetensors in vae/)", has_vae(shapes)),
                                        (ENCODER + " (--text-encoder)", has_qwen3(shapes))))
        width = shapes[DD.QWEN3 + "model.embed_tokens.weight"][1]
        if width != cfg.z_image.cap_feat_dim:
            raise CheckpointError(path, f"the text encoder is {width} wide; this Z-Image network takes "
                                        f"{cfg.z_image.cap_feat_dim}-wide features (Qwen3-4B: 2560)")

    def build(self, cfg: ZImageModelConfig) -> ZImageModel:
        return ZImageModel(cfg)

    # --- the network and prompts --------------------------------------------------------------

    def net_fn(self, model: ZImageModel, guidance=None, references=None):
        net = model.network
        dtype = compute_dtype(net)

        def call(x, t, context, y, control=None):
            """t: sigma (multiplier 1); the network takes 1 - sigma and answers minus the velocity.
            `control`: a ZImageControl (models/z_image_controlnet.py)."""
            x, t, context, mask = x.to(dtype), 1 - t, context.to(dtype), text_mask(context)
            return -net(x, t, context, mask, control and control.fns(x, t, context, mask))

        return call

    def sampling(self, pipe, width, height, shift=None, steps=None) -> FlowSampling:
        return FlowSampling.aura_flow(pipe.config.shift if shift is None else shift)

    def conditioner(self, pipe, clip_skip, **text):
        return ZImageConditioner(pipe, clip_skip, **text)

    def key_rows(self, cfg: ZImageModelConfig):
        return z_image_rows(cfg.z_image)

    def context_width(self, cfg: ZImageModelConfig) -> int:
        return cfg.z_image.cap_feat_dim


Z_IMAGE_FAMILY = ZImageFamily()
