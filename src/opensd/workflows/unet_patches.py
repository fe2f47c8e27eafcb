"""ComfyUI's "output block patches" (FreeU's hook) on our UNet, without touching models/: for the
duration of a sampling run, each up block gets a forward pre-hook that splits its input back into
the hidden state h and the skip connection concatenated to it, lets the patches change both, and
concatenates them again."""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def removed_after(handles: list):
    """Removes the hook handles when the block ends, however it ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
