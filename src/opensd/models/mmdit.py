"""SD3 / SD3.5's MMDiT: a DiT whose blocks attend jointly over text and image tokens.

Attribute names equal the keys of the original single files (minus `model.diffusion_model.`):
`x_embedder.proj`, `t_embedder.mlp.0`, `y_embedder.mlp.2`, `context_embedder`, `pos_embed`,
`joint_blocks.N.{context_block,x_block}.{attn.qkv,attn.proj,attn.ln_q,adaLN_modulation.1,mlp.fc1}`,
`joint_blocks.N.x_block.attn2.*` (SD3.5 Medium), `final_layer.{linear,adaLN_modulation.1}`.

Each joint block keeps two streams with their own weights (`context_block` for text, `x_block` for
image patches); their q, k, v are concatenated, text first, for one attention, and each stream
continues with its own part of the result. Every sublayer is adaLN-Zero modulated by the sum of the
timestep and pooled-text embeddings. The last block's text stream stops after attention (nothing
reads it afterwards), so it has neither output projection nor MLP.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from .attention import attention
from .config_dit import MMDiTConfig
from .norms import FinalLayer, RMSNorm, layer_norm, modulate
from .unet import timestep_embedding

FREQ_DIM = 256  # width of the sinusoidal timestep features


class Embedder(nn.Module):
    """Linear, SiLU, Linear: `t_embedder` (timestep features) and `y_embedder` (pooled text)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden_size, p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, h*w, C), rows first


class SelfAttention(nn.Module):
    """Fused q/k/v projection, optional per-head RMS norm of q and k, output projection."""

    def __init__(self, cfg: MMDiTConfig, pre_only: bool = False):
        super().__init__()
        dim = cfg.hidden_size
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = None if pre_only else nn.Linear(dim, dim)
        self.ln_q = RMSNorm(cfg.head_dim) if cfg.qk_norm else None
        self.ln_k = RMSNorm(cfg.head_dim) if cfg.qk_norm else None

    def qkv_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each (B, L, heads * head_dim)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.ln_q is not None:
            b, n, _ = q.shape
            q = self.ln_q(q.view(b, n, self.heads, -1)).view(b, n, -1)
            k = self.ln_k(k.view(b, n, self.heads, -1)).view(b, n, -1)
        return q, k, v


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DismantledBlock(nn.Module):
    """One stream of a joint block. Its adaLN gives (shift, scale, gate) for attention and for the
    MLP, then (shift, scale, gate) for the image-only attention `attn2` where there is one; a
    `pre_only` stream only needs (shift, scale) for its q/k/v."""

    def __init__(self, cfg: MMDiTConfig, pre_only: bool = False, self_attn2: bool = False):
        super().__init__()
        dim = cfg.hidden_size
        self.pre_only = pre_only
        self.attn = SelfAttention(cfg, pre_only)
        self.attn2 = SelfAttention(cfg) if self_attn2 else None
        self.mlp = None if pre_only else Mlp(dim, int(dim * cfg.mlp_ratio))
        self.n_mods = 2 if pre_only else 9 if self_attn2 else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, self.n_mods * dim))

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        """(q, k, v) of this stream and what post_attention needs."""
        mods = self.adaLN_modulation(c).chunk(self.n_mods, dim=1)
        normed = layer_norm(x)
        return self.attn.qkv_of(modulate(normed, mods[0], mods[1])), (x, normed, mods)

    def post_attention(self, out: torch.Tensor, x: torch.Tensor, normed: torch.Tensor, mods) -> torch.Tensor:
        _, _, gate, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        x = x + gate[:, None] * self.attn.proj(out)
        if self.attn2 is not None:
            shift2, scale2, gate2 = mods[6:]
            q, k, v = self.attn2.qkv_of(modulate(normed, shift2, scale2))
            x = x + gate2[:, None] * self.attn2.proj(attention(q, k, v, self.attn2.heads))
        return x + gate_mlp[:, None] * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    def __init__(self, cfg: MMDiTConfig, index: int):
        super().__init__()
        last = index == cfg.depth - 1
        self.context_block = DismantledBlock(cfg, pre_only=last)
        self.x_block = DismantledBlock(cfg, self_attn2=index in cfg.x_block_self_attn_layers)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor):
        c_qkv, c_rest = self.context_block.pre_attention(context, c)
        x_qkv, x_rest = self.x_block.pre_attention(x, c)
        q, k, v = (torch.cat(pair, dim=1) for pair in zip(c_qkv, x_qkv))
        out = attention(q, k, v, self.x_block.attn.heads)
        n_ctx = context.shape[1]
        x = self.x_block.post_attention(out[:, n_ctx:], *x_rest)
        if self.context_block.pre_only:
            return None, x
        return self.context_block.post_attention(out[:, :n_ctx], *c_rest), x


