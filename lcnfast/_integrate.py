"""Numba kernels integrating many gradient flows ``dw/dt = -grad L(w)`` (eq. 1.7 / 3.1) at once.

Private module: inputs are validated by :mod:`lcnfast.flows`.

Two methods, each advancing every flow on its own (no lockstep):

- explicit Euler = gradient descent ``w <- w - h grad L(w)``;
- Dormand-Prince 5(4) with FSAL and a per-flow step size. Conventions follow scipy's
  ``RK45`` (the reference behaviour): RMS error norm of ``err / (atol + rtol max(|y|,|y_new|))``,
  step factor ``SAFETY * err^(-1/5)`` clipped to [MIN_FACTOR, MAX_FACTOR] and to <= 1 right
  after a rejection, Hairer's initial step (``scipy.integrate._ivp.common.select_initial_step``),
  and ``min_step = 10 ulp(t)``. Values at save times come from the 4th-order continuous
  extension of the accepted step (Shampine's dense output, as scipy), so saving never changes
  the steps; a save time equal to the end of a step takes the step's own state.

Layout and load balancing: ``prange`` runs one worker per thread. A worker advances
``LANES`` flows side by side (:mod:`lcnfast._lanes`): every Runge-Kutta stage or Euler step
evaluates the gradients of all its lanes in one SIMD pass, while each lane keeps its own time,
step size, accept/reject decisions and stopping rule. When a lane's flow stops, the lane takes
the next unstarted flow from a counter shared by all workers (an atomic fetch-and-add), so
uneven flows never leave a core idle. One-off evaluations of a single flow (its start, the
initial step, dense-output saves) use the one-flow kernel :func:`_kernels.loss_grad_ws`. Each
flow's arithmetic is the same whatever its lane, worker or batch, so results are bitwise
identical for any thread count and batch composition. Nothing is raised from parallel code:
every flow ends with a status code.

Interruption: every worker reads the caller's flag ``stop[0]`` once per pass over its lanes
(an atomic load: one instruction, which the compiler may not hoist out of the loop). Once it is
non-zero, each worker ends its running flows with status ``INTERRUPTED`` at their last accepted
state and returns; flows not started yet keep status -1 (the caller marks them).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._codegen import call_lane_kernel
from ._jit import JIT as _JIT
from ._kernels import _flag, loss_grad_ws, new_workspace
from ._lanes import LANES, loss_grad_lanes, new_lane_workspace


# ----------------------------------------------------------------------------- status codes
CONVERGED = 0  # ||grad L|| <= grad_tol on an accepted step
REACHED_END = 1  # t_end (rk45) or n_steps (Euler) reached
MAX_STEPS = 2  # rk45: max_steps attempted steps exhausted before t_end
STEP_UNDERFLOW = 3  # rk45: step size fell below 10 ulp(t)
NON_FINITE = 4  # the state, loss or gradient became NaN or Inf
INTERRUPTED = 5  # the caller's stop flag was set (SIGINT): the last accepted state
STATUS_MEANINGS = (
    "converged",
    "reached_end",
    "max_steps",
    "step_underflow",
    "non_finite",
    "interrupted",
)

# ----------------------------------------------------------------------------- Dormand-Prince
# Butcher tableau of Dormand & Prince (1980), RK5(4)7M; C, A, B: the 5th-order solution;
# E = B_hat - B_5 (with the FSAL stage) gives the 4th-order error estimate; P: Shampine's
# continuous extension, y(t + x h) = y + h sum_j K_j sum_q P[j, q] x^(q+1).
DP_C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0])
DP_A = np.array(
    [
        [0.0, 0.0, 0.0, 0.0, 0.0],
        [1 / 5, 0.0, 0.0, 0.0, 0.0],
        [3 / 40, 9 / 40, 0.0, 0.0, 0.0],
        [44 / 45, -56 / 15, 32 / 9, 0.0, 0.0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0.0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    ]
)
DP_B = np.array([35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84])
DP_E = np.array(
    [-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40]
)
DP_P = np.array(
    [
        [1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
        [0.0, 0.0, 0.0, 0.0],
        [0.0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
        [0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
        [0.0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
        [0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
        [0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
    ]
)
SAFETY = 0.9
MIN_FACTOR = 0.2  # largest decrease of h in one rejection
MAX_FACTOR = 10.0  # largest increase of h after an accepted step
ERROR_EXPONENT = -1.0 / 5.0  # -1 / (error estimator order + 1)


# ----------------------------------------------------------------------------- options, outputs
class RKOptions(NamedTuple):
    t_end: float
    rtol: float
    atol: float
    grad_tol: float  # < 0: never stop on the gradient
    max_steps: int  # attempted (accepted + rejected) steps per flow
    save_t: np.ndarray  # (T,) increasing save times in [0, t_end]
    levels: np.ndarray  # (Q,) loss levels whose first passage times are wanted (Q = 0: none)


class EulerOptions(NamedTuple):
    h: float
    n_steps: int
    grad_tol: float  # < 0: never stop on the gradient
    save_every: int  # save after every save_every steps (and at step 0)
    n_save: int  # number of saved rows (T)
    levels: np.ndarray  # (Q,) loss levels whose first passage times are wanted (Q = 0: none)


class FlowOutputs(NamedTuple):
    """Per-flow results, preallocated by the caller (K flows, n params, T save times)."""

    w_final: np.ndarray  # (K, n)
    v_final: np.ndarray  # (K, k_v)
    loss_init: np.ndarray  # (K,)
    loss_final: np.ndarray  # (K,)
    grad_norm_init: np.ndarray  # (K,)
    grad_norm_final: np.ndarray  # (K,)
    t_final: np.ndarray  # (K,)
    status: np.ndarray  # (K,) int8
    n_accepted: np.ndarray  # (K,) int64
    n_rejected: np.ndarray  # (K,) int64
    n_grad_evals: np.ndarray  # (K,) int64
    max_loss_increase: np.ndarray  # (K,) max over accepted steps of L(new) - L(old)
    v_l1_max: np.ndarray  # (K,) max over accepted states of ||v||_1
    w_norm_max: np.ndarray  # (K,) max over accepted states of ||w||_2
    save_w: np.ndarray  # (K, T, n), NaN where not reached
    save_loss: np.ndarray  # (K, T)
    save_grad_norm: np.ndarray  # (K, T)
    t_below: np.ndarray  # (K, Q) first time with L <= levels[q] (NaN: not reached)


# ----------------------------------------------------------------------------- helpers
@intrinsic
def _fetch_add(typingctx, arr, idx, val):
    """Atomically ``old = arr[idx]; arr[idx] += val; return old`` for an int64 array."""
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, signature, args):
        arr_v, idx_v, val_v = args
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, arr_v)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx_v])
        return builder.atomic_rmw("add", ptr, val_v, "seq_cst")

    return sig, codegen


@intrinsic
def _atomic_load(typingctx, arr, idx):
    """``arr[idx]`` of an int64 array as an atomic (monotonic) load: another thread's store is
    seen, and the load is never hoisted out of a loop."""
    sig = types.int64(arr, idx)

    def codegen(context, builder, signature, args):
        arr_v, idx_v = args
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, arr_v)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx_v])
        return builder.load_atomic(ptr, "monotonic", 8)

    return sig, codegen


# Norms: the sum of squares overflows for entries above ~1e154 (and loses everything below
# ~1e-154) although the norm itself is representable. Each norm is summed plainly first; only
# when that sum overflowed or is below 2^-900 (zero included), i.e. when its square root is
# not in [_NORM_MIN, inf), is it summed again scaled by the largest entry (two more passes).
# Otherwise the plain sum is accurate (no partial sum overflowed, and squares that underflowed
# are far below its rounding), and the norm has the bits it always had. A NaN is kept. In the
# integrators the plain norm is computed as before and checked at the call site, the scaled
# one is a function of its own (folding the check and the scaled passes into the norm made
# the Dormand-Prince steps of the square loss ~3% slower).
_NORM_MIN = 2.0**-450  # sqrt(2^-900), exact


@nb.njit(inline="always", **_JIT)
def _ulp_above(t):
    """np.nextafter(t, inf) - t for a finite t >= +0.0 (the time of a flow), from its bits:
    one integer add, where np.nextafter is a libm call (per lane and step: ~3% of rk45's
    time). The bits of DBL_MAX + 1 are those of inf, as nextafter's."""
    return np.int64(np.float64(t).view(np.int64) + 1).view(np.float64) - t


