"""The samplers issue 22 added (DPM fast, DPM adaptive, Restart, DEIS, TCD, Euler CFG++, DPM++ 2M
CFG++), each held to a reference written here from its paper / k-diffusion's published algorithm
(k-diffusion itself is not installable here: it pulls torchvision), step by step on a toy denoiser,
and to its order of convergence on Gaussian data, whose probability-flow ODE has a closed-form
solution.
"""
import math

import numpy as np
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.sampling.cfg_pp import Guided
from opensd.sampling.deis import deis_coefficients
from opensd.sampling.restart import restart_plan
from opensd.sampling.samplers import SAMPLERS, sampler_context, sampler_options
from opensd.sampling.schedules import DiscreteSchedule, karras, make_sigmas, scaled_linear_alphas_cumprod

SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())
MU, S2 = 0.3, 0.25  # Gaussian data N(MU, S2): exact denoiser, exact ODE path


def gauss(x, sigma):
    return MU + S2 / (S2 + sigma ** 2) * (x - MU)


def exact(x_t, sigma_from, sigma_to):
    return MU + (x_t - MU) * math.sqrt((S2 + sigma_to ** 2) / (S2 + sigma_from ** 2))


_g = torch.Generator().manual_seed(7)
X_UNIT = torch.randn(1, 4, 6, 6, generator=_g, dtype=torch.float64)
TARGET = torch.randn(1, 4, 6, 6, generator=_g, dtype=torch.float64)


def toy(x, sigma):
    """A smooth nonlinear "model": tanh of the input, pulled towards TARGET at high noise."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.tanh(x / (1 + s ** 2).sqrt() + TARGET) * (1 + 0.1 * s / (1 + s))


class Recorder:
    """Wraps a denoiser, recording every (sigma, x) it is asked about."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, sigma):
        self.calls.append((float(sigma), x.clone()))
        return self.fn(x, sigma)


def assert_same_calls(ours: Recorder, ref: Recorder, tol=1e-10):
    assert len(ours.calls) == len(ref.calls)
    for k, ((s1, x1), (s2, x2)) in enumerate(zip(ours.calls, ref.calls)):
        assert s1 == pytest.approx(s2, rel=1e-12), k
        torch.testing.assert_close(x1, x2, rtol=0, atol=tol, msg=f"call {k}")


# --- DPM-Solver (Lu et al. 2022), eps form in lambda = -log sigma with alpha = 1 (VE) -----------

def ref_dpm_solver_step(model, x, lam, lam_next, order):
    """One DPM-Solver-k step, the paper's Algorithms 1 (k=2, r1=1/2) and 2 (k=3, r1=1/3, r2=2/3)."""
    sig = lambda lam_: math.exp(-lam_)
    eps = lambda x_, lam_: (x_ - model(x_, torch.tensor(sig(lam_), dtype=torch.float64))) / sig(lam_)
    h = lam_next - lam
    e0 = eps(x, lam)
    if order == 1:
        return x - sig(lam_next) * (math.exp(h) - 1) * e0
    if order == 2:
        s1 = lam + h / 2
        u1 = x - sig(s1) * (math.exp(h / 2) - 1) * e0
        return x - sig(lam_next) * (math.exp(h) - 1) * e0 - sig(lam_next) * (math.exp(h) - 1) * (eps(u1, s1) - e0)
    s1, s2 = lam + h / 3, lam + 2 * h / 3
    u1 = x - sig(s1) * (math.exp(h / 3) - 1) * e0
    d1 = eps(u1, s1) - e0
    u2 = x - sig(s2) * (math.exp(2 * h / 3) - 1) * e0 - sig(s2) * 2 * ((math.exp(2 * h / 3) - 1) / (2 * h / 3) - 1) * d1
    d2 = eps(u2, s2) - e0
    return x - sig(lam_next) * (math.exp(h) - 1) * e0 - sig(lam_next) * 1.5 * ((math.exp(h) - 1) / h - 1) * d2


