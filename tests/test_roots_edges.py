"""Edge cases of lcnfast.roots: wide coefficient ranges, huge and tiny chordal arguments, argument
validation.

References are mpmath (exact rational inputs evaluated at 60 digits) and numpy.roots; the
claims and their tolerances are stated with each test.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import scipy.optimize
from hypothesis import assume, example, given
from hypothesis import strategies as st

from lcnfast import Architecture, roots

EPS = np.finfo(float).eps


# ----------------------------------------------------------------------------- mpmath helpers
def _mp_chordal(a, b):
    """Exact-input chordal distance at the working precision (mpmath.inf is infinity)."""
    if mpmath.isinf(a) or mpmath.isinf(b):
        if mpmath.isinf(a) and mpmath.isinf(b):
            return mpmath.mpf(0)
        z = b if mpmath.isinf(a) else a
        return 1 / mpmath.sqrt(1 + abs(z) ** 2)
    return abs(a - b) / (mpmath.sqrt(1 + abs(a) ** 2) * mpmath.sqrt(1 + abs(b) ** 2))


def _chart(c, z):
    """(coefficients ascending, u) with |u| <= 1 and P(u) = 0 exactly when z is a root of c:
    c and u = z, or the reversed c and u = 1/z (z = inf gives u = 0)."""
    if mpmath.isinf(z):
        return c[::-1], mpmath.mpc(0)
    if abs(z) <= 1:
        return c, mpmath.mpc(z)
    return c[::-1], 1 / mpmath.mpc(z)


def _horner(c, u):
    """sum_j c[j] u^j for ascending coefficients c (mpmath.polyval's coefficient order
    changed in mpmath 1.4, with a DeprecationWarning on every call)"""
    acc = mpmath.mpf(0)
    for cj in reversed(c):
        acc = acc * u + cj
    return acc


def _eta(c, z):
    """Normwise backward error |p(z)| / (||c||_2 ||(1, z, .., z^n)||_2) of z (also z = inf)."""
    cc, u = _chart(c, z)
    v = mpmath.sqrt(mpmath.fsum(abs(u) ** (2 * j) for j in range(len(c))))
    return abs(_horner(cc, u)) / (mpmath.norm(c) * v)


def _kappa(c, z):
    """Chordal condition number of the root z of c: chi(z, z') <~ kappa ||dc|| / ||c|| for the
    root z' of c + dc, to first order (inf when z is multiple)."""
    cc, u = _chart(c, z)
    dp = _horner([j * cc[j] for j in range(1, len(cc))], u)
    v = mpmath.sqrt(mpmath.fsum(abs(u) ** (2 * j) for j in range(len(c))))
    return mpmath.inf if dp == 0 else mpmath.norm(c) * v / (abs(dp) * (1 + abs(u) ** 2))


def _exact_roots(c):
    """All n roots on the sphere of the polynomial with the exact float coefficients c: the
    eigenvalues of the monic companion matrix at a precision of 60 digits beyond the spread of
    the coefficients (mpmath's QR is backward stable relative to the companion's norm, at most
    that spread), exact zeros and infinities from zero end coefficients."""
    n = len(c) - 1
    nz = [j for j, x in enumerate(c) if x != 0]
    lo, hi = nz[0], nz[-1]
    core = []
    if hi > lo:
        spread = np.log10(max(abs(x) for x in c)) - np.log10(min(abs(c[lo]), abs(c[hi])))
        with mpmath.workdps(60 + int(np.ceil(spread))):
            a = [mpmath.mpf(float(c[j])) / mpmath.mpf(float(c[hi])) for j in range(lo, hi)]
            m = hi - lo
            A = mpmath.zeros(m, m)
            for i in range(m):
                A[i, m - 1] = -a[i]
                if i:
                    A[i, i - 1] = 1
            # (mpmath.eig returns the eigenvectors of a 1 x 1 matrix even when not asked)
            core = [-a[0]] if m == 1 else mpmath.eig(A, left=False, right=False)
            core = [mpmath.mpc(z) for z in core]
    return [mpmath.mpc(0)] * lo + core + [mpmath.inf] * (n - hi)


# ----------------------------------------------------------------------------- poly_roots
@pytest.mark.parametrize(
    "coeffs, lead_tol, want",
    [
        ([1.0, 1.0, 1e-15], roots.DEFAULT_LEAD_TOL, -1.0),  # was -1.125
        ([2.0, 3.0, 1e-14], roots.DEFAULT_LEAD_TOL, -2.0 / 3.0),  # was -0.625
        ([1.0, 1.0, 1e-20], 0.0, -1.0),  # was 0.0
        ([1.0, 1.0, 1e-320], 0.0, -1.0),  # monic coefficients overflow (was LinAlgError)
        ([1e-15, 1.0, 1e-15], roots.DEFAULT_LEAD_TOL, -1e-15),  # was -0.125
    ],
)
def test_small_root_next_to_a_huge_one(coeffs, lead_tol, want):
    """The small root is accurate to 4 ulps of the exact one (its condition number is about 1)
    although a leading coefficient far below the largest puts the other root near infinity."""
    z = roots.poly_roots(coeffs, lead_tol=lead_tol)
    small = z[np.argmin(np.abs(z))]
    with mpmath.workdps(60):
        exact = min(_exact_roots(coeffs), key=abs)
        assert abs(exact - want) <= 1e-14 * abs(want)  # want: the root rounded to 14 digits
        assert abs(small - exact) <= 4 * EPS * abs(exact)
    assert abs(z[np.argmax(np.abs(z))]) >= 1e14


def _coefficient(draw):
    if draw(st.integers(0, 9)) == 0:
        return 0.0
    m = draw(st.floats(0.1, 10.0)) * draw(st.sampled_from([-1.0, 1.0]))
    return m * 10.0 ** draw(st.integers(-20, 20))


@st.composite
def wide_polynomials(draw):
    """Degree 1..6, coefficients of random sign and magnitude 1e-21..1e21 (some exactly 0)."""
    n = draw(st.integers(1, 6))
    c = np.array([_coefficient(draw) for _ in range(n + 1)])
    assume(np.any(c != 0))
    return c


@given(wide_polynomials(), st.sampled_from([0.0, roots.DEFAULT_LEAD_TOL]))
@example(np.array([-1.0, -1e7, 0.0, -1e16, -1e-3]), 0.0)  # see below
@example(np.array([1.0, 1.0, 1e-13]), roots.DEFAULT_LEAD_TOL)
def test_roots_are_accurate_to_their_conditioning(c, lead_tol):
    """Claims, with n the formal degree, eps the unit roundoff, kappa the chordal condition
    number of an exact root (mpmath) and beta = 4 (n + 1) eps + sqrt(n) lead_tol:

    1. every computed root (infinity included) is an exact root of a polynomial within
       normwise relative distance 4 (n + 1) eps of c with the coefficients above the effective
       degree (each at most lead_tol max|c|) set to zero;
    2. the computed roots matched to the exact ones lie within chordal distance 2 beta kappa:
       all n roots are those of a polynomial within beta ||c|| of c (2.2 (n + 1) eps for the
       pencil, 3.6 for the companion matrix were measured; the dropped coefficients add
       sqrt(n) lead_tol), and the factor 2 covers the second-order terms (near-multiple roots
       have a large kappa, multiple ones an infinite one).

    Claim 1 alone does not make claim 2: the companion matrix of -1 - 1e7 x - 1e16 x^3
    - 1e-3 x^4 gave the roots -1e19, 0, 0, 0, each with a backward error below eps, for
    -1e19, -1e-7 and +-3.2e-5 i.
    """
    n = c.size - 1
    z = roots.poly_roots(c, lead_tol=lead_tol)
    assert z.shape == (n,) and not np.isnan(z).any()
    with mpmath.workdps(60):
        scale = np.max(np.abs(c))
        deg = max(j for j in range(n + 1) if abs(c[j]) > lead_tol * scale)
        eff = [mpmath.mpf(float(x)) if j <= deg else mpmath.mpf(0) for j, x in enumerate(c)]
        got = [mpmath.inf if np.isinf(x.real) else mpmath.mpc(x) for x in z]
        for x in got:
            assert _eta(eff, x) <= 4 * (n + 1) * EPS, (c, z)
        exact = _exact_roots(c)
        cm = [mpmath.mpf(float(x)) for x in c]
        beta = 4 * (n + 1) * EPS + np.sqrt(n) * lead_tol
        D = np.array([[float(_mp_chordal(g, e)) for e in exact] for g in got])
        rows, cols = scipy.optimize.linear_sum_assignment(D)
        for i, j in zip(rows, cols):
            bound = 2 * beta * _kappa(cm, exact[j])
            assert D[i, j] <= bound, (c, z, exact[j], D[i, j], bound)


@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_numpy_roots_agree_on_gaussian_coefficients(n, seed):
    """Ordinary inputs: the same roots as numpy.roots (which builds the same companion matrix)
    to 1e-9 relative; random Gaussian coefficients have condition numbers far below 1e6."""
    c = np.random.default_rng(seed).standard_normal(n + 1)
    z = roots.poly_roots(c)
    ref = np.roots(c[::-1])
    D = np.abs(z[:, None] - ref[None, :]) / np.maximum(1.0, np.abs(ref[None, :]))
    rows, cols = scipy.optimize.linear_sum_assignment(D)
    assert D[rows, cols].max() <= 1e-9


# ----------------------------------------------------------------------------- chordal_distance
def _point(x):
    """mpmath value of a complex float on the sphere: an infinite part makes it infinity."""
    return mpmath.inf if np.isinf(x.real) or np.isinf(x.imag) else mpmath.mpc(x.real, x.imag)


_points = st.complex_numbers(allow_nan=False, allow_infinity=True) | st.floats(
    allow_nan=False
).map(complex)


@st.composite
def point_pairs(draw):
    """Independent points of any magnitude, or a point and a relative or absolute neighbour."""
    z1 = draw(_points)
    kind = draw(st.sampled_from(["free", "relative", "absolute"]))
    if kind == "free" or not np.isfinite(z1):
        return z1, draw(_points)
    step = draw(st.floats(1e-300, 1e-3)) * draw(st.sampled_from([1, -1, 1j, -1j]))
    with np.errstate(over="ignore"):
        z2 = z1 * (1 + step) if kind == "relative" else z1 + step
    return z1, complex(z2)


@given(point_pairs())
def test_chordal_distance_to_a_few_ulps_everywhere(pair):
    """|d - chi| <= 8 eps chi + 2^-1070 against mpmath for all finite and infinite complex points
    (was 0.0 for chi(1e200, 0)): error analysis of either formula gives about 6 rounding errors;
    2^-1070 allows the gradual underflow of results below 2^-1022. Symmetric bitwise, in [0, 1],
    and the same values elementwise in a broadcast call."""
    z1, z2 = pair
    d = roots.chordal_distance(z1, z2)
    assert d == roots.chordal_distance(z2, z1) and 0.0 <= d <= 1.0
    with mpmath.workdps(40):
        chi = _mp_chordal(_point(z1), _point(z2))
        assert abs(mpmath.mpf(float(d)) - chi) <= 8 * EPS * chi + mpmath.ldexp(1, -1070), (z1, z2)
    many = roots.chordal_distance(np.array([z1, 0.0, z2])[:, None], np.array([[z2, z1]]))
    assert many[0, 0] == d and many[2, 1] == d and many.shape == (3, 2)


@given(point_pairs())
def test_chordal_distance_keeps_the_textbook_values_below_2_to_510(pair):
    """Where no square overflows the values are those of the textbook formula, bitwise."""
    z1, z2 = pair
    with np.errstate(over="ignore"):
        assume(np.isfinite(z1) and np.isfinite(z2) and max(np.abs([z1, z2])) <= 2.0**510)
    a, b = np.array([z1]), np.array([z2])  # numpy's array loops, as lcnfast.roots uses
    want = np.abs(a - b) / (np.sqrt(1.0 + np.abs(a) ** 2) * np.sqrt(1.0 + np.abs(b) ** 2))
    assert roots.chordal_distance(a, b) == want


def test_chordal_distance_audit_examples():
    d = roots.chordal_distance
    assert d(1e200, 0) == 1.0 and d(1e160, 1e-160) == 1.0  # both were 0.0
    assert d(1e300, np.inf) == pytest.approx(1e-300, rel=4 * EPS)  # was 0.0
    assert d(complex(np.inf, np.nan), np.inf) == 0.0 and np.isnan(d(np.nan, 1e300))


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "lead_tol, error",
    [
        (1, ValueError),  # was LinAlgError
        (2.0, ValueError),  # was silently nonsense
        (-1e-3, ValueError),
        (float("nan"), ValueError),
        ("x", TypeError),  # was UFuncTypeError
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_lead_tol_must_be_a_number_in_0_1(lead_tol, error):
    with pytest.raises(error, match="lead_tol"):
        roots.poly_roots([1.0, 1.0, 0.0], lead_tol=lead_tol)
    arch = Architecture(8, (2, 2))
    with pytest.raises(error, match="lead_tol"):
        roots.layer_roots(arch, np.ones(arch.n_params), lead_tol=lead_tol)


def test_lead_tol_range_ends():
    assert roots.poly_roots([1.0, 1.0, 0.5], lead_tol=np.float32(0.75))[1] == np.inf
    np.testing.assert_allclose(roots.poly_roots([1.0, 2.0, 1.0], lead_tol=0), [-1, -1], rtol=1e-7)


@pytest.mark.parametrize("bad", [1.0, np.ones((1, 2, 3))])  # were "values to unpack" errors
def test_root_clusters_wants_one_or_two_dims(bad):
    with pytest.raises(ValueError, match="roots must have shape"):
        roots.root_clusters(bad, 0.1)


def test_root_clusters_rejects_non_numbers():
    with pytest.raises(TypeError, match="roots"):
        roots.root_clusters(["a"], 0.1)
    with pytest.raises(TypeError, match="tol"):
        roots.root_clusters([1.0], "x")


def _layers():
    """Roots of two layers of degree 1 each, K = 2."""
    return np.array([[1.0 + 0j, 2.0], [1.0, 1.0]]), np.array([1, 2]), np.zeros((2, 2), bool)


def test_common_roots_takes_layer_roots_of_one_vector():
    """layer_roots(arch, w) of one w gives roots (k_v - 1,) and zero_layer (N,); common_roots
    refused them ("roots must have shape (K, n_roots)") though its docstring takes what
    layer_roots returns. One vector in, results without the K axis out, as for a batch."""
    arch = Architecture(8, (3, 3))
    w = np.array([1.0, -3.0, 2.0, 1.0, 5.0, 6.0])  # roots {1, 2} and {-2, -3} (or reciprocals)
    W = np.stack([w, [1.0, -3.0, 2.0, 2.0, -3.0, 1.0]])  # the second: both layers have a root 1
    one = roots.common_roots(*roots.layer_roots(arch, w), 1e-6)
    batch = roots.common_roots(*roots.layer_roots(arch, W), 1e-6)
    for key, val in batch.items():
        assert np.shape(one[key]) == val.shape[1:]
        np.testing.assert_array_equal(one[key], val[0])
    assert batch["has_common_root"].tolist() == [False, True]


def test_common_roots_checks_layers_against_zero_layer():
    z, rl, zl = _layers()
    assert roots.common_roots(z, rl, zl, 1e-4)["has_common_root"].tolist() == [False, True]
    with pytest.raises(ValueError, match=r"root_layer values must be layers 1\.\.2"):
        roots.common_roots(z, np.array([7, 9]), zl, 1e-4)  # was silently ignored
    with pytest.raises(ValueError, match="root_layer"):
        roots.common_roots(z, np.array([0, 1]), zl, 1e-4)
    with pytest.raises(ValueError, match=r"zero_layer must have shape \(2, N\)"):
        roots.common_roots(z, rl, np.zeros((1, 2), bool), 1e-4)
    with pytest.raises(ValueError, match=r"layers 1\.\.1"):
        roots.common_roots(z, rl, np.zeros((2, 1), bool), 1e-4)  # N = 1 < layer 2 (was accepted)
    with pytest.raises(TypeError, match="zero_layer"):
        roots.common_roots(z, rl, zl.astype(float), 1e-4)
    with pytest.raises(TypeError, match="root_layer"):
        roots.common_roots(z, rl.astype(float), zl, 1e-4)
    with pytest.raises(ValueError, match="roots must have shape"):
        roots.common_roots(z[0], rl, zl, 1e-4)
