"""ComfyUI's "output block patches" (FreeU's hook) on our UNet, without touching models/: for the
duration of a sampling run, each up block gets a forward pre-hook that splits its input back into
the hidden state h and the skip connection concatenated to it, lets the patches change both, and
concatenates them again."""
from __future__ import annotations

from contextlib import contextmanager

import torch


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
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def middle_self_attention_as_values(unet):
    """ComfyUI's attn1 replacement on ("middle", 0) that returns v: each self-attention of the
    middle block gives to_out(to_v(x)), every token attending only to itself (PAG's perturbed
    model)."""
    handles = [block.attn1.register_forward_hook(lambda attn, args, out: attn.to_out(attn.to_v(args[0])))
               for block in unet.middle_block.modules() if hasattr(block, "attn1")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
