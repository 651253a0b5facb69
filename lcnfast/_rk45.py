"""Dormand-Prince 5(4) with FSAL and a per-flow step size for many flows at once, ``LANES``
flows per worker (``opt.width`` through the generated kernel; see :mod:`lcnfast._integrate`
for the layout, the load balancing and the interruption).

Conventions follow scipy's ``RK45`` (the reference behaviour): RMS error norm of
``err / (atol + rtol max(|y|,|y_new|))``, step factor ``SAFETY * err^(-1/5)`` clipped to
[MIN_FACTOR, MAX_FACTOR] and to <= 1 right after a rejection, Hairer's initial step
(``scipy.integrate._ivp.common.select_initial_step``), and ``min_step = 10 ulp(t)``. Values at
save times come from the 4th-order continuous extension of the accepted step (Shampine's dense
output, as scipy), so saving never changes the steps; a save time equal to the end of a step
takes the step's own state.

Private module: inputs are validated by :mod:`lcnfast.flows`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from ._codegen import call_lane_kernel
from ._integrate import (_NORM_MIN, CONVERGED, DP_A, DP_B, DP_E, DP_P, INTERRUPTED, MAX_FACTOR,
                         MAX_STEPS, MIN_FACTOR, NON_FINITE, REACHED_END, SAFETY, STEP_UNDERFLOW,
                         _atomic_load, _fetch_add, _finish_lane, _initial_step, _inv_fifth_root,
                         _l1, _lane_maxima_from, _lane_norm2_scaled, _level_top,
                         _levels_at_start, _levels_crossed, _locate_levels, _norm2, _over, _park,
                         _pick, _pick_maxima, _plain_ok, _record, _start, _ulp_above)
from ._jit import JIT as _JIT
from ._kernels import loss_grad_ws, new_workspace
from ._lanes import LANES, loss_grad_lanes, new_lane_workspace


class _RKLanes(NamedTuple):
    """Per-worker state of nl Dormand-Prince flows (lane index last; nl = LANES or opt.width)."""

    flow: np.ndarray  # (nl,) flow index, -1 idle
    t: np.ndarray  # (nl,) current time
    h_abs: np.ndarray  # (nl,) proposed step size
    h: np.ndarray  # (nl,) step size of the current attempt (0 for idle lanes)
    min_step: np.ndarray  # (nl,)
    rejected: np.ndarray  # (nl,) bool: the current step had a rejection
    n_acc: np.ndarray  # (nl,) int64
    n_rej: np.ndarray  # (nl,) int64
    evals: np.ndarray  # (nl,) int64
    si: np.ndarray  # (nl,) int64 next save index
    L: np.ndarray  # (nl,) loss at y
    gn: np.ndarray  # (nl,) ||grad L|| at y
    L_new: np.ndarray  # (nl,)
    Y: np.ndarray  # (n, nl) state
    Y_new: np.ndarray  # (n, nl)
    Ytmp: np.ndarray  # (n, nl) stage points / error estimate
    Gst: np.ndarray  # (7, n, nl) stage gradients (see _NEG_A), Gst[0] = grad L(y) (FSAL)
    V: np.ndarray  # (k_v, nl) final filter at y
    M: np.ndarray  # (3, nl) running maxima (_lane_maxima_from)
    y1: np.ndarray  # (n,) one-flow scratch
    y2: np.ndarray  # (n,)
    g1: np.ndarray  # (n,)


@nb.njit(**_JIT)
def _rk_lanes(n, kv, nl):
    """The state of nl lanes (n parameters, k_v filter entries)."""
    z = np.zeros(nl)
    zi = np.zeros(nl, np.int64)
    return _RKLanes(
        np.full(nl, -1, np.int64),
        z.copy(),
        z.copy(),
        z.copy(),
        z.copy(),
        np.zeros(nl, np.bool_),
        zi.copy(),
        zi.copy(),
        zi.copy(),
        zi.copy(),
        z.copy(),
        z.copy(),
        z.copy(),
        np.zeros((n, nl)),
        np.zeros((n, nl)),
        np.zeros((n, nl)),
        np.zeros((7, n, nl)),
        np.zeros((kv, nl)),
        np.zeros((3, nl)),
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
    )


@nb.njit(**_JIT)
def _rk_finish(out, s, b, status):
    f = s.flow[b]
    _finish_lane(out, f, s.Y, s.V, s.M, b, s.L[b], s.gn[b], s.t[b], status, s.n_acc[b],
                 s.n_rej[b], s.evals[b])
    s.flow[b] = -1
    s.h[b] = 0.0
    _park(s.Y, b)
    for q in range(7):
        _park(s.Gst[q], b)


@nb.njit(**_JIT)
def _rk_save_row(out, f, r, s, b, L, gn):
    for i in range(s.Y.shape[0]):
        out.save_w[f, r, i] = s.Y[i, b]
    out.save_loss[f, r] = L
    out.save_grad_norm[f, r] = gn


@nb.njit(**_JIT)
def _rk_saves_at(opt, out, s, b):
    """Rows of lane b's current state (time s.t[b]) at the save times up to s.t[b]."""
    si = s.si[b]
    while si < opt.save_t.shape[0] and opt.save_t[si] <= s.t[b]:
        _rk_save_row(out, s.flow[b], si, s, b, s.L[b], s.gn[b])
        si += 1
    s.si[b] = si


