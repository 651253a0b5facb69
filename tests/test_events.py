"""First passage times of loss levels (``loss_levels`` -> ``t_below``) for every method, and
gradient descent's ``h_lambda_max_final``."""

import warnings

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import lcnfast as lf
from lcnfast import _integrate as I
from lcnfast.losses import log_cosh, square

ARCH = (12, (3, 2, 2), (1, 1, 1))


def make_problem(loss, m=12, seed=0):
    arch = lf.Architecture(*ARCH)
    td = lf.data.teacher(arch, m, noise=0.1, seed=seed)
    return lf.Problem(arch, td.X, td.Y, loss)


def _levels(p, w0, t_ref):
    """Levels between the starting losses and the losses reached at t_ref (all crossed),
    plus one above every start (t_below = 0) and one below every limit (NaN)."""
    L0 = p.loss(w0)
    return np.array([2.0 * L0.max(), 0.9 * L0.min(), 0.5 * L0.min(), 0.2 * L0.min(), 1e-30])


def _reference_times(p, w, levels, t_end):
    """First passage times of one flow by scipy's DOP853 with events at rtol 1e-13."""
    n = w.size
    events = []
    for lev in levels:
        def ev(t, y, lev=lev):
            return p.loss(y) - lev
        ev.terminal = False
        ev.direction = -1
        events.append(ev)
    sol = solve_ivp(lambda t, y: -p.grad(y), (0.0, t_end), w, method="DOP853", rtol=1e-13,
                    atol=1e-15, events=events)
    assert sol.success and sol.y.shape[0] == n
    out = np.full(len(levels), np.nan)
    for q, lev in enumerate(levels):
        if p.loss(w) <= lev:
            out[q] = 0.0
        elif sol.t_events[q].size:
            out[q] = sol.t_events[q][0]
    return out


LOSSES = {"square": square(), "log_cosh": log_cosh(2.0)}
_REF = {}


def _case(loss_name):
    """Problem, flows, levels and scipy's first passage times (computed once per loss)."""
    if loss_name not in _REF:
        p = make_problem(LOSSES[loss_name])
        w0 = lf.data.initial_filters(p.arch, 3, scale=0.8, seed=2)
        levels = _levels(p, w0, T_EVENTS)
        ref = np.array([_reference_times(p, w, levels, T_EVENTS) for w in w0])
        _REF[loss_name] = (p, w0, levels, ref)
    return _REF[loss_name]


T_EVENTS = 1.5  # the levels below are crossed at t = 0.02 .. 0.5


@pytest.mark.parametrize("method", ["rk45", "rosenbrock", "auto"])
@pytest.mark.parametrize("loss_name", list(LOSSES))
def test_t_below_matches_scipy_events(method, loss_name):
    p, w0, levels, ref_all = _case(loss_name)
    t_end = T_EVENTS
    kw = dict(t_end=t_end, rtol=1e-10, atol=1e-12, method=method)
    ds = lf.gradient_flow(p, w0, loss_levels=levels, **kw)
    assert ds.t_below.dims == ("flow", "loss_level")
    np.testing.assert_array_equal(ds.loss_level.values, levels)
    tb = ds.t_below.values
    assert np.all(tb[:, 0] == 0.0) and np.all(np.isnan(tb[:, -1]))
    for f in range(w0.shape[0]):
        ref = ref_all[f]
        np.testing.assert_array_equal(np.isnan(tb[f]), np.isnan(ref))
        # crossing times are O(0.01 .. 1); the dense output at rtol 1e-10 and the root to
        # ~1e-13 of the step: measured within 2e-12 .. 4e-11 of scipy's (3e-9 at rtol 1e-8)
        np.testing.assert_allclose(tb[f], ref, rtol=0, atol=1e-9, equal_nan=True)
    # the loss at t_below is the level (to the trajectory's accuracy) and t_below is the
    # first passage: monotone in the level
    ok = np.isfinite(tb[:, 1:-1])
    assert ok.all()
    assert np.all(np.diff(tb[:, :-1], axis=1) >= 0)
    # the same steps as without levels: only the evaluations spent locating differ
    plain = lf.gradient_flow(p, w0, **kw)
    assert "t_below" not in plain and "loss_level" not in plain.coords
    for name in ("w_final", "w", "loss", "t_final", "n_accepted", "n_rejected", "status"):
        assert np.array_equal(plain[name].values, ds[name].values, equal_nan=True), name
    assert np.all(ds.n_grad_evals.values > plain.n_grad_evals.values)


def test_t_below_of_gradient_descent_is_exact_for_the_iterates():
    p = make_problem(square())
    w0 = lf.data.initial_filters(p.arch, 5, scale=0.8, seed=4)
    h, n_steps = 2e-3, 400
    full = lf.gradient_descent(p, w0, h=h, n_steps=n_steps, save_every=1)
    L = full.loss.values  # every iterate's loss, as the kernel computed it
    levels = np.array([np.inf, 0.7, 0.3, 0.1, 0.05, -1.0]) * L[:, 0].min()
    levels[0] = 10 * L.max()
    ds = lf.gradient_descent(p, w0, h=h, n_steps=n_steps, save_every=1, loss_levels=levels)
    for f in range(w0.shape[0]):
        for q, lev in enumerate(levels):
            hit = np.flatnonzero(L[f] <= lev)
            want = hit[0] * h if hit.size else np.nan
            assert np.array_equal(ds.t_below.values[f, q], want, equal_nan=True), (f, q)
    # and against a plain Python loop (levels far from every iterate's loss)
    w = w0.copy()
    first = np.full((w0.shape[0], levels.size), np.nan)
    for j in range(n_steps + 1):
        Lj = p.loss(w)
        for q, lev in enumerate(levels):
            new = np.isnan(first[:, q]) & (Lj <= lev)
            first[new, q] = j * h
        w = w - h * p.grad(w)
    np.testing.assert_array_equal(ds.t_below.values, first)
    for name in ("w_final", "loss", "n_grad_evals", "t_final"):  # nothing else changes
        assert np.array_equal(full[name].values, ds[name].values, equal_nan=True), name


