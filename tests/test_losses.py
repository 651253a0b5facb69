"""The per-coordinate losses of eq. (1.8) and section 3.3: values and derivatives against the
definitions (numpy and mpmath), finite differences, large residuals, validation, properties."""

from __future__ import annotations

import math
import warnings

import mpmath
import naive
import numpy as np
import pytest
from strategies import LOSS_SPECS, make_loss, spec_id

from lcnfast import losses

EPS = np.finfo(float).eps
EXPONENTIAL = ("generalized_huber", "log_cosh")

GRID = np.concatenate([np.linspace(-50.0, 50.0, 801), [0.37, -2.5, 1e-3, -1e-3, 0.0]])
COARSE = np.concatenate([np.linspace(-50.0, 50.0, 21), [0.37, -1.3, 0.05, -1e-3]])


def _atol(spec, order):
    """Absolute error allowed on top of the relative one.

    The two exponential losses are evaluated as |alpha r| + log1p(...) - const, so their values
    carry an absolute error of a few eps / alpha (and derivatives a few eps, eps * alpha) where
    the result is small; elsewhere 1e-40 only absorbs mpmath.diff's own limit at huge values.
    """
    name, params = spec
    if name in EXPONENTIAL:
        a = params[0]
        return 8 * EPS * (1.0 / a, 1.0, a)[order]
    return 1e-40


def _lp1_kink(spec, r):
    return spec[0] == "lp" and spec[1][0] == 1.0 and r == 0.0


# ----------------------------------------------------------------------------- vs definitions
@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_value_matches_high_precision_definition(spec):
    L = make_loss(*spec)
    ref = np.array([float(naive.loss_value_mp(*spec, x)) for x in COARSE])
    np.testing.assert_allclose(L.value(COARSE), ref, rtol=4 * EPS, atol=_atol(spec, 0))


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_value_matches_numpy_definition_on_dense_grid(spec):
    L = make_loss(*spec)
    ref = naive.loss_value(*spec, GRID)
    np.testing.assert_allclose(L.value(GRID), ref, rtol=8 * EPS, atol=_atol(spec, 0))


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_derivatives_match_high_precision_finite_differences_of_definition(spec, order):
    # mpmath.diff: finite differences of the mpmath definition at >= 60 digits
    L = make_loss(*spec)
    f = (L.derivative, L.second_derivative)[order - 1]
    pts = np.array([x for x in COARSE if not _lp1_kink(spec, x)])
    ref = np.array([float(naive.loss_derivative_mp(*spec, x, order)) for x in pts])
    np.testing.assert_allclose(f(pts), ref, rtol=1e-14, atol=_atol(spec, order))


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_derivatives_match_hand_derived_formulas_on_dense_grid(spec):
    L = make_loss(*spec)
    np.testing.assert_allclose(
        L.derivative(GRID), naive.loss_d1(*spec, GRID), rtol=1e-14, atol=_atol(spec, 1)
    )
    np.testing.assert_allclose(
        L.second_derivative(GRID), naive.loss_d2(*spec, GRID), rtol=1e-13, atol=_atol(spec, 2)
    )


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_derivatives_match_float_central_differences_of_lcnfast_value(spec):
    # internal consistency of value / derivative / second_derivative in float64
    L = make_loss(*spec)
    # lp(1) has a kink at 0: keep the differences away from it
    r = np.array([x for x in GRID if abs(x) > 1e-3 or spec != ("lp", (1.0,))])
    h = naive.fd_steps(r, 1e-6)
    d1_fd = (L.value(r + h) - L.value(r - h)) / (2 * h)
    d2_fd = (L.derivative(r + h) - L.derivative(r - h)) / (2 * h)
    # rounding error of the differences: ~eps |value| / h; truncation ~h^2 |l'''|
    tol1 = 1e-6 * (np.abs(L.derivative(r)) + np.abs(L.value(r)) / np.maximum(1, np.abs(r)) + 1)
    tol2 = 1e-6 * (np.abs(L.second_derivative(r)) + np.abs(L.derivative(r)) / np.maximum(1, np.abs(r)) + 1)
    assert np.all(np.abs(d1_fd - L.derivative(r)) <= tol1)
    assert np.all(np.abs(d2_fd - L.second_derivative(r)) <= tol2)


