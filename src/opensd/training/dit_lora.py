"""LoRA training for the flow-matching DiTs: Flux.1 (dev, schnell, Kontext), FLUX.2 [klein], SD3/3.5,
Z-Image(-Turbo) and Qwen-Image. The same LoraNetwork (hooks on frozen Linears, `up` zero-initialised), Trainer,
dataset and options as the UNet LoRAs; the loss is flow_loss.py's, the batches flow_batches.py's
(captions and latents cached once, the text encoders then freed).

Targets, by each family's module path (our networks keep the original single-file layout):

* Flux.1: every Linear of the double and single blocks, modulation included (kohya sd-scripts
  networks/lora_flux.py: DoubleStreamBlock + SingleStreamBlock);
* FLUX.2: every Linear of the double and single blocks (musubi-tuner networks/lora_flux_2.py; its
  modulations live outside the blocks);
* SD3/3.5: every Linear of the joint blocks' context and x blocks, adaLN included (sd-scripts
  networks/lora_sd3.py: SingleDiTBlock);
* Z-Image: the main layers' attention and feed-forward Linears, not their adaLN modulation nor the
  refiner blocks (musubi-tuner networks/lora_zimage.py: ZImageTransformerBlock minus
  `_modulation|_refiner`);
* Qwen-Image: every Linear of the transformer blocks but their modulation (`img_mod`, `txt_mod`)
  (musubi-tuner networks/lora_qwen_image.py: QwenImageTransformerBlock minus `_mod_`).

The file: Flux.1 in kohya's names (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``,
``.lora_up.weight``, ``.alpha``: what sd-scripts writes and ComfyUI, Forge and diffusers' kohya
converter read); the others as ``diffusion_model.<path>.lora_A.weight`` / ``.lora_B.weight`` /
``.alpha`` (ComfyUI's generic names for any model; our loader's key tables hold them too).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import InvalidArgument
from . import finetune as FT
from .flow_batches import FlowBatches, free_text_encoders
from .flow_loss import FLUX_TRAIN_GUIDANCE, KOHYA_FLUX_SHIFT, SAMPLING_NAMES, flow_loss
from .lora_network import LoraNetwork

log = logging.getLogger(__name__)

# family -> (module paths trained, paths left out among those)
TARGETS = {
    "flux": (re.compile(r"^(double|single)_blocks\.\d+\."), None),
    "flux2": (re.compile(r"^(double|single)_blocks\.\d+\."), re.compile(r"norm")),
    "sd3": (re.compile(r"^joint_blocks\.\d+\.(context|x)_block\."), None),
    "z_image": (re.compile(r"^layers\.\d+\."), re.compile(r"adaLN_modulation")),
    "qwen_image": (re.compile(r"^transformer_blocks\.\d+\."), re.compile(r"_mod\.")),
}
# gradient checkpointing's units
BLOCK_LISTS = ("double_blocks", "single_blocks", "joint_blocks", "layers", "transformer_blocks")


def is_dit(pipe) -> bool:
    return pipe.family.name != "unet"


def check_supported(opts, pipe) -> None:
    """InvalidArgument for a family or an option DiT LoRA training does not do."""
    fam = pipe.config.family
    if fam not in TARGETS:
        raise InvalidArgument(f"model: LoRA training supports SD1/SD2/SDXL, Flux.1, FLUX.2 [klein], SD3/3.5, "
                              f"Z-Image and Qwen-Image models; {pipe.family.label} is not supported yet")
    if fam == "flux" and pipe.config.flux.in_channels != pipe.config.flux.out_channels:
        raise InvalidArgument("model: Flux.1 Fill (an inpainting network) cannot be LoRA-trained here; train on "
                              "Flux.1 dev and apply the LoRA to Fill")
    refused = [("train-text-encoder", opts.train_text_encoder, "the text encoders stay frozen (their outputs "
                "are cached)"),
               ("network-type", opts.network_type != "lora", "only plain LoRA (no LoCon/LoHa) is trained on DiTs"),
               ("conv-dim", opts.conv_dim is not None, "DiTs have no conv adapters"),
               ("min-snr-gamma", opts.min_snr_gamma, "min-SNR weighting is for eps/v models"),
               ("shuffle-caption", opts.shuffle_caption, "captions are encoded once, before training"),
               ("caption-tag-dropout-rate", opts.caption_tag_dropout_rate, "captions are encoded once")]
    for flag, on, why in refused:
        if on:
            raise InvalidArgument(f"{flag}: not available when training a LoRA for {pipe.family.label}: {why}")
    side = pipe.config.size_multiple
    res, step = opts.resolution or pipe.config.resolution, opts.bucket_step or pipe.config.vae.downscale * 8
    if res % side or step % side:
        raise InvalidArgument(f"resolution / bucket-step: {res} and {step} must be multiples of {side} for "
                              f"{pipe.family.label} (its latent's 2x2 patches)")


def targets(pipe) -> dict[str, tuple[str, nn.Module]]:
    """kohya name -> (module path, module) of the family's default LoRA targets."""
    from ..models.stored_weights import StoredLinear
    keep, drop = TARGETS[pipe.config.family]
    net = pipe.family.network(pipe.model)
    loadable = {m.kohya for m in pipe.family.lora_modules(pipe.model)}  # what our LoRA loader can place
    found = {"lora_unet_" + path.replace(".", "_"): (path, m) for path, m in net.named_modules()
             if isinstance(m, (nn.Linear, StoredLinear)) and keep.search(path) and not (drop and drop.search(path))}
    left = sorted(k for k in found if k not in loadable)
    if left:  # SD3's last context block: its adaLN halves are ordered otherwise in diffusers' layout
        log.info("LoRA: %d layer(s) left out, which our LoRA loader has no name for: %s", len(left), ", ".join(left))
    return {k: v for k, v in found.items() if k in loadable}


