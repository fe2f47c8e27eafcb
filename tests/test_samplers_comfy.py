"""The samplers and schedules ComfyUI's KSampler lists that we added (res_multistep family, gradient
estimation, ER SDE, iPNDM, Heun++ 2, DDPM, DPM++ 2S a CFG++, DPM++ 2M SDE Heun, UniPC BH2;
linear_quadratic, kl_optimal). Each is held to a reference written here from its formula, step by
step on a nonlinear toy denoiser, to its order of convergence on Gaussian data (whose probability-flow
ODE has a closed-form solution), to its noise-free limit, and, for the stochastic ones, to the
distribution it samples.
"""
import math

import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.sampling.cfg_pp import Guided
from opensd.sampling.flow import FlowSampling
from opensd.sampling.ipndm import variable_coefficients
from opensd.sampling.sa_solver import adams_weights, simple_order_2_weights
from opensd.sampling.schedules import DiscreteSchedule, make_sigmas, scaled_linear_alphas_cumprod
from opensd.sampling.samplers import NEEDS_UNCOND, SAMPLERS

SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())
MU, S2 = 0.3, 0.25  # Gaussian data N(MU, S2): exact denoiser, exact ODE path

_g = torch.Generator().manual_seed(11)
X_UNIT = torch.randn(1, 4, 6, 6, generator=_g, dtype=torch.float64)
TARGET = torch.randn(1, 4, 6, 6, generator=_g, dtype=torch.float64)
X_T = MU + torch.linspace(-2, 2, 9, dtype=torch.float64) * math.sqrt(S2 + 100)


def gauss(x, sigma):
    return MU + S2 / (S2 + sigma ** 2) * (x - MU)


def toy(x, sigma):
    """A smooth nonlinear "model"."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    return torch.tanh(x / (1 + s ** 2).sqrt() + TARGET) * (1 + 0.1 * s / (1 + s))


def toy_uncond(x, sigma):
    return 0.7 * toy(x, sigma) - 0.2 * TARGET


def guided(cfg=3.0):
    """A CFG denoiser over toy (positive) and toy_uncond (negative)."""
    def both(x, sigma):
        c, u = toy(x, sigma), toy_uncond(x, sigma)
        return u + cfg * (c - u), u
    return Guided(both)


def equal_guided(fn):
    """A Guided denoiser whose unconditional estimate is its guided one (negative = positive)."""
    return Guided(lambda x, s: (fn(x, s), fn(x, s)))


def sigmas_karras(n):
    return make_sigmas("karras", SCHEDULE, n).double()


def exp_sigmas(n, lo=0.05, hi=10.0):
    """Evenly spaced in log sigma, ending at lo > 0: the error measured is the solver's own."""
    return torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64).exp()


def seeded(seed, shape=X_UNIT.shape):
    g = torch.Generator().manual_seed(seed)
    return lambda s, sn: torch.randn(shape, generator=g, dtype=torch.float64)


def never(*_):
    raise AssertionError("a noise-free setting drew noise")


def order_of(name, options, ns=(32, 64)):
    exact = MU + (X_T - MU) * math.sqrt((S2 + 0.05 ** 2) / (S2 + 10.0 ** 2))
    errs = [(SAMPLERS[name](gauss, X_T.clone(), exp_sigmas(n), **options) - exact).abs().max().item() for n in ns]
    return math.log2(errs[0] / errs[1])


# --- references from the formulas -----------------------------------------------------------------

def ref_res_multistep(model, x, sigmas):
    """Exponential integrator in lambda = -log sigma with the estimate linear in lambda through the
    last two: x' = e^-h x + (1 - e^-h) D + (h - 1 + e^-h) (D - D_old) / h_old."""
    s = sigmas.tolist()
    old = None
    for i in range(len(s) - 1):
        d = model(x, sigmas[i])
        if s[i + 1] == 0:
            x = d
        elif old is None:
            x = d + s[i + 1] / s[i] * (x - d)
        else:
            h, h_old = math.log(s[i] / s[i + 1]), math.log(s[i - 1] / s[i])
            x = math.exp(-h) * x + (1 - math.exp(-h)) * d + (h - 1 + math.exp(-h)) * (d - old) / h_old
        old = d
    return x


def ref_gradient_estimation(model, x, sigmas, gamma):
    """Euler whose slope from the second step on is gamma d - (gamma - 1) d_old."""
    s = sigmas.tolist()
    d_old = None
    for i in range(len(s) - 1):
        den = model(x, sigmas[i])
        d = (x - den) / s[i]
        if s[i + 1] == 0:
            x = den
        else:
            x = x + (s[i + 1] - s[i]) * (d if d_old is None else gamma * d - (gamma - 1) * d_old)
        d_old = d
    return x


AB = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def ref_ipndm(model, x, sigmas):
    s = sigmas.tolist()
    ds = []
    for i in range(len(s) - 1):
        den = model(x, sigmas[i])
        ds.insert(0, (x - den) / s[i])
        k = min(i + 1, 4)
        x = den if s[i + 1] == 0 else x + (s[i + 1] - s[i]) * sum(c * d for c, d in zip(AB[k], ds))
    return x


def ref_heunpp2(model, x, sigmas):
    s = sigmas.tolist()
    slope = lambda x_, k: (x_ - model(x_, sigmas[k])) / s[k]  # noqa: E731
    for i in range(len(s) - 1):
        d = slope(x, i)
        dt = s[i + 1] - s[i]
        if i + 1 == len(s) - 1:
            x = x + dt * d
            continue
        x2 = x + dt * d
        d2 = slope(x2, i + 1)
        if i + 2 == len(s) - 1:
            w2 = s[i + 1] / (2 * s[0])
            x = x + dt * ((1 - w2) * d + w2 * d2)
        else:
            d3 = slope(x2 + (s[i + 2] - s[i + 1]) * d2, i + 2)
            w2, w3 = s[i + 1] / (3 * s[0]), s[i + 2] / (3 * s[0])
            x = x + dt * ((1 - w2 - w3) * d + w2 * d2 + w3 * d3)
    return x


def ref_ddpm(model, x, sigmas, noise):
    """DDPM (Ho et al. 2020, eq. 11 and sigma_t^2 = beta-tilde) in VP variables: x_vp = x / sqrt(1 + sigma^2),
    alpha-bar = 1 / (1 + sigma^2), eps = (x - D) / sigma."""
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        eps = (x - model(x, sigmas[i])) / s[i]
        ab, ab_prev = 1 / (1 + s[i] ** 2), 1 / (1 + s[i + 1] ** 2)
        alpha = ab / ab_prev
        x_vp = x / math.sqrt(1 + s[i] ** 2)
        mean = (x_vp - (1 - alpha) / math.sqrt(1 - ab) * eps) / math.sqrt(alpha)
        if s[i + 1] > 0:
            mean = mean + math.sqrt((1 - ab_prev) / (1 - ab) * (1 - alpha)) * noise(s[i], s[i + 1])
            x = mean * math.sqrt(1 + s[i + 1] ** 2)
        else:
            x = mean
    return x


def ref_dpmpp_2s_ancestral_cfg_pp(both, x, sigmas, noise, eta=1.0):
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        den, unc = both(x, sigmas[i])
        up = min(s[i + 1], eta * math.sqrt(s[i + 1] ** 2 * (s[i] ** 2 - s[i + 1] ** 2) / s[i] ** 2))
        down = math.sqrt(s[i + 1] ** 2 - up ** 2)
        if down == 0:
            x = unc
        else:
            h = math.log(s[i] / down)
            x2 = math.exp(-h / 2) * x + (1 - math.exp(-h / 2)) * unc
            unc2 = both(x2, torch.tensor(s[i] * math.exp(-h / 2), dtype=torch.float64))[1]
            x = math.exp(-h) * x + (1 - math.exp(-h)) * unc2
        if s[i + 1] > 0 and up > 0:
            x = x + up * noise(s[i], s[i + 1])
        x = x + den - unc
    return x


# --- step by step ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 7])
def test_res_multistep_is_the_exponential_integrator_with_a_linear_estimate(n):
    sigmas = sigmas_karras(n)
    want = ref_res_multistep(toy, X_UNIT * sigmas[0], sigmas)
    torch.testing.assert_close(SAMPLERS["res_multistep"](toy, X_UNIT * sigmas[0], sigmas), want, rtol=0, atol=1e-10)


def test_res_multistep_cfg_pp_steps_on_the_unconditional_estimate():
    """First step Euler CFG++; after it the RES update of x + guidance on the unconditional estimates."""
    sigmas = sigmas_karras(3)
    s = sigmas.tolist()
    g = guided()
    x = X_UNIT * s[0]
    den, unc = g.both(x, sigmas[0])
    x1 = den + s[1] / s[0] * (x - unc)
    den1, unc1 = g.both(x1, sigmas[1])
    h, h_old = math.log(s[1] / s[2]), math.log(s[0] / s[1])
    y = x1 + den1 - unc1
    x2 = math.exp(-h) * y + (1 - math.exp(-h)) * unc1 + (h - 1 + math.exp(-h)) * (unc1 - unc) / h_old
    got = []
    SAMPLERS["res_multistep_cfg_pp"](g, X_UNIT * s[0], sigmas, lambda i, xi, d: got.append(xi))
    torch.testing.assert_close(got[0], x1, rtol=0, atol=1e-10)
    torch.testing.assert_close(got[1], x2, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gamma", [2.0, 1.5])
def test_gradient_estimation_extrapolates_the_slope(gamma):
    sigmas = sigmas_karras(6)
    want = ref_gradient_estimation(toy, X_UNIT * sigmas[0], sigmas, gamma)
    got = SAMPLERS["gradient_estimation"](toy, X_UNIT * sigmas[0], sigmas, ge_gamma=gamma)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    euler = SAMPLERS["euler"](toy, X_UNIT * sigmas[0], sigmas)
    torch.testing.assert_close(SAMPLERS["gradient_estimation"](toy, X_UNIT * sigmas[0], sigmas, ge_gamma=1.0), euler)
    assert not torch.allclose(got, euler)


def test_ipndm_uses_the_equal_step_adams_bashforth_weights():
    sigmas = sigmas_karras(7)
    want = ref_ipndm(toy, X_UNIT * sigmas[0], sigmas)
    torch.testing.assert_close(SAMPLERS["ipndm"](toy, X_UNIT * sigmas[0], sigmas), want, rtol=0, atol=1e-10)


def test_ipndm_v_weights():
    # on equal steps orders 1-3 are the fixed ones; diff-sampler's (and ComfyUI's) order 4 is not quite AB4
    for k in (1, 2, 3):
        assert variable_coefficients([-0.5] * k) == pytest.approx(AB[k], abs=1e-12)
    assert variable_coefficients([-0.5] * 4) == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24], abs=1e-12)
    # order 2 is exact variable-step AB2: the integral of the line through (t-h1, d1), (t, d0) over [t, t+h0]
    h0, h1 = -0.3, -0.7
    assert variable_coefficients([h0, h1]) == pytest.approx((1 + h0 / (2 * h1), -h0 / (2 * h1)))
    # order 3 is consistent (weights sum to 1) on any steps; ComfyUI's order 4 only where the step
    # ratios repeat (h1/h2 = h2/h3), as on a geometric grid, and off by a little elsewhere
    assert sum(variable_coefficients([-0.3, -0.5, -0.9])) == pytest.approx(1.0)
    assert sum(variable_coefficients([-0.3, -0.6, -1.2, -2.4])) == pytest.approx(1.0)
    assert sum(variable_coefficients([-0.3, -0.5, -0.9, -1.4])) == pytest.approx(1.0028354941)
    with pytest.raises(InvalidArgument, match="^sampler_options.max_order"):
        SAMPLERS["ipndm_v"](toy, X_UNIT, sigmas_karras(3), max_order=5)


def test_heunpp2_blends_the_look_ahead_slopes():
    for n in (1, 2, 3, 6):
        sigmas = sigmas_karras(n)
        want = ref_heunpp2(toy, X_UNIT * sigmas[0], sigmas)
        torch.testing.assert_close(SAMPLERS["heunpp2"](toy, X_UNIT * sigmas[0], sigmas), want, rtol=0, atol=1e-10)


def test_ddpm_is_the_ddpm_posterior_step():
    sigmas = sigmas_karras(8)
    want = ref_ddpm(toy, X_UNIT * sigmas[0], sigmas, seeded(5))
    got = SAMPLERS["ddpm"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(5))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_dpmpp_2s_ancestral_cfg_pp_step_by_step():
    sigmas = sigmas_karras(6)
    g = guided()
    for eta in (1.0, 0.5):
        want = ref_dpmpp_2s_ancestral_cfg_pp(g.both, X_UNIT * sigmas[0], sigmas, seeded(2), eta)
        got = SAMPLERS["dpmpp_2s_ancestral_cfg_pp"](g, X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(2), eta=eta)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_er_sde_first_step_and_noise():
    """Stage 1 alone: x' = r x + (1 - r) D + sqrt(s'^2 - (r s)^2) z with r = phi(s') / phi(s),
    phi(l) = l (e^(l^0.3) + 10)."""
    sigmas = sigmas_karras(4)
    s0, s1 = sigmas[0].item(), sigmas[1].item()
    phi = lambda lam: lam * (math.exp(lam ** 0.3) + 10)  # noqa: E731
    r = phi(s1) / phi(s0)
    x = X_UNIT * s0
    z = seeded(4)(None, None)
    want = r * x + (1 - r) * toy(x, sigmas[0]) + math.sqrt(s1 ** 2 - (r * s0) ** 2) * z
    got = []
    SAMPLERS["er_sde"](toy, x, sigmas, lambda i, xi, d: got.append(xi), noise_sampler=seeded(4))
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-10)
    # the reverse-time SDE's phi is l^(eta + 1)
    r = (s1 / s0) ** 1.5
    want = r * x + (1 - r) * toy(x, sigmas[0]) + math.sqrt(s1 ** 2 - (r * s0) ** 2) * z
    got = []
    SAMPLERS["er_sde"](toy, x, sigmas, lambda i, xi, d: got.append(xi), noise_sampler=seeded(4),
                       solver_type="Reverse-time SDE", eta=0.5)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-10)


def ref_er_sde(model, x, sigmas, noise):
    """ER-SDE-Solver-3 (Cui et al. 2023, Alg. with phi(l) = l (e^(l^0.3) + 10)): r = phi(t) / phi(s),
    x' = r x + (1 - r) D + (dt + phi(t) S1) D' + (dt^2 / 2 + phi(t) S2) D'' + sqrt(t^2 - (r s)^2) z,
    S1 = int_t^s dl / phi(l), S2 = int_t^s (l - s) / phi(l) dl by a left sum on 200 points, D' and D''
    divided differences of the estimates over sigma."""
    phi = lambda lam: lam * (math.exp(lam ** 0.3) + 10)  # noqa: E731
    sg = sigmas.tolist()
    dens, d1_old = [], None
    for i in range(len(sg) - 1):
        den = model(x, sigmas[i])
        s, t = sg[i], sg[i + 1]
        if t == 0:
            x = den
        else:
            r = phi(t) / phi(s)
            y = r * x + (1 - r) * den
            if i >= 1:
                dt, w = t - s, (s - t) / 200
                pts = [t + k * w for k in range(200)]
                s1 = sum(w / phi(p) for p in pts)
                d1 = (den - dens[-1]) / (s - sg[i - 1])
                y = y + (dt + s1 * phi(t)) * d1
                if i >= 2:
                    s2 = sum(w * (p - s) / phi(p) for p in pts)
                    y = y + (dt ** 2 / 2 + s2 * phi(t)) * (d1 - d1_old) / ((s - sg[i - 2]) / 2)
                d1_old = d1
            x = y + math.sqrt(max(t ** 2 - (r * s) ** 2, 0.0)) * noise(s, t)
        dens.append(den)
    return x


def test_er_sde_step_by_step():
    sigmas = sigmas_karras(7)
    want = ref_er_sde(toy, X_UNIT * sigmas[0], sigmas, seeded(6))
    got = SAMPLERS["er_sde"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(6))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_er_sde_ode_with_one_stage_is_euler():
    sigmas = sigmas_karras(8)
    got = SAMPLERS["er_sde"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, solver_type="ODE", max_stage=1)
    torch.testing.assert_close(got, SAMPLERS["euler"](toy, X_UNIT * sigmas[0], sigmas), rtol=0, atol=1e-10)
    for bad in ({"solver_type": "SDE"}, {"max_stage": 4}):
        with pytest.raises(InvalidArgument, match="^sampler_options"):
            SAMPLERS["er_sde"](toy, X_UNIT, sigmas, **bad)


def test_thin_variants_are_their_base_sampler_with_the_option():
    sigmas = sigmas_karras(8)
    x = X_UNIT * sigmas[0]
    torch.testing.assert_close(SAMPLERS["uni_pc_bh2"](toy, x, sigmas), SAMPLERS["uni_pc"](toy, x, sigmas, variant="bh2"),
                               rtol=0, atol=0)
    assert not torch.allclose(SAMPLERS["uni_pc_bh2"](toy, x, sigmas), SAMPLERS["uni_pc"](toy, x, sigmas))
    heun = SAMPLERS["dpmpp_2m_sde_heun"](toy, x, sigmas, noise_sampler=seeded(1))
    torch.testing.assert_close(heun, SAMPLERS["dpmpp_2m_sde"](toy, x, sigmas, noise_sampler=seeded(1),
                                                              solver_type="heun"), rtol=0, atol=0)
    assert not torch.allclose(heun, SAMPLERS["dpmpp_2m_sde"](toy, x, sigmas, noise_sampler=seeded(1)))


def ref_seeds(model, x, sigmas, noise, eta, cs, weights):
    """SEEDS' stages written out (Gonzalez et al. 2023, data prediction, alpha = 1): stage k at
    c_k of the step h = log(s / s'), lam = -log sigma, H = (1 + eta) h,
    x_k = (s_k / s) e^(-eta c_k h) x + sum_j a_kj D_j + s_k W_k, W_k the path's noise; `weights(h, H)`
    gives the a_kj rows (each summing to 1 - e^(-c_k H)), the last row's c being 1."""
    sg = sigmas.tolist()
    for i in range(len(sg) - 1):
        ds = [model(x, sigmas[i])]
        if sg[i + 1] == 0:
            x = ds[0]
            continue
        s = sg[i]
        h = math.log(s / sg[i + 1])
        rows = weights(h, (1 + eta) * h)
        w, c_prev, s_prev = None, 0.0, s
        for k, c in enumerate([*cs, 1.0]):
            s_c = s * math.exp(-c * h)
            y = s_c / s * math.exp(-eta * c * h) * x + sum(a * d for a, d in zip(rows[k], ds))
            if eta > 0:
                z = noise(s_prev, s_c)
                fresh = math.sqrt(1 - math.exp(-2 * eta * (c - c_prev) * h)) * z
                w = fresh if w is None else w * math.exp(-eta * (c - c_prev) * h) + fresh
                y = y + s_c * w
            c_prev, s_prev = c, s_c
            if c == 1.0:
                x = y
            else:
                ds.append(model(y, torch.tensor(s_c, dtype=torch.float64)))
    return x


def phi1(z):
    return math.expm1(z) / z


def phi2(z):
    return (phi1(z) - 1) / z


def seeds2_rows(r):  # phi_1: the estimates blended as DPM-Solver++(2S)
    return lambda h, big: [[1 - math.exp(-r * big)],
                           [(1 - math.exp(-big)) * (1 - 1 / (2 * r)), (1 - math.exp(-big)) / (2 * r)]]


def seeds3_rows(r1, r2):
    def rows(h, big):
        a = r2 / r1 * r2 * big * phi2(-r2 * big)
        b = big * phi2(-big) / r2
        return [[1 - math.exp(-r1 * big)], [1 - math.exp(-r2 * big) - a, a], [1 - math.exp(-big) - b, 0.0, b]]
    return rows


@pytest.mark.parametrize("eta", [1.0, 0.4])
def test_seeds_2_and_3_step_by_step(eta):
    sigmas = sigmas_karras(6)
    x = X_UNIT * sigmas[0]
    want = ref_seeds(toy, x, sigmas, seeded(9), eta, [0.5], seeds2_rows(0.5))
    torch.testing.assert_close(SAMPLERS["seeds_2"](toy, x, sigmas, noise_sampler=seeded(9), eta=eta), want,
                               rtol=0, atol=1e-10)
    want = ref_seeds(toy, x, sigmas, seeded(9), eta, [1 / 3, 2 / 3], seeds3_rows(1 / 3, 2 / 3))
    torch.testing.assert_close(SAMPLERS["seeds_3"](toy, x, sigmas, noise_sampler=seeded(9), eta=eta), want,
                               rtol=0, atol=1e-10)


def test_seeds_2_phi_2_weights():
    sigmas = sigmas_karras(5)
    r = 0.7

    def rows(h, big):
        b = big * phi2(-big) / r
        return [[1 - math.exp(-r * big)], [1 - math.exp(-big) - b, b]]
    want = ref_seeds(toy, X_UNIT * sigmas[0], sigmas, seeded(3), 1.0, [r], rows)
    got = SAMPLERS["seeds_2"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(3), r=r, solver_type="phi_2")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    with pytest.raises(InvalidArgument, match="^sampler_options.solver_type"):
        SAMPLERS["seeds_2"](toy, X_UNIT, sigmas, solver_type="phi_3")


