"""Many gradient flows at once: the public integrators and the Dataset schema of their results.

``gradient_flow`` integrates ``dw/dt = -grad L(w)`` (eq. 1.7 / 3.1) with Dormand-Prince 5(4)
or, stiff near every limit, the L-stable Rosenbrock method RODAS with the exact Hessian
(:mod:`lcnfast._rosenbrock`), or Dormand-Prince switching to RODAS per flow once stiff
("auto"); ``gradient_descent`` is its explicit Euler discretisation. Both take a batch of initial
points (K, n_params), advance every flow with its own step size and stopping rule, and
return an :class:`xarray.Dataset` with the schema below.

Dataset schema
--------------
Dimensions: ``flow`` (K), ``param`` (n_params), ``time`` (saved times), ``v_tap`` (k_v),
``pair`` (N - 1).

``param`` carries a MultiIndex with levels ``layer`` (1..N, the paper's numbering) and
``tap`` (0..k_i - 1): ``ds.w_final.sel(layer=2)`` is layer 2's filter of every flow, with
dims (flow, tap).

=====================  ===================  ==============================================
variable               dims                 meaning
=====================  ===================  ==============================================
w_init, w_final        (flow, param)        initial / final parameters
v_final                (flow, v_tap)        final filter pi(w_final)
loss_init, loss_final  (flow,)              L at the start / end
grad_norm_init/_final  (flow,)              ||grad L||_2 at the start / end
t_final                (flow,)              time at which the flow stopped
status                 (flow,) int8         CF flags: converged, reached_end, max_steps,
                                            step_underflow, non_finite, interrupted
n_accepted             (flow,)              accepted steps (Euler: steps taken)
n_rejected             (flow,)              rejected steps (Euler: 0)
n_grad_evals           (flow,)              gradient evaluations, dense-output saves included
delta_init/_final      (flow, pair)         balancedness delta_i = ||w^(i+1)||^2 - ||w^(i)||^2
                                            (Lemma 3.3), pair i = layers (i, i+1)
max_loss_increase      (flow,)              max over accepted steps of L(new) - L(old)
                                            (<= 0: the loss never increased)
v_l1_max               (flow,)              max over accepted states of ||v||_1 (Thm 3.4)
w_norm_max             (flow,)              max over accepted states of ||w||_2
w                      (flow, time, param)  parameters at the saved times
loss, grad_norm        (flow, time)         L and ||grad L|| at the saved times
newton_step_final      (flow,)              gradient_flow only: ||H^+ grad L||_2 at w_final
                                            (H = Hess L without its eigenvalues below 1e-8
                                            max|eig|): the Newton correction, an estimate of
                                            the distance to the limit
n_hessian_evals        (flow,)              rosenbrock, auto: Hessian evaluations
n_lu                   (flow,)              rosenbrock, auto: LU factorisations (= RODAS
                                            steps attempted)
h_final                (flow,)              rosenbrock, auto: last accepted step size
n_dp_steps             (flow,)              auto: Dormand-Prince steps attempted
t_switch               (flow,)              auto: time of the first switch to RODAS (NaN:
                                            never)
n_switches             (flow,)              auto: switches between the methods, either way
t_below                (flow, loss_level)   with ``loss_levels`` only: first time t with
                                            L(w(t)) <= loss_level (see "Loss levels")
h_lambda_max_final     (flow,)              gradient_descent only: h lambda_max(Hess L) at
                                            w_final (locally stable at a minimum only if < 2)
=====================  ===================  ==============================================

``attrs``: ``architecture`` and ``loss`` (JSON), ``m``, ``data_sha256`` (SHA-256 of X then Y,
float64 C order: :func:`lcnfast.analysis.classify` refuses a Problem on other data), the
method and its options, ``interrupted``, versions, threads, wall time, and the caller's
``attrs``.

Loss levels (first passage times)
---------------------------------
``loss_levels`` (a 1-d sequence of finite absolute loss values) adds the coordinate
``loss_level`` and ``t_below`` (flow, loss_level): the first time the flow's loss is at or
below the level, without a dense save grid (for plateau and escape-time studies). 0 if
``loss_init`` is already at or below it; NaN if the flow stopped (any status: reached_end,
converged, max_steps, interrupted, ...) before reaching it, or never evaluated its loss (a flow
an interrupt left unstarted). Computed inside the kernels, per method:

- gradient_descent: ``j h`` of the first iterate ``w_j`` with ``L(w_j) <= level``: exact for
  the discrete iteration.
- rk45, rosenbrock, auto: the accepted step whose end is the first accepted state at or below
  the level is searched on its continuous extension (Dormand-Prince: Shampine's, order 4;
  RODAS: order 3) for the root of ``L(y(t)) - level`` by the Illinois variant of regula falsi
  (bracket [t, t + h], f(t) > 0 >= f(t + h); until the bracket is below 1e-13 h or |f| at the
  rounding of L, at most 60 loss evaluations, typically 4-6, counted in n_grad_evals).
  Accuracy: the root is exact to ~1e-13 h or the rounding of L; the continuous extension's
  error dw (~ the local tolerance, atol + rtol |w|) moves L by ~||grad L|| dw and the time
  by ~dw / ||grad L|| (dL/dt = -||grad L||^2): about the accuracy of the trajectory itself
  (measured against scipy's DOP853 events at rtol 1e-13: within 4e-11 at rtol 1e-10, 3e-9
  at rtol 1e-8). A level crossed and recrossed within one step (the loss of the exact flow
  never increases) is not seen.

With ``loss_levels=None`` (the default) nothing is computed and results are bitwise those
without the argument.

Saved values after a flow has stopped (converged early, or failed) are NaN: ``t_final`` and
``status`` say when and why it stopped, ``w_final`` holds its last state.

Statuses ``max_steps`` and ``step_underflow`` (the flow stopped before ``t_end`` without
converging) give one :class:`FlowWarning` per run with their counts, and so does
``non_finite`` (the loss or gradient overflowed: the flow diverged; ``w_final`` is the state
where it did, ``loss_final`` its loss as :meth:`Problem.loss` gives it, inf rather than NaN).

Interruption (Ctrl-C)
---------------------
Called from the main thread, both integrators stop within about one step of SIGINT (the
kernels poll a flag once per step of each group of eight flows, set as the signal arrives; see
"running" below) and return what they have instead of discarding it:
flows in progress end with status ``interrupted`` at their last accepted state
(``w_final``, ``loss_final``, ``t_final`` = the time reached, their saved times up to there);
flows not started yet get status ``interrupted`` with ``t_final = 0``, ``w_final = w_init``,
``n_grad_evals = 0`` and NaN losses, norms and ``v_final`` (never evaluated). The Dataset
says so in ``attrs["interrupted"]`` (1; 0 for a complete run) and a :class:`FlowWarning` is
issued: a script that should stop on Ctrl-C checks ``ds.attrs["interrupted"]`` (or turns the
warning into an error), and can save the partial Dataset first; SIGINT after the call returned
raises KeyboardInterrupt as usual. ``attrs["interrupted"]`` is 1 whenever SIGINT came during
the call, even if every flow had just ended anyway. Not interruptible this way: runs called
from other threads (Python handles signals in the main thread) and runs under a SIGINT
handler of the caller's own (left in place: it runs when the call returns).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import math
import time as _time
import warnings

import numba
import numpy as np
import pandas as pd
import xarray as xr

from . import _euler, _rk45
from . import _flow_args as A
from . import _integrate as I
from . import _rosenbrock as R
from ._lane_width import LANES, flow_width
from ._notice import FlowProgress, interactive, watch_status
from ._signals import sigint_sets
from ._threads import run_workers
from .problem import Problem

__all__ = ["STATUS", "FlowWarning", "gradient_descent", "gradient_flow", "threads"]

#: status code -> meaning (also in each Dataset's ``status.attrs``)
STATUS = dict(enumerate(I.STATUS_MEANINGS))

_EPS = np.finfo(float).eps
_PROGRESS_DELAY = 2.0  # seconds a run lasts before its progress bar shows
# a counter of finished flows that the runs in this context report to instead of a bar of
# their own (lcnfast.study's runner: the study's bar counts a shard's flows as they finish)
_FINISHED_FLOWS = contextvars.ContextVar("lcnfast_finished_flows", default=None)


@contextlib.contextmanager
def counting_finished_flows(counter):
    """Within the block, the runs that show no bar of their own (``progress`` False or None
    off a terminal) report their finished flows to ``counter`` while they run: an object
    with ``done`` (flows counted so far, an int it keeps), ``update(n)`` (n more finished)
    and ``close()``, as :class:`lcnfast._notice.FlowProgress`. ``update`` is called from a
    helper thread while a kernel runs."""
    token = _FINISHED_FLOWS.set(counter)
    try:
        yield counter
    finally:
        _FINISHED_FLOWS.reset(token)


class FlowWarning(RuntimeWarning):
    """Flows that stopped early (max_steps, step_underflow) or a run interrupted by SIGINT."""


@contextlib.contextmanager
def threads(n_threads):
    """Run the enclosed code with ``n_threads`` Numba threads (None: leave as is); restores
    the previous count on exit."""
    if n_threads is None:
        yield numba.get_num_threads()
        return
    n_threads = A.thread_count(n_threads, "n_threads")
    old = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        yield n_threads
    finally:
        numba.set_num_threads(old)


# ----------------------------------------------------------------------------- validation
def _initial_points(problem, w0):
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a lcnfast.Problem, got {type(problem).__name__}")
    W0, _single = problem._params(w0, "w0")  # writable, C-contiguous float64
    # W0 becomes the Dataset's w_init: our own array, not the caller's (which _params returns
    # as it is when already C-contiguous writable float64, and which the caller may reuse)
    return W0.copy() if np.may_share_memory(W0, w0) else W0


def _outputs(K, n, kv, T, Q=0):
    nan = np.nan
    return I.FlowOutputs(
        w_final=np.full((K, n), nan),
        v_final=np.full((K, kv), nan),
        loss_init=np.full(K, nan),
        loss_final=np.full(K, nan),
        grad_norm_init=np.full(K, nan),
        grad_norm_final=np.full(K, nan),
        t_final=np.full(K, nan),
        status=np.full(K, -1, np.int8),
        n_accepted=np.zeros(K, np.int64),
        n_rejected=np.zeros(K, np.int64),
        n_grad_evals=np.zeros(K, np.int64),
        max_loss_increase=np.full(K, nan),
        v_l1_max=np.full(K, nan),
        w_norm_max=np.full(K, nan),
        save_w=np.full((K, T, n), nan),
        save_loss=np.full((K, T), nan),
        save_grad_norm=np.full((K, T), nan),
        t_below=np.full((K, Q), nan),
    )


def _add_levels(ds, levels, out, how):
    ds = ds.assign_coords(loss_level=("loss_level", levels, {
        "long_name": "absolute loss levels of t_below"}))
    ds["t_below"] = (("flow", "loss_level"), out.t_below, {
        "long_name": "first time t with L(w(t)) <= loss_level (0: already at t = 0; NaN: not "
        f"reached before the flow stopped); {how}"})
    return ds


# ----------------------------------------------------------------------------- running
def _progress_wanted(progress):
    """Whether a run shows its bar: ``progress`` None on a terminal or in Jupyter only, True
    also elsewhere (a line every 10 s), False never."""
    if progress is None:
        return interactive()
    if not isinstance(progress, (bool, np.bool_)):
        raise TypeError(f"progress must be True, False or None, got {progress!r}")
    return bool(progress)


def _run(worker, args, n_workers, status, progress, desc):
    """Run ``worker(*args, counter, stop)`` on ``n_workers`` threads
    (:func:`lcnfast._threads.run_workers`); return whether SIGINT came during the run
    (``stop[0]``), see :func:`lcnfast._signals.sigint_sets`. A worker's first run in the
    process is compiled (or loaded from the cache) before, where Ctrl-C interrupts a long
    compile as usual (a compile notice says so if it takes a while: lcnfast._notice). With
    ``progress`` (bool), a bar ``desc`` counts the flows with a ``status`` while the workers
    run (shown once they have run _PROGRESS_DELAY seconds, the compile not counted); without,
    so does the counter of :func:`counting_finished_flows`, if any."""
    counter = np.zeros(1, np.int64)  # the next flow to start, shared by the workers
    stop = np.zeros(1, np.int64)
    args = (*args, counter, stop)
    if not worker.signatures:
        worker.compile(tuple(numba.typeof(a) for a in args))
    bar = (FlowProgress(status.size, desc, True, delay=_PROGRESS_DELAY) if progress
           else _FINISHED_FLOWS.get())
    with sigint_sets(stop), watch_status(status, bar):
        run_workers(worker, args, n_workers, stop)
    return bool(stop[0])


def _conclude(problem, out, W0, interrupted, name, wall):
    """Mark the flows an interrupt left unstarted, give the flows that overflowed the loss of
    their last state as :meth:`Problem.loss` has it, and issue the run's warnings."""
    K = W0.shape[0]
    _final_losses_of_overflowed_flows(problem, out)
    todo = out.status < 0
    if interrupted:
        out.status[todo] = I.INTERRUPTED
        out.t_final[todo] = 0.0
        out.w_final[todo] = W0[todo]
    elif np.any(todo):  # pragma: no cover - every flow ends with a status
        raise RuntimeError(f"{name}: {int(todo.sum())} flows ended without a status")
    early = {
        I.STATUS_MEANINGS[c]: int(np.count_nonzero(out.status == c))
        for c in (I.MAX_STEPS, I.STEP_UNDERFLOW)
    }
    early = {k: v for k, v in early.items() if v}
    n_nonfinite = int(np.count_nonzero(out.status == I.NON_FINITE))
    if n_nonfinite:
        warnings.warn(
            f"{name}: {n_nonfinite} of {K} flows diverged: the loss or the gradient became "
            "inf or NaN (status non_finite; ds.w_final holds the state where it did, "
            "ds.loss_final its loss)" + (
                ", a sign that h is too large there" if name == "gradient_descent" else ""),
            FlowWarning,
            stacklevel=3,
        )
    if early:
        counts = ", ".join(f"{v} {k}" for k, v in early.items())
        warnings.warn(
            f"{name}: {sum(early.values())} of {K} flows stopped before t_end without "
            f"converging ({counts}); see ds.status and ds.t_final (max_steps: raise max_steps; "
            "step_underflow: the step size fell below 10 ulp(t), a stiff or non-smooth spot)",
            FlowWarning,
            stacklevel=3,
        )
    if interrupted:
        n_int = int(np.count_nonzero(out.status == I.INTERRUPTED))
        warnings.warn(
            f"{name} interrupted (SIGINT) after {wall:.3g} s: {n_int} of {K} flows stopped "
            f"early ({int(todo.sum())} not started); the Dataset holds their states so far "
            "(status 'interrupted', t_final = time reached; ds.attrs['interrupted'] = 1)",
            FlowWarning,
            stacklevel=3,
        )


