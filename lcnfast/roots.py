"""Roots of the layer polynomials (paper eq. 2.1) and common-root detection.

Layer ``i`` (1-based, as in the paper) with filter ``w^(i)`` (k_i,) and dilation
``S_i = s_1 ... s_{i-1}`` has the polynomial

    p~_i(x) = sum_{j=0}^{k_i - 1} w^(i)_{j+1} x^{j S_i}                        (eq. 2.1)

of *formal* degree ``t_i = (k_i - 1) S_i``. Its roots are counted on the Riemann sphere: when
the leading coefficient vanishes the degree drops and the missing roots are roots at infinity
(this is the convention under which, for stride 1, the Jacobian of pi has rank k_v exactly when
no two layer polynomials share a root: J is then a generalised Sylvester matrix of
them, see :mod:`lcnfast.analysis`). Since ``p~_i(x) = q_i(x^{S_i})`` with the
ordinary polynomial ``q_i(y) = sum_j w^(i)_{j+1} y^j``, every root ``y`` of ``q_i`` gives the
``S_i`` roots ``x = y^{1/S_i}`` (all branches) of ``p~_i``; 0 and infinity give ``S_i`` copies
of themselves. The roots of all layers together, ``sum_i t_i = k_v - 1`` of them, are the roots
of the final filter's polynomial ``p_{k_v - 1}(v)`` (Prop. 2.1).

Distances between roots are *chordal* distances on the Riemann sphere,

    chi(z1, z2) = |z1 - z2| / (sqrt(1 + |z1|^2) sqrt(1 + |z2|^2)),   chi(z, inf) = 1/sqrt(1+|z|^2),

which lie in [0, 1], are relative for large roots and treat infinity like any other point.

Numerical conventions (one tolerance, ``tol``, a chordal distance):

- A root of multiplicity mu of a polynomial whose coefficients carry a relative error eps is
  only determined to about ``eps^(1/mu)``, so the computed copies of a multiple root form a
  small cluster. Roots of one polynomial closer than ``tol`` (single linkage, transitively) are
  one cluster; its size is the reported multiplicity and its mean (infinity if any member is
  infinite) its centre, which is accurate to about eps even where the members are not.
- Two layers share a root when two cluster centres, one of each, are within ``tol``.
- A zero filter gives the zero polynomial, which vanishes everywhere: its root slots are NaN,
  and it shares a root with every other layer of positive formal degree and with every other
  zero layer (consistent with the rank of the Jacobian of pi, which then drops below k_v).
- Leading coefficients at rounding level (``|c| <= lead_tol * max|c|``, default 4 eps) are taken
  as zero (roots at infinity); exactly-zero constant coefficients give exact roots at 0.

Everything is vectorised over a batch of K parameter vectors; companion matrices of equal
effective degree are solved together with :func:`numpy.linalg.eigvals` (LAPACK geev, which
balances), as :func:`numpy.roots` does one at a time. That is backward stable only relative to
``||c|| / |c_lead|``, so polynomials whose leading coefficient is below 1/16 of the largest
(e.g. ``1 + x + 1e-15 x^2``, whose root -1 came out as -1.125) are solved as a companion pencil
by QZ instead, backward stable relative to ``||c||``: every root is accurate in the chordal
metric to a few ``(degree + 1) eps`` times its chordal condition number, roots near infinity
included.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "poly_roots",
    "layer_roots",
    "chordal_distance",
    "root_clusters",
    "common_roots",
    "DEFAULT_LEAD_TOL",
]

#: leading coefficients below this times the largest |coefficient| count as zero (roots at inf)
DEFAULT_LEAD_TOL = 4 * np.finfo(float).eps


def _as_batch(c, name):
    c = np.asarray(c)
    if c.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {c.dtype}")
    c = np.asarray(c, dtype=np.float64)
    single = c.ndim == 1
    if single:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (n + 1,) or (K, n + 1) with n >= 0, got {c.shape}"
        )
    if not np.all(np.isfinite(c)):
        raise ValueError(f"{name} contains NaN or Inf")
    return c, single


def poly_roots(coeffs, *, lead_tol=DEFAULT_LEAD_TOL):
    """Roots on the Riemann sphere of polynomials of formal degree ``n``.

    Parameters
    ----------
    coeffs : array_like (n + 1,) or (K, n + 1)
        Coefficients in *ascending* order: ``c[0] + c[1] x + ... + c[n] x^n`` (the paper's
        ``p_n(w)`` of section 2.1 with ``w = c``).
    lead_tol : float in [0, 1)
        Coefficients above the highest one with ``|c_j| > lead_tol * max|c|`` are taken as zero
        (``lead_tol < 1`` keeps the largest, so the effective degree is defined).

    Returns
    -------
    ndarray complex (n,) or (K, n)
        The ``n`` roots with multiplicity, sorted by (real, imag), roots at infinity
        (``inf + 0j``) last. All-zero polynomials give NaN (every x is a root). The roots are
        those of a polynomial within normwise relative distance of a few ``(n + 1) eps`` of
        ``c`` with the dropped leading coefficients set to 0, so a root may also come out as
        ``inf`` with ``lead_tol = 0`` when the leading coefficient is below rounding level.
    """
    lead_tol = _check_fraction(lead_tol, "lead_tol")
    c, single = _as_batch(coeffs, "coeffs")
    K, n1 = c.shape
    n = n1 - 1
    out = np.full((K, n), np.nan + 0j, dtype=np.complex128)
    scale = np.max(np.abs(c), axis=1)
    nonzero = scale > 0
    big = np.abs(c) > lead_tol * scale[:, None]
    # effective degree: index of the highest significant coefficient
    deg = np.where(nonzero, n - np.argmax(big[:, ::-1], axis=1), -1)
    # number of exactly-zero low coefficients (exact roots at 0), below the degree
    low = np.where(nonzero, np.argmax(c != 0, axis=1), 0)
    for d, z0 in set(zip(deg[nonzero].tolist(), low[nonzero].tolist())):
        idx = np.flatnonzero(nonzero & (deg == d) & (low == z0))
        roots = np.empty((idx.size, n), dtype=np.complex128)
        roots[:, :z0] = 0.0
        roots[:, d:] = np.inf
        if d > z0:
            roots[:, z0:d] = _core_roots(c[idx, z0 : d + 1])  # c[z0:d+1] / x^z0
        out[idx] = roots
    out = _sort_roots(out)
    return out[0] if single else out


def _core_roots(c):
    """Roots of ``c[:, 0] + c[:, 1] x + ... + c[:, n] x^n`` with nonzero ``c[:, 0]``, ``c[:, n]``.

    ``c`` (K, n + 1) with n >= 1 gives (K, n) complex, unsorted, each root accurate in the
    chordal metric to a few ``(n + 1) eps`` times its chordal condition number (measured: 3.6).
    The eigenvalues of the balanced companion matrix of the monic polynomial (batched, as
    :func:`numpy.roots`) are that accurate only while ``rho = max|c| / |c_n|`` is small; their
    error grows about like ``rho`` (1 + x + 1e-15 x^2 gave -1.125 for the root -1),
    so rows with ``rho > _COMPANION_RHO`` are solved as a companion pencil
    (:func:`_pencil_roots`), whose accuracy does not depend on ``rho``.
    """
    n = c.shape[1] - 1
    z = np.empty((c.shape[0], n), dtype=np.complex128)
    tame = _COMPANION_RHO * np.abs(c[:, -1]) >= np.max(np.abs(c), axis=1)
    if tame.any():
        a = c[tame, :-1] / c[tame, -1:]  # monic, ascending, (K_tame, n)
        comp = np.zeros((a.shape[0], n, n))
        comp[:, np.arange(1, n), np.arange(n - 1)] = 1.0
        comp[:, :, -1] = -a
        z[tame] = np.linalg.eigvals(comp)
    for k in np.flatnonzero(~tame):
        z[k] = _pencil_roots(c[k])
    return z


#: the largest ``max|c| / |c_lead|`` solved by the companion matrix: its chordal error over
#: (n + 1) eps times the condition number grew like ``max(3, rho / 3)`` (3.6 up to 16, 5.8 at
#: 16..32, 683 at 2048..4096), the pencil's stayed below 2.2 (mpmath roots of 7000 polynomials of
#: degree 1 to 6, coefficients spread over 1e-20..1e20)
_COMPANION_RHO = 16


def _pencil_roots(c):
    """Roots of the polynomial ``c`` (n + 1,), n >= 1, as the eigenvalues of the pencil
    ``A - x B`` (A the companion matrix with the unnormalised ``c``, ``B = diag(1, ..., 1, c_n)``;
    ``det(x B - A) = p(x)``) by QZ (LAPACK ggev), with ``c`` scaled to ``max|c| = 1``: backward
    stable relative to ``||c||`` (Van Dooren and Dewilde 1983), so no division by ``c_n``.
    Infinite eigenvalues (``beta = 0``) give ``inf + 0j``. Returns (n,) complex, complex roots
    in exactly conjugate consecutive pairs."""
    import scipy.linalg

    n = c.size - 1
    c = np.ldexp(c, -np.frexp(np.max(np.abs(c)))[1])  # exact power-of-2 scaling
    A = np.zeros((n, n))
    A[np.arange(1, n), np.arange(n - 1)] = 1.0
    A[:, -1] = -c[:-1]
    B = np.eye(n)
    B[-1, -1] = c[-1]
    alpha, beta = scipy.linalg.eigvals(A, B, homogeneous_eigvals=True, check_finite=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = np.where(beta == 0, np.inf + 0j, alpha / beta)
    # a pair with alpha.imag > 0, < 0 (consecutive) is conjugate, but its betas differ: make
    # the quotients exact conjugates (as geev's), for the (real, imag) order and the clusters
    first = np.flatnonzero(alpha.imag[:-1] > 0)
    z[first + 1] = np.conj(z[first])
    return z


def _sort_roots(z):
    """Sort each row by (real, imag) with inf and NaN last (deterministic output order)."""
    re = np.where(np.isfinite(z.real), z.real, np.inf)
    im = np.where(np.isfinite(z.imag), z.imag, np.inf)
    rank_inf = np.isinf(z.real).astype(int) + 2 * np.isnan(z.real).astype(int)
    order = np.lexsort((im, re, rank_inf), axis=-1)
    return np.take_along_axis(z, order, axis=-1)


def layer_roots(arch, W, *, lead_tol=DEFAULT_LEAD_TOL, zero_tol=0.0):
    """Roots of every layer polynomial p~_i (eq. 2.1) for a batch of parameter vectors.

    Parameters
    ----------
    arch : Architecture
    W : array_like (n_params,) or (K, n_params)
    lead_tol : float in [0, 1)
        See :func:`poly_roots`.
    zero_tol : float in [0, 1)
        A layer counts as the zero polynomial when ``||w^(i)||_2 <= zero_tol * max_j ||w^(j)||_2``
        (always when it is exactly zero).

    Returns
    -------
    roots : ndarray complex (K, k_v - 1)
        Slot ``r`` holds a root of layer ``root_layer[r]``; each layer ``i`` has ``t_i``
        consecutive slots (its formal degree), infinity as ``inf + 0j``, NaN for zero layers.
    root_layer : ndarray int (k_v - 1,)
        1-based layer of each slot.
    zero_layer : ndarray bool (K, N)
        Which layers are (numerically) the zero polynomial.
    """
    from .architecture import Architecture

    if not isinstance(arch, Architecture):
        raise TypeError(f"arch must be an Architecture, got {type(arch).__name__}")
    W, single = _as_batch(W, "W")
    if W.shape[1] != arch.n_params:
        raise ValueError(f"W must have {arch.n_params} columns (n_params), got {W.shape[1]}")
    zero_layer = _zero_layers(arch, W, zero_tol)
    K = W.shape[0]
    parts, labels = [], []
    for i in range(arch.depth):
        S = arch.dilations[i]
        wi = W[:, arch.layer_slice(i)]
        ki = wi.shape[1]
        y = poly_roots(wi, lead_tol=lead_tol)  # (K, k_i - 1), roots of q_i
        if S == 1:
            x = y
        else:
            # all S-th roots of each y; 0 -> 0 (S times), inf -> inf, nan -> nan
            branch = np.exp(2j * np.pi * np.arange(S) / S)  # (S,)
            with np.errstate(invalid="ignore", divide="ignore"):
                mag = np.abs(y) ** (1.0 / S)
                ang = np.angle(y) / S
                base = mag * np.exp(1j * ang)
            base = np.where(np.isinf(y.real), np.inf + 0j, base)
            base = np.where(np.isnan(y.real), np.nan + 0j, base)
            with np.errstate(invalid="ignore"):
                x = base[:, :, None] * branch[None, None, :]
            x = np.where(np.isinf(base)[:, :, None], np.inf + 0j, x)
            x = np.where(np.isnan(base.real)[:, :, None], np.nan + 0j, x)
            x = _sort_roots(x.reshape(K, (ki - 1) * S))
        x = np.where(zero_layer[:, i : i + 1], np.nan + 0j, x)
        parts.append(x)
        labels.append(np.full(x.shape[1], i + 1, dtype=np.int64))
    roots = np.concatenate(parts, axis=1) if parts else np.zeros((K, 0), complex)
    root_layer = np.concatenate(labels)
    if single:
        return roots[0], root_layer, zero_layer[0]
    return roots, root_layer, zero_layer


def _zero_layers(arch, W, zero_tol):
    zero_tol = _check_fraction(zero_tol, "zero_tol")
    norms = np.stack(
        [np.linalg.norm(W[:, arch.layer_slice(i)], axis=1) for i in range(arch.depth)], axis=1
    )
    return (norms == 0) | (norms <= zero_tol * norms.max(axis=1, keepdims=True))


def chordal_distance(z1, z2):
    """Chordal distance on the Riemann sphere (broadcasting; ``inf`` is the point at infinity,
    NaN propagates). Values in [0, 1].

    ``|z1 - z2| / (sqrt(1 + |z1|^2) sqrt(1 + |z2|^2))`` where ``|z1|, |z2| <= 2^510`` (no square
    or product overflows), else the same quotient with both points scaled by a power of 2
    (:func:`_chordal_scaled`); either way to a few ulps, for every finite and infinite input.
    """
    z1, z2 = np.broadcast_arrays(
        np.asarray(z1, dtype=np.complex128), np.asarray(z2, dtype=np.complex128)
    )
    inf1 = np.isinf(z1.real) | np.isinf(z1.imag)
    inf2 = np.isinf(z2.real) | np.isinf(z2.imag)
    f1 = np.where(inf1, 0.0, z1)
    f2 = np.where(inf2, 0.0, z2)
    with np.errstate(over="ignore", invalid="ignore"):
        n1 = np.sqrt(1.0 + np.abs(f1) ** 2)
        n2 = np.sqrt(1.0 + np.abs(f2) ** 2)
        d = np.abs(f1 - f2) / (n1 * n2)
        r1, r2 = 1.0 / n1, 1.0 / n2
        large = (np.abs(f1) > 2.0**510) | (np.abs(f2) > 2.0**510)
    if np.any(large):
        d, r1, r2 = (np.where(large, x, y) for x, y in zip(_chordal_scaled(f1, f2), (d, r1, r2)))
    d = np.where(inf1 & ~inf2, r2, d)
    d = np.where(inf2 & ~inf1, r1, d)
    d = np.where(inf1 & inf2, 0.0, d)
    return d


def _chordal_scaled(f1, f2):
    """Overflow-free ``(chi(f1, f2), chi(f1, inf), chi(f2, inf))`` for finite complex arrays.

    With ``2^m`` the larger of the points' magnitudes (``m >= 0``), ``a_i = f_i / 2^m`` (exact
    but for the underflow of negligible parts) and ``h_i = hypot(2^-m, |a_i|) = sqrt(1 +
    |f_i|^2) / 2^m``: ``chi = (|a1 - a2| / max h) (2^-m / min h)``, both factors at most ~3.
    """
    m = np.maximum(np.maximum(_exponent(f1), _exponent(f2)), 0)
    s = np.ldexp(1.0, -m)
    re1, im1, re2, im2 = (np.ldexp(x, -m) for x in (f1.real, f1.imag, f2.real, f2.imag))
    h1 = np.hypot(s, np.hypot(re1, im1))
    h2 = np.hypot(s, np.hypot(re2, im2))
    delta = np.hypot(re1 - re2, im1 - im2)
    d = (delta / np.maximum(h1, h2)) * (s / np.minimum(h1, h2))
    # chi(f, inf) = 1 / sqrt(1 + |f|^2), with f's own exponent (the other point may be smaller)
    m1, m2 = np.maximum(_exponent(f1), 0), np.maximum(_exponent(f2), 0)
    s1, s2 = np.ldexp(1.0, -m1), np.ldexp(1.0, -m2)
    r1 = s1 / np.hypot(s1, np.hypot(np.ldexp(f1.real, -m1), np.ldexp(f1.imag, -m1)))
    r2 = s2 / np.hypot(s2, np.hypot(np.ldexp(f2.real, -m2), np.ldexp(f2.imag, -m2)))
    return d, r1, r2


def _exponent(f):
    """Binary exponent e with ``max(|Re f|, |Im f|) < 2^e`` (0 for 0 and NaN)."""
    return np.frexp(np.maximum(np.abs(f.real), np.abs(f.imag)))[1]


def _check_fraction(value, name):
    """``float(value)`` for a real number in [0, 1): TypeError otherwise (bool included),
    ValueError when out of range or NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _complex_array(x, name, ndims, shapes):
    """``x`` as complex128 with ``x.ndim`` in ``ndims`` (``shapes`` names them in the message);
    TypeError for a non-numeric dtype, ValueError for another number of dims."""
    x = np.asarray(x)
    if x.dtype.kind not in "iufc":
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shapes}, got {x.shape}")
    return x.astype(np.complex128)


