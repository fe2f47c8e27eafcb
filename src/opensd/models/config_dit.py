"""Frozen architecture configs of the transformer families: SD3/SD3.5 (MMDiT), Flux.1, Chroma, and the T5
text encoder they share. Pure data: no file I/O, no torch.

Field names follow the original code's constructor arguments (SD3's MMDiT, BFL's FluxParams,
transformers' T5Config), so a reader of those recognises them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import TextEncoderConfig, VAEConfig


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv


@dataclass(frozen=True)
class MMDiTConfig:
    """SD3's MMDiT. The original ties width to depth (64 * depth, one 64-wide head per block);
    heads and head width are separate fields here so that tiny test configs can exist."""
    depth: int = 24
    num_heads: int = 24
    head_dim: int = 64
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    mlp_ratio: float = 4.0
    adm_in_channels: int = 2048  # pooled CLIP-L + CLIP-G
    context_dim: int = 4096  # T5-XXL width (CLIP hidden states are zero-padded up to it)
    # The learned-once sin-cos table is pos_embed_max_size^2 patches; images crop its centre.
    pos_embed_max_size: int = 192
    qk_norm: bool = False  # RMS norm of q and k per head (SD3.5)
    # Blocks whose x stream also runs a second, image-only self-attention (SD3.5 Medium's MMDiT-X).
    x_block_self_attn_layers: tuple[int, ...] = ()

    @property
    def hidden_size(self) -> int:
        return self.num_heads * self.head_dim


class _Widths:
    """Head and MLP widths of the Flux-like configs (hidden_size, num_heads, mlp_ratio)."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(frozen=True)
class FluxConfig(_Widths):
    in_channels: int = 64  # 16 latent channels packed as 2x2 patches
    out_channels: int = 64
    vec_in_dim: int = 768  # pooled CLIP-L
    context_in_dim: int = 4096  # T5-XXL width
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19  # double-stream blocks
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)  # RoPE widths per id axis; they sum to the head width
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = True  # dev: distilled guidance is an input; schnell: no such input

    # Whether each block computes its own adaLN modulation from the conditioning vector (Flux);
    # Chroma's get theirs from one approximator.
    modulated = True

    @property
    def latent_channels(self) -> int:
        return self.out_channels // 4


@dataclass(frozen=True)
class ChromaConfig(FluxConfig):
    """Chroma (lodestones' Flux.1-schnell derivative): Flux's blocks without their modulation
    linears, time, guidance and pooled-text embedders. One approximator MLP (`distilled_guidance_layer`)
    makes every modulation vector from the timestep, a guidance input (always 0) and the vector's
    own index, each sinusoidally embedded (in_dim / 4, in_dim / 4 and in_dim / 2 wide)."""
    vec_in_dim: int = 0
    guidance_embed: bool = False
    approximator_in_dim: int = 64
    approximator_hidden: int = 5120
    approximator_layers: int = 5

    modulated = False

    @property
    def mod_vectors(self) -> int:
        """The approximator's output vectors: per single block 3, per double block 6 for the image
        and 6 for the text, 2 for the final layer (344 for the released 19 + 38 blocks)."""
        return 3 * self.depth_single_blocks + 12 * self.depth + 2


@dataclass(frozen=True)
class ZImageConfig:
    """Z-Image (Tongyi-MAI's Z-Image, Z-Image-Turbo): a single-stream DiT. Two refiner blocks run over
    the image tokens (time-modulated) and two over the caption (unmodulated) before the main blocks
    see both as one sequence. Field names follow diffusers' ZImageTransformer2DModel."""
    in_channels: int = 16
    patch_size: int = 2
    dim: int = 3840
    n_layers: int = 30
    n_refiner_layers: int = 2
    n_heads: int = 30
    ffn_hidden: int = 10240  # int(dim / 3 * 8)
    cap_feat_dim: int = 2560  # Qwen3-4B's width
    axes_dims: tuple[int, ...] = (32, 48, 48)  # RoPE widths per id axis (caption/time, row, column)
    rope_theta: float = 256.0
    t_scale: float = 1000.0
    norm_eps: float = 1e-5
    adaln_dim: int = 256  # min(dim, 256): the time embedding's width
    t_hidden: int = 1024  # the time MLP's inner width

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels


@dataclass(frozen=True)
class Flux2Config(_Widths):
    """FLUX.2 ([klein] 4B/9B, [dev]): Flux.1's double- then single-stream layout with no biases,
    SwiGLU MLPs, one modulation per block kind shared by all blocks, and 4-axis RoPE (time, row,
    column, sequence). The latent arrives already patchified (128 = 32 VAE channels x 2x2), so a
    token is one latent cell. Field names follow BFL's/ComfyUI's."""
    in_channels: int = 128
    hidden_size: int = 3072
    num_heads: int = 24
    depth: int = 5  # double-stream blocks
    depth_single_blocks: int = 20
    mlp_ratio: float = 3.0
    context_in_dim: int = 7680  # three hidden states of the text encoder, side by side
    axes_dim: tuple[int, ...] = (32, 32, 32, 32)
    theta: int = 2000
    guidance_embed: bool = False  # [dev]: a distilled guidance input; [klein]: none

    @property
    def out_channels(self) -> int:
        return self.in_channels


@dataclass(frozen=True)
class QwenImageConfig:
    """Qwen-Image (Alibaba Qwen's 20B MMDiT): double-stream blocks only, each stream with its own
    6-way modulation, q/k RMS norms and GELU MLP; RoPE over (frame, row, column) with the image's
    rows and columns centred on 0. The latent enters as 2x2 patches (64 = 16 VAE channels x 4).
    Field names follow diffusers' QwenImageTransformer2DModel."""
    in_channels: int = 64
    out_channels: int = 16
    patch_size: int = 2
    num_layers: int = 60
    attention_head_dim: int = 128
    num_attention_heads: int = 24
    joint_attention_dim: int = 3584  # Qwen2.5-VL-7B's width
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)
    theta: int = 10000
    mlp_ratio: float = 4.0
    # the checkpoint's editing variant, not told by its shapes: Edit-2509/2511 ("Edit Plus",
    # QwenImageEditPlusPipeline: several references, each seen by the text encoder at ~384x384)
    edit_plus: bool = False
    zero_cond_t: bool = False  # Edit-2511: the reference tokens are modulated at time 0 (diffusers' config flag)

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


class _DiTModel:
    """What the pipeline asks of every model config, answered for the rectified-flow DiTs."""
    prediction = "flow"
    inpainting = False
    edit = False  # InstructPix2Pix-style image channels: UNets only
    size_conditioned = False
    pooled_y = True  # the network's "y" is the pooled text as it is
    cfg_embed_channels = 0
    distilled_guidance = False

    @property
    def latent_channels(self) -> int:
        return self.vae.embed_dim

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's downscale times the 2x2 patches."""
        return self.vae.downscale * 2


@dataclass(frozen=True)
class SD3ModelConfig(_DiTModel):
    """A whole SD3 / SD3.5 model. Each text encoder is optional, as SD3 allows: a missing one
    conditions with zeros in its place."""
    mmdit: MMDiTConfig
    vae: VAEConfig
    clip_l: TextEncoderConfig | None = None
    clip_g: TextEncoderConfig | None = None
    t5: T5Config | None = None
    resolution: int = 1024
    shift: float = 3.0
    t5_length: int = 256  # T5 tokens per prompt (diffusers' max_sequence_length)
    family: str = "sd3"

    @property
    def text_encoders(self) -> tuple[TextEncoderConfig, ...]:
        return tuple(c for c in (self.clip_l, self.clip_g) if c is not None)