def ref_dpm_fast(model, x, sigma_max, sigma_min, nfe):
    """DPM-Solver-fast: K = floor(nfe/3) + 1 equal steps in lambda; orders 3..3,2,1 or 3..3,nfe%3."""
    k = nfe // 3 + 1
    lams = np.linspace(-math.log(sigma_max), -math.log(sigma_min), k + 1)
    orders = [3] * (k - 2) + [2, 1] if nfe % 3 == 0 else [3] * (k - 1) + [nfe % 3]
    assert sum(orders) == nfe
    for i, order in enumerate(orders):
        x = ref_dpm_solver_step(model, x, float(lams[i]), float(lams[i + 1]), order)
    return x


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 10, 12])
def test_dpm_fast_is_dpm_solver_fast_step_by_step(steps):
    sigmas = make_sigmas("karras", SCHEDULE, steps).double()
    ours, ref = Recorder(toy), Recorder(toy)
    seen = []
    out = SAMPLERS["dpm_fast"](ours, X_UNIT * sigmas[0], sigmas, lambda i, x, d: seen.append(i))
    want = ref_dpm_fast(ref, X_UNIT * sigmas[0], float(sigmas[0]), float(sigmas[-2]), steps)
    assert_same_calls(ours, ref)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)
    assert seen == list(range(steps))  # one report per model evaluation: progress counts `steps`


class RefPID:
    """Söderlind's PID step-size controller with k-diffusion's arctan limiter (defaults: I only)."""

    def __init__(self, h, order, kp=0.0, ki=1.0, kd=0.0, safety=0.81):
        self.h, self.safety = h, safety
        self.exps = ((kp + ki + kd) / order, -(kp + 2 * kd) / order, kd / order)
        self.hist = None

    def accept(self, err):
        inv = 1 / (err + 1e-8)
        hist = [inv, inv, inv] if self.hist is None else [inv, *self.hist[1:]]
        factor = math.prod(e ** p for e, p in zip(hist, self.exps))
        factor = 1 + math.atan(factor - 1)
        ok = factor >= self.safety
        self.hist = [hist[0], hist[0], hist[1]] if ok else hist
        self.h *= factor
        return ok


def ref_dpm_adaptive(model, x, sigma_max, sigma_min, rtol, atol, order=3):
    lam, lam_end = -math.log(sigma_max), -math.log(sigma_min)
    pid, x_prev, accepted, rejected = RefPID(0.05, order), x, [], 0
    while lam < lam_end - 1e-5:
        nxt = min(lam_end, lam + pid.h)
        if order == 3:
            lo = ref_dpm_solver_step_r(model, x, lam, nxt)
            hi = ref_dpm_solver_step(model, x, lam, nxt, 3)
        else:
            lo, hi = ref_dpm_solver_step(model, x, lam, nxt, 1), ref_dpm_solver_step(model, x, lam, nxt, 2)
        scale = torch.maximum(torch.full_like(x, atol), rtol * torch.maximum(lo.abs(), x_prev.abs()))
        err = float(((lo - hi) / scale).pow(2).mean().sqrt())
        if pid.accept(err):
            x_prev, x, lam = lo, hi, nxt
            accepted.append((lam, x))
        else:
            rejected += 1
    return x, accepted, rejected


def ref_dpm_solver_step_r(model, x, lam, lam_next, r1=1 / 3):
    """The embedded second-order step of DPM-Solver-23: DPM-Solver-2 with r1 = 1/3."""
    sig = lambda lam_: math.exp(-lam_)
    eps = lambda x_, lam_: (x_ - model(x_, torch.tensor(sig(lam_), dtype=torch.float64))) / sig(lam_)
    h = lam_next - lam
    e0 = eps(x, lam)
    s1 = lam + r1 * h
    e1 = eps(x - sig(s1) * math.expm1(r1 * h) * e0, s1)
    return x - sig(lam_next) * math.expm1(h) * e0 - sig(lam_next) / (2 * r1) * math.expm1(h) * (e1 - e0)


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_accepts_the_same_steps_as_the_reference(order):
    sigmas = make_sigmas("karras", SCHEDULE, 10).double()
    rtol, atol = 0.002, 1e-4  # tight enough that some steps are rejected
    accepted = []

    def on_step(i, x, d):
        accepted.append(x.clone())

    out = SAMPLERS["dpm_adaptive"](toy, X_UNIT * sigmas[0], sigmas, on_step, order=order, rtol=rtol, atol=atol)
    want, ref_steps, rejected = ref_dpm_adaptive(toy, X_UNIT * sigmas[0], float(sigmas[0]), float(sigmas[-2]), rtol, atol,
                                       order)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-10)
    assert rejected > 0 and len(ref_steps) > 10  # the controller rejected steps and took many
    assert len(accepted) == 10  # 10 progress reports, one per tenth of the way


