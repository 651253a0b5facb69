"""The residual derivative of the fast data path for the losses other than log-cosh (which has
passes of its own in lcnfast._data_path): g = l'(z - y) over a row or chunk of n outputs and,
if wanted, the sum of the loss values l(z - y).

Private module: every function assumes clean, validated, C-contiguous float64 input.

:func:`loss_row` picks, by the loss code:
- the square loss (on this path when use_gram=False): :func:`_square_row`, g = 2 r
  (the bits of lcnfast.losses.loss_d1), the loss summed under 'reassoc';
- the l_p loss with an integer p from 2 to 64 (Theorem 3.8's even p among them):
  :func:`_lp_row`, |r|^(p-1) by repeated squaring (six squarings and a product for each set
  bit of p - 1, selects on bits that do not depend on the element, so that LLVM vectorises
  the loop; libm's pow, which it cannot vectorise, took ~90% of the time). Relative error at
  most ~2 (p - 1) eps: the error of x^(2^j) doubles with each squaring, and the products add
  one rounding each; against pow's < 1 ulp;
- the pseudo-Huber loss: :func:`_pseudo_huber_row`, with u = r / delta,
  hypot(1, u) = w sqrt(1 + (v / w)^2) and l'(r) = copysign(v, u) / sqrt(1 + (v / w)^2),
  v = min(|u|, 1), w = max(|u|, 1), so that nothing overflows (libm's hypot, a call per
  element, is not vectorised); a few ulp from libm's hypot;
- the generalized Huber loss with 2e-30 <= alpha <= 2e30: :func:`_gen_huber_row`, its
  derivative from the range reduction and rational of the data path's tanh
  (lcnfast.losses._tanh_nd_in_range) for x = a / 2, a = alpha |r| clamped to 700: k =
  round(a / ln2), tanh of the reduced argument p / q, S = 2^-k, E = e^-a = S (q - p) / (q + p),
  and l' = sign(r) (1 - E^2) / (1 + E^2 + beta E) multiplied through by (q + p)^2:
  F1 F2 / (F1^2 + (2 + beta) S M P), F1 = P - S M = q (1 - S) + p (1 + S),
  F2 = P + S M = q (1 + S) + p (1 - S), P = q + p, M = q - p: one division, nothing that
  overflows, and no cancellation: at small a (S = 1) F1 is 2p, and the denominator is a
  sum of two non-negative terms for every beta > -2 (as lcnfast.losses._gh_den writes
  1 + E^2 + beta E, which cancels as beta nears -2). Its loss values stay libm's (exp, log),
  in order;
- any other loss (and l_p with any other p): :func:`_scalar_row`, libm's functions per
  element (lcnfast.losses.loss_d1 and loss_value), the loss summed in order.
Each computes g in a loop of its own and the loss values in a second one (under 'reassoc',
so that the sum vectorises), so g is bitwise the same whether the loss is wanted or not.
NaN residuals give NaN in g and in the loss.
"""

from __future__ import annotations

import math

import numba as nb

from ._jit import JIT, JIT_C, JIT_R
from ._simd import prefer_512
from .losses import (ALPHA_MAX, ALPHA_MIN, GENERALIZED_HUBER, LP, PSEUDO_HUBER, SQUARE,
                     _pow2_neg_k, _tanh_consts, _tanh_reduced, loss_d1, loss_value)

# l_p's exponent p - 1 must have at most this many bits for _lp_row (p <= 64)
_LP_POW_BITS = 6


@nb.njit(inline="always", error_model="numpy")
def _pow_uint(x, e):
    """x**e for an integer 0 <= e < 2**_LP_POW_BITS by repeated squaring (e the same for every
    element of a loop: the tests on its bits become selects)."""
    acc = 1.0
    b = x
    for k in range(_LP_POW_BITS):
        if (e >> k) & 1:
            acc *= b
        b *= b
    return acc


def lp_is_vectorised(p):
    """Whether :func:`loss_row` takes the vectorised l_p path for this p."""
    return p == math.floor(p) and 2.0 <= p <= 2.0**_LP_POW_BITS


_lp_fast = nb.njit(inline="always")(lp_is_vectorised)


@nb.njit(**JIT_C)
def _lp_g(p, z, y, g, n):
    """g = sign(r) |r|^(p-1), r = z - y (integer p from 2 to 64)."""
    prefer_512()
    e = int(p) - 1
    for t in range(n):
        r = z[t] - y[t]
        g[t] = math.copysign(_pow_uint(abs(r), e), r)


@nb.njit(**JIT_R)
def _lp_sum(p, z, y, g, n):
    """sum_t |r_t|^p / p from g = sign(r) |r|^(p-1)."""
    prefer_512()
    s = 0.0
    for t in range(n):
        s += abs(g[t]) * abs(z[t] - y[t])
    return s / p


@nb.njit(**JIT)
def _lp_row(p, z, y, g, n, total, want_loss):
    _lp_g(p, z, y, g, n)
    return total + _lp_sum(p, z, y, g, n) if want_loss else total