@nb.njit(inline="always", **_JIT)
def _plain_ok(nrm):
    """Whether ``nrm`` (the square root of a plain sum of squares) stands (see above)."""
    return (nrm >= _NORM_MIN and nrm < math.inf) or nrm != nrm


@nb.njit(**_JIT)
def _norm2(x):
    acc = 0.0
    for i in range(x.shape[0]):
        acc += x[i] * x[i]
    nrm = math.sqrt(acc)
    if _plain_ok(nrm):
        return nrm
    big = 0.0
    for i in range(x.shape[0]):
        big = max(big, abs(x[i]))
    if big == 0.0 or big == math.inf:
        return big
    acc = 0.0
    for i in range(x.shape[0]):
        r = x[i] / big
        acc += r * r
    return big * math.sqrt(acc)


@nb.njit(**_JIT)
def _l1(x):
    acc = 0.0
    for i in range(x.shape[0]):
        acc += abs(x[i])
    return acc


# ----------------------------------------------------------------------------- lane bookkeeping
@nb.njit(**_JIT)
def _lane_norm2_scaled(X, b):
    """||X[:, b]||_2 scaled by its largest entry (see _norm2)."""
    big = 0.0
    for i in range(X.shape[0]):
        big = max(big, abs(X[i, b]))
    if big == 0.0 or big == math.inf:
        return big
    acc = 0.0
    for i in range(X.shape[0]):
        r = X[i, b] / big
        acc += r * r
    return big * math.sqrt(acc)


