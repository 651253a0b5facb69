"""lcnfast._loss_rows: the data path's vectorised square, l_p (integer p), pseudo-Huber and
generalized Huber rows against libm's per-element l' and l (lcnfast.losses.loss_d1 and
loss_value, via _scalar_row) or, for the generalized Huber loss, mpmath; and the Hessian's
l'' rows (lcnfast._data_hessian) against libm's (log-cosh, l_p, pseudo-Huber) or mpmath
(generalized Huber)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcnfast import _loss_rows as rows
from lcnfast.losses import GENERALIZED_HUBER, LP, PSEUDO_HUBER, SQUARE

_residuals = st.lists(
    st.one_of(st.floats(-30.0, 30.0), st.floats(-1e-300, 1e-300), st.sampled_from([0.0, -0.0])),
    min_size=1, max_size=60)


def _rows(code, p0, p1, z):
    """(g, L) of loss_row and of _scalar_row on residuals z (y = 0), and loss_row's g without
    the loss."""
    n = z.size
    y = np.zeros(n)
    g, g_no_loss, g_ref = np.empty(n), np.empty(n), np.empty(n)
    L = rows.loss_row(code, p0, p1, z, y, g, n, 0.0, True)
    assert rows.loss_row(code, p0, p1, z, y, g_no_loss, n, 0.5, False) == 0.5
    L_ref = rows._scalar_row(code, p0, p1, z, y, g_ref, n, 0.0, True)
    np.testing.assert_array_equal(g, g_no_loss)  # g does not depend on whether L is wanted
    return g, L, g_ref, L_ref


def _ulps(got, ref):
    return np.abs(got - ref) / np.spacing(np.abs(ref))


def _eps_rel(got, ref):
    """|got - ref| / |ref| in units of eps = 2^-52: what an error analysis bounds (one ulp of
    ref is between eps / 2 and eps relative, so this is up to 2x below _ulps)."""
    return np.abs(got - ref) / (np.abs(ref) * np.finfo(float).eps)


@settings(max_examples=60, deadline=None)
@given(_residuals)
def test_square_row_gives_the_bits_of_2r_and_the_sum_of_squares(zs):
    """Claim: g = 2 r, bitwise libm's loss_d1 (one rounding of z - y, an exact doubling); the
    loss sum of r^2 (vectorised, so reordered) within 1e-13 relative of the in-order sum (at
    most 60 positive terms, each rounded once)."""
    z = np.array(zs)
    g, L, g_ref, L_ref = _rows(SQUARE, 0.0, 0.0, z)
    np.testing.assert_array_equal(g, g_ref)
    assert abs(L - L_ref) <= 1e-13 * L_ref


@settings(max_examples=60, deadline=None)
@given(_residuals, st.sampled_from([2, 3, 4, 6, 8, 10, 16, 33, 64]))
def test_lp_row_with_integer_p_is_within_2_p_ulp_of_pow(zs, p):
    """Claim: |r|^(p-1) by repeated squaring has relative error at most ~2 (p - 1) eps (each
    squaring doubles the error of x^(2^j) and adds a rounding, each product adds one; the test
    allows 2 (p - 1) + 1 ulp); the loss sum (|g| |r| / p, vectorised) within 1e-13 relative
    of the in-order sum of pow(|r|, p) / p (at most 60 positive terms of a few ulp each)."""
    z = np.array(zs)
    g, L, g_ref, L_ref = _rows(LP, float(p), 0.0, z)
    nz = g_ref != 0
    assert _ulps(g[nz], g_ref[nz]).max(initial=0) <= 2 * (p - 1) + 1
    assert (g[~nz] == 0).all()
    assert abs(L - L_ref) <= 1e-13 * L_ref


@settings(max_examples=60, deadline=None)
@given(_residuals, st.floats(1e-3, 1e3))
def test_pseudo_huber_row_is_within_4_ulp_of_hypot(zs, delta):
    """Claim: l'(r) = copysign(v, u) / sqrt(1 + (v / w)^2) (v = min(|u|, 1), w = max(|u|, 1),
    u = r / delta, taken as r times 1 / delta) rounds at most six times, each within half an
    ulp, against libm's u / hypot(1, u): within 4 ulp; the loss delta hypot(1, u) summed
    within 1e-13 relative."""
    z = np.array(zs)
    g, L, g_ref, L_ref = _rows(PSEUDO_HUBER, delta, 0.0, z)
    nz = g_ref != 0
    assert _ulps(g[nz], g_ref[nz]).max(initial=0) <= 4
    assert (g[~nz] == 0).all()
    assert abs(L - L_ref) <= 1e-13 * L_ref


@pytest.mark.parametrize("code, p0", [(SQUARE, 0.0), (LP, 4.0), (PSEUDO_HUBER, 0.5)])
def test_vectorised_rows_propagate_nan_and_keep_huge_residuals_finite_in_g(code, p0):
    """NaN in a residual gives NaN in its g and in the loss; at |r| = 1e200 the square and l_p
    losses overflow to inf as libm's do (the square g stays finite, 2r), the pseudo-Huber g is
    +-1 (libm: the same), its loss finite."""
    z = np.array([1.0, np.nan, -2.0, 1e200, -1e200, 0.25, 3.0, -0.5, 1.5])
    g, L, g_ref, _ = _rows(code, p0, 0.0, z)
    assert np.isnan(g[1]) and np.isnan(L)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(g_ref))
    np.testing.assert_array_equal(g[3:5], g_ref[3:5])
    _, L_fin, _, L_fin_ref = _rows(code, p0, 0.0, np.delete(z, 1))
    assert np.isfinite(L_fin) == np.isfinite(L_fin_ref)


def test_other_p_and_losses_take_the_per_element_path():
    """p outside the integers 2..64, and the generalized Huber loss with alpha outside
    [2e-30, 2e30] (its vectorised row takes the tanh's constants of alpha / 2), give
    _scalar_row's bits."""
    assert rows.lp_is_vectorised(2.0) and rows.lp_is_vectorised(64.0)
    assert not any(rows.lp_is_vectorised(p) for p in (1.0, 1.5, 2.5, 65.0, 66.0))
    z = np.linspace(-3, 3, 23)
    for code, p0, p1 in [(LP, 1.0, 0.0), (LP, 2.5, 0.0), (LP, 66.0, 0.0),
                         (GENERALIZED_HUBER, 1e-31, 0.4), (GENERALIZED_HUBER, 1e31, 0.4)]:
        g, L, g_ref, L_ref = _rows(code, p0, p1, z)
        np.testing.assert_array_equal(g, g_ref)
        assert L == L_ref


def _gen_huber_d1_mpmath(alpha, beta, r):
    """l'(r) of the generalized Huber loss in 40 digits: sign(r) (1 - E^2) / ((1 - E)^2 +
    (2 + beta) E), E = e^(-alpha |r|) (1 - E^2 by expm1, so tiny residuals keep their digits)."""
    import mpmath

    with mpmath.workdps(40):
        x = mpmath.mpf(alpha) * abs(mpmath.mpf(float(r)))
        e = mpmath.exp(-x)
        val = -mpmath.expm1(-2 * x) / ((1 - e) ** 2 + (2 + mpmath.mpf(beta)) * e)
        return float(mpmath.sign(r) * val)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-40.0, 40.0), st.floats(-1e-300, 1e-300)), min_size=1,
                max_size=30),
       st.sampled_from([1.0, 0.3, 2.5, 1e-20, 1e20]),
       st.sampled_from([0.0, 1.0, 50.0, 1e8, -1.0, -1.9, -1.999, -1.9999999]))
