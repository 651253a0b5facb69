"""Compiling (or loading from Numba's disk cache) the kernels a study needs, before its flows.

Numba compiles on one thread, so a cold start would leave the second core idle for a minute.
:func:`compiling_aside` therefore starts a second Python process that compiles the study's
integrators (for ``method = "auto"`` the Dormand-Prince/RODAS tree, the largest compile)
into the shared on-disk cache, while this process writes the data, compiles the two
helpers the other process would reach last (:func:`compile_rodas_tail`) and the data and
analysis kernels (:func:`warm_analysis`). :func:`warm_up` then runs the study's
code once on two flows per setting and loads what the other process compiled; it compiles
whatever the split missed, so the split only changes how long the warm-up takes, never what
runs. Without a writable cache, with one CPU, or when the integrators are cached already,
nothing is started aside.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

from .. import _numba_cache
from .._lane_width import LANES
from .. import analysis as _analysis
from ..flows import FlowWarning
from ..problem import Problem
from . import draws
from .shards import integrate, read_dataset, recorded_study
from .spec import load_spec

log = logging.getLogger(__name__)

# the entry points each integrator method compiles (Numba cache files start with these names)
_ENTRY = {"euler": "_euler.euler_worker", "rk45": "_rk45.rk45_worker",
          "rosenbrock": "_rosenbrock.rodas_worker", "auto": "_rosenbrock.rodas_worker"}

#: the program of the process aside (it reads the resolved spec, JSON, from stdin; its argument
#: is the parent's pid)
CHILD_CODE = ("import json, sys; from lcnfast.study.warm import compile_integrators, "
              "die_with_parent; die_with_parent(int(sys.argv[1])); "
              "compile_integrators(json.loads(sys.stdin.read()))")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent(parent):
    """Have the kernel SIGKILL this process when its parent ``parent`` (a pid) dies, on Linux
    (elsewhere nothing): a run killed by SIGTERM or SIGKILL must not leave its compiler
    process running (an orphan compiled on for a minute). Exits at once if the parent is gone
    already."""
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            return
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:
        os._exit(1)


def _tiny(integ):
    """An integrator entry shortened to a few steps (same kernels, no real work)."""
    integ = dict(integ)
    if integ["method"] == "euler":
        integ.update(n_steps=2, save_every=1)
    else:
        integ.update(t_end=min(integ["t_end"], 1.0) * 1e-3, max_steps=5, save=2)
    return integ


def _settings(study):
    """The first cell of each distinct (loss name, integrator method): one warm-up each."""
    first = {}
    for cell in study.cells:
        first.setdefault((cell.loss["name"], cell.integrator["method"]), cell)
    return list(first.values())


def _run_tiny(problem, cell, seed, n_threads):
    """Two flows of ``cell``'s integrator setting, a few steps long."""
    W0 = draws.initial_points(cell, 0, 0, 2, seed)
    with warnings.catch_warnings():  # a few steps on 2 throwaway flows: they stop early
        warnings.simplefilter("ignore", FlowWarning)
        return integrate(problem, W0, _tiny(cell.integrator), n_threads)


def _read(spec):
    """The Study of ``spec``: a resolved spec (the dict a run hands its steps and dask workers)
    as the run recorded it (:func:`.shards.recorded_study`: its data files are not read again, so
    a worker of a remote cluster needs the study directory only), else a TOML file or name
    through :func:`.spec.load_spec`."""
    if isinstance(spec, dict) and "format_version" in spec:
        return recorded_study(spec)
    return load_spec(spec)


def _problem(study_dir, cell):
    """The Problem of ``cell``'s first dataset (written by :func:`.shards.write_datasets`)."""
    X, Y = read_dataset(study_dir, cell.index, 0)
    return Problem(cell.arch(), X, Y, cell.loss_fn())


def warm_up(spec, study_dir, n_threads=None, between=None):
    """Compile (or load from Numba's cache) every kernel the study needs: one tiny run of two
    flows and their classification per distinct loss and integrator method (on the study's
    data, which must be written). ``between()``, if given, is called before each setting
    (the runner's check for a deferred Ctrl-C)."""
    study = _read(spec)
    for cell in _settings(study):
        if between is not None:
            between()
        problem = _problem(study_dir, cell)
        ds = _run_tiny(problem, cell, study.spec["seed"], n_threads)
        _analysis.classify(ds, problem, **study.spec["analysis"])


def warm_analysis(spec, study_dir, between=None):
    """Compile the kernels of the flows' end diagnostics (Hessians, gradients) and of the
    classification for each distinct loss, without integrating (the part of the warm-up that
    runs alongside :func:`compiling_aside`); ``between()`` as :func:`warm_up`'s."""
    study = _read(spec)
    done = set()
    for cell in _settings(study):
        if cell.loss["name"] in done:
            continue
        if between is not None:
            between()
        done.add(cell.loss["name"])
        problem = _problem(study_dir, cell)
        W0 = draws.initial_points(cell, 0, 0, 2, study.spec["seed"])
        problem.hessian(W0)  # the kernels of gradient_flow's newton_step_final
        problem.grad(W0)
        _analysis.classify_points(problem, W0, **study.spec["analysis"])


