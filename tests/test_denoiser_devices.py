"""The samplers keep sigmas on the CPU; the denoisers compute the network's timestep there and move
only the results to the latents' device, without waiting for it (a plain .to() from the CPU
synchronised the GPU stream three times per step). Latents on the meta device stand in for a GPU:
any copy back to the CPU fails there."""
import torch

from opensd.sampling.denoiser import Denoiser
from opensd.sampling.flow import FlowSampling
from opensd.sampling.schedules import DiscreteSchedule, scaled_linear_alphas_cumprod


def _net(seen: dict):
    def net(x_in, t, **cond):
        seen["t"] = t
        return torch.zeros_like(x_in)
    return net


def test_discrete_denoiser_computes_the_timestep_on_the_cpu_and_moves_it():
    schedule = DiscreteSchedule(scaled_linear_alphas_cumprod())
    seen: dict = {}
    out = Denoiser(_net(seen), schedule)(torch.zeros(2, 4, 8, 8, device="meta"), torch.tensor(3.0))
    assert out.device.type == "meta" and seen["t"].device.type == "meta" and tuple(seen["t"].shape) == (2,)
    Denoiser(_net(seen), schedule)(torch.zeros(2, 4, 8, 8), torch.tensor(3.0))  # the same values as before
    torch.testing.assert_close(seen["t"], schedule.sigma_to_t(torch.tensor([3.0, 3.0])), rtol=0, atol=0)


def test_flow_denoiser_moves_sigma_without_waiting(monkeypatch):
    moves = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if out.device != self.device:
            moves.append(kwargs.get("non_blocking", False))
        return out

    monkeypatch.setattr(torch.Tensor, "to", spy)
    seen: dict = {}
    out = FlowSampling.sd3(3.0).denoise(_net(seen), torch.zeros(1, 16, 8, 8, device="meta"), torch.tensor(0.5))
    assert out.device.type == "meta" and seen["t"].device.type == "meta"
    assert moves == [True]  # one move of sigma, not waiting for the device
