"""Numba kernels: final filter, loss, gradient and Hessian of an LCN empirical risk.

Private module: every function here assumes clean, validated, C-contiguous float64/int64
input (the public wrappers in :mod:`lcnfast.problem` make sure of that).

Conventions (0-based indices)
-----------------------------
- ``w`` : (n_params,) flat parameters, layer ``i`` is ``w[offs[i]:offs[i+1]]``.
- ``k``, ``S`` : (N,) filter widths and dilations ``S_i = s_1 ... s_{i-1}``.
- Layer polynomial (eq. 2.1): ``p_i(x) = sum_a w_i[a] x^(a S_i)``; the final filter ``v``
  holds the coefficients of ``p_1 ... p_N`` (Prop. 2.1), length ``k_v``.
- ``prefix`` : (N+1, k_v) workspace; row ``i`` holds the coefficients of ``p_1 ... p_i``
  (row 0 is the constant 1), so ``v = prefix[N]``.
- Data, transposed once so that windows are contiguous: ``Xt`` (m, d0), ``Yt`` (m, d_N).
  Output ``j`` of sample ``i`` sees the window ``Xt[i, j s_v : j s_v + k_v]``.
- Function-space gradient ``G = dL/dv`` (k_v,). Square loss: ``G = 2 (A v - b)`` with the
  window Gram ``A`` (k_v, k_v) and ``b`` (k_v,) (:class:`lcnfast.Problem`); other losses:
  ``G_n = sum_{i,j} l'(r_ij) Xt[i, j s_v + n]`` with ``r = VX - Y``.
- Parameter gradient by reverse mode through the polynomial product:
  ``dL/dw_i[a] = sum_m gP_i[m + a S_i] prefix[i-1][m]`` and
  ``gP_{i-1}[m] = sum_a gP_i[m + a S_i] w_i[a]``, starting from ``gP_N = G``.

Batched kernels parallelise over flows with ``prange`` over ``nc`` contiguous chunks (the
caller passes ``nc``, a few per thread); each chunk allocates its workspace once. The
arithmetic of one flow never depends on the chunking, so results are bitwise identical for any
thread count and batch composition.

Flags passed through :func:`_flag`: Numba types a literal ``True`` / ``False`` argument as its
own type and compiles the callee, with everything it calls, once per literal value. The
data-path kernels were compiled four times over that way (about 6 s of a cold start of the
quick start); a run-time bool costs one branch per chunk and gives the same numbers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from . import _taps
from ._jit import JIT as _JIT
from ._jit import JIT_C as _JIT_C
from ._jit import JIT_R as _JIT_R
from .losses import (LOG_COSH, _HALF_LN2, _LC_SERIES_MAX, _RSQRT2, _log_cosh_series,
                     _tanh_consts, _tanh_nd, _tanh_nd_in_range, loss_d1, loss_d2, loss_value)


class Model(NamedTuple):
    """Everything a kernel needs to evaluate one problem (built by :class:`lcnfast.Problem`)."""

    code: int  # loss code (lcnfast.losses)
    p0: float  # loss parameters
    p1: float
    k: np.ndarray  # (N,) int64 filter widths
    S: np.ndarray  # (N,) int64 dilations
    offs: np.ndarray  # (N+1,) int64 layer offsets
    k_v: int
    s_v: int
    d_N: int
    use_gram: bool  # square loss through the window Gram
    A: np.ndarray  # (k_v, k_v) window Gram (square loss), else (0, 0)
    b: np.ndarray  # (k_v,) (square loss), else (0,)
    yy: float  # ||Y||_F^2
    Xt: np.ndarray  # (m, d0) X transposed
    Yt: np.ndarray  # (m, d_N) Y transposed
    x_amax: float  # max |X| (the log-cosh data path's bound on its residuals)
    y_amax: float  # max |Y|


@nb.njit(**_JIT)
def _flag(x):
    """``x`` typed as a run-time bool, not a literal (see the module docstring; the result of
    ``bool`` is not a literal, a returned argument would be)."""
    return bool(x)


# ----------------------------------------------------------------------------- polynomial core
@nb.njit(**_JIT)
def forward_filter(w, k, S, offs, prefix):
    """Fill ``prefix`` (N+1, >=k_v) with the prefix products; return k_v. v = prefix[N, :k_v]."""
    N = k.shape[0]
    prefix[0, 0] = 1.0
    n = 1
    for i in range(N):
        ki = k[i]
        Si = S[i]
        o = offs[i]
        n_out = n + (ki - 1) * Si
        dst = prefix[i + 1]
        src = prefix[i]
        for m in range(n_out):
            dst[m] = 0.0
        for a in range(ki):
            wa = w[o + a]
            sh = a * Si
            for m in range(n):
                dst[m + sh] += wa * src[m]
        n = n_out
    return n


@nb.njit(**_JIT)
def backward_filter(w, k, S, offs, prefix, G, gcur, gnext, out_g):
    """Parameter gradient ``out_g`` (n_params,) from ``G = dL/dv`` and the prefix products.

    ``gcur``, ``gnext`` are (>=k_v,) scratch vectors.
    """
    N = k.shape[0]
    # lengths of the prefix rows
    n = 1
    for i in range(N):
        n += (k[i] - 1) * S[i]
    for m in range(n):
        gcur[m] = G[m]
    for i in range(N - 1, -1, -1):
        ki = k[i]
        Si = S[i]
        o = offs[i]
        n_prev = n - (ki - 1) * Si
        src = prefix[i]
        for a in range(ki):
            sh = a * Si
            acc = 0.0
            for m in range(n_prev):
                acc += gcur[m + sh] * src[m]
            out_g[o + a] = acc
        if i > 0:
            for m in range(n_prev):
                acc = 0.0
                for a in range(ki):
                    acc += gcur[m + a * Si] * w[o + a]
                gnext[m] = acc
            for m in range(n_prev):
                gcur[m] = gnext[m]
        n = n_prev


@nb.njit(**_JIT)
def product_except(w, k, S, offs, skip1, skip2, out):
    """Coefficients of the product of all layer polynomials but ``skip1`` and ``skip2``
    (pass -1 to skip nothing) into ``out``; returns their count. ``out`` needs room for
    two buffers of k_v: it is (2, >=k_v)."""
    N = k.shape[0]
    cur = 0
    out[0, 0] = 1.0
    n = 1
    for i in range(N):
        if i == skip1 or i == skip2:
            continue
        nxt = 1 - cur
        ki = k[i]
        Si = S[i]
        o = offs[i]
        n_out = n + (ki - 1) * Si
        for m in range(n_out):
            out[nxt, m] = 0.0
        for a in range(ki):
            wa = w[o + a]
            for m in range(n):
                out[nxt, m + a * Si] += wa * out[cur, m]
        cur = nxt
        n = n_out
    if cur == 1:
        for m in range(n):
            out[0, m] = out[1, m]
    return n


@nb.njit(**_JIT)
def jacobian_into(w, k, S, offs, work, J):
    """Jacobian ``J`` (k_v, n_params) of v = pi(w): column (i, a) is q_i shifted by a S_i,
    where q_i is the product of all layer polynomials but the i-th."""
    N = k.shape[0]
    J[:, :] = 0.0
    for i in range(N):
        nq = product_except(w, k, S, offs, i, -1, work)
        for a in range(k[i]):
            sh = a * S[i]
            for m in range(nq):
                J[m + sh, offs[i] + a] = work[0, m]


# ----------------------------------------------------------------------------- data path
# Non-square losses (and the square loss with use_gram=False) pass over the data once per
# evaluation. Two implementations:
#
# Exact (_fs_loss_seq, _fs_loss_grad_seq): one window at a time in the order (i, j), no
#   contraction, libm tanh/exp/log: the arithmetic of the first version of this module. z is
#   computed a row at a time by _conv_strided, in the same order. The Hessian's G uses it.
#
# Fast (_fs_loss_grad_fast), one flow at a time, every inner loop vectorised over output
#   positions (README, "How it is fast"):
#   - layout (_data_layout): mode 2 (m >= 16 and the data small enough to copy): X and Y are
#     copied once per workspace sample-major by blocks of R samples, X (d0, R), Y (d_N, R) per
#     block (R = all m for stride > 1); the windows of output j over a block's samples then
#     form contiguous rows, tap q is the row R further on, and the passes below run over
#     contiguous chunks of up to 2040 outputs with no wasted window. At stride 1, R is about
#     2048 / d0: a block of X is 16 KiB and stays in L1 through a pass (the taps of a chunk
#     of the (d0, m) layout span 13 rows of m samples, which L1 does not hold: ~5% slower).
#     With the block's z, g and Y (~13 KiB each at d0 = 64) the three passes together do
#     not fit a 32 KiB L1d, but smaller blocks measured slower (1024 / d0: ~6-10%; every
#     pass pays a fixed start-up cost per chunk), and so did g written over z (~10%).
#     Mode 1 (few samples, stride 1): groups of R rows of Xt as one flat stretch (the
#     k_v - 1 windows per row that straddle two rows are computed and given g = 0). Mode 0
#     (few samples, stride > 1): row by row, strided views.
#   - z = sum_q v_q X[. + q sh] in one pass over the first 13 taps (_taps.conv*), one FMA per
#     tap, from 7 taps on in two chains (the first half of the taps and the rest) then summed;
#     taps beyond 13 added in blocks of at most 8 (_taps.conv_add*) (z differs from the exact
#     path's by roundings);
#   - the residual derivative g over the chunk; log-cosh: vectorised tanh (losses._tanh_nd),
#     one pass for g alone (_lc_tanh) or, with the loss, two passes with shorter dependency
#     chains (_lc_prep_nd, then the division and L = sum log cosh a, a = alpha |r|, in
#     _lc_div: the Taylor series for a <= 1/8, a - log(1 + tanh a) above, the log taken
#     once per chunk of a product: _PROD_CHUNK; losses, "log cosh sums"); g is bitwise the
#     same either way; other losses: scalar l and l', in order;
#   - G_q += sum_t g_t X[t + q sh] in one pass up to 13 taps (_taps.corr*, vectorised
#     reductions under 'reassoc': the order is fixed by the shapes alone), with or without
#     the loss.
#   The scratch (5 vectors + the mode-2 copies, 64-byte aligned) comes from the caller:
#   Workspace.buf, or a fresh array in the allocating entry points.

# log-cosh loss: the log of a product of factors (1 + |tanh|) / sqrt 2 in [2^-1/2, 2^1/2] over at
# most 2040 terms (so the product stays within the normal range [2^-1022, 2^1022]), plus
# n log(2) / 2; the series below 1/8: see losses._log_cosh_series
_PROD_CHUNK = 2040
# length of a chunk (mode 2) or target length of a group of rows (mode 1)
_GROUP_ELEMS = _PROD_CHUNK
_COL_MIN_M = 16  # mode 2 needs rows of at least this many samples...
_COL_MAX_ELEMS = 1 << 22  # ...and a data copy of at most 32 MiB per workspace
# mode 2, stride 1: samples per block, so that a block of X (d0 x block) has about this many
# elements (16 KiB, in L1 through one pass; see "layout" above), and at least
_COL_BLOCK_ELEMS = 2048
_COL_MIN_BLOCK = 4

# Which data path fs_loss, fs_loss_grad, loss_grad_one, loss_grad_ws and loss_batch use (and
# lcnfast._lanes, whose data pass goes through _fs_loss_grad_buf lane by lane, so that lanes,
# loss_grad_ws and Problem.loss agree bitwise either way).
# False: the exact one (one window at a time, in order; the original arithmetic).
# True: the fast one (_fs_loss_grad_fast: vectorised over output positions, reassociated
#   sums, vectorised tanh; ~1e-15 relative from the exact one, and closer to a long-double
#   reference). The _fast entry points below always use the fast path.
# A compile-time constant (numba freezes globals; the cache follows this file).
_DATA_PATH_FAST = True


@nb.njit(**_JIT)
def _conv_sh(v, kv, X, sh, z, n):
    """z[t] = sum_{q < kv} v[q] X[t + q sh] for t < n (fast path): the first 13 taps in one
    pass, each product fused into a running sum, two chains summed from 7 taps on; taps
    beyond 13 added in blocks of at most 8 (see lcnfast/_taps_gen.py)."""
    k0 = min(kv, _taps.CONV_MAX)
    _taps.conv(k0, v, X, sh, z, n)
    rest = kv - k0
    nblk = (rest + _taps.CONV_ADD_MAX - 1) // _taps.CONV_ADD_MAX
    q = k0
    for b in range(nblk):
        k = (kv - q) // (nblk - b)
        _taps.conv_add(k, v[q:], X[q * sh :], sh, z, n)
        q += k


@nb.njit(**_JIT)
def _corr_sh(g, kv, X, sh, n, G):
    """G[q] += sum_{t < n} g[t] X[t + q sh] for q < kv, in one pass up to 13 taps (blocks of
    7..13 taps beyond)."""
    nblk = (kv + _taps.CORR_MAX - 1) // _taps.CORR_MAX
    q = 0
    for b in range(nblk):
        k = (kv - q) // (nblk - b)
        Gb = G[q:]
        Xb = X[q * sh :]
        _taps.corr(k, g, Xb, sh, n, Gb)
        q += k


@nb.njit(**_JIT)
def _conv_strided(v, kv, Xrow, sv, z, n):
    """z[t] = sum_q v[q] Xrow[t sv + q] for t < n, in the order of q from 0.0, no
    contraction (any stride; the exact path's z, and the fast path's for stride > 1)."""
    x0 = Xrow[0::sv]
    v0 = v[0]
    for t in range(n):
        z[t] = 0.0 + v0 * x0[t]
    for q in range(1, kv):
        xq = Xrow[q::sv]
        vq = v[q]
        for t in range(n):
            z[t] = z[t] + vq * xq[t]


@nb.njit(**_JIT_R)
def _dot_strided(g, xq, n):
    s = 0.0
    for t in range(n):
        s += g[t] * xq[t]
    return s


@nb.njit(**_JIT)
def _corr_strided(g, kv, Xrow, sv, n, G):
    """G[q] += sum_t g[t] Xrow[t sv + q] (stride sv > 1)."""
    for q in range(kv):
        G[q] += _dot_strided(g, Xrow[q::sv], n)


@nb.njit(**_JIT)
def _data_layout(model):
    """:func:`_layout` of the model's data."""
    m, d0 = model.Xt.shape
    return _layout(m, d0, model.d_N, model.s_v)


