"""Samplers, schedules and names.

* Samplers diffusers also has run side by side with its scheduler: same deterministic "UNet", same
  sigmas, the same noise injected, and the whole trajectories must agree to float32 round-off.
* The rest are held to their defining properties: order of convergence on a probability-flow ODE
  with a known solution, noise-free limits equal to their deterministic counterparts, and the
  right output distribution.
"""
import functools
import importlib.util
import itertools
import math
import sys
import types

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2AncestralDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LCMScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from opensd.errors import InvalidArgument
from opensd.sampling.denoiser import Denoiser
from opensd.sampling.names import SAMPLER_LABELS, SCHEDULER_LABELS, resolve, schedule_label
from opensd.sampling.samplers import SAMPLERS, get_sampler, sample_euler
from opensd.sampling.schedules import (
    DiscreteSchedule,
    beta_cdf,
    beta_ppf,
    beta_sigmas,
    ddim_uniform_sigmas,
    make_sigmas,
    normal_sigmas,
    scaled_linear_alphas_cumprod,
    sgm_uniform_sigmas,
    simple_sigmas,
)

SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())
SD = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}

# ---------------------------------------------------------------------------------------------
# 1. Parity with diffusers
# ---------------------------------------------------------------------------------------------

_g = torch.Generator().manual_seed(1)
X_UNIT = torch.randn(1, 4, 8, 8, generator=_g)  # the initial noise, unit variance
TARGET = torch.randn(1, 4, 8, 8, generator=_g)


def _eps_model(round_t):
    """An arbitrary smooth deterministic eps "UNet". Where diffusers rounds its timesteps but keeps
    the exact sigma (DPM-Solver/UniPC/DDIM/LCM), we round the same way."""
    def eps(x_in, t):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)
        return torch.tanh(x_in + TARGET) * (1 + (t.round() if round_t else t) / 1000)
    return eps


class BrownianNoise:
    """Standard-normal increments of one Brownian path W(sigma), drawn in query order from a seeded
    generator: what diffusers' torchsde Brownian tree provides, minus torchsde. Sigmas that agree
    to 1e-5 are the same point (diffusers and we compute the midpoint sigmas in different ways)."""

    def __init__(self, seed):
        self.g, self.w = torch.Generator().manual_seed(seed), {}

    def _at(self, s):
        s = float(s)
        for k, v in self.w.items():
            if abs(k - s) <= 1e-5 * s:
                return k, v
        known = sorted(self.w)
        if not known:
            self.w[s] = torch.zeros_like(X_UNIT)
        else:  # only extensions below/above are needed by the call patterns here
            edge = known[0] if s < known[0] else known[-1]
            assert s < known[0] or s > known[-1], "bridging not needed by these samplers"
            self.w[s] = self.w[edge] + abs(edge - s) ** 0.5 * torch.randn(X_UNIT.shape, generator=self.g)
        return s, self.w[s]

    def __call__(self, sigma, sigma_next):
        (s0, w0), (s1, w1) = self._at(sigma), self._at(sigma_next)
        return (w1 - w0) / abs(s1 - s0) ** 0.5


def _gauss_legendre_quad(f, a, b, epsrel=None):
    # diffusers integrates LMS coefficients with scipy.integrate.quad (scipy is not a dependency
    # here). The integrand is a polynomial of degree <= 3, so 4-point Gauss-Legendre is exact.
    nodes, weights = np.polynomial.legendre.leggauss(4)
    return sum(w * float(f((b - a) / 2 * u + (a + b) / 2)) for u, w in zip(nodes, weights)) * (b - a) / 2, 0.0


def _patch_diffusers(monkeypatch, noise):
    """For the test's duration: exact quadrature for LMS, and `noise` in place of the torchsde
    Brownian tree of DPMSolverSDEScheduler (whose module imports torchsde only for that tree, so
    a stub module stands in when torchsde is not installed)."""
    lms = importlib.import_module("diffusers.schedulers.scheduling_lms_discrete")
    monkeypatch.setattr(lms, "integrate", types.SimpleNamespace(quad=_gauss_legendre_quad), raising=False)
    if "torchsde" not in sys.modules and importlib.util.find_spec("torchsde") is None:
        monkeypatch.setitem(sys.modules, "torchsde", types.ModuleType("torchsde"))
    sde = importlib.import_module("diffusers.schedulers.scheduling_dpmsolver_sde")
    monkeypatch.setattr(sde, "BrownianTreeNoiseSampler", lambda *args, **kwargs: noise)


def _lms_scheduler():
    return importlib.import_module("diffusers.schedulers.scheduling_lms_discrete").LMSDiscreteScheduler(
        **SD, timestep_spacing="linspace")


def _dpmpp_sde_scheduler():
    return importlib.import_module("diffusers.schedulers.scheduling_dpmsolver_sde").DPMSolverSDEScheduler(
        **SD, timestep_spacing="linspace", use_karras_sigmas=True)


def _karras_multistep(**kw):
    return DPMSolverMultistepScheduler(**SD, timestep_spacing="linspace", use_karras_sigmas=True,
                                       final_sigmas_type="zero", **kw)


def _sigmas_at(timesteps, last):
    return torch.cat([SCHEDULE.sigmas[timesteps], torch.tensor([last])])