@nb.njit(**_JIT)
def _record(out, f, v1, wn):
    """Update the running maxima of ||v||_1 and ||w||_2 with an accepted state."""
    if v1 > out.v_l1_max[f]:
        out.v_l1_max[f] = v1
    if wn > out.w_norm_max[f]:
        out.w_norm_max[f] = wn


# Running maxima of a flow in a lane: M[0, b] = max ||v||_1, M[1, b] = max ||w||_2 over its
# accepted states, M[2, b] = the largest loss increase of a step (-inf: none yet). They live in
# the worker's lane arrays while the flow runs and reach ``out`` when it finishes
# (_finish_lane): updating out[f] every step made the two threads write the same cache lines
# (flows handed out one at a time interleave between the workers), ~15% of two-thread
# gradient descent. The values are those of _record on out, comparison for comparison.
@nb.njit(**_JIT)
def _lane_maxima_from(out, f, M, b):
    """Start lane b's running maxima from flow f's values in ``out`` (after _start and the
    record of its initial state)."""
    M[0, b] = out.v_l1_max[f]
    M[1, b] = out.w_norm_max[f]
    M[2, b] = out.max_loss_increase[f]


@nb.njit(**_JIT)
def _start(out, f):
    out.v_l1_max[f] = 0.0
    out.w_norm_max[f] = 0.0
    out.max_loss_increase[f] = -math.inf


@nb.njit(**_JIT)
def _levels_at_start(opt, out, f, L):
    """t_below = 0 for the levels the starting loss is at or below."""
    for q in range(opt.levels.shape[0]):
        if L <= opt.levels[q]:
            out.t_below[f, q] = 0.0


@nb.njit(**_JIT)
def _levels_crossed(opt, out, f, L_new):
    """Whether an accepted state with loss L_new is at or below a level not reached before."""
    for q in range(opt.levels.shape[0]):
        if L_new <= opt.levels[q] and math.isnan(out.t_below[f, q]):
            return True
    return False


LEVEL_MAX_ITER = 60  # Illinois iterations per level crossing, at most


@nb.njit(**_JIT)
def _loss_on_step(model, ws, y0, C, x, ytmp, gtmp):
    """L at the continuous extension y0 + x (C_0 + x (C_1 + x (C_2 + x C_3))) of a step."""
    for i in range(y0.shape[0]):
        ytmp[i] = y0[i] + x * (C[0, i] + x * (C[1, i] + x * (C[2, i] + x * C[3, i])))
    return loss_grad_ws(model, ytmp, ws, gtmp)


@nb.njit(**_JIT)
def _locate_levels(model, ws, opt, out, f, y0, C, t, h, t_new, L_old, L_new, ytmp, gtmp):
    """First passage times of the levels crossed by an accepted step from (t, y0, L_old) to
    (t_new, L_new): for each level not reached before with L_new <= level < L_old, the root
    in (0, 1] of L(y(x)) - level on the step's continuous extension y(x) (polynomial
    coefficients C (4, n)), by the Illinois variant of regula falsi from the bracket
    [0, 1] (f(0) = L_old - level > 0 >= f(1) = L_new - level) until the bracket is below
    1e-13 (relative to the step), |f| is at the rounding of L (then that point is the root)
    or LEVEL_MAX_ITER iterations; else t_below = t + x h of the end of the bracket where
    L <= level (t_new if x = 1).
    Returns the number of loss evaluations."""
    evals = 0
    rnd = 8.0 * 2.220446049250313e-16 * max(abs(L_old), abs(L_new))
    for q in range(opt.levels.shape[0]):
        lev = opt.levels[q]
        if not (L_new <= lev and math.isnan(out.t_below[f, q])):
            continue
        a = 0.0
        fa = L_old - lev
        b = 1.0
        fb = L_new - lev
        side = 0
        for _it in range(LEVEL_MAX_ITER):
            if fb == 0.0 or b - a <= 1e-13 or not fa > 0.0:
                break
            x = (a * fb - b * fa) / (fb - fa)
            if not (a < x < b):
                x = 0.5 * (a + b)
            fx = _loss_on_step(model, ws, y0, C, x, ytmp, gtmp) - lev
            evals += 1
            if not fx > 0.0:  # at or below the level (or NaN: treat as reached)
                b = x
                fb = fx
                if side == -1:
                    fa *= 0.5
                side = -1
            else:
                a = x
                fa = fx
                if side == 1:
                    fb *= 0.5
                side = 1
            if abs(fx) <= rnd:  # at the level to the rounding of L: the root
                b = x
                break
        out.t_below[f, q] = t_new if b == 1.0 else t + b * h
    return evals


