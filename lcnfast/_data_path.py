"""The data path of the non-square losses (and of the square loss with use_gram=False): L(v)
and G = dL/dv from one pass over the data per evaluation (conventions: lcnfast._kernels).

Private module: every function assumes clean, validated, C-contiguous float64/int64 input.

Non-square losses (and the square loss with use_gram=False) pass over the data once per
evaluation. Two implementations:

Exact (_fs_loss_seq, _fs_loss_grad_seq): one window at a time in the order (i, j), no
  contraction, libm tanh/exp/log: the arithmetic of the first version of lcnfast._kernels. z is
  computed a row at a time by _conv_strided, in the same order. The Hessian's G uses it.

Fast (data_pass, compiled once by lcnfast._data_entry), one flow at a time, every inner loop
  vectorised over output positions (README, "How it is fast"):
  - layout (_data_layout): mode 2 (m >= 16 and the data small enough to copy): X and Y are
    copied once per workspace sample-major by blocks of R samples, X (d0, R), Y (d_N, R) per
    block (R = all m for stride > 1); the windows of output j over a block's samples then
    form contiguous rows, tap q is the row R further on, and the passes below run over
    contiguous chunks of up to 2040 outputs with no wasted window. At stride 1, R is about
    2048 / d0: a block of X is 16 KiB and stays in L1 through a pass (the taps of a chunk
    of the (d0, m) layout span 13 rows of m samples, which L1 does not hold: ~5% slower).
    With the block's z, g and Y (~13 KiB each at d0 = 64) the three passes together do
    not fit a 32 KiB L1d, but smaller blocks measured slower (1024 / d0: ~6-10%; every
    pass pays a fixed start-up cost per chunk), and so did g written over z (~10%).
    Mode 1 (few samples, stride 1): groups of R rows of Xt as one flat stretch (the
    k_v - 1 windows per row that straddle two rows are computed and given g = 0). Mode 0
    (few samples, stride > 1): row by row, strided views.
  - z = sum_q v_q X[. + q sh] in one pass over the first 13 taps (_taps.conv*), one FMA per
    tap, from 7 taps on in two chains (the first half of the taps and the rest) then summed;
    taps beyond 13 added in blocks of at most 8 (_taps.conv_add*) (z differs from the exact
    path's by roundings);
  - the residual derivative g over the chunk; log-cosh: vectorised tanh (losses._tanh_nd)
    as numerator (written to g) and denominator (_lc_nd, or _lc_prep_nd with aa =
    alpha |r| when the loss is wanted), then g divided in place (lcnfast._simd.quotient:
    vrcp14pd and Newton where the CPU has AVX-512, within one ulp of the division; else
    the division) and, with the loss, L = sum log cosh a (_lc_sums: the Taylor series for
    a <= 1/8, a - log(1 + tanh a) above, the log taken once per chunk of a product:
    _PROD_CHUNK; losses, "log cosh sums"); g is bitwise the same either way; other losses:
    lcnfast._loss_rows.loss_row (vectorised for l_p with an integer p and for the
    pseudo-Huber loss, else libm's functions per element);
  - G_q += sum_t g_t X[t + q sh] in one pass up to 13 taps (_taps.corr*, vectorised
    reductions under 'reassoc': the order is fixed by the shapes and the CPU's vector width
    alone), with or without the loss.
  The tap blocks and the tanh loops are vectorised with 512-bit vectors where the CPU has
  AVX-512 (lcnfast._simd.prefer_512). The scratch (4 vectors + the mode-2 copies, 64-byte
  aligned) comes from the caller:
  Workspace.buf, or a fresh array in the allocating entry points.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from . import _taps
from ._jit import JIT as _JIT
from ._jit import JIT_C as _JIT_C
from ._jit import JIT_R as _JIT_R
from ._loss_rows import loss_row
from ._simd import prefer_512, quotient
from .losses import (LOG_COSH, _HALF_LN2, _LC_SERIES_MAX, _RSQRT2, _log_cosh_series,
                     _tanh_consts, _tanh_nd, _tanh_nd_in_range, loss_d1, loss_value)


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

# Which data path fs_loss, fs_loss_grad, loss_grad_one, loss_grad_ws and loss_batch of
# lcnfast._kernels use (and lcnfast._lanes, whose data pass goes through _fs_loss_grad_buf lane
# by lane, so that lanes, loss_grad_ws and Problem.loss agree bitwise either way).
# False: the exact one (one window at a time, in order; the original arithmetic).
# True: the fast one (data_pass: vectorised over output positions, reassociated
#   sums, vectorised tanh; ~1e-15 relative from the exact one, and closer to a long-double
#   reference). The _fast entry points of lcnfast._kernels always use the fast path.
# A compile-time constant (numba freezes globals; lcnfast._numba_cache renews the cache when it
# changes).
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
    row by row, strided. L = length of each of the 4 scratch vectors (at least d_N, which the
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
    """Views of ``buf`` (from :func:`_data_buf`): the 4 scratch vectors z, g, aa, den
    (length L each) and, in mode 2, the copies X (d0 m,) and Y (d_N m,) (else empty). Every
    part starts on a 64-byte boundary (aligned vector loads when m is a multiple of 8)."""
    st = (L + 15) // 8 * 8
    a0 = ((-buf.ctypes.data) % 64) // 8
    parts = (buf[a0 : a0 + L], buf[a0 + st : a0 + st + L], buf[a0 + 2 * st : a0 + 2 * st + L],
             buf[a0 + 3 * st : a0 + 3 * st + L])
    if mode == 2:
        xo = a0 + 4 * st
        yo = xo + (d0 * m + 7) // 8 * 8
        return parts, buf[xo : xo + d0 * m], buf[yo : yo + dN * m]
    return parts, buf[:0], buf[:0]


@nb.njit(**_JIT)
def _buf_size(mode, L, m, d0, dN):
    size = 8 + 4 * ((L + 15) // 8 * 8)
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


# Each tanh loop below comes twice, with the clamp (_tanh_nd) and without (_tanh_nd_in_range,
# when _tanh_in_range allows it): a run-time choice inside one loop would be a select
# evaluated for every element, and the clamp's two comparisons would stay in the loop.


@nb.njit(**_JIT_C)
def _lc_nd(p0, z, y, num, den, n, in_range):
    """log-cosh, n outputs: tanh(p0 (z - y)) = num / den (512-bit vectors where the CPU has
    them). ``in_range``: see :func:`_tanh_in_range`."""
    prefer_512()
    cs = _tanh_consts(p0)
    if in_range:
        for t in range(n):
            a, b = _tanh_nd_in_range(z[t] - y[t], cs)
            num[t] = a
            den[t] = b
    else:
        for t in range(n):
            a, b = _tanh_nd(z[t] - y[t], cs)
            num[t] = a
            den[t] = b


@nb.njit(**_JIT)
def _lc_tanh(p0, z, y, g, den, n, in_range):
    """log-cosh without the loss, n outputs: g = tanh(p0 (z - y)), the numerators first
    written to g, then divided in place (lcnfast._simd.quotient); bitwise the g of
    :func:`_lc_prep_nd` then :func:`_lc_sums`. ``den``: scratch of n elements.
    ``in_range``: see :func:`_tanh_in_range`."""
    _lc_nd(p0, z, y, g, den, n, in_range)
    quotient(g, den, g, n)


@nb.njit(**_JIT_C)
def _lc_prep_nd(p0, z, y, aa, num, den, n, in_range):
    """log-cosh with the loss, n outputs: aa = |p0 (z - y)|, tanh(p0 (z - y)) = num / den
    (the same num and den as :func:`_lc_nd`). ``in_range``: see :func:`_tanh_in_range`."""
    prefer_512()
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
def _lc_sum_chunk(g, aa, n):
    """sum_t log cosh aa_t from aa and g = tanh (n <= _PROD_CHUNK; 'reassoc' vectorises the
    sums)."""
    prefer_512()
    sa = 0.0
    pr = 1.0
    nl = 0.0
    for t in range(n):
        gt = g[t]
        a = aa[t]
        big = (a > _LC_SERIES_MAX) * 1.0  # 0/1 masks, not branches: the loop vectorises
        sa += (1.0 - big) * _log_cosh_series(min(a, _LC_SERIES_MAX)) + big * a
        pr *= (1.0 - big) + big * (_RSQRT2 + _RSQRT2 * abs(gt))
        nl += big
    return sa - (math.log(pr) + nl * _HALF_LN2)


@nb.njit(**_JIT)
def _lc_sums(g, den, aa, n):
    """g = g / den in place over n elements (g holds the numerators of the tanh:
    lcnfast._simd.quotient); returns sum_t log cosh(aa_t) (log cosh a = a - log(1 + tanh a)
    for a > 1/8, a Taylor series below: see losses._log_cosh_series). The correlation of g
    is separate, so G does not depend on whether the loss is wanted."""
    quotient(g, den, g, n)
    acc = 0.0
    t0 = 0
    while t0 < n:
        c = min(n - t0, _PROD_CHUNK)
        acc += _lc_sum_chunk(g[t0:], aa[t0:], c)
        t0 += c
    return acc


@nb.njit(**_JIT)
def _lc_g(p0, z, y, g, aa, den, n, want_loss, in_range):
    """log-cosh (alpha = p0), n outputs z against targets y: g = l'(z - y) = tanh(alpha (z - y))
    and, if ``want_loss``, returns sum log cosh(alpha (z - y)) (alpha times the loss; else
    0.0). g is bitwise the same either way. ``in_range``: see :func:`_tanh_in_range`."""
    if want_loss:
        _lc_prep_nd(p0, z, y, aa, g, den, n, in_range)
        return _lc_sums(g, den, aa, n)
    _lc_tanh(p0, z, y, g, den, n, in_range)
    return 0.0


# inlined at the Numba level: the chunk loop's reference counting of the array views is then
# pruned (with the scalar arguments: ~0.55 instead of ~1.6 us of overhead per evaluation at
# m = 256, d0 = 64, every pass stubbed out)
@nb.njit(inline="always", **_JIT)
def _col_chunk(code, p0, p1, kv, v, G, Xv, yv, c, sh, z, g, aa, den, want_grad, want_loss,
               in_range, total):
    """Mode 2, one chunk of c outputs whose windows start at Xv[t] with taps sh apart (loss
    ``code`` with parameters p0, p1; k_v = kv taps)."""
    _conv_sh(v, kv, Xv, sh, z, c)
    if code == LOG_COSH:
        total += _lc_g(p0, z, yv, g, aa, den, c, want_loss, in_range)
    else:
        total = loss_row(code, p0, p1, z, yv, g, c, total, want_loss)
    if want_grad:
        _corr_sh(g, kv, Xv, sh, c, G)
    return total


@nb.njit(**_JIT)
def data_pass(code, p0, p1, kv, dN, sv, x_amax, y_amax, Xt, Yt, v, G, buf, want_grad,
              want_loss):
    """Fast data path: L(v) if ``want_loss`` (else NaN) and, if ``want_grad``, G = dL/dv,
    with the scratch ``buf`` (from :func:`_data_buf`), for the model's fields (loss code and
    parameters, k_v, d_N, s_v, x_amax, y_amax, Xt (m, d0), Yt (m, d_N)). Neither result
    depends on whether the other is wanted (bitwise); without the loss, log-cosh runs fewer
    passes. Kernels reach it compiled once, through lcnfast._data_entry."""
    m, d0 = Xt.shape
    mode, R, L = _layout(m, d0, dN, sv)
    if buf.shape[0] < _buf_size(mode, L, m, d0, dN):  # not from _data_buf(model): no result
        if want_grad:
            G[:kv] = np.nan
        return np.nan
    parts, Xc, Yc = _buf_views(buf, mode, L, m, d0, dN)
    z = parts[0]  # outputs
    g = parts[1]  # the residual derivative (zero between rows in mode 1)
    aa = parts[2]  # log-cosh: |p0 r|
    den = parts[3]  # log-cosh: tanh = g / den, g first holding the numerators
    lc = code == LOG_COSH
    in_range = lc and _tanh_in_range(v, kv, x_amax, y_amax, p0)
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
                                       aa, den, want_grad, want_loss, in_range, total)
            else:
                for j in range(dN):
                    for i0 in range(0, bw, _GROUP_ELEMS):
                        c = min(_GROUP_ELEMS, bw - i0)
                        total = _col_chunk(code, p0, p1, kv, v, G, Xb[j * sv * bw + i0 :],
                                           Yb[j * bw + i0 :], c, bw, z, g, aa, den,
                                           want_grad, want_loss, in_range, total)
    elif mode == 0:  # stride > 1: row by row
        for i in range(m):
            _conv_strided(v, kv, Xt[i], sv, z, dN)
            if lc:
                total += _lc_g(p0, z, Yt[i], g, aa, den, dN, want_loss, in_range)
            else:
                total = loss_row(code, p0, p1, z, Yt[i], g, dN, total, want_loss)
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
                den[t] = 1.0
        for i0 in range(0, m, R):
            i1 = min(m, i0 + R)
            n = (i1 - i0 - 1) * d0 + dN
            Xg = Xf[i0 * d0 :]
            _conv_sh(v, kv, Xg, sv, z, n)  # sv = 1 here, not a literal: one compile of the taps
            for i in range(i0, i1):
                o = (i - i0) * d0
                if lc and want_loss:
                    _lc_prep_nd(p0, z[o:], Yt[i], aa[o:], g[o:], den[o:], dN, in_range)
                elif lc:
                    _lc_nd(p0, z[o:], Yt[i], g[o:], den[o:], dN, in_range)
                else:
                    total = loss_row(code, p0, p1, z[o:], Yt[i], g[o:], dN, total,
                                         want_loss)
            if lc and want_loss:
                total += _lc_sums(g, den, aa, n)
            elif lc:
                quotient(g, den, g, n)
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
