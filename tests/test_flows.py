"""The flow engine: tableau, order, agreement with scipy, invariants, status codes, schema."""

import math
import warnings
from fractions import Fraction

import mpmath
import numba
import numpy as np
import pytest
import xarray as xr
from hypothesis import example, given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import lcnfast as lf
from lcnfast import _integrate as I
from lcnfast import _rk45
from lcnfast.losses import generalized_huber, log_cosh, lp, pseudo_huber, square

LOSSES = [square(), lp(4), pseudo_huber(0.5), generalized_huber(1.0, -0.5), log_cosh(2.0)]
# two threads, or the one a process started with NUMBA_NUM_THREADS=1 has
TWO_THREADS = min(2, numba.config.NUMBA_NUM_THREADS)
ARCHS = [((12, (3, 2, 2), (1, 1, 1))), ((20, (4, 3, 2), (2, 1, 1))), ((23, (3, 3), (2, 2)))]


def make_problem(arch_args, loss, m=12, seed=0, noise=0.1):
    arch = lf.Architecture(*arch_args)
    td = lf.data.teacher(arch, m, noise=noise, seed=seed)
    return lf.Problem(arch, td.X, td.Y, loss)


# ----------------------------------------------------------------------------- min_step
@numba.njit
def _ulp_above(t):
    return I._ulp_above(t)


@given(st.floats(min_value=0.0, allow_infinity=False, allow_nan=False))
@example(0.0)
@example(5e-324)  # the smallest subnormal
@example(2.0**-1022)  # the smallest normal
@example(1.0)
@example(float(np.finfo(float).max))  # next: inf
def test_ulp_from_the_bits_equals_nextafter(t):
    """rk45's and the Rosenbrock methods' min_step = 10 ulp(t) takes the ulp from the bits of t
    (an integer add) instead of np.nextafter (a libm call per lane and step). Claim: the same
    number for every time a flow can have, a finite t >= +0.0 (subnormals and the largest
    double included, whose next value is inf); exact equality, as the steps depend on it."""
    with np.errstate(over="ignore"):
        assert _ulp_above(t) == np.nextafter(t, np.inf) - t


# ----------------------------------------------------------------------------- step control
def _scipy_decision(err2, n, h_abs, rejected):
    """scipy's RK45 controller (``RungeKutta._step_impl``), one flow, in Python floats:
    (accepted, next h_abs)."""
    err = math.sqrt(err2 / n)
    if err < 1:
        factor = I.MAX_FACTOR if err == 0 else min(I.MAX_FACTOR, I.SAFETY * err**I.ERROR_EXPONENT)
        if rejected:
            factor = min(1, factor)
        return True, h_abs * factor
    return False, h_abs * max(I.MIN_FACTOR, I.SAFETY * err**I.ERROR_EXPONENT)


_ERR2 = st.one_of(st.floats(0.0, 1e6), st.sampled_from([0.0, 9.0, 9.000000000000002, math.inf,
                                                         math.nan, 1e-300, 1e300]))


@given(st.lists(st.tuples(_ERR2, st.floats(1e-12, 1e3), st.booleans(), st.sampled_from(
    ["running", "idle", "stopped"])), min_size=1, max_size=20))
def test_lane_decisions_are_scipys_controller(lanes):
    """rk45's lanes accept or reject and size their next steps all at once, with selects
    (_rk45._rk_decide_lanes). Claim: for every running lane exactly scipy's decision, NaN and
    Inf errors included (scipy: max(MIN_FACTOR, nan) = MIN_FACTOR), and scipy's step size
    within 8 ulp. Why that tolerance: the lanes take err^(-1/5) by _integrate._inv_fifth_root,
    within 1 ulp of the exact root, where scipy's err ** (-1/5) (libm's pow with the exponent
    -0.2 in binary, not -1/5: a relative difference of 1.1e-17 |ln err|, at most 1.4 ulp for err
    in [1e-12, 1e12], beyond which the factor is clipped) is within ~2.5 ulp of it; the
    products SAFETY * P and h * factor round once more on each side. Clipped factors
    (MIN_FACTOR, MAX_FACTOR, 1 after a rejection) agree exactly. Lanes not running (idle:
    flow -1; stopped: h = 0) are not accepted and keep their step size. n = 9 parameters."""
    n = 9
    L = len(lanes)
    err2 = np.array([e for e, _, _, _ in lanes])
    h_abs = np.array([h for _, h, _, _ in lanes])
    rejected = np.array([r for _, _, r, _ in lanes])
    flow = np.array([-1 if k == "idle" else 3 for *_, k in lanes], np.int64)
    h = np.array([0.0 if k != "running" else 0.5 for *_, k in lanes])
    accepted = np.ones(L, np.bool_)
    h_new = h_abs.copy()
    _rk45._rk_decide_lanes(err2, n, flow, h, h_new, rejected, accepted, np.empty(L))
    for b, (e, ha, rej, kind) in enumerate(lanes):
        if kind != "running":
            assert not accepted[b] and h_new[b] == ha
            continue
        ok, h_ref = _scipy_decision(e, n, ha, rej)
        assert accepted[b] == ok, (e, ha, rej)
        assert abs(h_new[b] - h_ref) <= 8 * np.spacing(h_ref), (e, ha, rej, h_new[b], h_ref)


