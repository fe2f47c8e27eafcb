"""Frozen architecture configs. Pure data: no file I/O, no torch.

Field names follow the original LDM/SGM yaml configs where one exists, so a reader of those
configs recognises them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

Family = Literal["sd1", "sd2", "sdxl", "sdxl_refiner", "small"]
# "edm": EDM's denoiser output F (x0 = c_skip x + c_out F, Karras et al. 2022), Playground v2.5's.
Prediction = Literal["eps", "v", "edm"]


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Transformer blocks per SpatialTransformer at each level; 0 means that level has no attention.
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    # Exactly one of these decides the head split: a fixed head count (SD1) or a fixed head width.
    num_heads: int = -1
    num_head_channels: int = 64
    use_linear_in_transformer: bool = False
    # Size of the extra "y" vector (SDXL: pooled text + Fourier-embedded size/crop ids); 0 = none.
    adm_in_channels: int = 0
    # Guidance-distilled (our small models only): "y" is instead a sinusoidal embedding of the CFG
    # scale (adm_in_channels wide), so one UNet call on the prompt gives the guided prediction; with
    # no "y" the UNet embeds scale 1, the plain conditional prediction.
    guidance_embed: bool = False
    # Stable unCLIP (SD 2.1 unclip-l/-h): "y" is a noise-augmented CLIP image embedding and its noise
    # level's embedding (pipeline.unclip); with no image, zeros, as ComfyUI gives it.
    unclip: bool = False

    @property
    def size_conditioned(self) -> bool:
        """Whether "y" is SDXL's pooled text + size/crop vector (built by conditioning.size_vector)."""
        return bool(self.adm_in_channels) and not self.guidance_embed and not self.unclip

    def heads_for(self, channels: int) -> int:
        if self.num_heads > 0:
            return self.num_heads
        return max(1, channels // self.num_head_channels)


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    scaling_factor: float = 0.18215
    # Subtracted before scaling (SD3 and Flux); 0 for the SD1/SD2/SDXL VAEs.
    shift_factor: float = 0.0
    # SD1/SD2/SDXL have 1x1 quant_conv/post_quant_conv around the latent; SD3's and Flux's VAEs do not.
    use_quant_conv: bool = True
    # Per-channel statistics the latent is normalised with before scaling (Playground v2.5); () = none.
    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()
    # FLUX.2's VAE: a `bn` of running statistics over the 2x2-patchified latent (4 * z_channels
    # channels), which the family applies (models/flux2_latents.py); batch_norm_eps is its eps.
    latent_batch_norm: bool = False
    batch_norm_eps: float = 1e-4

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def scaled(self, z):
        """A VAE latent as the diffusion network sees it: (z - shift_factor) * scaling_factor, or
        (z - mean) * scaling_factor / std per channel where the model has latent statistics."""
        if self.latents_mean:
            mean, std = self._stats(z)
            return (z - mean) * self.scaling_factor / std
        return (z - self.shift_factor) * self.scaling_factor if self.shift_factor else z * self.scaling_factor

    def unscaled(self, z):
        """The inverse of `scaled`: the latent the VAE decodes."""
        if self.latents_mean:
            mean, std = self._stats(z)
            return z * std / self.scaling_factor + mean
        return z / self.scaling_factor + self.shift_factor if self.shift_factor else z / self.scaling_factor

    def _stats(self, z):
        """latents_mean and latents_std shaped to broadcast over z's channel dimension (dim 1)."""
        shape = (-1,) + (1,) * (z.ndim - 2)
        return z.new_tensor(self.latents_mean).view(shape), z.new_tensor(self.latents_std).view(shape)


@dataclass(frozen=True)
class TextEncoderConfig:
    # "hf": OpenAI CLIP in transformers' naming (SD1, SDXL's first encoder);
    # "openclip": OpenCLIP naming (SD2's ViT-H, SDXL's ViT-bigG).
    naming: Literal["hf", "openclip"] = "hf"
    vocab_size: int = 49408
    width: int = 768
    layers: int = 12
    heads: int = 12
    max_length: int = 77
    act: Literal["quick_gelu", "gelu"] = "quick_gelu"
    # Hidden width of each layer's MLP; 0 = 4 * width, as in every released CLIP.
    intermediate_size: int = 0
    # Output size of the text projection; 0 = the file has no projection.
    projection_dim: int = 0
    # Which hidden state conditions the UNet: 1 = last layer, 2 = penultimate ("CLIP skip").
    skip: int = 1
    # Whether the final LayerNorm is applied to that hidden state (SD1 and SD2: yes; SDXL: no).
    final_norm: bool = True
    # Token used to pad prompts to max_length: OpenAI CLIP pads with end-of-text, open_clip with 0.
    pad_token: int = 49407
    # SDXL concatenates the pooled, projected output of this encoder into the UNet's "y".
    pooled: bool = False

    @property
    def mlp_width(self) -> int:
        return self.intermediate_size or 4 * self.width


@dataclass(frozen=True)
class ContinuousEDM:
    """A network trained on continuous sigmas in EDM's time (0.25 ln sigma), such as CosXL: the
    bounds its sigma schedules span and the data deviation its input/output scalings use."""
    sigma_min: float = 0.002
    sigma_max: float = 120.0
    sigma_data: float = 1.0


@dataclass(frozen=True)
class ModelConfig:
    family: Family
    unet: UNetConfig
    vae: VAEConfig
    text_encoders: tuple[TextEncoderConfig, ...]
    prediction: Prediction = "eps"
    resolution: int = 512  # native image side in pixels, the default width/height
    # The training schedule rescaled to zero terminal SNR (Lin et al. 2023; NoobAI/Illustrious v-pred).
    zsnr: bool = False
    # Set for continuous-time EDM models (CosXL, CosXL Edit); None: 1000 discrete timesteps.
    edm: ContinuousEDM | None = None

    @property
    def inpainting(self) -> bool:
        return self.unet.in_channels == 9

    @property
    def edit(self) -> bool:
        """An InstructPix2Pix-style edit model: 4 more input channels, the latent of the image to edit."""
        return self.unet.in_channels == 8

    @property
    def latent_channels(self) -> int:
        return self.vae.embed_dim

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's downscale)."""
        return self.vae.downscale

    @property
    def size_conditioned(self) -> bool:
        """Whether the network's "y" is SDXL's pooled text + size/crop vector."""
        return self.unet.size_conditioned

    @property
    def distilled_guidance(self) -> bool:
        """Whether the network takes a distilled guidance scale apart from CFG (Flux dev)."""
        return False

    @property
    def pooled_y(self) -> bool:
        """Whether the network's "y" is the pooled text vector as it is (the DiT families)."""
        return False

    @property
    def cfg_embed_channels(self) -> int:
        """Width of the CFG-scale embedding a guidance-distilled network takes as "y" (0: none)."""
        return self.unet.adm_in_channels if self.unet.guidance_embed else 0


# --- The known families at real size -------------------------------------------------------

CLIP_L = TextEncoderConfig()
OPENCLIP_H = TextEncoderConfig(
    naming="openclip", width=1024, layers=24, heads=16, act="gelu", projection_dim=1024,
    skip=2, final_norm=True, pad_token=0,
)
SDXL_CLIP_L = TextEncoderConfig(skip=2, final_norm=False)
OPENCLIP_BIGG = TextEncoderConfig(
    naming="openclip", width=1280, layers=32, heads=20, act="gelu", projection_dim=1280,
    skip=2, final_norm=False, pad_token=0, pooled=True,
)

SD1_UNET = UNetConfig(num_heads=8, num_head_channels=-1)
SD2_UNET = UNetConfig(context_dim=1024, use_linear_in_transformer=True)
SDXL_UNET = UNetConfig(
    channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
    context_dim=2048, use_linear_in_transformer=True, adm_in_channels=2816,
)
SDXL_REFINER_UNET = UNetConfig(
    model_channels=384, channel_mult=(1, 2, 4, 4), transformer_depth=(0, 4, 4, 0),
    transformer_depth_middle=4, context_dim=1280, use_linear_in_transformer=True,
    adm_in_channels=2560,
)
SD_VAE = VAEConfig()
SDXL_VAE = VAEConfig(scaling_factor=0.13025)


def sd1(inpainting: bool = False) -> ModelConfig:
    return ModelConfig("sd1", _inpaint(SD1_UNET, inpainting), SD_VAE, (CLIP_L,))


def sd2(prediction: Prediction = "v", inpainting: bool = False) -> ModelConfig:
    res = 768 if prediction == "v" else 512
    return ModelConfig("sd2", _inpaint(SD2_UNET, inpainting), SD_VAE, (OPENCLIP_H,), prediction, res)


def sdxl(inpainting: bool = False) -> ModelConfig:
    return ModelConfig("sdxl", _inpaint(SDXL_UNET, inpainting), SDXL_VAE,
                       (SDXL_CLIP_L, OPENCLIP_BIGG), "eps", 1024)


def sdxl_refiner() -> ModelConfig:
    return ModelConfig("sdxl_refiner", SDXL_REFINER_UNET, SDXL_VAE, (OPENCLIP_BIGG,), "eps", 1024)


def _inpaint(unet: UNetConfig, inpainting: bool) -> UNetConfig:
    return replace(unet, in_channels=9) if inpainting else unet