def test_lp1_derivative_is_zero_at_the_kink_and_second_derivative_zero():
    L = make_loss("lp", (1.0,))
    assert L.derivative(0.0) == 0.0
    np.testing.assert_array_equal(L.derivative(np.array([-3.0, 2.0])), [-1.0, 1.0])
    np.testing.assert_array_equal(L.second_derivative(np.array([-3.0, 0.0, 2.0])), 0.0)


def test_lp_below_two_has_infinite_curvature_at_zero():
    L = make_loss("lp", (1.5,))
    assert L.second_derivative(0.0) == math.inf
    assert L.second_derivative(0.25) == pytest.approx(0.5 * 0.25**-0.5, rel=1e-15)


def test_generalized_huber_with_beta_zero_is_log_cosh_plus_log2_over_alpha():
    # section 3.3: l_GH(beta=0) = l_logcosh + log(2) / alpha per coordinate
    r = np.linspace(-30, 30, 121)
    for a in (0.3, 1.0, 4.0):
        gh = losses.generalized_huber(a, 0.0)
        lc = losses.log_cosh(a)
        np.testing.assert_allclose(gh.value(r), lc.value(r) + math.log(2) / a, rtol=1e-15, atol=4 * EPS / a)
        np.testing.assert_allclose(gh.derivative(r), lc.derivative(r), rtol=1e-15, atol=4 * EPS)
        np.testing.assert_allclose(gh.second_derivative(r), lc.second_derivative(r), rtol=1e-14, atol=4 * EPS * a)


def test_square_loss_has_no_half():
    L = losses.square()
    assert L.value(3.0) == 9.0 and L.derivative(3.0) == 6.0 and L.second_derivative(3.0) == 2.0
    assert losses.lp(2).value(3.0) == 4.5


# ----------------------------------------------------------------------------- large residuals
LARGE = np.array([1e2, 1e3, 1e4, 1e5, 1e6])
LARGE = np.concatenate([-LARGE[::-1], LARGE])
ALPHAS_LARGE = (0.3, 1.0, 4.0, 10.0)


@pytest.mark.parametrize("alpha", ALPHAS_LARGE)
def test_log_cosh_large_residuals_follow_abs_minus_log2_over_alpha(alpha):
    L = losses.log_cosh(alpha)
    r = LARGE  # alpha |r| >= 30: corrections below e^{-60}
    with np.errstate(all="raise"):
        v, d1, d2 = L.value(r), L.derivative(r), L.second_derivative(r)
    np.testing.assert_allclose(v, np.abs(r) - math.log(2) / alpha, rtol=2 * EPS)
    np.testing.assert_array_equal(d1, np.sign(r))
    # l'' = alpha sech^2 = 4 alpha e^{-2 alpha |r|} (1 + O(e^{-2 alpha |r|}))
    np.testing.assert_allclose(d2, 4 * alpha * np.exp(-2 * alpha * np.abs(r)), rtol=1e-14, atol=0)


@pytest.mark.parametrize("beta", [-1.5, -0.5, 0.0, 1.0, 3.0])
@pytest.mark.parametrize("alpha", ALPHAS_LARGE)
def test_generalized_huber_large_residuals_follow_abs_r(alpha, beta):
    L = losses.generalized_huber(alpha, beta)
    r = LARGE
    a = alpha * np.abs(r)
    e = np.exp(-a)
    with np.errstate(all="raise"):
        v, d1, d2 = L.value(r), L.derivative(r), L.second_derivative(r)
    # log(e^a + e^-a + beta) / alpha = |r| + (beta e^-a + O(e^-2a)) / alpha
    np.testing.assert_allclose(v, np.abs(r) + beta * e / alpha, rtol=2 * EPS)
    np.testing.assert_allclose(d1, np.sign(r) * (1 - beta * e), rtol=2 * EPS)
    # l'' = alpha (4 e^-2a + beta e^-a (1 + e^-2a)) / (1 + e^-2a + beta e^-a)^2
    lead = alpha * (beta * e + (4 - 2 * beta**2) * e * e)
    np.testing.assert_allclose(d2, lead, rtol=1e-12, atol=0)