def test_generalized_huber_row_is_within_its_error_bound_of_mpmath(zs, alpha, beta):
    """Claim: l' from the tanh's range reduction and rational (1/20 ulp), S = 2^-k exact, and
    F1 F2 / (F1^2 + (2 + beta) S M P) with about a dozen roundings of at most half an ulp and
    no cancellation (every term of the denominator non-negative): within 6 + w a / 2 ulp of
    mpmath (a = alpha |r|) for every beta > -2 where a and l' are normal numbers. The second
    term: the reduced argument carries an absolute error of about a / 2 ulp(1) (k times
    ln2 / alpha rounded, k ~ a / ln2), and l' has relative condition ~a times w, the share of
    beta e^-a in the denominator (at most 1; l' ~ e^a / beta where it dominates). Seen:
    alpha = 2.5, r = 4, beta = 1e8: 7 ulp; 4 at most elsewhere."""
    z = np.array(zs)
    n = z.size
    g = np.empty(n)
    assert rows.loss_row(GENERALIZED_HUBER, alpha, beta, z, np.zeros(n), g, n, 0.0, False) == 0.0
    ref = np.array([_gen_huber_d1_mpmath(alpha, beta, r) for r in z])
    # where alpha |r| is subnormal (below ~2.2e-308), so is the tanh's numerator p ~ alpha |r|,
    # with fewer digits, and l' ~ alpha |r| / (1 + beta / 2) keeps only those (libm's
    # -expm1(-2 alpha |r|) likewise): the claim is for normal alpha |r| and l'
    tiny = np.finfo(float).tiny
    normal = (np.abs(ref) >= tiny) & (alpha * np.abs(z) >= tiny)
    a = alpha * np.abs(z[normal])
    e = np.exp(-a)
    weight = np.minimum(1.0, abs(beta) * e / ((1 - e) ** 2 + (2 + beta) * e))  # beta e^-a's share
    assert (_ulps(g[normal], ref[normal]) <= 6 + weight * a / 2).all()
    assert (g * np.sign(z) >= 0).all()  # elsewhere too: the sign of r, or 0 on underflow