# id: (diffusers scheduler factory, our sampler, our options, steps, our sigmas, VP-space scheduler,
#      round timesteps, noise: None | "generator" | "brownian")
PARITY = {
    "euler": (lambda: EulerDiscreteScheduler(**SD, timestep_spacing="linspace"), "euler", {}, 10,
              lambda n: make_sigmas("normal", SCHEDULE, n), False, False, None),
    "euler_karras": (lambda: EulerDiscreteScheduler(**SD, timestep_spacing="linspace", use_karras_sigmas=True),
                     "euler", {}, 10, lambda n: make_sigmas("karras", SCHEDULE, n), False, False, None),
    "euler_ancestral": (lambda: EulerAncestralDiscreteScheduler(**SD, timestep_spacing="linspace"), "euler_ancestral",
                        {}, 10, lambda n: make_sigmas("normal", SCHEDULE, n), False, False, "generator"),
    "heun": (lambda: HeunDiscreteScheduler(**SD, timestep_spacing="linspace"), "heun", {}, 10,
             lambda n: make_sigmas("normal", SCHEDULE, n), False, False, None),
    "dpm_2": (lambda: KDPM2DiscreteScheduler(**SD, timestep_spacing="linspace"), "dpm_2", {}, 10,
              lambda n: make_sigmas("normal", SCHEDULE, n), False, False, None),
    "dpm_2_ancestral": (lambda: KDPM2AncestralDiscreteScheduler(**SD, timestep_spacing="linspace"), "dpm_2_ancestral",
                        {}, 10, lambda n: make_sigmas("normal", SCHEDULE, n), False, False, "generator"),
    # diffusers' multistep "linspace" grid is our sgm_uniform; 9 steps keep its timesteps whole.
    "dpmpp_2m": (lambda: DPMSolverMultistepScheduler(**SD, timestep_spacing="linspace", final_sigmas_type="zero"),
                 "dpmpp_2m", {}, 9, lambda n: make_sigmas("sgm_uniform", SCHEDULE, n), True, False, None),
    "dpmpp_2m_karras": (_karras_multistep, "dpmpp_2m", {}, 10, lambda n: make_sigmas("karras", SCHEDULE, n),
                        True, True, None),
    "dpmpp_2m_sde_karras": (lambda: _karras_multistep(algorithm_type="sde-dpmsolver++"), "dpmpp_2m_sde", {}, 10,
                            lambda n: make_sigmas("karras", SCHEDULE, n), True, True, "generator"),
    # 3M SDE with eta=0 is DPM-Solver++(3M) with the "heun" 2nd-order warm-up step. (diffusers'
    # sde-dpmsolver++ 3rd-order step has the wrong sign on a 1/2 in its D2 coefficient, so eta=1
    # is tested by order of convergence below instead.)
    "dpmpp_3m_eta0_karras": (lambda: _karras_multistep(solver_order=3, solver_type="heun", lower_order_final=False),
                             "dpmpp_3m_sde", {"eta": 0.0}, 10, lambda n: make_sigmas("karras", SCHEDULE, n),
                             True, True, None),
    "dpmpp_sde_karras": (_dpmpp_sde_scheduler, "dpmpp_sde", {}, 10, lambda n: make_sigmas("karras", SCHEDULE, n),
                         False, False, "brownian"),
    "ddim": (lambda: DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=True, clip_sample=False), "ddim", {}, 10,
             lambda n: make_sigmas("ddim_uniform", SCHEDULE, n), True, True, None),
    "ddim_eta": (lambda: DDIMScheduler(**SD, steps_offset=1, set_alpha_to_one=True, clip_sample=False), "ddim",
                 {"eta": 0.6}, 10, lambda n: make_sigmas("ddim_uniform", SCHEDULE, n), True, True, "generator"),
    "lms": (_lms_scheduler, "lms", {}, 10, lambda n: make_sigmas("normal", SCHEDULE, n), False, False, None),
    "uni_pc_bh2": (lambda: UniPCMultistepScheduler(**SD, timestep_spacing="linspace", solver_order=2,
                                                   solver_type="bh2", final_sigmas_type="zero"),
                   "uni_pc", {"order": 2, "variant": "bh2"}, 9, lambda n: make_sigmas("sgm_uniform", SCHEDULE, n),
                   True, False, None),
    # diffusers' bh1 returns NaN on a last step to sigma 0 (B(h) = -inf times 0), so compare bh1
    # (our default, order 3) on its "sigma_min" ending: the same steps, the last one to t=0.
    "uni_pc_bh1": (lambda: UniPCMultistepScheduler(**SD, timestep_spacing="linspace", solver_order=3,
                                                   solver_type="bh1", final_sigmas_type="sigma_min"),
                   "uni_pc", {}, 9, lambda n: torch.cat([make_sigmas("sgm_uniform", SCHEDULE, n)[:-1],
                                                         SCHEDULE.sigmas[:1]]), True, False, None),
    "lcm": (lambda: LCMScheduler(**SD), "lcm", {}, 4, lambda n: _sigmas_at([999, 759, 499, 259], 0.0),
            True, True, "generator"),
    # LDM's PLMS: diffusers' PNDM without its Runge-Kutta warm-up, on DDIM's timesteps, ending at
    # alpha 1 (sigma 0); 10 steps run all four orders, 1 step is a plain DDIM step.
    "plms": (lambda: PNDMScheduler(**SD, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=True), "plms", {}, 10,
             lambda n: make_sigmas("ddim_uniform", SCHEDULE, n), True, True, None),
    "plms_1": (lambda: PNDMScheduler(**SD, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=True), "plms", {},
               1, lambda n: make_sigmas("ddim_uniform", SCHEDULE, n), True, True, None),
}


