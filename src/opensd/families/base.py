"""The model-family seam: everything the loader, the pipeline, the adapters and the faces need to know
about one family of diffusion models, in one object (docs/model-families.md says how to add one).

A family answers:

* files: which state dicts are its own (`detect`, from key names and shapes alone, in any layout
  it knows) and how they map onto the layout of its module (`canonical`), how its diffusers
  folders map (`read_folder`), text encoders in files of their own (`encoder_tensors`), what a
  model must still be given (`check_complete`), how the whole model is built (`build`: a module
  whose state-dict keys are the original single file's), what dtype each weight is kept in
  (`weight_dtype`) and which float8/GGUF-stored Linears stay stored (`keeps_stored`);
* the network: the denoising module (`network`) and how it is called (`net_fn`: x, the network's
  time, context, pooled vector, ControlNet residuals), what wraps a sampling run (`running`);
* sampling: what it predicts and how time is fed (`sampling`: a ModelSampling for eps/v over
  discrete timesteps, a FlowSampling for rectified flow with its shift), its default schedule, CFG
  scale and distilled guidance;
* text: the prompt conditioner (`conditioner`) that turns A1111-syntax prompts into the context
  and pooled vectors its network takes.

A model config (models/config.py, config_dit.py) names its family in `config.family`, which one of
`members` of exactly one registered family (families/__init__.py) holds.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InvalidArgument

Shapes = Mapping[str, tuple[int, ...]]
# Add-ons written for one kind of network, by the name families list them under.
ADAPTERS = {"lora": "LoRA", "controlnet": "ControlNet", "freeu": "FreeU", "ldm_config": "an LDM yaml config",
            "ip_adapter": "IP-Adapter",
            "fooocus_inpaint": "Fooocus inpaint (it patches an SDXL UNet's first block and weights)",
            "hypernetwork": "a hypernetwork (it transforms a UNet's attention keys and values)",
            "deep_cache": "DeepCache (it skips a UNet's deep blocks)",
            "attention_speedups": "token merging / Hypertile (they patch a UNet's self-attention)",
            "pag": "PerturbedAttentionGuidance (it patches a UNet's middle-block self-attention)",
            "deep_shrink": "PatchModelAddDownscale (Kohya deep shrink resizes inside a UNet)",
            "skip_layers": "SkipLayerGuidance (it skips blocks of an SD3/Flux DiT)",
            "continuous_sampling": "ModelSamplingContinuousEDM/V (flow models take ModelSamplingSD3 or "
                                   "ModelSamplingFlux)",
            "checkpoint_save": "CheckpointSave (it writes Stable Diffusion 1.x/2.x/XL checkpoints)",
            "discrete_sampling": "ModelSamplingDiscrete (eps/v/x0/LCM sampling; flow models take ModelSamplingSD3 "
                                 "or ModelSamplingFlux)"}
# net_fn(x, t, context, y, control=None) -> the network's output for a batch
NetFn = Callable[..., torch.Tensor]


class Family:
    name: str = ""
    label: str = ""                        # for people: "Stable Diffusion 3"
    members: tuple[str, ...] = ()          # the config.family values this family owns
    default_scheduler: str | None = None   # the schedule "Automatic" means here; None: the sampler's own
    default_cfg: float | None = None       # None: A1111's CFG default
    default_guidance: float | None = None  # distilled guidance fed to the network (Flux dev)
    default_steps: int | None = None       # None: A1111's steps default
    adapters: frozenset[str] = frozenset()  # the add-ons written for its network (ADAPTERS)
    smaller_files: str = ""                # its smaller releases, for the not-enough-memory advice (ram_fit.py)

    def owns(self, cfg) -> bool:
        return cfg.family in self.members

    def defaults(self, cfg) -> dict[str, float | int]:
        """The settings a generation of the model `cfg` takes where it leaves them unset, those this
        family sets ("cfg", "steps", "distilled_guidance"): the pipeline's defaults and the
        recommendation our model list gives the web UI."""
        out = {"cfg": self.default_cfg, "steps": self.default_steps, "distilled_guidance": self.default_guidance}
        return {k: v for k, v in out.items() if v is not None}

    def require(self, adapter: str, param: str) -> None:
        """InvalidArgument naming `param` unless this family's networks take `adapter`."""
        if adapter not in self.adapters:
            raise InvalidArgument(f"{param}: {ADAPTERS[adapter]} is not available for {self.label} models yet")

    # --- files --------------------------------------------------------------------------------

    def detect(self, shapes: Shapes, metadata: Mapping[str, str], path: str, prediction=None):
        """The config of an original-layout state dict of this family, or None when it is not one."""
        raise NotImplementedError

    def read_folder(self, path: Path, index: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
        """A diffusers folder of this family (`index`: its model_index.json) as (original-layout state
        dict, metadata), or None when it is another family's."""
        return None

    def canonical(self, sd: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
        """A state dict `detect` recognised, in the layout `build`'s module has (keys renamed)."""
        return sd

    def encoder_tensors(self, files: list[Path]) -> dict[str, torch.Tensor]:
        """Text encoders from files of their own, under the whole model's keys."""
        raise CheckpointError(files[0], f"{self.label} models take no separate text-encoder files")

    def missing_parts(self, shapes: Shapes) -> list[str]:
        """Parts a state dict comes without that the model folder may hold apart ("vae", "clip_l",
        "clip_g", "t5xxl"; checkpoints/part_files.py finds them)."""
        return []

    def check_complete(self, cfg, shapes: Shapes, path) -> None:
        """CheckpointError naming the parts a model must still be given (a DiT file without its VAE)."""

    def build(self, cfg) -> nn.Module:
        raise NotImplementedError

    def weight_dtype(self, key: str, dtype: torch.dtype, vae_dtype: torch.dtype) -> torch.dtype:
        return vae_dtype if key.startswith("first_stage_model.") else dtype

    def keeps_stored(self, key: str) -> bool:
        """Whether the Linear weight `key`, stored in float8 or GGUF blocks, may stay so and be
        unpacked per call (models/stored_weights.py); otherwise it is unpacked on load. False
        where a network reads its Linear weights other than by calling them (the UNet)."""
        return False

    def finish(self, loaded, explicit_prediction) -> None:
        """Anything decided after the weights are in (SD2's eps/v guess)."""

    def parameter_count(self, cfg) -> int:
        """Parameters of the denoising network (precision "auto" depends on it)."""
        with torch.device("meta"):
            return sum(p.numel() for p in self.network(self.build(cfg)).parameters())

    # --- the network --------------------------------------------------------------------------

    def network(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

    def net_fn(self, model: nn.Module, guidance: float | None = None, references: list | None = None) -> NetFn:
        """The network as the samplers call it. `references`: reference latents (Flux.1 Kontext);
        families that take none ignore them, as ComfyUI's models do."""
        raise NotImplementedError

    def text_modules(self, model: nn.Module) -> list[nn.Module]:
        """The text encoders (memory modes move them together)."""
        return list(model.text_encoders)

    def blocks(self, model: nn.Module) -> list[nn.Module] | None:
        """The network's top-level blocks in the order they run, for lowvram's one-at-a-time moves;
        None: the network moves whole (state it keeps outside its blocks)."""
        return None

    def lora_modules(self, model: nn.Module) -> list:
        """What LoRA files may patch: adapters.lora_keys.LoraModule per module, under every name the
        family's LoRA files use (families with "lora" in `adapters`)."""
        raise NotImplementedError

    def inpaint_mask_scale(self, cfg) -> int:
        """How much finer than the latent an inpainting network's mask channels are: callers fit the
        mask to the latent's size times this before `inpainting_channels`."""
        return 1

    def inpainting_channels(self, mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """An inpainting network's extra input channels from `mask` (B, 1, h * scale, w * scale;
        1 = repaint) and the masked image's `latent` (B, C, h, w): 9-channel UNets take the mask,
        then the latent."""
        return torch.cat([mask, latent], dim=1)

    def running(self, model: nn.Module):
        """A context manager around one sampling run of the network."""
        return nullcontext()

    # --- sampling and text --------------------------------------------------------------------

    def sampling(self, pipe, width: int, height: int, shift: float | None = None, steps: int | None = None) -> Any:
        raise NotImplementedError

    def conditioner(self, pipe, clip_skip: int | None, **text) -> Any:
        """The prompt encoder; `text`: PromptConditioner's emphasis, comma_backtrack, clip_l_skip."""
        raise NotImplementedError

    def context_width(self, cfg) -> int:
        """The width of the text context (CONDITIONING) the network takes."""
        raise NotImplementedError