def _exact_inv_fifth_root(x):
    with mpmath.workprec(200):
        return float(mpmath.mpf(x) ** (-mpmath.mpf(1) / 5))


@given(st.one_of(st.floats(1e-12, 1e12), st.floats(0.5, 2.0),
                 st.integers(-39, 39).map(lambda k: 2.0**k),
                 st.integers(-39, 39).map(lambda k: np.nextafter(2.0**k, 0.0))))
@example(1e-12)
@example(1e12)
@example(1.0)
def test_inv_fifth_root_is_within_one_ulp_of_the_exact_root(x):
    """_integrate._inv_fifth_root (the step factor's err^(-1/5), vectorisable) against mpmath
    at 200 bits, over its range [1e-12, 1e12], powers of two and their neighbours below
    included (where the first guess from the bits changes slope). Claim: within 1 ulp (a
    Newton correction whose own error is ~0.3 ulp, then one rounding)."""
    got = _root(np.array([x]))[0]
    exact = _exact_inv_fifth_root(x)
    assert abs(got - exact) <= np.spacing(exact), (x, got, exact)


def test_inv_fifth_root_clamps_what_the_factor_clips():
    """Below 1e-12 (and NaN) the root is that of 1e-12 (226 / SAFETY: the factor is MAX_FACTOR
    either way), above 1e12 that of 1e12 (the factor MIN_FACTOR either way), and the same bits
    for a lane in a vector loop as alone (n = 1 and 37 values)."""
    lo, hi = _root(np.array([1e-12, 1e12]))
    got = _root(np.array([0.0, 1e-300, 5e-324, math.nan, 1e-13, 1e13, 1e300, math.inf]))
    assert list(got) == [lo] * 5 + [hi] * 3
    assert I.SAFETY * lo > I.MAX_FACTOR and I.SAFETY * hi < I.MIN_FACTOR
    xs = np.geomspace(1e-12, 1e12, 37)
    assert all(_root(xs[i:i + 1])[0] == r for i, r in enumerate(_root(xs)))


@numba.njit
def _root_loop(x, out):
    for i in range(x.shape[0]):
        out[i] = I._inv_fifth_root(x[i])


def _root(x):
    out = np.empty_like(x)
    _root_loop(x, out)
    return out


# ----------------------------------------------------------------------------- tableau
def test_dormand_prince_tableau_identities():
    A, B, C, E, P = I.DP_A, I.DP_B, I.DP_C, I.DP_E, I.DP_P
    np.testing.assert_allclose(A.sum(axis=1), C, rtol=0, atol=1e-15)  # row sums = nodes
    assert abs(B.sum() - 1) < 1e-15
    assert abs(E.sum()) < 1e-15  # both solutions are consistent
    c = np.append(C, 1.0)
    b5 = np.append(B, 0.0)
    b4 = b5 + E  # the embedded 4th-order weights
    for q in range(1, 6):  # bushy-tree order conditions sum b c^(q-1) = 1/q
        assert abs(b5 @ c ** (q - 1) - 1 / q) < 1e-14
    for q in range(1, 5):
        assert abs(b4 @ c ** (q - 1) - 1 / q) < 1e-14
    # 5th order needs also sum b_i a_ij c_j^3 = 1/20 etc.; check one non-bushy condition
    A7 = np.zeros((7, 7))
    A7[:6, :5] = A
    A7[6, :6] = B
    assert abs(b5 @ (A7 @ c**3) - Fraction(1, 20)) < 1e-14
    # FSAL: the last stage is evaluated at the new solution
    np.testing.assert_allclose(A7[6, :6], B)
    # dense output reproduces the step end at x = 1 and is consistent (sum of weights = x)
    np.testing.assert_allclose(P.sum(axis=1), b5, atol=1e-14)
    for x in (0.3, 0.7):
        weights = P @ (x ** np.arange(1, 5))
        assert abs(weights.sum() - x) < 1e-14