def _run_diffusers(sched, eps, vp, noise, seed, step_options):
    """Trajectory after each full step, x_vp for VP-space schedulers."""
    x = X_UNIT.clone() if vp else X_UNIT * sched.sigmas[0]
    kw = {"generator": torch.Generator().manual_seed(seed)} if noise == "generator" else {}
    kw.update(step_options)
    traj = []
    for t in sched.timesteps:
        x = sched.step(eps(sched.scale_model_input(x, t), t), t, x, **kw).prev_sample
        if getattr(sched, "state_in_first_order", True):  # two-stage schedulers: only full steps
            traj.append(x)
    if not traj or traj[-1] is not x:
        traj.append(x)
    if isinstance(sched, PNDMScheduler) and len(traj) > 1:  # its first call is the first step's Euler predictor
        traj = traj[1:]
    return traj


@pytest.mark.parametrize("case", list(PARITY))
def test_matches_diffusers(case, monkeypatch):
    make, name, options, steps, make_sigmas_, vp, round_t, noise = PARITY[case]
    eps, seed = _eps_model(round_t), 5
    sigmas = make_sigmas_(steps)
    _patch_diffusers(monkeypatch, BrownianNoise(seed))
    sched = make()
    sched.set_timesteps(steps)
    if hasattr(sched, "sigmas"):  # the same grid (two-stage schedulers list each sigma twice)
        np.testing.assert_allclose(sigmas.numpy(), torch.unique_consecutive(sched.sigmas).numpy(), rtol=2e-5)
    else:
        # (PNDM lists its first timestep twice: the improved Euler first step evaluates twice)
        assert SCHEDULE.sigma_to_t(sigmas[:-1]).round().long().tolist() == torch.unique_consecutive(
            sched.timesteps).tolist()
    ref = _run_diffusers(sched, eps, vp, noise, seed, {"eta": options["eta"]} if name == "ddim" and options else {})

    if noise == "generator":
        g = torch.Generator().manual_seed(seed)
        options = {**options, "noise_sampler": lambda s, sn: torch.randn(X_UNIT.shape, generator=g)}
    elif noise == "brownian":
        options = {**options, "noise_sampler": BrownianNoise(seed)}
    ours = []
    x0 = X_UNIT * ((sigmas[0] ** 2 + 1).sqrt() if vp else sigmas[0])
    out = SAMPLERS[name](Denoiser(eps, SCHEDULE, "eps"), x0, sigmas, lambda i, x, d: ours.append(x), **options)

    assert len(ours) == len(ref) == len(sigmas) - 1
    assert out is ours[-1]
    for i, (a, b) in enumerate(zip(ours, ref)):
        b = b * (sigmas[i + 1] ** 2 + 1).sqrt() if vp else b  # VP -> our VE: x = x_vp * sqrt(1 + sigma^2)
        # float32 round-off accumulated over the steps: 1e-5 of the step's magnitude.
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item(), msg=lambda m, i=i: f"step {i}: {m}")


# ---------------------------------------------------------------------------------------------
# 2. Defining properties
# ---------------------------------------------------------------------------------------------

# Gaussian data N(MU, S2): the denoiser is exact, and so is the probability-flow ODE's solution:
# x(sigma) - MU is proportional to sqrt(S2 + sigma^2).
MU, S2 = 0.3, 0.25


def _gauss_denoise(x, sigma):
    return MU + S2 / (S2 + sigma ** 2) * (x - MU)


def _exp_sigmas(n, lo=0.05, hi=10.0):
    """Evenly spaced in log sigma, float64, ending at lo > 0, so the error measured is the
    solver's own, not that of the final jump to sigma 0."""
    return torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64).exp()


X_T = MU + torch.linspace(-2, 2, 9, dtype=torch.float64) * math.sqrt(S2 + 100)


def _observed_order(run, exact, ns):
    errs = [(run(n) - exact).abs().max().item() for n in ns]
    return math.log2(errs[-2] / errs[-1]), errs


@pytest.mark.parametrize("name, options, order", [
    ("euler", {}, 1), ("ddim", {}, 1), ("heun", {}, 2), ("dpm_2", {}, 2), ("dpmpp_2m", {}, 2),
    ("dpm_2_ancestral", {"eta": 0}, 2), ("dpmpp_2s_ancestral", {"eta": 0}, 2), ("dpmpp_sde", {"eta": 0}, 2),
    ("dpmpp_2m_sde", {"eta": 0}, 2),
    # multistep methods whose first (warm-up) steps are lower order: globally at least 2nd order
    ("dpmpp_3m_sde", {"eta": 0}, 2), ("uni_pc", {}, 2), ("uni_pc", {"variant": "bh2"}, 2),
    ("lms", {}, 3),
])
def test_order_of_convergence_on_the_probability_flow_ode(name, options, order):
    exact = MU + (X_T - MU) * math.sqrt((S2 + 0.05 ** 2) / (S2 + 10.0 ** 2))

    def run(n):
        return SAMPLERS[name](_gauss_denoise, X_T.clone(), _exp_sigmas(n), **options)

    p, errs = _observed_order(run, exact, [32, 64])
    assert p > order - 0.2, (p, errs)