class MMDiTInputs(nn.Module):
    """The input side an MMDiT and its ControlNet share: patch, time, pooled-text and text embedders
    and the position table."""

    def __init__(self, cfg: MMDiTConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg)
        self.t_embedder = Embedder(FREQ_DIM, dim)
        self.y_embedder = Embedder(cfg.adm_in_channels, dim)
        self.context_embedder = nn.Linear(cfg.context_dim, dim)
        # A fixed 2-D sin-cos table, stored in the files; a smaller image uses its centre.
        self.register_buffer("pos_embed", torch.zeros(1, cfg.pos_embed_max_size ** 2, dim))

    def cropped_pos_embed(self, h: int, w: int) -> torch.Tensor:
        side = self.cfg.pos_embed_max_size
        if h > side or w > side:
            p = self.cfg.patch_size
            raise InvalidArgument(f"size: at most {side * p} latent pixels a side for this model, got {h * p}x{w * p}")
        top, left = (side - h) // 2, (side - w) // 2
        table = self.pos_embed.view(1, side, side, -1)[:, top:top + h, left:left + w]
        return table.reshape(1, h * w, -1)

    def embed(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor):
        """(image tokens with positions, adaLN vector, text tokens) of the network's inputs."""
        c = self.t_embedder(timestep_embedding(timesteps, FREQ_DIM).to(x.dtype)) + self.y_embedder(y)
        return self.image_tokens(x), c, self.context_embedder(context)

    def image_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, H, W) -> patch tokens with positions (B, h*w, hidden); SD3.5's ControlNets
        use the base model's."""
        p = self.cfg.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise InvalidArgument(f"size: latent sides must be multiples of {p}, got {x.shape[-2]}x{x.shape[-1]}")
        return self.x_embedder(x) + self.cropped_pos_embed(x.shape[-2] // p, x.shape[-1] // p).to(x.dtype)


class MMDiT(MMDiTInputs):
    def __init__(self, cfg: MMDiTConfig):
        super().__init__(cfg)
        self.joint_blocks = nn.ModuleList(JointBlock(cfg, i) for i in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.patch_size ** 2 * cfg.out_channels)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor, control: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        """Latents (B, C, H, W), timesteps (B,) on SD3's scale (sigma * 1000), text tokens (B, L,
        context_dim), pooled text (B, adm_in_channels) -> the model output (flow velocity) like x.
        `control`: per SD3 ControlNet its residuals (sd3_controlnet.py), each added to the image tokens
        after a block: block i takes residual floor(i * len / depth) (diffusers' rule), the last
        block (whose text stream stops early) none."""
        p = self.cfg.patch_size
        tokens, c, ctx = self.embed(x, timesteps, context, y)
        h, w = x.shape[-2] // p, x.shape[-1] // p
        for i, block in enumerate(self.joint_blocks):
            ctx, tokens = block(ctx, tokens, c)
            for res in control or ():
                if res and not block.context_block.pre_only:
                    tokens = tokens + res[int(i / (len(self.joint_blocks) / len(res)))].to(tokens.dtype)
        out = self.final_layer(tokens, c)  # (B, h*w, p*p*C), each patch's pixels row by row
        out = out.view(out.shape[0], h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(out.shape[0], -1, h * p, w * p)