@nb.njit(**_JIT)
def _rk_start(model, W0, opt, out, s, b, f, ws):
    """Put flow f into lane b: first evaluation, saves at t = 0, stop checks, initial step.
    Returns True if the flow is running (False: it already finished)."""
    n = W0.shape[1]
    N = model.k.shape[0]
    kv = model.k_v
    s.flow[b] = f
    y = s.y1
    for i in range(n):
        y[i] = W0[f, i]
        s.Y[i, b] = y[i]
    L = loss_grad_ws(model, y, ws, s.g1)
    gn = _norm2(s.g1)
    for i in range(n):
        s.Gst[0, i, b] = s.g1[i]
    for i in range(kv):
        s.V[i, b] = ws.prefix[N, i]
    s.t[b] = 0.0
    s.L[b] = L
    s.gn[b] = gn
    s.n_acc[b] = 0
    s.n_rej[b] = 0
    s.evals[b] = 1
    s.rejected[b] = False
    _start(out, f)
    out.loss_init[f] = L
    out.grad_norm_init[f] = gn
    _record(out, f, _l1(ws.prefix[N, :kv]), _norm2(y))
    _lane_maxima_from(out, f, s.M, b)
    _levels_at_start(opt, out, f, L)
    si = 0
    while si < opt.save_t.shape[0] and opt.save_t[si] <= 0.0:
        _rk_save_row(out, f, si, s, b, L, gn)
        si += 1
    s.si[b] = si
    if not (math.isfinite(L) and math.isfinite(gn)):
        _rk_finish(out, s, b, NON_FINITE)
        return False
    if gn <= opt.grad_tol:
        _rk_finish(out, s, b, CONVERGED)
        return False
    for i in range(n):
        s.y2[i] = -s.g1[i]  # f(y0)
    s.h_abs[b] = _initial_step(model, y, s.y2, opt.t_end, opt, ws, s.y1, s.g1)
    s.evals[b] += 1
    return True


# The hot path of the Dormand-Prince lanes. Every use of an array held in a NamedTuple (the
# lane state, ``out``, ``opt``, the workspaces) binds a new reference: an atomic increment and
# decrement of its reference count, which LLVM's reference-count pruning removes only in
# straight-line code. Per lane and step the earlier code (helpers inlined with the tuples as
# arguments) made about a hundred such pairs: 65% of a one-thread run (perf), and cache-line
# traffic between threads on the shared arrays. So the worker takes every hot array out of
# its tuple once, and the per-step helpers below take plain arrays and scalars only (their
# reference counts are then pruned); tuples only go to the helpers of rare events (start,
# finish, saves, level crossings). The arithmetic per lane is unchanged, operation by
# operation: bitwise the same results.


