"""Rodas4: an L-stable Rosenbrock method with the exact Hessian for ``dw/dt = -grad L(w)``.

Private module: inputs are validated by :mod:`lcnfast.flows`.

Near a limit every gradient flow is stiff: the Hessian's largest eigenvalue stays in the
hundreds while the trajectory has stopped moving, so an explicit method's step is capped by
stability (Dormand-Prince: h <= ~3.3 / lambda_max). A Rosenbrock (linearly implicit) method
with the exact Jacobian ``J = -Hess L(w)`` of the right-hand side is stable for any step on
the flow's contracting directions and lets the step grow with the accuracy alone.

Method: RODAS (order 4, embedded order 3, six stages, stiffly accurate, L-stable: the
stability function vanishes at infinity) of Hairer & Wanner, *Solving Ordinary Differential
Equations II*, 2nd ed. (Springer 1996), section VI.4, with the coefficients of Hairer's
Fortran code ``rodas.f`` (subroutine RODCOE, METH = 1) in its transformed variables
``u_i = sum_j gamma_ij k_j``. For the autonomous system ``y' = f(y)`` one step of size h is

    (I / (h gamma) - J) u_i = f(y + sum_{j<i} a_ij u_j) + sum_{j<i} (c_ij / h) u_j,  i = 1..6,
    y_new = y + sum_{j<=4} a_5j u_j + u_5 + u_6,     error estimate  u_6,

(the points of stages 5 and 6 are the embedded solution and its predecessor, ``a_6j = a_5j``,
``a_65 = 1``), with one LU factorisation of ``I / (h gamma) + Hess L(y)`` per attempted step
and six right-hand sides; the dense output of order 3 (rodas.f, CONTRO) is

    y(t + s h) = (1 - s) y + s (y_new + (1 - s) (sum_j d_1j u_j + s sum_j d_2j u_j)).

The gradient at ``y_new`` serves the stopping rule, the statistics and the first stage of the
next step; a rejected step keeps its Hessian and refactorises for the smaller step.

Error control as :mod:`lcnfast._rk45` (scipy conventions): RMS norm of
``err / (atol + rtol max(|y|, |y_new|))``, factor ``SAFETY err^(-1/4)`` (embedded order 3)
clipped to [MIN_FACTOR, MAX_FACTOR] and to <= 1 right after a rejection, Hairer's initial
step (rk45's, for a method of order 4), ``min_step = 10 ulp(t)``. A factorisation that is
numerically singular (a pivot below ``n eps max|E|``: near a saddle ``I / (h gamma) +
Hess L`` can be singular) or non-finite, and any non-finite stage, reject the step and
shrink h by MIN_FACTOR.

Method "auto" runs the same driver from Dormand-Prince steps (:mod:`lcnfast._one_flow`) and
switches a flow to RODAS once Hairer's stiffness detection fires. It switches back when the
step is bound by accuracy again (a transient stiff phase has ended: the Hessian's largest
eigenvalue dropped along the path), judged with the exact Hessian H = Hess L(y) that every
RODAS step has: the criterion is ``h ||H||_inf <= NONSTIFF_HNORM = 1`` on ``NONSTIFF_COUNT =
15`` accepted RODAS steps in a row, h the larger of the accepted step and the next proposed
one. ``||H||_inf`` (the largest row sum of |H|, n^2 operations against the LU's n^3 / 3) is an
upper bound of |lambda| for every eigenvalue of the symmetric H, so a Dormand-Prince step up
to 3.3 times the Rosenbrock step is stable (stability interval [-3.3, 0]; LSODA and
Hairer-Wanner's switching codes compare such estimates of h lambda_max with the explicit
method's stability limit). Hysteresis: switching to RODAS needs h lambda > 3.25, switching back
h |lambda| <= 1, and the count needed to switch back doubles at every return (15, 30, 60, ...),
so the number of switches of a flow grows at most like twice the logarithm of its steps. A
flow that never meets the criterion takes exactly the steps of the switch-for-good rule (the
check reads H, it changes no number).

Layout: one worker per thread (:func:`lcnfast._threads.run_workers`); a worker integrates whole flows one at a time
with the one-flow kernels of :mod:`lcnfast._kernels` (n_params is small, a step costs six
gradients, one Hessian and an n x n LU; the square loss's gradients go through the generated
straight-line kernel of :mod:`lcnfast._codegen`, one lane wide, when the Problem picks it:
the same numbers, ~10x faster than the generic one-flow loops) and takes the next flow from
a counter shared by all workers (atomic fetch-and-add). A flow's arithmetic never depends on
the worker or the batch: results are bitwise identical for any thread count and batch
composition.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba as nb
import numpy as np

from ._integrate import (CONVERGED, DP_P, ERROR_EXPONENT, INTERRUPTED, MAX_FACTOR, MAX_STEPS,
                         MIN_FACTOR, NON_FINITE, REACHED_END, SAFETY, STEP_UNDERFLOW,
                         _atomic_load, _fetch_add, _initial_step, _l1, _levels_at_start,
                         _levels_crossed, _locate_levels, _norm2, _over, _record, _start,
                         _ulp_above, finish_counts)
from ._jit import JIT as _JIT
from ._kernels import _flag, hessian_one, new_workspace
from ._one_flow import (NONSTIFF_COUNT, NONSTIFF_HNORM, STIFF_COUNT, dp_dense_point,
                        dp_error_norm, dp_step, dp_step_kern, grad_any, grad_kern, grad_ws,
                        h_lambda, inf_norm, stiffness_count)

# ----------------------------------------------------------------------------- RODAS tableau
# Hairer & Wanner (1996), section VI.4; coefficients of rodas.f (RODCOE, METH = 1).
# RO_A[i, j]: stage i's point is y + sum_j RO_A[i, j] u_j; RO_C[i, j]: coefficient of u_j / h in
# stage i's right-hand side; RO_M: y_new = y + sum_j RO_M[j] u_j; error estimate u_6;
# RO_D: dense output (rows d_1j, d_2j).
RO_GAMMA = 0.25
RO_A = np.zeros((6, 6))
RO_A[1, 0] = 1.544
RO_A[2, :2] = [0.9466785280815826, 0.2557011698983284]
RO_A[3, :3] = [3.314825187068521, 2.896124015972201, 0.9986419139977817]
RO_A[4, :4] = [1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950]
RO_A[5, :5] = [*RO_A[4, :4], 1.0]
RO_C = np.zeros((6, 6))
RO_C[1, 0] = -5.6688
RO_C[2, :2] = [-2.430093356833875, -0.2063599157091915]
RO_C[3, :3] = [-0.1073529058151375, -9.594562251023355, -20.47028614809616]
RO_C[4, :4] = [7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160]
RO_C[5, :5] = [8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136,
               -6.058818238834054]
RO_M = np.array([*RO_A[4, :4], 1.0, 1.0])
RO_D = np.array(
    [
        [10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823,
         1.025137723295662, 0.0],
        [-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386,
         -6.594389125716872, 0.0],
    ]
)
RO_ERROR_EXPONENT = -1.0 / 4.0  # -1 / (embedded order + 1)
_EPS = np.finfo(np.float64).eps


class RosenbrockStats(NamedTuple):
    """Per-flow statistics of the Rosenbrock method, preallocated by the caller (K flows)."""

    n_hessian_evals: np.ndarray  # (K,) int64
    n_lu: np.ndarray  # (K,) int64 factorisations (one per attempted step)
    h_final: np.ndarray  # (K,) size of the last accepted step (NaN: none)
    n_dp_steps: np.ndarray  # (K,) int64 Dormand-Prince steps (auto), accepted + rejected
    t_switch: np.ndarray  # (K,) first switch to RODAS (auto; NaN: never; rosenbrock: 0)
    n_switches: np.ndarray  # (K,) int64 switches between the methods, either way (auto)


def new_stats(K):
    return RosenbrockStats(np.zeros(K, np.int64), np.zeros(K, np.int64), np.full(K, np.nan),
                           np.zeros(K, np.int64), np.full(K, np.nan), np.zeros(K, np.int64))


class _Work(NamedTuple):
    """One worker's scratch (n parameters, k_v filter taps)."""

    ws: object  # _kernels.Workspace of the gradient
    hprefix: np.ndarray  # (N+1, k_v) Hessian scratch (_kernels.hessian_one)
    hwork: np.ndarray  # (2, k_v)
    hJ: np.ndarray  # (k_v, n)
    hHv: np.ndarray  # (k_v, k_v)
    hG: np.ndarray  # (k_v,)
    hHJ: np.ndarray  # (k_v, n)
    H: np.ndarray  # (n, n) Hess L at y
    E: np.ndarray  # (n, n) LU factors of I / (h gamma) + H
    piv: np.ndarray  # (n,) int64 row swaps
    U: np.ndarray  # (6, n) stages u_i
    y: np.ndarray  # (n,) state
    g: np.ndarray  # (n,) grad L(y)
    y_new: np.ndarray  # (n,)
    g_new: np.ndarray  # (n,)
    ytmp: np.ndarray  # (n,) stage points, dense output
    gtmp: np.ndarray  # (n,)
    v: np.ndarray  # (k_v,) pi(y)
    kW: np.ndarray  # (n, 1) one lane of the generated kernel (grad_any)
    kG: np.ndarray  # (n, 1)
    kL: np.ndarray  # (1,)
    kV: np.ndarray  # (k_v, 1)
    Kst: np.ndarray  # (7, n) Dormand-Prince stages (auto)
    v_new: np.ndarray  # (k_v,) pi(y_new) of a Dormand-Prince step