def test_generalized_huber_row_special_values_and_loss():
    """+-0 -> +-0, +-inf -> +-1, NaN -> NaN (as libm's formula); the loss values are libm's,
    summed in order: the same bits as _scalar_row's loss."""
    z = np.array([0.0, -0.0, np.inf, -np.inf, np.nan])
    g = np.empty(5)
    rows.loss_row(GENERALIZED_HUBER, 1.3, 0.4, z, np.zeros(5), g, 5, 0.0, False)
    np.testing.assert_array_equal(g, [0.0, -0.0, 1.0, -1.0, np.nan])
    assert not np.signbit(g[0]) and np.signbit(g[1])
    zf = np.linspace(-4, 4, 37)
    L = rows.loss_row(GENERALIZED_HUBER, 1.3, 0.4, zf, np.zeros(37), np.empty(37), 37, 0.0, True)
    L_ref = rows._scalar_row(GENERALIZED_HUBER, 1.3, 0.4, zf, np.zeros(37), np.empty(37), 37,
                             0.0, True)
    assert L == L_ref


@pytest.mark.parametrize("beta", [-1.9, -1.999, -1.9999999])
def test_generalized_huber_row_keeps_its_digits_as_beta_nears_minus_2(beta):
    """The same 6-ulp claim on a fixed grid of residuals (|r| <= 3, where 1 + E^2 + beta E
    would cancel: a denominator written that way is ~100 ulp off at beta = -1.999)."""
    z = np.linspace(-3, 3, 61)
    g = np.empty(61)
    rows.loss_row(GENERALIZED_HUBER, 1.0, beta, z, np.zeros(61), g, 61, 0.0, False)
    ref = np.array([_gen_huber_d1_mpmath(1.0, beta, r) for r in z])
    nz = ref != 0
    assert _ulps(g[nz], ref[nz]).max() <= 6