@nb.njit(**_JIT)
def _rk_prepare(t, h_abs, min_step, rejected, n_tried, t_end, max_steps):
    """Checks before a lane attempts a step from time t, and its step size (scalars in and
    out: arrays would cost reference counting per call). Returns (status to finish with:
    REACHED_END, MAX_STEPS, STEP_UNDERFLOW, or -1 to go on; h; h_abs; min_step)."""
    if not rejected:  # a new step
        if t >= t_end:
            return REACHED_END, 0.0, h_abs, min_step
        min_step = 10.0 * _ulp_above(t)
        if h_abs < min_step:
            h_abs = min_step
    if n_tried >= max_steps:
        return MAX_STEPS, 0.0, h_abs, min_step
    if not (h_abs >= min_step):  # also catches NaN
        return STEP_UNDERFLOW, 0.0, h_abs, min_step
    t_new = t + h_abs
    if t_new > t_end:
        t_new = t_end
    h = t_new - t
    return -1, h, h, min_step


# The stage combinations and the error norm work on flat views of the (n, nl) lane arrays
# (index j = i * nl + b; the worker makes the views once) with the step sizes broadcast to
# the same layout (H, once per step): each is one loop over n * nl elements that LLVM
# vectorises, the stage sums held in registers. For that the number of stages must be a
# compile-time constant, so the six stages are written out (_rk_stages, _rk_stages_kern) and
# _rk_stage_point is inlined with a constant stage. The earlier form (a loop over stages, lanes
# innermost with the constant trip count LANES) was unrolled to scalar code: rk45 ran 1.28x
# slower (1024 flows of the square-loss benchmark problem, one thread). Per lane and element the
# sums run over the stages in order, exactly as for one flow: bitwise the same results.


# The stages hold the gradients g_q = grad L at the stage points, where Dormand-Prince's slopes
# are f_q = -g_q: the lane kernels write them in place (Gst[q]), no pass negates them. The
# tableau's weights are negated instead (_NEG_A, _NEG_B, _NEG_E): (-c) g = c (-g) bitwise (a
# product's sign is the xor of its factors' signs, its magnitude rounds alike), so every sum
# over the stages has the bits it had over the slopes, signed zeros included. The rare paths
# (dense output, levels, an error at rest) take -g_q, the slope itself. Measured before the
# change: the negating copies were 5-6 ns per lane and step of the square-loss benchmark
# problem (32 lanes, one thread), ~3.5% of a step.
_NEG_A = -DP_A
_NEG_B = -DP_B
_NEG_E = -DP_E