@pytest.mark.parametrize("delta", [0.3, 1.0, 4.0])
def test_pseudo_huber_large_residuals_match_high_precision_definition(delta):
    L = losses.pseudo_huber(delta)
    r = LARGE
    with np.errstate(all="raise"):
        v, d1, d2 = L.value(r), L.derivative(r), L.second_derivative(r)
    with mpmath.workdps(50):
        d = mpmath.mpf(delta)
        ref_v = [float(d * mpmath.sqrt(1 + mpmath.mpf(x) ** 2 / d**2)) for x in r]
        ref_d1 = [float(mpmath.mpf(x) / mpmath.sqrt(d**2 + mpmath.mpf(x) ** 2)) for x in r]
        ref_d2 = [float(d**2 / (d**2 + mpmath.mpf(x) ** 2) ** 1.5) for x in r]
    np.testing.assert_allclose(v, ref_v, rtol=2 * EPS)
    np.testing.assert_allclose(d1, ref_d1, rtol=2 * EPS)
    np.testing.assert_allclose(d2, ref_d2, rtol=8 * EPS)
    # and the asymptotic form |r| + delta^2 / (2 |r|)
    np.testing.assert_allclose(v - np.abs(r), delta**2 / (2 * np.abs(r)), rtol=1e-2)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, 4.0, 6.0])
def test_lp_large_residuals_finite_and_exact(p):
    L = make_loss("lp", (p,))
    r = LARGE
    with np.errstate(all="raise"):
        v, d1, d2 = L.value(r), L.derivative(r), L.second_derivative(r)
    np.testing.assert_allclose(v, np.abs(r) ** p / p, rtol=4 * EPS)
    np.testing.assert_allclose(d1, np.sign(r) * np.abs(r) ** (p - 1), rtol=4 * EPS)
    np.testing.assert_allclose(d2, 0.0 if p == 1 else (p - 1) * np.abs(r) ** (p - 2), rtol=4 * EPS)


@pytest.mark.parametrize("spec", LOSS_SPECS + [("log_cosh", (10.0,)), ("generalized_huber", (10.0, -1.9))], ids=spec_id)
def test_all_values_and_derivatives_finite_up_to_1e6(spec):
    L = make_loss(*spec)
    r = np.concatenate([LARGE, [-1e6, 1e6, 0.0]])
    for f in (L.value, L.derivative, L.second_derivative):
        with np.errstate(all="raise"):
            out = f(r)
        assert np.all(np.isfinite(out)), (f.__name__, out)


def test_high_precision_reference_agrees_at_1e6_for_exponential_losses():
    # mpmath has an unbounded exponent range, so the definition itself can be evaluated
    for spec in [("log_cosh", (10.0,)), ("generalized_huber", (10.0, -1.5)), ("generalized_huber", (0.3, 3.0))]:
        L = make_loss(*spec)
        for r in (-1e6, -1234.5, 1e6):
            assert L.value(r) == pytest.approx(float(naive.loss_value_mp(*spec, r)), rel=2 * EPS)


# ----------------------------------------------------------------------------- shapes
def test_elementwise_evaluation_keeps_shape_and_scalars_give_float():
    L = losses.log_cosh(1.0)
    assert isinstance(L.value(0.5), float)
    r = np.linspace(-2, 2, 12).reshape(3, 4)
    for f in (L.value, L.derivative, L.second_derivative):
        out = f(r)
        assert out.shape == (3, 4)
        np.testing.assert_array_equal(out.ravel(), f(r.ravel()))
    np.testing.assert_array_equal(L.value([0.5, -1.0]), L.value(np.array([0.5, -1.0])))
    np.testing.assert_array_equal(L.value(r[:, ::2]), L.value(np.ascontiguousarray(r[:, ::2])))


def test_elementwise_evaluation_of_transposed_array():
    L = losses.square()
    r = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(L.value(r.T), (r**2).T)
    np.testing.assert_array_equal(L.derivative(np.asfortranarray(r)), 2 * r)


