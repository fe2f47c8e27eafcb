"""Model parts from files of their own, as ComfyUI's separate loaders take them: a VAE, a diffusion
model (UNet) alone, text encoders alone. Each becomes a Pipeline whose other parts stay on the
meta device (no memory, no weights): only the part that was loaded may be used.

* VAE: any file loader.read_vae reads (original layout, with or without prefix, or diffusers).
* UNet: the original layout, bare or under ``model.diffusion_model.``; a diffusers-layout UNet with
  its config.json beside it. The family follows from the shapes (SDXL by its 2816-wide ``y``,
  the refiner by 2560, SD2 by a 1024-wide context, SD1 by 768); SD2's eps/v as for checkpoints.
* Text encoders: transformers' CLIP naming (``text_model.…``, as ComfyUI's clip_l / clip_g files
  ship), or the original layout's prefixes. One encoder: SD1's CLIP-L (OpenAI naming), SD2's ViT-H
  (width 1024) or the SDXL refiner's ViT-bigG (1280; open_clip naming or width 1280). Two (SDXL):
  the narrower is CLIP-L, the wider ViT-bigG, whatever order they are given in.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..checkpoints import detect as D
from ..checkpoints import markers
from ..checkpoints.diffusers_config import unet_config
from ..checkpoints.files import read_metadata, read_state_dict
from ..checkpoints.keymap_clip import clip_from_transformers
from ..checkpoints.keymap_qwen_vae import is_qwen_vae, qwen_vae_config
from ..checkpoints.keymap_unet import unet_from_diffusers
from .. import families
from ..checkpoints.detect_dit import NET, TEXT
from ..errors import CheckpointError
from ..families import family_of
from ..families.chroma import CHROMA_FAMILY
from ..families.flux import FLUX
from ..families.flux2 import FLUX2_FAMILY
from ..families.qwen_image import QWEN_IMAGE_FAMILY
from ..families.sd3 import SD3
from ..families.unet import UNET, guess_sd2_prediction
from ..families.z_image import Z_IMAGE_FAMILY
from ..models import config as C
from .device import resolve_device
from .precision import choose_precision
from .loader import LoadedModel, read_vae
from .pipeline import Pipeline
from .ram_fit import check_fits
from .weights import assign


def _pipeline(path: Path, cfg: C.ModelConfig, part: dict[str, torch.Tensor], prefixes: tuple[str, ...], device,
              dtype, alphas: torch.Tensor | None = None, paths: tuple[Path, ...] = ()) -> Pipeline:
    """A Pipeline whose model holds the tensors of `part` (full checkpoint key names) for every
    weight under `prefixes`; the rest of the model stays on the meta device. `paths`: text-encoder
    files, beside which the family looks for their tokenizers."""
    family = family_of(cfg)
    with torch.device("meta"):
        model = family.build(cfg)
    wanted = {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}
    missing = [k for k in wanted if k not in part]
    if missing:
        raise CheckpointError(path, f"{len(missing)} weights missing, e.g. {', '.join(missing[:3])}")
    wrong = [f"{k} {tuple(part[k].shape)} != {tuple(v.shape)}" for k, v in wanted.items()
             if tuple(part[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(path, f"{len(wrong)} weights have unexpected shapes, e.g. {wrong[0]}")
    check_fits((part[k] for k in wanted), path, device, family.smaller_files)
    assign(model, part, list(wanted), lambda k: family.weight_dtype(k, dtype, dtype), device, family.keeps_stored)
    loaded = LoadedModel(path, cfg, model.eval().requires_grad_(False), alphas, part_paths=list(paths))
    if paths:
        family.finish(loaded, None)
    return Pipeline(loaded, device, dtype)


def _where(device: str | None, precision: str, cfg: C.ModelConfig, vae: bool = False):
    """The device and dtype for a part; "auto" chooses as a whole checkpoint of `cfg` would."""
    dev = resolve_device(device)
    chosen = choose_precision(precision, dev, cfg)
    return dev, chosen.vae_dtype if vae else chosen.dtype


def load_vae(path, device: str | None = None, precision: str = "fp32") -> Pipeline:
    path = Path(path)
    sd, _ = read_vae(path)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if is_qwen_vae(shapes):  # Qwen-Image's VAE, its latent normalised per channel: a Qwen-Image model's VAE
        cfg = QWEN_IMAGE_FAMILY.make_config(QWEN_IMAGE_FAMILY.released_network, qwen_vae_config(shapes, "", str(path)),
                                            {}, QWEN_IMAGE_FAMILY.resolution)
        return _pipeline(path, cfg, {D.VAE + k: v for k, v in sd.items()}, (D.VAE,),
                         *_where(device, precision, cfg, vae=True))
    vae = D.infer_vae(shapes, "", str(path))
    # FLUX.2's VAE encodes to and decodes from its patched, normalised latent: a FLUX.2 model's VAE
    cfg = (FLUX2_FAMILY.make_config(FLUX2_FAMILY.released_network, vae, {}, 1024) if vae.latent_batch_norm
           else replace(C.sd1(), family="sd1", vae=vae))
    return _pipeline(path, cfg, {D.VAE + k: v for k, v in sd.items()}, (D.VAE,), *_where(device, precision, cfg, vae=True))


def load_unet(path, device: str | None = None, precision: str = "fp32") -> Pipeline:
    path = Path(path)
    sd, metadata = read_state_dict(path, keep_quantized=True), read_metadata(path)
    try:
        family, cfg = families.detect({k: tuple(v.shape) for k, v in sd.items()}, metadata, str(path))
    except CheckpointError:
        family = None  # a UNet without its prefix, or in diffusers' layout: below
    if family is not None and family is not UNET:  # a DiT network alone (ComfyUI's diffusion_models/)
        return _pipeline(path, cfg, family.canonical(sd, cfg), (NET,), *_where(device, precision, cfg))
    alphas = sd.pop("alphas_cumprod", None)
    if "conv_in.weight" in sd and "input_blocks.0.0.weight" not in sd:  # diffusers layout
        config = path.parent / "config.json"
        if not config.is_file():
            raise CheckpointError(path, "a diffusers-layout UNet file needs its config.json beside it")
        sd = unet_from_diffusers(sd, unet_config(json.loads(config.read_text(encoding="utf-8"))))
    if "input_blocks.0.0.weight" in sd:  # ComfyUI's diffusion_models files: the UNet without prefix
        sd = {k if k in markers.KEYS else D.UNET + k: v for k, v in sd.items()}
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if D.UNET + "input_blocks.0.0.weight" not in shapes:
        raise CheckpointError(path, "not a diffusion model (UNet): " + D.what_else(shapes, D.UNET))
    ucfg = D.infer_unet(shapes, D.UNET)
    adm = ucfg.adm_in_channels
    if adm == 2560:
        base = C.sdxl_refiner()
    elif adm > 6 * 256:  # pooled text + six 256-wide size embeddings: SDXL's "y" (at any width)
        base = C.sdxl()
    else:
        base = {1024: C.sd2(), 768: C.sd1()}.get(ucfg.context_dim) or replace(C.sd1(), family="small")
    if base.family == "sd1" and ucfg.model_channels != 320:
        base = replace(base, family="small")
    if base.family == "sd1":  # SD1 splits attention into 8 heads, which no shape shows
        ucfg = D.infer_unet(shapes, D.UNET, sd1_heads=True)
    if D.META_HEADS in metadata or D.META_HEAD_CHANNELS in metadata:
        ucfg = replace(ucfg, num_heads=int(metadata.get(D.META_HEADS, -1)),
                       num_head_channels=int(metadata.get(D.META_HEAD_CHANNELS, -1)))
    if base.family == "small" and ucfg.adm_in_channels:  # our small models' "y" is the CFG scale
        ucfg = replace(ucfg, guidance_embed=True)
    vae = base.vae
    if D.META_SCALING in metadata:
        vae = replace(vae, scaling_factor=float(metadata[D.META_SCALING]))
    metadata = {**metadata, **markers.marker_metadata(sd)}
    declared = D.declared_prediction(shapes, metadata)
    cfg = replace(base, unet=ucfg, vae=vae, prediction=declared or ("v" if base.family == "sd2" else "eps"))
    cfg = markers.with_sampling(cfg, shapes, metadata, str(path))
    pipe = _pipeline(path, cfg, sd, (D.UNET,), *_where(device, precision, cfg), None if alphas is None else alphas.float())
    if base.family == "sd2" and declared is None:
        guessed = guess_sd2_prediction(pipe.model)
        pipe.config = pipe.loaded.config = pipe.model.config = replace(cfg, prediction=guessed)
    return pipe


# --- text encoders ------------------------------------------------------------------------------

# checkpoint prefixes of a text encoder -> its naming there (OpenAI CLIP's is transformers')
_ORIGINAL = {D.LDM_HF: "transformers", D.LDM_OPENCLIP: "openclip", f"{D.SGM}0.transformer.": "transformers",
             f"{D.SGM}0.model.": "openclip", f"{D.SGM}1.model.": "openclip"}


def _read_encoder(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """One text encoder's tensors in our naming (without prefix) and that naming."""
    sd = read_state_dict(path)
    for prefix, naming in _ORIGINAL.items():
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, naming
    if "token_embedding.weight" in sd:
        return sd, "openclip"
    if any(k.startswith(("text_model.", "embeddings.", "encoder.layers.")) for k in sd):
        return sd, "transformers"
    raise CheckpointError(path, "not a CLIP text encoder: " + D.what_else({k: tuple(v.shape) for k, v in sd.items()},
                                                                          D.UNET))


