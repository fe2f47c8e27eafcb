"""FLUX.2 ([klein] 4B and 9B, [dev]): a rectified-flow DiT of double-stream then single-stream blocks.

Attribute names equal Black Forest Labs' single-file keys (ComfyUI's diffusion_models/
flux-2-klein-*.safetensors): `img_in`, `txt_in`, `time_in.{in_layer,out_layer}`, `guidance_in.*`
([dev]), `double_stream_modulation_{img,txt}.lin`, `single_stream_modulation.lin`,
`double_blocks.N.{img,txt}_{attn.qkv,attn.norm.{query,key}_norm.scale,attn.proj,mlp.0,mlp.2}`,
`single_blocks.N.{linear1,linear2,norm.{query,key}_norm.scale}`, `final_layer.{linear,adaLN_modulation.1}`.

What differs from Flux.1 (models/flux.py): no Linear has a bias; the MLPs are SwiGLU (the first
linear gives gate and value side by side); each block kind has ONE modulation linear shared by all
its blocks (computed once per call from the time embedding); there is no pooled text; RoPE has four
axes (time, row, column, sequence index) with theta 2000: the image's cells sit at (0, row, column,
0), text token j at (0, 0, 0, j). The latent is already patchified by the VAE (128 channels = 32 x
2x2), so each latent cell is one token.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config_dit import Flux2Config
from .flux import FREQ_DIM, TIME_FACTOR, QKNorm, joint_attention, reference_offsets, rope_attention, split_heads
from .norms import layer_norm
from .rope import check_axes, rope_angles
from .unet import timestep_embedding

FP16_MAX = 65504.0
REFERENCE_TIME = 10  # the time id step between reference images (diffusers' scale, ComfyUI's ref_index_scale)


def swiglu(x: torch.Tensor) -> torch.Tensor:
    gate, value = x.chunk(2, dim=-1)
    return F.silu(gate) * value


class SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return swiglu(x)


class Embedder(nn.Module):
    """A sinusoidal feature vector through two bias-free linears (time, [dev]'s guidance)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(FREQ_DIM, hidden, bias=False)
        self.out_layer = nn.Linear(hidden, hidden, bias=False)

    def forward(self, value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        feats = timestep_embedding(value * TIME_FACTOR, FREQ_DIM).to(dtype)
        return self.out_layer(F.silu(self.in_layer(feats)))


class SharedModulation(nn.Module):
    """`sets` (shift, scale, gate) triples for every block of one kind, from the time embedding."""

    def __init__(self, dim: int, sets: int):
        super().__init__()
        self.sets = sets
        self.lin = nn.Linear(dim, 3 * sets * dim, bias=False)

    def forward(self, vec: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        chunks = self.lin(F.silu(vec))[:, None].chunk(3 * self.sets, dim=-1)
        return [chunks[3 * i:3 * i + 3] for i in range(self.sets)]


class Attention(nn.Module):
    def __init__(self, cfg: Flux2Config):
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=False)
        self.norm = QKNorm(cfg.head_dim)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=False)


def _mlp(cfg: Flux2Config) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.hidden_size, 2 * cfg.mlp_hidden, bias=False), SwiGLU(),
                         nn.Linear(cfg.mlp_hidden, cfg.hidden_size, bias=False))