@nb.njit(**_JIT)
def new_work(model, n):
    kv = model.k_v
    N = model.k.shape[0]
    z = np.zeros(n)
    return _Work(
        new_workspace(model), np.zeros((N + 1, kv)), np.zeros((2, kv)), np.zeros((kv, n)),
        np.zeros((kv, kv)), np.zeros(kv), np.zeros((kv, n)), np.zeros((n, n)),
        np.zeros((n, n)), np.zeros(n, np.int64), np.zeros((6, n)), z.copy(), z.copy(),
        z.copy(), z.copy(), z.copy(), z.copy(), np.zeros(kv), np.zeros((n, 1)), np.zeros((n, 1)),
        np.zeros(1), np.zeros((kv, 1)), np.zeros((7, n)), np.zeros(kv),
    )


# ----------------------------------------------------------------------------- linear algebra
@nb.njit(**_JIT)
def lu_factor(E, piv):
    """In-place LU with partial pivoting of E (n, n) (row swaps in ``piv``, LAPACK style).
    Returns False if E has a non-finite entry or a pivot <= n eps max|E| (numerically
    singular)."""
    n = E.shape[0]
    emax = 0.0
    for i in range(n):
        for j in range(n):
            a = abs(E[i, j])
            if not a <= 1.7976931348623157e308:  # NaN or Inf
                return False
            if a > emax:
                emax = a
    tiny = n * _EPS * emax
    for k in range(n):
        p = k
        amax = abs(E[k, k])
        for i in range(k + 1, n):
            if abs(E[i, k]) > amax:
                amax = abs(E[i, k])
                p = i
        if not amax > tiny:
            return False
        piv[k] = p
        if p != k:
            for j in range(n):
                tmp = E[k, j]
                E[k, j] = E[p, j]
                E[p, j] = tmp
        pk = E[k, k]
        for i in range(k + 1, n):
            lik = E[i, k] / pk
            E[i, k] = lik
            for j in range(k + 1, n):
                E[i, j] -= lik * E[k, j]
    return True


