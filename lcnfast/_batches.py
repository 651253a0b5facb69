"""Batched evaluations of many parameter vectors: final filters, Jacobians of pi, losses,
Hessians and network outputs, one row of the batch per parameter vector.

Private module: every function assumes clean, validated, C-contiguous float64/int64 input (the
public wrappers in :mod:`lcnfast.problem` make sure of that); the conventions are those of
:mod:`lcnfast._kernels`.

Each evaluation is a ``*_rows`` kernel that fills the rows ``lo..hi-1`` of its output with the
one-flow kernels, allocating its workspace once, and a wrapper that allocates the output and
runs the kernel on Numba's current thread count (``numba.get_num_threads()``) through
:func:`lcnfast._threads.run_rows`: one contiguous range of rows per thread (the rows of a
batch cost the same). They are not ``prange`` loops because a parallel wrapper recompiles its
whole call tree once more: the five took ~17 s of a cold start on 2 AVX2 cores, of which the
Hessian's alone ~9 s. A row's arithmetic never depends on its range, so results are bitwise
identical for any thread count and batch composition. (The batched gradients, called far more
often on cheaper work, stay on ``prange``: :mod:`lcnfast._lanes`.)
"""

from __future__ import annotations

import numba
import numba as nb
import numpy as np

from ._data_entry import fs_loss_grad_fast as _fs_loss_grad_fast
from ._data_path import _DATA_PATH_FAST, _data_buf, _fs_loss_seq
from ._jit import JIT as _JIT
from ._kernels import _flag, forward_filter, fs_loss, hessian_one, jacobian_into
from ._threads import run_rows


def _threads():
    return numba.get_num_threads()


@nb.njit(**_JIT)
def final_filter_rows(W, k, S, offs, V, lo, hi):
    """V[f] = pi(W[f]) (k_v,) for f in lo..hi-1."""
    N = k.shape[0]
    kv = V.shape[1]
    prefix = np.zeros((N + 1, kv))
    for f in range(lo, hi):
        forward_filter(W[f], k, S, offs, prefix)
        for j in range(kv):  # a loop, not a slice assignment: that compiles a shape check
            V[f, j] = prefix[N, j]  # with its error message, ~1.3 s more of a cold start


def final_filter_batch(W, k, S, offs, k_v):
    """V (K, k_v): the final filters pi(w) (Prop. 2.1) of the rows w of W (K, n_params)."""
    V = np.empty((W.shape[0], k_v))
    run_rows(final_filter_rows, (W, k, S, offs, V), W.shape[0], _threads())
    return V


@nb.njit(**_JIT)
def jacobian_rows(W, k, S, offs, out, lo, hi):
    """out[f] = the Jacobian (k_v, n_params) of pi at W[f], for f in lo..hi-1."""
    work = np.zeros((2, out.shape[1]))
    for f in range(lo, hi):
        jacobian_into(W[f], k, S, offs, work, out[f])


def jacobian_batch(W, k, S, k_v):
    """Jacobians (K, k_v, n_params) of pi at the rows of W (K, n_params)."""
    K, n = W.shape
    offs = np.zeros(k.shape[0] + 1, np.int64)
    offs[1:] = np.cumsum(k)
    out = np.empty((K, k_v, n))
    run_rows(jacobian_rows, (W, k, S, offs, out), K, _threads())
    return out


@nb.njit(**_JIT)
def loss_rows(model, W, out, lo, hi):
    """out[f] = L(W[f]) for f in lo..hi-1."""
    N = model.k.shape[0]
    prefix = np.zeros((N + 1, model.k_v))
    buf = _data_buf(model) if _DATA_PATH_FAST else np.zeros(model.d_N)
    for f in range(lo, hi):
        kv = forward_filter(W[f], model.k, model.S, model.offs, prefix)
        v = prefix[N, :kv]
        if model.use_gram:
            out[f] = fs_loss(model, v)
        elif _DATA_PATH_FAST:
            out[f] = _fs_loss_grad_fast(model, v, buf[:0], buf, _flag(False), _flag(True))
        else:
            out[f] = _fs_loss_seq(model, v, buf)


def loss_batch(model, W):
    """L (K,) at the rows of W (K, n_params)."""
    out = np.empty(W.shape[0])
    run_rows(loss_rows, (model, W, out), W.shape[0], _threads())
    return out


@nb.njit(**_JIT)
def hessian_rows(model, W, out, lo, hi):
    """out[f] = the Hessian (n_params, n_params) of L at W[f], for f in lo..hi-1."""
    n = W.shape[1]
    kv = model.k_v
    N = model.k.shape[0]
    prefix = np.zeros((N + 1, kv))
    work = np.zeros((2, kv))
    J = np.zeros((kv, n))
    Hv = np.zeros((kv, kv))
    G = np.zeros(kv)
    HJ = np.zeros((kv, n))
    buf = _data_buf(model)
    for f in range(lo, hi):
        hessian_one(model, W[f], prefix, work, J, Hv, out[f], G, HJ, buf)


def hessian_batch(model, W):
    """Hessians (K, n_params, n_params) of L at the rows of W (K, n_params)."""
    out = np.empty((W.shape[0], W.shape[1], W.shape[1]))
    run_rows(hessian_rows, (model, W, out), W.shape[0], _threads())
    return out


@nb.njit(**_JIT)
def predict_rows(model, W, out, lo, hi):
    """out[f] = V X (d_N, m), the network output at W[f], for f in lo..hi-1."""
    N = model.k.shape[0]
    Xt = model.Xt
    m = Xt.shape[0]
    kv = model.k_v
    sv = model.s_v
    prefix = np.zeros((N + 1, kv))
    for f in range(lo, hi):
        forward_filter(W[f], model.k, model.S, model.offs, prefix)
        v = prefix[N]
        for i in range(m):
            for j in range(model.d_N):
                z = 0.0
                for n in range(kv):
                    z += v[n] * Xt[i, j * sv + n]
                out[f, j, i] = z


def predict_batch(model, W):
    """Network outputs (K, d_N, m) at the rows of W (K, n_params)."""
    out = np.empty((W.shape[0], model.d_N, model.Xt.shape[0]))
    run_rows(predict_rows, (model, W, out), W.shape[0], _threads())
    return out
