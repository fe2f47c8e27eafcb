"""models.conv.Conv2d: the plain CPU kernel for small inference maps gives nn.Conv2d's result, and
is used exactly where the rule says (inference, fp32, small output), never in training."""
import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from opensd.models.conv import SMALL_OUTPUT, Conv2d, use_plain_kernel


def _pair(cin, cout, k, **kw):
    torch.manual_seed(0)
    ours = Conv2d(cin, cout, k, **kw)
    ref = nn.Conv2d(cin, cout, k, **kw)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _kernels(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()} & {"aten::thnn_conv2d", "aten::mkldnn_convolution",
                                                     "aten::_slow_conv2d_forward"}


@pytest.mark.parametrize("k, kw", [(3, {"padding": 1}), (3, {"padding": 1, "stride": 2}), (1, {}),
                                   (3, {"padding": 1, "bias": False}), (3, {"padding": 0, "stride": 2})])
@torch.no_grad()
def test_small_map_uses_plain_kernel_with_the_same_result(k, kw):
    ours, ref = _pair(8, 16, k, **kw)
    x = torch.randn(2, 8, 9, 9)
    assert use_plain_kernel(ours, x)
    assert "aten::mkldnn_convolution" not in _kernels(lambda: ours(x))
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_large_map_keeps_the_default_kernel():
    ours, ref = _pair(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 32, 32)  # 1024 output positions > SMALL_OUTPUT
    assert 32 * 32 > SMALL_OUTPUT and not use_plain_kernel(ours, x)
    assert torch.equal(ours(x), ref(x))
    # The limit counts batch × height × width: 2 × 16 × 16 is still small, 4 × 16 × 16 is not.
    assert use_plain_kernel(ours, torch.randn(2, 4, 16, 16))
    assert not use_plain_kernel(ours, torch.randn(4, 4, 16, 16))


def test_training_keeps_the_default_kernel_and_gradients_match():
    ours, ref = _pair(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    assert not use_plain_kernel(ours, x)  # grad mode
    ours(x).square().sum().backward()
    g_ours, gw_ours = x.grad.clone(), ours.weight.grad.clone()
    x.grad = None
    ref(x).square().sum().backward()
    torch.testing.assert_close(g_ours, x.grad)
    torch.testing.assert_close(gw_ours, ref.weight.grad)


@torch.no_grad()
def test_options_the_plain_kernel_lacks_fall_back():
    x = torch.randn(1, 4, 8, 8)
    assert not use_plain_kernel(Conv2d(4, 4, 3, padding=1, groups=2), x)
    assert not use_plain_kernel(Conv2d(4, 4, 3, padding=2, dilation=2), x)
    assert not use_plain_kernel(Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), x)
    assert not use_plain_kernel(Conv2d(4, 4, 3, padding="same"), x)
    half = Conv2d(4, 4, 3, padding=1).to(torch.bfloat16)
    assert not use_plain_kernel(half, x.to(torch.bfloat16))
    for layer in (Conv2d(4, 4, 3, padding=1, groups=2), Conv2d(4, 4, 3, padding="same"),
                  Conv2d(4, 4, 3, padding=1, padding_mode="reflect")):
        ref = nn.Conv2d(4, 4, 3, padding=layer.padding, groups=layer.groups, padding_mode=layer.padding_mode)
        ref.load_state_dict(layer.state_dict())
        assert torch.equal(layer(x), ref(x))


def test_models_build_their_convolutions_from_it():
    from opensd.models import config as C
    from opensd.models.unet import UNetModel
    from opensd.models.vae import AutoencoderKL
    unet = UNetModel(C.UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, context_dim=32,
                                  transformer_depth=(0, 1), num_heads=2, num_head_channels=-1))
    vae = AutoencoderKL(C.VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4))
    for model in (unet, vae):
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and all(isinstance(m, Conv2d) for m in convs)