@nb.njit(**_JIT)
def lu_solve(E, piv, x):
    """Solve (factorised E) z = x in place."""
    n = E.shape[0]
    for k in range(n):
        p = piv[k]
        if p != k:
            tmp = x[k]
            x[k] = x[p]
            x[p] = tmp
    for i in range(n):
        acc = x[i]
        for j in range(i):
            acc -= E[i, j] * x[j]
        x[i] = acc
    for i in range(n - 1, -1, -1):
        acc = x[i]
        for j in range(i + 1, n):
            acc -= E[i, j] * x[j]
        x[i] = acc / E[i, i]


# ----------------------------------------------------------------------------- one step
# The step's helpers take the arrays themselves, not the _Work tuple (every access to a field of
# a tuple passed along costs atomic reference counting), and the generated kernel's step its
# scratch arrays rather than the Model and Workspace. Unlike lcnfast._one_flow.dp_step_kern,
# its arrays keep their reference counting: it calls lu_factor and lu_solve (see
# lcnfast._one_flow, before grad_kern), and inlining them did not let Numba's pruning remove
# it either (it then meets merged decrements); the Hessian (~1.3 us for n = 9) dominates a
# RODAS step of ~1.4 us anyway.
@nb.njit(inline="always", **_JIT)
def _ro_factor(H, E, piv, U, g, h):
    """The LU factors of I / (h gamma) + H (n, n) into E and piv, and the first stage
    u_1 = E^-1 f(y) (f = -g) into U[0]; False if the factorisation failed (nothing else
    done)."""
    n = H.shape[0]
    inv = 1.0 / (h * RO_GAMMA)
    for i in range(n):
        for j in range(n):
            E[i, j] = H[i, j]
        E[i, i] += inv
    if not lu_factor(E, piv):
        return False
    for i in range(n):  # stage 1: the right-hand side is f(y) = -grad L(y)
        U[0, i] = -g[i]
    lu_solve(E, piv, U[0])
    return True