def test_levels_not_reached_before_a_stop_are_nan():
    p = make_problem(square())
    w0 = lf.data.initial_filters(p.arch, 3, scale=0.8, seed=5)
    L0 = p.loss(w0)
    levels = [0.99 * L0.min(), 1e-3 * L0.min()]
    for method in ("rk45", "rosenbrock", "auto"):
        ds = lf.gradient_flow(p, w0, t_end=50.0, max_steps=8, method=method,
                              loss_levels=levels)
        assert np.all(ds.status.values == I.MAX_STEPS)
        tb = ds.t_below.values
        assert np.all(np.isnan(tb) | (tb <= ds.t_final.values[:, None]))
        # a level is reached iff the final loss is at or below it
        np.testing.assert_array_equal(
            np.isfinite(tb), ds.loss_final.values[:, None] <= np.array(levels)[None, :])
    ds = lf.gradient_descent(p, w0, h=1e-3, n_steps=3, loss_levels=levels)
    np.testing.assert_array_equal(
        np.isfinite(ds.t_below.values), ds.loss_final.values[:, None] <= np.array(levels))


def test_t_below_is_bitwise_invariant_over_batches_and_threads():
    import numba

    p = make_problem(log_cosh(1.5), m=8)
    w0 = lf.data.initial_filters(p.arch, 13, scale=0.8, seed=12)
    levels = 0.5 * p.loss(w0)
    for method in ("rk45", "auto"):
        kw = dict(t_end=3.0, method=method, loss_levels=levels)
        one = lf.gradient_flow(p, w0, n_threads=1, **kw)
        two = lf.gradient_flow(p, w0[::-1], n_threads=numba.config.NUMBA_NUM_THREADS, **kw)
        alone = lf.gradient_flow(p, w0[7:8], n_threads=1, **kw)
        assert np.array_equal(one.t_below.values, two.t_below.values[::-1], equal_nan=True)
        assert np.array_equal(alone.t_below.values[0], one.t_below.values[7], equal_nan=True)


@pytest.mark.parametrize(
    "bad",
    [[[1.0, 2.0]], [np.nan], [1.0, np.inf], ["a"], [True, False], 1.0, "0.5", [1 + 2j]],
    ids=repr,
)
def test_bad_loss_levels_raise_value_errors_naming_the_argument(bad):
    p = make_problem(square())
    w0 = lf.data.initial_filters(p.arch, 2, seed=1)
    with pytest.raises(ValueError, match="loss_levels"):
        lf.gradient_flow(p, w0, t_end=1.0, loss_levels=bad)
    with pytest.raises(ValueError, match="loss_levels"):
        lf.gradient_descent(p, w0, h=1e-3, n_steps=2, loss_levels=bad)


def test_t_below_survives_a_netcdf_round_trip(tmp_path):
    p = make_problem(square())
    w0 = lf.data.initial_filters(p.arch, 3, seed=1)
    ds = lf.gradient_flow(p, w0, t_end=1.0, loss_levels=[0.5 * p.loss(w0).min()])
    lf.io.to_netcdf(ds, tmp_path / "a.nc")
    back = lf.io.open_dataset(tmp_path / "a.nc")
    np.testing.assert_array_equal(back.t_below.values, ds.t_below.values)
    np.testing.assert_array_equal(back.loss_level.values, ds.loss_level.values)


# ----------------------------------------------------------------------------- h lambda_max
def test_gradient_descent_reports_h_lambda_max_at_its_end_point():
    p = make_problem(square())
    w0 = lf.data.initial_filters(p.arch, 4, scale=0.8, seed=3)
    h = 5e-3
    ds = lf.gradient_descent(p, w0, h=h, n_steps=300)
    direct = h * np.array([np.linalg.eigvalsh(p.hessian(w)).max() for w in ds.w_final.values])
    np.testing.assert_allclose(ds.h_lambda_max_final.values, direct, rtol=1e-12)
    assert "< 2" in ds.h_lambda_max_final.attrs["long_name"]
    # a step above 2 / lambda_max of the end point is reported >= 2
    lam = np.linalg.eigvalsh(p.hessian(ds.w_final.values)).max(axis=1)
    big = lf.gradient_descent(p, ds.w_final.values, h=2.5 / lam.max(), n_steps=0)
    assert big.h_lambda_max_final.values[np.argmax(lam)] == pytest.approx(2.5, rel=1e-12)
    # non-finite end points: NaN
    w_bad = w0.copy()
    w_bad[0] = 1e200  # the loss overflows at once: status non_finite, w_final = w_bad[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = lf.gradient_descent(p, w_bad, h=1e-3, n_steps=3)
    assert np.isnan(bad.h_lambda_max_final.values[0])
    np.testing.assert_allclose(bad.h_lambda_max_final.values[1:],
                               1e-3 * np.linalg.eigvalsh(p.hessian(bad.w_final.values[1:]))
                               .max(axis=1), rtol=1e-12)
