"""Qwen-Image (Alibaba Qwen's 20B text-to-image MMDiT): a rectified-flow DiT of double-stream blocks.

Attribute names equal the released single file's keys, which are diffusers' own (ComfyUI's
diffusion_models/qwen_image_*.safetensors, with or without `model.diffusion_model.`): `img_in`,
`txt_in`, `txt_norm`, `time_text_embed.timestep_embedder.linear_{1,2}`,
`transformer_blocks.N.{img,txt}_mod.1`, `transformer_blocks.N.attn.{to_q,to_k,to_v,to_out.0,
add_q_proj,add_k_proj,add_v_proj,to_add_out,norm_q,norm_k,norm_added_q,norm_added_k}`,
`transformer_blocks.N.{img,txt}_mlp.net.{0.proj,2}`, `norm_out.linear`, `proj_out`.

Each block modulates both streams by (shift, scale, gate) twice from the time embedding, runs
joint attention (text tokens first; padding text keys masked) and a GELU (tanh) MLP per stream.
RoPE ids are (frame, row, column), pairs of adjacent channels rotated: the image's cells sit at
(0, row - ceil(h/2), column - ceil(w/2)) (centred on 0), text token j at (m + j, m + j, m + j)
with m = max(h // 2, w // 2). Qwen-Image-Edit's condition-image latents come as more image tokens
after the image's own, at frame 1, 2, ... (m then the largest over all grids); only the image's own
are answered. The network takes sigma itself and answers the flow velocity. Edit-2511 (`zero_cond_t`)
modulates the condition-image tokens with the time embedding of sigma 0 (they are clean), the image's
own tokens, the text and the output layer with the step's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from .attention import attention
from .config_dit import QwenImageConfig
from .flux import pack
from .norms import RMSNorm, layer_norm
from .rope import apply_rope, check_axes, rope_angles
from .unet import timestep_embedding

FREQ_DIM = 256  # width of the sinusoidal time features
TIME_SCALE = 1000.0  # sigma in [0, 1] is embedded as 1000 sigma
EPS = 1e-6
FP16_MAX = 65504.0


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(FREQ_DIM, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(timestep_embedding(t * TIME_SCALE, FREQ_DIM).to(dtype))))


class TimeTextEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = TimestepEmbedder(dim)


class GeluProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """`net.0.proj` (GELU tanh), `net.2` (net.1 is a parameterless dropout in the original)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class JointAttention(nn.Module):
    def __init__(self, cfg: QwenImageConfig):
        super().__init__()
        dim, head = cfg.hidden_size, cfg.attention_head_dim
        self.heads = cfg.num_attention_heads
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            setattr(self, name, nn.Linear(dim, dim))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            setattr(self, name, RMSNorm(head, eps=EPS))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, pe, mask: torch.Tensor | None):
        q = torch.cat((self.norm_added_q(self._heads(self.add_q_proj(txt))), self.norm_q(self._heads(self.to_q(img)))), 1)
        k = torch.cat((self.norm_added_k(self._heads(self.add_k_proj(txt))), self.norm_k(self._heads(self.to_k(img)))), 1)
        v = torch.cat((self.add_v_proj(txt), self.to_v(img)), 1)
        q, k = apply_rope(q, *pe).flatten(2), apply_rope(k, *pe).flatten(2)
        out = attention(q, k, v, self.heads, mask=mask)
        n_txt = txt.shape[1]
        return self.to_out[0](out[:, n_txt:]), self.to_add_out(out[:, :n_txt])


