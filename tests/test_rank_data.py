"""Tests of the rank-controlled data generators (lcnfast.data) and of the rank report and
Lemma 3.6 bound (lcnfast.analysis.rank_report / lemma36_bound), issue 4.

Two conditions on X are separated: the paper's rank(X X^T) = d0 and the weaker "window Gram A
positive definite". Lemma 3.6's bound is checked three ways: its inequality for arbitrary
filters v (it is a statement about all W), the sharpness of each h, and along gradient flows
integrated with scipy's reference integrator.
"""

from __future__ import annotations

import contextlib
import math

import naive
import numba
import numpy as np
import pytest
import scipy.integrate
import xarray as xr
from strategies import LOSS_SPECS, make_loss, spec_id

from lcnfast import Architecture, Problem, analysis, data, losses

FULL = Architecture(12, (3, 3))  # k_v = 5, d_N = 8
STRIDED = Architecture(16, (2, 3), (2, 1))  # k_v = 6, s_v = 2, d_N = 6
DEEP = Architecture(9, (3, 3, 3))  # k_v = 7, d_N = 3


@contextlib.contextmanager
def one_thread():
    """Single-vector calls from scipy loops: one Numba thread avoids the per-call cost of
    waking a thread team on a loaded machine."""
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def gram(arch, X):
    return naive.window_gram(X, arch.k_v, arch.s_v)


def rank_of_xxt(X):
    return naive.numerical_rank(X @ X.T, 1e-10)


# ----------------------------------------------------------------------------- generators
@pytest.mark.parametrize(
    "arch, m, r",
    [
        (FULL, 20, 5),  # m > d0, rank < d0
        (FULL, 6, 6),  # m < d0
        (FULL, 1, 1),  # one sample
        (STRIDED, 30, 2),
        (STRIDED, 1, 1),
        (DEEP, 4, 3),
    ],
)
def test_low_rank_inputs_have_the_promised_ranks(arch, m, r):
    X = data.low_rank_inputs(arch, m, r, seed=3)
    assert X.shape == (arch.d0, m)
    assert rank_of_xxt(X) == r < arch.d0
    ev = np.linalg.eigvalsh(gram(arch, X))
    assert ev[0] > 1e-8 * ev[-1]  # A positive definite (well inside numerical rank)
    np.testing.assert_array_equal(X, data.low_rank_inputs(arch, m, r, seed=3))
    Y = np.zeros((arch.d_N, m))
    rep = analysis.rank_report(Problem(arch, X, Y, losses.square()))
    assert rep["xxt_rank"] == r and not rep["xxt_full_rank"] and rep["lemma36_bound"] is None
    assert rep["gram_pd"] and rep["gram_rank"] == arch.k_v
    assert rep["xxt_cond"] == math.inf and rep["gram_cond"] < math.inf


def test_low_rank_inputs_full_rank_is_allowed():
    X = data.low_rank_inputs(FULL, 15, 12, seed=0)
    assert rank_of_xxt(X) == 12


def test_low_rank_inputs_errors():
    with pytest.raises(ValueError, match="rank must be <= min"):
        data.low_rank_inputs(FULL, 3, 4)
    with pytest.raises(ValueError, match="cannot be positive definite"):
        data.low_rank_inputs(DEEP, 10, 2)  # d_N * rank = 6 < k_v = 7
    with pytest.raises(ValueError, match="rank"):
        data.low_rank_inputs(FULL, 10, 0)
    with pytest.raises(ValueError, match="m"):
        data.low_rank_inputs(FULL, 0, 1)
    with pytest.raises(TypeError, match="arch"):
        data.low_rank_inputs((12, (3, 3)), 10, 2)


@pytest.mark.parametrize(
    "arch, m, q",
    [(FULL, 10, 1), (Architecture(12, (5, 5)), 10, 2), (STRIDED, 12, 1), (DEEP, 9, 1)],
)
def test_gram_singular_inputs(arch, m, q):
    X = data.gram_singular_inputs(arch, m, nullity=q, seed=1)
    A = gram(arch, X)
    ev, U = np.linalg.eigh(A)
    n_zero = int(np.sum(ev <= 1e-10 * ev[-1]))
    assert n_zero == q
    assert rank_of_xxt(X) < arch.d0
    # v -> V X is not injective: a kernel vector of A gives V X = 0
    u = U[:, 0]
    assert np.abs(data.conv_apply(u, X, arch.s_v)).max() <= 1e-10 * np.abs(X).max()
    rep = analysis.rank_report(Problem(arch, X, np.zeros((arch.d_N, m)), losses.square()))
    assert not rep["gram_pd"] and rep["gram_rank"] == arch.k_v - q
    assert rep["gram_cond"] == math.inf and rep["gram_bound"] is None
    assert rep["lemma36_bound"] is None and not rep["xxt_full_rank"]


