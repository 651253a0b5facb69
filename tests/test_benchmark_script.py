"""``studies/benchmark.py --quick`` runs and its correctness checks hold (and
``studies/bench_width.py --quick`` and ``studies/bench_busy_core.py --quick`` run).

The benchmark is a script, not a test of speed (figures on a shared host are no pass/fail
criterion): this runs its quick size once, so that the script cannot rot, and checks what it
checks besides speed, read from its JSON output:

- the plain numpy reference (patch matrices, chain rule) and lcnfast agree on losses and
  gradients within 1e-12 relative. Why that tolerance: the two sum the same terms in a
  different order, ~1e-14 seen (up to d_N m = 13,312 terms per entry in case (b)); a wrong
  term would be off by O(1);
- the one-flow fast kernel gives bitwise ``Problem``'s gradient (the same kernel code);
- lcnfast's rk45 takes scipy ``solve_ivp(RK45)``'s accepted steps on the flows timed against it
  (the same Dormand-Prince pair and step-size rule), up to rounding flips of a decision;
- every flow of the gradient-descent run reaches its end, and every issue-18 target is
  printed with its figure, the matmul rate and the load average.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_its_checks_hold(tmp_path):
    """... and it runs without OPENBLAS_CORETYPE (studies/bench_host.py): set, it pins numpy's
    matmul, the benchmark's measure of the machine, to that core's kernels. Its targets are
    for two threads, so it runs with NUMBA_NUM_THREADS=2 whatever this process has (with one,
    its parallel-efficiency rows were missing), as does bench_width.py below."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(REPO / "studies" / "benchmark.py"), "--quick",
                        "--repeats", "1", "--json", str(out)],
                       env=dict(os.environ, OPENBLAS_CORETYPE="Haswell", NUMBA_NUM_THREADS="2"),
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("OPENBLAS_CORETYPE=Haswell pins numpy's matmul"), r.stdout[:300]
    assert "OPENBLAS_CORETYPE unset" in r.stdout
    d = json.loads(out.read_text())
    assert d["env"]["OPENBLAS_CORETYPE"] is None
    assert d["quick"] and d["matmul_gflops"] > 0
    assert [c["case"] for c in d["cases"]] == ["a", "b"]
    for c in d["cases"]:
        assert c["numpy_check_rel_err_L"] <= 1e-12 and c["numpy_check_rel_err_G"] <= 1e-12, c
        assert c["kernel_vs_problem_rel_err_G"] == 0.0, c
        assert c["grad_grads_per_s"] > 0 and c["numpy_grads_per_s"] > 0
    flows = d["flows"]
    # the same controller and tableau: the same accepted steps, up to rounding flips of an
    # accept/reject decision at the stability limit (as tests/test_flows.py allows): scipy sums
    # its stages with numpy's dot, whose order is the BLAS kernel's (OpenBLAS's Haswell kernels
    # gave equal counts; its SkylakeX kernels 12329 against lcnfast's 12330 steps on one flow)
    for sp, lc in zip(flows["rk45"]["scipy_accepted_subset"],
                      flows["rk45"]["lcnfast_accepted_subset"], strict=True):
        assert abs(sp - lc) <= 2 + 0.01 * sp, (sp, lc)
    counts = flows["gd"]["status_counts"]
    assert sum(counts) == flows["K"] == counts[1], counts  # every flow: reached_end
    targets = r.stdout[r.stdout.index("issue 18 targets"):]
    for line in ("gradient descent >= 5e7", "rk45 >= 80%", "batched Problem.grad",
                 "log-cosh (64; 5,5,5), gradient descent >= 50%", "even flows, 2 threads",
                 "uneven flows, 2 threads"):
        row = next(t for t in targets.splitlines() if line in t)
        assert "matmul" in row and "load" in row and ("met" in row or "NOT met" in row), row