def _modulated(x: torch.Tensor, mod, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm, then (shift, scale) from `mod` (B, 3 dim); returns it and the gate. `mod` may be a
    pair (the image's, the references'): the tokens past the first `n` take the second (zero_cond_t)."""
    if isinstance(mod, tuple):
        (a, gate_a), (b, gate_b) = _modulated(x[:, :n], mod[0]), _modulated(x[:, n:], mod[1])
        return torch.cat((a, b), 1), torch.cat((gate_a.expand(-1, n, -1), gate_b.expand(-1, x.shape[1] - n, -1)), 1)
    shift, scale, gate = mod[:, None].chunk(3, dim=-1)
    return layer_norm(x, EPS) * (1 + scale) + shift, gate


def _fp16_safe(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-FP16_MAX, FP16_MAX) if x.dtype == torch.float16 else x


class Block(nn.Module):
    def __init__(self, cfg: QwenImageConfig):
        super().__init__()
        dim = cfg.hidden_size
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = JointAttention(cfg)
        self.img_mlp = FeedForward(dim, cfg.mlp_hidden)
        self.txt_mlp = FeedForward(dim, cfg.mlp_hidden)

    def forward(self, img, txt, temb, pe, mask, ref_temb=None, n=None):
        """`ref_temb`: the time embedding the image tokens past the first `n` are modulated with."""
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        if ref_temb is not None:
            ref_mod1, ref_mod2 = self.img_mod(ref_temb).chunk(2, dim=-1)
            img_mod1, img_mod2 = (img_mod1, ref_mod1), (img_mod2, ref_mod2)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_in, img_gate = _modulated(img, img_mod1, n)
        txt_in, txt_gate = _modulated(txt, txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in, pe, mask)
        img, txt = img + img_gate * img_attn, txt + txt_gate * txt_attn
        img_in, img_gate = _modulated(img, img_mod2, n)
        img = img + img_gate * self.img_mlp(img_in)
        txt_in, txt_gate = _modulated(txt, txt_mod2)
        txt = txt + txt_gate * self.txt_mlp(txt_in)
        return _fp16_safe(img), _fp16_safe(txt)


class NormOut(nn.Module):
    """diffusers' AdaLayerNormContinuous: (scale, shift) from the time embedding, in that order."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(temb))[:, None].chunk(2, dim=-1)
        return layer_norm(x, EPS) * (1 + scale) + shift


def rope_ids(h: int, w: int, n_txt: int, device=None, refs=(),
             text_after_refs: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(image ids (h * w + reference cells, 3), text ids (n_txt, 3)) of an h x w grid of patches,
    then each reference grid (h', w') in `refs` at frame 1, 2, ... (centred alike), and n_txt text
    tokens, which start past the largest half side of all the grids (diffusers), or of the image's
    own (`text_after_refs` False: ComfyUI's)."""
    grids = [(h, w), *refs]
    ids = []
    for frame, (gh, gw) in enumerate(grids):
        r, c = torch.meshgrid(torch.arange(gh, device=device) - (gh - gh // 2),
                              torch.arange(gw, device=device) - (gw - gw // 2), indexing="ij")
        ids.append(torch.stack([torch.full_like(r, frame), r, c], dim=-1).reshape(gh * gw, 3))
    start = max(max(gh // 2, gw // 2) for gh, gw in (grids if text_after_refs else grids[:1]))
    txt = (torch.arange(n_txt, device=device) + start)[:, None].expand(n_txt, 3)
    return torch.cat(ids), txt


def residual_index(block: int, n_blocks: int, n_residuals: int) -> int:
    """The residual added after main block `block`: each residual serves ceil(main / residuals) blocks."""
    return block // -(-n_blocks // n_residuals)


def _with_residual(img: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    """A ControlNet residual (B, n, dim) added to the first n (the image's own) tokens."""
    res = res.to(img.dtype)
    if res.shape[1] == img.shape[1]:
        return img + res
    return torch.cat((img[:, :res.shape[1]] + res, img[:, res.shape[1]:]), 1)


class QwenImage(nn.Module):
    def __init__(self, cfg: QwenImageConfig, output: bool = True):
        """`output` False: without the output layer (the trunk a ControlNet is built of)."""
        super().__init__()
        check_axes(cfg.axes_dims_rope, cfg.attention_head_dim, "Qwen-Image")
        self.cfg = cfg
        dim = cfg.hidden_size
        self.img_in = nn.Linear(cfg.in_channels, dim)
        self.txt_norm = RMSNorm(cfg.joint_attention_dim, eps=EPS)
        self.txt_in = nn.Linear(cfg.joint_attention_dim, dim)
        self.time_text_embed = TimeTextEmbed(dim)
        self.transformer_blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        if output:
            self.norm_out = NormOut(dim)
            self.proj_out = nn.Linear(dim, cfg.patch_size ** 2 * cfg.out_channels)

    def forward_tokens(self, img: torch.Tensor, txt: torch.Tensor, t: torch.Tensor, h: int, w: int,
                       mask: torch.Tensor | None = None, refs=(), text_after_refs: bool = True,
                       zero_cond_t: bool | None = None, control=None) -> torch.Tensor:
        """Packed latents (B, h * w, in_channels), text features (B, L, joint_attention_dim), sigma
        (B,), `mask` (B, L) bool: the text tokens attended to (None: all); `refs`: the (h', w') grids
        of reference tokens appended to `img` after its own h * w (Qwen-Image-Edit's condition
        images: seen, not predicted). Returns (B, h * w, 4 out_channels), each token's features
        ordered (channel, row, column) as the input's. `zero_cond_t`: the references modulated at
        time 0 (Edit-2511; None: the config's). `control`: per ControlNet its residuals, added
        to the image's own tokens after the blocks (models/qwen_image_controlnet.py), or a callable
        answering block i's from the image tokens (models/qwen_image_blockwise.py), in turn."""
        n = h * w
        img = self.img_in(img)
        temb = self.time_text_embed.timestep_embedder(t, img.dtype)
        zero = self.cfg.zero_cond_t if zero_cond_t is None else zero_cond_t
        ref_temb = self.time_text_embed.timestep_embedder(torch.zeros_like(t), img.dtype) if zero and refs else None
        txt = self.txt_in(self.txt_norm(txt))
        img_ids, txt_ids = rope_ids(h, w, txt.shape[1], img.device, refs, text_after_refs)
        if img_ids.shape[0] != img.shape[1]:
            raise InvalidArgument(f"{img.shape[1]} image tokens for grids {[(h, w), *refs]}")
        pe = rope_angles(torch.cat((txt_ids, img_ids)), self.cfg.axes_dims_rope, self.cfg.theta)
        if mask is not None:  # keys only: every query sees the kept text and all image tokens
            mask = F.pad(mask.bool(), (0, img.shape[1]), value=True)[:, None, None]
        for i, block in enumerate(self.transformer_blocks):
            img, txt = block(img, txt, temb, pe, mask, ref_temb, n)
            for res in control or ():  # a callable: a blockwise ControlNet's (qwen_image_blockwise.py)
                add = res(i, img) if callable(res) else res[residual_index(i, len(self.transformer_blocks), len(res))]
                if add is not None:
                    img = _with_residual(img, add)
        return self.proj_out(self.norm_out(img[:, :n], temb))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None, ref_latents=(), text_after_refs: bool = True,
                zero_cond_t: bool | None = None, control=None) -> torch.Tensor:
        """Latents (B, out_channels, 2h, 2w) -> the flow velocity, same shape. `ref_latents`:
        Qwen-Image-Edit's condition-image latents, each (B, out_channels, 2h', 2w'), any even size;
        `text_after_refs`: see rope_ids; `zero_cond_t`, `control`: see forward_tokens."""
        b, c, height, width = x.shape
        for lat in (x, *ref_latents):
            if lat.shape[-2] % 2 or lat.shape[-1] % 2:
                raise InvalidArgument(f"a latent of {lat.shape[-2]}x{lat.shape[-1]} cannot be cut into 2x2 patches "
                                      "(both must be even: the image side a multiple of 16)")
        h, w = height // 2, width // 2
        tokens = torch.cat([pack(x), *(pack(r) for r in ref_latents)], dim=1)
        refs = [(r.shape[-2] // 2, r.shape[-1] // 2) for r in ref_latents]
        out = self.forward_tokens(tokens, context, t, h, w, mask, refs, text_after_refs, zero_cond_t, control)
        return out.view(b, h, w, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)
