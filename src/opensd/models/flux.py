"""Flux.1 (dev, schnell): a rectified-flow DiT of double-stream then single-stream blocks.

Attribute names equal Black Forest Labs' original keys (`img_in`, `txt_in`, `time_in.in_layer`,
`vector_in`, `guidance_in`, `double_blocks.N.{img,txt}_{mod.lin,attn.qkv,attn.norm.query_norm.scale,
attn.proj,mlp.0,mlp.2}`, `single_blocks.N.{linear1,linear2,norm.key_norm.scale,modulation.lin}`,
`final_layer.{linear,adaLN_modulation.1}`), so BFL's files load without renaming.

Image latents enter as 2x2 patches packed into tokens of 4 * 16 channels. Double-stream blocks keep
separate weights for text and image tokens and attend jointly (text first); single-stream blocks
run one fused attention + MLP over the concatenated sequence. Positions are 3-axis RoPE ids
(time, row, column): zeros for text, (0, row, column) for image patches. Every sublayer is
adaLN-modulated by timestep + pooled CLIP-L (+ distilled guidance for dev) embeddings.

Kontext (image editing) is the same network: reference latents are packed the same way and appended
after the image tokens with ids placed by the reference method (reference_offsets: by default
(1, row, column), moved past each other), the output cut back to the image tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from .attention import attention
from .config_dit import FluxConfig
from .norms import FinalLayer, RMSNorm, layer_norm, modulate
from .rope import apply_rope, check_axes, rope_angles
from .unet import timestep_embedding

FREQ_DIM = 256  # width of the sinusoidal time and guidance features
TIME_FACTOR = 1000.0  # Flux takes t in [0, 1] and embeds 1000 * t


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim, param="scale")
        self.key_norm = RMSNorm(dim, param="scale")


class Modulation(nn.Module):
    """adaLN parameters from the conditioning vector: (shift, scale, gate), twice for a double block."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.count = 6 if double else 3
        self.lin = nn.Linear(dim, self.count * dim)

    def forward(self, vec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.lin(F.silu(vec)).chunk(self.count, dim=-1)


def split_heads(qkv: torch.Tensor, norm: QKNorm, heads: int):
    """Fused (B, L, 3 * H * D) projection -> q, k, v, each (B, L, H, D), q and k RMS-normed per head."""
    q, k, v = (t.unflatten(-1, (heads, -1)) for t in qkv.chunk(3, dim=-1))
    return norm.query_norm(q), norm.key_norm(k), v


def rope_attention(q, k, v, pe: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L, H, D) q, k, v with RoPE on q and k -> (B, L, H * D). `mask`: (B, 1, 1, L) bool, the
    keys every query may attend to (Chroma's masked T5 padding)."""
    heads = q.shape[2]
    q, k = apply_rope(q, *pe).flatten(2), apply_rope(k, *pe).flatten(2)
    return attention(q, k, v.flatten(2), heads, mask=mask)


def joint_attention(img_attn, txt_attn, img: torch.Tensor, txt: torch.Tensor, pe, mask=None):
    """A double-stream block's attention over normed image and text tokens, each projected by its own
    attention's fused qkv and q/k norms, attending jointly (text first): (image out, text out),
    before the output projections."""
    img_q, img_k, img_v = split_heads(img_attn.qkv(img), img_attn.norm, img_attn.heads)
    txt_q, txt_k, txt_v = split_heads(txt_attn.qkv(txt), txt_attn.norm, txt_attn.heads)
    out = rope_attention(torch.cat((txt_q, img_q), 1), torch.cat((txt_k, img_k), 1),
                         torch.cat((txt_v, img_v), 1), pe, mask)
    return out[:, txt.shape[1]:], out[:, :txt.shape[1]]


class SelfAttention(nn.Module):
    def __init__(self, cfg: FluxConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size, bias=cfg.qkv_bias)
        self.norm = QKNorm(cfg.head_dim)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)


def _mlp(cfg: FluxConfig) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cfg.hidden_size, cfg.mlp_hidden), nn.GELU(approximate="tanh"),
                         nn.Linear(cfg.mlp_hidden, cfg.hidden_size))