# Two-component mixture (+-M, std S0): a nonlinear exact denoiser. For Gaussian data the SDE
# samplers are exact without noise (the posterior mean of x0 is constant along the mean path),
# which would hide wrong coefficients; here it is not.
M, S0_2 = 1.0, 0.09


def _mixture_denoise(x, sigma):
    v = S0_2 + sigma ** 2
    return (S0_2 * x + sigma ** 2 * M * torch.tanh(M * x / v)) / v


@functools.lru_cache
def _rk4_drift_ode(eta, n=1000, lo=0.05, hi=10.0):
    """Reference for the eta-SDE's drift: dx/dlog(sigma) = (1 + eta) (x - D(x, sigma)), by RK4."""
    x, ts = X_T.clone(), torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64)

    def f(x, t):
        return (1 + eta) * (x - _mixture_denoise(x, t.exp()))
    for a, b in itertools.pairwise(ts):
        h = b - a
        k1 = f(x, a)
        k2 = f(x + h / 2 * k1, a + h / 2)
        k3 = f(x + h / 2 * k2, a + h / 2)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + f(x + h * k3, b))
    return x


@pytest.mark.parametrize("name, options, order, ns", [
    # with s_noise=0 an SDE solver is a solver for its drift ODE, of its design order
    ("dpmpp_sde", {"s_noise": 0}, 2, [64, 128]),
    ("dpmpp_2m_sde", {"s_noise": 0}, 2, [64, 128]),
    ("dpmpp_3m_sde", {"s_noise": 0}, 2, [64, 128]),
    # ancestral splitting is first order whatever the inner step
    ("euler_ancestral", {"s_noise": 0}, 1, [64, 128]),
    ("dpm_2_ancestral", {"s_noise": 0}, 1, [64, 128]),
    ("dpmpp_2s_ancestral", {"s_noise": 0}, 1, [64, 128]),
    ("dpmpp_2m", {}, 2, [32, 64]),  # and eta=0 (PF-ODE) on this data too
    ("dpmpp_3m_sde", {"eta": 0}, 2, [32, 64]),
])
def test_order_of_convergence_on_the_sde_drift(name, options, order, ns):
    eta = options.get("eta", 1.0) if "sde" in name or "ancestral" in name else 0.0

    def run(n):
        return SAMPLERS[name](_mixture_denoise, X_T.clone(), _exp_sigmas(n), **options)

    p, errs = _observed_order(run, _rk4_drift_ode(eta), ns)
    assert p > order - 0.2, (p, errs)


def _never(*_):
    raise AssertionError("a noise-free setting drew noise")


@pytest.mark.parametrize("stochastic, deterministic, options", [
    ("euler_ancestral", "euler", {"eta": 0.0}),
    ("ddim", "euler", {}),  # DDIM's default eta=0: DDIM is Euler
    ("dpm_2_ancestral", "dpm_2", {"eta": 0.0}),
    ("dpmpp_2m_sde", "dpmpp_2m", {"eta": 0.0}),
    ("euler", "euler", {"s_churn": 1.0, "s_tmax": 0.01}),  # churn outside [s_tmin, s_tmax]
])
def test_noise_free_settings_reduce_to_the_deterministic_sampler(stochastic, deterministic, options):
    sigmas = make_sigmas("karras", SCHEDULE, 12)
    den = Denoiser(_eps_model(False), SCHEDULE)
    want = SAMPLERS[deterministic](den, X_UNIT * sigmas[0], sigmas)
    got = SAMPLERS[stochastic](den, X_UNIT * sigmas[0], sigmas, noise_sampler=_never, **options)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def test_dpmpp_sde_and_2s_ancestral_share_their_noise_free_limit():
    # both are DPM-Solver++(2S) with the intermediate point at the log-sigma midpoint
    sigmas = make_sigmas("karras", SCHEDULE, 12)
    den = Denoiser(_eps_model(False), SCHEDULE)
    a = SAMPLERS["dpmpp_sde"](den, X_UNIT * sigmas[0], sigmas, noise_sampler=_never, eta=0.0)
    b = SAMPLERS["dpmpp_2s_ancestral"](den, X_UNIT * sigmas[0], sigmas, noise_sampler=_never, eta=0.0)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_ddim_with_eta_one_is_euler_ancestral():
    sigmas = make_sigmas("ddim_uniform", SCHEDULE, 10)
    den = Denoiser(_eps_model(False), SCHEDULE)
    out = []
    for name in ("ddim", "euler_ancestral"):
        g = torch.Generator().manual_seed(3)
        out.append(SAMPLERS[name](den, X_UNIT * sigmas[0], sigmas, eta=1.0,
                                  noise_sampler=lambda s, sn, g=g: torch.randn(X_UNIT.shape, generator=g)))
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=0)


