"""What the lane integrators of ``dw/dt = -grad L(w)`` (eq. 1.7 / 3.1) share: status codes, the
Dormand-Prince tableau and step-size controller, options and outputs, norms, records, loss-level
crossings, and Hairer's initial step. The methods: :mod:`lcnfast._euler` (gradient descent),
:mod:`lcnfast._rk45` (Dormand-Prince 5(4)) and :mod:`lcnfast._rosenbrock` (stiff, automatic).

Private module: inputs are validated by :mod:`lcnfast.flows`.

Layout and load balancing: one worker kernel runs per thread
(:func:`lcnfast._threads.run_workers`: Python threads entering the ``nogil`` kernel, which
compiles in far less time than a ``prange`` wrapper would). A worker advances ``LANES`` flows
side by side (:mod:`lcnfast._lanes`), or ``opt.width`` through the generated kernel
(:func:`lcnfast._lane_width.flow_width`): every Runge-Kutta stage or Euler step evaluates the
gradients of all its lanes in one SIMD pass, while each lane keeps its own time, step size,
accept/reject decisions and stopping rule. When a lane's flow stops, the lane takes the next
unstarted flow from a counter shared by all workers (an atomic fetch-and-add), so uneven flows
never leave a core idle. One-off evaluations of a single flow (its start, the initial step,
dense-output saves) use the one-flow kernel :func:`_kernels.loss_grad_ws`. Each flow's
arithmetic is the same whatever its lane, worker or batch, so results are bitwise identical for
any thread count and batch composition. Nothing is raised from the workers: every flow ends
with a status code.

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

from ._jit import JIT as _JIT
from ._kernels import loss_grad_ws


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
    width: int  # flows side by side per worker with the generated kernel (_lane_width.flow_width)


class EulerOptions(NamedTuple):
    h: float
    n_steps: int
    grad_tol: float  # < 0: never stop on the gradient
    save_every: int  # save after every save_every steps (and at step 0)
    n_save: int  # number of saved rows (T)
    levels: np.ndarray  # (Q,) loss levels whose first passage times are wanted (Q = 0: none)
    width: int  # flows side by side per worker with the generated kernel (_lane_width.flow_width)


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


# The step-size factor SAFETY err^(-1/5) of every Dormand-Prince lane and step. libm's pow
# (scipy: error_norm ** (-1/5)) has no vector form here and cost ~11-15 ns per lane and step,
# 11-13% of an rk45 step of the square-loss benchmark problem (one thread, a 2-core AMD EPYC
# Zen 5, 2026-12-08). _inv_fifth_root takes the root in arithmetic that LLVM vectorises.
# Outside [_ROOT_LO, _ROOT_HI] the factor is clipped whatever the root: below, SAFETY
# _ROOT_LO^(-1/5) = 226 > MAX_FACTOR; above, SAFETY _ROOT_HI^(-1/5) = 0.0036 < MIN_FACTOR.
_ROOT_LO = 1e-12
_ROOT_HI = 1e12
# the bits of x^(-1/5) are about (6/5) 1023 2^52 - bits(x) / 5 (the bits as a piecewise-linear
# log2); the offset centres the first guess's error (at most 4.1% over the range)
_ROOT_GUESS = 1.2 * 1023 * 2.0**52 - 0.045 * 2.0**52


@nb.njit(inline="always", **_JIT)
def _inv_fifth_root(x):
    """x^(-1/5) for x in [_ROOT_LO, _ROOT_HI] (NaN and values outside are clamped into it:
    the caller's factor does not depend on the root there), within 1 ulp of the exact root
    (tests/test_flows.py, against mpmath). libm's pow(x, -0.2) is within 3 ulp of it (its
    exponent, -0.2 in binary, is not -1/5): the two agree in ~46% of cases, and step sizes
    then differ in their last bits. The first guess from the bits (relative error at most
    4.1e-2, periodic in log2 x with period 5), four Newton steps y <- y (6/5 - x y^5 / 5)
    (quadratic convergence: at most 5.4e-3, 8.5e-5, 2.2e-8, 2.1e-15 over a dense grid of the
    range), then a last one as a correction y + y (1 - x y^5) / 5, which rounds once more on
    y only."""
    x = x if x > _ROOT_LO else _ROOT_LO  # NaN too
    x = x if x < _ROOT_HI else _ROOT_HI
    y = np.int64(_ROOT_GUESS - 0.2 * np.float64(np.float64(x).view(np.int64))).view(np.float64)
    for _ in range(4):
        y2 = y * y
        y = y * (1.2 - 0.2 * (x * (y2 * y2 * y)))
    y2 = y * y
    return y + y * (0.2 * (1.0 - x * (y2 * y2 * y)))


@nb.njit(inline="always", **_JIT)
def _pick(mask, a, b):
    """a where the int64 ``mask`` has all bits set (-1), b where it is 0: a select by the bits.

    The integrators' updates of some lanes out of a group are written with it, the mask taken
    from an array (a previous pass). Written as ``x[b] = a if cond else x[b]``, LLVM vectorises
    such an update into masked stores (``vmaskmovpd``), which AMD Zen executes slowly: a
    select over 288 float64 ran at ~0.5 ns per element against ~0.17 for this (Zen 3). LLVM
    folds the bit form back into a select when it can prove the mask a sign-extended
    comparison, hence the mask from memory. Exact: the result has the bits of a or of b."""
    ai = np.float64(a).view(np.int64)
    bi = np.float64(b).view(np.int64)
    return np.int64((ai & mask) | (bi & ~mask)).view(np.float64)


@nb.njit(inline="always", **_JIT)
def _pick_maxima(q, M, b, d, v1, wn):
    """Lane b's running maxima (see _lane_maxima_from) of the loss increase d, ||v||_1 v1 and
    ||w||_2 wn where the mask q is -1 (a quiet lane), each kept unless exceeded, by the bits
    (_pick); where q is 0, unchanged."""
    M[2, b] = _pick(q & -np.int64(d > M[2, b]), d, M[2, b])
    M[0, b] = _pick(q & -np.int64(v1 > M[0, b]), v1, M[0, b])
    M[1, b] = _pick(q & -np.int64(wn > M[1, b]), wn, M[1, b])


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
def _lane_norms(G, V, Y, gn, v1, wn):
    """Per lane (lanes: the arrays' last axis): ||G||_2, ||V||_1, ||Y||_2, sums in index order,
    SIMD over the lanes; the new state's norms in gradient descent (Dormand-Prince takes them
    in the passes that move its accepted lanes: lcnfast._rk45._rk_accept_lanes). The caller
    checks the 2-norms of its running lanes with :func:`_plain_ok`."""
    # The lane loops of this and the other lane helpers run to the arrays' lane count, not to
    # the constant LANES: with a constant trip count of 16 LLVM unrolls a loop completely
    # before its loop vectoriser sees it, and Numba leaves the SLP vectoriser off, so every
    # lane went scalar (this function: 32 scalar square roots, 152 ns per call; 68 ns with
    # the run-time count, vectorised, bitwise the same). Measured on gradient descent, which
    # runs this and the step below every step: 4.0-4.3e7 -> 5.2-5.3e7 evaluations/s on one
    # thread (lcnfast._euler). The Dormand-Prince stage combinations go further: see
    # lcnfast._rk45._rk_stage_point.
    nl = Y.shape[1]  # the lane count
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
    record of its initial state). M (3, nl), one column per lane: M[0] max ||v||_1, M[1] max
    ||w||_2, M[2] the largest loss increase of a step; written back by _finish_lane."""
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


@nb.njit(**_JIT)
def _level_top(levels, t_below, f):
    """The largest of ``levels`` flow f has not reached yet (t_below NaN), -inf if none: an
    accepted loss L_new crosses a new level exactly when L_new <= this (see _levels_crossed)."""
    top = -math.inf
    for q in range(levels.shape[0]):
        if math.isnan(t_below[f, q]) and levels[q] > top:
            top = levels[q]
    return top


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
    """Write lane b's flow f: its state, filter, running maxima M[:, b] (see _lane_maxima_from)
    and counts."""
    out.v_l1_max[f] = M[0, b]
    out.w_norm_max[f] = M[1, b]
    out.max_loss_increase[f] = M[2, b]
    for i in range(Y.shape[0]):
        out.w_final[f, i] = Y[i, b]
    for i in range(V.shape[0]):
        out.v_final[f, i] = V[i, b]
    finish_counts(out, f, L, gn, t, status, n_acc, n_rej, evals)


@nb.njit(**_JIT)
def finish_counts(out, f, L, gn, t, status, n_acc, n_rej, evals):
    """Write flow f's final loss, gradient norm, time, status and counts (the integrators'
    common end of a flow; its state and filter are written by the caller)."""
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


# ----------------------------------------------------------------------------- initial step
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


@nb.njit(parallel=True, **_JIT)
def parallel_probe(n):
    """sum(range(n)) in a parallel region: running it makes Numba load its threading layer,
    so that ``numba.threading_layer()`` can say which (``lcnfast info``)."""
    s = 0
    for i in nb.prange(n):
        s += i
    return s