def _final_losses_of_overflowed_flows(problem, out):
    """``loss_final`` of the flows stopped as non_finite at a finite ``w_final``: the kernels'
    value there can be NaN (the Gram formula's inf - inf), :meth:`Problem.loss` gives inf
    (or the finite loss, where only the gradient overflowed)."""
    rows = np.flatnonzero((out.status == I.NON_FINITE) & np.all(np.isfinite(out.w_final), axis=1)
                          & ~(out.loss_final == np.inf))
    if rows.size:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "too large for float64": known
            out.loss_final[rows] = problem.loss(out.w_final[rows])


# ----------------------------------------------------------------------------- public API
def gradient_flow(
    problem,
    w0,
    *,
    method="rk45",
    t_end,
    rtol=1e-8,
    atol=1e-10,
    grad_tol=None,
    max_steps=1_000_000,
    save_times=None,
    loss_levels=None,
    n_threads=None,
    attrs=None,
    progress=None,
):
    """Integrate the gradient flow ``dw/dt = -grad L(w)`` from every row of ``w0``.

    ``method="rk45"``: Dormand-Prince 5(4) (scipy ``RK45`` conventions) with a step size of
    its own for every flow; values at ``save_times`` come from the 4th-order dense output of
    the accepted steps (Shampine's continuous extension, as scipy's ``dense_output``).
    ``method="rosenbrock"``: RODAS (Hairer-Wanner, order 4(3), L-stable) with the exact
    Hessian, the same error control, and its 3rd-order dense output: stable steps whatever
    the Hessian's largest eigenvalue, so that flows near their limits (stiff) take large
    steps and reach ``grad_tol`` down to ~eps lambda_max(Hess L) ||w||. ``method="auto"``:
    per flow, Dormand-Prince (one flow at a time) until Hairer's stiffness detection finds
    its step held by stability (h lambda > 3.25 on 15 accepted steps), RODAS from there on
    until the step is bound by accuracy again (h ||Hess L||_inf <= 1 on 15 accepted steps in
    a row, doubled at every return; see :mod:`lcnfast._rosenbrock`): a flow near its limit
    stays stiff and on RODAS. Saving never changes
    the steps; each saved point costs one extra gradient evaluation (for its loss and
    gradient norm).

    Parameters
    ----------
    problem : Problem
    w0 : array_like (K, n_params) or (n_params,)
        Initial points (finite).
    method : {"rk45", "rosenbrock", "auto"}
        The integrator (explicit Euler is :func:`gradient_descent`).
    t_end : float > 0, inf or None
        Time horizon (same units as the paper's t: L is unnormalised, eq. 1.7); inf or None:
        run every flow until ||grad L|| <= grad_tol (required then) or max_steps.
    rtol, atol : float
        Relative (>= 100 eps; smaller is raised with a warning, as scipy) and absolute
        (>= 0) tolerances of the error norm RMS(err / (atol + rtol max(|w|, |w_new|))).
    grad_tol : float >= 0 or None
        Stop a flow on the first accepted state with ||grad L||_2 <= grad_tol (None: never).
    max_steps : int >= 1
        Cap on attempted (accepted + rejected) steps per flow (an integral float such as 1e6
        is taken).
    save_times : array_like or None
        Strictly increasing times in [0, t_end]; default 11 equally spaced times from 0 to
        t_end (t = 0 alone if t_end is infinite).
    loss_levels : 1-d sequence of finite floats or None
        Absolute loss values: adds ``t_below`` (flow, loss_level), the first time each flow's
        loss is <= the level, located on the accepted steps' continuous extensions (module
        docstring, "Loss levels"). None: nothing computed.
    n_threads : int or None
        Numba threads for this call (None: current setting).
    attrs : dict or None
        Extra Dataset attributes (e.g. seeds); values str, number or list of numbers.
    progress : bool or None
        A bar of finished flows on stderr once the run has lasted 2 s (None: on a terminal
        or in Jupyter only; True: elsewhere too, as a line every 10 s; False: never).

    Returns
    -------
    xarray.Dataset
        See the module docstring for the schema; Ctrl-C returns the partial Dataset
        (``attrs["interrupted"] == 1``, module docstring, "Interruption").
    """
    W0 = _initial_points(problem, w0)
    attrs = A.extra_attrs(attrs)
    if not isinstance(method, str) or method not in ("rk45", "rosenbrock", "auto"):
        raise ValueError(
            f"method must be 'rk45', 'rosenbrock' or 'auto', got {method!r} "
            "(explicit Euler is gradient_descent)"
        )
    t_end = A.t_end_arg(t_end, grad_tol)
    rtol = A.positive_float(rtol, "rtol")
    if rtol >= 1.0:
        raise ValueError(f"rtol must be < 1 (a relative error of 100% or more bounds nothing), "
                         f"got {rtol!r}")
    atol = A.positive_float(atol, "atol", allow_zero=True)
    if rtol < 100 * _EPS:
        warnings.warn(f"rtol={rtol:g} is below 100*eps; using 100*eps", stacklevel=2)
        rtol = 100 * _EPS
    gtol = A.grad_tol_arg(grad_tol)
    max_steps = A.count(max_steps, "max_steps", minimum=1)
    if save_times is None:
        save_t = np.linspace(0.0, t_end, 11) if t_end < math.inf else np.zeros(1)
    else:
        arr = np.asarray(save_times)
        if arr.dtype.kind not in "iuf":  # also refuses "0.5", which numpy would convert
            raise TypeError(f"save_times must be an array of numbers, got {save_times!r}")
        save_t = np.atleast_1d(arr.astype(np.float64))
        if save_t.ndim != 1 or save_t.size == 0:
            raise ValueError("save_times must be a non-empty 1-d array")
        if not np.all(np.isfinite(save_t)) or save_t.min() < 0 or save_t.max() > t_end:
            raise ValueError(f"save_times must lie in [0, t_end] = [0, {t_end}]")
        if np.any(np.diff(save_t) <= 0):
            raise ValueError("save_times must be strictly increasing")
        save_t = np.ascontiguousarray(save_t)
    K, n = W0.shape
    A.check_save_size(K, save_t.size, n)
    levels = A.loss_levels_arg(loss_levels)
    out = _outputs(K, n, problem.arch.k_v, save_t.size, levels.size)
    progress = _progress_wanted(progress)
    with threads(n_threads) as nt:
        t0 = _time.perf_counter()
        # estimate for kernel="auto": 7 evaluations per step, up to 1000 steps per flow
        kern, use = problem._lane_kernel(7 * K * min(max_steps, 1000))
        width = flow_width(K, nt, "rk45", n) if use and method == "rk45" else LANES
        opt = I.RKOptions(t_end, rtol, atol, gtol, max_steps, save_t, levels, width)
        if method == "rk45":
            stopped = _run(_rk45.rk45_worker, (problem.model, kern, use, W0, opt, out), nt,
                           out.status, progress, "gradient_flow (rk45)")
        else:
            stats = R.new_stats(K)
            args = (problem.model, kern, use, W0, opt, out, stats, method == "auto")
            stopped = _run(R.rodas_worker, args, nt, out.status, progress,
                           f"gradient_flow ({method})")
        wall = _time.perf_counter() - t0
    _conclude(problem, out, W0, stopped, "gradient_flow", wall)
    run_attrs = {
        "method": method,
        "t_end": t_end,
        "rtol": rtol,
        "atol": atol,
        "max_steps": max_steps,
    }
    if grad_tol is not None:
        run_attrs["grad_tol"] = gtol
    run_attrs["interrupted"] = int(stopped)
    ds = _dataset(problem, W0, out, save_t, run_attrs, nt, opt.width, wall, attrs)
    ds["newton_step_final"] = ("flow", R.newton_step_norm(problem, out.w_final), {
        "long_name": "||H^+ grad L||_2 at w_final (H = Hess L, eigenvalues below "
        f"{R.NEWTON_RCOND:g} max|eig| left out): estimated distance to the limit"})
    if method != "rk45":
        R.add_statistics(ds, stats, method)
    if loss_levels is not None:
        ds = _add_levels(ds, levels, out, "located in the accepted step on its continuous "
                         "extension (Illinois), accurate to about the integrator's tolerance")
    return ds