@pytest.mark.parametrize("name, options, tol", [
    ("euler_ancestral", {}, 0.1), ("ddim", {"eta": 1.0}, 0.1), ("euler", {"s_churn": 1.0}, 0.1),
    ("dpm_2_ancestral", {}, 0.03), ("dpmpp_2s_ancestral", {}, 0.03), ("dpmpp_sde", {}, 0.03),
    ("dpmpp_2m_sde", {}, 0.03), ("dpmpp_2m_sde", {"eta": 0.5}, 0.03), ("dpmpp_3m_sde", {}, 0.03),
    ("heun", {"s_churn": 1.0}, 0.03),
])
def test_stochastic_samplers_sample_the_data_distribution(name, options, tol):
    """20k draws from N(MU, S2) data, 50 Karras steps: mean and std must come out right. First-order
    schemes are allowed 10% on the std (Euler a is at 7.5% after 50 steps), the rest 3%. Dropping
    the noise, doubling it or mis-scaling sigma_up all miss by far more. (LCM is not here: it
    expects a consistency model, not the posterior mean.)"""
    n = 20000
    g = torch.Generator().manual_seed(0)
    sigmas = make_sigmas("karras", SCHEDULE, 50).double()
    x = MU + torch.randn(n, generator=g, dtype=torch.float64) * math.sqrt(S2 + sigmas[0] ** 2)
    out = SAMPLERS[name](_gauss_denoise, x, sigmas, **options,
                         noise_sampler=lambda s, sn: torch.randn(n, generator=g, dtype=torch.float64))
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / math.sqrt(S2) - 1) < tol


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_contract_callback_steps_and_a_perfect_denoiser(name):
    """Every sampler: one callback per step in order, float64 kept, and with a denoiser that knows
    the answer (a point-mass data set) every sampler lands on it."""
    x0 = torch.randn(2, 3, dtype=torch.float64)
    sigmas = make_sigmas("karras", SCHEDULE, 6).double()
    seen = []
    x_t = torch.randn(2, 3, dtype=torch.float64) * sigmas[0]
    out = SAMPLERS[name](lambda x, s: x0, x_t, sigmas, lambda i, x, d: seen.append((i, x.dtype, d is x0)))
    assert seen == [(i, torch.float64, True) for i in range(6)]
    if name in ("dpm_fast", "dpm_adaptive"):  # they stop at the last nonzero sigma, on the exact ODE path
        torch.testing.assert_close(out, x0 + (x_t - x0) * sigmas[-2] / sigmas[0])
    elif name == "tcd":  # it ends on timestep 0: x0 plus sigma_min's sliver of (random) noise
        assert (out - x0).abs().max() < 0.2
    else:
        torch.testing.assert_close(out, x0)


def test_callback_raising_stops_sampling():
    calls = []

    def denoise(x, s):
        calls.append(s)
        return x * 0

    def stop(i, x, d):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_sampler("DPM++ 2M")(denoise, X_UNIT, make_sigmas("karras", SCHEDULE, 8), stop)
    assert len(calls) == 1


def test_churn_raises_sigma_by_gamma_and_draws_noise_once_per_step():
    sigmas = make_sigmas("normal", SCHEDULE, 8)
    asked, evaluated = [], []

    def noise(s, s_hat):
        asked.append((float(s), float(s_hat)))
        return torch.zeros_like(X_UNIT)

    def denoise(x, s):
        evaluated.append(float(s))
        return x * 0

    sample_euler(denoise, X_UNIT, sigmas, noise_sampler=noise, s_churn=2.0)
    gamma = 2.0 / 8  # s_churn / steps, below the sqrt(2) - 1 cap
    assert [s for pair in asked for s in pair] == pytest.approx(
        [s for v in sigmas[:-1].tolist() for s in (v, v * (1 + gamma))], rel=1e-6)
    assert evaluated == pytest.approx([float(s) * (1 + gamma) for s in sigmas[:-1]], rel=1e-6)


def test_uni_pc_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        SAMPLERS["uni_pc"](_gauss_denoise, X_T, _exp_sigmas(4), variant="bh3")


# ---------------------------------------------------------------------------------------------
# 3. Schedules
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule, flag", [("karras", "use_karras_sigmas"), ("exponential", "use_exponential_sigmas")])
def test_karras_and_exponential_match_diffusers(schedule, flag):
    for steps in (2, 7, 20):  # (diffusers degenerates at 1 step: sigma_min, where we give sigma_max)
        ref = EulerDiscreteScheduler(**SD, timestep_spacing="linspace", **{flag: True})
        ref.set_timesteps(steps)
        np.testing.assert_allclose(make_sigmas(schedule, SCHEDULE, steps).numpy(), ref.sigmas.numpy(), rtol=2e-5)


def test_sgm_uniform_is_uniform_timesteps_without_the_last():
    # steps+1 evenly spaced timesteps from 999 to 0, the last (t=0, sigma_min) replaced by 0;
    # diffusers' multistep "linspace" grid is exactly this (9 steps: t = 999, 888, ..., 111).
    ref = DPMSolverMultistepScheduler(**SD, timestep_spacing="linspace", final_sigmas_type="zero")
    ref.set_timesteps(9)
    np.testing.assert_allclose(sgm_uniform_sigmas(SCHEDULE, 9).numpy(), ref.sigmas.numpy(), rtol=2e-5)
    torch.testing.assert_close(sgm_uniform_sigmas(SCHEDULE, 9)[:-1], normal_sigmas(SCHEDULE, 10)[:-2])


def test_simple_takes_every_nth_model_sigma_from_the_top():
    # 1000 model sigmas, 4 steps: stride 250 -> indices 999, 749, 499, 249. 3 steps: stride 333.3
    # -> 999, 999-333, 999-666.
    for steps, idx in [(4, [999, 749, 499, 249]), (3, [999, 666, 333]), (1, [999])]:
        torch.testing.assert_close(simple_sigmas(SCHEDULE, steps),
                                   torch.cat([SCHEDULE.sigmas[idx], torch.zeros(1)]), rtol=0, atol=0)


def test_ddim_uniform_matches_diffusers_and_a1111_ddim_timesteps():
    for steps in (10, 20, 50):  # diffusers "leading" + steps_offset=1 where steps divides 1000
        ref = DDIMScheduler(**SD, steps_offset=1)
        ref.set_timesteps(steps)
        torch.testing.assert_close(ddim_uniform_sigmas(SCHEDULE, steps),
                                   _sigmas_at(ref.timesteps, 0.0), rtol=0, atol=0)
    for steps in (7, 30):  # A1111/ComfyUI: range(0, 1000, 1000 // steps) + 1, so 7 steps -> 8
        ts = [t + 1 for t in range(0, 1000, 1000 // steps)][::-1]
        torch.testing.assert_close(ddim_uniform_sigmas(SCHEDULE, steps), _sigmas_at(ts, 0.0), rtol=0, atol=0)
    assert len(ddim_uniform_sigmas(SCHEDULE, 7)) == 9


def _beta_cdf_series(x, a, b):
    """I_x(a, b) from its power series, an implementation independent of ours."""
    if x <= 0 or x >= 1:
        return float(x >= 1)
    if x > 0.5:
        return 1 - _beta_cdf_series(1 - x, b, a)
    total, term = 0.0, 1.0
    for n in range(400):
        total += term / (a + n)
        term *= (n + 1 - b) / (n + 1) * x
        if abs(term) < 1e-18:
            break
    return math.exp(a * math.log(x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))) * total


def test_beta_ppf_without_scipy():
    for p in (0.001, 0.1, 0.37, 0.5, 0.8, 0.999):
        assert beta_ppf(p, 0.5, 0.5) == pytest.approx(math.sin(math.pi * p / 2) ** 2, abs=1e-14)  # arcsine law
        assert beta_ppf(p, 2, 1) == pytest.approx(math.sqrt(p), abs=1e-14)  # CDF x^2
        assert beta_ppf(p, 1, 2) == pytest.approx(1 - math.sqrt(1 - p), abs=1e-14)  # CDF 1-(1-x)^2
        x = beta_ppf(p, 0.6, 0.6)
        assert _beta_cdf_series(x, 0.6, 0.6) == pytest.approx(p, abs=1e-13)
        assert beta_cdf(x, 0.6, 0.6) == pytest.approx(p, abs=1e-14)
    assert beta_ppf(0.0, 0.6, 0.6) == 0.0 and beta_ppf(1.0, 0.6, 0.6) == 1.0
    # a symmetric law's median is exactly 1/2 (Boost/scipy return it exactly), so an even step
    # count puts a timestep at 499.5 -> 500; plain bisection gives 0.4999999999999991 for some shapes
    for a in (0.3, 0.45, 0.6, 1.5, 2.0, 3.0, 17.3):
        assert beta_ppf(0.5, a, a) == 0.5
        assert 500 in SCHEDULE.sigma_to_t(beta_sigmas(SCHEDULE, 4, a, a)[:-1]).round().tolist()


@pytest.mark.parametrize("steps", [1, 2, 4, 10, 25, 200])
def test_beta_schedule_is_comfyui_beta(steps):
    """ComfyUI: timestep_k = rint(ppf(1 - k/steps; 0.6, 0.6) * 999), repeats dropped, then 0.
    Checked against the independent CDF: the unrounded quantile is within half a timestep."""
    sigmas = beta_sigmas(SCHEDULE, steps)
    assert sigmas[-1] == 0 and bool((sigmas[:-1] > 0).all())
    ts = [int(i) for i in SCHEDULE.sigma_to_t(sigmas[:-1]).round()]
    torch.testing.assert_close(sigmas[:-1], SCHEDULE.sigmas[ts], rtol=0, atol=0)
    assert ts[0] == 999 and ts == sorted(set(ts), reverse=True)
    quantiles = sorted({1 - k / steps for k in range(steps)}, reverse=True)
    expected = []
    for q in quantiles:
        lo, hi = 0.0, 999.0  # the timestep u with I_{u/999} = q, bisected on the series CDF
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if _beta_cdf_series(mid / 999, 0.6, 0.6) < q else (lo, mid)
        u = 499.5 if q == 0.5 else (lo + hi) / 2  # the median of a symmetric law is exact
        assert q == 0.5 or abs(u - math.floor(u) - 0.5) > 1e-6, "no other rounding ties"
        expected.append(round(u))  # half to even, like numpy.rint
    expected = [t for i, t in enumerate(expected) if i == 0 or t != expected[i - 1]]
    assert ts == expected
    if steps == 200:
        assert len(ts) < 200  # near the ends quantiles share a timestep and are merged
    if steps % 2 == 0:
        assert 500 in ts  # 499.5 rounds half to even, as numpy.rint


@pytest.mark.parametrize("schedule", sorted(set(SCHEDULER_LABELS) - {"align_your_steps"}))  # AYS: below
def test_every_schedule_is_decreasing_and_ends_in_zero(schedule):
    for steps in (1, 3, 20):
        sigmas = make_sigmas(schedule, SCHEDULE, steps)
        assert sigmas.dtype == torch.float32 and sigmas[-1] == 0
        assert bool((sigmas[:-2] > sigmas[1:-1]).all()) and sigmas[-2] > 0
        if schedule not in ("beta", "ddim_uniform"):
            assert len(sigmas) == steps + 1
            assert sigmas[0].item() == pytest.approx(SCHEDULE.sigma_max, rel=1e-5)


# A1111's "Align Your Steps" tables (sd_schedulers.py), written out.
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]


