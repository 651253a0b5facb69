"""Slow, obviously-correct references, written from the paper's definitions (not from the
kernels in ``lcnfast._kernels``).

- Architecture: eq. (1.5) ``d_i = (d_{i-1} - k_i) / s_i + 1`` and Prop. 1.1 (``k_v``, ``s_v``).
- Layers: the dense convolution matrix ``Pi_{(d_{i-1}, d_i), k_i, s_i}(w)`` of eq. (1.4), of
  shape ``(d_i, d_{i-1})``: row ``j`` (0-based) holds ``w`` in columns ``j s_i .. j s_i + k_i - 1``.
- Network: ``V = W_N ... W_1`` (dense matrix product); the final filter ``v`` is read off the
  first row of ``V`` (Prop. 1.1: row ``j`` of ``V`` is ``v`` shifted by ``j s_v``).
- Empirical risk: ``L(w) = sum_i l(V x_i, y_i)`` with the losses of eq. (1.8) and section 3.3,
  each a plain sum over residual coordinates ``r = V X - Y``.
- Losses: plain numpy formulas (log-sum-exp for the exponential ones), hand-derived first
  and second derivatives, and mpmath versions of the definitions (with ``mpmath.diff``).
- Derivatives of L by central finite differences: the gradient of the reference risk
  (evaluated in long double so the differences are truncation- not rounding-limited), the
  Hessian of a gradient function passed in (the tests pass ``Problem.grad``), the Jacobian and
  second derivatives of the reference final filter (exact up to rounding: pi is multilinear).
- Chain-rule references in function space from the explicit patch matrix P (vec(VX) = P v).

Nothing here is fast, and nothing here imports ``lcnfast``.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np

# ----------------------------------------------------------------------------- architecture


def first_bad_layer(d0, k, s):
    """1-based index of the first layer violating eq. (1.5) (k > d_in, k < 1, s < 1 or
    (d_in - k) / s not whole), or None if the architecture is valid."""
    d = d0
    for i, (ki, si) in enumerate(zip(k, s)):
        if ki < 1 or si < 1 or ki > d or (d - ki) % si:
            return i + 1
        d = (d - ki) // si + 1
    return None


def widths(d0, k, s):
    """Layer widths ``(d_0, ..., d_N)`` from eq. (1.5); asserts they are whole and >= 1."""
    d = [d0]
    for ki, si in zip(k, s):
        num = d[-1] - ki
        assert num >= 0 and num % si == 0, (d0, k, s)
        d.append(num // si + 1)
    return tuple(d)


def k_v(k, s):
    """Final filter width of Prop. 1.1: ``k_1 + sum_{i>=2} (k_i - 1) s_1 ... s_{i-1}``."""
    total = k[0]
    for i in range(1, len(k)):
        total += (k[i] - 1) * math.prod(s[:i])
    return total


def s_v(s):
    """Final stride of Prop. 1.1: ``s_1 ... s_N``."""
    return math.prod(s)


def dilations(s):
    """``S_i = s_1 ... s_{i-1}`` (exponent spacing of the layer polynomial, eq. 2.1)."""
    return tuple(math.prod(s[:i]) for i in range(len(s)))


def _floats(a, dtype=None):
    """``a`` as a float array: float64 unless ``dtype`` (or ``a`` itself) is long double."""
    a = np.asarray(a)
    if dtype is None:
        dtype = np.longdouble if a.dtype == np.longdouble else np.float64
    return a.astype(dtype, copy=False)


def split(w, k, dtype=None):
    """Split the flat parameter vector into the layer filters ``w^(1), ..., w^(N)``."""
    w = _floats(w, dtype)
    assert w.shape == (sum(k),)
    out, o = [], 0
    for ki in k:
        out.append(w[o : o + ki])
        o += ki
    return out


# ----------------------------------------------------------------------------- the network


def conv_matrix(filt, d_in, stride):
    """``Pi_{(d_in, d_out), k, s}(filt)`` of eq. (1.4): a dense (d_out, d_in) matrix."""
    filt = _floats(filt)
    kk = filt.shape[0]
    assert (d_in - kk) % stride == 0 and d_in >= kk
    d_out = (d_in - kk) // stride + 1
    W = np.zeros((d_out, d_in), dtype=filt.dtype)
    for j in range(d_out):
        W[j, j * stride : j * stride + kk] = filt
    return W


def layer_matrices(w, d0, k, s, dtype=None):
    """The N dense layer matrices ``W_1, ..., W_N``."""
    d = widths(d0, k, s)
    return [conv_matrix(f, d[i], s[i]) for i, f in enumerate(split(w, k, dtype))]


def product_matrix(w, d0, k, s, dtype=None):
    """``V = W_N ... W_1`` (d_N, d0)."""
    Ws = layer_matrices(w, d0, k, s, dtype)
    V = np.eye(d0, dtype=Ws[0].dtype)
    for W in Ws:
        V = W @ V
    return V


def final_filter(w, d0, k, s):
    """Final filter ``v = pi(w)``: the first ``k_v`` entries of the first row of ``V``."""
    V = product_matrix(w, d0, k, s)
    return V[0, : k_v(k, s)].copy()


def final_filter_small(w, k, s):
    """The final filter from the smallest valid input width ``d0 = k_v`` (d_N = 1 is not
    always reachable, so we build d0 backwards from d_N = 1): cheap for Jacobians."""
    d = 1
    for ki, si in zip(reversed(k), reversed(s)):
        d = (d - 1) * si + ki
    return final_filter(w, d, k, s)


def predict(w, d0, k, s, X, dtype=None):
    """Network output ``V X`` (d_N, m)."""
    V = product_matrix(w, d0, k, s, dtype)
    return V @ _floats(X, V.dtype)


# ----------------------------------------------------------------------------- losses
# Residual-wise losses l(r), r = z - y, straight from section 3.3 / eq. (1.8). The argument
# ``params`` is (p,), (delta,), (alpha, beta) or (alpha,) as in lcnfast.losses.


def _gh_value(r, alpha, beta):
    # log(e^{x} + e^{-x} + beta), x = alpha r, via numpy's stable log-sum-exp:
    # log(2 cosh x) = logaddexp(x, -x), then log(2 cosh x + beta)
    #   = log(2 cosh x) + log1p(beta / (2 cosh x)).
    x = alpha * r
    lse = np.logaddexp(x, -x)
    return (lse + np.log1p(beta * np.exp(-lse))) / alpha


def loss_value(name, params, r):
    """Elementwise ``l(r)`` (float64 numpy, direct formulas; log-sum-exp for the two
    exponential losses so that |alpha r| up to ~1e300 does not overflow)."""
    r = _floats(r)
    if name == "square":
        return r**2
    if name == "lp":
        (p,) = params
        return np.abs(r) ** p / p
    if name == "pseudo_huber":
        (delta,) = params
        return delta * np.sqrt(1.0 + r**2 / delta**2)
    if name == "generalized_huber":
        alpha, beta = params
        return _gh_value(r, alpha, beta)
    if name == "log_cosh":
        (alpha,) = params
        a = np.abs(alpha * r)
        # log cosh a = -log(1 - tanh^2 a) / 2 below 1 (no cancellation at small a, where
        # log(e^a + e^-a) - log 2 loses all digits), a + log(1 + e^-2a) - log 2 above
        small = -0.5 * np.log1p(-np.tanh(np.minimum(a, 1.0)) ** 2)
        large = a + np.log1p(np.exp(-2.0 * a)) - np.log(np.asarray(2.0, r.dtype))
        return np.where(a < 1.0, small, large) / alpha
    raise ValueError(name)


def loss_d1(name, params, r):
    """Elementwise ``l'(r)`` by hand from the definitions (moderate |alpha r| only)."""
    r = np.asarray(r, dtype=float)
    if name == "square":
        return 2.0 * r
    if name == "lp":
        (p,) = params
        return np.sign(r) * np.abs(r) ** (p - 1)
    if name == "pseudo_huber":
        (delta,) = params
        return r / delta / np.sqrt(1.0 + r**2 / delta**2)
    if name == "generalized_huber":
        alpha, beta = params
        x = alpha * r
        return (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x) + beta)
    if name == "log_cosh":
        (alpha,) = params
        return np.tanh(alpha * r)
    raise ValueError(name)