@nb.njit(**_JIT)
def _finish_lane(out, f, Y, V, M, b, L, gn, t, status, n_acc, n_rej, evals):
    """Write lane b's flow f: its state, filter, running maxima M[:, b] (see _lane_maxima)
    and counts."""
    out.v_l1_max[f] = M[0, b]
    out.w_norm_max[f] = M[1, b]
    out.max_loss_increase[f] = M[2, b]
    for i in range(Y.shape[0]):
        out.w_final[f, i] = Y[i, b]
    for i in range(V.shape[0]):
        out.v_final[f, i] = V[i, b]
    out.loss_final[f] = L
    out.grad_norm_final[f] = gn
    out.t_final[f] = t
    out.status[f] = status
    out.n_accepted[f] = n_acc
    out.n_rejected[f] = n_rej
    out.n_grad_evals[f] = evals


@nb.njit(**_JIT)
def _park(Y, b):
    """Give an idle lane a harmless state (zeros) so it computes nothing non-finite."""
    for i in range(Y.shape[0]):
        Y[i, b] = 0.0


# ----------------------------------------------------------------------------- Euler
@nb.njit(**_JIT)
def _lane_norms(G, V, Y, gn, v1, wn):
    """Per lane: ||G||_2, ||V||_1, ||Y||_2 (sums in index order, SIMD over lanes; the caller
    checks the 2-norms of its running lanes with :func:`_plain_ok`)."""
    # The lane loops of this and the other lane helpers run to the arrays' lane count, not to
    # the constant LANES: with a constant trip count of 16 LLVM unrolls a loop completely
    # before its loop vectoriser sees it, and Numba leaves the SLP vectoriser off, so every
    # lane went scalar (this function: 32 scalar square roots, 152 ns per call; 68 ns with
    # the run-time count, vectorised, bitwise the same). Measured on gradient descent, which
    # runs this and the step below every step: 4.0-4.3e7 -> 5.2-5.3e7 evaluations/s on one
    # thread. The Dormand-Prince stage combinations go further: see _rk_stage_point.
    nl = Y.shape[1]  # = LANES
    for b in range(nl):
        gn[b] = 0.0
        v1[b] = 0.0
        wn[b] = 0.0
    for i in range(G.shape[0]):
        for b in range(nl):
            gn[b] += G[i, b] * G[i, b]
            wn[b] += Y[i, b] * Y[i, b]
    for i in range(V.shape[0]):
        for b in range(nl):
            v1[b] += abs(V[i, b])
    for b in range(nl):
        gn[b] = math.sqrt(gn[b])
        wn[b] = math.sqrt(wn[b])


@nb.njit(**_JIT)
def _euler_worker(model, kern, use_kern, W0, opt, out, counter, stop):
    K, n = W0.shape
    N = model.k.shape[0]
    lws = new_lane_workspace(model)
    V = lws.P[N]  # (k_v, LANES) final filters of the last evaluation
    Y = np.zeros((n, LANES))
    G = np.zeros((n, LANES))
    L = np.zeros(LANES)
    L_prev = np.zeros(LANES)
    gn = np.zeros(LANES)
    v1 = np.zeros(LANES)
    wn = np.zeros(LANES)
    flow = np.full(LANES, -1, np.int64)
    step = np.zeros(LANES, np.int64)
    next_save = np.zeros(LANES, np.int64)  # step of the lane's next save (no modulo per step)
    h = opt.h
    # the hot arrays, out of their tuples once (see "The hot path" below)
    A = model.A
    bvec = model.b
    yy = model.yy
    M = np.zeros((3, LANES))  # running maxima per lane, see _lane_maxima
    levels = opt.levels
    nl = Y.shape[1]  # = LANES, for the step's loop: read at run time, see _lane_norms
    while True:
        n_active = 0
        for b in range(LANES):
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
        for b in range(LANES):
            f = flow[b]
            if f < 0:
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
        if _atomic_load(stop, 0) != 0:  # interrupted: end the running flows at their state
            for b in range(LANES):
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


@nb.njit(parallel=True, **_JIT)
def euler_batch(model, kern, use_kern, W0, opt, out, n_workers, stop):
    """Gradient descent ``w <- w - h grad L(w)`` for every row of W0 (K, n) into ``out``;
    ``stop`` (1,) int64: set ``stop[0]`` from another thread to interrupt."""
    counter = np.zeros(1, np.int64)
    for _wk in nb.prange(n_workers):
        _euler_worker(model, kern, use_kern, W0, opt, out, counter, stop)


