"""Tests of the warm-up's machinery: the integrators compiled in a second process
(lcnfast.study.warm.compiling_aside)."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest

import lcnfast
from lcnfast import Architecture, Problem, gradient_descent, gradient_flow, losses
from lcnfast._numba_cache import cache_dir
from lcnfast.study import load_spec, warm

SPEC = """
name = "warm"
seed = 1
flows_per_dataset = 2
[[architectures]]
d0 = 6
k = [2, 2]
[[losses]]
name = "square"
[data]
m = 8
[[integrator]]
method = "euler"
h = 0.01
n_steps = 3
[[integrator]]
method = "rk45"
t_end = 1.0
[[integrator]]
method = "auto"
t_end = 1.0
"""


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "warm.toml"
    p.write_text(SPEC)
    return load_spec(str(p)).spec


def test_entries_name_the_cache_files_of_the_integrators(spec):
    """_integrators_cached looks for the integrators' index files by name: after one run of
    each integrator in this process, every method of the spec counts as cached (a renamed
    entry point would make the check always false, and every warm-up would start a needless
    process)."""
    if cache_dir() is None:
        pytest.skip("no writable Numba cache here")
    a = Architecture(6, (2, 2))
    rng = np.random.default_rng(0)
    p = Problem(a, rng.standard_normal((6, 8)), rng.standard_normal((a.d_N, 8)), losses.square())
    W = rng.standard_normal((2, a.n_params))
    gradient_descent(p, W, h=0.01, n_steps=2)
    gradient_flow(p, W, method="rk45", t_end=0.01)
    gradient_flow(p, W, method="auto", t_end=0.01)
    assert set(warm._ENTRY) == {"euler", "rk45", "rosenbrock", "auto"}
    for method, entry in warm._ENTRY.items():
        assert list(cache_dir().glob(f"{entry}-*.nbi")), method
    assert warm._integrators_cached(load_spec(spec))


def test_rodas_tail_compiles_the_signatures_rodas_flow_uses(spec):
    """compile_rodas_tail compiles two helpers of the RODAS worker ahead of the process aside,
    which then loads them only if their argument types are the ones rodas_flow passes. After
    the tail and an `auto` flow in this process, each has exactly one compiled version in the
    cache: a second one would mean the types differ (whichever of the two came first, the
    other compiled its own) and the split gains nothing."""
    import sys

    from lcnfast import _rosenbrock

    if cache_dir() is None:
        pytest.skip("no writable Numba cache here")
    warm.compile_rodas_tail(spec)
    a = Architecture(6, (2, 2))
    rng = np.random.default_rng(0)
    p = Problem(a, rng.standard_normal((6, 8)), rng.standard_normal((a.d_N, 8)), losses.square())
    gradient_flow(p, rng.standard_normal((2, a.n_params)), method="auto", t_end=0.01)
    tag = f"py{sys.version_info.major}{sys.version_info.minor}"
    for fn in (_rosenbrock._step_levels, _rosenbrock._dense_saves):
        line = fn.py_func.__code__.co_firstlineno
        files = list(cache_dir().glob(f"_rosenbrock.{fn.__name__}-{line}.{tag}.*.nbc"))
        assert len(files) == 1, (fn.__name__, files)


def _aside(monkeypatch, code):
    """compiling_aside with the child's program replaced by ``code``, and started."""
    monkeypatch.setattr(warm, "_integrators_cached", lambda study: False)
    monkeypatch.setattr(warm, "_cpus", lambda: 2)
    monkeypatch.setattr(warm._numba_cache, "caching_available", lambda: True)
    monkeypatch.setattr(warm, "CHILD_CODE", code)


