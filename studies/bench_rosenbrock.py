"""Rosenbrock (RODAS, exact Hessian) and auto next to rk45 on the square-loss benchmark case.

    python studies/bench_rosenbrock.py [--quick] [--json PATH] [--logcosh-flows N]

Square loss, (32; 3,3,3), m = 128, 4096 flows (quick: 256), rtol 1e-8, atol 1e-10:

(a) rosenbrock, auto and rk45 to t_end = 200 (quick: 20) on the same flows in one run: wall
    time, steps per flow (median, max), gradient and Hessian evaluations, final gradient
    norms, and how far apart the final states are;
(b) rosenbrock and auto until converged: t_end = None, grad_tol = 1e-11: wall time, statuses,
    steps, t_final and the Newton certificate ``newton_step_final``;
(c) with ``--logcosh-flows N``: the log-cosh (64; 5,5,5), m = 256 case, N flows, all methods
    to t_end = 200 (rk45 takes ~10 s per flow and thread there).

Also printed: the load average before and after, the numpy matmul rate of the host at the
start (the host is shared: figures drift with it), threads and the threading layer.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numba
import numpy as np

import lcnfast
from lcnfast import Architecture, Problem, data, losses


METHODS = ("rosenbrock", "auto", "rk45")


def matmul_gflops(n=2048, repeats=5):
    a = np.random.default_rng(0).standard_normal((n, n))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.dot(a, a)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def summary(ds, wall):
    steps = ds.n_accepted.values + ds.n_rejected.values
    out = {
        "wall_s": wall,
        "steps_median": float(np.median(steps)),
        "steps_max": int(steps.max()),
        "rejected_mean": float(ds.n_rejected.mean()),
        "grad_evals_mean": float(ds.n_grad_evals.mean()),
        "grad_norm_final_median": float(np.median(ds.grad_norm_final)),
        "grad_norm_final_max": float(ds.grad_norm_final.max()),
        "status_counts": np.bincount(ds.status.values, minlength=5).tolist(),
        "gradient_kernel": ds.attrs["gradient_kernel"],
    }
    if "n_hessian_evals" in ds:
        out["hessian_evals_mean"] = float(ds.n_hessian_evals.mean())
    return out


def line(label, s):
    hess = f", {s['hessian_evals_mean']:.0f} Hessians" if "hessian_evals_mean" in s else ""
    print(f"  {label}: {s['wall_s']:.2f} s, steps/flow median {s['steps_median']:.0f} "
          f"(max {s['steps_max']}, {s['rejected_mean']:.1f} rejected), "
          f"{s['grad_evals_mean']:.0f} gradients{hess} per flow; final ||grad L|| median "
          f"{s['grad_norm_final_median']:.1e}, max {s['grad_norm_final_max']:.1e}; statuses "
          f"{s['status_counts']} [{s['gradient_kernel']} kernel]")


def timed(fn):
    t0 = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t0


def compare(a, b, label):
    """Largest difference of the final states (relative to 1 + |w|) and of the losses."""
    dw = np.abs(a.w_final.values - b.w_final.values).max(axis=1)
    dw /= 1 + np.abs(b.w_final.values).max(axis=1)
    dl = np.abs(a.loss_final.values - b.loss_final.values) / b.loss_final.values
    print(f"  {label}: final states within {dw.max():.1e} (median {np.median(dw):.1e}) of "
          f"1 + |w|; losses within {dl.max():.1e} relative")
    return {"dw_max": float(dw.max()), "dw_median": float(np.median(dw)),
            "dloss_rel_max": float(dl.max())}


def case(arch, m, loss, K, t_end, seed_w=1):
    td = data.teacher(arch, m, noise=0.1, seed=0)
    prob = Problem(arch, td.X, td.Y, loss)
    w0 = data.initial_filters(arch, K, scale=0.5, seed=seed_w)
    kw = dict(rtol=1e-8, atol=1e-10, save_times=[0.0])
    out = {"K": K, "t_end": t_end}
    # first calls: load (or compile) the kernels, on 16 flows: enough gradients asked for
    # kernel="auto" to pick (and load) the generated kernel where it applies, as the timed
    # calls will
    for method in METHODS:
        _, dt = timed(lambda: lcnfast.gradient_flow(prob, w0[:16], t_end=0.1, method=method,
                                                    **kw))
        out[f"first_call_{method}_s"] = dt
    res = {}
    for method in METHODS:
        res[method], dt = timed(lambda: lcnfast.gradient_flow(prob, w0, t_end=t_end,
                                                              method=method, **kw))
        out[method] = summary(res[method], dt)
        line(f"{method:10s} t_end={t_end:g}, K={K}", out[method])
        if method == "auto":
            out[method]["dp_steps_median"] = float(np.median(res[method].n_dp_steps))
            out[method]["t_switch_median"] = float(np.nanmedian(res[method].t_switch))
            out[method]["switched_back"] = int(np.count_nonzero(res[method].n_switches > 1))
            out[method]["n_switches_max"] = int(res[method].n_switches.max())
            print(f"      auto: Dormand-Prince steps median {out[method]['dp_steps_median']:.0f}, "
                  f"switch at t median {out[method]['t_switch_median']:.3g}; "
                  f"{out[method]['switched_back']} flows switched back to Dormand-Prince "
                  f"(switches per flow max {out[method]['n_switches_max']})")
    for method in METHODS[:2]:
        out[f"speedup_{method}"] = out["rk45"]["wall_s"] / out[method]["wall_s"]
        print(f"  -> {method} {out[f'speedup_{method}']:.1f}x less wall time than rk45")
        out[f"agreement_{method}"] = compare(res[method], res["rk45"], f"{method} vs rk45")
    return prob, w0, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256 flows to t_end = 20")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    ap.add_argument("--logcosh-flows", type=int, default=0, metavar="N",
                    help="also run the log-cosh (64; 5,5,5), m=256 case on N flows")
    args = ap.parse_args(argv)
    res = {"load_before": os.getloadavg(), "matmul_gflops": matmul_gflops(),
           "threads": numba.get_num_threads()}
    print(f"load average {res['load_before']}, numpy matmul {res['matmul_gflops']:.1f} GFLOP/s, "
          f"{res['threads']} threads")
    K = 256 if args.quick else 4096
    t_end = 20.0 if args.quick else 200.0
    print("(a) square loss (32; 3,3,3), m=128, rtol 1e-8, atol 1e-10")
    prob, w0, res["square"] = case(Architecture(32, (3, 3, 3)), 128, losses.square(), K, t_end)
    res["threading_layer"] = numba.threading_layer()
    print("(b) until converged, t_end=None, grad_tol=1e-11")
    for method in METHODS[:2]:
        conv, dt = timed(lambda: lcnfast.gradient_flow(prob, w0, t_end=None, grad_tol=1e-11,
                                                       method=method, rtol=1e-8, atol=1e-10))
        s = summary(conv, dt)
        s["t_final_median"] = float(np.median(conv.t_final))
        s["t_final_max"] = float(conv.t_final.max())
        s["newton_step_final_max"] = float(conv.newton_step_final.max())
        res[f"until_converged_{method}"] = s
        line(f"{method} until ||grad L|| <= 1e-11, K={K}", s)
        print(f"      t_final median {s['t_final_median']:.3g}, max {s['t_final_max']:.3g}; "
              f"newton_step_final max {s['newton_step_final_max']:.1e}")
    if args.logcosh_flows:
        print(f"(c) log-cosh (64; 5,5,5), m=256, {args.logcosh_flows} flows")
        _, _, res["logcosh"] = case(Architecture(64, (5, 5, 5)), 256, losses.log_cosh(1.0),
                                    args.logcosh_flows, 200.0)
    res["load_after"] = os.getloadavg()
    print(f"load average after: {res['load_after']}; threading layer {res['threading_layer']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
