"""How many flows a worker should keep side by side through the generated kernel.

    python studies/bench_width.py [--threads N] [--rounds R] [--max-width W] [--arch D0:K1,..]
                                  [--t-end T] [--quick]

The straight-line kernel generated for the square loss (``lcnfast._codegen``) takes any number
of lanes at run time, and each call has a fixed cost (~50 ns on a 2-core AVX2 EPYC, against
~9 ns per lane). ``lcnfast._lane_width.flow_width`` therefore gives the integrators' workers
more lanes than ``LANES`` on large runs, up to ``MAX_FLOW_WIDTH[method]``. This script measures
what that cap should be: on the benchmark's square-loss case ((32; 3,3,3), m = 128, as
``studies/benchmark.py``; another architecture with ``--arch``), gradient descent (4096 flows,
h = 1e-3, 4000 steps) and Dormand-Prince (1024 flows, rtol 1e-8, atol 1e-10, t_end = 50 or
``--t-end``) at every width from LANES to 128 (``--max-width``), the widths alternating
within each round (the host's drift shifts them alike), each run's width forced by replacing
``flow_width``. Per width: the best and the median of the rounds in gradient evaluations per
second. Every round also prints the load average and the numpy matmul rate (GFLOP/s) right
after it. The results of every width are checked bitwise equal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

# Import the lcnfast of this repository (python puts studies/ first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import lcnfast  # noqa: E402
from lcnfast import Architecture, Problem, _lane_width, data, losses  # noqa: E402
from lcnfast.flows import FlowWarning  # noqa: E402

from bench_host import matmul_gflops, positive_int, without_openblas_coretype  # noqa: E402


def parse_arch(text):
    """"D0:K1,K2,..." (strides 1) -> Architecture; argparse's type for --arch."""
    try:
        d0, ks = text.split(":")
        k = tuple(int(x) for x in ks.split(","))
        return Architecture(int(d0), k, (1,) * len(k))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--arch wants D0:K1,K2,... such as 32:3,3,3 ({e})")


def runs(arch, quick, t_end):
    """name -> (call, number of flows): the two integrators on the square loss of ``arch``."""
    td = data.teacher(arch, 128, noise=0.1, seed=0)
    prob = Problem(arch, td.X, td.Y, losses.square(), kernel="generated")
    w0 = data.initial_filters(arch, 4096, scale=0.5, seed=1)
    n_gd, K_rk = (400, 256) if quick else (4000, 1024)
    t_end = 5.0 if quick else t_end
    return {
        "euler": (lambda nt: lcnfast.gradient_descent(prob, w0, h=1e-3, n_steps=n_gd,
                                                      save_every=n_gd, n_threads=nt), 4096),
        "rk45": (lambda nt: lcnfast.gradient_flow(prob, w0[:K_rk], t_end=t_end, rtol=1e-8,
                                                  atol=1e-10, save_times=[0.0, t_end],
                                                  n_threads=nt), K_rk),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=positive_int, default=None,
                    help="threads (default: Numba's)")
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--max-width", type=positive_int, default=128,
                    help="the widest width to measure (default and at most 128)")
    ap.add_argument("--arch", type=parse_arch, default=Architecture(32, (3, 3, 3), (1, 1, 1)),
                    help="the architecture as D0:K1,K2,... (strides 1; default 32:3,3,3)")
    ap.add_argument("--t-end", type=float, default=50.0, help="rk45's t_end (default 50)")
    args = ap.parse_args()
    widths = [2**e for e in range(8) if _lane_width.LANES <= 2**e <= args.max_width]
    if not widths:
        ap.error(f"--max-width must be at least LANES = {_lane_width.LANES}")
    if not args.t_end > 0:  # NaN too
        ap.error(f"--t-end must be a time > 0, not {args.t_end}")
    without_openblas_coretype()
    warnings.simplefilter("ignore", FlowWarning)  # flows at the edge of stability: expected
    print(f"LANES {_lane_width.LANES}, MAX_FLOW_WIDTH {_lane_width.MAX_FLOW_WIDTH}, "
          f"threads {args.threads or 'Numba default'}, widths {widths}")
    n = args.arch.n_params
    print(f"{args.arch}, n = {n}, L1 data cache {_lane_width.L1_DATA_BYTES // 1024} KiB")
    for name, (call, K) in runs(args.arch, args.quick, args.t_end).items():
        print(f"{name}, {K} flows: flow_width would choose "
              f"{_lane_width.flow_width(K, args.threads or os.cpu_count(), name, n)}")
        rates = {w: [] for w in widths}
        first = {}
        for rnd in range(args.rounds + 1):  # round 0: compile / load and warm up
            for w in widths:
                with mock.patch("lcnfast.flows.flow_width", lambda *_, w=w: w):
                    t0 = time.perf_counter()
                    ds = call(args.threads)
                    dt = time.perf_counter() - t0
                assert ds.attrs["lanes"] == w
                if rnd == 0:
                    first[w] = ds
                    if w != widths[0]:
                        for var in ds.data_vars:
                            np.testing.assert_array_equal(ds[var].values,
                                                          first[widths[0]][var].values)
                    continue
                rates[w].append(int(ds.n_grad_evals.sum()) / dt)
            if rnd:
                gflops = matmul_gflops(2000, 3)[0]
                print(f"  round {rnd}: " + ", ".join(f"{w}: {rates[w][-1]:.3g}" for w in widths)
                      + f" /s (load {os.getloadavg()[0]:.2f}, matmul {gflops:.0f} GFLOP/s)")
        for w in widths:
            print(f"  width {w:2d}: best {max(rates[w]):.3g}, median "
                  f"{float(np.median(rates[w])):.3g} gradient evaluations/s")


if __name__ == "__main__":
    main()