# ----------------------------------------------------------------------------- accuracy near 0
def test_log_cosh_value_relatively_accurate_for_small_residuals():
    L = losses.log_cosh(1.0)
    r = np.array([1e-8, 1e-6, 1e-4])
    with mpmath.workdps(50):
        ref = np.array([float(mpmath.log(mpmath.cosh(mpmath.mpf(x)))) for x in r])
    np.testing.assert_allclose(L.value(r), ref, rtol=1e-12)


def test_generalized_huber_derivative_relatively_accurate_for_small_residuals():
    L = losses.generalized_huber(1.0, 1.0)
    r = np.array([1e-10, 1e-8, 1e-6])
    ref = np.array([float(naive.loss_derivative_mp("generalized_huber", (1.0, 1.0), x, 1)) for x in r])
    np.testing.assert_allclose(L.derivative(r), ref, rtol=1e-12)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "ctor, args",
    [
        (losses.lp, (0.5,)), (losses.lp, (0,)), (losses.lp, (-2,)), (losses.lp, (math.inf,)),
        (losses.lp, (math.nan,)),
        (losses.pseudo_huber, (0,)), (losses.pseudo_huber, (-1.0,)), (losses.pseudo_huber, (math.inf,)),
        (losses.generalized_huber, (0, 1.0)), (losses.generalized_huber, (-1, 1.0)),
        (losses.generalized_huber, (1.0, -2.0)), (losses.generalized_huber, (1.0, -3.0)),
        (losses.generalized_huber, (1.0, math.nan)), (losses.generalized_huber, (1.0, math.inf)),
        (losses.log_cosh, (0,)), (losses.log_cosh, (-0.1,)), (losses.log_cosh, (math.nan,)),
        (losses.log_cosh, (0.5e-30,)), (losses.log_cosh, (2e30,)),
    ],
)
def test_out_of_range_parameters_raise_value_error(ctor, args):
    with pytest.raises(ValueError):
        ctor(*args)


@pytest.mark.parametrize("p", [0, 0.5, -2, math.inf, math.nan])
def test_lp_states_its_true_limit(p):
    """lp(0) said 'p must be a finite number > 0' although the limit is p >= 1."""
    with pytest.raises(ValueError, match=r"^p must be a finite number >= 1, got"):
        losses.lp(p)


@pytest.mark.parametrize(
    "ctor, args, name",
    [
        (losses.lp, ("2",), "p"), (losses.lp, (None,), "p"), (losses.lp, (True,), "p"),
        (losses.pseudo_huber, ("1",), "delta"), (losses.pseudo_huber, ([1.0],), "delta"),
        (losses.generalized_huber, ("1", 0.0), "alpha"), (losses.generalized_huber, (1.0, "0"), "beta"),
        (losses.generalized_huber, (1.0, None), "beta"),
        (losses.log_cosh, (1j,), "alpha"), (losses.log_cosh, ("x",), "alpha"),
    ],
)
def test_non_number_parameters_raise_type_error_naming_parameter(ctor, args, name):
    with pytest.raises(TypeError, match=rf"\b{name}\b"):
        ctor(*args)


@pytest.mark.parametrize("p", [1, 3, 5, 1.5, 2.5, 4.2])
def test_odd_or_non_integer_p_warns_about_theorem_3_8(p):
    with pytest.warns(UserWarning, match=r"Theorem 3\.8"):
        L = losses.lp(p)
    assert L.analytic is False


@pytest.mark.parametrize("p", [2, 4, 6, 8.0])
def test_even_p_does_not_warn(p):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = losses.lp(p)
    assert L.analytic is True


# ----------------------------------------------------------------------------- properties
@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_convex_property_agrees_with_sign_of_second_derivative(spec):
    L = make_loss(*spec)
    expected = not (spec[0] == "generalized_huber" and spec[1][1] < 0)
    assert L.convex is expected
    # numerically: l'' >= 0 on the grid iff convex (for beta < 0, l'' < 0 for large |r|)
    assert bool(np.all(naive.loss_d2(*spec, GRID) >= 0)) is expected
    assert bool(np.all(L.second_derivative(GRID) >= 0)) is expected