def _modulated(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return layer_norm(x) * (1 + scale) + shift


def _fp16_safe(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-FP16_MAX, FP16_MAX) if x.dtype == torch.float16 else x


class DoubleStreamBlock(nn.Module):
    def __init__(self, cfg: Flux2Config):
        super().__init__()
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_attn", Attention(cfg))
            setattr(self, f"{stream}_mlp", _mlp(cfg))

    def forward(self, img, txt, img_mod, txt_mod, pe, mask=None):
        img_out, txt_out = joint_attention(self.img_attn, self.txt_attn, _modulated(img, *img_mod[0][:2]),
                                           _modulated(txt, *txt_mod[0][:2]), pe, mask)
        img = self._residual(img, img_out, img_mod, self.img_attn, self.img_mlp)
        txt = self._residual(txt, txt_out, txt_mod, self.txt_attn, self.txt_mlp)
        return img, _fp16_safe(txt)

    @staticmethod
    def _residual(x, attn_out, mods, attn: Attention, mlp: nn.Sequential) -> torch.Tensor:
        (_, _, gate), (shift_mlp, scale_mlp, gate_mlp) = mods
        x = x + gate * attn.proj(attn_out)
        return x + gate_mlp * mlp(_modulated(x, shift_mlp, scale_mlp))


class SingleStreamBlock(nn.Module):
    """Attention and the SwiGLU MLP in parallel from one fused input and one output projection."""

    def __init__(self, cfg: Flux2Config):
        super().__init__()
        self.heads = cfg.num_heads
        self.split = (3 * cfg.hidden_size, 2 * cfg.mlp_hidden)
        self.linear1 = nn.Linear(cfg.hidden_size, sum(self.split), bias=False)
        self.linear2 = nn.Linear(cfg.hidden_size + cfg.mlp_hidden, cfg.hidden_size, bias=False)
        self.norm = QKNorm(cfg.head_dim)

    def forward(self, x: torch.Tensor, mod, pe, mask=None) -> torch.Tensor:
        shift, scale, gate = mod[0]
        qkv, mlp = self.linear1(_modulated(x, shift, scale)).split(self.split, dim=-1)
        out = rope_attention(*split_heads(qkv, self.norm, self.heads), pe, mask)
        return _fp16_safe(x + gate * self.linear2(torch.cat((out, swiglu(mlp)), dim=-1)))


class FinalLayer(nn.Module):
    """adaLN (shift, scale) from the time embedding, then the bias-free output linear."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, out_dim, bias=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=False))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None].chunk(2, dim=-1)
        return self.linear(_modulated(x, shift, scale))


def image_ids(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """RoPE ids (h * w, 4) of an h x w latent, row by row: (0, row, column, 0)."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=-1).reshape(h * w, 4)


def text_ids(n: int, device: torch.device | None = None) -> torch.Tensor:
    """RoPE ids (n, 4) of n text tokens: (0, 0, 0, index)."""
    return F.pad(torch.arange(n, device=device)[:, None], (3, 0))


def reference_tokens(refs: list[torch.Tensor], method: str = "index",
                     image: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference latents (each (B, C, h', w')) as tokens and RoPE ids after an image of `image` (h, w)
    cells. "index" (klein's own, diffusers' and ComfyUI's default): reference i at time id 10 (i + 1),
    its own rows and columns from 0; "offset" and "uxo" place them as for Flux.1 Kontext
    (models.flux.reference_offsets, one cell a patch, time ids 1 and 0 unscaled, as ComfyUI's)."""
    sizes = [tuple(r.shape[-2:]) for r in refs]
    tokens, ids = [], []
    for ref, (index, dh, dw) in zip(refs, reference_offsets(sizes, method, image, patch=1)):
        time = REFERENCE_TIME * index if method == "index" else index
        shift = torch.tensor((time, dh, dw, 0), device=ref.device)
        tokens.append(ref.flatten(2).transpose(1, 2))
        ids.append(image_ids(*ref.shape[-2:], ref.device) + shift)
    return torch.cat(tokens, dim=1), torch.cat(ids)


class Flux2(nn.Module):
    def __init__(self, cfg: Flux2Config):
        super().__init__()
        check_axes(cfg.axes_dim, cfg.head_dim, "FLUX.2")
        self.cfg = cfg
        dim = cfg.hidden_size
        self.img_in = nn.Linear(cfg.in_channels, dim, bias=False)
        self.txt_in = nn.Linear(cfg.context_in_dim, dim, bias=False)
        self.time_in = Embedder(dim)
        self.guidance_in = Embedder(dim) if cfg.guidance_embed else None
        self.double_stream_modulation_img = SharedModulation(dim, 2)
        self.double_stream_modulation_txt = SharedModulation(dim, 2)
        self.single_stream_modulation = SharedModulation(dim, 1)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(cfg) for _ in range(cfg.depth))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(cfg) for _ in range(cfg.depth_single_blocks))
        self.final_layer = FinalLayer(dim, cfg.out_channels)

    def forward_tokens(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                       timesteps: torch.Tensor, guidance: torch.Tensor | None = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens (B, N, in_channels) with ids (N, 4), text tokens (B, L, context_in_dim) with
        ids (L, 4), t (B,) in [0, 1] (sigma), [dev]'s distilled guidance scale (B,) or None. `mask`:
        (B, L) bool, the text tokens attended to (None: all). Returns (B, N, out_channels)."""
        img = self.img_in(img)
        vec = self.time_in(timesteps, img.dtype)
        if self.guidance_in is not None and guidance is not None:
            vec = vec + self.guidance_in(guidance, img.dtype)
        img_mod, txt_mod = self.double_stream_modulation_img(vec), self.double_stream_modulation_txt(vec)
        single_mod = self.single_stream_modulation(vec)
        txt = self.txt_in(txt)
        pe = rope_angles(torch.cat((txt_ids, img_ids)), self.cfg.axes_dim, self.cfg.theta)
        if mask is not None:  # keys only: every query attends to the kept text and all image tokens
            mask = F.pad(mask.bool(), (0, img.shape[1]), value=True)[:, None, None]
        for block in self.double_blocks:
            img, txt = block(img, txt, img_mod, txt_mod, pe, mask)
        x = torch.cat((txt, img), dim=1)
        for block in self.single_blocks:
            x = block(x, single_mod, pe, mask)
        return self.final_layer(x[:, txt.shape[1]:], vec)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                guidance: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                ref_latents: list[torch.Tensor] | None = None, ref_method: str = "index") -> torch.Tensor:
        """Patchified latents (B, in_channels, h, w) -> the flow velocity, same shape. `ref_latents`:
        reference images' latents (each (B, in_channels, h', w'), any size), seen but not predicted,
        placed by `ref_method` (reference_tokens)."""
        b, c, h, w = x.shape
        img, ids = x.flatten(2).transpose(1, 2), image_ids(h, w, x.device)
        if ref_latents:
            ref, ref_ids = reference_tokens(ref_latents, ref_method, (h, w))
            img, ids = torch.cat((img, ref.to(img)), dim=1), torch.cat((ids, ref_ids))
        out = self.forward_tokens(img, ids, context, text_ids(context.shape[1], x.device), timesteps, guidance,
                                  mask)[:, :h * w]
        return out.transpose(1, 2).reshape(b, -1, h, w)