# The data path's helpers take scalars, not the model: every call of a function that receives
# the model costs ~30 ns (its arrays are reference-counted), which added up to ~1 us per
# evaluation (~3% of a log-cosh gradient at m = 256, d0 = 64).
@nb.njit(**_JIT)
def _layout(m, d0, dN, sv):
    """(mode, R, L) of the fast data path for m samples, d0 inputs, dN outputs, stride sv:
    mode 2 = sample-major copies of the data by blocks of R samples (X as (d0, R), Y as
    (d_N, R) per block: the windows of output j over the block's samples are contiguous rows,
    so the passes run over long contiguous stretches with no wasted window, and a block of X
    stays in L1 through a pass); mode 1 = flat groups of R rows of Xt (stride 1); mode 0 =
    row by row, strided. L = length of each of the 5 scratch vectors (at least d_N, which the
    exact loss needs)."""
    if m >= _COL_MIN_M and m * (d0 + dN) <= _COL_MAX_ELEMS:
        # stride > 1 runs the outputs row by row: one block of all samples
        R = m if sv != 1 else max(_COL_MIN_BLOCK, min(m, _COL_BLOCK_ELEMS // d0))
        return 2, R, max(_GROUP_ELEMS, dN)
    if sv != 1:
        return 0, 0, dN
    if 2 * dN < d0:
        R = 1
    else:
        R = max(1, min(m, _GROUP_ELEMS // d0))
    return 1, R, max(R * d0, dN)


@nb.njit(**_JIT)
def _buf_views(buf, mode, L, m, d0, dN):
    """Views of ``buf`` (from :func:`_data_buf`): the 5 scratch vectors z, g, aa, num, den
    (length L each) and, in mode 2, the copies X (d0 m,) and Y (d_N m,) (else empty). Every
    part starts on a 64-byte boundary (aligned vector loads when m is a multiple of 8)."""
    st = (L + 15) // 8 * 8
    a0 = ((-buf.ctypes.data) % 64) // 8
    parts = (buf[a0 : a0 + L], buf[a0 + st : a0 + st + L], buf[a0 + 2 * st : a0 + 2 * st + L],
             buf[a0 + 3 * st : a0 + 3 * st + L], buf[a0 + 4 * st : a0 + 4 * st + L])
    if mode == 2:
        xo = a0 + 5 * st
        yo = xo + (d0 * m + 7) // 8 * 8
        return parts, buf[xo : xo + d0 * m], buf[yo : yo + dN * m]
    return parts, buf[:0], buf[:0]


@nb.njit(**_JIT)
def _buf_size(mode, L, m, d0, dN):
    size = 8 + 5 * ((L + 15) // 8 * 8)
    if mode == 2:
        size += (d0 * m + 7) // 8 * 8 + dN * m
    return size


@nb.njit(**_JIT)
def _data_buf(model):
    """Scratch for the data path (empty on the Gram path), see :func:`_buf_views`."""
    if model.use_gram:
        return np.zeros(0)
    mode, R, L = _data_layout(model)
    m, d0 = model.Xt.shape
    dN = model.d_N
    buf = np.zeros(_buf_size(mode, L, m, d0, dN))
    if mode == 2:
        parts, Xc, Yc = _buf_views(buf, mode, L, m, d0, dN)
        Xt = model.Xt
        Yt = model.Yt
        for b0 in range(0, m, R):  # block of samples b0..b0+bw-1 at b0 d0 (X), b0 d_N (Y)
            bw = min(R, m - b0)
            for i in range(bw):
                for q in range(d0):
                    Xc[b0 * d0 + q * bw + i] = Xt[b0 + i, q]
                for j in range(dN):
                    Yc[b0 * dN + j * bw + i] = Yt[b0 + i, j]
    return buf


# _lc_tanh runs blocks of this many outputs through a loop whose trip count is a compile-time
# constant (then the rest through the same loop with a run-time count): LLVM interleaves the
# constant one two vectors deep, and the tanh pass alone runs ~10% faster (how much of its
# long dependency chain the out-of-order core overlaps limits it as much as its arithmetic;
# see losses, "vectorisable tanh").
_TANH_BLOCK = 512
# Each tanh loop below comes twice, with the clamp (_tanh_nd) and without (_tanh_nd_in_range,
# when _tanh_in_range allows it): a run-time choice inside one loop would be a select
# evaluated for every element, and the clamp's two comparisons would stay in the loop.


@nb.njit(**_JIT_C)
def _lc_tanh_block(cs, z, y, g, in_range):
    """g = tanh(alpha (z - y)) over the first _TANH_BLOCK elements (cs = _tanh_consts(alpha));
    ``in_range``: every |z - y| <= cs[0] is known, the clamp is skipped (same bits)."""
    if in_range:
        for t in range(_TANH_BLOCK):
            num, den = _tanh_nd_in_range(z[t] - y[t], cs)
            g[t] = num / den
    else:
        for t in range(_TANH_BLOCK):
            num, den = _tanh_nd(z[t] - y[t], cs)
            g[t] = num / den


@nb.njit(**_JIT_C)
def _lc_tanh(p0, z, y, g, n, in_range):
    """log-cosh without the loss, n outputs: g = tanh(p0 (z - y)), the division in the loop of
    the tanh (vectorised; bitwise the g of :func:`_lc_prep_nd` then :func:`_lc_div`).
    ``in_range``: see :func:`_tanh_in_range`."""
    cs = _tanh_consts(p0)
    n_fix = n - n % _TANH_BLOCK
    for t0 in range(0, n_fix, _TANH_BLOCK):
        _lc_tanh_block(cs, z[t0:], y[t0:], g[t0:], in_range)
    if in_range:
        for t in range(n_fix, n):
            num, den = _tanh_nd_in_range(z[t] - y[t], cs)
            g[t] = num / den
    else:
        for t in range(n_fix, n):
            num, den = _tanh_nd(z[t] - y[t], cs)
            g[t] = num / den


@nb.njit(**_JIT_C)
def _lc_prep_nd(p0, z, y, aa, num, den, n, in_range):
    """log-cosh with the loss, n outputs: aa = |p0 (z - y)|, tanh(p0 (z - y)) = num / den.
    ``in_range``: see :func:`_tanh_in_range`."""
    cs = _tanh_consts(p0)
    if in_range:
        for t in range(n):
            d = z[t] - y[t]
            aa[t] = abs(p0 * d)
            a, b = _tanh_nd_in_range(d, cs)
            num[t] = a
            den[t] = b
    else:
        for t in range(n):
            d = z[t] - y[t]
            aa[t] = abs(p0 * d)
            a, b = _tanh_nd(d, cs)
            num[t] = a
            den[t] = b


# Slack of the residual bound of _tanh_in_range for the roundings of z = sum_q v_q x_q and of
# r = z - y and of the bound itself: at most (1 + 2^-53)^(2 k_v + 8) <= 1 + 2^-20 for any k_v
# below 2^31.
_R_BOUND_SLACK = 1.0 + 2.0**-20


@nb.njit(**_JIT)
def _tanh_in_range(v, kv, x_amax, y_amax, p0):
    """True if every residual r = z - y of the filter v (k_v = kv taps) on data with
    max |X| = x_amax, max |Y| = y_amax is known to lie in the range of the log-cosh tanh
    without its clamp, |r| <= _TANH_X_MAX / p0 (losses._tanh_nd_in_range), rounded as the
    data path rounds it: |r| <= (sum_q |v_q| x_amax + y_amax) (1 + 2^-20). False when v is
    not finite (NaN compares false). The clamp is then a no-op, and the data path skips it:
    the same bits, ~10% less time in the tanh. The bound is pessimistic but far inside
    the range in practice: 2 to 39 for the 4096 initial filters of the benchmark's log-cosh
    case (alpha = 1, range 350); with a large alpha the clamped loop runs."""
    sv = 0.0
    for q in range(kv):
        sv += abs(v[q])
    return (sv * x_amax + y_amax) * _R_BOUND_SLACK <= _tanh_consts(p0)[0]


@nb.njit(**_JIT_R)
def _lc_div_chunk(num, den, aa, g, n):
    """g = num / den; returns sum_t log cosh aa_t (n <= _PROD_CHUNK; 'reassoc' vectorises the
    sums; the correlation of g is separate, so G does not depend on whether the loss is
    wanted)."""
    sa = 0.0
    pr = 1.0
    nl = 0.0
    for t in range(n):
        gt = num[t] / den[t]
        g[t] = gt
        a = aa[t]
        big = (a > _LC_SERIES_MAX) * 1.0  # 0/1 masks, not branches: the loop vectorises
        sa += (1.0 - big) * _log_cosh_series(min(a, _LC_SERIES_MAX)) + big * a
        pr *= (1.0 - big) + big * (_RSQRT2 + _RSQRT2 * abs(gt))
        nl += big
    return sa - (math.log(pr) + nl * _HALF_LN2)


@nb.njit(**_JIT)
def _lc_div(num, den, aa, g, n):
    """g = num / den over n elements; returns sum_t log cosh(aa_t) (log cosh a =
    a - log(1 + tanh a) for a > 1/8, a Taylor series below: see losses._log_cosh_series)."""
    acc = 0.0
    t0 = 0
    while t0 < n:
        c = min(n - t0, _PROD_CHUNK)
        acc += _lc_div_chunk(num[t0:], den[t0:], aa[t0:], g[t0:], c)
        t0 += c
    return acc


@nb.njit(**_JIT)
def _lc_g(p0, z, y, g, aa, num, den, n, want_loss, in_range):
    """log-cosh (alpha = p0), n outputs z against targets y: g = l'(z - y) = tanh(alpha (z - y))
    and, if ``want_loss``, returns sum log cosh(alpha (z - y)) (alpha times the loss; else
    0.0). g is bitwise the same either way. ``in_range``: see :func:`_tanh_in_range`."""
    if want_loss:
        _lc_prep_nd(p0, z, y, aa, num, den, n, in_range)
        return _lc_div(num, den, aa, g, n)
    _lc_tanh(p0, z, y, g, n, in_range)
    return 0.0


# inlined at the Numba level: the chunk loop's reference counting of the array views is then
# pruned (with the scalar arguments: ~0.55 instead of ~1.6 us of overhead per evaluation at
# m = 256, d0 = 64, every pass stubbed out)
@nb.njit(inline="always", **_JIT)
def _col_chunk(code, p0, p1, kv, v, G, Xv, yv, c, sh, z, g, aa, num, den, want_grad,
               want_loss, in_range, total):
    """Mode 2, one chunk of c outputs whose windows start at Xv[t] with taps sh apart (loss
    ``code`` with parameters p0, p1; k_v = kv taps)."""
    _conv_sh(v, kv, Xv, sh, z, c)
    if code == LOG_COSH:
        total += _lc_g(p0, z, yv, g, aa, num, den, c, want_loss, in_range)
    else:
        total = _generic_row(code, p0, p1, z, yv, g, c, total, want_loss)
    if want_grad:
        _corr_sh(g, kv, Xv, sh, c, G)
    return total


@nb.njit(**_JIT)
def _generic_row(code, p0, p1, z, y, g, n, total, want_loss):
    """Any loss, one row: g = l'(z - y); returns total + sum l(z - y), summed one residual at
    a time in order (as fs_loss), if ``want_loss`` (else total)."""
    for t in range(n):
        r = z[t] - y[t]
        if want_loss:
            total += loss_value(code, p0, p1, r)
        g[t] = loss_d1(code, p0, p1, r)
    return total


@nb.njit(**_JIT)
def _fs_loss_grad_fast(model, v, G, buf, want_grad, want_loss):
    """Fast data path: L(v) if ``want_loss`` (else NaN) and, if ``want_grad``, G = dL/dv,
    with the scratch ``buf`` (from :func:`_data_buf`). Neither result depends on whether the
    other is wanted (bitwise); without the loss, log-cosh runs fewer passes."""
    kv = model.k_v
    dN = model.d_N
    Xt = model.Xt
    Yt = model.Yt
    m, d0 = Xt.shape
    sv = model.s_v
    code = model.code
    p0 = model.p0
    p1 = model.p1
    mode, R, L = _layout(m, d0, dN, sv)
    if buf.shape[0] < _buf_size(mode, L, m, d0, dN):  # not from _data_buf(model): no result
        if want_grad:
            G[:kv] = np.nan
        return np.nan
    parts, Xc, Yc = _buf_views(buf, mode, L, m, d0, dN)
    z = parts[0]  # outputs
    g = parts[1]  # the residual derivative (zero between rows in mode 1)
    aa = parts[2]  # log-cosh: |p0 r|
    num = parts[3]  # log-cosh: tanh = num / den
    den = parts[4]
    lc = code == LOG_COSH
    in_range = lc and _tanh_in_range(v, kv, model.x_amax, model.y_amax, p0)
    if want_grad:
        for q in range(kv):
            G[q] = 0.0
    total = 0.0
    if mode == 2:  # sample-major copies by blocks of R samples: contiguous chunks, taps bw apart
        for b0 in range(0, m, R):
            bw = min(R, m - b0)
            Xb = Xc[b0 * d0 :]
            Yb = Yc[b0 * dN :]
            if sv == 1:
                tot = dN * bw
                for u0 in range(0, tot, _GROUP_ELEMS):
                    c = min(_GROUP_ELEMS, tot - u0)
                    total = _col_chunk(code, p0, p1, kv, v, G, Xb[u0:], Yb[u0:], c, bw, z, g,
                                       aa, num, den, want_grad, want_loss, in_range, total)
            else:
                for j in range(dN):
                    for i0 in range(0, bw, _GROUP_ELEMS):
                        c = min(_GROUP_ELEMS, bw - i0)
                        total = _col_chunk(code, p0, p1, kv, v, G, Xb[j * sv * bw + i0 :],
                                           Yb[j * bw + i0 :], c, bw, z, g, aa, num, den,
                                           want_grad, want_loss, in_range, total)
    elif mode == 0:  # stride > 1: row by row
        for i in range(m):
            _conv_strided(v, kv, Xt[i], sv, z, dN)
            if lc:
                total += _lc_g(p0, z, Yt[i], g, aa, num, den, dN, want_loss, in_range)
            else:
                total = _generic_row(code, p0, p1, z, Yt[i], g, dN, total, want_loss)
            if want_grad:
                _corr_strided(g, kv, Xt[i], sv, dN, G)
    else:
        Xf = Xt.reshape(m * d0)
        # windows straddling two rows get g = 0 (aa = 0, tanh = 0 / 1): set once, never
        # overwritten
        for o in range(dN, L, d0):
            for t in range(o, min(o + d0 - dN, L)):
                g[t] = 0.0
                aa[t] = 0.0
                num[t] = 0.0
                den[t] = 1.0
        for i0 in range(0, m, R):
            i1 = min(m, i0 + R)
            n = (i1 - i0 - 1) * d0 + dN
            Xg = Xf[i0 * d0 :]
            _conv_sh(v, kv, Xg, sv, z, n)  # sv = 1 here, not a literal: one compile of the taps
            for i in range(i0, i1):
                o = (i - i0) * d0
                if lc and want_loss:
                    _lc_prep_nd(p0, z[o:], Yt[i], aa[o:], num[o:], den[o:], dN, in_range)
                elif lc:
                    _lc_tanh(p0, z[o:], Yt[i], g[o:], dN, in_range)
                else:
                    total = _generic_row(code, p0, p1, z[o:], Yt[i], g[o:], dN, total,
                                         want_loss)
            if lc and want_loss:
                total += _lc_div(num, den, aa, g, n)
            if want_grad:
                _corr_sh(g, kv, Xg, sv, n, G)
    if not want_loss:
        return np.nan
    return total / p0 if lc else total


@nb.njit(**_JIT)
def _fs_loss_seq(model, v, buf):
    """Exact data path of fs_loss: the loss values summed one residual at a time in the order
    (i, j), bitwise as one window at a time (z is computed a row at a time, in the same
    order). ``buf`` needs d_N elements."""
    kv = model.k_v
    dN = model.d_N
    Xt = model.Xt
    Yt = model.Yt
    sv = model.s_v
    z = buf[0:dN]
    total = 0.0
    for i in range(Xt.shape[0]):
        _conv_strided(v, kv, Xt[i], sv, z, dN)
        y = Yt[i]
        for j in range(dN):
            total += loss_value(model.code, model.p0, model.p1, z[j] - y[j])
    return total


@nb.njit(**_JIT)
def _fs_loss_grad_seq(model, v, G):
    """Exact data path: L(v) and G one window at a time in the order (i, j), no contraction
    (the arithmetic of lcnfast._lanes, bitwise). No scratch."""
    kv = model.k_v
    Xt = model.Xt
    Yt = model.Yt
    sv = model.s_v
    code = model.code
    p0 = model.p0
    p1 = model.p1
    for n in range(kv):
        G[n] = 0.0
    total = 0.0
    for i in range(Xt.shape[0]):
        for j in range(model.d_N):
            xw = Xt[i, j * sv : j * sv + kv]
            z = 0.0
            for n in range(kv):
                z += v[n] * xw[n]
            r = z - Yt[i, j]
            total += loss_value(code, p0, p1, r)
            g = loss_d1(code, p0, p1, r)
            for n in range(kv):
                G[n] += g * xw[n]
    return total


# ----------------------------------------------------------------------------- function space
@nb.njit(**_JIT)
def _gram_loss_grad(model, v, G, want_grad):
    """Gram path: L(v) = v^T A v - 2 b^T v + ||Y||^2 and, if ``want_grad``, G = 2 (A v - b)."""
    kv = model.k_v
    A = model.A
    b = model.b
    quad = 0.0
    lin = 0.0
    for n in range(kv):
        acc = 0.0
        for q in range(kv):
            acc += A[n, q] * v[q]
        quad += v[n] * acc
        lin += b[n] * v[n]
        if want_grad:
            G[n] = 2.0 * (acc - b[n])
    return quad - 2.0 * lin + model.yy


@nb.njit(**_JIT)
def fs_loss(model, v):
    """L as a function of the final filter v (k_v,)."""
    if model.use_gram:
        return _gram_loss_grad(model, v, v, _flag(False))
    if _DATA_PATH_FAST:
        return _fs_loss_grad_fast(model, v, np.empty(0), _data_buf(model), _flag(False),
                                  _flag(True))
    return _fs_loss_seq(model, v, np.empty(model.d_N))


@nb.njit(**_JIT)
def _fs_loss_grad_buf(model, v, G, buf, want_loss):
    """:func:`fs_loss_grad` with the data-path scratch ``buf`` (from :func:`_data_buf`); returns
    NaN instead of L unless ``want_loss`` (G is the same, bitwise; the fast data path then
    skips the loss)."""
    if model.use_gram:
        L = _gram_loss_grad(model, v, G, _flag(True))
    elif _DATA_PATH_FAST:
        return _fs_loss_grad_fast(model, v, G, buf, _flag(True), _flag(want_loss))
    else:
        L = _fs_loss_grad_seq(model, v, G)
    return L if want_loss else np.nan


@nb.njit(**_JIT)
def fs_loss_grad(model, v, G):
    """L(v) and G = dL/dv (k_v,), written into G.

    Data path: exact (one window at a time) unless ``_DATA_PATH_FAST``; the fast path
    (:func:`_fs_loss_grad_fast`) vectorises the sums over output positions (their order differs
    from one window at a time: G agrees to rounding, ~1e-15 relative) and, for log-cosh, uses
    :func:`lcnfast.losses._tanh_nd` (<= 4 ulp) and ``L = sum a - sum log(1 + tanh a)``.
    Allocates its scratch on the fast path; :func:`loss_grad_ws` does not.
    """
    buf = _data_buf(model) if _DATA_PATH_FAST else G[:0]
    return _fs_loss_grad_buf(model, v, G, buf, _flag(True))


@nb.njit(**_JIT)
def fs_hessian(model, v, H):
    """Function-space Hessian H = d^2 L / dv^2 (k_v, k_v)."""
    kv = model.k_v
    if model.use_gram:
        for n in range(kv):
            for q in range(kv):
                H[n, q] = 2.0 * model.A[n, q]
        return
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


# ----------------------------------------------------------------------------- one flow
@nb.njit(**_JIT)
def _loss_grad_buf(model, w, prefix, G, gcur, gnext, out_g, buf):
    kv = forward_filter(w, model.k, model.S, model.offs, prefix)
    loss = _fs_loss_grad_buf(model, prefix[model.k.shape[0], :kv], G, buf, _flag(True))
    backward_filter(w, model.k, model.S, model.offs, prefix, G, gcur, gnext, out_g)
    return loss


@nb.njit(**_JIT)
def loss_grad_one(model, w, prefix, G, gcur, gnext, out_g):
    """L(w) and its gradient (into out_g) for one parameter vector; the workspace is
    ``prefix`` (N+1, k_v) and three (k_v,) vectors. On the data path this allocates its
    scratch: in loops use :func:`loss_grad_ws`."""
    buf = _data_buf(model) if _DATA_PATH_FAST else G[:0]
    return _loss_grad_buf(model, w, prefix, G, gcur, gnext, out_g, buf)


class Workspace(NamedTuple):
    prefix: np.ndarray
    G: np.ndarray
    gcur: np.ndarray
    gnext: np.ndarray
    buf: np.ndarray  # data-path scratch (empty on the Gram path), see _data_buf


@nb.njit(**_JIT)
def new_workspace(model):
    kv = model.k_v
    N = model.k.shape[0]
    return Workspace(
        np.zeros((N + 1, kv)), np.zeros(kv), np.zeros(kv), np.zeros(kv), _data_buf(model)
    )


@nb.njit(**_JIT)
def loss_grad_ws(model, w, ws, out_g):
    """:func:`loss_grad_one` with a :class:`Workspace` (allocates nothing)."""
    return _loss_grad_buf(model, w, ws.prefix, ws.G, ws.gcur, ws.gnext, out_g, ws.buf)


@nb.njit(**_JIT)
def _loss_grad_fast_ws(model, w, ws, out_g):
    """:func:`loss_grad_ws` on the fast data path whatever ``_DATA_PATH_FAST``."""
    k = model.k
    kv = forward_filter(w, k, model.S, model.offs, ws.prefix)
    v = ws.prefix[k.shape[0], :kv]
    if model.use_gram:
        loss = _fs_loss_grad_buf(model, v, ws.G, ws.buf, _flag(True))
    else:
        loss = _fs_loss_grad_fast(model, v, ws.G, ws.buf, _flag(True), _flag(True))
    backward_filter(w, k, model.S, model.offs, ws.prefix, ws.G, ws.gcur, ws.gnext, out_g)
    return loss


@nb.njit(**_JIT)
def hessian_one(model, w, prefix, work, J, Hv, Hw, G, HJ):
    """Hessian (n_params, n_params) of L at w into Hw:
    ``J^T Hv J + sum_m G_m d^2 v_m / dw^2`` (chain rule through v = pi(w), J = dv/dw, Hv the
    function-space Hessian). ``work`` is (2, k_v); ``J`` is
    (k_v, n_params); ``Hv`` is (k_v, k_v); ``G`` (k_v,) and ``HJ`` (k_v, n_params) are
    scratch. G = dL/dv is summed one window at a time (:func:`_fs_loss_grad_seq`)."""
    k = model.k
    S = model.S
    offs = model.offs
    N = k.shape[0]
    kv = forward_filter(w, k, S, offs, prefix)
    v = prefix[N, :kv]
    if model.use_gram:
        _fs_loss_grad_buf(model, v, G, G[:0], _flag(True))
    else:
        _fs_loss_grad_seq(model, v, G)
    fs_hessian(model, v, Hv)
    jacobian_into(w, k, S, offs, work, J)
    n = J.shape[1]
    # J^T Hv J
    for a in range(kv):
        for c in range(n):
            acc = 0.0
            for q in range(kv):
                acc += Hv[a, q] * J[q, c]
            HJ[a, c] = acc
    for r in range(n):
        for c in range(n):
            acc = 0.0
            for a in range(kv):
                acc += J[a, r] * HJ[a, c]
            Hw[r, c] = acc
    # second-order term: layers i < j
    for i in range(N):
        for j in range(i + 1, N):
            nq = product_except(w, k, S, offs, i, j, work)
            for a in range(k[i]):
                for bb in range(k[j]):
                    sh = a * S[i] + bb * S[j]
                    acc = 0.0
                    for m in range(nq):
                        acc += G[m + sh] * work[0, m]
                    Hw[offs[i] + a, offs[j] + bb] += acc
                    Hw[offs[j] + bb, offs[i] + a] += acc


# ----------------------------------------------------------------------------- batches
@nb.njit(parallel=True, **_JIT)
def final_filter_batch(W, k, S, offs, k_v, nc):
    """V (K, k_v) from W (K, n_params)."""
    K = W.shape[0]
    N = k.shape[0]
    V = np.empty((K, k_v))
    for c in nb.prange(nc):
        prefix = np.zeros((N + 1, k_v))
        for f in range(c * K // nc, (c + 1) * K // nc):
            forward_filter(W[f], k, S, offs, prefix)
            V[f, :] = prefix[N, :k_v]
    return V


@nb.njit(parallel=True, **_JIT)
def jacobian_batch(W, k, S, k_v, nc):
    """Jacobians (K, k_v, n_params) of pi at each row of W."""
    K, n = W.shape
    offs = np.zeros(k.shape[0] + 1, np.int64)
    offs[1:] = np.cumsum(k)
    out = np.empty((K, k_v, n))
    for c in nb.prange(nc):
        work = np.zeros((2, k_v))
        for f in range(c * K // nc, (c + 1) * K // nc):
            jacobian_into(W[f], k, S, offs, work, out[f])
    return out


@nb.njit(parallel=True, **_JIT)
def loss_batch(model, W, nc):
    """L (K,) at each row of W (K, n_params)."""
    K = W.shape[0]
    N = model.k.shape[0]
    out = np.empty(K)
    for c in nb.prange(nc):
        prefix = np.zeros((N + 1, model.k_v))
        buf = _data_buf(model) if _DATA_PATH_FAST else np.zeros(model.d_N)
        for f in range(c * K // nc, (c + 1) * K // nc):
            kv = forward_filter(W[f], model.k, model.S, model.offs, prefix)
            v = prefix[N, :kv]
            if model.use_gram:
                out[f] = fs_loss(model, v)
            elif _DATA_PATH_FAST:
                out[f] = _fs_loss_grad_fast(model, v, buf[:0], buf, _flag(False), _flag(True))
            else:
                out[f] = _fs_loss_seq(model, v, buf)
    return out


@nb.njit(parallel=True, **_JIT)
def _loss_grad_batch_fast(model, W, out_loss, out_grad, nc):
    """L (K,) and gradients (K, n) one flow at a time on the fast data path whatever
    ``_DATA_PATH_FAST`` (the benchmark's one-flow figure; Problem uses lcnfast._lanes)."""
    K = W.shape[0]
    for c in nb.prange(nc):
        ws = new_workspace(model)
        for f in range(c * K // nc, (c + 1) * K // nc):
            out_loss[f] = _loss_grad_fast_ws(model, W[f], ws, out_grad[f])


@nb.njit(parallel=True, **_JIT)
def hessian_batch(model, W, nc):
    """Hessians (K, n_params, n_params)."""
    K, n = W.shape
    kv = model.k_v
    N = model.k.shape[0]
    out = np.empty((K, n, n))
    for c in nb.prange(nc):
        prefix = np.zeros((N + 1, kv))
        work = np.zeros((2, kv))
        J = np.zeros((kv, n))
        Hv = np.zeros((kv, kv))
        G = np.zeros(kv)
        HJ = np.zeros((kv, n))
        for f in range(c * K // nc, (c + 1) * K // nc):
            hessian_one(model, W[f], prefix, work, J, Hv, out[f], G, HJ)
    return out


@nb.njit(parallel=True, **_JIT)
def predict_batch(model, W, nc):
    """VX for each row of W: (K, d_N, m)."""
    K = W.shape[0]
    N = model.k.shape[0]
    Xt = model.Xt
    m = Xt.shape[0]
    kv = model.k_v
    sv = model.s_v
    out = np.empty((K, model.d_N, m))
    for c in nb.prange(nc):
        prefix = np.zeros((N + 1, kv))
        for f in range(c * K // nc, (c + 1) * K // nc):
            forward_filter(W[f], model.k, model.S, model.offs, prefix)
            v = prefix[N]
            for i in range(m):
                for j in range(model.d_N):
                    z = 0.0
                    for n in range(kv):
                        z += v[n] * Xt[i, j * sv + n]
                    out[f, j, i] = z
    return out