@settings(max_examples=60, deadline=None)
@given(_residuals, st.floats(1e-3, 1e3))
def test_log_cosh_second_derivative_row_is_within_its_error_bound_of_libm(zs, alpha):
    """Claim: the data-path Hessian's l''(r) = alpha sech^2(alpha r) from the tanh's range
    reduction, 4 S (q - p)(q + p) / F^2, has no cancellation (every factor a sum of terms of
    one sign) and ~10 roundings: within 8 + 2 |alpha r| ulp of libm's 4 e / (1 + e)^2
    (e = exp(-2a)) where the value is a normal number. The |alpha r| term: sech^2 x has
    relative condition 2 |x| tanh x, and both formulas see x = alpha |r| with an absolute
    error of about |x| ulp(1) / 2 (libm's from rounding alpha |r|, ours from k ln2 / (2 alpha)
    rounded and multiplied by k ~ 2x / ln2); e.g. alpha = 11, r = 1: 9 ulp. The bound is on
    the relative error in units of eps (_eps_rel), which the argument gives: counted in ulps
    of the reference it can be twice that (alpha = 401.8125, r = 0.6587, x = 264.7: 844 ulp,
    439 eps, against 537; 205 and 235 eps from mpmath's for ours and libm's). NaN stays NaN;
    huge residuals give tiny non-negative values (libm: the same or 0)."""
    from lcnfast import _data_hessian
    from lcnfast.losses import LOG_COSH, loss_d2

    z = np.array(zs + [np.nan, 1e300, -1e300])
    n = z.size
    c = np.empty(n)
    _data_hessian._lc_d2(alpha, z, np.zeros(n), c, n)
    ref = np.array([loss_d2(LOG_COSH, alpha, 0.0, r) for r in z])
    normal = np.abs(ref) >= np.finfo(float).tiny * 1e4
    bound = 8 + 2 * alpha * np.abs(z[normal])
    assert (_eps_rel(c[normal], ref[normal]) <= bound).all()
    assert np.isnan(c[-3]) and (c[-2:] >= 0).all() and (c[-2:] <= 1e-250).all()


@settings(max_examples=60, deadline=None)
@given(_residuals, st.sampled_from([2, 3, 4, 6, 8, 16, 33, 64]), st.floats(1e-3, 1e3))
def test_lp_and_pseudo_huber_second_derivative_rows_match_libm(zs, p, delta):
    """Claim: the data-path Hessian's l'' rows: l_p's (p - 1) |r|^(p-2) by repeated squaring
    within 2 (p - 2) + 2 ulp of pow's (the squaring chain's bound of the l' row, one product
    more); pseudo-Huber's 1 / (delta hypot(1, u)^3) from w sqrt(1 + (v / w)^2) within 8 ulp
    of libm's hypot-based formula (about eight roundings of half an ulp each). Where the
    reference is normal; elsewhere the same or below 1e-290; NaN where libm gives NaN."""
    from lcnfast import _data_hessian
    from lcnfast.losses import LP, PSEUDO_HUBER, loss_d2

    z = np.array(zs + [np.nan])
    n = z.size
    y = np.zeros(n)
    tiny = np.finfo(float).tiny
    for code, p0, fn, bound in ((LP, float(p), _data_hessian._lp_d2, 2 * (p - 2) + 2),
                                (PSEUDO_HUBER, delta, _data_hessian._pseudo_huber_d2, 8)):
        c = np.empty(n)
        fn(p0, z, y, c, n)
        ref = np.array([loss_d2(code, p0, 0.0, r) for r in z])
        normal = np.isfinite(ref) & (np.abs(ref) >= tiny)
        assert (_ulps(c[normal], ref[normal]) <= bound).all(), (code, p0)
        rest = ~normal & ~np.isnan(ref)  # zero, subnormal or infinite references
        assert ((c[rest] == ref[rest]) | (np.abs(c[rest]) < 1e-290)).all(), (code, p0)
        assert np.isnan(c[np.isnan(ref)]).all()  # (l_2's l'' is 1 even at NaN, as libm's)


def _gen_huber_d2_mpmath(alpha, beta, r):
    """l''(r) of the generalized Huber loss in 40 digits: alpha E (4 E + beta (1 + E^2)) /
    ((1 - E)^2 + (2 + beta) E)^2, E = e^(-alpha |r|)."""
    import mpmath

    with mpmath.workdps(40):
        e = mpmath.exp(-mpmath.mpf(alpha) * abs(mpmath.mpf(float(r))))
        b = mpmath.mpf(beta)
        return float(alpha * e * (4 * e + b * (1 + e * e)) / ((1 - e) ** 2 + (2 + b) * e) ** 2)


def _gen_huber_d2_condition(alpha, beta, r):
    """The relative condition of the numerator N = (terms) of the branch lcnfast and libm use
    (E <= 1/2: 4 E + beta (1 + E^2), else (2 + beta)(1 + E^2) - 2 (1 - E)^2): sum of the
    terms' magnitudes over the magnitude of their sum (1 without cancellation; large near
    the zero of l'', the loss's inflection point, where beta < 0)."""
    e = np.exp(-alpha * np.abs(r))
    t1 = np.where(e > 0.5, (2 + beta) * (1 + e * e), 4 * e)
    t2 = np.where(e > 0.5, -2 * (1 - e) ** 2, beta * (1 + e * e))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.abs(t1) + np.abs(t2)) / np.abs(t1 + t2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.floats(-40.0, 40.0), st.floats(-1e-300, 1e-300),
                          st.floats(0.6, 0.8)), min_size=1, max_size=30),
       st.sampled_from([1.0, 0.3, 2.5, 1e-20, 1e20]),
       st.sampled_from([0.0, 1.0, 50.0, 1e8, -1.0, -1.6, -1.9, -1.999, -1.9999999]))
def test_generalized_huber_second_derivative_row_is_within_its_error_bound(zs, alpha, beta):
    """Claim: the data-path Hessian's generalized Huber l'' from the l' row's pieces
    (_data_hessian._gen_huber_d2: alpha S M P N / D^2, about fifteen roundings, D without
    cancellation) is within 8 + 2 a + 4 kappa eps (relative, _eps_rel) of mpmath where the
    value is normal
    (a = alpha |r|, kappa: _gen_huber_d2_condition). The 2 a: the reduced argument's
    absolute error of about a / 2 ulp(1) (as for l'), and l'' ~ e^-2a at beta = 0 (relative
    condition 2 a); kappa: the numerator's cancellation near l'''s zero (beta < 0), which
    libm's formula has too. Seen: at most 0.88 of the bound counted in ulps (an upper bound
    of the eps count) on a grid of 2,600 residuals per (alpha, beta) (alpha = 1e20,
    beta = 0, a = 30: 68 ulp; libm's loss_d2 39 there)."""
    from lcnfast import _data_hessian

    z = np.array(zs)
    n = z.size
    c = np.empty(n)
    _data_hessian._gen_huber_d2(alpha, beta, z, np.zeros(n), c, n)
    ref = np.array([_gen_huber_d2_mpmath(alpha, beta, r) for r in z])
    normal = np.abs(ref) >= np.finfo(float).tiny
    a = alpha * np.abs(z[normal])
    bound = 8 + 2 * a + 4 * _gen_huber_d2_condition(alpha, beta, z[normal])
    assert (_eps_rel(c[normal], ref[normal]) <= bound).all()
    assert (np.abs(c[~normal]) < 1e-290).all()


def test_generalized_huber_second_derivative_row_special_values():
    """r = +-0: 2 alpha / (2 + beta) (E = 1); +-inf and alpha |r| past 700 (the row's clamp):
    0, where libm's value is below 1e-304 alpha |beta|; NaN stays NaN."""
    from lcnfast import _data_hessian
    from lcnfast.losses import loss_d2

    alpha, beta = 1.3, 0.4
    z = np.array([0.0, -0.0, np.inf, -np.inf, 701 / alpha, -1e300, np.nan])
    c = np.empty(7)
    _data_hessian._gen_huber_d2(alpha, beta, z, np.zeros(7), c, 7)
    assert c[0] == c[1] == pytest.approx(2 * alpha / (2 + beta), rel=4e-16)
    np.testing.assert_array_equal(c[2:6], 0.0)
    assert abs(loss_d2(GENERALIZED_HUBER, alpha, beta, z[4])) < 1e-304 * alpha * beta
    assert np.isnan(c[6])
