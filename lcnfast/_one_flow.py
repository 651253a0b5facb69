"""One flow at a time: its gradient through either kernel, one Dormand-Prince 5(4) step, and
Hairer's stiffness detection.

Private module: the stage gradients of the Rosenbrock method and the non-stiff phase of
``gradient_flow(method="auto")``, run flow by flow by the driver of
:mod:`lcnfast._rosenbrock` (the batched rk45 engine is :mod:`lcnfast._rk45`, the tableau
:mod:`lcnfast._integrate`'s; the arithmetic per stage is the same, one flow instead of
lanes).

Stiffness detection (Hairer & Wanner, *Solving ODEs I*, II.10 and ``dopri5.f``): after an
accepted step, ``h lambda ~ h ||f(y_7) - f(y_6)|| / ||y_7 - y_6||`` estimates h times the
dominant eigenvalue of the Jacobian from the last two stages, whose points differ by O(h).
Dormand-Prince is stable for h lambda up to ~3.3 on the negative axis: an estimate above
``STIFF_HLAMB`` = 3.25 on ``STIFF_COUNT`` = 15 accepted steps (reset after 6 steps below it)
means the step is held by stability, not accuracy: the flow is stiff. The way back (RODAS to
Dormand-Prince, ``NONSTIFF_HNORM``, ``NONSTIFF_COUNT``, :func:`inf_norm` of the exact
Hessian) is described in :mod:`lcnfast._rosenbrock`.
"""

from __future__ import annotations

import math

import numba as nb

from ._codegen import call_lane_kernel
from ._integrate import DP_A, DP_B, DP_E, DP_P, _over
from ._jit import JIT as _JIT
from ._kernels import _fs_loss_grad_buf, backward_filter, forward_filter

STIFF_HLAMB = 3.25
STIFF_COUNT = 15  # consecutive-ish stiff estimates before switching
NONSTIFF_RESET = 6  # non-stiff estimates in a row that reset the count
NONSTIFF_HNORM = 1.0  # back to Dormand-Prince: h ||Hess L||_inf <= this ...
NONSTIFF_COUNT = 15  # ... on this many accepted RODAS steps in a row (doubled every return)


@nb.njit(**_JIT)
def grad_ws(model, w, ws, out_g, want_loss):
    """grad L(w) into out_g (n,) and L(w) (NaN unless ``want_loss``; the data path then skips
    the loss values, the gradient is the same bits); pi(w) is left in ws.prefix[N]."""
    k = model.k
    kv = forward_filter(w, k, model.S, model.offs, ws.prefix)
    L = _fs_loss_grad_buf(model, ws.prefix[k.shape[0], :kv], ws.G, ws.buf, want_loss)
    backward_filter(w, k, model.S, model.offs, ws.prefix, ws.G, ws.gcur, ws.gnext, out_g)
    return L


# The gradient is taken several times per step: the helpers of the hot path take the arrays
# themselves, not the Model / Workspace tuples, and the generated kernel's path makes no call
# that can return an error. Numba gives a function an atomic reference-count increment and
# decrement per array it uses (tuple fields included) and its pruning removes them only where
# every exit of the function is a plain return or a raise of its own; the error check after a
# call of another compiled function is neither. So a helper that calls another compiled
# function pays two atomic operations per array on every call (measured: dp_step with ~25
# arrays, ~50 atomic operations per Dormand-Prince step, more than its six gradients), while
# grad_kern, inlined at the Numba level and calling the kernel through a plain C call
# (lcnfast._codegen.call_lane_kernel), pays none.
@nb.njit(inline="always", **_JIT)
def grad_kern(kern, A, b, yy, w, out_g, kW, kG, kL, kV, prefix, N):
    """grad L(w) into out_g (n,) and L(w) through the generated kernel at address ``kern``
    (lcnfast._codegen, one lane: kW, kG (n, 1), kL (1,), kV (k_v, 1) scratch; A, b, yy the
    Model's Gram data), pi(w) copied into prefix[N] as grad_ws leaves it."""
    n = w.shape[0]
    for i in range(n):
        kW[i, 0] = w[i]
    call_lane_kernel(kern, kW, A, b, yy, kG, kL, kV)
    for i in range(n):
        out_g[i] = kG[i, 0]
    for i in range(kV.shape[0]):
        prefix[N, i] = kV[i, 0]
    return kL[0]


@nb.njit(**_JIT)
def grad_any(model, kern, use_kern, w, ws, out_g, want_loss, kW, kG, kL, kV):
    """:func:`grad_ws` through the generated kernel ``kern`` when ``use_kern``
    (:func:`grad_kern`): the same numbers, ~10x faster on small filters."""
    if not use_kern:
        return grad_ws(model, w, ws, out_g, want_loss)
    return grad_kern(kern, model.A, model.b, model.yy, w, out_g, kW, kG, kL, kV, ws.prefix,
                     model.k.shape[0])


