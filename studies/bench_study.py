"""Cost of the laboratory around the engine, and dask workers against threads.

Run from the repository root::

    python studies/bench_study.py               # 4096 flows, 3 rounds (~10 minutes on 2 cores)
    python studies/bench_study.py --flows 512 --rounds 1     # a smoke run

The study: square loss, (16; 3,3,3), m = 32 teacher data with noise 0.1, 16 datasets of
``flows / 16`` flows, rk45 to t_end = 100 (rtol 1e-8, grad_tol 1e-6), shards of 256 flows. Two
variants, each in its own process (so each pays its own start-up and reads the kernels from
the warm Numba cache), alternating round by round:

- ``local``: one process, 2 Numba threads. Reports the study overhead: the share of the wall
  time spent outside compiling, the flows and their classification (spec, data, files, loading
  shards, scheduling; the target of issue 14 is <= 5%);
- ``dask``: a ``LocalCluster`` of 2 worker processes x 1 thread.

Every figure comes with the load average and the float64 matmul rate (2000 x 2000, numpy)
measured in the same process just before the run: the host is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def spec(flows):
    return {
        "name": "bench-study",
        "seed": 5,
        "architectures": {"d0": 16, "k": [3, 3, 3]},
        "losses": "square",
        "data": {"m": 32, "noise": 0.1, "n_datasets": 16},
        "init": {"scale": 0.5},
        "integrator": {"method": "rk45", "t_end": 100.0, "grad_tol": 1e-6, "max_steps": 200_000},
        "flows_per_dataset": flows // 16,
        "shard_size": 256,
    }


def matmul_gflops():
    import numpy as np

    a = np.random.default_rng(0).standard_normal((2000, 2000))
    a @ a
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2000**3 / best / 1e9


def run_variant(variant, flows):
    sys.path.insert(0, str(ROOT))
    from lcnfast.study import run_study

    gf = matmul_gflops()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        kw = {"workers": 2, "threads": 1} if variant == "dask" else {"threads": 2}
        t0 = time.perf_counter()
        s = run_study(spec(flows), Path(d) / "out", progress=False, report=False, **kw)
        wall = time.perf_counter() - t0
    return {
        "variant": variant,
        "wall_s": wall,
        "compile_s": s.compile_seconds,
        "flows_s": s.flow_seconds,
        "classify_s": s.classify_seconds,
        "overhead": s.overhead_fraction if variant == "local" else None,
        "flows_per_s": flows / (wall - s.compile_seconds),
        "grad_evals": s.n_grad_evals,
        "loadavg_1min": load,
        "matmul_gflops": gf,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variant", choices=["local", "dask"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(run_variant(a.variant, a.flows)))
        return
    results = []
    for r in range(a.rounds):
        for variant in ("local", "dask"):
            out = subprocess.run(
                [sys.executable, __file__, "--variant", variant, "--flows", str(a.flows)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(res)
            extra = f", overhead {100 * res['overhead']:.1f}%" if res["overhead"] is not None else ""
            print(
                f"round {r + 1} {variant:5s}: wall {res['wall_s']:6.1f} s (compile/load "
                f"{res['compile_s']:.1f} s, flows {res['flows_s']:.1f} s, classify "
                f"{res['classify_s']:.1f} s){extra}; {res['flows_per_s']:.1f} flows/s; "
                f"load {res['loadavg_1min']:.2f}, matmul {res['matmul_gflops']:.1f} GFLOP/s",
                flush=True,
            )
    for variant in ("local", "dask"):
        rs = sorted(r["flows_per_s"] for r in results if r["variant"] == variant)
        print(f"{variant}: median {rs[len(rs) // 2]:.1f} flows/s over {len(rs)} rounds")


if __name__ == "__main__":
    main()
