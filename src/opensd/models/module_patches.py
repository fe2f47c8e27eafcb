"""Temporary changes to a network's modules for the length of a `with` block: hook handles removed,
or an instance's forward replaced and put back, however the block ends. Speed patches (ToMe,
HyperTile) and ComfyUI's model patches (workflows/unet_patches.py) are built on these."""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def removed_after(handles: list):
    """Removes the hook handles when the block ends, however it ends."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def forward_replaced(modules: list, make_forward):
    """Each module's forward replaced by make_forward(module, its own forward) while the block
    runs (an instance attribute over the class's method), put back however it ends."""
    saved = [(m, m.__dict__.get("forward")) for m in modules]
    for m, _ in saved:
        m.forward = make_forward(m, m.forward)
    try:
        yield
    finally:
        for m, before in saved:
            if before is None:
                del m.forward
            else:
                m.forward = before


@contextmanager
def latent_size_seen(unet, shape: list):
    """`shape` holds the (h, w) of the latent each network call is given."""
    def remember(module, args):
        shape[:] = args[0].shape[-2:]
    with removed_after([unet.input_blocks[0].register_forward_pre_hook(remember)]):
        yield
