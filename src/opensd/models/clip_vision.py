"""Image encoders of the CLIP family, as ComfyUI's CLIPVisionLoader runs them: OpenAI/OpenCLIP ViTs
(ViT-L/14, ViT-H/14, ViT-bigG/14) and Google's SigLIP (so400m, used by Flux Redux).

Attribute names equal transformers' ``CLIPVisionModelWithProjection`` / ``SiglipVisionModel`` keys
(``vision_model.embeddings.patch_embedding``, ``vision_model.encoder.layers.N.self_attn.q_proj``,
``vision_model.pre_layrnorm`` -- sic --, ``visual_projection``), so the files ComfyUI users keep in
models/clip_vision load with no renaming.

The two kinds differ in a few places only:

* CLIP prepends a learned class token, layer-norms the embeddings before the encoder, and its pooled
  output is the post-layernormed class token put through ``visual_projection`` (``image_embeds``);
  ``last_hidden_state`` is the encoder's output *without* the post layernorm.
* SigLIP has no class token and no pre-layernorm, its patch convolution has a bias, and the post
  layernorm is applied to every token: that normed sequence is ``last_hidden_state``, and (as in
  ComfyUI, which skips SigLIP's attention-pooling head) also ``image_embeds``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass(frozen=True)
class VisionConfig:
    kind: str                  # "clip" or "siglip"
    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    hidden_act: str
    projection_dim: int | None = None  # CLIP's visual_projection width; None for SigLIP
    layer_norm_eps: float = 1e-5
    label: str = ""            # what ComfyUI calls it ("ViT-H/14"), for messages

    @property
    def positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + (self.kind == "clip")

    @property
    def mean(self) -> tuple[float, float, float]:
        return CLIP_MEAN if self.kind == "clip" else SIGLIP_MEAN

    @property
    def std(self) -> tuple[float, float, float]:
        return CLIP_STD if self.kind == "clip" else SIGLIP_STD


@dataclass
class VisionOutput:
    """ComfyUI's CLIP_VISION_OUTPUT: readable as attributes or, like its Output class, by key."""
    last_hidden_state: torch.Tensor          # (B, tokens, hidden)
    image_embeds: torch.Tensor               # CLIP: (B, projection_dim); SigLIP: (B, tokens, hidden)
    penultimate_hidden_states: torch.Tensor  # the second-to-last layer's output (B, tokens, hidden)

    def __getitem__(self, key: str) -> torch.Tensor:
        return getattr(self, key)


class Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        if cfg.kind == "clip":
            self.class_embedding = nn.Parameter(torch.empty(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, cfg.patch_size, stride=cfg.patch_size,
                                         bias=cfg.kind == "siglip")
        self.position_embedding = nn.Embedding(cfg.positions, cfg.hidden_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)
        if hasattr(self, "class_embedding"):
            x = torch.cat([self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class MLP(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.hidden_act]
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = Attention(cfg.hidden_size, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.layers))


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        if cfg.kind == "clip":
            self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class VisionModel(nn.Module):
    """``forward(pixels)`` takes preprocessed (B, 3, S, S) pixels (see :func:`preprocess`)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = VisionTransformer(cfg)
        if cfg.projection_dim is not None:
            self.visual_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias=False)

    def forward(self, pixels: torch.Tensor) -> VisionOutput:
        vm = self.vision_model
        x = vm.embeddings(pixels)
        if hasattr(vm, "pre_layrnorm"):
            x = vm.pre_layrnorm(x)
        penultimate = x
        for i, layer in enumerate(vm.encoder.layers):
            x = layer(x)
            if i == len(vm.encoder.layers) - 2:
                penultimate = x
        if self.config.kind == "siglip":
            x = vm.post_layernorm(x)
            return VisionOutput(x, x, penultimate)
        pooled = vm.post_layernorm(x[:, 0])
        return VisionOutput(x, self.visual_projection(pooled), penultimate)


def resized_size(h: int, w: int, size: int, crop: bool) -> tuple[int, int]:
    """The (height, width) preprocess resizes an h x w image to before its center crop: the shorter
    side to `size` (crop), else `size` x `size`. A thin image grows long: 1 x 1000 pixels become
    384 x 384000 for SigLIP, so callers check the size first."""
    if not crop:
        return size, size
    scale = size / min(h, w)
    return max(size, round(scale * h)), max(size, round(scale * w))


def preprocess(image: torch.Tensor, cfg: VisionConfig, crop: bool = True) -> torch.Tensor:
    """ComfyUI's clip_preprocess: an IMAGE (B, H, W, C) in 0..1 -> normalised (B, 3, S, S) pixels.

    Unless already S x S, the image is resized with antialiased bicubic, either so its shorter side
    is S and then center-cropped (crop), or straight to S x S (squashed). Pixels are then quantised
    to 8 bits, as the PIL pipeline the models were trained with saw them, and normalised with the
    model's mean and std. Extra channels (alpha) are dropped."""
    size = cfg.image_size
    x = image[..., :3].movedim(-1, 1).float()
    if x.shape[2:] != (size, size):
        x = F.interpolate(x, size=resized_size(*x.shape[2:], size, crop), mode="bicubic", antialias=True)
        top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = (255.0 * x).clamp(0, 255).round() / 255.0
    mean = torch.tensor(cfg.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std