@nb.njit(inline="always", **_JIT)
def _dp_stage_point(Kst, y, h, st, dst):
    """The point of Dormand-Prince stage st (1..6; 6 = the new point) into dst."""
    coef = DP_A[st] if st < 6 else DP_B
    for i in range(y.shape[0]):
        acc = 0.0
        for q in range(st):
            acc += coef[q] * Kst[q, i]
        dst[i] = y[i] + h * acc


@nb.njit(inline="always", **_JIT)
def _dp_stage_slope(Kst, st, g):
    """Kst[st] = f = -g, the slope of stage st from its gradient g."""
    for i in range(g.shape[0]):
        Kst[st, i] = -g[i]


@nb.njit(**_JIT)
def dp_step(model, ws, Kst, y, g, y_new, g_new, ytmp, gtmp, h):
    """One Dormand-Prince step of size h from y (n,) with g = grad L(y): stages into Kst
    (7, n) (Kst[q] = f = -grad L at the stage point; Kst[6] at y_new, FSAL), the new point
    into y_new and its gradient into g_new; on return ytmp, gtmp hold the 6th stage's point
    and gradient (stiffness detection); gradients by :func:`grad_ws`. Returns L(y_new)."""
    _dp_stage_slope(Kst, 0, g)
    L = math.nan
    for st in range(1, 7):
        dst = ytmp if st < 6 else y_new
        gst = gtmp if st < 6 else g_new
        _dp_stage_point(Kst, y, h, st, dst)
        L = grad_ws(model, dst, ws, gst, st == 6)
        _dp_stage_slope(Kst, st, gst)
    return L


@nb.njit(**_JIT)
def dp_step_kern(kern, A, b, yy, kW, kG, kL, kV, prefix, N, Kst, y, g, y_new, g_new, ytmp,
                 gtmp, h):
    """:func:`dp_step` with the gradients through the generated kernel at address ``kern``
    (:func:`grad_kern` and its arguments): the same stages, no reference counting."""
    _dp_stage_slope(Kst, 0, g)
    L = math.nan
    for st in range(1, 7):
        dst = ytmp if st < 6 else y_new
        gst = gtmp if st < 6 else g_new
        _dp_stage_point(Kst, y, h, st, dst)
        L = grad_kern(kern, A, b, yy, dst, gst, kW, kG, kL, kV, prefix, N)
        _dp_stage_slope(Kst, st, gst)
    return L


@nb.njit(**_JIT)
def dp_error_norm(Kst, y, y_new, h, rtol, atol):
    """RMS of the 4th-order error estimate h sum_q E_q K_q scaled as rk45 (inf if not
    finite)."""
    n = y.shape[0]
    acc = 0.0
    for i in range(n):
        e = 0.0
        for q in range(7):
            e += DP_E[q] * Kst[q, i]
        sc = atol + rtol * max(abs(y[i]), abs(y_new[i]))
        acc += _over(h * e, sc) ** 2  # 0 / 0 = 0: see _integrate._over
    err = math.sqrt(acc / n)
    return err if math.isfinite(err) else math.inf


@nb.njit(**_JIT)
def dp_dense_point(Kst, y, h, x, out):
    """Shampine's 4th-order continuous extension at t + x h (as rk45) into out."""
    for i in range(y.shape[0]):
        acc = 0.0
        for q in range(7):
            acc += Kst[q, i] * (x * (DP_P[q, 0] + x * (DP_P[q, 1] + x * (DP_P[q, 2]
                                                                        + x * DP_P[q, 3]))))
        out[i] = y[i] + h * acc


@nb.njit(**_JIT)
def h_lambda(y_new, g_new, ytmp, gtmp, h):
    """h ||f(y_new) - f(y_6)|| / ||y_new - y_6|| (0 if the points coincide)."""
    num = 0.0
    den = 0.0
    for i in range(y_new.shape[0]):
        num += (g_new[i] - gtmp[i]) ** 2
        den += (y_new[i] - ytmp[i]) ** 2
    return h * math.sqrt(num / den) if den > 0.0 else 0.0


@nb.njit(**_JIT)
def inf_norm(H):
    """max_i sum_j |H_ij|: for a symmetric H a bound on |lambda| of every eigenvalue."""
    best = 0.0
    for i in range(H.shape[0]):
        acc = 0.0
        for j in range(H.shape[1]):
            acc += abs(H[i, j])
        if acc > best or math.isnan(acc):  # a NaN is kept
            best = acc
    return best


@nb.njit(**_JIT)
def stiffness_count(hlamb, n_stiff, n_calm):
    """Update the counts of stiff and non-stiff estimates (dopri5.f's IASTI, NONSTI) with the
    estimate ``hlamb`` of an accepted step; the flow is stiff once n_stiff >= STIFF_COUNT."""
    if hlamb > STIFF_HLAMB:
        return n_stiff + 1, 0
    n_calm += 1
    return (0 if n_calm >= NONSTIFF_RESET else n_stiff), n_calm