def test_generalized_huber_convex_exactly_for_nonnegative_beta():
    assert losses.generalized_huber(1.0, 0.0).convex is True
    assert losses.generalized_huber(1.0, 1e-12).convex is True
    assert losses.generalized_huber(1.0, -1e-12).convex is False
    assert losses.generalized_huber(1.0, -1.99).convex is False


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_analytic_property_false_only_for_lp_with_odd_or_fractional_p(spec):
    L = make_loss(*spec)
    if spec[0] == "lp":
        assert L.analytic is (spec[1][0] % 2 == 0)
    else:
        assert L.analytic is True


@pytest.mark.parametrize("spec", LOSS_SPECS, ids=spec_id)
def test_param_dict_round_trips_through_from_dict(spec):
    L = make_loss(*spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        again = losses.from_dict({"name": L.name, **L.param_dict})
    assert again == L
    assert tuple(L.param_dict.values()) == tuple(float(x) for x in spec[1])
    assert L.name in repr(L)


def test_a_loss_built_from_numpy_scalars_holds_python_floats():
    """Loss("lp", LP, (np.float32(4), 0.0)) passed the checks, ran its flows, and then the
    run failed writing the Dataset's JSON attributes ("float32 is not JSON serializable"):
    the parameters are Python floats (and the code an int) however the Loss is built."""
    import json

    built = [losses.Loss("lp", losses.LP, (np.float32(4.0), 0.0)),
             losses.Loss("log_cosh", np.int64(losses.LOG_COSH), (np.int64(2), np.float64(0))),
             losses.Loss("pseudo_huber", losses.PSEUDO_HUBER, (np.float16(0.5), 0))]
    for loss, same in zip(built, (losses.lp(4), losses.log_cosh(2.0), losses.pseudo_huber(0.5))):
        assert all(type(v) is float for v in loss.params) and type(loss.code) is int
        assert loss == same and hash(loss) == hash(same)
        json.dumps(loss.param_dict)


def test_log_cosh_alpha_range_is_checked_with_its_bounds():
    for a in (losses.ALPHA_MIN, losses.ALPHA_MAX):
        assert losses.log_cosh(a).params[0] == a
    with pytest.raises(ValueError, match="alpha must be between 1e-30 and 1e\\+30"):
        losses.log_cosh(1e31)


@pytest.mark.parametrize("alpha", [1.0, 0.37, 3.0, losses.ALPHA_MIN, losses.ALPHA_MAX])
def test_vectorised_tanh_of_the_data_path_within_4_ulp(alpha):
    """g = tanh(alpha (z - y)) of the log-cosh data path (vectorised, FMA-contracted) against
    mpmath's tanh of the rounded alpha (z - y), over the range reduction's regimes, at the
    ends of the alpha range too (the coefficients carry powers of alpha up to alpha^5); the
    samples run through both the 8-wide body and the tail of the quotient (lcnfast._simd: with
    AVX-512 within one ulp of the division; measured at most 3 ulp either way). Where |x| is
    at most 350 (the clamp), the loop without the clamp gives the same bits."""
    from lcnfast import _data_path

    rng = np.random.default_rng(7)
    k = np.arange(-60, 61)
    d = np.concatenate([
        rng.uniform(-25, 25, 4000), rng.uniform(-1, 1, 4000), rng.uniform(-1e-3, 1e-3, 1000),
        np.exp(rng.uniform(-700, 4, 2000)) * rng.choice([-1.0, 1.0], 2000),
        rng.uniform(18, 22, 1000), np.repeat(k * math.log(2) / 4, 8) * (1 + rng.uniform(-1e-15, 1e-15, 8 * k.size)),
        rng.uniform(20, 360, 1000) * rng.choice([-1.0, 1.0], 1000), [350.0, -350.0, 351.0],
    ]) / alpha
    g = np.empty_like(d)
    _data_path._lc_tanh(alpha, d, np.zeros_like(d), g, np.empty_like(d), d.size, False)
    x = alpha * d
    ref = np.array([float(mpmath.tanh(mpmath.mpf(float(v)))) for v in x])
    ulp = np.abs(g - ref) / np.spacing(np.abs(ref))
    assert ulp.max() <= 4, (ulp.max(), x[ulp.argmax()])
    inside = d[np.abs(d) <= losses._TANH_X_MAX / alpha]
    assert inside.size > 0.99 * d.size
    g_in = np.empty_like(inside)
    _data_path._lc_tanh(alpha, inside, np.zeros_like(inside), g_in, np.empty_like(inside),
                         inside.size, True)
    np.testing.assert_array_equal(g_in, g[np.abs(d) <= losses._TANH_X_MAX / alpha])
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300])
    gs = np.empty_like(special)
    _data_path._lc_tanh(alpha, special, np.zeros_like(special), gs, np.empty_like(special),
                         special.size, False)
    np.testing.assert_array_equal(gs, [0.0, -0.0, 1.0, -1.0, np.nan, 1.0, -1.0])
    assert not np.signbit(gs[0]) and np.signbit(gs[1])