def loss_d2(name, params, r):
    """Elementwise ``l''(r)`` by hand from the definitions (moderate |alpha r|, r != 0 for
    lp with p < 2)."""
    r = np.asarray(r, dtype=float)
    if name == "square":
        return np.full_like(r, 2.0)
    if name == "lp":
        (p,) = params
        if p == 1:
            return np.zeros_like(r)
        return (p - 1) * np.abs(r) ** (p - 2)
    if name == "pseudo_huber":
        (delta,) = params
        return 1.0 / delta / (1.0 + r**2 / delta**2) ** 1.5
    if name == "generalized_huber":
        alpha, beta = params
        # d/dr sinh-ratio: alpha (c (c + beta) - sn^2) / (c + beta)^2 with c = e^x + e^-x,
        # sn = e^x - e^-x, and c^2 - sn^2 = 4 (cancellation-free form)
        x = alpha * r
        c = np.exp(x) + np.exp(-x)
        return alpha * (4.0 + beta * c) / (c + beta) ** 2
    if name == "log_cosh":
        (alpha,) = params
        return alpha / np.cosh(alpha * r) ** 2
    raise ValueError(name)


def loss_value_mp(name, params, r, dps=60):
    """``l(r)`` for one residual in high precision (mpmath), the definitions verbatim.

    Works at ``dps`` digits or at the current precision if higher (mpmath.diff raises it)."""
    with mpmath.workdps(max(dps, mpmath.mp.dps)):
        r = r if isinstance(r, mpmath.mpf) else mpmath.mpf(float(r))
        if name == "square":
            return r**2
        if name == "lp":
            p = mpmath.mpf(params[0])
            return abs(r) ** p / p
        if name == "pseudo_huber":
            d = mpmath.mpf(params[0])
            return d * mpmath.sqrt(1 + r**2 / d**2)
        if name == "generalized_huber":
            a, b = (mpmath.mpf(x) for x in params)
            return mpmath.log(mpmath.exp(a * r) + mpmath.exp(-a * r) + b) / a
        if name == "log_cosh":
            a = mpmath.mpf(params[0])
            return mpmath.log(mpmath.cosh(a * r)) / a
    raise ValueError(name)