def test_gram_singular_inputs_errors():
    with pytest.raises(ValueError, match="nullity must be < k_v"):
        data.gram_singular_inputs(Architecture(5, (1,)), 3)
    with pytest.raises(ValueError, match="nullity must be < k_v"):
        data.gram_singular_inputs(FULL, 10, nullity=5)
    with pytest.raises(ValueError, match="windows span at most"):
        data.gram_singular_inputs(Architecture(5, (5,)), 1)  # one window cannot span R^4
    with pytest.raises(ValueError, match="leave no inputs"):
        data.gram_singular_inputs(Architecture(7, (5,)), 10, nullity=3)
    with pytest.raises(ValueError, match="leave no inputs"):
        data.gram_singular_inputs(FULL, 10, nullity=2)  # 2 d_N = 16 > d0 = 12 constraints


@pytest.mark.parametrize("arch, m", [(FULL, 20), (STRIDED, 12), (FULL, 3)])
def test_gram_near_singular_inputs_scale_as_eps_squared(arch, m):
    # claim: lambda_min(A) = eps^2 ||U G||^2 + O(eps^3) for the kernel direction u of the
    # unperturbed A, so halving eps divides it by ~4; the other eigenvalues move by O(eps).
    # Tolerance: eps <= 1e-3 makes the O(eps^3) relative correction <~ 1e-2
    lam = []
    for eps in (1e-3, 5e-4):
        X = data.gram_near_singular_inputs(arch, m, eps, seed=5)
        ev = np.linalg.eigvalsh(gram(arch, X))
        assert ev[0] > 0 and ev[0] < 1e-4 * ev[-1]
        assert np.isclose(ev[1], np.linalg.eigvalsh(gram(arch, data.gram_singular_inputs(
            arch, m, nullity=1, seed=5)))[1], rtol=1e-1)
        lam.append(ev[0])
    assert lam[0] / lam[1] == pytest.approx(4.0, rel=2e-2)
    if m >= arch.d0:
        assert rank_of_xxt(X) == arch.d0
    with pytest.raises(ValueError, match="eps"):
        data.gram_near_singular_inputs(arch, m, 0.0)
    with pytest.raises(TypeError, match="eps"):
        data.gram_near_singular_inputs(arch, m, "1e-3")


def test_teacher_for_inputs():
    X = data.low_rank_inputs(STRIDED, 5, 2, seed=0)
    td = data.teacher_for_inputs(STRIDED, X, seed=2)
    np.testing.assert_array_equal(td.X, X)
    Y = naive.predict(td.w_teacher, STRIDED.d0, STRIDED.k, STRIDED.s, X)
    np.testing.assert_allclose(td.Y, Y, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        td.v_teacher, naive.final_filter(td.w_teacher, STRIDED.d0, STRIDED.k, STRIDED.s), rtol=1e-12
    )
    noisy = data.teacher_for_inputs(STRIDED, X, noise=0.1, seed=2)
    assert 0 < np.abs(noisy.Y - td.Y).max() < 1.0
    with pytest.raises(ValueError, match="X must have shape"):
        data.teacher_for_inputs(STRIDED, X.T)
    with pytest.raises(ValueError, match="NaN"):
        data.teacher_for_inputs(STRIDED, np.full_like(X, np.nan))
    # what Problem refuses, refused here too, naming X (a complex X lost its imaginary part
    # with only numpy's ComplexWarning; strings of digits were parsed)
    for bad in (X + 5j, X.astype(str), np.full(X.shape, None)):
        with pytest.raises(TypeError, match="X must"):
            data.teacher_for_inputs(STRIDED, bad)


# ----------------------------------------------------------------------------- rank report
def h_paper(loss, d_N, m, L):
    """h of Theorem 3.8's proof / Corollary 3.7 (and Cauchy-Schwarz for the square loss),
    written out from the paper."""
    name, p = loss.name, loss.params
    if name == "square":
        return math.sqrt(d_N * m * L)
    if name == "lp":
        return d_N * m * p[0] ** (1 / p[0]) * L ** (1 / p[0])
    if name == "pseudo_huber":
        return L
    if name == "generalized_huber":
        a, b = p
        return L + (m * d_N / a * math.log(2 / (2 + b)) if b < 0 else 0.0)
    if name == "log_cosh":
        return L + m * d_N * math.log(2) / p[0]
    raise ValueError(name)


@pytest.fixture(scope="module")
def full_problem():
    td = data.teacher(FULL, 20, noise=0.5, seed=4)
    return td, Problem(FULL, td.X, td.Y, losses.square())


