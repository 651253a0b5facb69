"""What the benchmarks share about the host: timing, the matmul reference, load, BLAS, OpenBLAS.

Imported by ``studies/benchmark.py``, ``bench_width.py`` and ``bench_busy_core.py`` (python
puts ``studies/`` first on ``sys.path`` when one of them runs).

numpy's float64 matmul is the benchmarks' measure of the machine: "% of matmul" targets, and
the rate printed next to every figure so that a figure on a busy or slower host can be read.
That holds only with the kernels OpenBLAS picks for the CPU, which ``OPENBLAS_CORETYPE``
overrides: a 2-core AMD EPYC host (Zen 5, AVX-512; 2026-12-08) set ``OPENBLAS_CORETYPE=Haswell``
in every process's environment, and its matmul read 105-111 GFLOP/s (OpenBLAS's 256-bit
Haswell kernels) against 174-183 GFLOP/s with OpenBLAS's own pick (SkylakeX kernels; 1000 x
1000, best of 9). :func:`without_openblas_coretype` runs the script again without it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

# Import the lcnfast of this repository (python puts studies/ first on sys.path).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from lcnfast.cli import _positive_int as positive_int  # noqa: F401  (the scripts' counts)

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")


# ----------------------------------------------------------------------------- timing helpers
def best_times(fns, repeats, min_time=0.05, settle=0.0):
    """Best wall time of one call of each function of the dict ``fns``: after two warm-up calls
    each, ``repeats`` rounds, each timing every function in turn (at least 3 calls and
    ``min_time`` seconds; the mean of its calls), ``settle`` seconds of sleep after each.
    Interleaved, so that the host's drift (up to ~40% within minutes here) shifts all of them
    alike and their ratios stay meaningful."""
    inner = {}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-9)
        inner[name] = max(3, int(math.ceil(min_time / once)))
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / inner[name])
            time.sleep(settle)
    return best


def best_time(fn, repeats, min_time=0.05):
    """:func:`best_times` of one function."""
    return best_times({"fn": fn}, repeats, min_time)["fn"]


def matmul_call(n):
    """(call, flops) of an n x n float64 matrix product."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n))
    b = rng.standard_normal((n, n))
    return (lambda: np.dot(a, b)), 2.0 * n**3


def matmul_gflops(n, repeats):
    call, flops = matmul_call(n)
    t = best_time(call, repeats, min_time=0.2)
    return flops / t / 1e9, t


# ----------------------------------------------------------------------------- environment
def load_average():
    """The host's 1-minute load average (NaN where the OS has none): printed next to every
    flow figure, since on a shared host the other jobs set how much of the cores we get."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


def blas_info():
    try:
        from threadpoolctl import threadpool_info

        infos = [
            f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
            f"{d.get('num_threads')} threads, {Path(d.get('filepath', '')).name})"
            for d in threadpool_info()
            if d.get("user_api") == "blas"
        ]
        if infos:
            return "; ".join(infos) + " [threadpoolctl]"
    except ImportError:
        pass
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        simd = cfg.get("SIMD Extensions", {})
        return (f"{blas.get('name')} {blas.get('version')} (numpy build config; "
                f"SIMD found: {', '.join(simd.get('found', [])[-3:])})")
    except Exception as e:  # pragma: no cover - very old numpy
        return f"unknown ({e})"


def without_openblas_coretype(keep=False):
    """If ``OPENBLAS_CORETYPE`` is set (and not ``keep``), say so and run this script again
    without it: ``os.execv`` with the same interpreter options and arguments and the rest of
    the environment, so the figures compare with OpenBLAS's own matmul kernels for this CPU.
    OpenBLAS reads the variable once, when numpy loads it, hence a new process image."""
    value = os.environ.get("OPENBLAS_CORETYPE")
    if value is None or keep:
        return
    print(f"OPENBLAS_CORETYPE={value} pins numpy's matmul to that core's kernels, the "
          "benchmarks' measure of the machine: running again without it", flush=True)
    del os.environ["OPENBLAS_CORETYPE"]
    os.execv(sys.executable, sys.orig_argv)