@nb.njit(inline="always", **_JIT)
def _ro_stage_point(U, y, st, ytmp):
    """The point y + sum_j a_st,j u_j of stage st (1..5) into ytmp."""
    for i in range(y.shape[0]):
        acc = y[i]
        for j in range(st):
            acc += RO_A[st, j] * U[j, i]
        ytmp[i] = acc


@nb.njit(inline="always", **_JIT)
def _ro_stage_solve(E, piv, U, gtmp, h, st):
    """Stage st (1..5) u_st from the gradient gtmp at its point into U[st]."""
    for i in range(gtmp.shape[0]):
        acc = 0.0
        for j in range(st):
            acc += RO_C[st, j] * U[j, i]
        U[st, i] = acc / h - gtmp[i]
    lu_solve(E, piv, U[st])


@nb.njit(inline="always", **_JIT)
def _ro_new_point(U, y, y_new):
    for i in range(y.shape[0]):
        acc = y[i]
        for j in range(6):
            acc += RO_M[j] * U[j, i]
        y_new[i] = acc


@nb.njit(**_JIT)
def rodas_step(model, ws, H, E, piv, U, y, g, y_new, ytmp, gtmp, h):
    """Attempt one RODAS step of size h from y (n,), given g = grad L(y) and H = Hess L(y)
    (n, n): the LU factors of I / (h gamma) + H into E and piv, the stages u_i into U (6, n)
    (u_6 is the error estimate), the new point into y_new; ws, ytmp, gtmp: scratch; stage
    gradients by :func:`grad_ws`.

    Returns the number of gradient evaluations done (5), or -1 if the factorisation failed
    (nothing else was computed). A non-finite stage shows up as a non-finite y_new or u_6.
    """
    if not _ro_factor(H, E, piv, U, g, h):
        return -1
    for st in range(1, 6):
        _ro_stage_point(U, y, st, ytmp)
        grad_ws(model, ytmp, ws, gtmp, _flag(False))
        _ro_stage_solve(E, piv, U, gtmp, h, st)
    _ro_new_point(U, y, y_new)
    return 5


@nb.njit(**_JIT)
def rodas_step_kern(kern, A, b, yy, kW, kG, kL, kV, prefix, N, H, E, piv, U, y, g, y_new, ytmp,
                    gtmp, h):
    """:func:`rodas_step` with the stage gradients through the generated kernel at address
    ``kern`` (lcnfast._one_flow.grad_kern and its arguments): the same stages."""
    if not _ro_factor(H, E, piv, U, g, h):
        return -1
    for st in range(1, 6):
        _ro_stage_point(U, y, st, ytmp)
        grad_kern(kern, A, b, yy, ytmp, gtmp, kW, kG, kL, kV, prefix, N)
        _ro_stage_solve(E, piv, U, gtmp, h, st)
    _ro_new_point(U, y, y_new)
    return 5


@nb.njit(**_JIT)
def dense_point(y, y_new, U, s, out):
    """The order-3 continuous extension at t + s h (0 <= s <= 1) of the step from y to y_new
    with stages U into out."""
    n = y.shape[0]
    for i in range(n):
        d1 = 0.0
        d2 = 0.0
        for j in range(5):
            d1 += RO_D[0, j] * U[j, i]
            d2 += RO_D[1, j] * U[j, i]
        out[i] = (1.0 - s) * y[i] + s * (y_new[i] + (1.0 - s) * (d1 + s * d2))