def _encoder_config(sd: dict[str, torch.Tensor], naming: str, openclip: bool) -> C.TextEncoderConfig:
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    if naming == "openclip":
        return D.infer_openclip(shapes, "")
    hf = {("text_model." + k if not k.startswith(("text_model.", "text_projection")) else k): v
          for k, v in shapes.items()}
    cfg = D.infer_hf_clip(hf, "")
    if openclip:  # transformers' naming of an OpenCLIP model (ViT-H, ViT-bigG): its gelu and padding
        cfg = replace(cfg, naming="openclip", act="gelu", pad_token=0)
    return cfg


def load_text_encoders(paths: list, device: str | None = None, precision: str = "fp32",
                       family: str | None = None) -> Pipeline:
    """One file (SD1, SD2 or the SDXL refiner's encoder) or two (SDXL's CLIP-L and ViT-bigG); with
    `family` "sd3", "flux", "chroma", "z_image", "flux2" or "qwen_image", that family's CLIP and T5 files (SD3:
    any of CLIP-L, CLIP-G, T5-XXL; Chroma: T5-XXL) or Z-Image's Qwen3-4B, FLUX.2 [klein]'s Qwen3-4B or -8B,
    Qwen-Image's Qwen2.5-VL-7B."""
    paths = [Path(p) for p in paths]
    if family in _DIT_FAMILIES:
        return _dit_encoders(paths, _DIT_FAMILIES[family], device, precision)
    read = [(_read_encoder(p), p) for p in paths]
    widths = [sd[k].shape[1] for (sd, _), _ in read for k in sd if k.endswith("token_embedding.weight")]
    if len(widths) != len(read):
        raise CheckpointError(paths[0], "no token embedding found: not a CLIP text encoder")
    if len(read) == 2:
        read = [r for _, r in sorted(zip(widths, read), key=lambda t: t[0])]  # narrow CLIP-L, then bigG
        kinds = [False, True]
    else:
        kinds = [read[0][0][1] == "openclip" or widths[0] >= 1024]
    encoders, part = [], {}
    for ((sd, naming), path), openclip in zip(read, kinds):
        cfg = _encoder_config(sd, naming, openclip)
        if naming == "transformers":
            try:
                sd = clip_from_transformers(sd, cfg)
            except KeyError as e:
                raise CheckpointError(path, f"keys do not fit a CLIP text encoder: {e.args[0]}") from None
        encoders.append((cfg, sd))
    if len(encoders) == 2:
        family = "sdxl"
        cfgs = (replace(encoders[0][0], skip=2, final_norm=False),
                replace(encoders[1][0], skip=2, final_norm=False, pooled=True))
        prefixes = (f"{D.SGM}0.transformer.", f"{D.SGM}1.model.")
        base = C.sdxl()
    else:
        enc = encoders[0][0]
        if enc.naming == "hf":
            family, cfgs, prefixes = ("sd1" if enc.width == 768 else "small"), (enc,), (D.LDM_HF,)
            base = C.sd1()
        elif enc.width != 1024 and enc.projection_dim:  # ViT-bigG with its pooled projection
            family, prefixes = "sdxl_refiner", (f"{D.SGM}0.model.",)
            cfgs = (replace(enc, skip=2, final_norm=False, pooled=True),)
            base = C.sdxl_refiner()
        else:  # SD2: the 23rd layer, then the final LayerNorm
            family, prefixes = "sd2", (D.LDM_OPENCLIP,)
            cfgs = (replace(enc, skip=max(1, enc.layers - 22), final_norm=True, pooled=False),)
            base = C.sd2()
    cfg = replace(base, family=family, text_encoders=cfgs)
    for (_, sd), prefix in zip(encoders, prefixes):
        part.update({prefix + k: v for k, v in sd.items()})
    return _pipeline(paths[0], cfg, part, prefixes, *_where(device, precision, cfg))


_DIT_FAMILIES = {"sd3": SD3, "flux": FLUX, "chroma": CHROMA_FAMILY, "z_image": Z_IMAGE_FAMILY, "flux2": FLUX2_FAMILY,
                 "qwen_image": QWEN_IMAGE_FAMILY}


def _dit_encoders(paths: list[Path], family, device, precision) -> Pipeline:
    """SD3's, Flux's, Chroma's or Z-Image's text encoders from their own files, in a model whose network and
    VAE stay on the meta device at the released sizes."""
    part = family.encoder_tensors(paths)
    shapes = {k: tuple(v.shape) for k, v in part.items()}
    with families.shapes_read(paths[0], family):
        encoders = {name: family.encoder_config(name, shapes, str(paths[0]))
                    for name in family.present_encoders(shapes)}
    cfg = family.make_config(family.released_network, family.default_vae, encoders, 1024)
    return _pipeline(paths[0], cfg, part, (TEXT,), *_where(device, precision, cfg), paths=tuple(paths))