@dataclass(frozen=True)
class FluxModelConfig(_DiTModel):
    """A whole Flux.1 model: its DiT, the 16-channel VAE, CLIP-L (pooled only) and T5-XXL."""
    flux: FluxConfig
    vae: VAEConfig
    clip_l: TextEncoderConfig | None = None
    t5: T5Config | None = None
    resolution: int = 1024
    family: str = "flux"

    @property
    def distilled_guidance(self) -> bool:
        return self.flux.guidance_embed

    @property
    def inpainting(self) -> bool:
        """Flux.1 Fill: inputs beyond the packed latent (the masked image and the mask)."""
        return self.flux.in_channels > self.flux.out_channels

    @property
    def t5_length(self) -> int:
        """BFL's: 512 tokens for dev, 256 for schnell."""
        return 512 if self.flux.guidance_embed else 256

    @property
    def text_encoders(self) -> tuple[TextEncoderConfig, ...]:
        return () if self.clip_l is None else (self.clip_l,)


@dataclass(frozen=True)
class ChromaModelConfig(_DiTModel):
    """A whole Chroma model: its DiT, Flux's VAE and T5-XXL (no CLIP). Prompts run with real CFG
    against a negative prompt; T5's padding is masked but for one token."""
    chroma: ChromaConfig
    vae: VAEConfig
    t5: T5Config | None = None
    resolution: int = 1024
    t5_length: int = 512
    family: str = "chroma"
    text_encoders = ()


@dataclass(frozen=True)
class ZImageModelConfig(_DiTModel):
    """A whole Z-Image model: its DiT, Flux's VAE and the Qwen3 text encoder (`qwen3`: its config,
    None when the model comes without one). The network takes no pooled text."""
    z_image: ZImageConfig
    vae: VAEConfig
    qwen3: object | None = None
    resolution: int = 1024
    shift: float = 3.0  # the scheduler's (Z-Image-Turbo's scheduler_config, ComfyUI's ModelSamplingAuraFlow)
    text_length: int = 512  # Qwen tokens per prompt (diffusers' max_sequence_length)
    family: str = "z_image"
    text_encoders = ()


@dataclass(frozen=True)
class PatchedLatentConfig:
    """FLUX.2's latent as the pipeline sees it: the VAE's (`file`, 32 channels at 1/8) folded into
    2x2 patches and normalised by the statistics in the VAE's weights, 128 channels at 1/16. The
    whole model's `vae` (dit_models.Flux2Model) encodes to and decodes from this latent itself, so
    scaling here is the identity."""
    file: VAEConfig
    scaling_factor = 1.0
    shift_factor = 0.0
    latents_mean = ()

    @property
    def downscale(self) -> int:
        return 2 * self.file.downscale

    @property
    def embed_dim(self) -> int:
        return 4 * self.file.embed_dim

    def scaled(self, z):
        return z

    def unscaled(self, z):
        return z


@dataclass(frozen=True)
class Flux2ModelConfig(_DiTModel):
    """A whole FLUX.2 model: its DiT, the 32-channel VAE (`vae`: the patched latent it gives) and
    the Qwen3 text encoder of [klein] (`qwen3`: its config, None when the model comes without one)
    or Mistral Small 3.1's language model of [dev] (`mistral`, likewise). The network takes no pooled
    text; each latent cell is one token."""
    flux2: Flux2Config
    vae: PatchedLatentConfig
    qwen3: object | None = None
    resolution: int = 1024
    text_length: int = 512  # Qwen tokens per prompt (diffusers' max_sequence_length)
    distilled: bool = True  # step-distilled (klein 4B/9B); False: the base models, run with CFG
    family: str = "flux2"
    mistral: object | None = None
    text_encoders = ()

    @property
    def size_multiple(self) -> int:
        return self.vae.downscale

    @property
    def distilled_guidance(self) -> bool:
        return self.flux2.guidance_embed