def test_dpm_adaptive_error_follows_the_tolerance():
    sigmas = torch.tensor([10.0, 0.05, 0.0], dtype=torch.float64)
    x = MU + torch.linspace(-2, 2, 9, dtype=torch.float64) * math.sqrt(S2 + 100)
    want = exact(x, 10.0, 0.05)
    errs = [(SAMPLERS["dpm_adaptive"](gauss, x, sigmas, rtol=tol, atol=tol / 10) - want).abs().max().item()
            for tol in (1e-2, 1e-4, 1e-6)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5, errs



@pytest.mark.parametrize("options, words", [
    ({"rtol": 0.0, "atol": 0.0}, " took 500 tries"),  # these three looped for ever (as in k-diffusion)
    ({"accept_safety": 5.0}, " took 500 tries"),
    ({"eta": 100.0}, " took 500 tries"),
    ({"h_init": 1e-30}, " made no progress"),  # was a ZeroDivisionError (a step of 0)
    ({"icoeff": -5.0}, " made no progress"),  # the step shrank to 0, then the same
    ({"pcoeff": 1000.0}, "'s step controller overflowed"),  # was an OverflowError
])
def test_dpm_adaptive_options_it_cannot_meet_are_refused_in_bounded_time(options, words):
    sigmas = make_sigmas("karras", SCHEDULE, 10).double()
    calls = []

    def counted(x, sigma):
        calls.append(1)
        return toy(x, sigma)

    with pytest.raises(InvalidArgument, match=f"^sampler_options: DPM adaptive{words}"):
        SAMPLERS["dpm_adaptive"](counted, X_UNIT * sigmas[0], sigmas, **options)
    assert len(calls) <= 3 * 500 + 3
    # the strictest options that can be met still run
    SAMPLERS["dpm_adaptive"](toy, X_UNIT * sigmas[0], sigmas, rtol=1e-6, atol=1e-8)

# --- Restart (Xu et al. 2023) as A1111 schedules it --------------------------------------------

def ref_restart_pairs(sigmas):
    n = len(sigmas) - 1
    if n < 20:
        main = sigmas.tolist()
        return list(zip(main[:-1], main[1:]))
    k, times = (n // 4, 2) if n >= 36 else (9, 1)
    main = karras(float(sigmas[-2]), float(sigmas[0]), n - k * times).double()
    lo = int(np.argmin(np.abs(main.numpy() - 0.1)))  # restart where sigma is nearest 0.1 ...
    hi = int(np.argmin(np.abs(main.numpy() - 2.0)))  # ... back up to the sigma nearest 2
    seg = karras(float(main[lo]), float(main[hi]), k + 1)[:-1].tolist()
    m = main.tolist()
    pairs = list(zip(m[:lo], m[1:lo + 1]))
    pairs += list(zip(seg[:-1], seg[1:])) * times
    return pairs + list(zip(m[lo:-1], m[lo + 1:]))


@pytest.mark.parametrize("steps", [8, 19, 20, 30, 36, 50])
def test_restart_plan_is_a1111s(steps):
    sigmas = make_sigmas("karras", SCHEDULE, steps).double()
    got = restart_plan(sigmas)
    assert len(got) == steps  # restarts take steps from the main schedule: the total is kept
    np.testing.assert_allclose(np.array(got), np.array(ref_restart_pairs(sigmas)), rtol=1e-6)
    jumps = [(a[1], b[0]) for a, b in zip(got, got[1:]) if b[0] > a[1]]  # where noise goes back up
    assert len(jumps) == (0 if steps < 20 else 1 if steps < 36 else 2)
    for low, high in jumps:
        assert low == pytest.approx(0.1, abs=0.05) and high == pytest.approx(2.0, rel=0.35)


def test_restart_steps_are_heun_and_restarts_add_the_missing_noise():
    sigmas = make_sigmas("karras", SCHEDULE, 20).double()
    noises = []

    def noise(s, s_next):
        noises.append((float(s), float(s_next)))
        return torch.ones_like(X_UNIT)

    ours = Recorder(toy)
    out = SAMPLERS["restart"](ours, X_UNIT * sigmas[0], sigmas, noise_sampler=noise, s_noise=0.5)
    x = X_UNIT * sigmas[0]
    ref = Recorder(toy)
    last = None
    for s, s_next in ref_restart_pairs(sigmas):
        if last is not None and last < s:
            x = x + 0.5 * math.sqrt(s * s - last * last)  # unit "noise" here
        d = (x - ref(x, torch.tensor(s, dtype=torch.float64))) / s
        x2 = x + d * (s_next - s)
        x = x2 if s_next == 0 else x + (d + (x2 - ref(x2, torch.tensor(s_next, dtype=torch.float64))) / s_next) / 2 * (s_next - s)
        last = s_next
    assert_same_calls(ours, ref)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-10)
    assert len(noises) == 1 and noises[0][0] < noises[0][1]  # one restart, from low to high sigma


def test_restart_samples_the_data_distribution():
    n, g = 20000, torch.Generator().manual_seed(1)
    sigmas = make_sigmas("karras", SCHEDULE, 24).double()
    x = MU + torch.randn(n, generator=g, dtype=torch.float64) * math.sqrt(S2 + sigmas[0] ** 2)
    out = SAMPLERS["restart"](gauss, x, sigmas, noise_sampler=lambda s, sn: torch.randn(n, generator=g,
                                                                                        dtype=torch.float64))
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / math.sqrt(S2) - 1) < 0.03


