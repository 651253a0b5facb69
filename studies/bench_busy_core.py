"""Batched gradients on 2 threads while another process holds one core, on each threading layer.

    python studies/bench_busy_core.py [--rounds R] [--quick]

``Problem.grad`` on the benchmark's square-loss case ((32; 3,3,3), m = 128, K = 4096, as
``studies/benchmark.py``) is a ``prange`` kernel of ~30-50 us. Under OpenMP a call is a fork
and a join of a static split, so a busy core (another process; on a shared host, the
hypervisor running another guest) stalls the whole call; TBB's work stealing lets the calling
thread take the chunks the other thread has not started (lcnfast._threading_layer). This
script measures both: per round, one child process per layer (a process picks its layer
once; the layers alternate), each timing the call on 2 threads and on 1, with the cores
quiet and with a spinning process started beside it ("busy"). A figure is the median of
several windows of calls (mean time per call in each). Each round prints the load average and
the numpy matmul rate (GFLOP/s) right after it; the end, per layer and case, the median over
the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from bench_host import load_average, matmul_gflops, positive_int, without_openblas_coretype

LAYERS = ("tbb", "omp")
CASES = ("quiet 2 threads", "quiet 1 thread", "busy 2 threads", "busy 1 thread")


def child(quick):
    """In a child process with its NUMBA_THREADING_LAYER set: print one JSON line, the layer
    and, per case of CASES, the median time per call (us)."""
    import numba  # lcnfast: this repository's (bench_host put it first on sys.path)

    from lcnfast import Architecture, Problem, data, losses, threads

    arch = Architecture(32, (3, 3, 3), (1, 1, 1))
    td = data.teacher(arch, 128, seed=0)
    problem = Problem(arch, td.X, td.Y, losses.square())
    W = data.initial_filters(arch, 4096, seed=1)
    window, n_windows, n_warm = (0.02, 2, 5) if quick else (0.25, 7, 50)

    def per_call_us():
        n, t0 = 0, time.perf_counter()
        while n < 3 or time.perf_counter() - t0 < window:
            problem.grad(W)
            n += 1
        return (time.perf_counter() - t0) / n * 1e6

    for _ in range(n_warm):  # compile or load, wake the threads
        problem.grad(W)
    out = {"layer": numba.threading_layer()}
    for case in CASES:
        spinner = None
        if case.startswith("busy"):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.3)  # let it start spinning
        try:
            with threads(2 if "2 threads" in case else 1):
                out[case] = float(np.median([per_call_us() for _ in range(n_windows)]))
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        time.sleep(0.2)
    print(json.dumps(out))


def run_child(layer, quick):
    """The child's figures on ``layer``, or None with the reason when it cannot run there."""
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    r = subprocess.run([sys.executable, __file__, "--child"] + ["--quick"] * quick,
                       env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]
    return json.loads(r.stdout.strip().splitlines()[-1]), None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--quick", action="store_true", help="short windows (a smoke test)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    without_openblas_coretype()
    if args.child:
        child(args.quick)
        return
    print("Problem.grad, square loss (32; 3,3,3), m=128, K=4096: us per call (median of "
          "windows), 'busy' = a spinning process beside it")
    figures = {layer: {case: [] for case in CASES} for layer in LAYERS}
    for rnd in range(1, args.rounds + 1):
        for layer in list(figures):
            res, why = run_child(layer, args.quick)
            if res is None:  # e.g. no tbb wheel on this platform
                print(f"  round {rnd}, {layer}: not available ({why})")
                del figures[layer]
                continue
            if res["layer"] != layer:
                raise SystemExit(f"the child asked for {layer} ran on {res['layer']}")
            for case in CASES:
                figures[layer][case].append(res[case])
            print(f"  round {rnd}, {layer}: " + " | ".join(f"{c} {res[c]:.1f}" for c in CASES))
        if not figures:
            raise SystemExit("no threading layer could run")
        gflops = matmul_gflops(2000, 3)[0]
        print(f"  (load {load_average():.2f}, matmul {gflops:.0f} GFLOP/s)")
    for layer, cases in figures.items():
        print(f"{layer}, median of {len(cases[CASES[0]])} rounds:")
        for c, v in cases.items():
            print(f"  {c:16s} {np.median(v):7.1f} us  {4096 / np.median(v) * 1e6:9.3g} gradients/s")


if __name__ == "__main__":
    main()