@dataclass(frozen=True)
class FlowShiftConfig:
    """A shifted flow schedule as diffusers' FlowMatchEulerDiscreteScheduler configures it
    (scheduler_config.json): mu linear in the image's tokens, base_shift at base_image_seq_len and
    max_shift at max_image_seq_len, the times shifted exponentially by mu (`fixed_shift` instead: its
    use_dynamic_shifting false, SD3's shift by `shift`), then (shift_terminal, 0: none) stretched so
    that the last step's sigma is shift_terminal. Defaults: Qwen-Image's."""
    base_shift: float = 0.5
    max_shift: float = 0.9
    base_image_seq_len: int = 256
    max_image_seq_len: int = 8192
    shift_terminal: float = 0.02
    fixed_shift: float = 0.0


@dataclass(frozen=True)
class QwenImageModelConfig(_DiTModel):
    """A whole Qwen-Image model: its DiT, the Qwen-Image VAE (`vae`: the Wan 2.1 VAE for single
    frames, its latent normalised per channel) and the Qwen2.5-VL-7B text encoder (`qwen25vl`: its
    config, None when the model comes without one). The network takes no pooled text."""
    qwen_image: QwenImageConfig
    vae: object
    qwen25vl: object | None = None
    qwen25vl_vision: object | None = None  # its vision tower (Qwen-Image-Edit's image prompts), when loaded
    resolution: int = 1328  # the model card's and ComfyUI template's 1:1 size (QwenImagePipeline alone: 1024)
    schedule: FlowShiftConfig = FlowShiftConfig()
    text_length: int = 512  # prompt tokens kept after the template (the pipeline's max_sequence_length)
    family: str = "qwen_image"
    text_encoders = ()
    cfg_renorm = 2  # true CFG rescaled to the prompt's norm per 2x2 latent patch (QwenImagePipeline)


# --- The released models ------------------------------------------------------------------

T5_XXL = T5Config()

SD3_MEDIUM = MMDiTConfig(depth=24, num_heads=24)
SD35_LARGE = MMDiTConfig(depth=38, num_heads=38, qk_norm=True)
SD35_MEDIUM = MMDiTConfig(depth=24, num_heads=24, qk_norm=True, pos_embed_max_size=384,
                          x_block_self_attn_layers=tuple(range(13)))

FLUX_DEV = FluxConfig()
FLUX_SCHNELL = FluxConfig(guidance_embed=False)
CHROMA = ChromaConfig()  # Chroma1-HD, chroma-unlocked-v*: 19 double, 38 single blocks, 3072 wide
Z_IMAGE = ZImageConfig()  # Z-Image-Turbo: 30 blocks 3840 wide, 30 heads of 128
QWEN_IMAGE = QwenImageConfig()  # Qwen-Image: 60 blocks 3072 wide, 24 heads of 128
FLUX2_KLEIN_4B = Flux2Config()  # Qwen3-4B: 3 x 2560 context features
FLUX2_KLEIN_9B = Flux2Config(hidden_size=4096, num_heads=32, depth=8, depth_single_blocks=24,
                             context_in_dim=12288)  # Qwen3-8B: 3 x 4096
FLUX2_DEV = Flux2Config(hidden_size=6144, num_heads=48, depth=8, depth_single_blocks=48,
                        context_in_dim=15360, guidance_embed=True)  # Mistral Small 3.1: 3 x 5120

# 16-channel VAEs: no quant convs, and latents are shifted as well as scaled:
# model latent = (vae latent - shift_factor) * scaling_factor.
SD3_VAE = VAEConfig(z_channels=16, embed_dim=16, scaling_factor=1.5305, shift_factor=0.0609,
                    use_quant_conv=False)
FLUX_VAE = VAEConfig(z_channels=16, embed_dim=16, scaling_factor=0.3611, shift_factor=0.1159,
                     use_quant_conv=False)
# FLUX.2's VAE: 32 channels with quant convs, no scale or shift: its latent is normalised by the
# statistics in the file instead (models/flux2_latents.py).
FLUX2_VAE = VAEConfig(z_channels=32, embed_dim=32, scaling_factor=1.0, shift_factor=0.0,
                      use_quant_conv=True, latent_batch_norm=True)
