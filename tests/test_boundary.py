"""Bad input at the Python boundary: a clear ValueError/TypeError naming the argument before any
kernel runs, never a silent inf/NaN, a crash after the run or a changed caller's array (the
cases an audit of the public API found)."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import lcnfast as lf
from lcnfast import losses


@pytest.fixture(scope="module")
def small():
    arch = lf.Architecture(8, (2, 2))
    d = lf.data.teacher(arch, m=6, noise=0.3, seed=0)
    return arch, d.X, d.Y, lf.Problem(arch, d.X, d.Y, losses.square())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: losses.Loss("weird", 99, (1.0, 0.0)), "loss code must be one of"),
        (lambda: losses.Loss("lp", "1", (4.0, 0.0)), "loss code must be one of"),
        (lambda: losses.Loss("log_cosh", 1, (4.0, 0.0)), "does not match its code"),
        (lambda: losses.Loss("lp", 1, (4.0,)), r"params must be a tuple \(p0, p1\)"),
        (lambda: losses.Loss("lp", 1, (0.0, 0.0)), "p must be a finite number >= 1"),
        (lambda: losses.Loss("pseudo_huber", 2, (-1.0, 0.0)), "delta must be between"),
        (lambda: losses.Loss("square", 0, (1.0, 0.0)), "unused parameters must be 0"),
        (lambda: dataclasses.replace(losses.log_cosh(1.0), params=(1e300, 0.0)),
         "alpha must be between"),
        # outside these ranges the loss values overflow (r / delta; log(2 + beta) / alpha):
        # pseudo_huber(5e-324).value(1.0) was inf and its derivative NaN
        (lambda: losses.pseudo_huber(5e-324), "delta must be between 1e-30 and 1e"),
        (lambda: losses.pseudo_huber(1e31), "delta must be between"),
        (lambda: losses.generalized_huber(5e-324, 0.0), "alpha must be between"),
    ],
)
def test_every_loss_is_checked_however_it_is_built(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_loss_params_of_the_wrong_type():
    with pytest.raises(TypeError, match="loss params must be real numbers"):
        losses.Loss("lp", 1, ("4", 0.0))
    with pytest.raises(TypeError, match="delta must be a real number"):
        losses.pseudo_huber(None)


def test_loss_range_ends_are_valid():
    """The range ends give finite values and derivatives (the reason for the range)."""
    for loss in (losses.pseudo_huber(1e-30), losses.pseudo_huber(1e30),
                 losses.generalized_huber(1e-30, 0.0), losses.generalized_huber(1e30, -1.0),
                 losses.log_cosh(1e-30), losses.log_cosh(1e30)):
        r = np.array([-1e10, -1.0, 0.0, 1e-300, 2.0, 1e10])
        assert np.all(np.isfinite(loss.value(r))) and np.all(np.isfinite(loss.derivative(r)))


def test_problem_copies_the_callers_data(small):
    """Problem froze the caller's float64 X in place (X[0, 0] = 1 raised), and a later change
    of a view reached problem.X but not the cached Gram: now private copies."""
    arch, X0, Y0, _ = small
    X, Y = X0.copy(), Y0.copy()
    p = lf.Problem(arch, X, Y, losses.square())
    X[0, 0] += 1.0
    Y[0, 0] += 1.0
    assert X.flags.writeable and Y.flags.writeable
    assert p.X[0, 0] == X0[0, 0] and p.Y[0, 0] == Y0[0, 0]
    assert not p.X.flags.writeable and not p.Y.flags.writeable
    assert p.loss(np.ones(arch.n_params)) == lf.Problem(arch, X0, Y0, losses.square()).loss(
        np.ones(arch.n_params))


@pytest.mark.parametrize("sx, sy", [(1e160, 1.0), (1.0, 1e160)])
def test_data_too_large_for_float64_is_refused(small, sx, sy):
    """|X| ~ 1e160: the window Gram overflowed, every loss was NaN (documented: inf, never
    NaN) and the analysis failed inside LAPACK; now a ValueError, and no numpy warning."""
    arch, X, Y, _ = small
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="too large for float64"):
            lf.Problem(arch, X * sx, Y * sy, losses.square())


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        (dict(rtol=1.0), ValueError, "rtol must be < 1"),
        (dict(rtol=10**400), ValueError, "rtol must be finite"),
        (dict(t_end=10**400), ValueError, "t_end must be finite"),
        (dict(max_steps=2**63), ValueError, r"max_steps must be <= 2\*\*62"),
        (dict(attrs={"rtol": 1.0}), ValueError, "the run writes this attribute itself"),
        (dict(attrs={"loss": "x"}), ValueError, "the run writes this attribute itself"),
        (dict(attrs={"c": 1j}), TypeError, r"attrs\['c'\] must be"),
        (dict(attrs={"a": np.ones((2, 2))}), TypeError, r"attrs\['a'\] must be"),
        (dict(attrs={"b": [[1, 2], [3]]}), TypeError, r"attrs\['b'\] must be"),
        (dict(attrs={"n": 2**70}), TypeError, r"attrs\['n'\] must be"),
        (dict(attrs={"data_sha256": "x"}), ValueError, "the run writes this attribute itself"),
        # what netCDF cannot write, or xarray does not read back the same
        (dict(attrs={"f": np.float16(1.5)}), TypeError, r"attrs\['f'\] must be"),
        (dict(attrs={"f": np.ones(2, np.float16)}), TypeError, r"attrs\['f'\] must be"),
        (dict(attrs={"f": np.longdouble(1.5)}), TypeError, r"attrs\['f'\] must be"),
        (dict(attrs={"s": "x\x00y"}), TypeError, r"attrs\['s'\] must be"),
        (dict(attrs={"a/b": 1}), ValueError, "cannot be a netCDF attribute name"),
        (dict(attrs={"": 1}), ValueError, "cannot be a netCDF attribute name"),
        (dict(attrs={"_x": 1}), ValueError, "cannot be a netCDF attribute name"),
        (dict(attrs={"coordinates": "x"}), ValueError, "cannot be a netCDF attribute name"),
    ],
)
def test_gradient_flow_arguments(small, kw, exc, match):
    p = small[3]
    kw = {"t_end": 1.0, **kw}
    with pytest.raises(exc, match=match):
        lf.gradient_flow(p, np.zeros((1, p.arch.n_params)), **kw)


def test_gradient_descent_counts(small):
    p = small[3]
    for name in ("n_steps", "save_every"):
        kw = {"h": 1e-3, "n_steps": 10, name: 2**63}
        with pytest.raises(ValueError, match=rf"{name} must be <= 2\*\*62"):
            lf.gradient_descent(p, np.zeros((1, p.arch.n_params)), **kw)


def test_user_attributes_are_kept(small):
    p = small[3]
    attrs = {"title": "mine", "seed": 3, "note": "x", "grid": [1.0, 2.0]}
    ds = lf.gradient_descent(p, np.zeros((1, p.arch.n_params)), h=1e-3, n_steps=2, attrs=attrs)
    assert ds.attrs["title"] == "mine" and ds.attrs["seed"] == 3 and ds.attrs["grid"] == [1.0, 2.0]


def test_every_accepted_user_attribute_survives_the_netcdf_round_trip(small, tmp_path):
    """attrs= refuses before the run what to_netcdf could not write or open_dataset would not
    give back the same (float16, long double, NUL in a string, '/' in a name, 'coordinates'):
    each of those was accepted and then failed or changed at to_netcdf. What it accepts
    round-trips."""
    p = small[3]
    attrs = {"f32": np.float32(1.5), "f64": np.float64(0.1), "i": np.int64(-3), "u": np.uint8(7),
             "big": 2**62, "arr": np.arange(3, dtype=np.float32), "ints": [1, 2], "uni": "δ ü",
             "Name with spaces and -+.": "ok"}
    ds = lf.gradient_descent(p, np.zeros((1, p.arch.n_params)), h=1e-3, n_steps=2, attrs=attrs)
    lf.to_netcdf(ds, tmp_path / "a.nc")
    back = lf.open_dataset(tmp_path / "a.nc")
    for key, val in attrs.items():
        assert np.array_equal(np.asarray(back.attrs[key]), np.asarray(val)), key


@pytest.mark.parametrize("method", ["rk45", "rosenbrock", "auto"])
def test_atol_zero_at_a_stationary_start_reaches_the_end(small, method):
    """w0 = 0 is a critical point (grad = 0 for N >= 2 layers); with atol = 0 (allowed) the
    error norm of RODAS and of the one-flow Dormand-Prince divided 0 by 0, rejected every
    step and ended in step_underflow at t = 0; rk45's lanes measured 0 / 0 as 0 already."""
    p = small[3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = lf.gradient_flow(p, np.zeros((2, p.arch.n_params)), method=method, t_end=1.0,
                              atol=0.0)
    assert (ds.status.values == {v: k for k, v in lf.STATUS.items()}["reached_end"]).all()
    assert (ds.t_final.values == 1.0).all() and (ds.w_final.values == 0.0).all()


def test_gradient_descent_warns_where_it_cannot_converge():
    """One layer, square loss: L is quadratic with the constant Hessian 2A, lambda_max known.
    h lambda_max = 2.5 (a few steps, still finite): one FlowWarning naming the count; 0.5:
    none (the tour's h = 1e-3 ended 270 of 4096 flows at h lambda_max >= 2, silently)."""
    arch = lf.Architecture(8, (3,))
    d = lf.data.teacher(arch, m=6, noise=0.3, seed=0)
    p = lf.Problem(arch, d.X, d.Y, losses.square())
    lam = 2.0 * np.linalg.eigvalsh(p.A)[-1]
    w0 = lf.data.initial_filters(arch, 3, seed=1)
    with pytest.warns(lf.flows.FlowWarning, match=r"3 of 3 flows end where h lambda_max"):
        ds = lf.gradient_descent(p, w0, h=2.5 / lam, n_steps=5)
    np.testing.assert_allclose(ds.h_lambda_max_final.values, 2.5, rtol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lf.gradient_descent(p, w0, h=0.5 / lam, n_steps=5)


def test_smaller_looseness(small):
    """Values numpy would convert silently: use_gram="no" meant True, np.array(["auto"]) as
    kernel or method, save_times="0.5", seed=True as the seed 1, layer_slice(-1) an empty
    slice, Loss.value(None) NaN."""
    arch, X, Y, p = small
    with pytest.raises(TypeError, match="use_gram must be True or False"):
        lf.Problem(arch, X, Y, losses.square(), use_gram="no")
    with pytest.raises(ValueError, match="kernel must be one of"):
        lf.Problem(arch, X, Y, losses.square(), kernel=np.array(["auto"]))
    w0 = np.zeros((1, arch.n_params))
    with pytest.raises(ValueError, match="method must be"):
        lf.gradient_flow(p, w0, method=np.array(["rk45"]), t_end=1.0)
    with pytest.raises(TypeError, match="save_times must be an array of numbers"):
        lf.gradient_flow(p, w0, t_end=1.0, save_times="0.5")
    with pytest.raises(TypeError, match="seed must be"):
        lf.data.initial_filters(arch, 2, seed=True)
    with pytest.raises(IndexError, match=r"layer index must be a whole number in \[0, 2\)"):
        arch.layer_slice(-1)
    with pytest.raises(IndexError):
        arch.layer_slice(2)
    assert arch.layer_slice(1) == slice(2, 4)
    with pytest.raises(TypeError, match="r must be a real number"):
        losses.square().value(None)
    assert losses.square().value(True) == 1.0 and losses.square().value([1, 2]).tolist() == [1, 4]


def test_classify_names_what_is_wrong_with_a_hand_made_dataset(small):
    """Hand-made flow Datasets gave numpy broadcast errors, JSON or Key errors from inside, or
    lost the imaginary part of a complex w_final silently (fuzz report B3)."""
    import xarray as xr

    arch, _, _, p = small
    w = lf.data.initial_filters(arch, 3, seed=1)
    wf = (("flow", "param"), w)
    cases = [
        ({"status": (("flow", "x"), np.zeros((3, 2), int))}, {}, r"ds\.status must have dims"),
        ({"status": (("other",), np.zeros(2, int))}, {}, r"ds\.status must have dims"),
        ({"max_loss_increase": (("flow",), np.array(["a", "b", "c"]))}, {},
         r"ds\.max_loss_increase must hold real numbers"),
        ({"loss_init": (("flow", "x"), np.zeros((3, 2)))}, {}, r"ds\.loss_init must have dims"),
        ({"w_init": (("flow", "param2"), w)}, {}, r"ds\.w_init must have dims"),
        ({}, {"architecture": "x"}, r"ds\.attrs\['architecture'\] is not the JSON"),
        ({}, {"loss": '{"nam": "square"}'}, r"ds\.attrs\['loss'\] is not a loss"),
        ({}, {"rtol": [1, 2]}, r"ds\.attrs\['rtol'\] must be a real number"),
    ]
    for variables, attrs, match in cases:
        with pytest.raises(ValueError, match=match):
            lf.analysis.classify(xr.Dataset({"w_final": wf, **variables}, attrs=attrs), p)
    with pytest.raises(ValueError, match=r"ds\.w_final must hold real numbers"):
        lf.analysis.classify(xr.Dataset({"w_final": (("flow", "param"), w + 0j)}), p)
    ok = xr.Dataset({"w_final": wf, "status": (("flow",), np.zeros(3, np.int8))},
                    attrs={"rtol": 1e-8})
    assert lf.analysis.classify(ok, p).sizes["flow"] == 3