@nb.njit(**_JIT)
def error_norm(y, y_new, U, rtol, atol):
    """RMS of u_6 / (atol + rtol max(|y|, |y_new|)); inf if it or y_new is not finite."""
    n = y.shape[0]
    acc = 0.0
    for i in range(n):
        if not math.isfinite(y_new[i]):
            return math.inf
        sc = atol + rtol * max(abs(y[i]), abs(y_new[i]))
        acc += _over(U[5, i], sc) ** 2  # 0 / 0 = 0: see _integrate._over
    err = math.sqrt(acc / n)
    return err if math.isfinite(err) else math.inf


# ----------------------------------------------------------------------------- one flow
@nb.njit(**_JIT)
def _finish(out, f, y, v, L, gn, t, status, n_acc, n_rej, evals):
    for i in range(y.shape[0]):
        out.w_final[f, i] = y[i]
    for i in range(v.shape[0]):
        out.v_final[f, i] = v[i]
    finish_counts(out, f, L, gn, t, status, n_acc, n_rej, evals)


@nb.njit(**_JIT)
def _save(out, f, r, y, L, gn):
    for i in range(y.shape[0]):
        out.save_w[f, r, i] = y[i]
    out.save_loss[f, r] = L
    out.save_grad_norm[f, r] = gn


@nb.njit(**_JIT)
def _keep_filter(prefix, N, v):
    """Copy pi(w) of the last gradient evaluation (prefix[N], the workspace's) into v."""
    for i in range(v.shape[0]):
        v[i] = prefix[N, i]


@nb.njit(**_JIT)
def _dense_saves(model, kern, use_kern, opt, out, f, stiff, wk, K1, si, t, h):
    """Saves at the save times inside (t, t + h) from the continuous extension of the
    accepted step (RODAS if ``stiff``, else Dormand-Prince), one gradient evaluation each (for
    the loss and gradient norm). Returns the next save index."""
    T = opt.save_t.shape[0]
    ytmp, gtmp = wk.ytmp, wk.gtmp
    while si < T and opt.save_t[si] < t + h:
        x = (opt.save_t[si] - t) / h
        if stiff:
            dense_point(wk.y, wk.y_new, wk.U, x, ytmp)
        else:
            dp_dense_point(wk.Kst, wk.y, h, x, ytmp)
        Ls = grad_any(
            model, kern, use_kern, ytmp, wk.ws, gtmp, _flag(True), K1[0], K1[1], K1[2], K1[3]
        )
        _save(out, f, si, ytmp, Ls, _norm2(gtmp))
        si += 1
    return si


@nb.njit(**_JIT)
def _step_levels(model, opt, out, f, stiff, wk, h, t, t_new, L_old, L_new):
    """Levels crossed by the accepted step from wk.y to wk.y_new, located on its continuous
    extension (RODAS's of order 3 if ``stiff``, else Dormand-Prince's of order 4) written as
    y + x (C_0 + x (C_1 + x (C_2 + x C_3))); returns the loss evaluations."""
    n = wk.y.shape[0]
    C = np.zeros((4, n))
    y, y_new, U, Kst = wk.y, wk.y_new, wk.U, wk.Kst
    for i in range(n):
        if stiff:  # (1 - x) y + x (y_new + (1 - x) (d1 + x d2))
            d1 = 0.0
            d2 = 0.0
            for j in range(5):
                d1 += RO_D[0, j] * U[j, i]
                d2 += RO_D[1, j] * U[j, i]
            C[0, i] = y_new[i] - y[i] + d1
            C[1, i] = d2 - d1
            C[2, i] = -d2
        else:
            for p in range(4):
                acc = 0.0
                for q in range(7):
                    acc += Kst[q, i] * DP_P[q, p]
                C[p, i] = h * acc
    return _locate_levels(model, wk.ws, opt, out, f, y, C, t, h, t_new, L_old, L_new, wk.ytmp,
                          wk.gtmp)


@nb.njit(**_JIT)
def _prepare(t_end, max_steps, t, h_abs, min_step, rejected, n_steps):
    """Stopping checks before a step from t (rk45's order) and its end t_new; returns
    (status or -1, t_new, min_step)."""
    if not rejected:  # a new step
        if t >= t_end:
            return REACHED_END, t, min_step
        min_step = 10.0 * _ulp_above(t)
        h_abs = max(h_abs, min_step)
    if n_steps >= max_steps:
        return MAX_STEPS, t, min_step
    if not h_abs >= min_step:
        return STEP_UNDERFLOW, t, min_step
    t_new = min(t + h_abs, t_end)
    if t_new == math.inf:  # t_end = inf and the time overflows: the flow has reached it
        return REACHED_END, t, min_step
    return -1, t_new, min_step