def loss_derivative_mp(name, params, r, order, dps=60):
    """``l^(order)(r)`` in high precision: mpmath's numerical differentiation of
    :func:`loss_value_mp` (finite differences at ``dps`` digits)."""
    with mpmath.workdps(dps):
        f = lambda x: loss_value_mp(name, params, x, dps=dps)  # noqa: E731
        return mpmath.diff(f, mpmath.mpf(float(r)), order)


def empirical_risk(name, params, w, d0, k, s, X, Y, dtype=np.float64):
    """``L(w) = sum_{i,j} l((V X - Y)_{ji})`` (paper scaling: no 1/m, no 1/2).

    ``dtype=np.longdouble`` evaluates everything in x87 extended precision (eps ~1e-19), so
    that finite differences of it are limited by truncation, not by rounding. Returns a
    Python float (rounded at the end) for float64, a long double otherwise."""
    R = residuals(w, d0, k, s, X, Y, dtype)
    total = np.sum(loss_value(name, params, R))
    return float(total) if dtype == np.float64 else total


def residuals(w, d0, k, s, X, Y, dtype=None):
    """``R = V X - Y`` (d_N, m)."""
    Z = predict(w, d0, k, s, X, dtype)
    return Z - _floats(Y, Z.dtype)


def window_gram(X, kv, sv):
    """``A = sum_{i,j} x_ij x_ij^T`` over all windows ``x_ij = X[j s_v : j s_v + k_v, i]`` of
    every sample (explicit loops)."""
    X = np.asarray(X, dtype=float)
    d0, m = X.shape
    d_N = (d0 - kv) // sv + 1
    A = np.zeros((kv, kv))
    for i in range(m):
        for j in range(d_N):
            x = X[j * sv : j * sv + kv, i]
            A += np.outer(x, x)
    return A


def function_space_risk(name, params, v, X, Y, sv, dtype=np.float64):
    """``L`` as a function of the final filter: the loss of ``Pi_{(d0, d_N), k_v, s_v}(v) X``
    (``dtype`` as in :func:`empirical_risk`)."""
    X = _floats(X, dtype)
    V = conv_matrix(_floats(v, dtype), X.shape[0], sv)
    total = np.sum(loss_value(name, params, V @ X - _floats(Y, dtype)))
    return float(total) if dtype == np.float64 else total