@nb.njit(**JIT_C)
def _square_g(z, y, g, n):
    """g = 2 (z - y)."""
    prefer_512()
    for t in range(n):
        g[t] = 2.0 * (z[t] - y[t])


@nb.njit(**JIT_R)
def _square_sum(z, y, n):
    """sum_t (z_t - y_t)^2."""
    prefer_512()
    s = 0.0
    for t in range(n):
        r = z[t] - y[t]
        s += r * r
    return s


@nb.njit(**JIT)
def _square_row(z, y, g, n, total, want_loss):
    _square_g(z, y, g, n)
    return total + _square_sum(z, y, n) if want_loss else total


@nb.njit(inline="always", error_model="numpy")
def _hypot_parts(r, inv_delta):
    """(v, w, s) with u = r / delta: v = min(|u|, 1) (NaN if u is), w = max(|u|, 1),
    s = sqrt(1 + (v / w)^2); hypot(1, u) = w s and u / hypot(1, u) = copysign(v, u) / s."""
    au = abs(r * inv_delta)
    big = au >= 1.0  # false for NaN: v = NaN, and the NaN reaches g and the loss
    v = 1.0 if big else au
    w = au if big else 1.0
    q = v / w
    return v, w, math.sqrt(1.0 + q * q)


@nb.njit(**JIT_C)
def _pseudo_huber_g(delta, z, y, g, n):
    """g = u / hypot(1, u), u = (z - y) / delta."""
    prefer_512()
    inv = 1.0 / delta
    for t in range(n):
        r = z[t] - y[t]
        v, w, s = _hypot_parts(r, inv)
        g[t] = math.copysign(v, r) / s


@nb.njit(**JIT_R)
def _pseudo_huber_sum(delta, z, y, n):
    """sum_t delta hypot(1, (z_t - y_t) / delta)."""
    prefer_512()
    inv = 1.0 / delta
    s_sum = 0.0
    for t in range(n):
        v, w, s = _hypot_parts(z[t] - y[t], inv)
        s_sum += w * s
    return delta * s_sum


@nb.njit(**JIT)
def _pseudo_huber_row(delta, z, y, g, n, total, want_loss):
    _pseudo_huber_g(delta, z, y, g, n)
    return total + _pseudo_huber_sum(delta, z, y, n) if want_loss else total


@nb.njit(**JIT_C)
def _gen_huber_g(alpha, beta, z, y, g, n):
    """g = l'(z - y) of the generalized Huber loss (see the module docstring)."""
    prefer_512()
    cs = _tanh_consts(0.5 * alpha)
    bound = cs[0]  # 700 / alpha
    b2 = 2.0 + beta  # exact for beta in [-2, -1] (Sterbenz), where it matters
    for t in range(n):
        r = z[t] - y[t]
        d = abs(r)
        d = bound if d > bound else d  # NaN stays NaN
        sh, p, q = _tanh_reduced(d, cs)  # k = round(alpha d / ln2) in the low bits of sh
        S = _pow2_neg_k(sh)
        f1 = q * (1.0 - S) + p * (1.0 + S)  # P - S M >= 0
        f2 = q * (1.0 + S) + p * (1.0 - S)  # P + S M
        g[t] = math.copysign(f1 * f2 / (f1 * f1 + b2 * (S * (q - p)) * (q + p)), r)


@nb.njit(**JIT)
def _gen_huber_row(alpha, beta, z, y, g, n, total, want_loss):
    _gen_huber_g(alpha, beta, z, y, g, n)
    if want_loss:
        for t in range(n):
            total += loss_value(GENERALIZED_HUBER, alpha, beta, z[t] - y[t])
    return total


@nb.njit(**JIT)
def _scalar_row(code, p0, p1, z, y, g, n, total, want_loss):
    """Any loss: g = l'(z - y); returns total + sum l(z - y), summed one residual at a time in
    order, if ``want_loss`` (else total)."""
    for t in range(n):
        r = z[t] - y[t]
        if want_loss:
            total += loss_value(code, p0, p1, r)
        g[t] = loss_d1(code, p0, p1, r)
    return total


@nb.njit(**JIT)
def loss_row(code, p0, p1, z, y, g, n, total, want_loss):
    """g = l'(z - y) over n outputs (loss ``code``, parameters p0, p1; not log-cosh); returns
    total + the sum of l(z - y) if ``want_loss``, else total."""
    if code == SQUARE:
        return _square_row(z, y, g, n, total, want_loss)
    if code == LP and _lp_fast(p0):
        return _lp_row(p0, z, y, g, n, total, want_loss)
    if code == PSEUDO_HUBER:
        return _pseudo_huber_row(p0, z, y, g, n, total, want_loss)
    if code == GENERALIZED_HUBER and 2.0 * ALPHA_MIN <= p0 <= 2.0 * ALPHA_MAX:
        return _gen_huber_row(p0, p1, z, y, g, n, total, want_loss)
    return _scalar_row(code, p0, p1, z, y, g, n, total, want_loss)
