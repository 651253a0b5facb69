"""Throughput of batched gradient evaluations, against numpy and against the machine's matmul.

Run from the repository root::

    python studies/benchmark.py            # full run (~9 minutes on 2 AVX2 cores)
    python studies/benchmark.py --quick    # short run (~35 s once compiled; the test suite
                                           # runs it with --repeats 1 for its checks)
    python studies/benchmark.py --json out.json

Two cases (README, "How it is fast"), each a batch of K parameter vectors from
``lcnfast.data.initial_filters`` on ``lcnfast.data.teacher`` data, timed through
``Problem.grad`` (gradient evaluations, the issue's measure) and ``Problem.loss_and_grad``
(what a flow step needs; on the data path it also sums the losses):

(a) d0=32, k=(3,3,3), s=(1,1,1), m=128, square loss (window-Gram path). Target: >= 2e7
    gradients/s on 2 cores.
(b) d0=64, k=(5,5,5), s=(1,1,1), m=256, log-cosh (alpha=1) (data path). Target: >= 50% of the
    float64 matmul rate measured in the same run, counting 4 d_N m k_v flops per gradient
    (Z = P v and G = P^T l'(R), P the (d_N m) x k_v patch matrix).

Then the flows: gradient descent, rk45 against scipy and the parallel efficiency on (a)'s
square-loss problem (:func:`bench_flows`), and gradient descent on (b)'s log-cosh problem,
1024 flows x 2000 steps, the form in which issue 18 states the 50% target
(:func:`bench_data_path_gd`; its steps evaluate the loss values too), and the same flows with
the square loss through the same data path (``use_gram=False``: convolution and correlation
with g = 2r, no tanh, no log), whose rate bounds any loss's on this data path.

``Problem.loss_and_grad`` runs, for (a), the straight-line kernel generated for the
architecture (``lcnfast._codegen``; ``kernel="auto"`` switches to it during the warm-up, and
the generic lane kernels are timed next to it), for (b) the lane kernels of ``lcnfast._lanes``
(the pass over the data goes lane by lane through the one-flow kernel). Each case also times ``lcnfast._kernels._loss_grad_batch_fast`` (one flow
at a time, always the fast data path, what ``loss_grad_ws`` runs when
``_data_path._DATA_PATH_FAST`` is on) and a plain numpy implementation written as a researcher
would (polynomial products per layer, patch matrix, ``G = P^T l'(R)``, chain rule), checked
against lcnfast before it is timed.

Timing: every figure is the best of several repeats after a warm-up call (the machine may be
shared, so the best run is the least disturbed one). The compile time reported is the time of
the first call in this process; the numba on-disk cache may already hold the kernels (then the
first call only loads them), which is reported as "cache warm".
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

# Import the lcnfast of this repository (python puts studies/ first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numpy.lib.stride_tricks import sliding_window_view  # noqa: E402

import lcnfast  # noqa: E402
from lcnfast import Architecture, Problem, data, losses  # noqa: E402
from lcnfast import _kernels  # noqa: E402
from lcnfast.problem import n_chunks  # noqa: E402

from bench_host import (OPENBLAS_VARS, best_time, best_times, blas_info,  # noqa: E402
                        load_average, matmul_call, matmul_gflops, positive_int,
                        without_openblas_coretype)


# ----------------------------------------------------------------------------- kernel cache
def _dispatchers():
    mods = [_kernels]
    for name in ("_data_path", "_data_entry", "_loss_rows", "_simd", "_lanes"):
        try:
            mods.append(importlib.import_module(f"lcnfast.{name}"))
        except ImportError:  # pragma: no cover
            pass
    seen = set()
    for mod in mods:
        for obj in vars(mod).values():
            if isinstance(obj, numba.core.registry.CPUDispatcher) and id(obj) not in seen:
                seen.add(id(obj))
                yield obj


def cache_counts():
    hits = misses = 0
    for d in _dispatchers():
        hits += sum(d.stats.cache_hits.values())
        misses += sum(d.stats.cache_misses.values())
    return hits, misses


# ----------------------------------------------------------------------------- numpy reference
def _poly_mul_batch(a, b):
    """Coefficients of a * b for batches of polynomials a (K, na), b (K, nb)."""
    K, na = a.shape
    out = np.zeros((K, na + b.shape[1] - 1))
    for j in range(b.shape[1]):
        out[:, j : j + na] += a * b[:, j : j + 1]
    return out


def _loss_numpy(loss, R):
    """(l(R), l'(R)) elementwise, stable formulas."""
    p = loss.params
    if loss.name == "square":
        return R * R, 2.0 * R
    if loss.name == "log_cosh":
        a = p[0] * np.abs(R)
        return (a + np.log1p(np.exp(-2.0 * a)) - math.log(2.0)) / p[0], np.tanh(p[0] * R)
    if loss.name == "pseudo_huber":
        u = R / p[0]
        h = np.hypot(1.0, u)
        return p[0] * h, u / h
    raise ValueError(f"the numpy reference covers square, log_cosh and pseudo_huber, not {loss.name}")


class NumpyReference:
    """Batched loss and gradient in plain numpy, the way one writes it without a kernel."""

    def __init__(self, arch, X, Y, loss):
        self.arch = arch
        self.loss = loss
        # patch matrix P (m d_N, k_v): row (i, j) is the window of sample i at output j
        win = sliding_window_view(X.T, arch.k_v, axis=1)[:, :: arch.s_v, :]  # (m, d_N, k_v)
        self.P = np.ascontiguousarray(win.reshape(-1, arch.k_v))
        self.y = np.ascontiguousarray(Y.T).reshape(-1)

    def layer_polys(self, W):
        a = self.arch
        polys = []
        for i in range(a.depth):
            S = a.dilations[i]
            wi = W[:, a.offsets[i] : a.offsets[i + 1]]
            p = np.zeros((W.shape[0], (a.k[i] - 1) * S + 1))
            p[:, ::S] = wi
            polys.append(p)
        return polys

    def loss_and_grad(self, W):
        a = self.arch
        K = W.shape[0]
        polys = self.layer_polys(W)
        # prefix and suffix products; v = all of them
        pre = [np.ones((K, 1))]
        for p in polys:
            pre.append(_poly_mul_batch(pre[-1], p))
        suf = [np.ones((K, 1))]
        for p in polys[::-1]:
            suf.append(_poly_mul_batch(suf[-1], p))
        suf = suf[::-1]  # suf[i] = product of layers i..N-1
        V = pre[-1]  # (K, k_v)
        Z = self.P @ V.T  # (m d_N, K)
        R = Z - self.y[:, None]
        lv, ld = _loss_numpy(self.loss, R)
        L = lv.sum(axis=0)
        Gv = (self.P.T @ ld).T  # (K, k_v) = dL/dv
        grad = np.empty_like(W)
        for i in range(a.depth):
            q = _poly_mul_batch(pre[i], suf[i + 1])  # all layers but i
            S = a.dilations[i]
            nq = q.shape[1]
            for t in range(a.k[i]):
                grad[:, a.offsets[i] + t] = np.einsum("kn,kn->k", Gv[:, t * S : t * S + nq], q)
        return L, grad


# ----------------------------------------------------------------------------- cases
CASES = {
    "a": dict(d0=32, k=(3, 3, 3), s=(1, 1, 1), m=128, loss=("square", ()), target="2e7 grads/s"),
    "b": dict(d0=64, k=(5, 5, 5), s=(1, 1, 1), m=256, loss=("log_cosh", (1.0,)),
              target=">= 50% of matmul rate"),
}


def run_case(name, spec, K, K_ref, repeats, mm):
    arch = Architecture(spec["d0"], spec["k"], spec["s"])
    loss = getattr(losses, spec["loss"][0])(*spec["loss"][1])
    td = data.teacher(arch, spec["m"], seed=0)
    problem = Problem(arch, td.X, td.Y, loss)
    W = data.initial_filters(arch, K, seed=1)
    flops = 4.0 * arch.d_N * spec["m"] * arch.k_v

    # first call in this process: compile (cold cache) or load from the cache (warm)
    h0, m0 = cache_counts()
    t0 = time.perf_counter()
    problem.loss_and_grad(W[:8])
    first_call = time.perf_counter() - t0
    h1, m1 = cache_counts()
    t0 = time.perf_counter()
    L1 = np.empty(8)
    G1 = np.empty((8, arch.n_params))
    _kernels._loss_grad_batch_fast(problem.model, W[:8], L1, G1, 1)
    first_call_kernel = time.perf_counter() - t0
    h2, m2 = cache_counts()

    # numpy reference, checked against lcnfast before timing
    ref = NumpyReference(arch, td.X, td.Y, loss)
    Wr = W[:K_ref]
    L_np, G_np = ref.loss_and_grad(Wr)
    L_lc, G_lc = problem.loss_and_grad(Wr)
    rel_L = float(np.max(np.abs(L_np - L_lc) / np.abs(L_lc)))
    rel_G = float(np.max(np.linalg.norm(G_np - G_lc, axis=1) / np.linalg.norm(G_lc, axis=1)))

    Lk = np.empty(K)
    Gk = np.empty_like(W)
    nc = n_chunks(W)
    mm_fn, mm_flops = mm
    fns = {
        "grad": lambda: problem.grad(W),
        "loss_and_grad": lambda: problem.loss_and_grad(W),
        "kernel": lambda: _kernels._loss_grad_batch_fast(problem.model, W, Lk, Gk, nc),
        "matmul": mm_fn,
    }
    if problem.use_gram:  # the generic lane kernels, for comparison
        generic = Problem(arch, td.X, td.Y, loss, kernel="generic")
        fns["generic"] = lambda: generic.loss_and_grad(W)
    # interleaved: the ratios, and the % of matmul, hold; the pause lets OpenBLAS's threads,
    # which spin for a while after a product, go to sleep before the next function runs
    t = best_times(fns, repeats, settle=0.3)
    kernel_in_use = problem.kernel_in_use  # "auto" has switched by now where it applies
    t_prob, t_grad, t_kern = t["loss_and_grad"], t["grad"], t["kernel"]
    t_generic = t.get("generic")
    mm_gflops = mm_flops / t["matmul"] / 1e9
    t_np = best_time(lambda: ref.loss_and_grad(Wr), max(3, repeats // 2))
    rel_kern_G = float(np.max(np.linalg.norm(Gk - problem.grad(W), axis=1)
                              / np.linalg.norm(problem.grad(W), axis=1)))

    r_prob = K / t_prob
    r_grad = K / t_grad
    r_kern = K / t_kern
    r_np = K_ref / t_np
    out = dict(
        case=name, arch=repr(arch), m=spec["m"], loss=repr(loss), K=K, k_v=arch.k_v, d_N=arch.d_N,
        use_gram=problem.use_gram, flops_per_grad=flops, target=spec["target"],
        matmul_gflops=mm_gflops,
        first_call_s=first_call, first_call_cache_hits=h1 - h0, first_call_cache_misses=m1 - m0,
        first_call_kernel_s=first_call_kernel, kernel_cache_hits=h2 - h1,
        kernel_cache_misses=m2 - m1,
        problem_grads_per_s=r_prob, problem_gflops=r_prob * flops / 1e9,
        problem_kernel=kernel_in_use,
        generic_grads_per_s=K / t_generic if t_generic else None,
        problem_frac_matmul=r_prob * flops / 1e9 / mm_gflops,
        grad_grads_per_s=r_grad, grad_gflops=r_grad * flops / 1e9,
        grad_frac_matmul=r_grad * flops / 1e9 / mm_gflops,
        speedup_grad_vs_numpy=r_grad / r_np,
        kernel_grads_per_s=r_kern, kernel_gflops=r_kern * flops / 1e9,
        kernel_frac_matmul=r_kern * flops / 1e9 / mm_gflops,
        numpy_grads_per_s=r_np, numpy_K=K_ref, numpy_gflops=r_np * flops / 1e9,
        speedup_problem_vs_numpy=r_prob / r_np, speedup_kernel_vs_numpy=r_kern / r_np,
        numpy_check_rel_err_L=rel_L, numpy_check_rel_err_G=rel_G,
        kernel_vs_problem_rel_err_G=rel_kern_G, load=load_average(),
    )
    return out


def _cache_word(hits, misses):
    if misses == 0 and hits > 0:
        return f"cache warm ({hits} kernels loaded)"
    if hits == 0 and misses > 0:
        return f"cache cold ({misses} kernels compiled)"
    if hits == 0 and misses == 0:
        return "already compiled in this process"
    return f"cache partly warm ({hits} loaded, {misses} compiled)"


def report(res):
    f = res
    mm = f["matmul_gflops"]
    data_path = not f["use_gram"]
    print(f"\n({f['case']}) {f['arch']}, m={f['m']}, {f['loss']}"
          f"{' [data path]' if data_path else ' [Gram path]'}, K={f['K']}, "
          f"k_v={f['k_v']}, d_N={f['d_N']}"
          + (f", {f['flops_per_grad']:.0f} flops/gradient (4 d_N m k_v)" if data_path else ""))
    print(f"  first call Problem.loss_and_grad: {f['first_call_s']:.3f} s, "
          f"{_cache_word(f['first_call_cache_hits'], f['first_call_cache_misses'])}")
    print(f"  first call _kernels._loss_grad_batch_fast: {f['first_call_kernel_s']:.3f} s, "
          f"{_cache_word(f['kernel_cache_hits'], f['kernel_cache_misses'])}")

    if data_path:
        print(f"  matmul in the same interleaved rounds: {mm:.1f} GFLOP/s")

    def line(label, rate, gflops, speedup, note=""):
        perf = (f"{gflops:7.2f} GFLOP/s {100 * gflops / mm:5.1f}% of matmul  " if data_path else "")
        sp = f"x{speedup:.1f} vs numpy" if speedup is not None else ""
        print(f"  {label:30s} {rate:12.4g} grads/s  {perf}{sp}{note}")

    line(f"Problem.grad [{f['problem_kernel']}]", f["grad_grads_per_s"], f["grad_gflops"],
         f["speedup_grad_vs_numpy"])
    line(f"Problem.loss_and_grad [{f['problem_kernel']}]", f["problem_grads_per_s"],
         f["problem_gflops"], f["speedup_problem_vs_numpy"])
    if f["generic_grads_per_s"]:
        line("  same, kernel='generic'", f["generic_grads_per_s"], 0.0,
             f["generic_grads_per_s"] / f["numpy_grads_per_s"])
    line("one-flow fast kernel", f["kernel_grads_per_s"], f["kernel_gflops"],
         f["speedup_kernel_vs_numpy"], "   (_kernels._loss_grad_batch_fast)")
    line(f"numpy reference (K={f['numpy_K']})", f["numpy_grads_per_s"], f["numpy_gflops"], None)
    print(f"  checks: numpy vs Problem max rel err L {f['numpy_check_rel_err_L']:.1e}, "
          f"G {f['numpy_check_rel_err_G']:.1e}; fast kernel vs Problem G "
          f"{f['kernel_vs_problem_rel_err_G']:.1e}")
    print(f"  target: {f['target']}")


# ----------------------------------------------------------------------------- flows (issue 3)
def bench_flows(quick, repeats):
    """Gradient descent and Dormand-Prince on the square-loss case, 4096 flows (quick: fewer).

    (a) gradient descent, h = 1e-3, 20,000 steps: gradient evaluations per second (best of 3
        runs in each of 2 rounds);
    (b) rk45, rtol = 1e-8, atol = 1e-10, t_end = 200, one run in each round after (a)'s: wall
        time (the best) and steps per flow, next to
        scipy's solve_ivp(RK45) on the same flows with lcnfast's gradient, one flow at a time
        (a subset timed, scaled to all flows);
    (c) even flows (gradient descent, every flow the same steps) and (d) uneven flows
        (stopping at very different times via grad_tol), each with 1 and with all threads,
        alternating, best of 3 rounds: parallel efficiency T_1 / (n_threads T_n).
    Each figure carries the load average read right after it.
    """
    from scipy.integrate import solve_ivp

    arch = Architecture(32, (3, 3, 3), (1, 1, 1))
    td = data.teacher(arch, 128, noise=0.1, seed=0)
    prob = Problem(arch, td.X, td.Y, losses.square())
    K = 256 if quick else 4096
    n_gd = 2000 if quick else 20_000
    t_end = 20.0 if quick else 200.0
    w0 = data.initial_filters(arch, K, scale=0.5, seed=1)
    out = {"K": K}

    # compile / load both gradient kernels (the big runs below ask for enough evaluations for
    # kernel="auto" to pick the generated one)
    lcnfast.gradient_descent(prob, w0[:16], h=1e-3, n_steps=10)
    lcnfast.gradient_descent(Problem(arch, td.X, td.Y, losses.square(), kernel="generated"),
                             w0[:16], h=1e-3, n_steps=10)
    lcnfast.gradient_flow(prob, w0[:16], t_end=0.1)  # compile / load
    # (a) and (b) in alternating rounds (quick: one), each figure its best: gradient descent
    # the best of 3 runs (~1 s each) per round, then one rk45 run (~40 s). Issue 18's ratio
    # compares them: one rk45 run against gradient descent's best read 84% and 66% in two
    # runs of the same code on the shared host (the second with the second core contested:
    # even flows 79% efficient in the same run); rounds give rk45 a best too.
    dt, dt_rk, load_gd, load_rk = math.inf, math.inf, None, None
    for _ in range(1 if quick else 2):
        for _ in range(1 if quick else 3):
            t0 = time.perf_counter()
            gd = lcnfast.gradient_descent(prob, w0, h=1e-3, n_steps=n_gd, save_every=n_gd)
            t = time.perf_counter() - t0
            if t < dt:
                dt, load_gd = t, load_average()
        t0 = time.perf_counter()
        rk = lcnfast.gradient_flow(prob, w0, t_end=t_end, rtol=1e-8, atol=1e-10,
                                   save_times=[0.0, t_end])
        t = time.perf_counter() - t0
        if t < dt_rk:
            dt_rk, load_rk = t, load_average()
    evals = int(gd.n_grad_evals.sum())
    out["gd"] = {"n_steps": n_gd, "wall_s": dt, "grad_evals_per_s": evals / dt,
                 "status_counts": np.bincount(gd.status.values, minlength=5).tolist(),
                 "load": load_gd}
    out["gd"]["gradient_kernel"] = gd.attrs["gradient_kernel"]
    rounds = "" if quick else ", best of 2 rounds x 3 runs"
    print(f"  (a) gradient descent, h=1e-3, {n_gd} steps, K={K}: {dt:.2f} s, "
          f"{evals / dt:.3g} gradient evaluations/s [{gd.attrs['gradient_kernel']} kernel] "
          f"(load {out['gd']['load']:.1f}{rounds})")

    dt = dt_rk
    steps = rk.n_accepted.values + rk.n_rejected.values
    evals = int(rk.n_grad_evals.sum())
    n_sub = 2 if quick else 8
    t0 = time.perf_counter()
    sp_steps = []
    for f in range(n_sub):
        sol = solve_ivp(lambda t, y: -prob.grad(y), (0.0, t_end), w0[f], method="RK45",
                        rtol=1e-8, atol=1e-10)
        sp_steps.append(sol.t.size - 1)
    dt_sp = (time.perf_counter() - t0) / n_sub * K
    out["rk45"] = {"t_end": t_end, "wall_s": dt, "grad_evals_per_s": evals / dt,
                   "steps_per_flow_mean": float(steps.mean()),
                   "accepted_per_flow_mean": float(rk.n_accepted.mean()),
                   "rejected_per_flow_mean": float(rk.n_rejected.mean()),
                   "scipy_wall_s_scaled": dt_sp, "speedup_vs_scipy": dt_sp / dt,
                   "scipy_accepted_subset": sp_steps,
                   "lcnfast_accepted_subset": rk.n_accepted.values[:n_sub].tolist(),
                   "load": load_rk}
    out["rk45"]["gradient_kernel"] = rk.attrs["gradient_kernel"]
    print(f"  (b) rk45, rtol=1e-8, atol=1e-10, t_end={t_end:g}, K={K}: {dt:.2f} s, "
          f"{steps.mean():.0f} steps/flow ({rk.n_rejected.mean():.0f} rejected), "
          f"{evals / dt:.3g} gradient evaluations/s [{rk.attrs['gradient_kernel']} kernel] "
          f"(load {out['rk45']['load']:.1f}{rounds and ', best of 2 rounds'})")
    print(f"      scipy solve_ivp(RK45) one flow at a time: {dt_sp:.1f} s for {K} flows "
          f"(timed on {n_sub}, scaled) -> lcnfast {dt_sp / dt:.0f}x faster; accepted steps "
          f"scipy {sp_steps} vs lcnfast {rk.n_accepted.values[:n_sub].tolist()}")

    # (c) even flows: gradient descent, every flow the same number of steps
    nt = numba.get_num_threads()
    rounds = 3  # a fraction of a second each at the quick sizes
    Ke, n_e = (256, 10_000) if quick else (1024, 10_000)
    times = _thread_rounds(rounds, nt, lambda n_thr: lcnfast.gradient_descent(
        prob, w0[:Ke], h=1e-3, n_steps=n_e, save_every=n_e, n_threads=n_thr))
    eff = times[1] / (nt * times[nt])
    out["even_balance"] = {"K": Ke, "n_steps": n_e, "threads": nt, "rounds": rounds,
                           "wall_1_s": times[1], "wall_n_s": times[nt], "efficiency": eff,
                           "load": load_average()}
    print(f"  (c) even flows (gradient descent, {n_e} steps each), K={Ke}: 1 thread "
          f"{times[1]:.2f} s, {nt} threads {times[nt]:.2f} s (best of {rounds}, alternating) "
          f"-> parallel efficiency {eff:.0%} (load {out['even_balance']['load']:.1f})")

    # (d) uneven flows: grad_tol makes flows stop anywhere from t ~ 1 to t_end
    Kc = 512 if quick else 2048
    wc = data.initial_filters(arch, Kc, scale=0.7, seed=2)
    kw = dict(t_end=t_end, grad_tol=1e-3, save_times=[0.0])
    runs = []
    times = _thread_rounds(rounds, nt, lambda n_thr: runs.append(
        lcnfast.gradient_flow(prob, wc, n_threads=n_thr, **kw)) or runs[-1])
    spread = runs[-1].n_grad_evals.values
    eff = times[1] / (nt * times[nt])
    out["load_balance"] = {"K": Kc, "threads": nt, "rounds": rounds, "wall_1_s": times[1],
                           "wall_n_s": times[nt], "efficiency": eff,
                           "evals_min": int(spread.min()),
                           "evals_median": float(np.median(spread)), "evals_max": int(spread.max()),
                           "load": load_average()}
    print(f"  (d) uneven flows (grad_tol=1e-3; gradient evaluations per flow from {spread.min()} "
          f"to {spread.max()}, median {np.median(spread):.0f}), K={Kc}: 1 thread {times[1]:.2f} s, "
          f"{nt} threads {times[nt]:.2f} s (best of {rounds}, alternating) -> parallel "
          f"efficiency {eff:.0%} (load {out['load_balance']['load']:.1f})")
    return out


def _thread_rounds(rounds, nt, run):
    """The integrator's own wall time (``attrs["wall_time_s"]``: no Dataset, no Hessians) of
    ``run(n_threads)`` with 1 and with ``nt`` threads, alternating over ``rounds`` rounds,
    best of each: {1: seconds, nt: seconds}. One run each measured noise, not scaling (on a
    quiet 2-core host, 2026-12-07: 1 thread 0.40-0.71 s over four runs of the same flows)."""
    best = {}
    for _ in range(rounds):
        for n_thr in sorted({1, nt}):
            wall = run(n_thr).attrs["wall_time_s"]
            best[n_thr] = min(best.get(n_thr, math.inf), wall)
    return best


# ----------------------------------------------------------------------------- log-cosh flows
def bench_data_path_gd(quick, mm, square=False):
    """Gradient descent on case (b)'s problem, as issue 18 states its log-cosh target:
    (64; 5,5,5), m=256, log-cosh, 1024 flows x 2000 steps, h = 1e-3 (quick: 64 x 200). Every
    step evaluates the loss as well as the gradient (the flow's records: loss levels, the
    largest loss increase), so this is the rate of ``Problem.loss_and_grad``'s data path, not
    of ``Problem.grad``'s. GFLOP/s counts 4 d_N m k_v flops per evaluation; the matmul is
    timed right after each run (best of 5). The fastest of 2 rounds is reported against the
    fastest matmul of the two: each the least disturbed measure of its kind (taking the
    round with the best fraction instead let one matmul slowed by another job inflate it:
    46.5% against a matmul of 45.7 GFLOP/s, in a run whose other matmuls read 78-87). Its run keeps both cores busy for ~25 s,
    which lifts the load average by itself, so its verdict judges the host by the CPU time
    this process got instead (``cpu_share``: CPU seconds over wall seconds times threads).

    ``square=True``: the same data, flows and data path with the square loss
    (``use_gram=False``; 1000 steps, h = 1e-6 so that no flow diverges): convolution and
    correlation with g = 2r and the sum of r^2 in between, no tanh, no log. Any loss on the
    data path does this work and more per step, so its rate bounds theirs."""
    spec = CASES["b"]
    arch = Architecture(spec["d0"], spec["k"], spec["s"])
    td = data.teacher(arch, spec["m"], seed=0)
    if square:
        prob = Problem(arch, td.X, td.Y, losses.square(), use_gram=False)
        h = 1e-6
    else:
        prob = Problem(arch, td.X, td.Y, getattr(losses, spec["loss"][0])(*spec["loss"][1]))
        h = 1e-3
    K, n_steps = (64, 200) if quick else (1024, 1000 if square else 2000)
    w0 = data.initial_filters(arch, K, seed=1)
    flops = 4.0 * arch.d_N * spec["m"] * arch.k_v
    mm_fn, mm_flops = mm
    lcnfast.gradient_descent(prob, w0[:16], h=h, n_steps=10)  # compile / load
    best = None
    mm_best = 0.0
    for _ in range(2):
        t0 = time.perf_counter()
        c0 = time.process_time()
        ds = lcnfast.gradient_descent(prob, w0, h=h, n_steps=n_steps, save_every=n_steps)
        dt = time.perf_counter() - t0
        share = (time.process_time() - c0) / (dt * numba.get_num_threads())
        rate = int(ds.n_grad_evals.sum()) / dt
        mm_best = max(mm_best, mm_flops / best_time(mm_fn, 5) / 1e9)
        round_ = {"K": K, "n_steps": n_steps, "wall_s": dt, "grad_evals_per_s": rate,
                  "gflops": rate * flops / 1e9, "load": load_average(), "cpu_share": share}
        if best is None or rate > best["grad_evals_per_s"]:
            best = round_
    best.update(matmul_gflops=mm_best, frac_matmul=best["gflops"] / mm_best)
    what = ("(f) the same, square loss through the data path (use_gram=False), h=1e-6"
            if square else f"(e) log-cosh {arch!r}, m={spec['m']}, gradient descent h=1e-3")
    print(f"  {what}, {n_steps} steps, "
          f"K={K}: {best['wall_s']:.2f} s, {best['grad_evals_per_s']:.3g} evaluations/s, "
          f"{best['gflops']:.1f} GFLOP/s = {100 * best['frac_matmul']:.1f}% of the faster matmul "
          f"of the 2 rounds ({best['matmul_gflops']:.1f} GFLOP/s; load {best['load']:.1f}, "
          f"this process got {best['cpu_share']:.0%} of {numba.get_num_threads()} threads' time)")
    return best


def _verdict(ok, load, cpu_share=None):
    """'met' / 'NOT met', and on a busy host a note that the figure is not conclusive: the
    other jobs took part of the cores. Busy: the load average above the CPUs minus one half,
    or, for a run long enough to lift the load average itself, ``cpu_share`` (the CPU time
    the run got over its wall time times its threads) below 90%."""
    if ok:
        return "met"
    ncpu = os.cpu_count() or 1
    if cpu_share is not None:
        if cpu_share < 0.9:
            return f"NOT met, host busy (the run got {cpu_share:.0%} of its threads' time): not conclusive"
        return "NOT met"
    if load > ncpu - 0.5:
        return f"NOT met, host busy (load {load:.1f} on {ncpu} CPUs): not conclusive"
    return "NOT met"


def issue18_targets(a, b, flows, lc_gd, dp_gd, mm):
    """Each speed target of issue 18 with its figure, the matmul rate and the load average
    of the same run (the targets are for 2 cores, after warm-up, K = 4096: --quick runs
    smaller batches, so its figures do not decide them)."""
    gd, rk = flows["gd"], flows["rk45"]
    even, uneven = flows["even_balance"], flows["load_balance"]
    ratio = rk["grad_evals_per_s"] / gd["grad_evals_per_s"]
    rows = [
        ("gradient descent >= 5e7 gradient evaluations/s", f"{gd['grad_evals_per_s']:.3g}/s",
         gd["grad_evals_per_s"] >= 5e7, gd["load"], mm),
        ("rk45 >= 80% of gradient descent's evaluations/s", f"{ratio:.0%}", ratio >= 0.8,
         max(gd["load"], rk["load"]), mm),
        ("batched Problem.grad, square loss >= 6e7/s", f"{a['grad_grads_per_s']:.3g}/s",
         a["grad_grads_per_s"] >= 6e7, a["load"], a["matmul_gflops"]),
        ("log-cosh (64; 5,5,5), gradient descent >= 50% of matmul",
         f"{100 * lc_gd['frac_matmul']:.1f}%", lc_gd["frac_matmul"] >= 0.5, lc_gd["load"],
         lc_gd["matmul_gflops"], lc_gd["cpu_share"]),
        ("  the same problem, Problem.grad (no loss values)",
         f"{100 * b['grad_frac_matmul']:.1f}%", b["grad_frac_matmul"] >= 0.5, b["load"],
         b["matmul_gflops"]),
        ("  the same flows, square loss on the data path",
         f"{100 * dp_gd['frac_matmul']:.1f}%", None, dp_gd["load"], dp_gd["matmul_gflops"]),
        (f"parallel efficiency, even flows, {even['threads']} threads >= 90%",
         f"{even['efficiency']:.0%}", even["efficiency"] >= 0.9, even["load"], mm),
        (f"parallel efficiency, uneven flows, {uneven['threads']} threads >= 90%",
         f"{uneven['efficiency']:.0%}", uneven["efficiency"] >= 0.9, uneven["load"], mm),
    ]
    print(f"\nissue 18 targets (K={flows['K']} flows; the targets are set for K=4096, 2 cores)")
    for label, fig, ok, load, mm_rate, *share in rows:
        verdict = ("no target: the bound of any loss's rate on this data path" if ok is None
                   else _verdict(ok, load, *share))
        print(f"  {label:58s} {fig:>9s}  matmul {mm_rate:5.1f} GFLOP/s  load {load:4.1f}  "
              f"{verdict}")
    _absolute_targets_scaled(gd["grad_evals_per_s"], mm, a["grad_grads_per_s"],
                             a["matmul_gflops"])


# numpy's float64 matmul on the host where issue 18 set its absolute targets (2 cores with
# AVX-512; studies/benchmark.py's rounds there, 2026-12-06: 136-157 GFLOP/s)
TARGET_HOST_MATMUL = 146.0


def _absolute_targets_scaled(gd_rate, gd_mm, grad_rate, grad_mm):
    """On a host whose matmul runs well below the targets' host's, also print the absolute
    targets (5e7, 6e7 evaluations/s) scaled by the ratio of the matmul rates: whether the
    engine keeps its speed relative to the machine, which an absolute figure cannot tell on a
    slower CPU (an AVX2-only 2-core host, 2026-12-07: matmul 76-88 GFLOP/s). The verdicts
    above stay those of the issue's own figures."""
    if min(gd_mm, grad_mm) >= 0.8 * TARGET_HOST_MATMUL:
        return
    print(f"  this host's matmul is below the {TARGET_HOST_MATMUL:.0f} GFLOP/s of the host the "
          "absolute targets were set on; scaled by the matmul rates they would read:")
    for label, rate, target, mm_rate in (("gradient descent", gd_rate, 5e7, gd_mm),
                                         ("batched Problem.grad", grad_rate, 6e7, grad_mm)):
        scaled = target * mm_rate / TARGET_HOST_MATMUL
        print(f"    {label} >= {scaled:.3g}/s ({target:.0e} x {mm_rate:.1f} / "
              f"{TARGET_HOST_MATMUL:.0f}): {rate:.3g}/s, {'met' if rate >= scaled else 'not met'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run (smaller batches, fewer repeats)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    ap.add_argument("--repeats", type=positive_int, default=None,
                    help="timing repeats (default 9, quick 5)")
    ap.add_argument("--keep-openblas-coretype", action="store_true",
                    help="keep OPENBLAS_CORETYPE if set (by default the benchmark runs again "
                         "without it: it pins numpy's matmul, the measure of the machine)")
    args = ap.parse_args(argv)
    without_openblas_coretype(args.keep_openblas_coretype)
    # the flows are timed, not judged: gradient descent at h = 1e-3 ends many flows at
    # h lambda_max >= 2 by design of the workloads, and would warn at every run
    warnings.filterwarnings("ignore", category=lcnfast.flows.FlowWarning)
    repeats = args.repeats or (5 if args.quick else 9)
    K = {"a": 512, "b": 64} if args.quick else {"a": 4096, "b": 4096}
    K_ref = {"a": 512, "b": 64} if args.quick else {"a": 4096, "b": 256}
    n_mm = 500 if args.quick else 1000

    print("lcnfast benchmark" + (" (quick)" if args.quick else ""))
    print(f"  python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}, "
          f"lcnfast {lcnfast.__version__}, {platform.machine()} {os.cpu_count()} CPUs")
    print(f"  numpy BLAS: {blas_info()}")
    env = {v: os.environ.get(v) for v in OPENBLAS_VARS}
    print("  environment: " + ", ".join(f"{k}={v}" if v is not None else f"{k} unset"
                                        for k, v in env.items()))

    mm, t_mm = matmul_gflops(n_mm, repeats)
    print(f"  matmul np.dot({n_mm}x{n_mm} float64): {mm:.1f} GFLOP/s (best of {repeats}, "
          f"{t_mm * 1e3:.1f} ms)")

    results = []
    for name, spec in CASES.items():
        res = run_case(name, spec, K[name], K_ref[name], repeats, matmul_call(n_mm))
        results.append(res)
        if name == "a":
            layer = numba.threading_layer()
            print(f"  numba threads: {numba.get_num_threads()}, threading layer: {layer}")
        report(res)

    print("\n(flows) Architecture(d0=32, k=(3,3,3), s=(1,1,1)), m=128, square loss")
    flows = bench_flows(args.quick, repeats)
    lc_gd = bench_data_path_gd(args.quick, matmul_call(n_mm))
    dp_gd = bench_data_path_gd(args.quick, matmul_call(n_mm), square=True)

    a, b = results
    print("\nsummary (best of %d; the machine may be shared, timings are noisy)" % repeats)
    print(f"  (a) {a['grad_grads_per_s']:.3g} gradients/s via Problem.grad, "
          f"{a['problem_grads_per_s']:.3g} via Problem.loss_and_grad (target 2e7): "
          f"{'met' if a['grad_grads_per_s'] >= 2e7 else 'NOT met'}")
    print(f"  (b) {100 * b['grad_frac_matmul']:.1f}% of matmul via Problem.grad, "
          f"{100 * b['problem_frac_matmul']:.1f}% via Problem.loss_and_grad, "
          f"{100 * b['kernel_frac_matmul']:.1f}% via the one-flow kernel with the loss "
          f"(target 50%): {'met' if b['grad_frac_matmul'] >= 0.5 else 'NOT met'}")
    gd_rate = flows["gd"]["grad_evals_per_s"]
    print(f"  flows (a) gradient descent {gd_rate:.3g} gradient evaluations/s (target 2e7): "
          f"{'met' if gd_rate >= 2e7 else 'NOT met'}")
    print(f"  flows (b) rk45 {flows['rk45']['wall_s']:.1f} s, "
          f"{flows['rk45']['steps_per_flow_mean']:.0f} steps/flow, "
          f"{flows['rk45']['speedup_vs_scipy']:.0f}x scipy solve_ivp one by one")
    print(f"  flows (c) parallel efficiency on even flows {flows['even_balance']['efficiency']:.0%}, "
          f"(d) on uneven flows {flows['load_balance']['efficiency']:.0%}")
    issue18_targets(a, b, flows, lc_gd, dp_gd, mm)
    if args.json:
        payload = dict(
            quick=args.quick, repeats=repeats, python=platform.python_version(),
            numpy=np.__version__, numba=numba.__version__, lcnfast=lcnfast.__version__,
            blas=blas_info(), env=env, numba_threads=numba.get_num_threads(),
            threading_layer=numba.threading_layer(), matmul_n=n_mm, matmul_gflops=mm,
            cases=results, flows=flows, log_cosh_gradient_descent=lc_gd,
            square_data_path_gradient_descent=dp_gd,
        )
        Path(args.json).write_text(json.dumps(payload, indent=2))
        print(f"  figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