def patch_matrix(X, kv, sv):
    """Patch matrix P (d_N m, k_v): column n is ``vec(Pi_{(d0, d_N), k_v, s_v}(e_n) X)``, so
    that ``vec(V X) = P v`` (rows ordered as ``(V X).ravel()``, output index first)."""
    X = _floats(X)
    return np.stack([(conv_matrix(e, X.shape[0], sv) @ X).ravel() for e in np.eye(kv)], axis=1)


def function_space_derivatives(name, params, v, X, Y, sv):
    """Chain rule in function space: ``G = P^T l'(r)``, ``H_v = P^T diag(l''(r)) P`` with
    ``r = P v - vec(Y)``; also the cancellation-free magnitudes ``|P|^T |l'|`` and
    ``|P|^T diag(|l''|) |P|`` (rounding-error scales). Returns (G, Hv, G_abs, Hv_abs)."""
    P = patch_matrix(X, len(v), sv)
    r = P @ np.asarray(v, dtype=float) - _floats(Y).ravel()
    d1 = loss_d1(name, params, r)
    d2 = loss_d2(name, params, r)
    Pa = np.abs(P)
    return P.T @ d1, P.T @ (d2[:, None] * P), Pa.T @ np.abs(d1), Pa.T @ (np.abs(d2)[:, None] * Pa)


def filter_second_derivatives(w, k, s):
    """T (k_v, n, n) with ``T[m, a, b] = d^2 v_m / dw_a dw_b``, by central differences of the
    central-difference Jacobian of the reference filter. pi is multilinear in the layers, so
    both differences are exact up to rounding for any step; a unit step keeps rounding small."""
    f = lambda x: fd_jacobian(lambda y: final_filter_small(y, k, s), x, rel=1.0)  # noqa: E731
    return fd_jacobian(f, w, rel=1.0)


# ----------------------------------------------------------------------------- finite differences


def fd_steps(w, rel):
    """Per-coordinate step ``rel * max(1, |w_a|)``, rounded so that ``w_a +- h`` is exact."""
    w = np.asarray(w, dtype=float)
    h = rel * np.maximum(1.0, np.abs(w))
    return (w + h) - w


def fd_gradient(f, w, rel=1e-6):
    """Central finite-difference gradient of a scalar function ``f``:
    ``(f(w + h e_a) - f(w - h e_a)) / (2 h)``, ``h = rel * max(1, |w_a|)``."""
    w = np.asarray(w, dtype=float)
    h = fd_steps(w, rel)
    g = np.empty_like(w)
    for a in range(w.size):
        wp = w.copy()
        wm = w.copy()
        wp[a] += h[a]
        wm[a] -= h[a]
        g[a] = (f(wp) - f(wm)) / (2.0 * h[a])
    return g


def fd_jacobian(f, w, rel=1e-3):
    """Central finite-difference Jacobian (columns = coordinates) of a vector function.

    Used for the final filter, which is linear in each single coordinate of ``w`` (it is
    multilinear in the layers), so central differences are exact up to rounding for any step.
    """
    w = np.asarray(w, dtype=float)
    h = fd_steps(w, rel)
    cols = []
    for a in range(w.size):
        wp = w.copy()
        wm = w.copy()
        wp[a] += h[a]
        wm[a] -= h[a]
        cols.append((np.asarray(f(wp)) - np.asarray(f(wm))) / (2.0 * h[a]))
    return np.stack(cols, axis=-1)


def fd_hessian_of_grad(grad, w, rel=1e-5):
    """Hessian by central differences of a gradient function (the tests pass
    ``Problem.grad``): column a is ``(grad(w + h e_a) - grad(w - h e_a)) / (2 h)``."""
    return fd_jacobian(grad, w, rel=rel)


def numerical_rank(M, rtol):
    """Number of singular values above ``rtol * sigma_max``."""
    sv = np.linalg.svd(np.asarray(M, dtype=float), compute_uv=False)
    if sv.size == 0 or sv[0] == 0:
        return 0
    return int(np.sum(sv > rtol * sv[0]))


def max_rel_err(a, b, floor):
    """``max|a - b| / max(max|b|, floor)``: a max-norm relative error with a scale floor
    (as in umap's test_umap_grads.py), so that tiny entries do not dominate."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    scale = max(float(np.max(np.abs(b), initial=0.0)), floor)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale
