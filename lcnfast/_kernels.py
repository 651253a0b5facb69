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
  window Gram ``A`` (k_v, k_v) and ``b`` (k_v,) (DESIGN.md); other losses:
  ``G_n = sum_{i,j} l'(r_ij) Xt[i, j s_v + n]`` with ``r = VX - Y``.
- Parameter gradient by reverse mode through the polynomial product:
  ``dL/dw_i[a] = sum_m gP_i[m + a S_i] prefix[i-1][m]`` and
  ``gP_{i-1}[m] = sum_a gP_i[m + a S_i] w_i[a]``, starting from ``gP_N = G``.

Batched kernels parallelise over flows with ``prange`` over ``nc`` contiguous chunks (the
caller passes ``nc``, a few per thread); each chunk allocates its workspace once. The arithmetic of one flow never depends on the chunking, so
results are bitwise identical for any thread count and batch composition.
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from .losses import SQUARE, loss_d1, loss_d2, loss_value

_JIT = dict(cache=True, nogil=True, error_model="numpy")


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
def fs_loss(model, v):
    """L as a function of the final filter v (k_v,)."""
    if model.use_gram:
        kv = model.k_v
        A = model.A
        quad = 0.0
        lin = 0.0
        for n in range(kv):
            acc = 0.0
            for q in range(kv):
                acc += A[n, q] * v[q]
            quad += v[n] * acc
            lin += model.b[n] * v[n]
        return quad - 2.0 * lin + model.yy
    Xt = model.Xt
    Yt = model.Yt
    kv = model.k_v
    sv = model.s_v
    total = 0.0
    for i in range(Xt.shape[0]):
        for j in range(model.d_N):
            base = j * sv
            z = 0.0
            for n in range(kv):
                z += v[n] * Xt[i, base + n]
            total += loss_value(model.code, model.p0, model.p1, z - Yt[i, j])
    return total


@nb.njit(**_JIT)
def fs_loss_grad(model, v, G):
    """L(v) and G = dL/dv (k_v,), written into G."""
    kv = model.k_v
    if model.use_gram:
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
            G[n] = 2.0 * (acc - b[n])
        return quad - 2.0 * lin + model.yy
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
            base = j * sv
            z = 0.0
            for n in range(kv):
                z += v[n] * Xt[i, base + n]
            r = z - Yt[i, j]
            total += loss_value(code, p0, p1, r)
            g = loss_d1(code, p0, p1, r)
            for n in range(kv):
                G[n] += g * Xt[i, base + n]
    return total


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
            base = j * sv
            z = 0.0
            for n in range(kv):
                z += v[n] * Xt[i, base + n]
            c = loss_d2(model.code, model.p0, model.p1, z - Yt[i, j])
            for n in range(kv):
                cx = c * Xt[i, base + n]
                for q in range(kv):
                    H[n, q] += cx * Xt[i, base + q]


# ----------------------------------------------------------------------------- one flow
@nb.njit(**_JIT)
def loss_grad_one(model, w, prefix, G, gcur, gnext, out_g):
    """L(w) and its gradient (into out_g) for one parameter vector; the workspace is
    ``prefix`` (N+1, k_v) and three (k_v,) vectors."""
    kv = forward_filter(w, model.k, model.S, model.offs, prefix)
    loss = fs_loss_grad(model, prefix[model.k.shape[0], :kv], G)
    backward_filter(w, model.k, model.S, model.offs, prefix, G, gcur, gnext, out_g)
    return loss


class Workspace(NamedTuple):
    prefix: np.ndarray
    G: np.ndarray
    gcur: np.ndarray
    gnext: np.ndarray


@nb.njit(**_JIT)
def new_workspace(model):
    kv = model.k_v
    N = model.k.shape[0]
    return Workspace(np.zeros((N + 1, kv)), np.zeros(kv), np.zeros(kv), np.zeros(kv))


@nb.njit(**_JIT)
def loss_grad_ws(model, w, ws, out_g):
    """:func:`loss_grad_one` with a :class:`Workspace`."""
    return loss_grad_one(model, w, ws.prefix, ws.G, ws.gcur, ws.gnext, out_g)


@nb.njit(**_JIT)
def hessian_one(model, w, prefix, work, J, Hv, Hw):
    """Hessian (n_params, n_params) of L at w into Hw:
    ``J^T Hv J + sum_m G_m d^2 v_m / dw^2`` (DESIGN.md). ``work`` is (2, k_v); ``J`` is
    (k_v, n_params); ``Hv`` is (k_v, k_v)."""
    k = model.k
    S = model.S
    offs = model.offs
    N = k.shape[0]
    kv = forward_filter(w, k, S, offs, prefix)
    v = prefix[N, :kv]
    G = np.empty(kv)
    fs_loss_grad(model, v, G)
    fs_hessian(model, v, Hv)
    jacobian_into(w, k, S, offs, work, J)
    n = J.shape[1]
    # J^T Hv J
    HJ = np.empty((kv, n))
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
        for f in range(c * K // nc, (c + 1) * K // nc):
            kv = forward_filter(W[f], model.k, model.S, model.offs, prefix)
            out[f] = fs_loss(model, prefix[N, :kv])
    return out


@nb.njit(parallel=True, **_JIT)
def loss_grad_batch(model, W, out_loss, out_grad, nc):
    """L (K,) into out_loss and gradients (K, n_params) into out_grad."""
    K = W.shape[0]
    for c in nb.prange(nc):
        ws = new_workspace(model)
        for f in range(c * K // nc, (c + 1) * K // nc):
            out_loss[f] = loss_grad_ws(model, W[f], ws, out_grad[f])


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
        for f in range(c * K // nc, (c + 1) * K // nc):
            hessian_one(model, W[f], prefix, work, J, Hv, out[f])
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