def file_state_dict(network, paths: dict[str, str], family: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapters under the names the family's LoRA files use (module doc)."""
    kohya = network.kohya_state_dict(dtype)
    if family == "flux":
        return kohya
    rename = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}
    out = {}
    for key, t in kohya.items():
        name, part = key.split(".", 1)
        out[f"diffusion_model.{paths[name]}.{rename[part]}"] = t
    return out


# family -> ss_base_model_version (Flux.1: sd-scripts' "flux1"), which model lists read back
BASE_VERSION = {"flux": "flux1", "sd3": "sd3", "z_image": "z_image", "flux2": "flux2", "qwen_image": "qwen_image"}
# family -> (modelspec.architecture, modelspec.implementation); Flux.1's depends on dev/schnell
_SPEC = {"sd3": ("stable-diffusion-3", "https://github.com/Stability-AI/sd3.5"),
         "z_image": ("z-image", "https://github.com/Tongyi-MAI/Z-Image"),
         "flux2": ("flux-2-klein", "https://github.com/black-forest-labs/flux2"),
         "qwen_image": ("qwen-image", "https://github.com/QwenLM/Qwen-Image")}


def model_spec(pipe) -> dict[str, str]:
    """The family's lines of the metadata (lora_train.metadata writes the rest)."""
    fam = pipe.config.family
    if fam == "flux":
        dev = pipe.config.flux.guidance_embed
        arch, impl = "flux-1-dev" if dev else "flux-1-schnell", "https://github.com/black-forest-labs/flux"
    else:
        arch, impl = _SPEC[fam]
    meta = {"ss_base_model_version": BASE_VERSION[fam], "modelspec.architecture": f"{arch}/lora",
            "modelspec.implementation": impl, "ss_v2": "False", "ss_prediction_type": "flow",
            "ss_model_prediction_type": "raw",
            "ss_timestep_sampling": SAMPLING_NAMES[fam], "ss_weighting_scheme": "none"}
    if fam == "flux":  # the file is sd-scripts' own: its Flux network module
        meta |= {"ss_discrete_flow_shift": str(KOHYA_FLUX_SHIFT), "ss_guidance_scale": str(FLUX_TRAIN_GUIDANCE),
                 "ss_network_module": "networks.lora_flux"}
    elif fam in ("sd3", "z_image"):
        meta["ss_discrete_flow_shift"] = str(float(pipe.config.shift))
    return meta


def build(opts, pipe, own_pipe: bool):
    """(trainer, network, pipe, dataset, steps) of a DiT LoRA run; `own_pipe`: the pipeline was loaded
    for this run, so its text encoders may be freed once the captions are cached."""
    check_supported(opts, pipe)
    ds = FT.open_dataset(opts, pipe)
    steps = FT.total_steps(opts, ds)
    FT.check_job(opts.run_dir, FT.job_record(opts, steps=steps, kind="lora"))
    if opts.bf16:
        FT.warn_bf16(opts.device)
    found = targets(pipe)
    torch.manual_seed(opts.seed)  # the adapters' initial down weights
    network = LoraNetwork({k: m for k, (_, m) in found.items()}, opts.rank, opts.alpha).attach()
    network.paths = {k: p for k, (p, _) in found.items()}
    batches = FlowBatches(pipe, ds, opts.batch_size, opts.seed, noise_offset=opts.noise_offset,
                          caption_dropout=opts.caption_dropout_rate, parallel=opts.parallel)
    if own_pipe and not opts.sample_every:
        free_text_encoders(pipe)
    if opts.gradient_checkpointing:
        net = pipe.family.network(pipe.model)
        FT.checkpoint_blocks([b for name in BLOCK_LISTS if hasattr(net, name) for b in getattr(net, name)])
    guidance = FLUX_TRAIN_GUIDANCE if pipe.config.family == "flux" else None
    net_fn = pipe.family.net_fn(pipe.model, guidance)
    multiplier = pipe.model_sampling().multiplier

    def loss_fn(_net, batch, _step):
        return flow_loss(net_fn, multiplier, batch)

    trainer = FT.make_trainer(opts, pipe, ds, steps, network, batches, loss_fn, network.param_groups())
    return trainer, network, pipe, ds, steps


def save(network, path: Path, family: str, meta: dict[str, str], fp32: bool = False) -> Path:
    from ..checkpoints.files import save_safetensors
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = file_state_dict(network, network.paths, family, torch.float32 if fp32 else torch.float16)
    save_safetensors(sd, path, metadata=meta)
    return path