# ----------------------------------------------------------------------------- order
def linear_problem():
    """One layer, square loss: dw/dt = -2 (A w - b), a linear ODE with a known solution."""
    arch = lf.Architecture(8, (4,))
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 6)) / np.sqrt(6)
    Y = rng.standard_normal((5, 6))
    p = lf.Problem(arch, X, Y, square())
    w0 = rng.standard_normal(4)
    w_star = np.linalg.solve(p.A, p.b)

    def exact(t):
        return w_star + expm(-2 * p.A * t) @ (w0 - w_star)

    return p, w0, exact


def test_euler_is_first_order():
    p, w0, exact = linear_problem()
    t_end = 1.0
    errs = []
    hs = [2e-3, 1e-3, 5e-4]
    for h in hs:
        ds = lf.gradient_descent(p, w0, h=h, n_steps=round(t_end / h))
        errs.append(np.abs(ds.w_final.values[0] - exact(t_end)).max())
    orders = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(orders - 1) < 0.05), orders


def test_dormand_prince_is_fifth_order():
    """Global error against steps over a range of tolerances: slope about -5."""
    p, w0, exact = linear_problem()
    t_end = 2.0
    steps, errs = [], []
    for rtol in (1e-5, 1e-6, 1e-7, 1e-8, 1e-9):
        ds = lf.gradient_flow(p, w0, t_end=t_end, rtol=rtol, atol=rtol * 1e-2)
        steps.append(int(ds.n_accepted[0]))
        errs.append(np.abs(ds.w_final.values[0] - exact(t_end)).max())
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert -6.0 < slope < -4.3, (slope, steps, errs)


# ----------------------------------------------------------------------------- vs scipy
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
@pytest.mark.parametrize("arch_args", ARCHS, ids=str)
def test_rk45_matches_scipy_solve_ivp(arch_args, loss):
    p = make_problem(arch_args, loss)
    w0 = lf.data.initial_filters(p.arch, 2, scale=0.6, seed=5)
    t_end, rtol, atol = 3.0, 1e-9, 1e-11
    save = [0.0, 0.77, 2.1, t_end]
    ds = lf.gradient_flow(p, w0, t_end=t_end, rtol=rtol, atol=atol, save_times=save)
    for f in range(2):
        sol = solve_ivp(
            lambda t, y: -p.grad(y), (0, t_end), w0[f], method="RK45", rtol=rtol, atol=atol,
            dense_output=True,
        )
        assert sol.success
        scale = 1 + np.abs(sol.y[:, -1]).max()
        assert np.abs(ds.w_final.values[f] - sol.y[:, -1]).max() < 1e-7 * scale
        for ti, t in enumerate(save):
            assert np.abs(ds.w.values[f, ti] - sol.sol(t)).max() < 1e-7 * scale
        # same controller and tableau: the same accepted steps, up to rare rounding flips of an
        # accept/reject decision at the stability limit
        assert abs(int(ds.n_accepted[f]) - (sol.t.size - 1)) <= 2 + 0.01 * sol.t.size
    assert np.all(ds.status.values == I.REACHED_END)
    np.testing.assert_allclose(ds.t_final, t_end)


# ----------------------------------------------------------------------------- invariants
def test_balancedness_drift_shrinks_with_rtol():
    p = make_problem(ARCHS[1], log_cosh(1.0))
    w0 = lf.data.initial_filters(p.arch, 8, scale=0.8, seed=2)
    drifts = []
    for rtol in (1e-5, 1e-7, 1e-9):
        ds = lf.gradient_flow(p, w0, t_end=5.0, rtol=rtol, atol=rtol * 1e-2)
        drifts.append(float(np.abs(ds.delta_final - ds.delta_init).max()))
    assert drifts[0] > drifts[1] > drifts[2], drifts
    assert drifts[2] < 1e-6


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: l.name)
def test_loss_never_increases_along_accepted_steps(loss):
    p = make_problem(ARCHS[0], loss)
    ds = lf.gradient_flow(p, lf.data.initial_filters(p.arch, 16, seed=4), t_end=4.0)
    tol = 1e-12 * (1 + ds.loss_init.values)
    assert np.all(ds.max_loss_increase.values <= tol)
    saved = ds.loss.values
    assert np.all(np.diff(saved, axis=1) <= 1e-9 * (1 + saved[:, :1]))