def _synthetic_problem(cell, rng):
    """A Problem of ``cell``'s architecture, loss and data shapes on random data (the shapes,
    not the values, decide what compiles)."""
    arch = cell.arch()
    m = cell.m or 2 * arch.d0
    X = rng.standard_normal((arch.d0, m))
    Y = rng.standard_normal((arch.d_N, m))
    return Problem(arch, X, Y, cell.loss_fn())


def compile_integrators(spec):
    """Compile (or load) the integrators of every setting of ``spec`` on synthetic data of the
    right shapes: the body of the process :func:`compiling_aside` starts."""
    study = _read(spec)
    rng = np.random.default_rng(0)
    for cell in _settings(study):
        _run_tiny(_synthetic_problem(cell, rng), cell, study.spec["seed"], 1)


def compile_rodas_tail(spec, between=None):
    """Compile (or load), in this process, the two helpers of the RODAS worker that the
    process aside reaches last, ``_rosenbrock._step_levels`` and ``_dense_saves`` (~9 s of its
    ~62 s of compiles on 2026-12-06; ~6 s of ~52 s since the workers run on threads), for
    every setting of ``spec`` with ``method`` "auto" or "rosenbrock".

    Run in the block of :func:`compiling_aside` once the data are written (~10-15 s in): by
    then the other process has cached the one-flow gradient these helpers call, so they take
    ~11 s here, and it reaches them ~30 s in and loads them instead of compiling them. Cold
    quickstart, 2026-12-06 12:12 UTC: the compile step 61.8 s without, 53.7 s and 55.4 s with
    (run first, before the data, both processes compiled the data path at once and nothing
    was gained: 62.9 s). Again on 2026-12-07 (2 AVX2 cores, the workers on threads; two runs
    each, alternating, load 0.7-1.5): the process aside ended at 47.5 and 51.3 s with, 48.7
    and 63.6 s without. Their argument types are those ``rodas_flow`` passes (the options,
    outputs and work tuples built as :func:`lcnfast.gradient_flow` and
    ``_rosenbrock.new_work`` build them); were they to differ, the other process would simply
    compile its own, as before. ``between()`` as :func:`warm_up`'s, before each compile."""
    import numba

    from .. import _codegen, _integrate, _rosenbrock
    from .._flow_args import loss_levels_arg
    from ..flows import _outputs

    study = _read(spec)
    rng = np.random.default_rng(0)
    for cell in _settings(study):
        if cell.integrator["method"] not in ("auto", "rosenbrock"):
            continue
        problem = _synthetic_problem(cell, rng)
        model, n, kv = problem.model, problem.arch.n_params, problem.arch.k_v
        opt = _integrate.RKOptions(1.0, 1e-6, 1e-9, 0.0, 1, np.zeros(1), loss_levels_arg(None),
                                   LANES)
        out = _outputs(1, n, kv, 1)
        wk = _rosenbrock.new_work(model, n)
        scratch = (wk.kW, wk.kG, wk.kL, wk.kV)
        kern, use_kern = _codegen.NO_KERNEL, False  # the types of either choice
        for fn, args in (
            (_rosenbrock._step_levels, (model, opt, out, 0, False, wk, 1.0, 0.0, 1.0, 1.0, 1.0)),
            (_rosenbrock._dense_saves,
             (model, kern, use_kern, opt, out, 0, False, wk, scratch, 0, 0.0, 1.0)),
        ):
            if between is not None:
                between()
            fn.compile(tuple(numba.typeof(a) for a in args))


def _integrators_cached(study):
    """Whether Numba's cache holds an entry of every integrator ``study`` uses."""
    d = _numba_cache.cache_dir()
    if d is None:
        return True  # nothing to share through
    methods = {cell.integrator["method"] for cell in study.cells}
    return all(any(d.glob(f"{_ENTRY[m]}-*.nbi")) for m in methods)


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def compiling_aside(spec, enabled=True):
    """Within the block, a second process compiles the integrators of ``spec`` into Numba's
    disk cache (see the module docstring); on leaving, waits for it. Its failure costs only
    time: the warm-up then compiles in this process (logged as a warning with the reason)."""
    study = _read(spec)
    if not enabled or _cpus() < 2 or not _numba_cache.caching_available() or _integrators_cached(study):
        yield None
        return
    root = str(Path(__file__).resolve().parents[2])  # the lcnfast this process imported
    env = dict(os.environ, LCNFAST_NOTICES="0", PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD_CODE, str(os.getpid())],
                                stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
        feeder = threading.Thread(target=proc.communicate, args=(json.dumps(study.spec).encode(),))
        feeder.start()  # communicate() also waits for the process: join the thread to wait
        try:
            yield proc
        except BaseException:
            proc.kill()
            raise
        finally:
            feeder.join()
        if proc.returncode != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            log.warning("compiling the integrators aside failed (exit %s: %s); compiling them "
                        "here instead", proc.returncode, lines[-1] if lines else "no message")