@nb.njit(**_JIT)
def _begin(model, W0, f, opt, out, wk):
    """Load flow f, evaluate its start, save at t <= 0; returns (L, ||g||, status or -1, next
    save index, initial step)."""
    n = W0.shape[1]
    y, g, v, ws = wk.y, wk.g, wk.v, wk.ws
    for i in range(n):
        y[i] = W0[f, i]
    L = grad_ws(model, y, ws, g, _flag(True))
    _keep_filter(ws.prefix, model.k.shape[0], v)
    gn = _norm2(g)
    _start(out, f)
    out.loss_init[f] = L
    out.grad_norm_init[f] = gn
    _record(out, f, _l1(v), _norm2(y))
    _levels_at_start(opt, out, f, L)
    si = 0
    while si < opt.save_t.shape[0] and opt.save_t[si] <= 0.0:
        _save(out, f, si, y, L, gn)
        si += 1
    if not (math.isfinite(L) and math.isfinite(gn)):
        return L, gn, NON_FINITE, si, 0.0
    if gn <= opt.grad_tol:
        return L, gn, CONVERGED, si, 0.0
    for i in range(n):
        wk.gtmp[i] = -g[i]  # f(y0)
    return L, gn, -1, si, _initial_step(model, y, wk.gtmp, opt.t_end, opt, ws, wk.ytmp, wk.y_new)