def test_euler_equals_numpy_gradient_descent():
    p = make_problem(ARCHS[1], pseudo_huber(1.0))
    w0 = lf.data.initial_filters(p.arch, 5, seed=6)
    h, n = 2e-3, 300
    ds = lf.gradient_descent(p, w0, h=h, n_steps=n, save_every=100)
    w = w0.copy()
    saved = [w.copy()]
    for j in range(1, n + 1):
        L, g = p.loss_and_grad(w)
        w = w - h * g
        if j % 100 == 0:
            saved.append(w.copy())
    np.testing.assert_allclose(ds.w_final.values, w, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.w.values, np.stack(saved, axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ds.time.values, [0, 0.2, 0.4, 0.6])
    assert np.all(ds.n_accepted.values == n) and np.all(ds.n_grad_evals.values == n + 1)


def test_euler_breaks_balancedness_by_the_known_amount():
    """delta_i(k+1) - delta_i(k) = h^2 (||g_{i+1}||^2 - ||g_i||^2) (from eq. 3.2)."""
    p = make_problem(ARCHS[0], square())
    arch = p.arch
    w0 = lf.data.initial_filters(arch, 4, seed=8)
    h = 0.01
    ds = lf.gradient_descent(p, w0, h=h, n_steps=1)
    g = p.grad(w0)
    gsq = np.stack([np.sum(g[:, arch.layer_slice(i)] ** 2, 1) for i in range(arch.depth)], 1)
    expected = h**2 * np.diff(gsq, axis=1)
    got = (ds.delta_final - ds.delta_init).values
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-13)


# ----------------------------------------------------------------------------- status codes
def test_diverging_descent_is_flagged_and_others_unaffected():
    p = make_problem(ARCHS[0], square())
    w0 = lf.data.initial_filters(p.arch, 9, scale=0.5, seed=9)
    w0[4] *= 40.0  # huge weights: the Hessian there is far too stiff for h
    h, n = 5e-3, 400
    with pytest.warns(lf.flows.FlowWarning, match="1 of 9 flows diverged"):
        ds = lf.gradient_descent(p, w0, h=h, n_steps=n)
    status = ds.status.values
    assert status[4] == I.NON_FINITE
    # its loss_final is Problem.loss at its w_final (inf), not the kernel's inf - inf = NaN
    with pytest.warns(RuntimeWarning, match="too large"):
        at_end = p.loss(ds.w_final.values[4])
    assert np.all(np.isfinite(ds.w_final.values[4])) and at_end == np.inf
    assert ds.loss_final.values[4] == at_end
    assert np.all(np.delete(status, 4) == I.REACHED_END)
    alone = lf.gradient_descent(p, np.delete(w0, 4, axis=0), h=h, n_steps=n)
    assert np.array_equal(alone.w_final.values, np.delete(ds.w_final.values, 4, axis=0))
    assert ds.attrs["method"] == "euler"
    # a flagged flow stops early: its saved values after the stop are NaN
    assert np.isnan(ds.loss.values[4, -1]) and ds.t_final.values[4] < n * h


def test_the_dataset_owns_its_initial_points_and_read_only_ones_compile_nothing_new():
    """w_init is a copy: the caller's w0, reused as a buffer, changed every Dataset's w_init
    with it (and then w_init no longer matched loss_init). A read-only w0 (a view of a
    netCDF variable, np.broadcast_to...) runs the kernels compiled for a writable one
    instead of compiling every integrator again for a second Numba type."""
    from lcnfast import _euler, _rk45

    p = make_problem(ARCHS[0], square())
    w0 = lf.data.initial_filters(p.arch, 3, seed=1)
    kept = w0.copy()
    flows = [lf.gradient_flow(p, w0, t_end=0.5, method="rk45"),
             lf.gradient_descent(p, w0, h=1e-3, n_steps=5)]
    n_sigs = (len(_rk45.rk45_worker.signatures), len(_euler.euler_worker.signatures))
    w0 += 100.0
    for ds in flows:
        assert np.array_equal(ds.w_init.values, kept)
    ro = kept.copy()
    ro.flags.writeable = False
    again = [lf.gradient_flow(p, ro, t_end=0.5, method="rk45"),
             lf.gradient_descent(p, ro, h=1e-3, n_steps=5)]
    assert (len(_rk45.rk45_worker.signatures), len(_euler.euler_worker.signatures)) == n_sigs
    for a, b in zip(flows, again):
        assert np.array_equal(a.w_final.values, b.w_final.values)