def test_the_benchmarks_refuse_counts_below_one():
    """``benchmark.py --repeats 0`` once meant the default (``args.repeats or 9``) and ``-1`` no
    timing round at all (every figure inf); ``bench_width.py --rounds 0`` ended in a traceback
    (the best of no rates). Refused by argparse now: exit status 2, naming the option; so is
    a ``bench_width.py --arch`` that is no architecture ("0", "-1", "two") and a ``--t-end``
    that is no time > 0."""
    for script, option in (("benchmark.py", "--repeats"), ("bench_width.py", "--rounds"),
                           ("bench_width.py", "--threads"), ("bench_width.py", "--max-width"),
                           ("bench_width.py", "--arch"), ("bench_width.py", "--t-end"),
                           ("bench_busy_core.py", "--rounds")):
        for bad in ("0", "-1", "two"):
            r = subprocess.run([sys.executable, str(REPO / "studies" / script), option, bad],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
            assert r.returncode == 2 and option in r.stderr, (script, bad, r.stderr[-500:])


def test_the_flow_width_benchmark_runs_and_its_widths_agree():
    """``studies/bench_width.py --quick --rounds 1`` runs (it checks itself that every width
    gives bitwise the same Dataset, and exits non-zero otherwise) and prints a rate per width
    and integrator with the load and the matmul rate of its round."""
    r = subprocess.run([sys.executable, str(REPO / "studies" / "bench_width.py"), "--quick",
                        "--rounds", "1", "--threads", "2"],
                       env=dict(os.environ, NUMBA_NUM_THREADS="2"),
                       capture_output=True, text=True, timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for method in ("euler", "rk45"):
        assert f"{method}, " in r.stdout
    rounds = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("round 1:")]
    assert len(rounds) == 2 and all("load" in ln and "GFLOP/s" in ln for ln in rounds), r.stdout
    assert r.stdout.count("width 64: best") == 2


def test_the_busy_core_benchmark_runs_each_layer_in_its_own_process():
    """``studies/bench_busy_core.py --quick --rounds 1`` runs: each available threading layer
    in a child that really ran on it (the script exits non-zero otherwise), four figures per
    layer, the round's load and matmul rate. TBB is a dependency where it has wheels (x86-64)
    and OpenMP comes with Numba's wheels, so both must run there."""
    r = subprocess.run([sys.executable, str(REPO / "studies" / "bench_busy_core.py"), "--quick",
                        "--rounds", "1"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for layer in ("tbb", "omp") if platform.machine() in ("x86_64", "AMD64") else ("omp",):
        row = next(ln for ln in r.stdout.splitlines() if f"round 1, {layer}:" in ln)
        assert "not available" not in row, row
        us = [float(case.split()[-1]) for case in row.split(": ", 1)[1].split(" | ")]
        assert len(us) == 4 and all(0 < t < 1e6 for t in us), row
    assert "load" in r.stdout and "GFLOP/s" in r.stdout


def test_keep_openblas_coretype_keeps_it_and_without_it_nothing_runs_twice():
    """``without_openblas_coretype(keep=True)`` leaves the variable (``--keep-openblas-coretype``);
    with the variable unset the script is not run again (the child prints its lines once)."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import bench_host; "
            "print('start', os.environ.get('OPENBLAS_CORETYPE')); "
            "bench_host.without_openblas_coretype(keep=sys.argv[2] == 'keep'); print('end')")
    studies = str(REPO / "studies")
    for keep, coretype, lines in (
            ("keep", "Haswell", ["start Haswell", "end"]),
            ("drop", "Haswell", ["start Haswell", "OPENBLAS_CORETYPE=Haswell pins", "start None", "end"]),
            ("drop", None, ["start None", "end"])):
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        r = subprocess.run([sys.executable, "-c", code, studies, keep], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        got = r.stdout.splitlines()
        assert len(got) == len(lines) and all(g.startswith(w) for g, w in zip(got, lines)), got