class DoubleStreamBlock(nn.Module):
    """`vec`: the conditioning vector its own modulation linears read, or (Chroma, whose blocks have
    none: cfg.modulated False) the image's and the text's six modulation vectors, given."""

    def __init__(self, cfg: FluxConfig):
        super().__init__()
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", Modulation(cfg.hidden_size, double=True) if cfg.modulated else None)
            setattr(self, f"{stream}_attn", SelfAttention(cfg))
            setattr(self, f"{stream}_mlp", _mlp(cfg))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, vec, pe, mask=None) -> tuple[torch.Tensor, ...]:
        img_mod, txt_mod = (self.img_mod(vec), self.txt_mod(vec)) if self.img_mod is not None else vec
        img_out, txt_out = joint_attention(self.img_attn, self.txt_attn, modulate(layer_norm(img), *img_mod[:2]),
                                           modulate(layer_norm(txt), *txt_mod[:2]), pe, mask)
        img = self._residual(img, img_out, img_mod, self.img_attn, self.img_mlp)
        txt = self._residual(txt, txt_out, txt_mod, self.txt_attn, self.txt_mlp)
        return img, txt

    @staticmethod
    def _residual(x, attn_out, mods, attn: SelfAttention, mlp: nn.Sequential) -> torch.Tensor:
        _, _, gate, shift_mlp, scale_mlp, gate_mlp = mods
        x = x + gate[:, None] * attn.proj(attn_out)
        return x + gate_mlp[:, None] * mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


class SingleStreamBlock(nn.Module):
    """Attention and MLP in parallel from one fused input projection and one output projection."""

    def __init__(self, cfg: FluxConfig):
        super().__init__()
        self.heads = cfg.num_heads
        self.split = (3 * cfg.hidden_size, cfg.mlp_hidden)
        self.linear1 = nn.Linear(cfg.hidden_size, sum(self.split))
        self.linear2 = nn.Linear(cfg.hidden_size + cfg.mlp_hidden, cfg.hidden_size)
        self.norm = QKNorm(cfg.head_dim)
        self.modulation = Modulation(cfg.hidden_size, double=False) if cfg.modulated else None

    def forward(self, x: torch.Tensor, vec, pe, mask=None) -> torch.Tensor:
        """`vec`: as DoubleStreamBlock's (Chroma: its three modulation vectors)."""
        shift, scale, gate = self.modulation(vec) if self.modulation is not None else vec
        qkv, mlp = self.linear1(modulate(layer_norm(x), shift, scale)).split(self.split, dim=-1)
        out = rope_attention(*split_heads(qkv, self.norm, self.heads), pe, mask)
        return x + gate[:, None] * self.linear2(torch.cat((out, F.gelu(mlp, approximate="tanh")), dim=-1))