def test_grad_tol_stops_each_flow_on_its_own():
    p = make_problem(ARCHS[0], square())
    w0 = lf.data.initial_filters(p.arch, 12, seed=10)
    ds = lf.gradient_flow(p, w0, t_end=200.0, grad_tol=1e-4, save_times=[0.0, 199.0])
    conv = ds.status.values == I.CONVERGED
    assert conv.all()
    assert np.all(ds.grad_norm_final.values <= 1e-4)
    assert np.all(ds.t_final.values < 199.0)
    assert np.all(np.isnan(ds.loss.values[:, 1]))  # never reached the second save time
    # each flow stopped at its own time: they differ
    assert np.unique(ds.t_final.values).size > 1
    # the last accepted step before the stop did not yet satisfy grad_tol: check via a
    # rerun to just before t_final of one flow
    f = int(np.argmax(ds.t_final.values))
    before = lf.gradient_flow(p, w0[f], t_end=float(ds.t_final[f]) * 0.9)
    assert float(before.grad_norm_final[0]) > 1e-4


@pytest.mark.parametrize("kernel", ["generated", "generic"])
def test_gradient_descent_records_the_same_whether_a_step_saves_or_not(kernel):
    """Claim: gradient descent's records -- first passage times of loss levels (t_below), the
    running maxima of the loss increase, ||v||_1 and ||w||_2, final states, steps and statuses
    -- are bitwise the same whether every step saves or only the first and last. Why: a step
    at which a lane saves takes that lane through the full per-lane checks, while lanes with
    nothing to record on a step take the checks across the lanes at once
    (``_euler._quiet_lanes``, ``_quiet_step``); both must record the same (the saved rows are
    not compared, they differ by construction). 37 flows stopping at different steps
    (grad_tol), some diverging to non-finite values, levels crossed mid-run. Checked able to
    fail: a lane's level bound never updated (``lev_top[b] = -inf``) misses every crossing after
    step 0."""
    arch = lf.Architecture(14, (3, 2, 3), (1, 2, 1))
    td = lf.data.teacher(arch, 24, noise=0.1, seed=18)
    p = lf.Problem(arch, td.X, td.Y, square(), kernel=kernel)
    w0 = lf.data.initial_filters(arch, 37, scale=0.5, seed=2)
    w0[:3] *= 40.0  # these overflow within a few steps
    L0 = float(np.median(p.loss(w0)))
    levels = [L0 * q for q in (0.5, 0.1, 0.02, 1e-3)]
    n = 400
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lf.flows.FlowWarning)
        every = lf.gradient_descent(p, w0, h=1e-3, n_steps=n, save_every=1, grad_tol=0.05,
                                    loss_levels=levels, n_threads=TWO_THREADS)
        ends = lf.gradient_descent(p, w0, h=1e-3, n_steps=n, save_every=n, grad_tol=0.05,
                                   loss_levels=levels, n_threads=TWO_THREADS)
    statuses = set(every.status.values.tolist())
    assert {I.CONVERGED, I.REACHED_END, I.NON_FINITE} <= statuses, statuses
    tb = every.t_below.values
    assert np.sum((tb > 0) & np.isfinite(tb)) >= 10  # crossed mid-run, not at the start
    for name, var in every.data_vars.items():
        if "time" in var.dims:
            continue
        np.testing.assert_array_equal(ends[name].values, var.values, err_msg=name)


def test_grad_tol_at_start_and_max_steps():
    p = make_problem(ARCHS[0], square())
    zero = np.zeros(p.arch.n_params)  # a critical point: the gradient vanishes there
    ds = lf.gradient_flow(p, zero, t_end=1.0, grad_tol=0.0)
    assert ds.status.values[0] == I.CONVERGED and ds.t_final.values[0] == 0
    w0 = lf.data.initial_filters(p.arch, 3, seed=11)
    with pytest.warns(lf.flows.FlowWarning, match="3 max_steps"):
        ds = lf.gradient_flow(p, w0, t_end=100.0, max_steps=7)
    assert np.all(ds.status.values == I.MAX_STEPS)
    assert np.all(ds.n_accepted.values + ds.n_rejected.values == 7)
    ds = lf.gradient_descent(p, zero, h=0.1, n_steps=5, grad_tol=0.0)
    assert ds.status.values[0] == I.CONVERGED and int(ds.n_accepted[0]) == 0