# ----------------------------------------------------------------------------- Dormand-Prince
@nb.njit(inline="always", **_JIT)
def _over(a, sc):
    """``a / sc`` for the error norms, with 0 / 0 = 0: with atol = 0 a component that is zero
    and stays zero has no error to measure (a constant solution is not a step underflow)."""
    return 0.0 if a == 0.0 else a / sc


@nb.njit(**_JIT)
def _initial_step(model, y0, f0, t_end, opt, ws, y1, g1):
    """Hairer's initial step (scipy's select_initial_step, order 4); one gradient evaluation.
    Where the step would be 0 (atol = 0 and a zero component that moves: an infinite
    relative derivative) it starts from 1e-6 and leaves the rest to the error control."""
    n = y0.shape[0]
    d0 = 0.0
    d1 = 0.0
    for i in range(n):
        sc = opt.atol + abs(y0[i]) * opt.rtol
        d0 += _over(y0[i], sc) ** 2
        d1 += _over(f0[i], sc) ** 2
    d0 = math.sqrt(d0 / n)
    d1 = math.sqrt(d1 / n)
    if d0 < 1e-5 or d1 < 1e-5:
        h0 = 1e-6
    else:
        h0 = 0.01 * d0 / d1
        if not h0 > 0.0:
            h0 = 1e-6
    h0 = min(h0, t_end)
    for i in range(n):
        y1[i] = y0[i] + h0 * f0[i]
    loss_grad_ws(model, y1, ws, g1)
    d2 = 0.0
    for i in range(n):
        sc = opt.atol + abs(y0[i]) * opt.rtol
        d2 += _over(-g1[i] - f0[i], sc) ** 2
    d2 = math.sqrt(d2 / n) / h0
    if not math.isfinite(d2):
        return h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / 5.0)
        if not h1 > 0.0:
            return h0
    return min(100.0 * h0, h1, t_end)


class _RKLanes(NamedTuple):
    """Per-worker state of LANES Dormand-Prince flows (lane index last)."""

    flow: np.ndarray  # (LANES,) flow index, -1 idle
    t: np.ndarray  # (LANES,) current time
    h_abs: np.ndarray  # (LANES,) proposed step size
    h: np.ndarray  # (LANES,) step size of the current attempt (0 for idle lanes)
    min_step: np.ndarray  # (LANES,)
    rejected: np.ndarray  # (LANES,) bool: the current step had a rejection
    n_acc: np.ndarray  # (LANES,) int64
    n_rej: np.ndarray  # (LANES,) int64
    evals: np.ndarray  # (LANES,) int64
    si: np.ndarray  # (LANES,) int64 next save index
    L: np.ndarray  # (LANES,) loss at y
    gn: np.ndarray  # (LANES,) ||grad L|| at y
    L_new: np.ndarray  # (LANES,)
    Y: np.ndarray  # (n, LANES) state
    Y_new: np.ndarray  # (n, LANES)
    Ytmp: np.ndarray  # (n, LANES) stage points / error estimate
    Kst: np.ndarray  # (7, n, LANES) stages, Kst[0] = f(y) (FSAL)
    G: np.ndarray  # (n, LANES) gradients from the lane kernel
    V: np.ndarray  # (k_v, LANES) final filter at y
    M: np.ndarray  # (3, LANES) running maxima (_lane_maxima)
    y1: np.ndarray  # (n,) one-flow scratch
    y2: np.ndarray  # (n,)
    g1: np.ndarray  # (n,)