def image_ids(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """RoPE ids (h * w, 3) of an h x w grid of packed patches, row by row: (0, row, column)."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(h * w, 3)


def pack(x: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, 2h, 2w) -> tokens (B, h * w, 4C) of 2x2 patches, row by row."""
    b, c, height, width = x.shape
    return x.view(b, c, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * 4)


# how Kontext's reference latents are placed in RoPE space (ComfyUI's reference_latents_method, set by
# FluxKontextMultiReferenceLatentMethod; "offset" without one)
REFERENCE_METHODS = ("offset", "index", "uxo")


def reference_offsets(sizes: list[tuple[int, int]], method: str = "offset",
                      image: tuple[int, int] = (0, 0), patch: int = 2) -> list[tuple[int, int, int]]:
    """(time id, row offset, column offset) of each reference latent of `sizes` ((H, W) latent cells),
    the offsets in patches, for an image of `image` (h, w) patches, as ComfyUI places them:
    * offset: time id 1, each reference moved past the ones before along the side that grows their
      bounding box least (diffusers' placement for one reference);
    * index: time ids 1, 2, ..., no offsets;
    * uxo (UXO/UNO): time id 0, each reference diagonally past the image and the references before.
    Offsets in cells round to patches (`patch` cells a side: 2 for Flux.1, 1 for FLUX.2) half up, as
    ComfyUI's."""
    if method not in REFERENCE_METHODS:
        raise InvalidArgument(f"reference_latents_method: {method!r} is not one of {', '.join(REFERENCE_METHODS)} "
                              "for Flux")
    out, h, w = [], 0, 0
    for i, (rh, rw) in enumerate(sizes):
        if method == "index":
            index, dh, dw = i + 1, 0, 0
        elif method == "uxo":
            index, dh, dw = 0, patch * image[0] + h, patch * image[1] + w
            h, w = h + rh, w + rw
        else:
            index, (dh, dw) = 1, ((0, w) if rh + h > rw + w else (h, 0))
            h, w = max(h, rh + dh), max(w, rw + dw)
        out.append((index, (dh + patch // 2) // patch, (dw + patch // 2) // patch))
    return out


def reference_tokens(refs: list[torch.Tensor], method: str = "offset",
                     image: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Kontext's reference latents (each (B, C, H, W)) as tokens and ids, placed by `method`
    (reference_offsets) next to an image of `image` (h, w) patches. An odd side is padded
    (circularly, as ComfyUI) to whole patches."""
    tokens, ids = [], []
    for ref, shift in zip(refs, reference_offsets([tuple(r.shape[-2:]) for r in refs], method, image)):
        rh, rw = ref.shape[-2:]
        if rh % 2 or rw % 2:
            ref = F.pad(ref, (0, rw % 2, 0, rh % 2), mode="circular")
        grid = image_ids(ref.shape[-2] // 2, ref.shape[-1] // 2, ref.device)
        tokens.append(pack(ref))
        ids.append(grid + torch.tensor(shift, device=ref.device))
    return torch.cat(tokens, dim=1), torch.cat(ids)


def add_inputs_and_blocks(net: nn.Module, cfg: FluxConfig) -> None:
    """The input embedders and the blocks of a Flux network or ControlNet, as attributes of `net`
    (Chroma's: no time, vector or guidance embedders; its approximator is its own)."""
    dim = cfg.hidden_size
    net.img_in = nn.Linear(cfg.in_channels, dim)
    if cfg.modulated:
        net.time_in = MLPEmbedder(FREQ_DIM, dim)
        net.vector_in = MLPEmbedder(cfg.vec_in_dim, dim)
        net.guidance_in = MLPEmbedder(FREQ_DIM, dim) if cfg.guidance_embed else None
    net.txt_in = nn.Linear(cfg.context_in_dim, dim)
    net.double_blocks = nn.ModuleList(DoubleStreamBlock(cfg) for _ in range(cfg.depth))
    net.single_blocks = nn.ModuleList(SingleStreamBlock(cfg) for _ in range(cfg.depth_single_blocks))


def conditioning_vector(net: nn.Module, timesteps: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor | None,
                        dtype: torch.dtype) -> torch.Tensor:
    """The adaLN vector of a Flux network or ControlNet (its time_in, guidance_in, vector_in)."""
    vec = net.time_in(timestep_embedding(timesteps * TIME_FACTOR, FREQ_DIM).to(dtype))
    if net.guidance_in is not None and guidance is not None:  # None: left out (FluxDisableGuidance)
        vec = vec + net.guidance_in(timestep_embedding(guidance * TIME_FACTOR, FREQ_DIM).to(dtype))
    return vec + net.vector_in(y)


def _residual_for(residuals: list[torch.Tensor], i: int, n_blocks: int, like: torch.Tensor) -> torch.Tensor:
    """Block i's ControlNet residual: with fewer residuals than blocks each serves ceil(n / len) blocks
    in a row (diffusers' and ComfyUI's rule). Its tokens cover the image's first ones (Kontext's
    reference tokens after them get none)."""
    r = residuals[i // -(-n_blocks // len(residuals))].to(like.dtype)
    n = like.shape[1] - r.shape[1] if like.shape[1] != r.shape[1] else 0
    return F.pad(r, (0, 0, 0, n)) if n else r


class Flux(nn.Module):
    def __init__(self, cfg: FluxConfig):
        super().__init__()
        check_axes(cfg.axes_dim, cfg.head_dim, "Flux")
        self.cfg = cfg
        dim = cfg.hidden_size
        add_inputs_and_blocks(self, cfg)
        self.final_layer = FinalLayer(dim, cfg.out_channels, adaptive=cfg.modulated)

    def forward_tokens(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                       timesteps: torch.Tensor, y: torch.Tensor, guidance: torch.Tensor | None = None,
                       control: list[tuple[list, list]] | None = None,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """BFL's own signature: packed image tokens (B, N, in_channels) with ids (N, 3), text tokens
        (B, L, context_in_dim) with ids (L, 3), t (B,) in [0, 1], pooled text (B, vec_in_dim),
        distilled guidance scale (B,) for dev. `control`: Flux ControlNets' residuals, per ControlNet
        one list for the double blocks and one for the single blocks (flux_controlnet.py), each
        (B, N', hidden) added to the image tokens (the first N' of them) after its blocks. `mask`:
        (B, L) bool, the text tokens attended to (None: all). Returns (B, N, out_channels)."""
        img = self.img_in(img)
        vec = conditioning_vector(self, timesteps, y, guidance, img.dtype)
        return self.run_blocks(img, img_ids, txt, txt_ids, lambda kind, i: vec, control, mask)

    def run_blocks(self, img: torch.Tensor, img_ids: torch.Tensor, txt: torch.Tensor, txt_ids: torch.Tensor,
                   mods, control, mask: torch.Tensor | None) -> torch.Tensor:
        """The blocks and the final layer over embedded image tokens and raw text tokens; `mods(kind,
        i)` is what block i of kind "double", "single" or "final" is modulated by."""
        txt = self.txt_in(txt)
        pe = rope_angles(torch.cat((txt_ids, img_ids)), self.cfg.axes_dim, self.cfg.theta)
        if mask is not None:  # keys only: every query attends to the kept text and all image tokens
            mask = F.pad(mask.bool(), (0, img.shape[1]), value=True)[:, None, None]
        controls = control or ()
        for i, block in enumerate(self.double_blocks):
            img, txt = block(img, txt, mods("double", i), pe, mask)
            for double, _ in controls:
                if double:
                    img = img + _residual_for(double, i, len(self.double_blocks), img)
        x = torch.cat((txt, img), dim=1)
        n_txt = txt.shape[1]
        for i, block in enumerate(self.single_blocks):
            x = block(x, mods("single", i), pe, mask)
            for _, single in controls:
                if single:  # the image tokens only
                    img = x[:, n_txt:]
                    x = torch.cat((x[:, :n_txt], img + _residual_for(single, i, len(self.single_blocks), img)), 1)
        return self.final_layer(x[:, n_txt:], mods("final", 0))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None,
                guidance: torch.Tensor | None = None, ref_latents: list[torch.Tensor] | None = None,
                control: list[tuple[list, list]] | None = None, mask: torch.Tensor | None = None,
                ref_method: str = "offset") -> torch.Tensor:
        """Latents (B, C, H, W) with even H and W -> the flow velocity, same shape. `ref_latents`:
        Kontext's reference latents (each (B, C, H', W'), any size), seen but not predicted;
        `control`, `mask`: as forward_tokens'; `ref_method`: where the references sit (REFERENCE_METHODS)."""
        b, c, height, width = x.shape
        if height % 2 or width % 2:
            raise InvalidArgument(f"size: latent sides must be even, got {height}x{width}")
        h, w = height // 2, width // 2
        img, ids = pack(x), image_ids(h, w, x.device)
        if ref_latents:
            ref, ref_ids = reference_tokens(ref_latents, ref_method, (h, w))
            img, ids = torch.cat((img, ref.to(img)), dim=1), torch.cat((ids, ref_ids))
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device)
        out = self.forward_tokens(img, ids, context, txt_ids, timesteps, y, guidance, control, mask)[:, :h * w]
        return out.view(b, h, w, -1, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, -1, height, width)