# --- DEIS (Zhang & Chen 2023), tAB ---------------------------------------------------------------

def vp_sigma(tau, beta_d, beta_min):
    return math.sqrt(math.expm1(0.5 * beta_d * tau * tau + beta_min * tau))


def ref_deis_coefficients(sigmas, i, order, n=200001):
    """The published tAB coefficients: integral over the VP time tau of dsigma/dtau times the
    Lagrange basis in tau, by the trapezoid rule on a fine grid (ComfyUI's route, more points)."""
    beta_d = 2 * (math.log(0.002 ** 2 + 1) / 1e-3 - math.log(80 ** 2 + 1)) / (1e-3 - 1)
    beta_min = math.log(80 ** 2 + 1) - 0.5 * beta_d
    tau_of = lambda s: (math.sqrt(beta_min ** 2 + 2 * beta_d * math.log(s * s + 1)) - beta_min) / beta_d
    taus = np.linspace(tau_of(sigmas[i]), tau_of(sigmas[i + 1]), n)
    sig = np.sqrt(np.expm1(0.5 * beta_d * taus ** 2 + beta_min * taus))
    dsig = np.exp(0.5 * beta_d * taus ** 2 + beta_min * taus) * (beta_d * taus + beta_min) / (2 * sig)
    knots = [tau_of(sigmas[i - k]) for k in range(order)]
    out = []
    for j in range(order):
        basis = np.prod([(taus - knots[k]) / (knots[j] - knots[k]) for k in range(order) if k != j], axis=0)
        out.append(float(np.trapezoid(dsig * basis, taus)))
    return out


@pytest.mark.parametrize("order", [2, 3, 4])
def test_deis_coefficients_are_the_published_integrals(order):
    sigmas = make_sigmas("karras", SCHEDULE, 12).double().tolist()
    for i in range(order - 1, 11):
        np.testing.assert_allclose(deis_coefficients(sigmas, i, order), ref_deis_coefficients(sigmas, i, order),
                                   rtol=1e-7, atol=1e-9)
    # the coefficients integrate the constant exactly: they sum to the step in sigma
    assert sum(deis_coefficients(sigmas, 5, order)) == pytest.approx(sigmas[6] - sigmas[5], rel=1e-12)


def test_deis_runs_the_multistep_update_step_by_step():
    sigmas = make_sigmas("karras", SCHEDULE, 10).double()
    s = sigmas.tolist()
    ours, ref = Recorder(toy), Recorder(toy)
    out = SAMPLERS["deis"](ours, X_UNIT * sigmas[0], sigmas)
    x, slopes = X_UNIT * sigmas[0], []
    for i in range(10):
        slopes.insert(0, (x - ref(x, sigmas[i])) / sigmas[i])
        slopes = slopes[:3]
        if s[i + 1] == 0 or len(slopes) == 1:
            x = x + (s[i + 1] - s[i]) * slopes[0]
        else:
            x = x + sum(c * d for c, d in zip(ref_deis_coefficients(s, i, len(slopes)), slopes))
    assert_same_calls(ours, ref, tol=1e-8)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-8)


# --- TCD (Zheng et al. 2024) in the VP form of its paper ------------------------------------------

def ref_tcd(model, x_vp, timesteps, alphas, gamma, noise):
    """Algorithm (multistep TCD sampling): predict x0 and eps at t, go deterministically to
    s = floor((1 - gamma) t_prev) (DDIM), then forward-diffuse from s to t_prev."""
    for k, t in enumerate(timesteps):
        a_t = float(alphas[t])
        sigma = math.sqrt((1 - a_t) / a_t)
        x0 = model(x_vp / math.sqrt(a_t), torch.tensor(sigma, dtype=torch.float64))
        eps = (x_vp - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        t_prev = timesteps[k + 1] if k + 1 < len(timesteps) else 0
        s = math.floor((1 - gamma) * t_prev) if k + 1 < len(timesteps) else 0
        a_s = float(alphas[s])
        x_vp = math.sqrt(a_s) * x0 + math.sqrt(1 - a_s) * eps
        if gamma > 0 and k + 1 < len(timesteps):
            a_prev = float(alphas[t_prev])
            x_vp = math.sqrt(a_prev / a_s) * x_vp + math.sqrt(1 - a_prev / a_s) * noise()
    return x_vp


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.7])
def test_tcd_is_the_papers_sampler(gamma):
    alphas = scaled_linear_alphas_cumprod()
    timesteps = [999, 759, 499, 259]  # TCD/LCM's usual 4 steps
    sigmas = torch.cat([SCHEDULE.sigmas[timesteps].double(), torch.zeros(1, dtype=torch.float64)])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x_vp = X_UNIT.clone()
    ours = SAMPLERS["tcd"](toy, x_vp * math.sqrt(1 + sigmas[0] ** 2), sigmas, eta=gamma,
                           model_schedule=SCHEDULE,
                           noise_sampler=lambda s, sn: torch.randn(X_UNIT.shape, generator=g1, dtype=torch.float64))
    want = ref_tcd(toy, x_vp, timesteps, alphas, gamma,
                   lambda: torch.randn(X_UNIT.shape, generator=g2, dtype=torch.float64))
    torch.testing.assert_close(ours, want, rtol=0, atol=2e-5)  # float32 schedule tables


def test_tcd_takes_the_models_schedule_as_context():
    assert "model_schedule" not in sampler_options("tcd")
    assert sampler_context("tcd", None, SCHEDULE) == {"noise_sampler": None, "model_schedule": SCHEDULE}
    assert sampler_context("euler", None, SCHEDULE) == {"noise_sampler": None}


# --- CFG++ (Chung et al. 2024) --------------------------------------------------------------------

def guided_toy(scale):
    """Guidance over two toy "predictions": uncond = toy, cond = toy shifted."""
    def both(x, sigma):
        uncond = toy(x, sigma)
        cond = toy(x + 0.3, sigma)
        return uncond + scale * (cond - uncond), uncond
    return Guided(both)


