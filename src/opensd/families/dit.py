"""What SD3 and Flux share as families: rectified flow, a 16-channel VAE with shift and scale, CLIP
and T5-XXL text encoders that may come in files of their own, and their files' layouts (the
original single file with or without encoders, the network alone as ComfyUI's diffusion_models/
holds it, diffusers' transformer file or folder)."""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import detect as D
from ..checkpoints import detect_dit as DD
from ..checkpoints.diffusers_dit import read_dit_folder
from ..checkpoints.families import what_else
from ..checkpoints.files import read_state_dict
from ..checkpoints.keymap_t5 import t5_state_dict
from ..checkpoints.t5_vocab import find_t5_vocab
from ..errors import CheckpointError
from ..text.t5_tokenizer import T5Tokenizer
from ..adapters.lora_dit import clip_modules, network_modules
from .base import Family
from .dit_prompts import DiTConditioner

log = logging.getLogger(__name__)

_ENCODER_PREFIXES = {"clip_l": DD.CLIP_L, "clip_g": DD.CLIP_G, "t5xxl": DD.T5}
_PART_NAMES = {"vae": "VAE (--vae)", "clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}


class DiTFamily(Family):
    clip_names: tuple[str, ...] = ()     # its CLIP encoders, in context order
    clip_context: bool = False           # whether CLIP's hidden states start the context
    required: tuple[str, ...] = ("vae",)  # parts it cannot run without
    telltale = ""                        # an original-layout network key only this family has
    diffusers_telltales: tuple[str, ...] = ()
    folder_parts: dict[str, str] = {}    # diffusers component folders (diffusers_dit.py)
    pipeline_prefix = ""                 # model_index.json _class_name of its diffusers folders
    default_vae = None

    # --- layouts -----------------------------------------------------------------------------

    def layout(self, shapes) -> tuple[str, str] | None:
        """("original" | "diffusers", prefix) of the network in a state dict, or None."""
        p = DD.prefix_of(shapes, self.telltale)
        if p is not None:
            return "original", p
        p = DD.prefix_of(shapes, self.diffusers_telltales[0])
        if p is not None and all(p + t in shapes for t in self.diffusers_telltales):
            return "diffusers", p
        return None

    def network_of(self, shapes, metadata, path: str = "<state dict>"):
        """The network config of a state dict in one of this family's layouts, or None."""
        found = self.layout(shapes)
        if found is None:
            return None
        kind, p = found
        return (self.network_config if kind == "original" else self.network_config_diffusers)(shapes, p, metadata, path)

    def detect(self, shapes, metadata, path, prediction=None):
        net = self.network_of(shapes, metadata, path)
        if net is None:
            return None
        vae = self.default_vae
        if D.VAE + "encoder.conv_in.weight" in shapes:
            shape = D.infer_vae(shapes, D.VAE, path)
            vae = replace(shape, scaling_factor=vae.scaling_factor, shift_factor=vae.shift_factor)
        if D.META_SCALING in metadata:
            vae = replace(vae, scaling_factor=float(metadata[D.META_SCALING]))
        encoders = {name: self.encoder_config(name, shapes, path) for name in (*self.clip_names, "t5xxl")
                    if _has_encoder(shapes, name)}
        return self.make_config(net, vae, encoders, resolution_of(metadata))

    def canonical(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        kind, p = self.layout({k: tuple(v.shape) for k, v in sd.items()})
        net = {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and not _outside_network(k)}
        if kind == "diffusers":
            net = self.from_diffusers(net, cfg)
        out = {k: v for k, v in sd.items() if _outside_network(k) and not k.startswith(DD.T5)}
        out.update({DD.NET + k: v for k, v in net.items()})
        out.update({DD.T5 + k: v for k, v in t5_state_dict(sd, DD.T5).items()})
        return out

    def read_folder(self, path: Path, index: dict):
        if not str(index.get("_class_name", "")).startswith(self.pipeline_prefix):
            return None
        return read_dit_folder(path, self.folder_parts)

    def encoder_config(self, name: str, shapes, path: str):
        if name == "t5xxl":
            return DD.t5_config(shapes, DD.T5, path)
        return DD.clip_config(shapes, _ENCODER_PREFIXES[name], big=name == "clip_g",
                              projected=self.clip_context, path=path)

    def encoder_tensors(self, files: list[Path]) -> dict[str, torch.Tensor]:
        """Text encoders from files of their own (ComfyUI's text_encoders/: clip_l, clip_g, t5xxl_fp16,
        t5xxl_fp8_e4m3fn, ...) under this model's prefixes. Which CLIP is which: the narrower of
        two is CLIP-L; a lone one is CLIP-G when 1280 wide and the family has CLIP-G."""
        out, clips = {}, []
        for path in files:
            sd = _bare(read_state_dict(path, keep_quantized=True))  # float8 weights stay stored
            if any(k.startswith("encoder.block.") for k in sd):
                out.update({DD.T5 + k: v for k, v in t5_state_dict(sd).items()})
            elif "text_model.embeddings.token_embedding.weight" in sd:
                clips.append((sd["text_model.embeddings.token_embedding.weight"].shape[1], path, sd))
            else:
                raise CheckpointError(path, "not a CLIP or T5 text encoder: " + what_else(
                    {k: tuple(v.shape) for k, v in sd.items()}, D.UNET))
        if len(clips) > len(self.clip_names):
            takes = f"takes {len(self.clip_names)}" if self.clip_names else "takes none (T5-XXL alone)"
            raise CheckpointError(clips[-1][1], f"{len(clips)} CLIP text encoders given; a {self.label} model {takes}")
        clips.sort(key=lambda c: c[0])
        names = list(self.clip_names)
        if len(clips) == 1 and len(names) == 2:
            names = ["clip_g"] if clips[0][0] == 1280 else ["clip_l"]
        for (_, _, sd), name in zip(clips, names):
            out.update({_ENCODER_PREFIXES[name] + k: v for k, v in sd.items() if k != "logit_scale"})
        return out

    def missing_parts(self, shapes) -> list[str]:
        vae = [] if D.VAE + "encoder.conv_in.weight" in shapes else ["vae"]
        return vae + [n for n in (*self.clip_names, "t5xxl") if not _has_encoder(shapes, n)]

    def present_encoders(self, shapes) -> list[str]:
        return [n for n in (*self.clip_names, "t5xxl") if _has_encoder(shapes, n)]

    def needed_parts(self, shapes) -> list[str]:
        """Those of `missing_parts` it cannot run without (`required`): what the models folder must
        hold for the network to be listed as a whole model (library/network_models.py)."""
        return [p for p in self.missing_parts(shapes) if p in self.required]

    def check_complete(self, cfg, shapes, path) -> None:
        missing = [n for n in self.required if not (_has_encoder(shapes, n) if n != "vae"
                                                    else D.VAE + "encoder.conv_in.weight" in shapes)]
        if missing:
            raise CheckpointError(path, f"this {self.label} file has no {', '.join(_PART_NAMES[n] for n in missing)}; "
                                        "pass the separate files (--vae, --text-encoder), or keep them in the models "
                                        "folder's vae/ and text_encoders/ folders")

    def finish(self, loaded, explicit_prediction) -> None:
        if loaded.config.t5 is None:
            return
        vocab = find_t5_vocab(loaded.path, *loaded.part_paths)
        if vocab is not None:
            loaded.tokenizers["t5"] = T5Tokenizer.from_file(vocab)
        elif "t5xxl" in self.required:
            raise CheckpointError(loaded.path, "no T5 vocabulary found (spiece.model): put T5-XXL's spiece.model "
                                               "beside the model or in the models folder's text_encoders/")
        else:
            log.warning("%s: no T5 vocabulary (spiece.model) beside the model or in text_encoders/; "
                        "running without T5", loaded.path)

    def weight_dtype(self, key: str, dtype: torch.dtype, vae_dtype: torch.dtype) -> torch.dtype:
        if key.startswith(DD.T5) and dtype == torch.float16:
            return torch.bfloat16  # T5-XXL's activations overflow fp16
        return super().weight_dtype(key, dtype, vae_dtype)

    def keeps_stored(self, key: str) -> bool:
        return not key.startswith(D.VAE)  # the networks and text encoders only call their Linears

    # --- the network and prompts --------------------------------------------------------------

    def network(self, model: nn.Module) -> nn.Module:
        return model.network

    def text_modules(self, model: nn.Module) -> list[nn.Module]:
        return list(model.text_encoders.values())

    def conditioner(self, pipe, clip_skip, **text):
        return DiTConditioner(pipe, self.clip_names, self.clip_context, clip_skip, **text)

    adapters = frozenset({"lora", "skip_layers"})

    def lora_modules(self, model: nn.Module) -> list:
        """kohya (lora_unet_ + the original path), PEFT/diffusers (transformer. + diffusers' path, q/k/v
        as rows of the fused tensors) and ComfyUI (diffusion_model. + the original path) names; the
        CLIP encoders as lora_te1_/lora_te2_ and text_encoder./text_encoder_2."""
        clips = [(f"lora_te{i + 1}_", "text_encoder." if i == 0 else f"text_encoder_{i + 1}.", model.encoder(n))
                 for i, n in enumerate(self.clip_names) if model.encoder(n) is not None]
        return network_modules(model.network, self.key_rows(model.config)) + clip_modules(clips)

    # family specifics: network_config(_diffusers), from_diffusers, make_config, build, net_fn,
    # sampling, pooled_width, context_width


def resolution_of(metadata, default: int = 1024) -> int:
    """The training side a file's metadata states (`default` without one)."""
    return int(str(metadata.get(D.META_RESOLUTION, default)).lower().split("x")[0])


def compute_dtype(network: nn.Module) -> torch.dtype:
    """The dtype a network computes in: its parameters' (weights kept stored are buffers)."""
    return next(p.dtype for p in network.parameters() if p.is_floating_point())


def _has_encoder(shapes, name: str) -> bool:
    p = _ENCODER_PREFIXES[name]
    key = "shared.weight" if name == "t5xxl" else "text_model.embeddings.token_embedding.weight"
    return p + key in shapes or (name == "t5xxl" and p + "encoder.embed_tokens.weight" in shapes)


def _outside_network(key: str) -> bool:
    return key.startswith((D.VAE, DD.TEXT))


def _bare(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder file's tensors without a wrapper prefix some tools add."""
    for prefix in ("transformer.", "text_encoders.clip_l.transformer.", "text_encoders.clip_g.transformer.",
                   "text_encoders.t5xxl.transformer."):
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd
