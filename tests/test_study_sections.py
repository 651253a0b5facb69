"""Focused tests of the computations in the studies' own report sections
(``studies/sections/*.py``): each recovers a known answer on constructed data."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SECTIONS = Path(__file__).resolve().parents[1] / "studies" / "sections"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"sections_{name}", SECTIONS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rates = _load("rates")


# ------------------------------------------------------------------------------- rates
def test_rates_fit_decay_recovers_an_exponential_rate_and_prefers_the_exponential_model():
    t = np.linspace(20, 40, 12)
    # two modes: the fast one has died out by t = 20 (exp(-5 * 20) ~ 1e-44 relative)
    y = 3e-2 * np.exp(-0.37 * t) + 1e-1 * np.exp(-5.0 * t)
    rate, _, rms_e, rms_a = rates.fit_decay(t, y)
    assert rate == pytest.approx(0.37, rel=1e-9)  # exact model: only rounding
    assert rms_e < rms_a


def test_rates_fit_decay_recovers_a_power_law_and_prefers_the_algebraic_model():
    t = np.geomspace(1e5, 10**5.5, 12)
    y = 7.0 * t ** (-1.5)
    _, expo, rms_e, rms_a = rates.fit_decay(t, y)
    assert expo == pytest.approx(1.5, rel=1e-9)
    assert rms_a < rms_e


def test_rates_tail_window_keeps_the_last_points_between_the_floor_and_the_drop():
    t = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 400)])
    g = np.exp(-0.1 * t)  # g(0) = 1
    g[t > 300] = np.nan  # the flow stopped
    idx = rates.tail_window(t, g, g_floor=1e-10)
    assert idx.size == rates.N_FIT
    assert np.all(g[idx] <= rates.TAIL_DROP) and np.all(g[idx] >= 1e-10)
    assert idx[-1] == np.flatnonzero(np.isfinite(g) & (g >= 1e-10))[-1]
    # a tail that never falls below TAIL_DROP * g(0) is unresolved
    assert rates.tail_window(t, np.ones_like(t), 1e-10).size == 0


def test_rates_lp_interpolation_exponent_of_the_one_dimensional_model():
    """The derivation behind the interpolation claim: r' = -p r^(p-1) (the flow of L = r^p)
    has L(t) ~ t^(-p/(p-2)); solved numerically and fitted like a study flow."""
    from scipy.integrate import solve_ivp

    for p in (4, 6):
        sol = solve_ivp(lambda t, r, p=p: -p * r ** (p - 1), (0, 1e6), [1.0], method="LSODA",
                        t_eval=np.geomspace(1e5, 10**5.5, 12), rtol=1e-10, atol=1e-14)  # fmt: skip
        _, expo, _, _ = rates.fit_decay(sol.t, sol.y[0] ** p)
        assert expo == pytest.approx(p / (p - 2), rel=1e-3)  # t >> 1: the offset t0 is gone


def test_rates_median_ci_brackets_the_median():
    x = np.random.default_rng(0).normal(1.0, 0.1, 200)
    text = rates.median_ci(x)
    med, lo, hi = (float(v) for v in text.replace("[", "").replace("]", "").replace(",", "").split())
    assert lo <= med <= hi and hi - lo < 0.1


# ----------------------------------------------------------------------------- strided
strided = _load("strided")


def test_strided_cluster_values_joins_within_the_tolerance_and_numbers_by_value():
    v = np.array([5.0, 1.0, 1.0 + 1e-9, np.nan, 3.0, 5.0 - 2e-9, 1.0 - 1e-9])
    lab = strided.cluster_values(v, tol=1e-8)
    assert lab.tolist() == [2, 0, 0, -1, 1, 2, 0]
    # a chain of gaps below the tolerance is one value (single linkage)
    assert strided.cluster_values(np.arange(5) * 0.9e-8, 1e-8).tolist() == [0] * 5
    assert strided.cluster_values([2.0, 1.0], 0.5).tolist() == [1, 0]


def test_strided_kronecker_architectures_are_those_whose_taps_never_add():
    """Claim: pi is a Kronecker product exactly when every coefficient of v is one product of
    taps; checked against the explicit count of products per coefficient, and on the study's
    architectures: (2,2;2,2) and (2,2,2;2,2,2) are, (3,2;2,2) (stride 2 < width 3) is not."""
    from lcnfast import Architecture

    for d0, k, s in [(16, (2, 2), (2, 2)), (16, (2, 2, 2), (2, 2, 2)), (17, (3, 2), (2, 2)),
                     (16, (3, 3, 3), (1, 1, 1)), (20, (2, 3), (3, 1)), (21, (3, 2), (3, 1))]:
        arch = Architecture(d0, k, s)
        # products per coefficient of v: the polynomial product of all-ones filters
        counts = np.ones(1)
        for ki, S in zip(arch.k, arch.dilations):
            f = np.zeros((ki - 1) * S + 1)
            f[::S] = 1.0
            counts = np.convolve(counts, f)
        assert strided.is_kronecker(arch) == bool(counts.max() == 1), (k, s)
    assert strided.is_kronecker(Architecture(16, (2, 2), (2, 2)))
    assert not strided.is_kronecker(Architecture(17, (3, 2), (2, 2)))


def test_strided_expected_rank_is_the_image_dimension_of_all_strided_architectures():
    from lcnfast import Architecture

    for d0, k in ((16, (2, 2)), (16, (2, 2, 2)), (17, (3, 2))):
        arch = Architecture(d0, list(k), [2] * len(k))
        # at a random point the Jacobian of pi has the rank of the image: sum k_i - N + 1
        w = np.random.default_rng(1).normal(size=arch.n_params)
        eps = 1e-6
        v0 = _end_to_end(arch, w)
        J = np.stack([(_end_to_end(arch, w + eps * e) - v0) / eps for e in np.eye(arch.n_params)])
        sv = np.linalg.svd(J, compute_uv=False)
        assert int((sv > 1e-4 * sv[0]).sum()) == strided.expected_rank(arch)


def _end_to_end(arch, w):
    """pi(w): the end-to-end filter (Problem.final_filter; the data do not matter)."""
    from lcnfast import Problem, losses

    X = np.random.default_rng(2).normal(size=(arch.d[0], 20))
    return Problem(arch, X, np.zeros((arch.d[-1], 20)), losses.square()).final_filter(w)


# ---------------------------------------------------------------------- factorisations
fact = _load("factorisations")


def test_factorisations_admissible_assignments_keep_conjugate_pairs_together_and_fill_every_layer():
    real4 = np.array([-2.0, -0.5, 0.3, 1.7]) + 0j
    assert len(fact.admissible(real4, [2, 2])) == 6  # C(4, 2)
    assert len(fact.admissible(np.r_[real4, 3.0, 4.0], [2, 2, 2])) == 90  # 6! / 2!^3
    pair = np.array([-1.0, 0.5 - 1j, 0.5 + 1j])
    a = fact.admissible(pair, [1, 2])  # (2, 3): the real root must go to the linear layer
    assert a.tolist() == [[1, 2, 2]]
    two_pairs = np.array([-1 - 1j, -1 + 1j, 2 - 0.5j, 2 + 0.5j])
    assert sorted(map(tuple, fact.admissible(two_pairs, [2, 2]))) == [(1, 1, 2, 2), (2, 2, 1, 1)]


def test_factorisations_assign_recovers_a_constructed_factorisation():
    from lcnfast import roots

    target = roots.poly_roots(np.polynomial.polynomial.polyfromroots([-2.0, -0.5, 0.3, 1.7]))
    # layer 1 holds -2 and 0.3, layer 2 holds -0.5 and 1.7 (slightly perturbed, shuffled)
    layer_roots = np.array([0.3 + 1e-9, -2.0, 1.7, -0.5 - 1e-9])
    a, dist = fact.assign(layer_roots, [1, 1, 2, 2], target)
    assert fact._label(a) == "1 2 1 2" and dist < 1e-8
    # the nearest admissible assignment to rough initial roots is the same one
    rough = np.array([0.1, -1.5, 1.2, -0.7])
    cand = fact.admissible(target, [2, 2])
    assert fact._label(fact.nearest_admissible(rough, [1, 1, 2, 2], target, cand)) == "1 2 1 2"


def test_factorisations_shuffle_baseline_is_the_chance_agreement():
    rng = np.random.default_rng(0)
    final = np.array(["a"] * 50 + ["b"] * 50)
    # with two equally frequent labels, a random permutation agrees on ~1/2 of the flows
    assert fact.shuffle_baseline(final, final, rng) == pytest.approx(0.5, abs=0.03)
    assert fact.shuffle_baseline(final, np.array(["a"] * 100), rng) == 0.5


# -------------------------------------------------------------------------------- rank
def test_rank_open_case_is_an_estimate_over_the_flows_with_a_singular_gram():
    """The rank study reports flows with a singular window Gram A as an observation (a
    fraction with its Wilson interval over exactly those flows), not as a verdict: the paper
    proves nothing there, while A positive definite is covered by Theorem 3.4 (2)."""
    rank = _load("rank")
    converged = np.array([True, False, True, True, False])
    pd_ = np.array([True, False, False, True, False])
    text = rank._open_case(converged, pd_)
    assert "1/3 = 0.333" in text and "observation, not a verdict" in text
    assert "no flow" in rank._open_case(converged, np.ones(5, bool))
