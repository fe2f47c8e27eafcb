"""ComfyUI's "output block patches" (FreeU's hook) on our UNet, without touching models/: for the
duration of a sampling run, each up block gets a forward pre-hook that splits its input back into
the hidden state h and the skip connection concatenated to it, lets the patches change both, and
concatenates them again. The other patches here (PAG's and SAG's attention, deep shrink,
HyperTile) hook or replace the network's modules for one network call."""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..models.attention import attention
from ..models.module_patches import forward_replaced, latent_size_seen, removed_after
from ..models.hypertile import tiles, untiled
from ..models.token_merging import token_merging


def hidden_channels(cfg) -> list[int]:
    """The channels of h (before the skip is concatenated) entering each output block."""
    mc, out = cfg.model_channels, []
    ch = mc * cfg.channel_mult[-1]  # the middle block's output
    for mult in reversed(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks + 1):
            out.append(ch)
            ch = mult * mc
    return out


@contextmanager
def output_block_patches(unet, patches: tuple):
    if not patches:
        yield
        return
    handles = []
    for block, channels in zip(unet.output_blocks, hidden_channels(unet.config)):
        def hook(module, args, channels=channels):
            x = args[0]
            h, skip = x[:, :channels].clone(), x[:, channels:]
            for patch in patches:
                h, skip = patch(h, skip)
            return (torch.cat([h, skip], dim=1), *args[1:])
        handles.append(block.register_forward_pre_hook(hook))
    with removed_after(handles):
        yield


@contextmanager
def middle_self_attention_as_values(unet):
    """ComfyUI's attn1 replacement on ("middle", 0) that returns v: each self-attention of the
    middle block gives to_out(to_v(x)), every token attending only to itself (PAG's perturbed
    model)."""
    handles = [block.attn1.register_forward_hook(lambda attn, args, out: attn.to_out(attn.to_v(args[0])))
               for block in unet.middle_block.modules() if hasattr(block, "attn1")]
    with removed_after(handles):
        yield


@contextmanager
def middle_attention_recorded(unet):
    """Records, per network call, the attention probabilities (b * heads, n, n), rows batch-major,
    of the middle block's first self-attention (ComfyUI's attn1 replacement at ("middle", 0, 0)
    that SAG uses); the attention's output is not changed."""
    attn = next(block.attn1 for block in unet.middle_block.modules() if hasattr(block, "attn1"))
    seen: list[torch.Tensor] = []

    def record(module, args, out):
        x = args[0]
        b, n, inner = x.shape
        heads = module.heads
        d = inner // heads
        q, k = (t.float().reshape(b, n, heads, d).transpose(1, 2) for t in (module.to_q(x), module.to_k(x)))
        seen.append(torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1).reshape(b * heads, n, n))
    with removed_after([attn.register_forward_hook(record)]):
        yield seen


@contextmanager
def deep_shrink(unet, block: int, factor: float, after_skip: bool, down, up):
    """Kohya's deep shrink for one network call (ComfyUI's input/output block patches of
    PatchModelAddDownscale): h leaving input block `block` is shrunk by `factor` with
    down(x, w, h) (after it was kept as that block's skip when `after_skip`, else the skip is
    shrunk too), and on the way up h is resized with up(x, w, h) to each skip's size where they
    differ before they are joined."""
    blocks = len(unet.input_blocks)
    if block >= blocks:  # ComfyUI's patch never meets a block of that number
        yield
        return
    sizes: list = []  # the spatial size of each skip as kept

    def shrink(x):
        return down(x, round(int(x.shape[-1]) * (1.0 / factor)), round(int(x.shape[-2]) * (1.0 / factor)))

    def fit(index: int):
        def hook(module, args, out):
            size = sizes[index]
            return out if out.shape[-2:] == size else up(out, size[-1], size[-2])
        return hook

    handles = [unet.input_blocks[0].register_forward_pre_hook(lambda m, args: sizes.clear())]
    if after_skip:
        after = unet.input_blocks[block + 1] if block + 1 < blocks else unet.middle_block
        handles.append(after.register_forward_pre_hook(lambda m, args: (shrink(args[0]), *args[1:])))
    else:
        handles.append(unet.input_blocks[block].register_forward_hook(lambda m, args, out: shrink(out)))
    handles += [b.register_forward_hook(lambda m, args, out: sizes.append(out.shape[-2:])) for b in unet.input_blocks]
    # the middle block's h meets the last skip, output block k's the skip before the one it met
    handles.append(unet.middle_block.register_forward_hook(fit(blocks - 1)))
    handles += [b.register_forward_hook(fit(blocks - 2 - k)) for k, b in enumerate(unet.output_blocks[:-1])]
    with removed_after(handles):
        yield