def root_clusters(roots, tol):
    """Multiplicities and cluster centres of the roots of one polynomial per row.

    Parameters
    ----------
    roots : array_like complex (t,) or (K, t)
        Roots of one polynomial per row (inf allowed; NaN rows are zero polynomials).
    tol : float in [0, 1)
        Chordal distance below which two roots are the same (single linkage, transitive).

    Returns
    -------
    multiplicity : ndarray int (K, t)
        Size of each root's cluster (0 for NaN slots).
    centre : ndarray complex (K, t)
        Mean of each root's cluster (inf if the cluster contains inf; NaN for NaN slots).
    """
    tol = _check_fraction(tol, "tol")
    z = _complex_array(roots, "roots", (1, 2), "(t,) or (K, t)")
    single = z.ndim == 1
    if single:
        z = z[None, :]
    K, t = z.shape
    if t == 0:
        e = np.zeros((K, 0))
        return (e.astype(int)[0], e.astype(complex)[0]) if single else (e.astype(int), e + 0j)
    nan = np.isnan(z.real)
    D = chordal_distance(z[:, :, None], z[:, None, :])
    R = (D <= tol) & ~nan[:, :, None] & ~nan[:, None, :]
    R |= np.eye(t, dtype=bool)[None] & ~nan[:, :, None]
    # transitive closure by repeated squaring (t is small: a filter's degree)
    for _ in range(max(1, int(np.ceil(np.log2(max(t, 2)))))):
        R = (R.astype(np.int64) @ R.astype(np.int64)) > 0
    mult = R.sum(axis=2)
    isinf = np.isinf(z.real)
    finite = np.where(isinf | nan, 0.0, z)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = (R * finite[:, None, :]).sum(axis=2) / np.maximum(mult, 1)
    has_inf = (R & isinf[:, None, :]).any(axis=2)
    centre = np.where(has_inf, np.inf + 0j, centre)
    centre = np.where(nan, np.nan + 0j, centre)
    mult = np.where(nan, 0, mult)
    return (mult[0], centre[0]) if single else (mult, centre)


