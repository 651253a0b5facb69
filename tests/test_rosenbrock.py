"""gradient_flow(method="rosenbrock"): the RODAS tableau, its order, agreement with scipy's
Radau and with rk45, stiff stability, runs until converged, invariance, statuses, schema."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import lcnfast as lf
from lcnfast import _integrate as I
from lcnfast import _rosenbrock as R
from lcnfast.losses import generalized_huber, log_cosh, lp, pseudo_huber, square
from test_flows import linear_problem  # dw/dt = -2 (A w - b) and its exact solution

REPO = Path(__file__).resolve().parent.parent
ARCHS = [(12, (3, 2, 2), (1, 1, 1)), (20, (4, 3, 2), (2, 1, 1))]


def make_problem(arch_args, loss, m=12, seed=0, noise=0.1):
    arch = lf.Architecture(*arch_args)
    td = lf.data.teacher(arch, m, noise=noise, seed=seed)
    return lf.Problem(arch, td.X, td.Y, loss)


# ----------------------------------------------------------------------------- tableau
def _classical_form():
    """The method in the untransformed variables k_i (Hairer-Wanner IV.7): Gamma = (gamma_ij)
    with gamma on the diagonal, alpha = A Gamma, weights b = M Gamma (and b_hat of the
    embedded solution, y + sum_j<=4 a_5j u_j + u_5)."""
    Gam = np.linalg.inv(np.eye(6) / R.RO_GAMMA - R.RO_C)
    alpha = R.RO_A @ Gam
    b = R.RO_M @ Gam
    b_hat = np.r_[R.RO_M[:5], 0.0] @ Gam
    return Gam, alpha, b, b_hat


def test_rodas_tableau_order_conditions_and_l_stability():
    g = R.RO_GAMMA
    Gam, alpha, b, b_hat = _classical_form()
    beta = alpha + Gam - np.diag(np.diag(Gam))  # beta_ij = alpha_ij + gamma_ij, j < i
    a = alpha.sum(axis=1)
    bp = beta.sum(axis=1)
    # Hairer-Wanner Table IV.7.1, the 8 conditions up to order 4 (autonomous problems);
    # the rodas.f coefficients are given to 16 digits: residuals ~1e-15, 1e-13 leaves room
    # for rounding and would catch any wrong digit (a change in the 14th digit of a
    # coefficient of size <= 34 moves a residual by >= 1e-13 / 34 only for the largest ones:
    # the test below also checks each condition separately)
    def residuals(w, order):
        r = [w.sum() - 1, w @ bp - (0.5 - g)]
        if order >= 3:
            r += [w @ a**2 - 1 / 3, w @ beta @ bp - (1 / 6 - g + g * g)]
        if order >= 4:
            r += [
                w @ a**3 - 1 / 4,
                w @ (a * (alpha @ bp)) - (1 / 8 - g / 3),
                w @ beta @ a**2 - (1 / 12 - g / 3),
                w @ beta @ beta @ bp - (1 / 24 - g / 2 + 1.5 * g * g - g**3),
            ]
        return np.abs(r)

    assert np.all(residuals(b, 4) < 1e-13), residuals(b, 4)
    assert np.all(residuals(b_hat, 3) < 1e-13), residuals(b_hat, 3)
    # ... and the embedded solution is of order 3 only (else the error estimate would vanish)
    assert residuals(b_hat, 4).max() > 1e-3
    # stiffly accurate: the solution is the last stage's point (b = last row of beta)
    B = alpha + Gam
    np.testing.assert_allclose(b, B[5], atol=1e-14)
    # stability function R(z) = 1 + z b^T (I - z B)^-1 1: A-stable on the imaginary axis and in
    # the left half plane, vanishing at infinity (L-stable): |R(z)| ~ 8.8 / |z| for large z
    def stab(z):
        return abs(1 + z * b @ np.linalg.solve(np.eye(6) - z * B, np.ones(6)))

    for y in np.logspace(-2, 6, 41):
        assert stab(1j * y) <= 1 + 1e-12
    for z in (-0.1, -1.0, -10.0, -1e3 + 1e3j, -1e6):
        assert stab(z) < 1
    assert stab(-1e8) < 1e-7


# ----------------------------------------------------------------------------- order
@numba.njit
def _fixed_steps(model, y0, h, n_steps, s_dense, wk):
    """n_steps RODAS steps of size h from y0 (the integrator's own step function); also the
    dense output of the first step at t = s_dense h."""
    y, g, y_new = wk.y, wk.g, wk.y_new
    y[:] = y0
    dense = np.empty_like(y0)
    for j in range(n_steps):
        R.grad_ws(model, y, wk.ws, g, False)
        R.hessian_one(model, y, wk.hprefix, wk.hwork, wk.hJ, wk.hHv, wk.H, wk.hG, wk.hHJ,
                      wk.ws.buf)
        R.rodas_step(model, wk.ws, wk.H, wk.E, wk.piv, wk.U, y, g, y_new, wk.ytmp, wk.gtmp, h)
        if j == 0:
            R.dense_point(y, y_new, wk.U, s_dense, dense)
        y[:] = y_new
    return y.copy(), dense


def _nonlinear_problem():
    p = make_problem(ARCHS[0], log_cosh(1.0))
    w0 = lf.data.initial_filters(p.arch, 1, scale=0.5, seed=1)[0]

    def exact(t):
        sol = solve_ivp(lambda _, y: -p.grad(y), (0, t), w0, method="DOP853", rtol=1e-13,
                        atol=1e-14)
        return sol.y[:, -1]

    return p, w0, exact


@pytest.mark.parametrize("which", ["linear", "nonlinear"])
def test_rodas_is_fourth_order_with_third_order_dense_output(which):
    p, w0, exact = linear_problem() if which == "linear" else _nonlinear_problem()
    wk = R.new_work(p.model, p.arch.n_params)
    errs, dense_errs = [], []
    for n_steps in (32, 64, 128):  # to T = 1; h |lambda_max| from ~0.5 to ~0.1
        y, _ = _fixed_steps(p.model, w0, 1.0 / n_steps, n_steps, 0.5, wk)
        errs.append(np.abs(y - exact(1.0)).max())
    for n in (256, 512, 1024):  # one step of h = 1/n, dense output at h/2
        _, d = _fixed_steps(p.model, w0, 1.0 / n, 1, 0.5, wk)
        dense_errs.append(np.abs(d - exact(0.5 / n)).max())
    # global error O(h^4): halving h divides it by ~16 (log2 ratio 4.0-4.4 measured; 3.7..4.5
    # allows the pre-asymptotic terms, and rejects orders 3 and 5)
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all((orders > 3.7) & (orders < 4.5)), (orders, errs)
    # the continuous extension is of order 3: its local error is O(h^4), ratio ~16 (3.8-4.0
    # measured; a 2nd-order extension would give 8, a 4th-order one 32)
    d_orders = np.log2(np.array(dense_errs[:-1]) / np.array(dense_errs[1:]))
    assert np.all((d_orders > 3.6) & (d_orders < 4.4)), (d_orders, dense_errs)


def test_lu_kernels_against_numpy_and_singular_matrices():
    rng = np.random.default_rng(0)
    for n in (1, 3, 9, 40):
        E = rng.standard_normal((n, n)) + np.diag(rng.uniform(-2, 2, n))
        x = rng.standard_normal(n)
        F = E.copy()
        piv = np.zeros(n, np.int64)
        assert R.lu_factor(F, piv)
        z = x.copy()
        R.lu_solve(F, piv, z)
        # backward stable LU with partial pivoting: residual ~ n eps |E| |z|
        assert np.abs(E @ z - x).max() < 1e-13 * n * np.abs(E).max() * (1 + np.abs(z).max())
    piv = np.zeros(3, np.int64)
    S = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]])  # rank 2
    assert not R.lu_factor(S.copy(), piv)
    S2 = np.eye(3)
    S2[2, 2] = 1e-17  # pivot below n eps max|E|: numerically singular
    assert not R.lu_factor(S2, piv)
    S3 = np.eye(3)
    S3[0, 1] = np.nan
    assert not R.lu_factor(S3, piv)


# ----------------------------------------------------------------------------- vs scipy, rk45
CASES = [
    (ARCHS[0], square()),  # Gram path
    (ARCHS[0], log_cosh(2.0)),  # data path
    (ARCHS[1], pseudo_huber(0.5)),  # data path, strided
    (ARCHS[1], square()),  # Gram path, strided
    (ARCHS[0], lp(4)),  # the other losses of section 3.3
    (ARCHS[1], generalized_huber(1.0, -0.5)),
]


@pytest.mark.parametrize("arch_args, loss", CASES, ids=lambda c: str(c))
def test_rosenbrock_matches_scipy_radau_with_the_exact_hessian(arch_args, loss):
    p = make_problem(arch_args, loss)
    w0 = lf.data.initial_filters(p.arch, 2, scale=0.6, seed=5)
    t_end, rtol, atol = 5.0, 1e-9, 1e-11
    save = [0.0, 0.77, 2.1, t_end]
    ds = lf.gradient_flow(p, w0, t_end=t_end, rtol=rtol, atol=atol, save_times=save,
                          method="rosenbrock")
    assert np.all(ds.status.values == I.REACHED_END)
    for f in range(2):
        sol = solve_ivp(lambda t, y: -p.grad(y), (0, t_end), w0[f], method="Radau",
                        jac=lambda t, y: -p.hessian(y), rtol=rtol, atol=atol, dense_output=True)
        assert sol.success
        # two solutions, each with local errors controlled at rtol 1e-9: their global errors
        # (accumulated over ~100 steps through a flow that contracts) stay below ~1e-8 of the
        # state's scale; the dense outputs (order 3) are within the same bound
        scale = 1 + np.abs(sol.y[:, -1]).max()
        assert np.abs(ds.w_final.values[f] - sol.y[:, -1]).max() < 1e-8 * scale
        for ti, t in enumerate(save):
            assert np.abs(ds.w.values[f, ti] - sol.sol(t)).max() < 1e-8 * scale
    # the statistics: one Hessian per accepted step, one LU per attempted step, six gradients
    # per accepted step (five stages and the new point), five per rejection, one per dense
    # save in the open interval, two at the start
    acc, rej = ds.n_accepted.values, ds.n_rejected.values
    np.testing.assert_array_equal(ds.n_hessian_evals.values, acc)
    np.testing.assert_array_equal(ds.n_lu.values, acc + rej)
    assert np.all(ds.n_grad_evals.values == 2 + 6 * acc + 5 * rej + 2)
    np.testing.assert_allclose(ds.loss_final.values, p.loss(ds.w_final.values), rtol=1e-12)
    np.testing.assert_allclose(ds.v_final.values, p.final_filter(ds.w_final.values), rtol=1e-14)


@pytest.mark.parametrize("method", ["rosenbrock", "auto"])
@pytest.mark.parametrize("arch_args, loss", CASES[:3], ids=lambda c: str(c))
def test_rosenbrock_and_auto_agree_with_rk45_and_keep_the_invariants(arch_args, loss, method):
    p = make_problem(arch_args, loss)
    w0 = lf.data.initial_filters(p.arch, 6, scale=0.8, seed=2)
    kw = dict(t_end=6.0, rtol=1e-10, atol=1e-12, save_times=np.linspace(0, 6.0, 7))
    ro = lf.gradient_flow(p, w0, method=method, **kw)
    rk = lf.gradient_flow(p, w0, method="rk45", **kw)
    # both integrate the same flow at rtol 1e-10: trajectories agree to ~1e-9 of the scale
    scale = 1 + np.abs(rk.w.values).max()
    assert np.abs(ro.w.values - rk.w.values).max() < 1e-8 * scale
    # the loss never increases on an accepted step (beyond rounding of L, ~eps L)
    assert np.all(ro.max_loss_increase.values <= 1e-12 * (1 + ro.loss_init.values))
    # balancedness delta_i (Lemma 3.3) is conserved by the exact flow: drift at the error level
    drift = np.abs(ro.delta_final - ro.delta_init).max()
    assert drift < 1e-7 * scale**2, drift
    if method == "auto":  # every attempted step was taken by one of the two methods
        np.testing.assert_array_equal(ro.n_dp_steps + ro.n_lu, ro.n_accepted + ro.n_rejected)
        np.testing.assert_array_equal(np.isnan(ro.t_switch), ro.n_lu == 0)


def test_auto_switches_to_rosenbrock_where_the_flow_is_stiff():
    """The stiff linear problem below (eigenvalues 1 .. 1e8) and, over a short time, a
    non-stiff one (eigenvalues 1 .. 4): auto switches on the first only."""
    stiff, w0, exact, lam = _stiff_linear_problem(8)
    ds = lf.gradient_flow(stiff, w0, t_end=20.0, method="auto")
    # Dormand-Prince's step is held near 3.3 / 1e8 once the fastest mode has decayed; the
    # detection fires after 15 such steps (measured: t = 3.9e-6 .. 4.6e-6, 184-230 steps)
    assert np.all(ds.t_switch.values < 1e-3), ds.t_switch.values
    assert np.all(ds.n_dp_steps.values < 1000)
    assert np.all(ds.h_final.values > 1e6 * 2 / lam[-1])
    assert np.abs(ds.w_final.values - exact(20.0)).max() < 1e-6
    calm, w0, exact, _ = _stiff_linear_problem(0.6)
    ds = lf.gradient_flow(calm, w0, t_end=2.0, method="auto")
    assert np.all(np.isnan(ds.t_switch.values)) and np.all(ds.n_hessian_evals.values == 0)
    assert np.abs(ds.w_final.values - exact(2.0)).max() < 1e-7


def _transiently_stiff_problem():
    """Two layers, a 1-tap filter a and a 2-tap filter b, v = a b, L = v^T A v with A =
    diag(1, 1e6) / 2 (target 0): Hess_bb L = a^2 2A. ||b||^2 - a^2 = D > 0 is conserved, so
    the flow ends at a = 0, |b| = sqrt(D): b_2 decays at rate ~1e6 a^2 (stiff once decayed, while
    a is large), then a decays at rate ~b_1^2 ~ 6 and the stiffness ends with a^2 1e6 h < 1
    (t ~ 1); the limit is stiff again once a is below the tolerances (t ~ 5)."""
    X = np.diag(np.sqrt(np.array([1.0, 1e6]) / 2))
    p = lf.Problem(lf.Architecture(2, (1, 2)), X, np.zeros((1, 2)), square())
    w0 = np.array([[2.0, 3.0, 1.0], [1.5, 2.5, -1.0], [1.0, 2.0, 0.5]])
    return p, w0


def test_auto_switches_back_to_dormand_prince_when_the_stiffness_ends():
    p, w0 = _transiently_stiff_problem()
    save = np.linspace(0.0, 3.0, 13)
    kw = dict(t_end=3.0, rtol=1e-8, atol=1e-10, save_times=save)
    ds = lf.gradient_flow(p, w0, method="auto", **kw)
    rk = lf.gradient_flow(p, w0, method="rk45", **{**kw, "rtol": 1e-11, "atol": 1e-13})
    # to RODAS within the transient of b_2 (t ~ 1e-4), back to Dormand-Prince once a^2 1e6
    # h ||.|| <= 1 (measured: 2 switches each, 125-180 DP and 136-156 RODAS steps where rk45
    # takes 31k-61k)
    assert np.all(ds.t_switch.values < 1e-3), ds.t_switch.values
    np.testing.assert_array_equal(ds.n_switches.values, 2)
    assert np.all(ds.n_lu.values > 50) and np.all(ds.n_dp_steps.values > 100)
    np.testing.assert_array_equal(ds.n_dp_steps + ds.n_lu, ds.n_accepted + ds.n_rejected)
    assert np.all(ds.n_accepted.values < 1000)
    # the same trajectories as rk45 at tight tolerance (1.1e-9 measured at t_end)
    assert np.abs(ds.w.values - rk.w.values).max() < 1e-8
    assert np.all(ds.max_loss_increase.values <= 1e-12 * (1 + ds.loss_init.values))
    # the method of each step depends on the flow alone: batches and single flows agree bitwise
    one = lf.gradient_flow(p, w0[1:2], method="auto", n_threads=1, **kw)
    for name in ("w_final", "w", "n_switches", "n_dp_steps", "n_lu", "h_final"):
        assert np.array_equal(one[name].values[0], ds[name].values[1], equal_nan=True), name
    # a long run: stiff again at the limit (a below the tolerances), no flip-flop
    long = lf.gradient_flow(p, w0, method="auto", t_end=1e4)
    assert np.all(long.n_switches.values == 3), long.n_switches.values
    assert np.all(long.n_accepted.values < 1000)
    # flows that never meet the criterion keep their results: rosenbrock never switches
    ro = lf.gradient_flow(p, w0, method="rosenbrock", **kw)
    assert "n_switches" not in ro and np.all(ro.n_lu == ro.n_accepted + ro.n_rejected)


@pytest.mark.parametrize("loss", [square(), log_cosh(2.0)], ids=lambda l: l.name)
def test_flows_leaving_the_saddle_at_zero_follow_rk45_into_the_same_limit(loss):
    """w = 0 is a critical point but no minimum (three layers: gradient and Hessian vanish
    there, and L decreases to third order where pi(w) points against dL/dv(0)): flows
    started next to it escape slowly, where a large linearly implicit step could jump into
    another basin: it must not."""
    p = make_problem(ARCHS[0], loss)
    w0 = lf.data.initial_filters(p.arch, 3, scale=0.05, seed=3)
    kw = dict(t_end=60.0, rtol=1e-10, atol=1e-12, save_times=np.linspace(0, 60.0, 7))
    ro = lf.gradient_flow(p, w0, method="rosenbrock", **kw)
    rk = lf.gradient_flow(p, w0, method="rk45", **kw)
    # the same trajectories to the accumulated error of both methods at rtol 1e-10
    # (4e-11 measured), and the same limit: losses equal to ~1e-14 relative
    assert np.abs(ro.w.values - rk.w.values).max() < 1e-8
    np.testing.assert_allclose(ro.loss_final.values, rk.loss_final.values, rtol=1e-10)
    assert np.all(ro.grad_norm_final.values < 1e-6)


def _stiff_linear_problem(decades):
    """dw/dt = -2 A w + 2 b with the eigenvalues of 2A from 1 to 10^decades (one layer,
    d0 = k: the window Gram is X X^T); also the exact solution."""
    k = 6
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((k, k)))
    lam = np.logspace(0, decades, k)  # eigenvalues of the Jacobian's negative, 2A
    X = Q @ np.diag(np.sqrt(lam / 2)) @ Q.T
    Y = rng.standard_normal((1, k))
    p = lf.Problem(lf.Architecture(k, (k,)), X, Y, square())
    np.testing.assert_allclose(np.linalg.eigvalsh(2 * p.A), lam, rtol=1e-6)
    w0 = rng.standard_normal((3, k))
    w_star = np.linalg.solve(p.A, p.b)
    return p, w0, lambda t: w_star + (expm(-2 * p.A * t) @ (w0 - w_star).T).T, lam


def test_stiff_linear_problem_steps_far_beyond_the_explicit_stability_limit():
    p, w0, exact, lam = _stiff_linear_problem(8)
    t_end = 20.0
    ds = lf.gradient_flow(p, w0, t_end=t_end, rtol=1e-8, atol=1e-10, method="rosenbrock")
    assert np.all(ds.status.values == I.REACHED_END)
    # the slowest mode (lambda = 1) has decayed by e^-20; the state is w_star to within the
    # accumulated local errors (rtol 1e-8 of |w| ~ 1)
    assert np.abs(ds.w_final.values - exact(t_end)).max() < 1e-6
    # an explicit method would need t_end lambda_max / 2 = 1e9 steps. Here the transients of
    # the six modes (amplitudes ~1, decay rates 1 .. 1e8) are followed to rtol 1e-8: ~60-110
    # steps per mode (683-767 measured in all); once they have decayed, L-stability lets the
    # step grow with the slow mode alone: from t = 1 to 20, ~100 steps (measured 98-113)
    # where an explicit method would need 1e9, the last far above 2 / lambda_max = 2e-8
    early = lf.gradient_flow(p, w0, t_end=1.0, rtol=1e-8, atol=1e-10, method="rosenbrock")
    assert np.all(ds.n_accepted.values < 1000), ds.n_accepted.values
    assert np.all(ds.n_accepted.values - early.n_accepted.values < 200)
    assert np.all(ds.h_final.values > 1e6 * 2 / lam[-1])


def test_newton_step_of_an_overflowing_hessian_is_nan_not_an_error():
    """A flow whose end point is finite but so large that its Hessian overflows (w ~ 1e200:
    products of three entries) gets newton_step_final = NaN; the other flows of the run keep
    their values (numpy's eigh raised LinAlgError on the whole batch before)."""
    p = make_problem(ARCHS[0], square(), m=20)
    w0 = lf.data.initial_filters(p.arch, 3, scale=0.7, seed=3)
    w0[1, 0] = 1e200
    ds = lf.gradient_flow(p, w0, t_end=1e-3)
    assert not np.isfinite(p.hessian(ds.w_final.values[1:2])).all()
    nsf = ds.newton_step_final.values
    assert np.isnan(nsf[1]) and np.isfinite(nsf[[0, 2]]).all(), nsf


# ----------------------------------------------------------------------------- limit points
def test_run_until_converged_certifies_the_limit():
    p = make_problem(ARCHS[0], square(), m=20)
    w0 = lf.data.initial_filters(p.arch, 8, scale=0.7, seed=3)
    ds = lf.gradient_flow(p, w0, t_end=None, grad_tol=1e-11, method="rosenbrock")
    assert np.all(ds.status.values == I.CONVERGED)
    assert np.all(ds.grad_norm_final.values <= 1e-11)
    assert np.all(np.isfinite(ds.t_final.values)) and ds.attrs["t_end"] == np.inf
    # the Newton correction at the end is of the order of ||g|| / (smallest nonzero
    # eigenvalue): with ||g|| <= 1e-11 and eigenvalues >= ~1e-3 here, well below 1e-7
    assert np.all(ds.newton_step_final.values < 1e-7), ds.newton_step_final.values
    # saving an unbounded run: t = 0 only by default
    assert ds.sizes["time"] == 1
    # rk45 until ||g|| <= 1e-6 on the same flows stops short of the limit; the Newton
    # correction there estimates how far (to first order: within a factor 2 allowing the
    # second-order terms and the flow's curved approach)
    rk = lf.gradient_flow(p, w0, t_end=math.inf, grad_tol=1e-6, method="rk45")
    assert np.all(rk.status.values == I.CONVERGED)
    dist = np.linalg.norm(rk.w_final.values - ds.w_final.values, axis=1)
    ratio = dist / rk.newton_step_final.values
    assert np.all((ratio > 0.5) & (ratio < 2)), (dist, rk.newton_step_final.values)


# ----------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("method", ["rosenbrock", "auto"])
def test_bitwise_invariance_over_batches_and_in_process_thread_counts(method):
    p = make_problem(ARCHS[1], log_cosh(1.5), m=8)
    w0 = lf.data.initial_filters(p.arch, 37, seed=12)
    kw = dict(t_end=2.0, grad_tol=1e-3, save_times=[0.0, 0.5, 2.0], method=method)
    one = lf.gradient_flow(p, w0, n_threads=1, **kw)
    two = lf.gradient_flow(p, w0[::-1], n_threads=numba.config.NUMBA_NUM_THREADS, **kw)
    alone = lf.gradient_flow(p, w0[20:21], n_threads=1, **kw)
    names = ("w_final", "w", "loss", "grad_norm", "t_final", "n_accepted", "n_grad_evals",
             "v_final", "h_final", "newton_step_final")
    for name in names:
        assert np.array_equal(one[name].values, two[name].values[::-1], equal_nan=True), name
        assert np.array_equal(alone[name].values[0], one[name].values[20], equal_nan=True), name


def test_generated_and_generic_gradient_kernels_give_the_same_flows():
    """Square loss through the Gram: the stages' gradients go through the generated kernel
    when the Problem picks it; it computes the same numbers as the generic one-flow kernel."""
    arch_args = ARCHS[1]
    w0 = lf.data.initial_filters(lf.Architecture(*arch_args), 5, seed=6)
    res = {}
    for kernel in ("generated", "generic"):
        p = make_problem(arch_args, square())
        p = lf.Problem(p.arch, p.X, p.Y, square(), kernel=kernel)
        res[kernel] = lf.gradient_flow(p, w0, t_end=3.0, method="rosenbrock")
        assert res[kernel].attrs["gradient_kernel"] == kernel
    for name in ("w_final", "w", "loss", "grad_norm", "n_accepted", "v_final", "h_final"):
        assert np.array_equal(res["generated"][name].values, res["generic"][name].values), name


SCRIPT = textwrap.dedent(
    """
    import sys
    import numba
    import numpy as np
    import lcnfast as lf
    arch = lf.Architecture(23, (3, 4, 2), (2, 1, 1))
    td = lf.data.teacher(arch, 9, noise=0.1, seed=2024)
    W = lf.data.initial_filters(arch, 23, seed=7)
    for name, loss in [("square", lf.losses.square()), ("logcosh", lf.losses.log_cosh(2.0))]:
        p = lf.Problem(arch, td.X, td.Y, loss)
        ds = lf.gradient_flow(p, W, t_end=3.0, method="rosenbrock")
        np.save(f"{sys.argv[1]}/{name}.npy", np.c_[ds.w_final.values, ds.w.values[:, 5]])
    print(numba.get_num_threads())
    """
)


def test_bitwise_identical_for_numba_num_threads_1_and_2(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    res = {}
    for threads in (1, 2):
        out = tmp_path / str(threads)
        out.mkdir()
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        run = subprocess.run([sys.executable, str(script), str(out)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split()[-1] == str(threads)
        res[threads] = [np.load(out / f"{n}.npy") for n in ("square", "logcosh")]
    for a, b in zip(res[1], res[2]):
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- statuses, args
def test_statuses_max_steps_and_grad_tol_at_start():
    p = make_problem(ARCHS[0], square())
    w0 = lf.data.initial_filters(p.arch, 3, seed=4)
    ds = lf.gradient_flow(p, w0, t_end=50.0, max_steps=5, method="rosenbrock")
    assert np.all(ds.status.values == I.MAX_STEPS)
    assert np.all(ds.n_accepted.values + ds.n_rejected.values == 5)
    ds = lf.gradient_flow(p, w0, t_end=1.0, grad_tol=1e9, method="rosenbrock")
    assert np.all(ds.status.values == I.CONVERGED) and np.all(ds.t_final.values == 0)
    assert np.all(ds.n_hessian_evals.values == 0) and np.all(np.isnan(ds.h_final.values))
    np.testing.assert_array_equal(ds.w_final.values, w0)


@pytest.mark.parametrize("method", ["rosenbrock", "auto"])
def test_extreme_starting_points_end_with_a_status_and_leave_the_others_alone(method):
    """Flow 1 starts at 1e20 x (loss ~1e120: Hessian entries ~1e80, factorisations at the
    edge of the pivot test), flow 2 at 1e40 x (||grad L||^2 overflows unscaled): each
    ends with a status, no exception, and the other flows are bitwise as when run alone."""
    p = make_problem(ARCHS[0], square())
    w0 = lf.data.initial_filters(p.arch, 4, seed=4)
    w0[1] *= 1e20
    w0[2] *= 1e40
    kw = dict(t_end=1.0, max_steps=300, method=method)
    ds = lf.gradient_flow(p, w0, **kw)
    assert ds.status.values[1] in (I.MAX_STEPS, I.STEP_UNDERFLOW, I.NON_FINITE)
    # 1e40 x: the loss (~1e240) and the scaled gradient norm stay finite (issue 17: norms
    # without spurious overflow), so the flow ends like flow 1, or non_finite if a stage overflows
    assert ds.status.values[2] in (I.MAX_STEPS, I.STEP_UNDERFLOW, I.NON_FINITE)
    assert np.all(ds.loss_final.values[1] <= ds.loss_init.values[1])
    alone = lf.gradient_flow(p, w0[[0, 3]], **kw)
    for name in ("w_final", "n_accepted", "status", "loss_final"):
        assert np.array_equal(ds[name].values[[0, 3]], alone[name].values), name


def test_dataset_schema_and_netcdf_round_trip(tmp_path):
    p = make_problem(ARCHS[1], square())
    ds = lf.gradient_flow(p, lf.data.initial_filters(p.arch, 3, seed=1), t_end=None,
                          grad_tol=1e-8, method="rosenbrock", save_times=[0.0, 1.0])
    for name, dtype in (("n_hessian_evals", np.int64), ("n_lu", np.int64),
                        ("h_final", np.float64), ("newton_step_final", np.float64)):
        assert ds[name].dims == ("flow",) and ds[name].dtype == dtype, name
        assert ds[name].attrs["long_name"]
    assert ds.attrs["method"] == "rosenbrock"
    path = tmp_path / "r.nc"
    lf.to_netcdf(ds, path)
    back = lf.open_dataset(path)
    for name in ds.data_vars:
        assert np.array_equal(ds[name].values, back[name].values, equal_nan=True), name
    assert back.attrs["t_end"] == np.inf


def test_bad_arguments_raise_clear_errors():
    p = make_problem(ARCHS[0], square())
    w0 = np.ones((2, p.arch.n_params))
    cases = [
        (dict(t_end=1.0, method="radau"), ValueError, "method"),
        (dict(t_end=None, method="rosenbrock"), ValueError, "grad_tol"),
        (dict(t_end=float("inf")), ValueError, "grad_tol"),
        (dict(t_end=-1.0, method="rosenbrock"), ValueError, "t_end"),
        (dict(t_end="1", method="rosenbrock"), TypeError, "t_end"),
        (dict(t_end=1.0, rtol=0.0, method="rosenbrock"), ValueError, "rtol"),
        (dict(t_end=None, grad_tol=1e-9, save_times=[-1.0]), ValueError, "save_times"),
    ]
    for kw, exc, word in cases:
        with pytest.raises(exc, match=word):
            lf.gradient_flow(p, w0, **kw)
