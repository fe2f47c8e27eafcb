"""The UNet's CPU fast paths change nothing: context K/V reuse within a sampling run, and SD1's 1x1
proj convs run as a matrix product (but through the conv when a hook wraps it, as LoRA training does)."""
import torch

from opensd.models import config as C
from opensd.models.unet import CrossAttention, UNetModel, reuse_context_kv
from reference import randomize_

SD1 = C.UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, context_dim=48,
                   transformer_depth=(1, 1), num_heads=2, num_head_channels=-1)


def _unet():
    return randomize_(UNetModel(SD1), seed=5).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900, 10]),
            torch.randn(2, 7, 48, generator=g))


@torch.no_grad()
def test_reused_kv_equals_fresh_and_follows_weight_and_context_changes():
    unet = _unet()
    x, t, ctx = _inputs()
    fresh = unet(x, t, ctx)
    with reuse_context_kv(unet):
        first, second = unet(x, t, ctx), unet(x * 0.5, t, ctx)
        layer = next(m for m in unet.modules() if isinstance(m, CrossAttention) and m.kv_cache)
        assert layer.kv_cache[0] is ctx  # cross-attention layers did cache this context
        assert torch.equal(first, fresh)
        assert torch.equal(second, unet.__class__.forward(unet, x * 0.5, t, ctx.clone()))
        # A LoRA patches weights in place: the cached K/V must not survive it.
        for m in unet.modules():
            if isinstance(m, CrossAttention):
                m.to_k.weight.mul_(1.5)
        patched = unet(x, t, ctx)
        other = torch.randn_like(ctx)
        changed_ctx = unet(x, t, other)
    assert not torch.equal(patched, first)
    assert torch.equal(patched, unet(x, t, ctx))
    assert torch.equal(changed_ctx, unet(x, t, other))
    assert all(m.kv_cache is None for m in unet.modules() if isinstance(m, CrossAttention))


def test_grad_mode_never_reuses():
    unet = _unet()
    x, t, ctx = _inputs()
    with reuse_context_kv(unet):
        unet(x, t, ctx).sum().backward()
        assert all(m.kv_cache == [] for m in unet.modules() if isinstance(m, CrossAttention))


@torch.no_grad()
def test_proj_conv_as_matmul_equals_conv_and_hooks_still_run():
    unet = _unet()
    x, t, ctx = _inputs()
    fast = unet(x, t, ctx)
    calls = []
    for name, m in unet.named_modules():
        if name.endswith(("proj_in", "proj_out")) and isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].dim()) or out)
    through_conv = unet(x, t, ctx)
    assert calls and set(calls) == {4}  # the hooked layers ran as 4-D convs
    torch.testing.assert_close(through_conv, fast, rtol=1e-5, atol=1e-5)