def test_log_cosh_data_path_skips_the_tanh_clamp_only_when_its_residual_bound_allows():
    """_tanh_in_range: |r| <= (sum |v| max|X| + max|Y|) (1 + 2^-20) against the clamp
    350 / alpha; False for a filter that is not finite. With the loss, the tanh's numerator
    and denominator are the same bits either way (in range)."""
    from lcnfast import _data_path

    v = np.array([2.0, -3.0, 0.5])  # sum |v| = 5.5
    # bound (5.5 * 10 + 5) (1 + 2^-20) = 60 (1 + 2^-20) against 350 / alpha
    assert _data_path._tanh_in_range(v, 3, 10.0, 5.0, 350.0 / 60.0 / (1 + 2.0**-19))
    assert not _data_path._tanh_in_range(v, 3, 10.0, 5.0, 350.0 / 60.0)
    assert not _data_path._tanh_in_range(v, 3, 1e300, 5.0, 1.0)  # overflows to inf
    assert _data_path._tanh_in_range(v, 2, 10.0, 5.0, 6.0)  # only the first kv taps count
    for bad in (np.nan, np.inf):
        assert not _data_path._tanh_in_range(np.array([bad, 0.0, 0.0]), 3, 1.0, 1.0, 1.0)
    rng = np.random.default_rng(2)
    z = rng.uniform(-270, 270, 1500)  # |z - y| < 310 < 350 / 1.1
    y = rng.uniform(-40, 40, 1500)
    parts = [[np.empty(1500) for _ in range(3)] for _ in range(2)]
    for in_range, (aa, num, den) in zip((False, True), parts):
        _data_path._lc_prep_nd(1.1, z, y, aa, num, den, 1500, in_range)
    for a, b in zip(*parts):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("beta", [-1.999, -1.9999999])
def test_generalized_huber_keeps_its_digits_as_beta_nears_minus_2(beta):
    """Claim: with 1 + e^2 + beta e written (1 - e)^2 + (2 + beta) e (two non-negative terms;
    losses._gh_den), value, l' and l'' stay within 1e-13 relative of a 60-digit reference
    (a few roundings of eps each, and no cancellation; l'' is a difference of two terms that
    can vanish where l'' changes sign, so it is compared where |l''| > 1e-3 of its scale).
    The former 1 + e^2 + beta e lost up to ~7 digits here."""
    L = losses.generalized_huber(1.0, beta)
    spec = ("generalized_huber", (1.0, beta))
    r = np.array([-3.0, -0.7, -0.01, 1e-5, 0.3, 1.0, 2.5])
    val = np.array([float(naive.loss_value_mp(*spec, x)) for x in r])
    d1 = np.array([float(naive.loss_derivative_mp(*spec, x, 1)) for x in r])
    d2 = np.array([float(naive.loss_derivative_mp(*spec, x, 2)) for x in r])
    np.testing.assert_allclose(L.value(r), val, rtol=1e-13)
    np.testing.assert_allclose(L.derivative(r), d1, rtol=1e-13)
    big = np.abs(d2) > 1e-3 * np.abs(d2).max()
    np.testing.assert_allclose(L.second_derivative(r)[big], d2[big], rtol=1e-13)