def test_rank_report_matches_direct_computation(full_problem):
    td, pb = full_problem
    rep = analysis.rank_report(pb)
    XXt = td.X @ td.X.T
    assert rep["xxt_rank"] == 12 and rep["xxt_full_rank"]
    assert rep["xxt_cond"] == pytest.approx(np.linalg.cond(XXt), rel=1e-8)
    assert rep["xxt_min_eig"] == pytest.approx(np.linalg.eigvalsh(XXt)[0], rel=1e-8)
    A = gram(FULL, td.X)
    ea = np.linalg.eigvalsh(A)
    assert rep["gram_min_eig"] == pytest.approx(ea[0], rel=1e-10)
    assert rep["gram_cond"] == pytest.approx(ea[-1] / ea[0], rel=1e-10)
    pinv = td.X.T @ np.linalg.inv(XXt)
    assert rep["pinv_l1"] == pytest.approx(np.abs(pinv).sum(), rel=1e-8)
    L0 = pb.function_space_loss(np.zeros(FULL.k_v))
    want = (
        (h_paper(pb.loss_fn, FULL.d_N, 20, L0) + np.abs(td.Y).sum()) * np.abs(pinv).sum() / FULL.d_N
    )
    assert rep["lemma36_bound"] == pytest.approx(want, rel=1e-8)
    assert analysis.lemma36_bound(pb, L0) == pytest.approx(want, rel=1e-8)
    assert analysis.lemma36_bound(pb, [L0, 2 * L0]).shape == (2,)


def test_lemma36_bound_refuses_what_no_loss_value_can_be(full_problem):
    """A bool, or a value below the loss's least value d_N m l(0), is no loss value: for
    the square and lp losses these were refused, for log-cosh or pseudo-Huber -1.0 and True
    gave a bound. NaN entries (flows never evaluated) give NaN; the generalized Huber loss
    with beta < -1 is negative near r = 0, down to d_N m l(0) and not below."""
    td = full_problem[0]
    n = FULL.d_N * 20
    for loss in (losses.square(), losses.log_cosh(1.0), losses.pseudo_huber(1.0),
                 losses.generalized_huber(1.0, -1.5)):
        pb = Problem(FULL, td.X, td.Y, loss)
        floor = n * min(0.0, float(loss.value(0.0)))
        for bad in (True, np.array([True, False])):
            with pytest.raises(TypeError, match="loss_value"):
                analysis.lemma36_bound(pb, bad)
        with pytest.raises(ValueError, match="loss_value must be >="):
            analysis.lemma36_bound(pb, floor - 1e-3)
        assert np.isfinite(analysis.lemma36_bound(pb, floor))
        assert np.isnan(analysis.lemma36_bound(pb, [np.nan, 1.0])[0])


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_lemma36_bound_holds_for_all_filters(full_problem, spec):
    """Lemma 3.6 is a statement about every V: ||v||_1 <= g(L(v)), and likewise the Gram
    bound; checked for random filters over six orders of magnitude."""
    td, _ = full_problem
    pb = Problem(FULL, td.X, td.Y, make_loss(*spec))
    rng = np.random.default_rng(0)
    V = rng.standard_normal((60, FULL.k_v)) * np.logspace(-3, 3, 60)[:, None]
    V[0] = 0.0
    L = np.array([pb.function_space_loss(v) for v in V])
    l1 = np.abs(V).sum(axis=1)
    g = analysis.lemma36_bound(pb, L)
    assert np.all(l1 <= g * (1 + 1e-12))
    gb = analysis.rank_report(pb, loss0=L)["gram_bound"]
    assert np.all(l1 <= gb * (1 + 1e-12))
    # h itself: ||R||_1 <= h(L) for the residuals of these filters
    name, hf = analysis._h(pb)
    for v, Lv in zip(V[:10], L[:10]):
        R = data.conv_apply(v, td.X, 1) - td.Y
        assert np.abs(R).sum() <= hf(Lv) * (1 + 1e-12)
        assert hf(Lv) == pytest.approx(h_paper(pb.loss_fn, FULL.d_N, 20, Lv), rel=1e-12)


@pytest.mark.parametrize(
    "loss, sharp_at",
    [
        (losses.square(), "constant"),
        (losses.pseudo_huber(0.7), "large"),
        (losses.log_cosh(1.3), "large"),
        (losses.generalized_huber(0.8, 0.5), "large"),
    ],
    ids=lambda x: repr(x) if not isinstance(x, str) else x,
)
def test_h_is_sharp(full_problem, loss, sharp_at):
    """The h of each loss is the best possible (so a too-small h would fail the test above and
    a too-large one this): square loss, equality for residuals of constant modulus;
    pseudo-Huber, generalized Huber (beta >= 0) and log-cosh, ratio -> 1 for large residuals."""
    td, _ = full_problem
    pb = Problem(FULL, td.X, td.Y, loss)
    _, hf = analysis._h(pb)
    shape = (FULL.d_N, 20)
    signs = np.random.default_rng(1).choice([-1.0, 1.0], shape)
    R = signs * (3.0 if sharp_at == "constant" else 1e6)
    L = float(np.sum(loss.value(R)))
    assert np.abs(R).sum() / hf(L) == pytest.approx(1.0, rel=1e-9)