def test_status_flags_are_cf_conformant():
    p = make_problem(ARCHS[0], square())
    ds = lf.gradient_flow(p, np.ones(p.arch.n_params), t_end=0.5)
    st = ds.status
    assert st.dtype == np.int8
    assert list(st.attrs["flag_values"]) == [0, 1, 2, 3, 4, 5]
    assert st.attrs["flag_meanings"].split() == list(lf.STATUS.values())


# ----------------------------------------------------------------------------- invariance
def test_thread_count_and_batch_composition_invariance():
    p = make_problem(ARCHS[1], log_cosh(1.5), m=8)
    w0 = lf.data.initial_filters(p.arch, 203, seed=12)
    kw = dict(t_end=2.0, grad_tol=1e-3, save_times=[0.0, 0.5, 2.0])
    many = numba.config.NUMBA_NUM_THREADS  # 2 on the CI machine
    one = lf.gradient_flow(p, w0, n_threads=1, **kw)
    two = lf.gradient_flow(p, w0, n_threads=many, **kw)
    for name in ("w_final", "w", "loss", "grad_norm", "t_final", "n_accepted", "v_final"):
        assert np.array_equal(one[name].values, two[name].values, equal_nan=True), name
    alone = lf.gradient_flow(p, w0[101:102], n_threads=many, **kw)
    for name in ("w_final", "w", "loss", "n_accepted", "n_grad_evals"):
        assert np.array_equal(alone[name].values[0], one[name].values[101], equal_nan=True)
    gd1 = lf.gradient_descent(p, w0, h=1e-3, n_steps=50, n_threads=1)
    gd2 = lf.gradient_descent(p, w0[::-1], h=1e-3, n_steps=50, n_threads=many)
    assert np.array_equal(gd1.w_final.values, gd2.w_final.values[::-1])


@pytest.mark.parametrize("arch_args, m", [(ARCHS[0], 200), (ARCHS[1], 20), (ARCHS[0], 5)])
def test_rk45_losses_on_the_data_path_are_the_losses_of_the_states(arch_args, m):
    """Runge-Kutta stages 2..6 skip the loss values on the data path; the FSAL stage keeps
    them: every recorded loss is the loss of its state, none is NaN."""
    p = make_problem(arch_args, log_cosh(1.5), m=m)
    w0 = lf.data.initial_filters(p.arch, 9, seed=14)
    ds = lf.gradient_flow(p, w0, t_end=1.0, save_times=[0.0, 0.25, 1.0])
    assert np.all(ds.status.values == I.REACHED_END)
    np.testing.assert_allclose(ds.loss_final.values, p.loss(ds.w_final.values), rtol=1e-12)
    for r in range(3):
        np.testing.assert_allclose(ds.loss.values[:, r], p.loss(ds.w.values[:, r]), rtol=1e-12)
    assert np.all(np.isfinite(ds.max_loss_increase.values))
    assert np.all(ds.max_loss_increase.values <= 1e-9 * ds.loss_init.values)


# ----------------------------------------------------------------------------- schema, I/O
def test_dataset_schema_and_layer_selection():
    p = make_problem(ARCHS[1], square())
    arch = p.arch
    w0 = lf.data.initial_filters(arch, 4, seed=13)
    ds = lf.gradient_flow(p, w0, t_end=1.0, attrs={"seed": 13})
    for name, dims in {
        "w_init": ("flow", "param"),
        "w_final": ("flow", "param"),
        "v_final": ("flow", "v_tap"),
        "loss_final": ("flow",),
        "grad_norm_final": ("flow",),
        "t_final": ("flow",),
        "status": ("flow",),
        "delta_init": ("flow", "pair"),
        "delta_final": ("flow", "pair"),
        "w": ("flow", "time", "param"),
        "loss": ("flow", "time"),
        "grad_norm": ("flow", "time"),
    }.items():
        assert ds[name].dims == dims, name
    layer2 = ds.w_final.sel(layer=2)
    assert layer2.dims == ("flow", "tap") and layer2.shape == (4, arch.k[1])
    np.testing.assert_array_equal(layer2.values, ds.w_final.values[:, arch.layer_slice(1)])
    np.testing.assert_allclose(ds.v_final.values, p.final_filter(ds.w_final.values), rtol=1e-14)
    np.testing.assert_allclose(ds.loss_final.values, p.loss(ds.w_final.values), rtol=1e-12)
    assert ds.attrs["seed"] == 13
    assert lf.Architecture(**__import__("json").loads(ds.attrs["architecture"])) == arch
    for key in ("lcnfast_version", "numba_version", "threading_layer", "n_threads", "rtol"):
        assert key in ds.attrs
    assert ds.attrs["lanes"] == lf._lanes.LANES


