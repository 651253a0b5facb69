"""The function-space Hessian of the losses off the Gram path, H = d^2 L / dv^2 (k_v, k_v) =
sum over outputs of l''(r) x x^T (x the output's window; conventions: lcnfast._kernels).

Private module: every function assumes clean, validated, C-contiguous float64/int64 input.

- :func:`data_hessian`: vectorised on the fast data path's layout (lcnfast._data_path,
  mode 2: m >= 16 samples), reached through the compiled data path (lcnfast._data_entry):
  per chunk, z by the convolution, l'' over the chunk (log-cosh: :func:`_lc_d2`, from the
  tanh's range reduction; l_p with an integer p, pseudo-Huber and generalized Huber
  vectorised too; the other losses: losses.loss_d2 per element), then for each row a of the upper triangle
  w = l'' x_a and one correlation pass (lcnfast._taps) adding
  sum_t w_t X[t + (a..) sh] to H[a, a:]; ~1e-15 relative from one window at a time. On the
  benchmark's log-cosh case (64; 5,5,5), m = 256 it took the Hessian of a flow from ~840 to
  ~53 us (2 threads, with the gradient hessian_one also needs from the fast path).
- :func:`_fs_hessian_seq`: one window at a time, in order, libm's l'': the exact path, and
  the Hessian where the layout does not apply.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._data_path import _GROUP_ELEMS, _buf_size, _buf_views, _conv_sh, _corr_sh, _layout
from ._jit import JIT as _JIT
from ._jit import JIT_C as _JIT_C
from ._loss_rows import _hypot_parts, _lp_fast, _pow_uint
from ._simd import prefer_512
from .losses import (GENERALIZED_HUBER, LOG_COSH, LP, PSEUDO_HUBER, _pow2_neg_k, _tanh_consts,
                     _tanh_reduced, loss_d2)


@nb.njit(**_JIT_C)
def _lc_d2(p0, z, y, c, n):
    """log-cosh, n outputs: c = l''(z - y) = alpha sech^2(alpha d), d = |z - y| (clamped to
    _TANH_X_MAX / alpha), from the tanh's range reduction (losses._tanh_reduced: k, and
    tanh h = p / q for the reduced h): with S = 2^-k, sech^2 = 4 S (q - p)(q + p) / F^2,
    F = (1 + S) q + (1 - S) p (the tanh's denominator times S): no cancellation, no overflow
    (S >= 2^-1010), a few ulp from libm's formula."""
    prefer_512()
    cs = _tanh_consts(p0)
    bound = cs[0]
    for t in range(n):
        d = abs(z[t] - y[t])
        d = bound if d > bound else d  # NaN stays NaN
        sh, p, q = _tanh_reduced(d, cs)
        S = _pow2_neg_k(sh)
        F = q * (1.0 + S) + p * (1.0 - S)
        c[t] = p0 * (4.0 * S) * ((q - p) * (q + p)) / (F * F)


@nb.njit(**_JIT_C)
def _lp_d2(p, z, y, c, n):
    """l_p with an integer p from 2 to 64: c = (p - 1) |r|^(p-2), r = z - y (repeated
    squaring, lcnfast._loss_rows._pow_uint)."""
    prefer_512()
    e = int(p) - 2
    for t in range(n):
        c[t] = (p - 1.0) * _pow_uint(abs(z[t] - y[t]), e)


@nb.njit(**_JIT_C)
def _pseudo_huber_d2(delta, z, y, c, n):
    """pseudo-Huber: c = 1 / (delta hypot(1, u)^3), u = (z - y) / delta, with hypot(1, u) =
    w sqrt(1 + (v / w)^2) (lcnfast._loss_rows._hypot_parts)."""
    prefer_512()
    inv = 1.0 / delta
    for t in range(n):
        v, w, s = _hypot_parts(z[t] - y[t], inv)
        h = 1.0 / (w * s)
        c[t] = h * h * h * inv


@nb.njit(**_JIT_C)
def _gen_huber_d2(alpha, beta, z, y, c, n):
    """generalized Huber: c = l''(z - y) = alpha E (4 E + beta (1 + E^2)) / ((1 - E)^2 +
    (2 + beta) E)^2, E = e^-a, a = alpha |z - y|, from the pieces of the l' row
    (lcnfast._loss_rows._gen_huber_g: E = S M / P, 1 - E = F1 / P) multiplied through by
    P^4: alpha S M P N / D^2 with D = F1^2 + (2 + beta) S M P (two non-negative terms) and
    N = 4 S M P + beta (P^2 + S^2 M^2) where E <= 1/2, else (2 + beta)(P^2 + S^2 M^2) - 2 F1^2
    (libm's loss_d2 splits the same way, for the same cancellations). Past a = 700 (the
    row's clamp) 0, where libm's is below 1e-304 alpha |beta|."""
    prefer_512()
    cs = _tanh_consts(0.5 * alpha)
    bound = cs[0]  # 700 / alpha
    b2 = 2.0 + beta
    for t in range(n):
        d = abs(z[t] - y[t])
        past = d > bound  # False for NaN, which stays NaN
        d = bound if past else d
        sh, p, q = _tanh_reduced(d, cs)  # k = round(alpha d / ln2) in the low bits of sh
        S = _pow2_neg_k(sh)
        P = q + p
        SM = S * (q - p)
        F1 = q * (1.0 - S) + p * (1.0 + S)
        D = F1 * F1 + b2 * (SM * P)
        sq = P * P + SM * SM
        N = b2 * sq - 2.0 * (F1 * F1) if 2.0 * SM > P else 4.0 * (SM * P) + beta * sq
        v = alpha * (SM * P) * N / (D * D)
        c[t] = 0.0 if past else v


@nb.njit(**_JIT_C)
def _scaled(c, x, w, n):
    """w = c x over n elements."""
    prefer_512()
    for t in range(n):
        w[t] = c[t] * x[t]


@nb.njit(**_JIT)
def _hess_chunk(code, p0, p1, kv, v, H, Xv, yv, n, sh, z, c, w):
    """One chunk of :func:`data_hessian` (the windows of lcnfast._data_path._col_chunk):
    H[a, a:] += sum_t l''(r_t) X[t + a sh] X[t + (a..) sh], one correlation pass per row a."""
    _conv_sh(v, kv, Xv, sh, z, n)
    if code == LOG_COSH:
        _lc_d2(p0, z, yv, c, n)
    elif code == LP and _lp_fast(p0):
        _lp_d2(p0, z, yv, c, n)
    elif code == PSEUDO_HUBER:
        _pseudo_huber_d2(p0, z, yv, c, n)
    elif code == GENERALIZED_HUBER:
        _gen_huber_d2(p0, p1, z, yv, c, n)
    else:
        for t in range(n):
            c[t] = loss_d2(code, p0, p1, z[t] - yv[t])
    for a in range(kv):
        xa = Xv[a * sh :]
        _scaled(c, xa, w, n)
        _corr_sh(w, kv - a, xa, sh, n, H[a, a:])


@nb.njit(**_JIT)
def data_hessian(code, p0, p1, kv, dN, sv, Xt, Yt, v, H, buf):
    """Function-space Hessian H (k_v, k_v) = sum over outputs of l''(r) x x^T (x the output's
    window) on the fast path's layout, mode 2 only: returns 1.0, or NaN with H untouched in
    the other modes (or with a ``buf`` not from lcnfast._data_path._data_buf). Vectorised like
    lcnfast._data_path.data_pass: z by the convolution, l'' over the chunk (:func:`_lc_d2`,
    :func:`_lp_d2` for an integer p, :func:`_pseudo_huber_d2`, :func:`_gen_huber_d2`; the
    other losses: losses.loss_d2 per element), then for each row a of the upper triangle w = l'' x_a and
    one correlation pass; ~1e-15 relative from one window at a time."""
    m, d0 = Xt.shape
    mode, R, L = _layout(m, d0, dN, sv)
    if mode != 2 or buf.shape[0] < _buf_size(mode, L, m, d0, dN):
        return np.nan
    parts, Xc, Yc = _buf_views(buf, mode, L, m, d0, dN)
    z = parts[0]
    c = parts[1]
    w = parts[2]
    for a in range(kv):
        for q in range(kv):
            H[a, q] = 0.0
    for b0 in range(0, m, R):
        bw = min(R, m - b0)
        Xb = Xc[b0 * d0 :]
        Yb = Yc[b0 * dN :]
        if sv == 1:
            tot = dN * bw
            for u0 in range(0, tot, _GROUP_ELEMS):
                cn = min(_GROUP_ELEMS, tot - u0)
                _hess_chunk(code, p0, p1, kv, v, H, Xb[u0:], Yb[u0:], cn, bw, z, c, w)
        else:
            for j in range(dN):
                for i0 in range(0, bw, _GROUP_ELEMS):
                    cn = min(_GROUP_ELEMS, bw - i0)
                    _hess_chunk(code, p0, p1, kv, v, H, Xb[j * sv * bw + i0 :],
                                Yb[j * bw + i0 :], cn, bw, z, c, w)
    for a in range(kv):
        for q in range(a):
            H[a, q] = H[q, a]
    return 1.0


@nb.njit(**_JIT)
def _fs_hessian_seq(model, v, H):
    """Function-space Hessian H (k_v, k_v) one window at a time, in the order (i, j), libm's
    l'' (losses.loss_d2): the exact path, and the Hessian where data_hessian's layout does not
    apply."""
    kv = model.k_v
    H[:, :] = 0.0
    Xt = model.Xt
    Yt = model.Yt
    sv = model.s_v
    for i in range(Xt.shape[0]):
        for j in range(model.d_N):
            xw = Xt[i, j * sv : j * sv + kv]
            z = 0.0
            for n in range(kv):
                z += v[n] * xw[n]
            c = loss_d2(model.code, model.p0, model.p1, z - Yt[i, j])
            # upper triangle only (rows of H are contiguous: the q loop vectorises)
            for n in range(kv):
                cx = c * xw[n]
                Hn = H[n]
                for q in range(n, kv):
                    Hn[q] += cx * xw[q]
    for n in range(kv):
        for q in range(n):
            H[n, q] = H[q, n]