@pytest.mark.parametrize("family, table", [("sd1", AYS_SD1), ("sd2", AYS_SD1), ("small", AYS_SD1),
                                           ("sdxl", AYS_SDXL), ("sdxl_refiner", AYS_SDXL)])
def test_align_your_steps_is_a1111s(family, table):
    """11 steps: the table, then 0. Other counts: `steps` levels interpolated linearly in log sigma
    over the table's positions (end to end), then 0; A1111 names it "Align Your Steps"."""
    torch.testing.assert_close(make_sigmas("Align Your Steps", SCHEDULE, 11, family=family),
                               torch.tensor(table + [0.0]))
    for steps in (4, 10, 25):
        got = make_sigmas("align_your_steps", SCHEDULE, steps, family=family)
        pos = np.linspace(0, 1, steps)  # where each level sits along the table (0 = first)
        want = [math.exp(np.interp(p, np.linspace(0, 1, 11), np.log(table))) for p in pos]
        np.testing.assert_allclose(got.numpy(), want + [0.0], rtol=1e-6)
    assert resolve("Euler", "Align Your Steps") == ("euler", "align_your_steps")


def test_make_sigmas_discards_the_penultimate_sigma_for_dpm2_3m_sde_and_unipc():
    karras_11 = make_sigmas("karras", SCHEDULE, 11)
    for sampler in ("DPM2", "dpm_2_ancestral", "DPM++ 3M SDE", "uni_pc"):
        got = make_sigmas("karras", SCHEDULE, 10, sampler)
        assert len(got) == 11
        torch.testing.assert_close(got, torch.cat([karras_11[:-2], karras_11[-1:]]))
    torch.testing.assert_close(make_sigmas("karras", SCHEDULE, 10, "Euler"), make_sigmas("karras", SCHEDULE, 10))
    # UniPC on the model's schedule then visits A1111's UniPC time grid: 999 ... 111, then 0
    torch.testing.assert_close(make_sigmas("normal", SCHEDULE, 9, "UniPC"), sgm_uniform_sigmas(SCHEDULE, 9))


def test_make_sigmas_takes_names_and_defaults_and_rejects_bad_input():
    torch.testing.assert_close(make_sigmas("Karras", SCHEDULE, 5), make_sigmas("karras", SCHEDULE, 5))
    torch.testing.assert_close(make_sigmas("Automatic", SCHEDULE, 5, "DPM++ 2M SDE"),
                               make_sigmas("exponential", SCHEDULE, 5))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidArgument, match="^steps:"):
            make_sigmas("karras", SCHEDULE, bad)
    with pytest.raises(InvalidArgument, match="^scheduler:.*Karras.*sgm_uniform"):
        make_sigmas("polyexponential", SCHEDULE, 5)


# ---------------------------------------------------------------------------------------------
# 4. Names
# ---------------------------------------------------------------------------------------------

# (id, A1111 display name, other names A1111 or ComfyUI accept), written out from their sources.
SAMPLER_NAMES = [
    ("euler", "Euler", ["k_euler"]),
    ("euler_ancestral", "Euler a", ["k_euler_a", "k_euler_ancestral"]),
    ("heun", "Heun", ["k_heun"]),
    ("dpm_2", "DPM2", ["k_dpm_2"]),
    ("dpm_2_ancestral", "DPM2 a", ["k_dpm_2_a"]),
    ("lms", "LMS", ["k_lms"]),
    ("dpmpp_2s_ancestral", "DPM++ 2S a", ["k_dpmpp_2s_a"]),
    ("dpmpp_sde", "DPM++ SDE", ["k_dpmpp_sde", "dpmpp_sde_gpu"]),
    ("dpmpp_2m", "DPM++ 2M", ["k_dpmpp_2m"]),
    ("dpmpp_2m_sde", "DPM++ 2M SDE", ["k_dpmpp_2m_sde", "dpmpp_2m_sde_gpu"]),
    ("dpmpp_3m_sde", "DPM++ 3M SDE", ["k_dpmpp_3m_sde", "dpmpp_3m_sde_gpu"]),
    ("ddim", "DDIM", []),
    ("uni_pc", "UniPC", ["unipc"]),
    ("lcm", "LCM", ["k_lcm"]),
    ("plms", "PLMS", []),
    ("dpm_fast", "DPM fast", ["k_dpm_fast"]),
    ("dpm_adaptive", "DPM adaptive", ["k_dpm_ad"]),
    ("restart", "Restart", []),
    # not in A1111: Forge's labels (DEIS, the CFG++ pair) and ours (TCD); ComfyUI's ids
    ("deis", "DEIS", []),
    ("euler_cfg_pp", "Euler CFG++", []),
    ("euler_ancestral_cfg_pp", "Euler a CFG++", []),
    ("dpmpp_2m_cfg_pp", "DPM++ 2M CFG++", []),
    ("tcd", "TCD", []),
    ("dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"]),
    *[(sid, sid, []) for sid in ("heunpp2", "dpmpp_2s_ancestral_cfg_pp", "ddpm", "ipndm", "ipndm_v", "res_multistep",
                                 "res_multistep_cfg_pp", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                                 "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "uni_pc_bh2", "seeds_2",
                                 "seeds_3", "sa_solver", "sa_solver_pece")],
]
SCHEDULE_NAMES = [
    ("normal", "Automatic", ["Uniform", "Normal"]),
    ("karras", "Karras", []),
    ("exponential", "Exponential", []),
    ("sgm_uniform", "SGM Uniform", ["SGMUniform"]),
    ("simple", "Simple", []),
    ("beta", "Beta", []),
    ("ddim_uniform", "DDIM", []),
    ("align_your_steps", "Align Your Steps", []),
    ("linear_quadratic", "Linear Quadratic", []),
    ("kl_optimal", "KL Optimal", []),
]


