"""Lane kernels: loss and gradient of ``LANES`` parameter vectors at once.

Private module. The hot loops of lcnfast (batched gradients, gradient descent, Runge-Kutta
stages) evaluate the gradient of many independent flows. Laying ``LANES`` flows side by side
with the flow index innermost -- arrays of shape (..., LANES) -- turns every inner loop of the
polynomial product, the Gram product and the data pass into a SIMD loop over flows, which is
several times faster than one flow at a time on tiny filters.

``LANES`` is chosen at import from the CPU (16 with AVX-512, else 8; ``LCNFAST_LANES``
overrides it): see :mod:`lcnfast._lane_width`.

Each lane's arithmetic is exactly that of one flow alone: the same operations in the same
order (no fast-math reassociation or contraction), so a flow's result never depends on its
lane, on the other lanes, on the lane width or on the thread running it. Lanes are
independent; an unused lane just computes something harmless.

On the data path (losses other than the square loss through the Gram) the lanes share the
polynomial product and the chain rule; the pass over the data runs lane by lane through the
one-flow kernel of :mod:`lcnfast._kernels`, which vectorises over output positions.

Shapes: ``W`` (n_params, LANES), prefix products ``P`` (N+1, k_v, LANES) with ``v = P[N]``,
function-space gradient ``G`` (k_v, LANES), parameter gradient ``out_g`` (n_params, LANES),
losses ``out_L`` (LANES,). See :mod:`lcnfast._kernels` for the maths.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from ._codegen import call_lane_kernel
from ._jit import JIT as _JIT
from ._jit import JIT_R as _JIT_R
from ._data_path import _data_buf
from ._kernels import _flag, _fs_loss_grad_buf
from ._lane_width import LANES
from ._transpose import lanes_to_rows, rows_to_lanes


class LaneWorkspace(NamedTuple):
    P: np.ndarray  # (N+1, k_v, LANES) prefix products
    G: np.ndarray  # (k_v, LANES) dL/dv, then the running backward gradient
    Gn: np.ndarray  # (k_v, LANES) scratch
    z: np.ndarray  # (LANES,) scratch (Gram path: v^T A v per lane)
    gz: np.ndarray  # (LANES,) scratch (Gram path: b^T v per lane)
    v1: np.ndarray  # (k_v,) one lane's filter (data path)
    G1: np.ndarray  # (k_v,) one lane's dL/dv (data path)
    buf: np.ndarray  # scratch of the one-flow data path (_data_path._data_buf)


@nb.njit(**_JIT)
def new_lane_workspace(model):
    kv = model.k_v
    N = model.k.shape[0]
    return LaneWorkspace(
        np.zeros((N + 1, kv, LANES)),
        np.zeros((kv, LANES)),
        np.zeros((kv, LANES)),
        np.zeros(LANES),
        np.zeros(LANES),
        np.zeros(kv),
        np.zeros(kv),
        _data_buf(model),
    )


@nb.njit(**_JIT)
def forward_lanes(W, k, S, offs, P):
    """Prefix products of the layer polynomials for every lane; returns k_v."""
    N = k.shape[0]
    for b in range(LANES):
        P[0, 0, b] = 1.0
    nl = 1
    for i in range(N):
        ki = k[i]
        Si = S[i]
        o = offs[i]
        n_out = nl + (ki - 1) * Si
        for m in range(n_out):
            for b in range(LANES):
                P[i + 1, m, b] = 0.0
        for a in range(ki):
            sh = a * Si
            for m in range(nl):
                for b in range(LANES):
                    P[i + 1, m + sh, b] += W[o + a, b] * P[i, m, b]
        nl = n_out
    return nl


@nb.njit(**_JIT)
def _fs_loss_grad_lanes(model, P, ws, out_L, want_loss):
    """L(v) into out_L (NaN unless ``want_loss``, on the data path) and dL/dv into ws.G for
    v = P[N] in every lane."""
    N = model.k.shape[0]
    kv = model.k_v
    G = ws.G
    if model.use_gram:
        # same operation order as _kernels.fs_loss_grad: acc = A v; quad = v.acc; lin = b.v
        A = model.A
        bvec = model.b
        Gn = ws.Gn  # holds quad in row 0, lin in row 1 (k_v >= 1 always; k_v == 1 handled)
        quad = ws.z
        lin = ws.gz
        for b in range(LANES):
            quad[b] = 0.0
            lin[b] = 0.0
        for r in range(kv):
            for b in range(LANES):
                Gn[r, b] = 0.0
            for q in range(kv):
                arq = A[r, q]
                for b in range(LANES):
                    Gn[r, b] += arq * P[N, q, b]
            br = bvec[r]
            for b in range(LANES):
                quad[b] += P[N, r, b] * Gn[r, b]
                lin[b] += br * P[N, r, b]
                G[r, b] = 2.0 * (Gn[r, b] - br)
        for b in range(LANES):
            out_L[b] = quad[b] - 2.0 * lin[b] + model.yy
        return
    # data path: one pass over the data per lane with the one-flow kernel, which vectorises
    # over output positions (faster than lanes here, where the data, not the filter, is big)
    for b in range(LANES):
        for r in range(kv):
            ws.v1[r] = P[N, r, b]
        out_L[b] = _fs_loss_grad_buf(model, ws.v1, ws.G1, ws.buf, _flag(want_loss))
        for r in range(kv):
            G[r, b] = ws.G1[r]


@nb.njit(**_JIT)
def backward_lanes(W, k, S, offs, P, G, Gn, out_g):
    """Parameter gradients (n_params, LANES) from dL/dv in G (overwritten) and the prefixes."""
    N = k.shape[0]
    nl = 1
    for i in range(N):
        nl += (k[i] - 1) * S[i]
    for i in range(N - 1, -1, -1):
        ki = k[i]
        Si = S[i]
        o = offs[i]
        n_prev = nl - (ki - 1) * Si
        for a in range(ki):
            sh = a * Si
            for b in range(LANES):
                out_g[o + a, b] = 0.0
            for m in range(n_prev):
                for b in range(LANES):
                    out_g[o + a, b] += G[m + sh, b] * P[i, m, b]
        if i > 0:
            for m in range(n_prev):
                for b in range(LANES):
                    Gn[m, b] = 0.0
                for a in range(ki):
                    for b in range(LANES):
                        Gn[m, b] += G[m + a * Si, b] * W[o + a, b]
            for m in range(n_prev):
                for b in range(LANES):
                    G[m, b] = Gn[m, b]
        nl = n_prev


@nb.njit(**_JIT)
def loss_grad_lanes(model, W, ws, out_g, out_L, want_loss):
    """Loss (LANES,) and gradient (n_params, LANES) of the LANES parameter vectors W; the loss
    may be NaN unless ``want_loss`` (the gradient is the same, bitwise)."""
    forward_lanes(W, model.k, model.S, model.offs, ws.P)
    _fs_loss_grad_lanes(model, ws.P, ws, out_L, want_loss)
    backward_lanes(W, model.k, model.S, model.offs, ws.P, ws.G, ws.Gn, out_g)


_WIDE = 64  # flows per call of a generated kernel in batched evaluations

# The batched evaluations below return an overflow flag for lcnfast.Problem: 0.0 if the values
# checked are finite, NaN otherwise (the sum of x * 0.0 over them, taken once per chunk of rows
# by a vectorised pass). Problem looks for a NaN or Inf in the parameters W only when the flag
# is raised (numpy's isfinite pass over a batch of 4096 took ~11 us, a sixth of a
# generated-kernel call on 2 threads), so the flag must be raised by any non-finite W too.
# Checked: on the Gram path (square loss) the losses, which the Gram path always computes: a
# pass over the gradients would cost ~5% of a generated-kernel gradient (one per ~20 ns), and
# a gradient overflows without its loss only for layers scaled by ~1e150 against each other. A
# non-finite entry of W makes some v_j non-finite (each entry of a layer's filter enters some
# v_j through a product with finite factors: inf or NaN), and then L = v^T A v - 2 b^T v + yy
# too (every term holding v_j is inf or NaN), so the losses cover W. On the data path, where
# such passes are ~0.1% of the work: W itself (a saturating l', tanh(inf) = 1, can leave the
# gradients finite), the gradients and, with want_loss, the losses.


@nb.njit(**_JIT_R)
def _zero_sum(x, i0, i1):
    """Sum of x[i] * 0.0 over i0 <= i < i1: 0.0 if those entries are finite, else NaN (in any
    order of summation, so 'reassoc' lets it vectorise)."""
    acc = 0.0
    for i in range(i0, i1):
        acc += x[i] * 0.0
    return acc


@nb.njit(**_JIT_R)
def _zero_sum_rows(X, r0, r1):
    """:func:`_zero_sum` over the rows r0..r1-1 of a C-contiguous X, as one flat range (row
    by row, the short rows would not vectorise: a chain of scalar adds)."""
    n = X.shape[1]
    return _zero_sum(X.reshape(X.size), r0 * n, r1 * n)


@nb.njit(**_JIT)
def _generated_rows(model, kern, W, out_loss, out_grad, f0, f1):
    """Rows f0..f1-1 of W through the generated kernel ``kern``, up to ``_WIDE`` flows per
    call (its code is scalar per flow: wider calls only spread its set-up). Returns the
    overflow flag (see above)."""
    n = W.shape[1]
    kv = model.k_v
    c = min(_WIDE, f1 - f0)
    Wl = np.empty((n, c))
    gl = np.empty((n, c))
    Ll = np.empty(c)
    Vl = np.empty((kv, c))
    for a in range(f0, f1, _WIDE):
        if f1 - a < c:  # last, narrower call
            c = f1 - a
            Wl = np.empty((n, c))
            gl = np.empty((n, c))
            Ll = np.empty(c)
            Vl = np.empty((kv, c))
        rows_to_lanes(W, a, c, Wl)
        call_lane_kernel(kern, Wl, model.A, model.b, model.yy, gl, Ll, Vl)
        for b in range(c):
            out_loss[a + b] = Ll[b]
        lanes_to_rows(gl, c, out_grad, a)
    return _zero_sum(out_loss, f0, f1)


@nb.njit(**_JIT)
def _loss_grad_blocks(model, W, out_loss, out_grad, blk0, blk1, want_loss):
    """Lane blocks blk0..blk1-1 of the rows of W through the generic lane kernel (a last
    partial block repeats its first row in the unused lanes). Returns the overflow flag (see
    above)."""
    K, n = W.shape
    ws = new_lane_workspace(model)
    Wl = np.empty((n, LANES))
    gl = np.empty((n, LANES))
    Ll = np.empty(LANES)
    for blk in range(blk0, blk1):
        f0 = blk * LANES
        c = min(LANES, K - f0)
        rows_to_lanes(W, f0, c, Wl)
        for b in range(c, LANES):
            for q in range(n):
                Wl[q, b] = W[f0, q]
        loss_grad_lanes(model, Wl, ws, gl, Ll, want_loss)
        for b in range(c):
            out_loss[f0 + b] = Ll[b]
        lanes_to_rows(gl, c, out_grad, f0)
    r0 = blk0 * LANES
    r1 = min(K, blk1 * LANES)
    flag = 0.0
    if want_loss or model.use_gram:
        flag += _zero_sum(out_loss, r0, r1)
    if not model.use_gram:
        flag += _zero_sum_rows(W, r0, r1) + _zero_sum_rows(out_grad, r0, r1)
    return flag


@nb.njit(parallel=True, **_JIT)
def loss_grad_batch(model, W, out_loss, out_grad, nc, want_loss):
    """L (K,) and gradients (K, n) for every row of W (K, n), in ``nc`` prange chunks of
    whole lane blocks; unless ``want_loss`` the losses may be NaN (the data path skips them).
    Returns the overflow flag (see above)."""
    nblk = (W.shape[0] + LANES - 1) // LANES
    nc = min(nc, nblk)
    flag = 0.0  # a prange reduction (an array of flags would cost ~3 us per call)
    for c in nb.prange(nc):
        flag += _loss_grad_blocks(model, W, out_loss, out_grad, c * nblk // nc,
                                  (c + 1) * nblk // nc, want_loss)
    return flag


@nb.njit(**_JIT)
def loss_grad_serial(model, W, out_loss, out_grad, want_loss):
    """:func:`loss_grad_batch` on the calling thread (small batches: waking the thread team
    costs more than the work)."""
    return _loss_grad_blocks(model, W, out_loss, out_grad, 0, (W.shape[0] + LANES - 1) // LANES,
                             want_loss)


@nb.njit(parallel=True, **_JIT)
def generated_batch(model, kern, W, out_loss, out_grad, nc):
    """:func:`loss_grad_batch` through the generated kernel ``kern`` (chunks of _WIDE rows)."""
    K = W.shape[0]
    nblk = (K + _WIDE - 1) // _WIDE
    nc = min(nc, nblk)
    flag = 0.0
    for c in nb.prange(nc):
        flag += _generated_rows(model, kern, W, out_loss, out_grad, c * nblk // nc * _WIDE,
                                min(K, (c + 1) * nblk // nc * _WIDE))
    return flag


@nb.njit(**_JIT)
def generated_serial(model, kern, W, out_loss, out_grad):
    """:func:`generated_batch` on the calling thread."""
    return _generated_rows(model, kern, W, out_loss, out_grad, 0, W.shape[0])
