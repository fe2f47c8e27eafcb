"""The rectified-flow training loss: x_t = (1 - t) x0 + t noise and the target noise - x0 exactly, the
network called at the family's time (t * multiplier), and each family's documented time sampling."""
from __future__ import annotations

import math

import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.training.flow_loss import (
    KOHYA_FLUX_SHIFT,
    draw_sigmas,
    flow_loss,
    noised,
    training_shift,
    velocity,
)


def test_x_t_and_the_velocity_target_for_given_times():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    xt = noised(x0, noise, sigma)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], noise[2])
    torch.testing.assert_close(xt[1], 0.75 * x0[1] + 0.25 * noise[1], rtol=0, atol=1e-7)
    assert torch.equal(velocity(x0, noise), noise - x0)


def test_the_loss_is_the_mse_of_the_prediction_against_noise_minus_x0_at_the_network_time():
    g = torch.Generator().manual_seed(1)
    batch = {"x0": torch.randn(2, 4, 3, 3, generator=g), "noise": torch.randn(2, 4, 3, 3, generator=g),
             "sigma": torch.tensor([0.3, 0.8]), "context": torch.zeros(2, 5, 8), "y": torch.zeros(2, 0)}
    seen = {}
    pred = torch.randn(2, 4, 3, 3, generator=g)

    def net(x, t, context, y):
        seen["x"], seen["t"] = x, t
        return pred

    loss = flow_loss(net, 1000.0, batch)
    s = batch["sigma"].view(-1, 1, 1, 1)
    torch.testing.assert_close(seen["x"], (1 - s) * batch["x0"] + s * batch["noise"])
    torch.testing.assert_close(seen["t"], torch.tensor([300.0, 800.0]))
    want = ((pred - (batch["noise"] - batch["x0"])) ** 2).mean()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(flow_loss(net, 1.0, batch | {"weight": 0.5}), want * 0.5)


def test_each_family_samples_sigmoid_normal_times_at_its_documented_shift():
    assert training_shift("flux", None, (64, 64)) == KOHYA_FLUX_SHIFT == 3.1582
    assert training_shift("sd3", 3.0, (128, 128)) == 3.0 and training_shift("z_image", 6.0, (8, 8)) == 6.0
    # FLUX.2: musubi-tuner's flux2_shift, mu linear in the latent cells: 0.5 at 256, 1.15 at 4096
    assert training_shift("flux2", None, (16, 16)) == pytest.approx(math.exp(0.5))
    assert training_shift("flux2", None, (64, 64)) == pytest.approx(math.exp(1.15))
    # Qwen-Image: musubi-tuner's qwen_shift, mu linear in the 2x2 tokens: 0.5 at 256, 0.9 at 8192
    assert training_shift("qwen_image", None, (32, 32)) == pytest.approx(math.exp(0.5))
    assert training_shift("qwen_image", None, (256, 128)) == pytest.approx(math.exp(0.9))
    with pytest.raises(InvalidArgument, match="chroma"):
        training_shift("chroma", None, (8, 8))
    t = draw_sigmas(4, 3.0, torch.Generator().manual_seed(5))
    u = torch.sigmoid(torch.randn(4, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    torch.testing.assert_close(t, (3.0 * u / (1 + 2.0 * u)).float())
    many = draw_sigmas(20000, 1.0, torch.Generator().manual_seed(0))
    assert abs(many.median().item() - 0.5) < 0.01 and 0 < many.min() and many.max() < 1  # logit-normal