def self_attentions(unet) -> list:
    return [block.attn1 for block in unet.modules() if hasattr(block, "attn1")]


def random_divisor(value: int, min_value: int, max_options: int, draw) -> int:
    """HyperTile's number of tiles along a side: value // d for one of the `max_options` smallest
    divisors d >= min_value of value, picked by draw(n) in [0, n) as ComfyUI's randint(0, n - 1)
    does (so the last option is never picked)."""
    min_value = min(min_value, value)
    counts = [value // d for d in range(min_value, value + 1) if value % d == 0][:max_options]
    return counts[draw(len(counts) - 1)] if len(counts) > 1 else counts[0]


@contextmanager
def hypertile(unet, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool, draw):
    """ComfyUI's HyperTile (attn1 patch and output patch) for one network call: a self-attention
    whose token count is the latent's (h/2^i)(w/2^i), i <= max_depth, splits its queries into
    tiles. As in ComfyUI only the queries are tiled: keys and values stay whole, and the attention
    reads them per tile batch row, i.e. tile t attends to the t-th run of tokens in raster order.
    The grid is ComfyUI's too: h = round(sqrt(n * w/h)), w = round(sqrt(n * h/w)) for n tokens."""
    latent_tile = max(32, tile_size) // 8
    shape: list = []

    def make_forward(attn, plain):
        def forward(x, context=None):
            if context is not None or not shape:
                return plain(x, context)
            lh, lw = int(shape[0]), int(shape[1])
            sizes = [(lh / 2 ** i) * (lw / 2 ** i) for i in range(max_depth + 1)]
            n = x.shape[1]
            if n not in sizes:
                return plain(x)
            aspect = lw / lh
            h, w = round(math.sqrt(n * aspect)), round(math.sqrt(n / aspect))
            factor = 2 ** sizes.index(n) if scale_depth else 1
            nh = random_divisor(h, latent_tile * factor, swap_size, draw)
            nw = random_divisor(w, latent_tile * factor, swap_size, draw)
            if nh * nw <= 1 or h * w != n:
                return plain(x)
            th, tw = h // nh, w // nw
            q = attn.to_q(tiles(x, nh, nw, th, tw))
            out = attn.to_out(attention(q, attn.to_k(x), attn.to_v(x), attn.heads))
            return untiled(out, nh, nw, th, tw)
        return forward

    with latent_size_seen(unet, shape), forward_replaced(self_attentions(unet), make_forward):
        yield


@contextmanager
def attention_scaled(unet, which: str, factors: dict[str, float]):
    """ComfyUI's attention_multiply for one network call: the outputs of every `which` ("attn1" or
    "attn2") projection named in factors ("to_q", "to_k", "to_v", "to_out") multiplied by its
    factor, as scaling the projection's weight and bias would."""
    handles = []
    for block in unet.modules():
        attn = getattr(block, which, None) if hasattr(block, "attn1") else None
        if attn is None:
            continue
        for name, factor in factors.items():
            if factor != 1.0:
                layer = attn.to_out[0] if name == "to_out" else getattr(attn, name)
                handles.append(layer.register_forward_hook(lambda m, args, out, f=factor: out * f))
    with removed_after(handles):
        yield


@contextmanager
def tome(unet, ratio: float, draw_cells):
    """ComfyUI's TomePatchModel for one network call: the self-attentions at the latent's full
    resolution take their queries from the tokens merged by token_merging (r = ratio of them;
    keys and values stay whole) and give each merged token its destination's output.
    draw_cells(hs, ws) picks each 2x2 cell's destination."""
    shape: list = []

    def make_forward(attn, plain):
        def forward(x, context=None):
            if context is not None or not shape or x.shape[1] != shape[0] * shape[1]:
                return plain(x, context)
            h, w = int(shape[0]), int(shape[1])
            r = int(x.shape[1] * ratio)
            if r <= 0 or w == 1 or h == 1:
                return plain(x)
            merge, unmerge = token_merging(x, w, h, r, draw_cells(h // 2, w // 2))
            q = attn.to_q(merge(x))
            return unmerge(attn.to_out(attention(q, attn.to_k(x), attn.to_v(x), attn.heads)))
        return forward

    with latent_size_seen(unet, shape), forward_replaced(self_attentions(unet), make_forward):
        yield