def test_generalized_huber_negative_beta_slack_is_valid_not_sharp():
    """Corollary 3.7 for beta < 0: |r| <= l_GH(r) + log(2 / (2 + beta)) / alpha holds (checked
    on a fine grid); the best constant is -log(1 - beta^2 / 4) / alpha, smaller."""
    a, b = 0.8, -1.2
    loss = losses.generalized_huber(a, b)
    r = np.linspace(-40, 40, 200001)
    gap = np.abs(r) - loss.value(r)
    c = loss.l1_slack(1)
    assert c == pytest.approx(math.log(2 / (2 + b)) / a)
    assert gap.max() <= c
    assert gap.max() == pytest.approx(-math.log(1 - b * b / 4) / a, rel=1e-6)


def test_rank_report_validation(full_problem):
    _, pb = full_problem
    ds = xr.Dataset({"loss_init": ("flow", [1.0])})
    with pytest.raises(ValueError, match="v_l1_max"):
        analysis.rank_report(pb, ds)
    ds = ds.assign(v_l1_max=("flow", [1.0]))
    with pytest.raises(ValueError, match="either ds or loss0"):
        analysis.rank_report(pb, ds, loss0=1.0)
    with pytest.raises(TypeError, match="ds"):
        analysis.rank_report(pb, {"loss_init": 1})
    with pytest.raises(TypeError, match="problem"):
        analysis.rank_report(None)
    with pytest.raises(ValueError, match="loss0"):
        analysis.rank_report(pb, loss0=-1.0)


# ----------------------------------------------------------------------------- sampled flows
def sampled_flow_stats(pb, W0, t_end):
    """Integrate dw/dt = -grad L with scipy's RK45 (rtol 1e-9); max ||v||_1 over the accepted
    steps and a dense grid, and the largest loss increase between samples."""
    init, vmax, inc = [], [], []
    with one_thread():
        for w0 in W0:
            sol = scipy.integrate.solve_ivp(
                lambda t, w: -pb.grad(w), (0.0, t_end), w0, rtol=1e-9, atol=1e-11, dense_output=True
            )
            ts = np.unique(np.concatenate([sol.t, np.linspace(0.0, t_end, 300)]))
            W = sol.sol(ts).T
            L = pb.loss(W)
            init.append(L[0])
            vmax.append(np.abs(pb.final_filter(W)).sum(axis=1).max())
            inc.append(np.max(np.diff(L)))
    return np.array(init), np.array(vmax), np.array(inc)


@pytest.mark.parametrize(
    "inputs, loss",
    [("full", losses.square()), ("full", losses.log_cosh(1.0)), ("low_rank", losses.square())],
)
def test_bounds_hold_on_sampled_flows(inputs, loss):
    """||v(t)||_1 <= g(L(w_0)) along flows (Theorem 3.4 with Lemma 3.6); with rank(X X^T) < d0
    Lemma 3.6 says nothing, but the Gram bound (A > 0 only) still holds."""
    arch = Architecture(8, (3, 3))
    X = (
        data.teacher(arch, 10, seed=0).X
        if inputs == "full"
        else data.low_rank_inputs(arch, 10, 3, seed=0)
    )
    td = data.teacher_for_inputs(arch, X, noise=0.5, seed=1)
    pb = Problem(arch, td.X, td.Y, loss)
    W0 = 1.5 * np.random.default_rng(2).standard_normal((2, arch.n_params))
    L0, vmax, inc = sampled_flow_stats(pb, W0, 8.0)
    assert np.all(inc <= 1e-9 * L0)  # the reference flow decreases L
    ds = xr.Dataset({"loss_init": ("flow", L0), "v_l1_max": ("flow", vmax)})
    rep = analysis.rank_report(pb, ds)
    assert rep["gram_pd"] and rep["gram_bound_holds"]
    assert np.all(rep["gram_ratio"] >= 1)
    if inputs == "full":
        assert rep["xxt_full_rank"] and rep["lemma36_holds"]
        assert np.all(rep["lemma36_ratio"] >= rep["gram_ratio"])  # the Gram bound is tighter here
    else:
        assert not rep["xxt_full_rank"] and rep["lemma36_bound"] is None
        assert rep["lemma36_holds"] is None and rep["lemma36_ratio"] is None