@nb.njit(inline="always", **_JIT)
def rodas_flow(model, kern, use_kern, W0, f, opt, out, st, wk, auto, stop):
    """Integrate flow f (row f of W0) into ``out`` / ``st`` with RODAS, or (``auto``) with
    Dormand-Prince until the stiffness detection of :mod:`lcnfast._one_flow` fires, RODAS from
    there on until ``h ||H||_inf <= NONSTIFF_HNORM`` on enough steps in a row (module
    docstring), and so on. The stopping rules,
    statuses and saves are those of rk45; ``stop[0]`` != 0 (SIGINT, see lcnfast.flows) ends
    the flow at its last accepted state with status INTERRUPTED, checked once per step.

    Inlined into :func:`rodas_worker`, its one caller, by Numba (``inline="always"``): compiled
    on its own and then again inside the worker, its call tree was optimised twice (5.8 s of
    a cold start on 2 AVX2 cores; the same code and results, bitwise, either way)."""
    n = W0.shape[1]
    ws, H, E, piv, U, v, Kst = wk.ws, wk.H, wk.E, wk.piv, wk.U, wk.v, wk.Kst
    y, g, y_new, g_new, ytmp, gtmp = wk.y, wk.g, wk.y_new, wk.g_new, wk.ytmp, wk.gtmp
    kW, kG, kL, kV = wk.kW, wk.kG, wk.kL, wk.kV
    hprefix, hwork, hJ, hHv, hG, hHJ = wk.hprefix, wk.hwork, wk.hJ, wk.hHv, wk.hG, wk.hHJ
    hbuf = ws.buf  # the gradient's data-path scratch serves the Hessian between its passes
    K1 = (kW, kG, kL, kV)
    # arrays used every step, out of their tuples once (see rodas_step)
    save_t, T, t_end, max_steps = opt.save_t, opt.save_t.shape[0], opt.t_end, opt.max_steps
    A, bv, yy, N, prefix, v_new = model.A, model.b, model.yy, model.k.shape[0], ws.prefix, wk.v_new
    L, gn, status, si, h_abs = _begin(model, W0, f, opt, out, wk)
    # running maxima in local variables, written at the end (see _integrate._lane_maxima_from)
    v1_max, wn_max, inc_max = out.v_l1_max[f], out.w_norm_max[f], out.max_loss_increase[f]
    t = 0.0
    n_acc = n_rej = n_hess = n_lu = n_dp = n_stiff = n_calm = n_nonstiff = n_switch = 0
    evals = 1 if status >= 0 else 2
    h_last = math.nan
    t_switch = math.nan if auto else 0.0
    stiff = not auto
    rejected = False
    need_hessian = True
    min_step = 0.0
    while status < 0:
        if _atomic_load(stop, 0) != 0:  # interrupted: end the flow where it is
            status = INTERRUPTED
            break
        status, t_new, min_step = _prepare(t_end, max_steps, t, h_abs, min_step, rejected,
                                           n_acc + n_rej)
        if status >= 0:
            break
        h = t_new - t
        h_abs = h
        if stiff:
            if need_hessian:
                hessian_one(model, y, hprefix, hwork, hJ, hHv, H, hG, hHJ, hbuf)
                n_hess += 1
                need_hessian = False
            if use_kern:
                done = rodas_step_kern(kern, A, bv, yy, kW, kG, kL, kV, prefix, N, H, E, piv, U,
                                       y, g, y_new, ytmp, gtmp, h)
            else:
                done = rodas_step(model, ws, H, E, piv, U, y, g, y_new, ytmp, gtmp, h)
            n_lu += 1
            err = math.inf
            if done > 0:
                evals += done
                err = error_norm(y, y_new, U, opt.rtol, opt.atol)
            expo = RO_ERROR_EXPONENT
        else:
            if use_kern:
                L_new = dp_step_kern(kern, A, bv, yy, kW, kG, kL, kV, prefix, N, Kst, y, g,
                                     y_new, g_new, ytmp, gtmp, h)
            else:
                L_new = dp_step(model, ws, Kst, y, g, y_new, g_new, ytmp, gtmp, h)
            _keep_filter(prefix, N, v_new)
            n_dp += 1
            evals += 6
            err = dp_error_norm(Kst, y, y_new, h, opt.rtol, opt.atol)
            expo = ERROR_EXPONENT
        if not err < 1.0:
            h_abs *= max(MIN_FACTOR, SAFETY * err**expo)
            rejected = True
            n_rej += 1
            continue
        factor = MAX_FACTOR if err == 0.0 else min(MAX_FACTOR, SAFETY * err**expo)
        if rejected:
            factor = min(1.0, factor)
        h_abs *= factor
        rejected = False
        n_acc += 1
        h_last = h
        was_stiff = stiff
        if not stiff:  # before the dense saves overwrite the 6th stage in ytmp, gtmp
            n_stiff, n_calm = stiffness_count(h_lambda(y_new, g_new, ytmp, gtmp, h), n_stiff,
                                              n_calm)
            stiff = n_stiff >= STIFF_COUNT
            if stiff:
                n_switch += 1
                n_stiff = n_calm = 0
        elif auto:  # back to Dormand-Prince once the step is bound by accuracy again
            if max(h, h_abs) * inf_norm(H) <= NONSTIFF_HNORM:
                n_nonstiff += 1
                if n_nonstiff >= NONSTIFF_COUNT << min(n_switch // 2, 40):
                    stiff = False
                    n_switch += 1
                    n_nonstiff = 0
            else:
                n_nonstiff = 0
        if si < T and save_t[si] < t + h:  # the condition of _dense_saves
            si0 = si
            si = _dense_saves(model, kern, use_kern, opt, out, f, was_stiff, wk, K1, si, t, h)
            evals += si - si0
        if was_stiff:  # the new point's gradient (Dormand-Prince has it: FSAL)
            if use_kern:
                L_new = grad_kern(kern, A, bv, yy, y_new, g_new, kW, kG, kL, kV, prefix, N)
            else:
                L_new = grad_ws(model, y_new, ws, g_new, _flag(True))
            evals += 1
            _keep_filter(prefix, N, v_new)
        for i in range(v.shape[0]):
            v[i] = v_new[i]
        if opt.levels.shape[0] > 0 and _levels_crossed(opt, out, f, L_new):
            evals += _step_levels(model, opt, out, f, was_stiff, wk, h, t, t_new, L, L_new)
        gn = _norm2(g_new)
        if L_new - L > inc_max:
            inc_max = L_new - L
        L = L_new
        t = t_new
        if stiff and not was_stiff and n_switch == 1:
            t_switch = t
        for i in range(n):
            y[i] = y_new[i]
            g[i] = g_new[i]
        need_hessian = True
        while si < T and save_t[si] <= t:
            _save(out, f, si, y, L, gn)
            si += 1
        if not (math.isfinite(L) and math.isfinite(gn)):
            status = NON_FINITE
            break
        v1 = _l1(v)
        wn = _norm2(y)
        if v1 > v1_max:  # the running maxima (_integrate._record)
            v1_max = v1
        if wn > wn_max:
            wn_max = wn
        if gn <= opt.grad_tol:
            status = CONVERGED
    out.v_l1_max[f], out.w_norm_max[f], out.max_loss_increase[f] = v1_max, wn_max, inc_max
    _finish(out, f, y, v, L, gn, t, status, n_acc, n_rej, evals)
    st.n_hessian_evals[f] = n_hess
    st.n_lu[f] = n_lu
    st.h_final[f] = h_last
    st.n_dp_steps[f] = n_dp
    st.t_switch[f] = t_switch
    st.n_switches[f] = n_switch


@nb.njit(**_JIT)
def rodas_worker(model, kern, use_kern, W0, opt, out, st, auto, counter, stop):
    """RODAS (``auto``: Dormand-Prince switching to RODAS when stiff) for the rows of W0
    (K, n) into ``out`` (_integrate.FlowOutputs) and ``st``, one flow at a time, taking the
    next flow from ``counter`` (1,) int64 shared with the other workers; gradients through the
    generated kernel ``kern`` when ``use_kern`` (as rk45_worker). ``stop`` (1,) int64: set
    ``stop[0]`` from another thread to interrupt (flows not started keep status -1). Run on
    several threads at once by lcnfast._threads.run_workers."""
    K, n = W0.shape
    wk = new_work(model, n)
    while _atomic_load(stop, 0) == 0:  # interrupted: start no further flow
        f = _fetch_add(counter, 0, 1)
        if f >= K:
            break
        rodas_flow(model, kern, use_kern, W0, f, opt, out, st, wk, auto, stop)


# ----------------------------------------------------------------------------- Dataset
NEWTON_RCOND = 1e-8  # relative eigenvalue cut-off of the Newton step's pseudo-inverse


def newton_step_norm(problem, W):
    """||H^+ grad L(w)||_2 for every row w of W (K, n), H = Hess L(w); NaN where w, H or
    grad L(w) is not finite (a diverged flow, or a huge w whose Hessian overflows).

    Near a nondegenerate limit (modulo the layer rescalings, which leave L invariant) this is
    the length of the Newton correction, an estimate of the distance to the limit to first
    order. H^+ leaves out the eigenvalues |lambda| <= NEWTON_RCOND max|lambda|: along the
    rescaling directions L is constant and the eigenvalues are O(||grad L||).
    """
    K = W.shape[0]
    out = np.full(K, np.nan)
    ok = np.all(np.isfinite(W), axis=1)
    if ok.any():
        H = problem.hessian(W[ok])
        g = problem.grad(W[ok])
        fin = np.isfinite(H).all(axis=(1, 2)) & np.isfinite(g).all(axis=1)
        ok[ok] = fin
    if ok.any():
        H, g = H[fin], g[fin]
        lam, Q = np.linalg.eigh(H)
        c = np.einsum("kji,kj->ki", Q, g)  # Q^T g
        big = np.abs(lam) > NEWTON_RCOND * np.abs(lam).max(axis=1, keepdims=True)
        out[ok] = np.linalg.norm(np.where(big, c / np.where(big, lam, 1.0), 0.0), axis=1)
    return out


def add_statistics(ds, stats, method):
    """The per-flow variables of methods rosenbrock and auto (module docstring of
    lcnfast.flows)."""
    ds["n_hessian_evals"] = ("flow", stats.n_hessian_evals, {"long_name": "Hessian evaluations"})
    ds["n_lu"] = ("flow", stats.n_lu, {
        "long_name": "LU factorisations = Rosenbrock steps attempted"})
    ds["h_final"] = ("flow", stats.h_final, {
        "long_name": "size of the last accepted step (NaN: none)"})
    if method == "auto":
        ds["n_dp_steps"] = ("flow", stats.n_dp_steps, {
            "long_name": "Dormand-Prince steps attempted"})
        ds["t_switch"] = ("flow", stats.t_switch, {
            "long_name": "time of the first switch to Rosenbrock (NaN: never stiff)"})
        ds["n_switches"] = ("flow", stats.n_switches, {
            "long_name": "switches between Dormand-Prince and Rosenbrock (either way)"})