@nb.njit(inline="always", **_JIT)
def _rk_step_sizes(h, H):
    """H[i * nl + b] = h[b] (the step size of lane b in the flat layout)."""
    nl = h.shape[0]
    for i in range(H.shape[0] // nl):
        for b in range(nl):
            H[i * nl + b] = h[b]


@nb.njit(inline="always", **_JIT)
def _rk_stage_point(Gf, Yf, H, st, dst):
    """The points y + h sum_q a_{st,q} f_q of Dormand-Prince stage st (1..6; 6: the new
    points, with the weights DP_B) in every lane into the flat dst (n * nl,), from the flat
    stage gradients Gf (7, n * nl) = -f (see _NEG_A). Inlined, with st a constant at the call
    site: the stage sum is then unrolled and held in registers."""
    coef = _NEG_A[st] if st < 6 else _NEG_B
    for j in range(Yf.shape[0]):
        a = 0.0
        for q in range(st):
            a += coef[q] * Gf[q, j]
        dst[j] = Yf[j] + H[j] * a


@nb.njit(inline="always", **_JIT)
def _rk_stage(model, lws, Gst, Gf, Yf, H, st, dst, dstf, L_new):
    """One stage through the generic lane kernels: its points into dst (dstf: the flat view),
    their gradients into Gst[st] (losses into L_new and filters into lws.P[N] at st = 6)."""
    _rk_stage_point(Gf, Yf, H, st, dstf)
    loss_grad_lanes(model, dst, lws, Gst[st], L_new, st == 6)


@nb.njit(**_JIT)
def _rk_stages(model, lws, h, Gst, Gf, Yf, H, acc, accf, Y_new, Ynf, L_new):
    """Stages 2..7 of one Dormand-Prince step in every lane (step size h[b], broadcast into H)
    through the generic lane kernels: the new points in Y_new, their losses in L_new (stage 7,
    FSAL; stages 2..6 need no loss values), their filters in lws.P[N]. acc: scratch."""
    _rk_step_sizes(h, H)
    _rk_stage(model, lws, Gst, Gf, Yf, H, 1, acc, accf, L_new)
    _rk_stage(model, lws, Gst, Gf, Yf, H, 2, acc, accf, L_new)
    _rk_stage(model, lws, Gst, Gf, Yf, H, 3, acc, accf, L_new)
    _rk_stage(model, lws, Gst, Gf, Yf, H, 4, acc, accf, L_new)
    _rk_stage(model, lws, Gst, Gf, Yf, H, 5, acc, accf, L_new)
    _rk_stage(model, lws, Gst, Gf, Yf, H, 6, Y_new, Ynf, L_new)


@nb.njit(inline="always", **_JIT)
def _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, st, dst, dstf, L_new, V):
    """:func:`_rk_stage` through the generated kernel."""
    _rk_stage_point(Gf, Yf, H, st, dstf)
    call_lane_kernel(kern, dst, A, bvec, yy, Gst[st], L_new, V)


@nb.njit(**_JIT)
def _rk_stages_kern(kern, A, bvec, yy, h, Gst, Gf, Yf, H, acc, accf, Y_new, Ynf, L_new, V):
    """:func:`_rk_stages` through the generated kernel at address ``kern`` (its Gram data A,
    bvec, yy; the new points' filters into V). It makes no call that can return an error, so
    Numba's pruning removes the reference counting of its arrays (see lcnfast._one_flow,
    before grad_kern)."""
    _rk_step_sizes(h, H)
    _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, 1, acc, accf, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, 2, acc, accf, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, 3, acc, accf, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, 4, acc, accf, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, 5, acc, accf, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Gst, Gf, Yf, H, 6, Y_new, Ynf, L_new, V)