def test_labels_are_a1111s():
    assert SAMPLER_LABELS == {i: label for i, label, _ in SAMPLER_NAMES}
    assert SCHEDULER_LABELS == {i: label for i, label, _ in SCHEDULE_NAMES}
    assert set(SAMPLERS) == set(SAMPLER_LABELS)


@pytest.mark.parametrize("sid, label, others", SAMPLER_NAMES)
def test_every_sampler_name_resolves(sid, label, others):
    for name in (sid, label, *others, label.upper(), f"  {label.lower()} "):
        assert resolve(name, "karras") == (sid, "karras")
        assert get_sampler(name) is SAMPLERS[sid]


@pytest.mark.parametrize("kid, label, others", SCHEDULE_NAMES)
def test_every_schedule_name_resolves(kid, label, others):
    for name in {kid, label, *others, label.lower()} - {"Automatic", "automatic"}:
        assert resolve("Euler", name) == ("euler", kid)
        assert resolve("dpmpp_2m", name) == ("dpmpp_2m", kid)


@pytest.mark.parametrize("name, expected", [
    ("DPM++ 2M Karras", ("dpmpp_2m", "karras")),
    ("DPM++ SDE Karras", ("dpmpp_sde", "karras")),
    ("DPM++ 2M SDE Karras", ("dpmpp_2m_sde", "karras")),
    ("DPM++ 2S a Karras", ("dpmpp_2s_ancestral", "karras")),
    ("DPM2 Karras", ("dpm_2", "karras")),
    ("DPM2 a Karras", ("dpm_2_ancestral", "karras")),
    ("LMS Karras", ("lms", "karras")),
    ("DPM++ 2M SDE Exponential", ("dpmpp_2m_sde", "exponential")),
    ("DPM++ 3M SDE Exponential", ("dpmpp_3m_sde", "exponential")),
    ("Euler a SGM Uniform", ("euler_ancestral", "sgm_uniform")),
    ("Euler Uniform", ("euler", "normal")),
    ("k_dpmpp_2m_ka", ("dpmpp_2m", "karras")),
    ("k_dpm_2_a_ka", ("dpm_2_ancestral", "karras")),
])
def test_combined_names_imply_the_schedule_and_win(name, expected):
    assert resolve(name, None) == expected
    assert resolve(name, "Automatic") == expected
    other = "Exponential" if expected[1] != "exponential" else "Karras"
    assert resolve(name, other) == expected  # as in A1111, the schedule in the name wins


@pytest.mark.parametrize("sampler, schedule", [
    ("Euler", "normal"), ("Euler a", "normal"), ("Heun", "normal"), ("LMS", "normal"), ("LCM", "normal"),
    ("UniPC", "normal"), ("DDIM", "ddim_uniform"), ("DPM++ 2M", "karras"), ("DPM++ SDE", "karras"),
    ("DPM++ 2S a", "karras"), ("DPM2", "karras"), ("DPM2 a", "karras"), ("DPM++ 2M SDE", "exponential"),
    ("dpmpp_3m_sde", "exponential"), ("PLMS", "ddim_uniform"), ("Restart", "karras"), ("DPM fast", "normal"),
    ("DPM adaptive", "normal"),
])
def test_automatic_is_the_samplers_a1111_default(sampler, schedule):
    assert resolve(sampler, None)[1] == schedule
    assert resolve(sampler, "Automatic")[1] == schedule
    assert resolve(sampler, " automatic ")[1] == schedule


def test_infotext_labels_round_trip_through_resolve():
    for sid, label in SAMPLER_LABELS.items():
        for kid in SCHEDULER_LABELS:
            assert resolve(label, schedule_label(sid, kid)) == (sid, kid)
    assert schedule_label("euler", "normal") == "Automatic"
    assert schedule_label("dpmpp_2m", "normal") == "Uniform"  # "Automatic" would mean Karras there
    assert schedule_label("dpmpp_2m", "karras") == "Karras"


def test_unknown_names_list_the_valid_ones():
    for bad in ("warp drive", "DPM++ 4M", "Euler Polyexponential", "", None):
        with pytest.raises(InvalidArgument) as e:
            resolve(bad, None)
        msg = str(e.value)
        assert msg.startswith("sampler:")
        assert all(name in msg for name in [*SAMPLER_LABELS.values(), *SAMPLER_LABELS])
    with pytest.raises(InvalidArgument, match="^sampler:"):
        get_sampler("DPM faster")
    for bad in ("Polyexponential", "bong_tangent", "", 3):
        with pytest.raises(InvalidArgument) as e:
            resolve("Euler", bad)
        msg = str(e.value)
        assert msg.startswith("scheduler:")
        assert all(name in msg for name in [*SCHEDULER_LABELS.values(), *SCHEDULER_LABELS])