def test_netcdf_round_trip_is_identical(tmp_path):
    p = make_problem(ARCHS[2], generalized_huber(2.0, 0.5))
    ds = lf.gradient_flow(p, lf.data.initial_filters(p.arch, 6, seed=14), t_end=1.0, grad_tol=0.5)
    path = tmp_path / "flows.nc"
    assert lf.to_netcdf(ds, path) == str(path)
    back = lf.open_dataset(path)
    xr.testing.assert_identical(ds, back)
    assert back.w_final.sel(layer=1).shape == (6, 3)
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".tmp-")]


def test_to_netcdf_leaves_no_partial_file_on_failure(tmp_path):
    p = make_problem(ARCHS[0], square())
    ds = lf.gradient_flow(p, np.ones(p.arch.n_params), t_end=0.1)
    bad = ds.assign_attrs(bad={"not": "serialisable"})
    with pytest.raises(TypeError):
        lf.to_netcdf(bad, tmp_path / "x.nc")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- bad arguments
def test_bad_arguments_raise_clear_errors():
    p = make_problem(ARCHS[0], square())
    w0 = np.ones((2, p.arch.n_params))
    cases = [
        (dict(t_end=-1.0), ValueError, "t_end"),
        (dict(t_end=1.0, rtol=-1e-3), ValueError, "rtol"),
        (dict(t_end=1.0, atol=-1.0), ValueError, "atol"),
        (dict(t_end=1.0, grad_tol=-1.0), ValueError, "grad_tol"),
        (dict(t_end=1.0, max_steps=0), ValueError, "max_steps"),
        (dict(t_end=1.0, save_times=[0.0, 2.0]), ValueError, "save_times"),
        (dict(t_end=1.0, save_times=[0.5, 0.2]), ValueError, "save_times"),
        (dict(t_end=1.0, method="euler"), ValueError, "method"),
        (dict(t_end=1.0, n_threads=0), ValueError, "n_threads"),
        (dict(t_end=1.0, attrs={"x": {"a": 1}}), TypeError, "attrs"),
    ]
    for kw, exc, word in cases:
        with pytest.raises(exc, match=word):
            lf.gradient_flow(p, w0, **kw)
    with pytest.raises(ValueError, match="w0"):
        lf.gradient_flow(p, np.ones((2, 3)), t_end=1.0)
    bad = w0.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="w0"):
        lf.gradient_flow(p, bad, t_end=1.0)
    with pytest.raises(TypeError, match="problem"):
        lf.gradient_flow("not a problem", w0, t_end=1.0)
    with pytest.raises(ValueError, match="h"):
        lf.gradient_descent(p, w0, h=0.0, n_steps=3)
    with pytest.raises(ValueError, match="n_steps"):
        lf.gradient_descent(p, w0, h=0.1, n_steps=-1)
    with pytest.raises(ValueError, match="save_every"):
        lf.gradient_descent(p, w0, h=0.1, n_steps=3, save_every=0)
    with pytest.warns(UserWarning, match="rtol"):
        lf.gradient_flow(p, w0, t_end=0.1, rtol=1e-20)


# ----------------------------------------------------------------------------- issue 17
def _two_layers():
    arch = lf.Architecture(8, (2, 2), (1, 1))
    td = lf.data.teacher(arch, 8, noise=0.1, seed=0)
    return lf.Problem(arch, td.X, td.Y, square())


def _norm(x):
    """The 2-norm without overflow or underflow (a reference)."""
    big = np.abs(x).max()
    return big * np.sqrt(np.sum((x / big) ** 2)) if big > 0 else 0.0