def _check_layers(roots, root_layer, zero_layer):
    """Validated ``(roots, root_layer, zero_layer)`` of :func:`common_roots`: complex (K, nr),
    int (nr,) with values in 1..N, bool (K, N)."""
    z = _complex_array(roots, "roots", (2,), "(K, n_roots)")
    zero_layer = np.asarray(zero_layer)
    if zero_layer.dtype != bool:
        raise TypeError(f"zero_layer must be a bool array, got dtype {zero_layer.dtype}")
    if zero_layer.ndim != 2 or zero_layer.shape[0] != z.shape[0]:
        raise ValueError(f"zero_layer must have shape ({z.shape[0]}, N), got {zero_layer.shape}")
    root_layer = np.asarray(root_layer)
    if root_layer.dtype.kind not in "iu":
        raise TypeError(f"root_layer must be an integer array, got dtype {root_layer.dtype}")
    if root_layer.shape != (z.shape[1],):
        raise ValueError(f"root_layer must have shape ({z.shape[1]},), got {root_layer.shape}")
    N = zero_layer.shape[1]
    if root_layer.size and not (root_layer.min() >= 1 and root_layer.max() <= N):
        raise ValueError(
            f"root_layer values must be layers 1..{N} (N from zero_layer), got "
            f"{root_layer.min()}..{root_layer.max()}"
        )
    return z, root_layer, zero_layer


def common_roots(roots, root_layer, zero_layer, tol):
    """Which layers share a root (on the Riemann sphere), per parameter vector.

    Parameters
    ----------
    roots : complex (K, k_v - 1), root_layer : int (k_v - 1,), zero_layer : bool (K, N)
        As returned by :func:`layer_roots`: ``root_layer`` holds 1-based layers in ``1..N``
        (a layer of degree 0 has no slot), ``N`` being given by ``zero_layer``. For one
        parameter vector, roots (k_v - 1,) and zero_layer (N,), the results have no K axis.
    tol : float in [0, 1)
        Chordal distance below which two roots coincide (see the module docstring).

    Returns
    -------
    dict of ndarrays
        ``multiplicity`` (K, k_v - 1) int: multiplicity of each root in its own layer
        polynomial (0 for zero layers); ``shared`` (K, k_v - 1) bool: another layer has a root
        within ``tol`` (or is the zero polynomial); ``has_common_root`` (K,) bool;
        ``min_distance`` (K,): smallest chordal distance between cluster centres of different
        layers (0 when a zero layer shares roots, NaN when fewer than two layers have roots);
        ``pair_shares`` (K, N, N) bool: layers i, j (0-based) share a root.
    """
    if np.ndim(roots) == 1 and np.ndim(zero_layer) == 1:  # layer_roots of one vector
        out = common_roots(np.asarray(roots)[None], root_layer, np.asarray(zero_layer)[None], tol)
        return {key: val[0] for key, val in out.items()}
    tol = _check_fraction(tol, "tol")
    z, root_layer, zero_layer = _check_layers(roots, root_layer, zero_layer)
    K, nr = z.shape
    N = zero_layer.shape[1]
    mult = np.zeros((K, nr), dtype=np.int64)
    centre = np.full((K, nr), np.nan + 0j)
    slots = [np.flatnonzero(root_layer == i + 1) for i in range(N)]
    degree = np.array([s.size for s in slots])
    for i, sl in enumerate(slots):
        if sl.size:
            mult[:, sl], centre[:, sl] = root_clusters(z[:, sl], tol)
    shares = np.zeros((K, N, N), dtype=bool)
    dist = np.full((K, N, N), np.inf)
    for i in range(N):
        for j in range(i + 1, N):
            if degree[i] and degree[j]:
                D = chordal_distance(centre[:, slots[i], None], centre[:, None, slots[j]])
                D = np.where(np.isnan(D), np.inf, D)
                dmin = D.min(axis=(1, 2))
            else:
                dmin = np.full(K, np.inf)
            # the zero polynomial shares every point with any layer that has roots or is zero
            zi, zj = zero_layer[:, i], zero_layer[:, j]
            zero_rule = (zi & (zj | (degree[j] > 0))) | (zj & (zi | (degree[i] > 0)))
            dmin = np.where(zero_rule, 0.0, dmin)
            dist[:, i, j] = dist[:, j, i] = dmin
            shares[:, i, j] = shares[:, j, i] = dmin <= tol
    shared = np.zeros((K, nr), dtype=bool)
    for i, sl in enumerate(slots):
        if not sl.size:
            continue
        for j in range(N):
            if j == i:
                continue
            if degree[j]:
                D = chordal_distance(centre[:, sl, None], centre[:, None, slots[j]])
                near = (np.where(np.isnan(D), np.inf, D) <= tol).any(axis=2)
            else:
                near = np.zeros((K, sl.size), dtype=bool)
            zj = zero_layer[:, j][:, None]
            zi = zero_layer[:, i][:, None]
            shared[:, sl] |= near | zj | (zi & (zero_layer[:, j][:, None] | (degree[j] > 0)))
    has_pair = np.isfinite(dist).reshape(K, -1).any(axis=1)
    min_distance = np.where(has_pair, dist.reshape(K, -1).min(axis=1), np.nan)
    return {
        "multiplicity": mult,
        "shared": shared,
        "has_common_root": shares.any(axis=(1, 2)),
        "min_distance": min_distance,
        "pair_shares": shares,
    }