@nb.njit(**_JIT)
def _rk_err_sumsq(Gf, Yf, Ynf, H, atol, rtol, out):
    """Per lane the error norm's sum of squares sum_i (e_i / sc_i)^2 of the attempted step,
    e = h sum_q E_q f_q (the weights _NEG_E on the gradients), sc = atol + rtol
    max(|y|, |y_new|) (scipy's RK45), into out (nl,); flat views as in _rk_stage_point.
    Each lane's sum in the order of one flow (i = 0, 1, ...), accumulated in the pass that
    computes the terms."""
    nl = out.shape[0]
    for b in range(nl):
        out[b] = 0.0
    for i in range(Yf.shape[0] // nl):
        for b in range(nl):
            j = i * nl + b
            e = 0.0
            for q in range(7):
                e += _NEG_E[q] * Gf[q, j]
            e *= H[j]
            sc = atol + rtol * max(abs(Yf[j]), abs(Ynf[j]))
            out[b] += (e / sc) ** 2


@nb.njit(**_JIT)
def _rk_decide_lanes(err2, n, flow, h, h_abs, rejected, accepted, P):
    """Accept or reject the attempted step of every running lane (flow >= 0, h > 0) from its
    error norm err = sqrt(err2 / n) as scipy's RK45 does, and its next proposed step size into
    h_abs; accepted (nl,) bool out, False for the other lanes. P (nl,): scratch for
    err^(-1/5). A NaN sum with atol = 0 must have been replaced by the caller (see
    _err_sumsq_at_rest). The decisions, the powers (_integrate._inv_fifth_root, within 3 ulp
    of libm's pow: step sizes may differ from scipy's in their last bits) and the step sizes
    are computed across the lanes at once (SIMD). The other lanes' h_abs is multiplied by 1.0
    (exact), not left alone: a store under a condition becomes a masked store (see
    _integrate._pick)."""
    nl = err2.shape[0]
    for b in range(nl):
        P[b] = _inv_fifth_root(math.sqrt(err2[b] / n))
    for b in range(nl):
        err = math.sqrt(err2[b] / n)
        ok = err < 1.0
        # rejected: shrink, at most by MIN_FACTOR (NaN/Inf in a stage: by MIN_FACTOR)
        f_rej = max(MIN_FACTOR, SAFETY * P[b]) if abs(err) < math.inf else MIN_FACTOR
        f_acc = MAX_FACTOR if err == 0.0 else min(MAX_FACTOR, SAFETY * P[b])
        if rejected[b]:  # no growth right after a rejection
            f_acc = min(1.0, f_acc)
        running = flow[b] >= 0 and h[b] > 0.0
        h_abs[b] = h_abs[b] * ((f_acc if ok else f_rej) if running else 1.0)
        accepted[b] = running and ok


@nb.njit(**_JIT)
def _rk_step_counts(flow, h, accepted, t, t_save, L_new, lev_top, n_acc, n_rej, evals,
                    rejected, t_new, am, busy):
    """After the decisions, for every lane at once (SIMD): the counts of the attempted step,
    the new time t_new = t + h, the accepted mask am (int64: -1 accepted, else 0; see
    _integrate._pick), and busy (bool): an accepted step that passes a save time (t_save: the
    lane's next one, inf if none) or crosses a level it has not reached yet (lev_top, see
    _integrate._level_top), which the worker handles lane by lane before the lanes move on.
    Idle lanes count too; their counts are reset when a flow starts in them."""
    for b in range(flow.shape[0]):
        a = accepted[b]
        run = (flow[b] >= 0) & (h[b] > 0.0)
        n_acc[b] += a
        n_rej[b] += run & ~a
        evals[b] += 6 * run
        rejected[b] = ~a
        tn = t[b] + h[b]
        t_new[b] = tn
        am[b] = -np.int64(a)
        busy[b] = a & ((t_save[b] < tn) | (L_new[b] <= lev_top[b]))


@nb.njit(**_JIT)
def _rk_dense_saves(model, opt, out, s, b, h, t, t_new, ws):
    """Saves at the save times inside (t, t_new) of lane b's accepted step, on Shampine's
    continuous extension (one-flow evaluations in the scratch vectors); returns the number of
    gradient evaluations."""
    n = s.Y.shape[0]
    f = s.flow[b]
    T = opt.save_t.shape[0]
    si = s.si[b]
    evals = 0
    while si < T and opt.save_t[si] < t_new:
        x = (opt.save_t[si] - t) / h
        for i in range(n):
            acc = 0.0
            for q in range(7):
                acc += -s.Gst[q, i, b] * (
                    x * (DP_P[q, 0] + x * (DP_P[q, 1] + x * (DP_P[q, 2] + x * DP_P[q, 3])))
                )
            s.y1[i] = s.Y[i, b] + h * acc
        Ls = loss_grad_ws(model, s.y1, ws, s.g1)
        evals += 1
        out.save_w[f, si, :] = s.y1
        out.save_loss[f, si] = Ls
        out.save_grad_norm[f, si] = _norm2(s.g1)
        si += 1
    s.si[b] = si
    return evals


@nb.njit(**_JIT)
def _rk_accept_lanes(am, Y, Y_new, Gst, V, V_new, G, gn, wn, v1, nonfinite):
    """Move the accepted lanes (am[b] = -1, see _rk_step_counts) to their new state (Y, the
    FSAL stage, the filter V) and take per lane ||grad L||_2 (from G), ||w||_2, ||v||_1 and a
    finiteness test of w (0.0 if finite, else NaN) of the new state (lanes: the arrays' last
    axis), in the passes that move them; the sums in index order, as
    _integrate._lane_norms. The moves select by the bits (_integrate._pick): as stores under
    a condition they were masked stores, and this function cost 22-25 ns per lane and step of
    the square-loss benchmark problem (32 lanes, one thread, timed alone, Zen 3); 11-16 with
    the selects. With the norms in the passes of the moves instead of a pass of their own
    (which read Y, V and G again), on a Zen 5: 12.9-13.7 -> 10.6-11.3 ns at 32 lanes, 9.7-10.2
    -> 7.6-8.0 at 64 (bitwise the same)."""
    nl = Y.shape[1]
    for b in range(nl):
        nonfinite[b] = 0.0
        gn[b] = 0.0
        wn[b] = 0.0
        v1[b] = 0.0
    for i in range(Y.shape[0]):
        for b in range(nl):
            y = _pick(am[b], Y_new[i, b], Y[i, b])
            Y[i, b] = y
            nonfinite[b] += y * 0.0
            wn[b] += y * y
            g = G[i, b]
            gn[b] += g * g
            Gst[0, i, b] = _pick(am[b], g, Gst[0, i, b])
    for i in range(V.shape[0]):
        for b in range(nl):
            v = _pick(am[b], V_new[i, b], V[i, b])
            V[i, b] = v
            v1[b] += abs(v)
    for b in range(nl):
        gn[b] = math.sqrt(gn[b])
        wn[b] = math.sqrt(wn[b])


@nb.njit(**_JIT)
def _rk_quiet_lanes(accepted, gn, wn, L_new, nonfinite, t_new, t_save, grad_tol, qm):
    """Per lane, whether its accepted step needs nothing but the moves of _rk_quiet_update
    (SIMD over the lanes): qm[b] = -1 for an accepted step to a finite loss and state, its
    norms in the plain range, no save time reached, not converged; else 0. The other accepted
    lanes take the full per-lane checks of :func:`rk45_worker`, which give these lanes the
    same outcome one by one."""
    for b in range(qm.shape[0]):
        q = (accepted[b] & (gn[b] >= _NORM_MIN) & (gn[b] < math.inf) & (wn[b] >= _NORM_MIN)
             & (wn[b] < math.inf) & (abs(L_new[b]) < math.inf) & (nonfinite[b] == 0.0)
             & (t_save[b] > t_new[b]) & ~(gn[b] <= grad_tol))
        qm[b] = -np.int64(q)


@nb.njit(**_JIT)
def _rk_quiet_update(qm, t, t_new, L, L_new, gn_s, gn, v1, wn, M):
    """For the quiet lanes (qm[b] = -1, :func:`_rk_quiet_lanes`), what the per-lane checks do:
    the new time, loss and gradient norm, and the running maxima of the loss increase,
    ||v||_1 and ||w||_2 (SIMD over the lanes, selecting by the bits; see _integrate._pick)."""
    for b in range(qm.shape[0]):
        q = qm[b]
        _pick_maxima(q, M, b, L_new[b] - L[b], v1[b], wn[b])
        t[b] = _pick(q, t_new[b], t[b])
        L[b] = _pick(q, L_new[b], L[b])
        gn_s[b] = _pick(q, gn[b], gn_s[b])


@nb.njit(**_JIT)
def _err_sumsq_at_rest(s, b, h, opt):
    """The error norm's sum of squares of lane b's attempted step with 0 / 0 = 0 (atol = 0)."""
    acc2 = 0.0
    for i in range(s.Y.shape[0]):
        e = 0.0
        for q in range(7):
            e += DP_E[q] * -s.Gst[q, i, b]
        e *= h
        sc = opt.atol + opt.rtol * max(abs(s.Y[i, b]), abs(s.Y_new[i, b]))
        acc2 += _over(e, sc) ** 2
    return acc2


@nb.njit(**_JIT)
def _rk_levels(model, opt, out, s, b, h, t, t_new, L_new, ws):
    """Levels crossed by lane b's accepted step, on Shampine's continuous extension (as the
    dense saves; rare: at most once per level and flow)."""
    n = s.Y.shape[0]
    C = np.zeros((4, n))
    for i in range(n):
        s.y2[i] = s.Y[i, b]
        for p in range(4):
            acc = 0.0
            for q in range(7):
                acc += -s.Gst[q, i, b] * DP_P[q, p]
            C[p, i] = h * acc
    return _locate_levels(model, ws, opt, out, s.flow[b], s.y2, C, t, h, t_new, s.L[b], L_new,
                          s.y1, s.g1)


@nb.njit(**_JIT)
def rk45_worker(model, kern, use_kern, W0, opt, out, counter, stop):
    """Dormand-Prince 5(4) for the rows of W0 (K, n) into ``out`` (_integrate.FlowOutputs),
    ``LANES`` flows at a time (``opt.width`` when ``use_kern``), taking the next flow from
    ``counter`` (1,) int64 shared with the other workers; gradients through the generated
    kernel ``kern`` when ``use_kern``. ``stop`` (1,) int64: set ``stop[0]`` from another thread
    to interrupt. Run on several threads at once by lcnfast._threads.run_workers."""
    K, n = W0.shape
    # flows side by side: opt.width through the generated kernel (which takes any width), else
    # the generic lane kernels' LANES
    nl = opt.width if use_kern else LANES
    s = _rk_lanes(n, model.k_v, nl)
    lws = new_lane_workspace(model)
    ws = new_workspace(model)
    # the hot arrays, out of their tuples once (see above)
    # (k_v, nl): v of the last lane evaluation
    V_new = lws.P[model.k.shape[0]] if not use_kern else np.zeros((model.k_v, nl))
    flow, t, h, h_abs, rejected, L, L_new = s.flow, s.t, s.h, s.h_abs, s.rejected, s.L, s.L_new
    min_step, si = s.min_step, s.si
    t_end, max_steps, atol, rtol = opt.t_end, opt.max_steps, opt.atol, opt.rtol
    n_acc, n_rej, evals, gn_s = s.n_acc, s.n_rej, s.evals, s.gn
    Y, Y_new, Gst, V, Ytmp = s.Y, s.Y_new, s.Gst, s.V, s.Ytmp
    G = Gst[6]  # (n, nl) the gradients at the new points (stage 7)
    A, bvec, yy = model.A, model.b, model.yy
    M = s.M  # running maxima per lane, see _lane_maxima_from
    save_t, levels = opt.save_t, opt.levels
    T = save_t.shape[0]
    # flat views (n * nl,) of the lane arrays, see _rk_stage_point
    Gf = Gst.reshape((7, n * nl))
    Yf, Ynf, Ytf = Y.reshape(n * nl), Y_new.reshape(n * nl), Ytmp.reshape(n * nl)
    H = np.zeros(n * nl)  # h per lane, flat
    err2 = np.zeros(nl)
    P = np.zeros(nl)  # err^(-1/5) per lane
    accepted = np.zeros(nl, np.bool_)
    am = np.zeros(nl, np.int64)  # accepted, as a mask for _pick
    qm = np.zeros(nl, np.int64)  # quiet lanes (_rk_quiet_lanes), as a mask for _pick
    busy = np.zeros(nl, np.bool_)  # accepted steps past a save time or a new level
    t_new = np.zeros(nl)
    t_save = np.full(nl, math.inf)  # per lane: its next save time, inf if none
    lev_top = np.full(nl, -math.inf)  # per lane: the largest level its flow has not reached
    gn = np.zeros(nl)
    wn = np.zeros(nl)
    v1 = np.zeros(nl)
    nonfinite = np.zeros(nl)
    while True:
        if _atomic_load(stop, 0) != 0:  # interrupted: end the running flows where they are
            for b in range(nl):
                if flow[b] >= 0:
                    _rk_finish(out, s, b, INTERRUPTED)
            break
        n_active = 0
        for b in range(nl):
            while flow[b] < 0:  # refill an idle lane
                f = _fetch_add(counter, 0, 1)
                if f >= K:
                    break
                _rk_start(model, W0, opt, out, s, b, f, ws)
                t_save[b] = save_t[si[b]] if si[b] < T else math.inf
                lev_top[b] = _level_top(levels, out.t_below, f)
            if flow[b] < 0:
                h[b] = 0.0
                continue
            status, h[b], h_abs[b], min_step[b] = _rk_prepare(
                t[b], h_abs[b], min_step[b], rejected[b], n_acc[b] + n_rej[b], t_end, max_steps
            )
            if status >= 0:
                _rk_finish(out, s, b, status)  # sets h[b] = 0
            else:
                n_active += 1
        if n_active == 0:
            # every lane is idle or has just stopped: done once no flow is left to start
            if _fetch_add(counter, 0, 0) >= K:
                break
            continue
        if use_kern:
            _rk_stages_kern(kern, A, bvec, yy, h, Gst, Gf, Yf, H, Ytmp, Ytf, Y_new, Ynf, L_new,
                            V_new)
        else:
            _rk_stages(model, lws, h, Gst, Gf, Yf, H, Ytmp, Ytf, Y_new, Ynf, L_new)
        _rk_err_sumsq(Gf, Yf, Ynf, H, atol, rtol, err2)  # H: this step's, set by the stages
        if atol == 0.0:  # 0 / 0 from a component at rest
            for b in range(nl):
                if flow[b] >= 0 and h[b] > 0.0 and err2[b] != err2[b]:
                    err2[b] = _err_sumsq_at_rest(s, b, h[b], opt)
        _rk_decide_lanes(err2, n, flow, h, h_abs, rejected, accepted, P)
        _rk_step_counts(flow, h, accepted, t, t_save, L_new, lev_top, n_acc, n_rej, evals,
                        rejected, t_new, am, busy)
        for b in range(nl):  # what an accepted step passes on its way: saves, new levels
            if not busy[b]:
                continue
            if si[b] < T and save_t[si[b]] < t_new[b]:
                evals[b] += _rk_dense_saves(model, opt, out, s, b, h[b], t[b], t_new[b], ws)
                t_save[b] = save_t[si[b]] if si[b] < T else math.inf
            if levels.shape[0] > 0 and _levels_crossed(opt, out, flow[b], L_new[b]):
                evals[b] += _rk_levels(model, opt, out, s, b, h[b], t[b], t_new[b], L_new[b],
                                       ws)
                lev_top[b] = _level_top(levels, out.t_below, flow[b])
        _rk_accept_lanes(am, Y, Y_new, Gst, V, V_new, G, gn, wn, v1, nonfinite)
        _rk_quiet_lanes(accepted, gn, wn, L_new, nonfinite, t_new, t_save, opt.grad_tol, qm)
        _rk_quiet_update(qm, t, t_new, L, L_new, gn_s, gn, v1, wn, M)
        for b in range(nl):  # the other accepted lanes' new state: records, saves, stopping
            if not accepted[b] or qm[b] != 0:
                continue
            if L_new[b] - L[b] > M[2, b]:
                M[2, b] = L_new[b] - L[b]
            t[b] = t_new[b]
            L[b] = L_new[b]
            if not _plain_ok(gn[b]):  # rare: see _norm2
                gn[b] = _lane_norm2_scaled(G, b)
            gn_s[b] = gn[b]
            if si[b] < T and save_t[si[b]] <= t[b]:
                _rk_saves_at(opt, out, s, b)
                t_save[b] = save_t[si[b]] if si[b] < T else math.inf
            if not (math.isfinite(L[b]) and math.isfinite(gn[b]) and nonfinite[b] == 0.0):
                _rk_finish(out, s, b, NON_FINITE)
                continue
            if not _plain_ok(wn[b]):
                wn[b] = _lane_norm2_scaled(Y, b)
            if v1[b] > M[0, b]:
                M[0, b] = v1[b]
            if wn[b] > M[1, b]:
                M[1, b] = wn[b]
            if gn[b] <= opt.grad_tol:
                _rk_finish(out, s, b, CONVERGED)