@nb.njit(**_JIT)
def _rk_lanes(n, kv):
    z = np.zeros(LANES)
    zi = np.zeros(LANES, np.int64)
    return _RKLanes(
        np.full(LANES, -1, np.int64),
        z.copy(),
        z.copy(),
        z.copy(),
        z.copy(),
        np.zeros(LANES, np.bool_),
        zi.copy(),
        zi.copy(),
        zi.copy(),
        zi.copy(),
        z.copy(),
        z.copy(),
        z.copy(),
        np.zeros((n, LANES)),
        np.zeros((n, LANES)),
        np.zeros((n, LANES)),
        np.zeros((7, n, LANES)),
        np.zeros((n, LANES)),
        np.zeros((kv, LANES)),
        np.zeros((3, LANES)),
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
        _park(s.Kst[q], b)


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
        s.Kst[0, i, b] = -s.g1[i]
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


# The stage combinations and the error norm work on flat views of the (n, LANES) lane arrays
# (index j = i * LANES + b; the worker makes the views once) with the step sizes broadcast to
# the same layout (H, once per step): each is one loop over n * LANES elements that LLVM
# vectorises, the stage sums held in registers. For that the number of stages must be a
# compile-time constant, so the six stages are written out (_rk_stages, _rk_stages_kern) and
# _rk_stage_point is inlined with a literal stage. The earlier form (a loop over stages, lanes
# innermost with the constant trip count LANES) was unrolled to scalar code: rk45 ran 1.28x
# slower (1024 flows of the square-loss benchmark problem, one thread). Per lane and element the
# sums run over the stages in order, exactly as for one flow: bitwise the same results.


@nb.njit(inline="always", **_JIT)
def _rk_step_sizes(h, H):
    """H[i * LANES + b] = h[b] (the step size of lane b in the flat layout)."""
    nl = h.shape[0]
    for i in range(H.shape[0] // nl):
        for b in range(nl):
            H[i * nl + b] = h[b]


@nb.njit(inline="always", **_JIT)
def _rk_stage_point(Kf, Yf, H, st, dst):
    """The points y + h sum_q a_{st,q} K_q of Dormand-Prince stage st (1..6; 6: the new
    points, with the weights DP_B) in every lane into the flat dst (n * LANES,); Kf the flat
    stages (7, n * LANES). st must be a literal for the stage sum to be unrolled."""
    coef = DP_A[st] if st < 6 else DP_B
    for j in range(Yf.shape[0]):
        a = 0.0
        for q in range(st):
            a += coef[q] * Kf[q, j]
        dst[j] = Yf[j] + H[j] * a


@nb.njit(inline="always", **_JIT)
def _rk_stage_slope(Kst, st, G):
    nl = G.shape[1]  # = LANES, read at run time (see _lane_norms)
    for i in range(G.shape[0]):
        for b in range(nl):
            Kst[st, i, b] = -G[i, b]


@nb.njit(inline="always", **_JIT)
def _rk_stage(model, lws, Kst, Kf, Yf, H, st, dst, dstf, G, L_new):
    """One stage through the generic lane kernels: its points into dst (dstf: the flat view),
    their gradients into Kst[st] (losses into L_new and filters into lws.P[N] at st = 6)."""
    _rk_stage_point(Kf, Yf, H, st, dstf)
    loss_grad_lanes(model, dst, lws, G, L_new, st == 6)
    _rk_stage_slope(Kst, st, G)


@nb.njit(**_JIT)
def _rk_stages(model, lws, h, Kst, Kf, Yf, H, acc, accf, Y_new, Ynf, G, L_new):
    """Stages 2..7 of one Dormand-Prince step in every lane (step size h[b], broadcast into H)
    through the generic lane kernels: the new points in Y_new, their losses in L_new (stage 7,
    FSAL; stages 2..6 need no loss values), their filters in lws.P[N]. acc: scratch."""
    _rk_step_sizes(h, H)
    _rk_stage(model, lws, Kst, Kf, Yf, H, 1, acc, accf, G, L_new)
    _rk_stage(model, lws, Kst, Kf, Yf, H, 2, acc, accf, G, L_new)
    _rk_stage(model, lws, Kst, Kf, Yf, H, 3, acc, accf, G, L_new)
    _rk_stage(model, lws, Kst, Kf, Yf, H, 4, acc, accf, G, L_new)
    _rk_stage(model, lws, Kst, Kf, Yf, H, 5, acc, accf, G, L_new)
    _rk_stage(model, lws, Kst, Kf, Yf, H, 6, Y_new, Ynf, G, L_new)


@nb.njit(inline="always", **_JIT)
def _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, st, dst, dstf, G, L_new, V):
    """:func:`_rk_stage` through the generated kernel."""
    _rk_stage_point(Kf, Yf, H, st, dstf)
    call_lane_kernel(kern, dst, A, bvec, yy, G, L_new, V)
    _rk_stage_slope(Kst, st, G)


@nb.njit(**_JIT)
def _rk_stages_kern(kern, A, bvec, yy, h, Kst, Kf, Yf, H, acc, accf, Y_new, Ynf, G, L_new, V):
    """:func:`_rk_stages` through the generated kernel at address ``kern`` (its Gram data A,
    bvec, yy; the new points' filters into V). It makes no call that can return an error, so
    Numba's pruning removes the reference counting of its arrays (see lcnfast._one_flow,
    before grad_kern)."""
    _rk_step_sizes(h, H)
    _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, 1, acc, accf, G, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, 2, acc, accf, G, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, 3, acc, accf, G, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, 4, acc, accf, G, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, 5, acc, accf, G, L_new, V)
    _rk_stage_kern(kern, A, bvec, yy, Kst, Kf, Yf, H, 6, Y_new, Ynf, G, L_new, V)


@nb.njit(**_JIT)
def _rk_err_sumsq(Kf, Yf, Ynf, H, atol, rtol, R, out):
    """Per lane the error norm's sum of squares sum_i (e_i / sc_i)^2 of the attempted step,
    e = h sum_q E_q K_q, sc = atol + rtol max(|y|, |y_new|) (scipy's RK45), into out (LANES,);
    flat views as in _rk_stage_point, R (n * LANES,) scratch for the terms. Each lane's sum in
    the order of one flow."""
    for j in range(Yf.shape[0]):
        e = 0.0
        for q in range(7):
            e += DP_E[q] * Kf[q, j]
        e *= H[j]
        sc = atol + rtol * max(abs(Yf[j]), abs(Ynf[j]))
        R[j] = (e / sc) ** 2
    nl = out.shape[0]
    for b in range(nl):
        out[b] = 0.0
    for i in range(Yf.shape[0] // nl):
        for b in range(nl):
            out[b] += R[i * nl + b]


@nb.njit(**_JIT)
def _rk_decide_lanes(err2, n, flow, h, h_abs, rejected, accepted, P):
    """Accept or reject the attempted step of every running lane (flow >= 0, h > 0) from its
    error norm err = sqrt(err2 / n) as scipy's RK45 does, and its next proposed step size into
    h_abs; accepted (LANES,) bool out, False for the other lanes. P (LANES,): scratch for
    err^(-1/5). A NaN sum with atol = 0 must have been replaced by the caller (see
    _err_sumsq_at_rest). The decisions and step sizes are selected across the lanes at once
    (SIMD); only the powers are taken lane by lane (libm's pow, which has no vector form
    here; an own vector pow would change the step sizes in their last bits). The same
    numbers as the earlier function called lane by lane, which cost rk45 6% more time (1024
    flows, one thread)."""
    nl = err2.shape[0]
    for b in range(nl):
        P[b] = math.sqrt(err2[b] / n) ** ERROR_EXPONENT
    for b in range(nl):
        err = math.sqrt(err2[b] / n)
        ok = err < 1.0
        # rejected: shrink, at most by MIN_FACTOR (NaN/Inf in a stage: by MIN_FACTOR)
        f_rej = max(MIN_FACTOR, SAFETY * P[b]) if abs(err) < math.inf else MIN_FACTOR
        f_acc = MAX_FACTOR if err == 0.0 else min(MAX_FACTOR, SAFETY * P[b])
        if rejected[b]:  # no growth right after a rejection
            f_acc = min(1.0, f_acc)
        running = flow[b] >= 0 and h[b] > 0.0
        if running:
            h_abs[b] = h_abs[b] * (f_acc if ok else f_rej)
        accepted[b] = running and ok


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
                acc += s.Kst[q, i, b] * (
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
def _rk_accept_lanes(accepted, Y, Y_new, Kst, V, V_new, G, gn, wn, v1, nonfinite):
    """Move the accepted lanes to their new state (Y, the FSAL stage, the filter V) and take
    per lane ||grad L||_2 (from G), ||w||_2, ||v||_1 and a finiteness test of w (0.0 if
    finite, else NaN) of the new state: SIMD over lanes, each lane's sums in index order."""
    n = Y.shape[0]
    for b in range(LANES):
        gn[b] = 0.0
        wn[b] = 0.0
        v1[b] = 0.0
        nonfinite[b] = 0.0
    for i in range(n):
        for b in range(LANES):
            if accepted[b]:
                Y[i, b] = Y_new[i, b]
                Kst[0, i, b] = Kst[6, i, b]
            gn[b] += G[i, b] * G[i, b]
            wn[b] += Y[i, b] * Y[i, b]
            nonfinite[b] += Y[i, b] * 0.0
    for i in range(V.shape[0]):
        for b in range(LANES):
            if accepted[b]:
                V[i, b] = V_new[i, b]
            v1[b] += abs(V[i, b])
    for b in range(LANES):
        gn[b] = math.sqrt(gn[b])
        wn[b] = math.sqrt(wn[b])


@nb.njit(**_JIT)
def _err_sumsq_at_rest(s, b, h, opt):
    """The error norm's sum of squares of lane b's attempted step with 0 / 0 = 0 (atol = 0)."""
    acc2 = 0.0
    for i in range(s.Y.shape[0]):
        e = 0.0
        for q in range(7):
            e += DP_E[q] * s.Kst[q, i, b]
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
                acc += s.Kst[q, i, b] * DP_P[q, p]
            C[p, i] = h * acc
    return _locate_levels(model, ws, opt, out, s.flow[b], s.y2, C, t, h, t_new, s.L[b], L_new,
                          s.y1, s.g1)


@nb.njit(**_JIT)
def _rk45_worker(model, kern, use_kern, W0, opt, out, counter, stop):
    K, n = W0.shape
    s = _rk_lanes(n, model.k_v)
    lws = new_lane_workspace(model)
    ws = new_workspace(model)
    # the hot arrays, out of their tuples once (see above)
    V_new = lws.P[model.k.shape[0]]  # (k_v, LANES): v of the last lane evaluation
    flow, t, h, h_abs, rejected, L, L_new = s.flow, s.t, s.h, s.h_abs, s.rejected, s.L, s.L_new
    min_step, si = s.min_step, s.si
    t_end, max_steps, atol, rtol = opt.t_end, opt.max_steps, opt.atol, opt.rtol
    n_acc, n_rej, evals, gn_s = s.n_acc, s.n_rej, s.evals, s.gn
    Y, Y_new, Kst, G, V, Ytmp = s.Y, s.Y_new, s.Kst, s.G, s.V, s.Ytmp
    A, bvec, yy = model.A, model.b, model.yy
    M = s.M  # running maxima per lane, see _lane_maxima
    save_t, levels = opt.save_t, opt.levels
    T = save_t.shape[0]
    # flat views (n * LANES,) of the lane arrays, see _rk_stage_point
    Kf = Kst.reshape((7, n * LANES))
    Yf, Ynf, Ytf = Y.reshape(n * LANES), Y_new.reshape(n * LANES), Ytmp.reshape(n * LANES)
    H = np.zeros(n * LANES)  # h per lane, flat
    R = np.zeros(n * LANES)
    err2 = np.zeros(LANES)
    P = np.zeros(LANES)  # err^(-1/5) per lane
    accepted = np.zeros(LANES, np.bool_)
    gn = np.zeros(LANES)
    wn = np.zeros(LANES)
    v1 = np.zeros(LANES)
    nonfinite = np.zeros(LANES)
    while True:
        if _atomic_load(stop, 0) != 0:  # interrupted: end the running flows where they are
            for b in range(LANES):
                if flow[b] >= 0:
                    _rk_finish(out, s, b, INTERRUPTED)
            break
        n_active = 0
        for b in range(LANES):
            while flow[b] < 0:  # refill an idle lane
                f = _fetch_add(counter, 0, 1)
                if f >= K:
                    break
                _rk_start(model, W0, opt, out, s, b, f, ws)
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
            _rk_stages_kern(kern, A, bvec, yy, h, Kst, Kf, Yf, H, Ytmp, Ytf, Y_new, Ynf, G,
                            L_new, V_new)
        else:
            _rk_stages(model, lws, h, Kst, Kf, Yf, H, Ytmp, Ytf, Y_new, Ynf, G, L_new)
        _rk_err_sumsq(Kf, Yf, Ynf, H, atol, rtol, R, err2)
        if atol == 0.0:  # 0 / 0 from a component at rest
            for b in range(LANES):
                if flow[b] >= 0 and h[b] > 0.0 and err2[b] != err2[b]:
                    err2[b] = _err_sumsq_at_rest(s, b, h[b], opt)
        _rk_decide_lanes(err2, n, flow, h, h_abs, rejected, accepted, P)
        for b in range(LANES):  # what an accepted step passes on its way
            if flow[b] < 0 or not h[b] > 0.0:
                continue
            evals[b] += 6
            rejected[b] = not accepted[b]
            if not accepted[b]:
                n_rej[b] += 1
                continue
            n_acc[b] += 1
            t_new = t[b] + h[b]
            if si[b] < T and save_t[si[b]] < t_new:
                evals[b] += _rk_dense_saves(model, opt, out, s, b, h[b], t[b], t_new, ws)
            if levels.shape[0] > 0 and _levels_crossed(opt, out, flow[b], L_new[b]):
                evals[b] += _rk_levels(model, opt, out, s, b, h[b], t[b], t_new, L_new[b], ws)
        _rk_accept_lanes(accepted, Y, Y_new, Kst, V, V_new, G, gn, wn, v1, nonfinite)
        for b in range(LANES):  # the accepted lanes' new state: records, saves, stopping
            if not accepted[b]:
                continue
            f = flow[b]
            if L_new[b] - L[b] > M[2, b]:
                M[2, b] = L_new[b] - L[b]
            t[b] += h[b]
            L[b] = L_new[b]
            if not _plain_ok(gn[b]):  # rare: see _norm2
                gn[b] = _lane_norm2_scaled(G, b)
            gn_s[b] = gn[b]
            if si[b] < T and save_t[si[b]] <= t[b]:
                _rk_saves_at(opt, out, s, b)
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



@nb.njit(parallel=True, **_JIT)
def rk45_batch(model, kern, use_kern, W0, opt, out, n_workers, stop):
    """Dormand-Prince 5(4) for every row of W0 (K, n) into ``out``; ``stop`` (1,) int64: set
    ``stop[0]`` from another thread to interrupt."""
    counter = np.zeros(1, np.int64)
    for _wk in nb.prange(n_workers):
        _rk45_worker(model, kern, use_kern, W0, opt, out, counter, stop)