def test_the_process_aside_gets_the_spec_and_this_lcnfast_and_is_waited_for(
    spec, tmp_path, monkeypatch
):
    out = tmp_path / "child.json"
    _aside(monkeypatch, (
        "import json, sys, time, lcnfast; spec = json.loads(sys.stdin.read()); time.sleep(1); "
        f"open({str(out)!r}, 'w').write(json.dumps([spec, lcnfast.__file__]))"
    ))
    t0 = time.perf_counter()
    with warm.compiling_aside(spec) as proc:
        assert proc is not None
        assert not out.exists()  # it runs alongside the block ...
    assert time.perf_counter() - t0 >= 1.0  # ... and the block's end waits for it
    got_spec, got_file = json.loads(out.read_text())
    assert got_spec == json.loads(json.dumps(spec))
    assert got_file == lcnfast.__file__  # the same package, even if not installed


def test_a_failure_aside_is_logged_and_costs_nothing_else(spec, monkeypatch, caplog):
    _aside(monkeypatch, "raise SystemExit('boom: the compile failed')")
    ran = False
    with caplog.at_level(logging.WARNING, logger="lcnfast.study.warm"):
        with warm.compiling_aside(spec):
            ran = True
    assert ran
    assert "boom: the compile failed" in caplog.text and "compiling them here" in caplog.text


def test_an_interrupt_stops_the_process_aside(spec, monkeypatch):
    _aside(monkeypatch, "import time; time.sleep(60)")
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with warm.compiling_aside(spec) as proc:
            raise KeyboardInterrupt
    assert proc.returncode is not None and proc.returncode != 0
    assert time.perf_counter() - t0 < 30


def test_nothing_is_started_aside_when_it_cannot_help(spec, monkeypatch):
    monkeypatch.setattr(warm, "CHILD_CODE", "raise SystemExit('must not run')")
    monkeypatch.setattr(warm, "_integrators_cached", lambda study: False)
    with warm.compiling_aside(spec, enabled=False) as proc:
        assert proc is None
    monkeypatch.setattr(warm, "_cpus", lambda: 1)
    with warm.compiling_aside(spec) as proc:
        assert proc is None
    monkeypatch.setattr(warm, "_cpus", lambda: 2)
    monkeypatch.setattr(warm, "_integrators_cached", lambda study: True)
    with warm.compiling_aside(spec) as proc:
        assert proc is None


def test_the_process_aside_dies_with_its_parent(tmp_path):
    """A run killed by SIGKILL (or SIGTERM) left the compiler process aside running with ppid
    1 for a minute. Its program calls die_with_parent first: a parent that starts it the same
    way and is then SIGKILLed takes it along."""
    import os
    import signal
    import subprocess
    import sys

    child = ("import os, sys, time; from lcnfast.study.warm import die_with_parent; "
             "die_with_parent(int(sys.argv[1])); print(os.getpid(), flush=True); time.sleep(120)")
    parent = ("import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
              f"{child!r}, str(os.getpid())], stdout=subprocess.PIPE, text=True); "
              "print(p.stdout.readline().strip(), flush=True); p.wait()")
    par = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    pid = int(par.stdout.readline())
    os.kill(pid, 0)  # the child runs
    par.send_signal(signal.SIGKILL)
    par.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the child outlived its parent by 10 s")


def test_the_warm_up_of_a_run_needs_the_study_directory_only(tmp_path):
    """A run hands its steps (and its dask workers, on other machines with --scheduler) the
    resolved spec: the warm-up read it with load_spec, which opens the spec's data files
    again, so a worker without the file failed ('no such file') though X and Y are in the
    study directory. It reads it as the run recorded it."""
    from lcnfast.study.shards import write_datasets

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "X.npz", X=rng.standard_normal((6, 8)))
    toml = SPEC.replace("m = 8", 'inputs = { file = "X.npz" }').split("[[integrator]]")
    p = tmp_path / "warm.toml"
    p.write_text(toml[0] + "[[integrator]]" + toml[1])  # euler only: the cheapest
    study = load_spec(str(p))
    d = tmp_path / "out"
    (d / "datasets").mkdir(parents=True)
    write_datasets(study, d)
    (tmp_path / "X.npz").unlink()  # as on a worker that sees only the study directory
    warm.warm_up(study.spec, str(d))
    warm.warm_analysis(study.spec, str(d))