def gradient_descent(
    problem,
    w0,
    *,
    h,
    n_steps,
    grad_tol=None,
    save_every=None,
    loss_levels=None,
    n_threads=None,
    attrs=None,
    progress=None,
):
    """Gradient descent ``w_{j+1} = w_j - h grad L(w_j)`` (explicit Euler for eq. 1.7).

    Parameters
    ----------
    problem : Problem
    w0 : array_like (K, n_params) or (n_params,)
    h : float > 0
        Step size (time units of the flow: step j is at time j h). Above 2 / lambda_max of the
        Hessian at a limit the iteration cannot converge there (2-cycles or divergence).
    n_steps : int >= 0
        Steps per flow (integral floats such as 1e5 are taken, here and for ``save_every``).
    grad_tol : float >= 0 or None
        Stop a flow at the first iterate with ||grad L||_2 <= grad_tol (None: never).
    save_every : int >= 1 or None
        Save every ``save_every`` steps, starting at step 0 (default ``max(1, n_steps // 10)``).
    loss_levels : 1-d sequence of finite floats or None
        Absolute loss values: adds ``t_below`` (flow, loss_level) = ``j h`` of the first
        iterate with L <= level (exact; module docstring, "Loss levels").
    n_threads : int or None
    attrs : dict or None
        Extra Dataset attributes.
    progress : bool or None
        As :func:`gradient_flow`.

    Returns
    -------
    xarray.Dataset
        See the module docstring; ``time`` holds ``step * h``. Ctrl-C returns the partial
        Dataset (``attrs["interrupted"] == 1``; ``t_final`` = steps taken times ``h``).
        ``h_lambda_max_final`` = h times the largest eigenvalue of Hess L at ``w_final``
        (numpy ``eigvalsh`` of ``Problem.hessian``; NaN for a non-finite w_final): at a
        minimum the iteration is locally stable only if it is < 2.
    """
    W0 = _initial_points(problem, w0)
    attrs = A.extra_attrs(attrs)
    h = A.positive_float(h, "h")
    n_steps = A.count(n_steps, "n_steps", minimum=0)
    gtol = A.grad_tol_arg(grad_tol)
    if save_every is None:
        save_every = max(1, n_steps // 10)
    save_every = A.count(save_every, "save_every", minimum=1)
    n_save = n_steps // save_every + 1
    K, n = W0.shape
    A.check_save_size(K, n_save, n)
    levels = A.loss_levels_arg(loss_levels)
    out = _outputs(K, n, problem.arch.k_v, n_save, levels.size)
    progress = _progress_wanted(progress)
    with threads(n_threads) as nt:
        t0 = _time.perf_counter()
        kern, use = problem._lane_kernel(K * (n_steps + 1))
        width = flow_width(K, nt, "euler") if use else LANES
        opt = I.EulerOptions(h, n_steps, gtol, save_every, n_save, levels, width)
        stopped = _run(_euler.euler_worker, (problem.model, kern, use, W0, opt, out), nt,
                       out.status, progress, "gradient_descent")
        wall = _time.perf_counter() - t0
    _conclude(problem, out, W0, stopped, "gradient_descent", wall)
    save_t = np.arange(n_save) * save_every * h
    run_attrs = {"method": "euler", "h": h, "n_steps": n_steps, "save_every": save_every}
    if grad_tol is not None:
        run_attrs["grad_tol"] = gtol
    run_attrs["interrupted"] = int(stopped)
    ds = _dataset(problem, W0, out, save_t, run_attrs, nt, opt.width, wall, attrs)
    ds["h_lambda_max_final"] = ("flow", h * _lambda_max(problem, out.w_final), {
        "long_name": "h * largest eigenvalue of Hess L at w_final: gradient descent is locally "
        "stable at a minimum only if this is < 2 (at >= 2 it cannot converge there)"})
    n_unstable = int(np.count_nonzero(ds["h_lambda_max_final"].values >= 2.0))
    if n_unstable:
        warnings.warn(
            f"gradient_descent: {n_unstable} of {K} flows end where h lambda_max(Hess L) >= 2 "
            "(ds.h_lambda_max_final): gradient descent cannot converge to a minimum there "
            "(an oscillation, or the edge of stability); a smaller h follows the flow",
            FlowWarning,
            stacklevel=2,
        )
    if loss_levels is not None:
        ds = _add_levels(ds, levels, out, "gradient descent: step * h of the first iterate "
                         "at or below the level (exact for the iteration)")
    return ds


def _lambda_max(problem, W):
    """Largest eigenvalue of Hess L(w) for every row w of W (K, n) (NaN for non-finite rows)."""
    out = np.full(W.shape[0], np.nan)
    rows = np.flatnonzero(np.all(np.isfinite(W), axis=1))
    for start in range(0, rows.size, 1024):  # chunks: K Hessians of n^2 entries each
        r = rows[start:start + 1024]
        H = problem.hessian(W[r])
        good = np.all(np.isfinite(H), axis=(1, 2))
        if good.any():
            out[r[good]] = np.linalg.eigvalsh(H[good])[:, -1]
    return out


# ----------------------------------------------------------------------------- the Dataset
def param_index(arch):
    """xarray coordinates for the ``param`` dimension: MultiIndex (layer 1..N, tap)."""
    layer = np.concatenate([np.full(ki, i + 1) for i, ki in enumerate(arch.k)])
    tap = np.concatenate([np.arange(ki) for ki in arch.k])
    mi = pd.MultiIndex.from_arrays([layer, tap], names=["layer", "tap"])
    return xr.Coordinates.from_pandas_multiindex(mi, "param")


def balancedness(arch, W):
    """delta_i = ||w^(i+1)||^2 - ||w^(i)||^2 (Lemma 3.3) for W (K, n): (K, N - 1); inf or NaN
    where a squared norm exceeds the float range (a diverged flow: its status says so)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sq = np.stack(
            [np.sum(W[:, arch.layer_slice(i)] ** 2, axis=1) for i in range(arch.depth)], 1
        )
        return np.diff(sq, axis=1)


def _versions(n_threads, lanes):
    from . import __version__

    return {
        "lcnfast_version": __version__,
        "numba_version": numba.__version__,
        "numpy_version": np.__version__,
        # the flows run on n_threads Python threads, one worker kernel each (lcnfast._threads),
        # not on a Numba threading layer
        "threading_layer": "threads",
        "n_threads": int(n_threads),
        # flows side by side per worker (LANES, or more through the generated kernel:
        # lcnfast._lane_width.flow_width)
        "lanes": int(lanes),
    }


def _dataset(problem, W0, out, save_t, run_attrs, n_threads, lanes, wall, extra_attrs):
    arch = problem.arch
    loss = problem.loss_fn
    F, P, T, V, R = "flow", "param", "time", "v_tap", "pair"
    per_flow = {
        "loss_init": ("loss at t = 0", out.loss_init),
        "loss_final": ("loss at t_final", out.loss_final),
        "grad_norm_init": ("||grad L||_2 at t = 0", out.grad_norm_init),
        "grad_norm_final": ("||grad L||_2 at t_final", out.grad_norm_final),
        "t_final": ("time at which the flow stopped", out.t_final),
        "n_accepted": ("accepted steps", out.n_accepted),
        "n_rejected": ("rejected steps", out.n_rejected),
        "n_grad_evals": ("gradient evaluations (dense-output saves included)", out.n_grad_evals),
        "max_loss_increase": (
            "max over accepted steps of L(new) - L(old); <= 0 if the loss never increased",
            out.max_loss_increase,
        ),
        "v_l1_max": ("max over accepted states of ||v||_1 (Theorem 3.4)", out.v_l1_max),
        "w_norm_max": ("max over accepted states of ||w||_2", out.w_norm_max),
    }
    data_vars = {name: (F, arr, {"long_name": ln}) for name, (ln, arr) in per_flow.items()}
    data_vars.update(
        w_init=((F, P), W0, {"long_name": "initial parameters"}),
        w_final=((F, P), out.w_final, {"long_name": "final parameters"}),
        v_final=((F, V), out.v_final, {"long_name": "final filter pi(w_final) (Prop. 2.1)"}),
        status=(
            F,
            out.status,
            {
                "long_name": "why the flow stopped",
                "flag_values": np.arange(len(I.STATUS_MEANINGS), dtype=np.int8),
                "flag_meanings": " ".join(I.STATUS_MEANINGS),
            },
        ),
        delta_init=(
            (F, R),
            balancedness(arch, W0),
            {"long_name": "balancedness ||w^(i+1)||^2 - ||w^(i)||^2 at t = 0 (Lemma 3.3)"},
        ),
        delta_final=(
            (F, R),
            balancedness(arch, out.w_final),
            {"long_name": "balancedness ||w^(i+1)||^2 - ||w^(i)||^2 at t_final (Lemma 3.3)"},
        ),
        w=((F, T, P), out.save_w, {"long_name": "parameters at the saved times (NaN after stop)"}),
        loss=((F, T), out.save_loss, {"long_name": "loss at the saved times (NaN after stop)"}),
        grad_norm=(
            (F, T),
            out.save_grad_norm,
            {"long_name": "||grad L||_2 at the saved times (NaN after stop)"},
        ),
    )
    coords = param_index(arch)
    coords = coords.assign(
        flow=np.arange(W0.shape[0]),
        time=(T, save_t, {"long_name": "time t of the flow (Euler: step * h)"}),
        v_tap=np.arange(arch.k_v),
        pair=(R, np.arange(1, arch.depth), {"long_name": "delta_i compares layers i and i+1"}),
    )
    attrs = {
        "title": "lcnfast gradient flows",
        "architecture": json.dumps(arch.to_dict()),
        "loss": json.dumps({"name": loss.name, **loss.param_dict}),
        "m": problem.m,
        "data_sha256": problem._data_sha256,
        **run_attrs,
        "gradient_kernel": problem.kernel_in_use,
        **_versions(n_threads, lanes),
        "wall_time_s": wall,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    attrs.update(extra_attrs)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
