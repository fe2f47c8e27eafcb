"""Z-Image (Tongyi-MAI's Z-Image / Z-Image-Turbo): a single-stream DiT on rectified flow.

Attribute names equal the released single file's keys (ComfyUI's diffusion_models/
z_image_turbo_bf16.safetensors): `x_embedder`, `t_embedder.mlp.{0,2}`, `cap_embedder.{0,1}`,
`x_pad_token`, `cap_pad_token`, `{noise_refiner,context_refiner,layers}.N.{attention.{qkv,out,q_norm,
k_norm},feed_forward.{w1,w2,w3},attention_norm1/2,ffn_norm1/2,adaLN_modulation.0}`,
`final_layer.{linear,adaLN_modulation.1}`.

The latent enters as 2x2 patches, each token's features ordered (row, column, channel). Image tokens
and caption tokens (the text encoder's hidden states) are each padded to a multiple of 32 with a
learned pad token, refined apart (the image blocks modulated by time, the caption blocks not), then
run as one sequence, image first. Every block is pre- and post-normed (RMS) around attention and a
SwiGLU MLP; the modulated ones scale the pre-norm by 1 + scale and gate the residual by tanh(gate).
RoPE ids are (axis 0, row, column): caption token j sits at (1 + j, 0, 0), the image at
(padded caption length + 1, row, column), pad image tokens at (0, 0, 0). The time fed in is the
network's own (diffusers' pipeline gives 1 - sigma) and the output is minus the flow velocity.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from .attention import attention
from .config_dit import ZImageConfig
from .norms import RMSNorm, layer_norm
from .rope import apply_rope, rope_angles
from .unet import timestep_embedding

SEQ_MULTIPLE = 32  # image and caption tokens are each padded to a multiple of this
FREQ_DIM = 256  # width of the sinusoidal time features


def padded(n: int) -> int:
    return -(-n // SEQ_MULTIPLE) * SEQ_MULTIPLE


class Attention(nn.Module):
    def __init__(self, cfg: ZImageConfig):
        super().__init__()
        self.heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, eps=1e-5)
        self.k_norm = RMSNorm(cfg.head_dim, eps=1e-5)

    def forward(self, x: torch.Tensor, pe, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)) for t in self.qkv(x).chunk(3, dim=-1))
        q, k = apply_rope(self.q_norm(q), *pe), apply_rope(self.k_norm(k), *pe)
        return self.out(attention(q.flatten(2), k.flatten(2), v.flatten(2), self.heads, mask=mask))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """`modulated`: scale and gate from the time embedding (the image refiner and the main blocks)."""

    def __init__(self, cfg: ZImageConfig, modulated: bool):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg.dim, cfg.ffn_hidden)
        for name in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"):
            setattr(self, name, RMSNorm(cfg.dim, eps=cfg.norm_eps))
        self.adaLN_modulation = nn.Sequential(nn.Linear(cfg.adaln_dim, 4 * cfg.dim)) if modulated else None

    def forward(self, x: torch.Tensor, pe, mask: torch.Tensor | None, t_emb: torch.Tensor | None) -> torch.Tensor:
        if self.adaLN_modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), pe, mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_attn, gate_attn, scale_mlp, gate_mlp = self.adaLN_modulation(t_emb)[:, None].chunk(4, dim=-1)
        x = x + gate_attn.tanh() * self.attention_norm2(
            self.attention(self.attention_norm1(x) * (1 + scale_attn), pe, mask))
        return x + gate_mlp.tanh() * self.ffn_norm2(self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp)))


class FinalLayer(nn.Module):
    """LayerNorm (no affine) scaled by 1 + adaLN(time), then the output linear."""

    def __init__(self, cfg: ZImageConfig):
        super().__init__()
        self.linear = nn.Linear(cfg.dim, cfg.patch_size ** 2 * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.adaln_dim, cfg.dim))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        return self.linear(layer_norm(x) * (1 + self.adaLN_modulation(t_emb)[:, None]))


class TimeEmbedder(nn.Module):
    def __init__(self, cfg: ZImageConfig):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, cfg.t_hidden), nn.SiLU(), nn.Linear(cfg.t_hidden, cfg.adaln_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # the bias's dtype is the compute dtype: a float8 or GGUF weight stays stored (stored_weights.py)
        return self.mlp(timestep_embedding(t, FREQ_DIM).to(self.mlp[0].bias.dtype))


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Latents (B, C, p h, p w) -> tokens (B, h * w, p * p * C), features ordered (row, column, channel)."""
    b, c, height, width = x.shape
    return x.view(b, c, height // p, p, width // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, height: int, width: int) -> torch.Tensor:
    b = tokens.shape[0]
    h, w = height // p, width // p
    return tokens.view(b, h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4).reshape(b, -1, height, width)


def summed(dicts) -> dict[int, torch.Tensor]:
    """{index: residual} dicts added up by index."""
    out: dict[int, torch.Tensor] = {}
    for d in dicts:
        for i, h in d.items():
            out[i] = h if i not in out else out[i] + h
    return out


def caption_lengths(context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B,) the caption tokens each sample has: `mask`'s leading True run (all of context's without one)."""
    if mask is None:
        return torch.full((len(context),), context.shape[1], dtype=torch.long, device=context.device)
    lengths = mask.sum(dim=1)
    if not torch.equal(mask.bool(), torch.arange(mask.shape[1], device=mask.device)[None] < lengths[:, None]):
        raise InvalidArgument("Z-Image's caption mask must keep each prompt's first tokens and drop the rest")
    return lengths


@dataclass
class Embedded:
    """ZImage.embed's result: the joint sequence (image tokens, padded, then the caption's) entering
    the main blocks, its RoPE angles and key mask, the time embedding, the image tokens' angles, the
    image token count and its padded length."""
    seq: torch.Tensor
    pe: tuple
    keys: torch.Tensor | None
    t_emb: torch.Tensor
    img_pe: tuple
    n_img: int
    n_x: int


class ZImage(nn.Module):
    def __init__(self, cfg: ZImageConfig):
        super().__init__()
        if sum(cfg.axes_dims) != cfg.head_dim:
            raise ValueError(f"Z-Image config: axes_dims {cfg.axes_dims} must sum to the head width {cfg.head_dim}")
        self.cfg = cfg
        self.x_embedder = nn.Linear(cfg.patch_size ** 2 * cfg.in_channels, cfg.dim)
        self.t_embedder = TimeEmbedder(cfg)
        self.cap_embedder = nn.Sequential(RMSNorm(cfg.cap_feat_dim, eps=cfg.norm_eps),
                                          nn.Linear(cfg.cap_feat_dim, cfg.dim))
        self.x_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, cfg.dim))
        self.noise_refiner = nn.ModuleList(Block(cfg, modulated=True) for _ in range(cfg.n_refiner_layers))
        self.context_refiner = nn.ModuleList(Block(cfg, modulated=False) for _ in range(cfg.n_refiner_layers))
        self.layers = nn.ModuleList(Block(cfg, modulated=True) for _ in range(cfg.n_layers))
        self.final_layer = FinalLayer(cfg)

    def _angles(self, ids: torch.Tensor):
        return rope_angles(ids, self.cfg.axes_dims, self.cfg.rope_theta)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None, control=None) -> torch.Tensor:
        """Latents (B, C, H, W), the network's time t (B,) in [0, 1] (1 - sigma), caption features
        (B, L, cap_feat_dim), `mask` (B, L) bool: each sample's caption tokens (a leading run; None:
        all L). `control`: callables taking (self, the Embedded of these inputs) and giving
        {main block index: residual} (Fun ControlNets, z_image_controlnet.py), each added after
        its block; those with a `refiner_hints(self, image tokens, angles, t_emb)` also give
        {refiner block index: residual} for the image refiner. Returns the network's output (minus the flow velocity), shaped as x."""
        control = list(control or ())
        refiners = [fn for fn in control if hasattr(fn, "refiner_hints")]

        def refiner_hints(img, img_pe, t_emb):
            return summed(fn.refiner_hints(self, img, img_pe, t_emb) for fn in refiners)

        e = self.embed(x, t, context, mask, refiner_hints if refiners else None)
        hints = summed(fn(self, e) for fn in control)
        seq = e.seq
        for i, block in enumerate(self.layers):
            seq = block(seq, e.pe, e.keys, e.t_emb)
            if i in hints:
                seq = seq + hints[i].to(seq.dtype)
        p = self.cfg.patch_size
        return unpatchify(self.final_layer(seq[:, :e.n_img], e.t_emb), p, *x.shape[-2:])

    def embed(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None,
              refiner_hints=None) -> Embedded:
        """Everything before the main blocks: the joint sequence after the refiners, its RoPE angles,
        key mask and time embedding. `refiner_hints(image tokens, angles, t_emb)` -> {refiner index:
        residual added to the image tokens after that refiner block} (a Fun ControlNet 2.x's own pass)."""
        b, _, height, width = x.shape
        p, dim = self.cfg.patch_size, self.cfg.dim
        if height % p or width % p:
            raise InvalidArgument(f"size: latent sides must be multiples of {p}, got {height}x{width}")
        h, w = height // p, width // p
        n_img, device = h * w, x.device
        t_emb = self.t_embedder(t * self.cfg.t_scale).to(x.dtype)

        # captions: embedded, padded with the pad token to a multiple of 32 each, batched with a mask
        lengths = caption_lengths(context, mask)
        cap_lens = [padded(int(n)) for n in lengths.tolist()]
        n_cap = max(cap_lens)
        cap = self.cap_embedder(context[:, :n_cap])
        cap = F.pad(cap, (0, 0, 0, n_cap - cap.shape[1]))
        positions = torch.arange(n_cap, device=device)
        cap = torch.where((positions[None] < lengths[:, None])[..., None], cap, self.cap_pad_token.to(cap))
        cap_lens_t = torch.tensor(cap_lens, device=device)
        cap_mask = None if len(set(cap_lens)) == 1 else positions[None] < cap_lens_t[:, None]
        cap_ids = F.pad(positions[:, None] + 1, (0, 2))

        # image tokens, padded with their pad token to a multiple of 32
        img = self.pad_image(self.x_embedder(patchify(x, p)))
        n_x = img.shape[1]
        rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        grid = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(1, n_img, 3)
        img_ids = grid + F.pad(cap_lens_t[:, None, None] + 1, (0, 2))  # (B, n_img, 3)
        img_ids = F.pad(img_ids, (0, 0, 0, n_x - n_img))  # pad tokens at (0, 0, 0)

        img_pe, cap_pe = self._angles(img_ids), self._angles(cap_ids)
        extra = refiner_hints(img, img_pe, t_emb) if refiner_hints is not None else {}
        for i, block in enumerate(self.noise_refiner):
            img = block(img, img_pe, None, t_emb)
            if i in extra:
                img = img + extra[i].to(img.dtype)
        cap_keys = None if cap_mask is None else cap_mask[:, None, None]
        for block in self.context_refiner:
            cap = block(cap, cap_pe, cap_keys, None)

        if cap_mask is not None:  # rows past a caption (all of an empty one's) are keys no query sees: keep
            cap = torch.where(cap_mask[..., None], cap, 0.0)  # them finite (a fully masked row may be NaN)
        seq = torch.cat([img, cap], dim=1)
        pe = tuple(torch.cat([a, c.expand(b, -1, -1)], dim=1) for a, c in zip(img_pe, cap_pe))
        keys = None if cap_mask is None else F.pad(cap_mask, (n_x, 0), value=True)[:, None, None]
        return Embedded(seq, pe, keys, t_emb, img_pe, n_img, n_x)

    def pad_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, n, dim) padded with the pad token to a multiple of 32."""
        b, n, dim = tokens.shape
        return torch.cat([tokens, self.x_pad_token.to(tokens).expand(b, padded(n) - n, dim)], dim=1)
