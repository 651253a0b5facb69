"""Gradient descent ``w <- w - h grad L(w)`` (explicit Euler on eq. 1.7) for many flows at
once, ``LANES`` flows per worker (``opt.width`` through the generated kernel; see
:mod:`lcnfast._integrate` for the layout, the load balancing and the interruption).

Private module: inputs are validated by :mod:`lcnfast.flows`.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from ._codegen import call_lane_kernel
from ._integrate import (_NORM_MIN, CONVERGED, INTERRUPTED, NON_FINITE, REACHED_END, _atomic_load,
                         _fetch_add, _finish_lane, _lane_maxima_from, _lane_norm2_scaled,
                         _lane_norms, _level_top, _park, _pick, _pick_maxima, _plain_ok, _start)
from ._jit import JIT as _JIT
from ._kernels import _flag
from ._lanes import LANES, loss_grad_lanes, new_lane_workspace


@nb.njit(**_JIT)
def _quiet_lanes(flow, step, next_save, L, gn, wn, lev_top, grad_tol, n_steps, qm):
    """Per lane, whether this step needs nothing of it but its running maxima and the next
    step (SIMD over the lanes): qm[b] = -1 (a mask for _integrate._pick) for a running flow
    past its first step, its norms in the plain range, its loss finite and above every level
    it has not reached yet (``lev_top``), no save due, not converged, not at its last step;
    else 0. The other lanes take the full per-lane checks of :func:`euler_worker`, which give
    these lanes the same outcome one by one."""
    for b in range(qm.shape[0]):
        q = ((flow[b] >= 0) & (step[b] != 0) & (step[b] != next_save[b])
             & (step[b] < n_steps) & (gn[b] >= _NORM_MIN) & (gn[b] < math.inf)
             & (wn[b] >= _NORM_MIN) & (wn[b] < math.inf) & (abs(L[b]) < math.inf)
             & (L[b] > lev_top[b]) & ~(gn[b] <= grad_tol))
        qm[b] = -np.int64(q)


@nb.njit(**_JIT)
def _quiet_step(qm, L, L_prev, v1, wn, M, step):
    """For the quiet lanes (qm[b] = -1, :func:`_quiet_lanes`), what the per-lane checks would
    do: the running maxima of the loss increase, ||v||_1 and ||w||_2, and the next step (SIMD
    over the lanes, selecting by the bits: _integrate._pick)."""
    for b in range(qm.shape[0]):
        q = qm[b]
        _pick_maxima(q, M, b, L[b] - L_prev[b], v1[b], wn[b])
        L_prev[b] = _pick(q, L[b], L_prev[b])
        step[b] -= q


@nb.njit(**_JIT)
def euler_worker(model, kern, use_kern, W0, opt, out, counter, stop):
    """Gradient descent for the rows of W0 (K, n) into ``out`` (_integrate.FlowOutputs),
    ``LANES`` flows at a time (``opt.width`` when ``use_kern``), taking the next flow from
    ``counter`` (1,) int64 shared with the other workers; gradients through the generated
    kernel ``kern`` when ``use_kern``. ``stop`` (1,) int64: set ``stop[0]`` from another thread
    to interrupt. Run on several threads at once by lcnfast._threads.run_workers."""
    K, n = W0.shape
    N = model.k.shape[0]
    lws = new_lane_workspace(model)
    # flows side by side: opt.width through the generated kernel (which takes any width), else
    # the generic lane kernels' LANES
    nl = opt.width if use_kern else LANES
    V = lws.P[N] if not use_kern else np.zeros((model.k_v, nl))  # (k_v, nl) final filters
    Y = np.zeros((n, nl))
    G = np.zeros((n, nl))
    L = np.zeros(nl)
    L_prev = np.zeros(nl)
    gn = np.zeros(nl)
    v1 = np.zeros(nl)
    wn = np.zeros(nl)
    flow = np.full(nl, -1, np.int64)
    step = np.zeros(nl, np.int64)
    next_save = np.zeros(nl, np.int64)  # step of the lane's next save (no modulo per step)
    h = opt.h
    # the hot arrays, out of their tuples once (see "The hot path" below)
    A = model.A
    bvec = model.b
    yy = model.yy
    M = np.zeros((3, nl))  # running maxima per lane, see _lane_maxima_from
    levels = opt.levels
    qm = np.zeros(nl, np.int64)  # -1: a lane that needs no per-lane checks this step
    lev_top = np.full(nl, -math.inf)  # per lane: the largest level its flow has not reached
    while True:
        n_active = 0
        for b in range(nl):
            if flow[b] < 0:
                f = _fetch_add(counter, 0, 1)
                if f < K:
                    flow[b] = f
                    step[b] = 0
                    next_save[b] = 0
                    for i in range(n):
                        Y[i, b] = W0[f, i]
                    _start(out, f)
                    _lane_maxima_from(out, f, M, b)
                else:
                    _park(Y, b)
            if flow[b] >= 0:
                n_active += 1
        if n_active == 0:
            break
        if use_kern:
            call_lane_kernel(kern, Y, A, bvec, yy, G, L, V)
        else:
            loss_grad_lanes(model, Y, lws, G, L, _flag(True))
        _lane_norms(G, V, Y, gn, v1, wn)
        _quiet_lanes(flow, step, next_save, L, gn, wn, lev_top, opt.grad_tol, opt.n_steps, qm)
        for b in range(nl):  # the per-lane checks, of the lanes that are not quiet
            f = flow[b]
            if f < 0 or qm[b] != 0:
                continue
            if not _plain_ok(gn[b]):  # rare: sum of squares out of range, see _norm2
                gn[b] = _lane_norm2_scaled(G, b)
            if not _plain_ok(wn[b]):
                wn[b] = _lane_norm2_scaled(Y, b)
            j = step[b]
            if j == 0:
                out.loss_init[f] = L[b]
                out.grad_norm_init[f] = gn[b]
            elif L[b] - L_prev[b] > M[2, b]:
                M[2, b] = L[b] - L_prev[b]
            if v1[b] > M[0, b]:
                M[0, b] = v1[b]
            if wn[b] > M[1, b]:
                M[1, b] = wn[b]
            for q in range(levels.shape[0]):  # exact for the iterates: first j with L <= level
                if L[b] <= levels[q] and math.isnan(out.t_below[f, q]):
                    out.t_below[f, q] = j * h
            lev_top[b] = _level_top(levels, out.t_below, f)
            if j == next_save[b] and j // opt.save_every < opt.n_save:
                next_save[b] += opt.save_every
                r = j // opt.save_every
                for i in range(n):
                    out.save_w[f, r, i] = Y[i, b]
                out.save_loss[f, r] = L[b]
                out.save_grad_norm[f, r] = gn[b]
            status = -1
            if not (math.isfinite(L[b]) and math.isfinite(gn[b])):
                status = NON_FINITE
            elif gn[b] <= opt.grad_tol:
                status = CONVERGED
            elif j >= opt.n_steps:
                status = REACHED_END
            if status >= 0:
                _finish_lane(out, f, Y, V, M, b, L[b], gn[b], j * h, status, j, 0, j + 1)
                flow[b] = -1
                continue
            step[b] = j + 1
            L_prev[b] = L[b]
        _quiet_step(qm, L, L_prev, v1, wn, M, step)
        if _atomic_load(stop, 0) != 0:  # interrupted: end the running flows at their state
            for b in range(nl):
                f = flow[b]
                if f >= 0:
                    j = step[b] - 1
                    _finish_lane(out, f, Y, V, M, b, L[b], gn[b], j * h, INTERRUPTED, j, 0,
                                 j + 1)
            break
        # the step, for all lanes at once (idle lanes are overwritten when refilled)
        for i in range(n):
            for b in range(nl):
                Y[i, b] -= h * G[i, b]
