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

The batched evaluations built on these are in :mod:`lcnfast._batches` (and the gradients in
:mod:`lcnfast._lanes`); here only the benchmark's one-flow-at-a-time gradient batch
(``prange`` over ``nc`` contiguous chunks, a few per thread, each allocating its workspace
once).

Flags passed through :func:`_flag`: Numba types a literal ``True`` / ``False`` argument as its
own type and compiles the callee, with everything it calls, once per literal value. The
data-path kernels were compiled four times over that way (about 6 s of a cold start of the
quick start); a run-time bool costs one branch per chunk and gives the same numbers.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from ._data_entry import fs_hessian_fast as _fs_hessian_fast
from ._data_entry import fs_loss_grad_fast as _fs_loss_grad_fast
from ._data_hessian import _fs_hessian_seq
from ._data_path import _DATA_PATH_FAST, _data_buf, _fs_loss_grad_seq, _fs_loss_seq
from ._jit import JIT as _JIT


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
    data_fn: int  # address of the compiled data path (lcnfast._data_entry), 0 on the Gram path


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
    (:func:`lcnfast._data_entry.fs_loss_grad_fast`) vectorises the sums over output positions
    (their order differs from one window at a time: G agrees to rounding, ~1e-15 relative)
    and, for log-cosh, uses
    :func:`lcnfast.losses._tanh_nd` (<= 4 ulp) and ``L = sum a - sum log(1 + tanh a)``.
    Allocates its scratch on the fast path; :func:`loss_grad_ws` does not.
    """
    buf = _data_buf(model) if _DATA_PATH_FAST else G[:0]
    return _fs_loss_grad_buf(model, v, G, buf, _flag(True))


@nb.njit(**_JIT)
def fs_hessian(model, v, H):
    """Function-space Hessian H = d^2 L / dv^2 (k_v, k_v): on the data path vectorised
    (lcnfast._data_hessian.data_hessian, through the compiled data path) where its layout
    applies (m >= 16), else one window at a time (``_fs_hessian_seq``)."""
    kv = model.k_v
    if model.use_gram:
        for n in range(kv):
            for q in range(kv):
                H[n, q] = 2.0 * model.A[n, q]
        return
    if not (_DATA_PATH_FAST and _fs_hessian_fast(model, v, H, _data_buf(model))):
        _fs_hessian_seq(model, v, H)


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
def hessian_one(model, w, prefix, work, J, Hv, Hw, G, HJ, buf):
    """Hessian (n_params, n_params) of L at w into Hw:
    ``J^T Hv J + sum_m G_m d^2 v_m / dw^2`` (chain rule through v = pi(w), J = dv/dw, Hv the
    function-space Hessian). ``work`` is (2, k_v); ``J`` is
    (k_v, n_params); ``Hv`` is (k_v, k_v); ``G`` (k_v,) and ``HJ`` (k_v, n_params) are
    scratch; ``buf`` the data-path scratch (from :func:`_data_buf`: a gradient workspace's
    ``buf`` serves, between its passes). On the data path, G = dL/dv and Hv come from the
    fast path where its layout applies, else one window at a time."""
    k = model.k
    S = model.S
    offs = model.offs
    N = k.shape[0]
    kv = forward_filter(w, k, S, offs, prefix)
    v = prefix[N, :kv]
    if model.use_gram:
        _fs_loss_grad_buf(model, v, G, G[:0], _flag(True))
        fs_hessian(model, v, Hv)
    else:
        if _DATA_PATH_FAST and _fs_hessian_fast(model, v, Hv, buf):
            _fs_loss_grad_fast(model, v, G, buf, _flag(True), _flag(False))
        else:
            _fs_loss_grad_seq(model, v, G)
            _fs_hessian_seq(model, v, Hv)
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
# (the batched evaluations Problem uses are in lcnfast._batches)
@nb.njit(parallel=True, **_JIT)
def _loss_grad_batch_fast(model, W, out_loss, out_grad, nc):
    """L (K,) and gradients (K, n) one flow at a time on the fast data path whatever
    ``_DATA_PATH_FAST`` (the benchmark's one-flow figure; Problem uses lcnfast._lanes)."""
    K = W.shape[0]
    for c in nb.prange(nc):
        ws = new_workspace(model)
        for f in range(c * K // nc, (c + 1) * K // nc):
            out_loss[f] = _loss_grad_fast_ws(model, W[f], ws, out_grad[f])