def test_seeds_2_without_noise_is_dpmpp_2s():
    sigmas = sigmas_karras(8)
    got = SAMPLERS["seeds_2"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, eta=0.0)
    want = SAMPLERS["dpmpp_sde"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, eta=0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    SAMPLERS["seeds_3"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, s_noise=0.0)


@pytest.mark.parametrize("tau", [0.0, 0.7])
def test_sa_solver_weights_integrate_polynomials_exactly(tau):
    """sum_j w_j q(l_j) = k int_s^t e^(k (l - t)) q(l) dl (k = 1 + tau^2) for q of degree < the node
    count, against a 20001-point Simpson rule."""
    s, t = 1.3, 1.9
    nodes = [0.4, 0.8, 1.3, 1.9]
    k = 1 + tau ** 2
    grid = torch.linspace(s, t, 20001, dtype=torch.float64)
    simpson = torch.ones_like(grid)
    simpson[1:-1:2], simpson[2:-1:2] = 4, 2
    for q in ([1.0], [0.3, -1.0], [0.2, 0.5, -0.7], [1.0, -2.0, 0.5, 0.25]):
        n = len(q)
        poly = lambda v: sum(c * v ** p for p, c in enumerate(q))  # noqa: E731
        integral = (k * torch.exp(k * (grid - t)) * poly(grid) * simpson).sum().item() * (t - s) / 20000 / 3
        w = adams_weights(nodes[-n:], s, t, tau)
        assert sum(wj * poly(lj) for wj, lj in zip(w, nodes[-n:])) == pytest.approx(integral, rel=1e-9)
    # the simple order-2 weights keep the first-order total 1 - e^(-k h)
    for corrector in (True, False):
        assert sum(simple_order_2_weights([0.8, 1.3], s, t, tau, corrector)) == pytest.approx(-math.expm1(-k * 0.6))


def test_sa_solver_without_noise_or_corrector_at_order_2_is_res_multistep():
    sigmas = exp_sigmas(12)
    got = SAMPLERS["sa_solver"](toy, X_UNIT * 10.0, sigmas, noise_sampler=never, eta=0.0, predictor_order=2,
                                corrector_order=0)
    torch.testing.assert_close(got, SAMPLERS["res_multistep"](toy, X_UNIT * 10.0, sigmas), rtol=0, atol=1e-10)
    with pytest.raises(InvalidArgument, match="^sampler_options"):
        SAMPLERS["sa_solver"](toy, X_UNIT, sigmas, predictor_order=0)


def test_sa_solver_adds_noise_between_the_percents():
    """tau = eta only where sigma_next lies between the model's sigmas at 20% and 80% of its
    timesteps (ComfyUI's percent_to_sigma: timestep (1 - p) * 999)."""
    sigmas = sigmas_karras(12)
    lo, hi = float(SCHEDULE.t_to_sigma(torch.tensor(0.2 * 999))), float(SCHEDULE.t_to_sigma(torch.tensor(0.8 * 999)))
    calls = []
    noise = seeded(1)
    SAMPLERS["sa_solver"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=lambda a, b: calls.append(float(b)) or noise(a, b),
                          model_schedule=SCHEDULE)
    assert calls == pytest.approx([v for v in sigmas[1:-1].tolist() if lo <= v <= hi])
    assert 0 < len(calls) < 11
    for options in ({"eta": 0.0}, {"s_noise": 0.0}, {"sde_start_percent": 0.9}):
        SAMPLERS["sa_solver_pece"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, **options)


# --- orders of convergence on the probability-flow ODE of Gaussian data ----------------------------

@pytest.mark.parametrize("name, options, order", [
    ("res_multistep", {}, 2), ("res_multistep_cfg_pp", {}, 2),  # unguided: the same
    ("res_multistep_ancestral", {"eta": 0.0}, 2), ("res_multistep_ancestral_cfg_pp", {"eta": 0.0}, 2),
    ("gradient_estimation", {}, 1), ("heunpp2", {}, 1),
    ("ipndm_v", {"max_order": 2}, 2), ("uni_pc_bh2", {}, 2), ("dpmpp_2m_sde_heun", {"eta": 0.0}, 2),
    # ER: its stages 2 and 3 lift Euler to second order (its integrals are 200-point sums)
    ("er_sde", {"solver_type": "ODE"}, 2), ("er_sde", {"solver_type": "ODE", "max_stage": 2}, 2),
    ("er_sde", {"solver_type": "ODE", "max_stage": 1}, 1),
    ("seeds_2", {"eta": 0.0}, 2), ("seeds_2", {"eta": 0.0, "r": 1.0, "solver_type": "phi_2"}, 2),
    ("seeds_3", {"eta": 0.0}, 3),
    ("sa_solver", {"eta": 0.0}, 3.5), ("sa_solver_pece", {"eta": 0.0}, 3.8),
    ("sa_solver", {"eta": 0.0, "predictor_order": 2, "corrector_order": 2, "simple_order_2": True}, 2),
])
def test_order_of_convergence(name, options, order):
    assert order_of(name, options) > order - 0.2


def test_ipndm_v_third_order_past_its_warm_up():
    assert order_of("ipndm_v", {"max_order": 3}, ns=(64, 128)) > 2.8


# --- noise-free limits, CFG++ reductions, seeds ----------------------------------------------------

@pytest.mark.parametrize("stochastic, deterministic", [
    ("res_multistep_ancestral", "res_multistep"),
    ("res_multistep_ancestral_cfg_pp", "res_multistep_cfg_pp"),
    ("dpmpp_2s_ancestral_cfg_pp", None),
])
def test_eta_zero_is_the_deterministic_sampler(stochastic, deterministic):
    sigmas = sigmas_karras(9)
    g = guided()
    got = SAMPLERS[stochastic](g, X_UNIT * sigmas[0], sigmas, noise_sampler=never, eta=0.0)
    if deterministic is None:  # dpmpp_2s_ancestral_cfg_pp: its reference with eta 0
        want = ref_dpmpp_2s_ancestral_cfg_pp(g.both, X_UNIT * sigmas[0], sigmas, never, eta=0.0)
    else:
        want = SAMPLERS[deterministic](g, X_UNIT * sigmas[0], sigmas)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_er_sde_ode_draws_no_noise():
    sigmas = sigmas_karras(6)
    a = SAMPLERS["er_sde"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, solver_type="ODE")
    b = SAMPLERS["er_sde"](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=never, solver_type="Reverse-time SDE", eta=0.0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("pp, base, options", [
    ("res_multistep_cfg_pp", "res_multistep", {}),
    ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral", {}),
    ("gradient_estimation_cfg_pp", "gradient_estimation", {}),
    ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral", {}),
])
def test_cfg_pp_with_equal_estimates_is_its_base_sampler(pp, base, options):
    assert pp in NEEDS_UNCOND and base not in NEEDS_UNCOND
    sigmas = sigmas_karras(7)
    got = SAMPLERS[pp](equal_guided(toy), X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(8), **options)
    want = SAMPLERS[base](toy, X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(8), **options)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # and the guidance does change it
    assert not torch.allclose(SAMPLERS[pp](guided(), X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(8)),
                              SAMPLERS[base](guided(), X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(8)))


@pytest.mark.parametrize("pp, base", [("euler_cfg_pp", "euler"), ("dpmpp_2s_ancestral_cfg_pp", "dpmpp_2s_ancestral"),
                                      ("res_multistep_ancestral_cfg_pp", "res_multistep_ancestral"),
                                      ("res_multistep_cfg_pp", "res_multistep")])
def test_cfg_pp_keeps_the_unconditional_estimate_on_flow_models(pp, base):
    """Flow models run the noisy samplers in VE space (flow.py): the wrapped denoiser must still hand
    CFG++ both estimates, else CFG++ silently becomes its base sampler."""
    flow = FlowSampling.sd3(3.0)
    sigmas = make_sigmas("normal", flow.schedule, 6).double()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = Guided(lambda x, s: (torch.tanh(x) + 0.3, torch.tanh(x) - 0.2))
    same = equal_guided(lambda x, s: torch.tanh(x) + 0.3)
    run = lambda name, d: flow.sampler(name)(d, x, sigmas, None, noise_sampler=seeded(1, x.shape))  # noqa: E731
    assert not torch.allclose(run(pp, g), run(base, g))
    assert not torch.allclose(run(pp, g), run(pp, same))
    if pp != "euler_cfg_pp":  # (Euler runs on flow latents directly, Euler CFG++ in VE space, as in ComfyUI)
        torch.testing.assert_close(run(pp, same), run(base, same), rtol=0, atol=1e-10)


STOCHASTIC = ["res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "ddpm",
              "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_sde_heun", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"]


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_are_reproducible_from_a_seed(name):
    sigmas = sigmas_karras(6)
    run = lambda seed: SAMPLERS[name](guided(), X_UNIT * sigmas[0], sigmas, noise_sampler=seeded(seed))  # noqa: E731
    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.allclose(run(3), run(4))


@pytest.mark.parametrize("name, tol", [
    ("res_multistep_ancestral", 0.1), ("ddpm", 0.1), ("dpmpp_2s_ancestral_cfg_pp", 0.03), ("er_sde", 0.03),
    ("dpmpp_2m_sde_heun", 0.03), ("seeds_2", 0.03), ("seeds_3", 0.03), ("sa_solver", 0.03), ("sa_solver_pece", 0.03),
])
def test_stochastic_samplers_sample_the_data_distribution(name, tol, options=None):
    """20k draws of N(MU, S2) data, 50 Karras steps: mean and std come out right (first-order
    ancestral splitting within 10%). Wrong noise std or a missing term misses by far more."""
    n = 20000
    g = torch.Generator().manual_seed(0)
    sigmas = make_sigmas("karras", SCHEDULE, 50).double()
    x = MU + torch.randn(n, generator=g, dtype=torch.float64) * math.sqrt(S2 + sigmas[0] ** 2)
    out = SAMPLERS[name](gauss, x, sigmas, noise_sampler=lambda s, sn: torch.randn(n, generator=g, dtype=torch.float64),
                         **(options or {}))
    assert abs(out.mean().item() - MU) < 0.02
    assert abs(out.std().item() / math.sqrt(S2) - 1) < tol


@pytest.mark.parametrize("name", ["sa_solver", "sa_solver_pece"])
def test_sa_solver_as_an_sde_over_the_whole_run(name):
    test_stochastic_samplers_sample_the_data_distribution(name, 0.03, {"sde_start_percent": 0.0,
                                                                        "sde_end_percent": 1.0})


# --- schedules ----------------------------------------------------------------------------------------

def test_linear_quadratic_by_hand():
    """4 steps: linear to 1 - 0.025 over two, then the quadratic 0.2375 i^2 - 0.9375 i + 0.95 for
    i = 2, 3 (it reaches 1 at i = 4 with the linear part's value and slope at i = 2)."""
    want = torch.tensor([1.0, 1 - 0.0125, 1 - 0.025, 1 - 0.275, 0.0]) * SCHEDULE.sigma_max
    torch.testing.assert_close(make_sigmas("linear_quadratic", SCHEDULE, 4), want.float())
    torch.testing.assert_close(make_sigmas("Linear Quadratic", SCHEDULE, 1),
                               torch.tensor([SCHEDULE.sigma_max, 0.0]))
    s = make_sigmas("linear_quadratic", SCHEDULE, 25)
    assert len(s) == 26 and s[-1] == 0 and (s[1:] < s[:-1]).all()


def test_kl_optimal_is_even_in_arctan_sigma():
    s = make_sigmas("kl_optimal", SCHEDULE, 5).double()
    assert len(s) == 6 and s[-1] == 0
    torch.testing.assert_close(s[[0, 4]], torch.tensor([SCHEDULE.sigma_max, SCHEDULE.sigma_min], dtype=torch.float64),
                               rtol=1e-5, atol=0)
    steps = s[:-1].atan().diff()
    torch.testing.assert_close(steps, steps[:1].expand(4), rtol=1e-4, atol=0)
    torch.testing.assert_close(make_sigmas("KL Optimal", SCHEDULE, 1), torch.tensor([SCHEDULE.sigma_max, 0.0]))


def test_uni_pc_bh2_drops_the_penultimate_sigma_as_uni_pc():
    torch.testing.assert_close(make_sigmas("karras", SCHEDULE, 6, sampler="uni_pc_bh2"),
                               make_sigmas("karras", SCHEDULE, 6, sampler="uni_pc"))
    assert len(make_sigmas("karras", SCHEDULE, 6, sampler="uni_pc_bh2")) == 7