def test_euler_cfg_pp_is_ddim_cfg_pp():
    """CFG++'s DDIM step in VP form: x_prev = sqrt(a_prev) x0_guided + sqrt(1 - a_prev) eps_uncond."""
    sigmas = make_sigmas("normal", SCHEDULE, 8).double()
    model = guided_toy(0.8)
    out = SAMPLERS["euler_cfg_pp"](model, X_UNIT * sigmas[0], sigmas)
    x_vp = X_UNIT * sigmas[0] / (1 + sigmas[0] ** 2).sqrt()
    for i in range(8):
        a, a_prev = 1 / (1 + sigmas[i] ** 2), 1 / (1 + sigmas[i + 1] ** 2)
        x0, x0_uncond = model.both(x_vp / a.sqrt(), sigmas[i])
        eps_uncond = (x_vp - a.sqrt() * x0_uncond) / (1 - a).sqrt()
        x_vp = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps_uncond
    torch.testing.assert_close(out, x_vp, rtol=0, atol=1e-10)


def test_dpmpp_2m_cfg_pp_step_by_step():
    """ComfyUI's DPM++ 2M CFG++ in sigma ratios: x' = D + q (x - U) + (1 - q)/(2r) (D - U_prev),
    q = sigma_next / sigma, r = log(sigma_prev / sigma) / log(sigma / sigma_next)."""
    sigmas = make_sigmas("karras", SCHEDULE, 8).double()
    model = guided_toy(1.2)
    out = SAMPLERS["dpmpp_2m_cfg_pp"](model, X_UNIT * sigmas[0], sigmas)
    x, u_prev = X_UNIT * sigmas[0], None
    for i in range(8):
        d, u = model.both(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = d
        else:
            q = sigmas[i + 1] / sigmas[i]
            x_new = d + q * (x - u)
            if u_prev is not None:
                r = math.log(sigmas[i - 1] / sigmas[i]) / math.log(sigmas[i] / sigmas[i + 1])
                x_new = x_new + (1 - q) / (2 * r) * (d - u_prev)
            x = x_new
        u_prev = u
    torch.testing.assert_close(out, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("pp, plain", [("euler_cfg_pp", "euler"), ("dpmpp_2m_cfg_pp", "dpmpp_2m")])
def test_cfg_pp_without_guidance_is_its_base_sampler(pp, plain):
    sigmas = make_sigmas("karras", SCHEDULE, 9).double()
    torch.testing.assert_close(SAMPLERS[pp](toy, X_UNIT * sigmas[0], sigmas),
                               SAMPLERS[plain](toy, X_UNIT * sigmas[0], sigmas), rtol=0, atol=1e-10)
    torch.testing.assert_close(SAMPLERS[pp](guided_toy(1.0), X_UNIT * sigmas[0], sigmas),  # cond == guided
                               SAMPLERS[pp](guided_toy(1.0), X_UNIT * sigmas[0], sigmas))


def test_euler_ancestral_cfg_pp_step_by_step():
    """x' = D + sigma_down (x - U) / sigma + s_noise sigma_up z, with Euler a's sigma_down and sigma_up."""
    sigmas = make_sigmas("karras", SCHEDULE, 6).double()
    model, eta, s_noise = guided_toy(1.5), 0.7, 0.5
    draws = [torch.randn(X_UNIT.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
             for i in range(6)]
    out = SAMPLERS["euler_ancestral_cfg_pp"](model, X_UNIT * sigmas[0], sigmas, eta=eta, s_noise=s_noise,
                                             noise_sampler=lambda s, sn, d=iter(draws): next(d))
    x = X_UNIT * sigmas[0]
    for i in range(6):
        d, u = model.both(x, sigmas[i])
        s, sn = sigmas[i], sigmas[i + 1]
        up = min(sn, eta * (sn ** 2 * (s ** 2 - sn ** 2) / s ** 2) ** 0.5)
        down = (sn ** 2 - up ** 2) ** 0.5
        x = d + down * (x - u) / s + (s_noise * up * draws[i] if sn > 0 else 0)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-10)


def test_euler_ancestral_cfg_pp_limits():
    sigmas = make_sigmas("karras", SCHEDULE, 9).double()
    x = X_UNIT * sigmas[0]

    def noise(seed=4):
        g = torch.Generator().manual_seed(seed)
        return lambda s, sn: torch.randn(X_UNIT.shape, generator=g, dtype=torch.float64)

    # eta 0: Euler CFG++; unguided: Euler a with the same noise
    torch.testing.assert_close(SAMPLERS["euler_ancestral_cfg_pp"](guided_toy(1.5), x, sigmas, eta=0.0),
                               SAMPLERS["euler_cfg_pp"](guided_toy(1.5), x, sigmas), rtol=0, atol=1e-10)
    torch.testing.assert_close(SAMPLERS["euler_ancestral_cfg_pp"](toy, x, sigmas, noise_sampler=noise()),
                               SAMPLERS["euler_ancestral"](toy, x, sigmas, noise_sampler=noise()), rtol=0, atol=1e-10)


def test_dpmpp_2m_sde_heun_solver_step_by_step():
    """k-diffusion's solver_type="heun" second-order term: (expm1(-h)/h + 1) (D - D_prev) / r, r = h_prev / h
    (noise-free here, eta 0)."""
    sigmas = make_sigmas("karras", SCHEDULE, 7).double()
    out = SAMPLERS["dpmpp_2m_sde"](toy, X_UNIT * sigmas[0], sigmas, eta=0.0, solver_type="heun")
    x, prev = X_UNIT * sigmas[0], None
    for i in range(7):
        d = toy(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = d
        else:
            h = math.log(sigmas[i] / sigmas[i + 1])
            x = sigmas[i + 1] / sigmas[i] * x - math.expm1(-h) * d
            if prev is not None:
                x = x + (math.expm1(-h) / h + 1) * (d - prev[0]) / (prev[1] / h)
            prev = (d, h)
    torch.testing.assert_close(out, x, rtol=0, atol=1e-10)
    midpoint = SAMPLERS["dpmpp_2m_sde"](toy, X_UNIT * sigmas[0], sigmas, eta=0.0)
    assert not torch.allclose(out, midpoint)
    with pytest.raises(InvalidArgument, match="^sampler_options.solver_type: 'rk4' is not midpoint or heun"):
        SAMPLERS["dpmpp_2m_sde"](toy, X_UNIT * sigmas[0], sigmas, solver_type="rk4")


# --- order of convergence on the probability-flow ODE of Gaussian data -----------------------------

X_T = MU + torch.linspace(-2, 2, 9, dtype=torch.float64) * math.sqrt(S2 + 100)


def _exp_sigmas(n, lo=0.05, hi=10.0):
    return torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64).exp()


@pytest.mark.parametrize("name, options, order, ns", [
    # 29 and 59 evaluations (+1 for the appended 0): third-order steps and a second-order last one;
    # counts that end in a first-order step (3k, 3k+1) are second order overall
    ("dpm_fast", {}, 3, [28, 58]),
    ("dpm_fast", {}, 2, [27, 57]),
    # multistep: the lower-order warm-up steps fade slowly, so measure further out
    ("deis", {}, 3, [64, 128]),
    ("deis", {"max_order": 2}, 2, [32, 64]),
    ("deis", {"max_order": 4}, 3.25, [32, 64]),
    ("restart", {}, 2, [8, 16]),             # below 20 steps: Heun
    ("euler_cfg_pp", {}, 1, [32, 64]),       # unguided: Euler
    ("dpmpp_2m_cfg_pp", {}, 2, [32, 64]),    # unguided: DPM++ 2M
    ("dpmpp_2m_sde", {"eta": 0.0, "solver_type": "heun"}, 2, [32, 64]),
])
def test_order_of_convergence(name, options, order, ns):
    def err(n):
        sigmas = torch.cat([_exp_sigmas(n), torch.zeros(1, dtype=torch.float64)]) if name == "dpm_fast" \
            else _exp_sigmas(n)
        return (SAMPLERS[name](gauss, X_T.clone(), sigmas, **options) - exact(X_T, 10.0, 0.05)).abs().max().item()

    e1, e2 = err(ns[0]), err(ns[1])
    assert math.log2(e1 / e2) > order - 0.25, (e1, e2)