@pytest.mark.parametrize("scale", [1e60, 1e-170])
def test_norms_neither_overflow_nor_underflow(scale):
    """w0 * 1e60 in two layers: L ~ 1e240 and its gradient ~ 1e180 are finite, but the sum
    of squares of the gradient overflowed, and the flow was flagged non_finite; w0 * 1e-170:
    the sum of squares underflowed to 0, and grad_tol = 0 called a moving flow converged."""
    p = _two_layers()
    w0 = lf.data.initial_filters(p.arch, 1, scale=0.5, seed=1)[0] * scale
    g = p.grad(w0)
    assert np.isfinite(g).all() and np.any(g != 0)
    ds = lf.gradient_flow(p, w0, t_end=1e-300, grad_tol=0.0, max_steps=3)
    gd = lf.gradient_descent(p, w0, h=1e-300, n_steps=1, grad_tol=0.0)
    for d in (ds, gd):
        assert d.status.values[0] not in (I.NON_FINITE, I.CONVERGED)
        np.testing.assert_allclose(d.grad_norm_init.values[0], _norm(g), rtol=1e-14)
        np.testing.assert_allclose(d.w_norm_max.values[0], _norm(w0), rtol=1e-14)
        assert np.isfinite(d.loss_final.values[0]) and np.isfinite(d.grad_norm_final.values[0])
    np.testing.assert_allclose(ds.grad_norm.values[0, 0], _norm(g), rtol=1e-14)


def test_a_constant_solution_with_atol_zero_reaches_the_end():
    """w0 = 0 is a critical point: the flow stays there. With atol = 0 its error norm divided
    0 by 0, and the flow was reported as a step underflow at t = 0."""
    p = _two_layers()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing to warn about
        ds = lf.gradient_flow(p, np.zeros(p.arch.n_params), t_end=10.0, atol=0.0)
    assert ds.status.values[0] == I.REACHED_END and ds.t_final.values[0] == 10.0
    assert np.all(ds.w_final.values == 0) and ds.n_rejected.values[0] == 0
    assert np.all(ds.loss.values[0] == ds.loss_init.values[0])


def test_early_stops_warn_once_per_run_with_their_counts():
    p = _two_layers()
    w0 = lf.data.initial_filters(p.arch, 4, seed=2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = lf.gradient_flow(p, w0, t_end=100.0, max_steps=5)
    msgs = [str(r.message) for r in rec if issubclass(r.category, lf.flows.FlowWarning)]
    assert len(msgs) == 1 and "4 of 4 flows" in msgs[0] and "4 max_steps" in msgs[0], msgs
    assert np.all(ds.status.values == I.MAX_STEPS)
    # the counts of both early stops, in one warning (step underflows are hard to provoke on
    # purpose: the run's bookkeeping is checked directly)
    out = lf.flows._outputs(5, p.arch.n_params, p.arch.k_v, 1)
    out.status[:] = [I.MAX_STEPS, I.STEP_UNDERFLOW, I.MAX_STEPS, I.REACHED_END, I.CONVERGED]
    with pytest.warns(lf.flows.FlowWarning) as rec:
        lf.flows._conclude(p, out, np.zeros((5, p.arch.n_params)), False, "gradient_flow", 1.0)
    assert len(rec) == 1
    assert "3 of 5 flows" in str(rec[0].message)
    assert "2 max_steps, 1 step_underflow" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a run that ended normally: silent
        lf.gradient_flow(p, w0, t_end=0.5)
        lf.gradient_descent(p, w0, h=1e-3, n_steps=10)


def test_counts_take_integral_floats_as_the_readme_shows():
    """The README shows max_steps=1e6, which raised 'max_steps must be a whole number'."""
    p = _two_layers()
    w0 = np.ones(p.arch.n_params)
    ds = lf.gradient_flow(p, w0, t_end=0.1, max_steps=1e6)
    assert ds.attrs["max_steps"] == 1_000_000 and type(ds.attrs["max_steps"]) is int
    gd = lf.gradient_descent(p, w0, h=1e-3, n_steps=1e2, save_every=5.0)
    assert gd.attrs["n_steps"] == 100 and gd.sizes["time"] == 21
    for bad in (2.5, float("inf"), float("nan")):
        with pytest.raises(TypeError, match="max_steps must be a whole number"):
            lf.gradient_flow(p, w0, t_end=0.1, max_steps=bad)
    with pytest.raises(ValueError, match="n_steps must be >= 0"):
        lf.gradient_descent(p, w0, h=1e-3, n_steps=-1.0)
