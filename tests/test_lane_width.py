"""Results do not depend on the lane width (``LCNFAST_LANES``, lcnfast._lane_width).

Claim: gradient descent, Dormand-Prince and the batched gradients give bitwise the same
results whatever the number of flows the lane kernels keep side by side. Why bitwise: each
lane's arithmetic is the same operations in the same order as one flow alone (no fast-math
reassociation or contraction across or within lanes: a vectorised lane loop computes every
lane exactly as its scalar remainder loop would), a lane never reads another lane, and a
flow's step sizes and stopping rule are its own. Only which flow sits in which lane, and when
a lane picks up the next flow, change with the width.

The other width runs in a subprocess with ``LCNFAST_LANES`` and an empty ``NUMBA_CACHE_DIR``
of its own (the width is baked into the compiled kernels), which writes its results to an
.npz file; this process computes the same at its import width and compares. Flows: 37 (a
multiple of neither width, so the last lane block is partial and lanes refill at different
moments), a few hundred steps, stopping at different times (grad_tol). Cases: the square loss
through the generated kernel and through the generic lane kernel (Gram path), and the
log-cosh loss (data path of the generic lane kernel).

Cost: the subprocess compiles everything these calls need but the Hessian (patched out, see
:func:`compute`): the Dormand-Prince run, gradient descent, the serial and parallel lane
batches, ~90 s on one core. tests/conftest.py starts it when the test is collected, so that
it compiles while the rest of the suite runs (:class:`OtherWidthRun`). Checked able to fail:
scaling the lane batches' losses by ``1 + 2.2e-16 (LANES - 8)`` makes it fail on the first
loss compared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numba
import numpy as np
import pytest

import lcnfast
from lcnfast import Architecture, Problem, _lane_width, _lanes, data, losses

# two threads, or the one a process started with NUMBA_NUM_THREADS=1 has
TWO_THREADS = min(2, numba.config.NUMBA_NUM_THREADS)
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
K = 37

CASES = {
    "square_generated": (losses.square, "generated"),
    "square_generic": (losses.square, "generic"),
    "logcosh": (lambda: losses.log_cosh(1.5), "generic"),
}


def _no_hessian(problem, W):
    return np.full(W.shape[0], np.nan)


@mock.patch("lcnfast.flows._lambda_max", _no_hessian)
@mock.patch("lcnfast._rosenbrock.newton_step_norm", _no_hessian)
def compute() -> dict[str, np.ndarray]:
    """Every result compared, by name: the data variables of a gradient-descent and a
    Dormand-Prince run of K flows, and losses and gradients of batches, per case; plus the
    lane width (``lanes``) of this process. The Datasets' ``h_lambda_max_final`` and
    ``newton_step_final`` (eigenvalues of the Hessian at the end points: not lane code) are
    NaN in both processes, which saves the subprocess compiling the Hessian kernels."""
    arch = Architecture(14, (3, 2, 3), (1, 2, 1))
    td = data.teacher(arch, 24, noise=0.1, seed=18)
    w0 = data.initial_filters(arch, K, scale=0.5, seed=2)
    wide = data.initial_filters(arch, 301, seed=3)  # a batch that goes parallel
    res = {"lanes": np.array(_lanes.LANES)}
    for case, (loss, kernel) in CASES.items():
        p = Problem(arch, td.X, td.Y, loss(), kernel=kernel)
        gd = lcnfast.gradient_descent(p, w0, h=1e-3, n_steps=400, save_every=100, grad_tol=0.1)
        rk = lcnfast.gradient_flow(p, w0, t_end=0.5, save_times=[0.0, 0.2, 0.5], grad_tol=0.1)
        for run, ds in (("gd", gd), ("rk45", rk)):
            assert ds.attrs["lanes"] == _lanes.LANES
            for name, var in ds.data_vars.items():
                res[f"{case}.{run}.{name}"] = var.values
        for batch, W in (("few", w0), ("wide", wide)):
            res[f"{case}.loss_and_grad.{batch}.L"], res[f"{case}.loss_and_grad.{batch}.G"] = (
                p.loss_and_grad(W)
            )
            res[f"{case}.grad.{batch}"] = p.grad(W)
    return res


def session_dir() -> Path:
    """Where the other width's run of this test session writes: one directory per session,
    named by the pid of the pytest process that leads it (this one, or the pytest-xdist
    controller whose worker this is), so a worker finds the run its controller started."""
    leader = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
    return Path(tempfile.gettempdir()) / f"lcnfast-lane-width-{leader}"


# the subprocess's program: compute, then publish the results by an atomic rename (or the
# traceback, for the waiting test to show)
_CHILD = """import sys, traceback, os, numpy as np
d = sys.argv[1]
try:
    import test_lane_width as t
    np.savez(os.path.join(d, "part.npz"), **t.compute())
    os.replace(os.path.join(d, "part.npz"), os.path.join(d, "other.npz"))
except BaseException:
    with open(os.path.join(d, "failed.txt"), "w") as f:
        f.write(traceback.format_exc())
    raise
"""


class OtherWidthRun:
    """:func:`compute` at the other lane width (8, or 16 if this process runs 8) in a
    subprocess with ``LCNFAST_LANES`` and an empty Numba cache of its own, in
    :func:`session_dir`. Started by tests/conftest.py as soon as this test is collected (by
    the pytest-xdist controller when the workers report it collected), so that its ~90 s of
    compiling overlap the rest of the suite (Numba compiles on one thread). Any process of
    the session reads it with :func:`other_width_results`; :meth:`close` ends it."""

    def __init__(self):
        self.dir = session_dir()
        shutil.rmtree(self.dir, ignore_errors=True)  # left by an earlier session of this pid
        self.dir.mkdir()
        env = dict(
            os.environ,
            LCNFAST_LANES=str(_other_width()),
            NUMBA_CACHE_DIR=str(self.dir / "numba"),
            PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS)]),
        )
        self._log = open(self.dir / "log.txt", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(self.dir)], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        (self.dir / "pid").write_text(str(self.proc.pid))

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _other_width() -> int:
    return 8 if _lanes.LANES != 8 else 16


def _ended(pid_file):
    """Whether the process named in ``pid_file`` has ended (a zombie, not yet reaped by the
    process that started it, has too): a run killed by a signal writes no failed.txt."""
    import psutil

    try:
        return psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE
    except (FileNotFoundError, ValueError):  # not written yet
        return False
    except psutil.NoSuchProcess:
        return True


def other_width_results(timeout=1800.0):
    """The other width's results (an NpzFile) once its run in :func:`session_dir` has
    written them; AssertionError with its traceback if it failed."""
    d = session_dir()
    t0 = time.perf_counter()
    while not (d / "other.npz").exists():
        assert not (d / "failed.txt").exists(), (
            f"the {_other_width()}-lane run failed:\n{(d / 'failed.txt').read_text()}")
        assert d.is_dir(), f"no {_other_width()}-lane run in {d}"
        gone = _ended(d / "pid") and not (d / "other.npz").exists()  # killed, crashed
        assert not gone and time.perf_counter() - t0 < timeout, (
            f"the {_other_width()}-lane run {'ended' if gone else 'took too long'} without "
            f"results; its output:\n{(d / 'log.txt').read_text()[-3000:]}")
        time.sleep(0.2)
    print(f"width {_other_width()} in a subprocess: waited {time.perf_counter() - t0:.1f} s")
    return np.load(d / "other.npz")


def test_results_are_bitwise_the_same_for_two_lane_widths(other_width_run):
    other = _other_width()
    mine = compute()
    with other_width_results() as theirs:
        assert int(theirs["lanes"]) == other != int(mine["lanes"])  # else this checks nothing
        assert sorted(theirs.files) == sorted(mine)
        for name, a in mine.items():
            if name == "lanes":
                continue
            b = theirs[name]
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert a.tobytes() == b.tobytes(), (
                f"{name} differs between {mine['lanes']} and {other} lanes: "
                f"{np.argwhere(a != b)[:5].tolist()} ..."
            )
    # the flows ran a few hundred steps and stopped at different times (lanes refilled)
    for case in CASES:
        for run in ("gd", "rk45"):
            steps = mine[f"{case}.{run}.n_accepted"]
            assert steps.max() >= 100 and len(np.unique(steps)) > 1, (case, run)


@pytest.mark.parametrize("value", ["12", "0", "128", "-8", "eight", "8.0"])
def test_a_bad_lane_width_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match="LCNFAST_LANES"):
        _lane_width.lane_width({"LCNFAST_LANES": value})


def test_the_lane_width_follows_the_variable_else_the_cpu():
    assert [_lane_width.lane_width({"LCNFAST_LANES": v}) for v in ("1", "16", " 64 ")] == [
        1, 16, 64
    ]
    expected = 16 if _lane_width.target_has_avx512() else 8
    assert _lane_width.lane_width({}) == _lane_width.lane_width({"LCNFAST_LANES": ""}) == expected


def test_importing_lcnfast_with_a_bad_lane_width_fails_clearly(tmp_path):
    env = dict(os.environ, LCNFAST_LANES="24", NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", "import lcnfast"], env=env, capture_output=True,
                       text=True, check=False)
    assert r.returncode != 0
    assert "ValueError: LCNFAST_LANES must be a power of two" in r.stderr


# ----------------------------------------------------------------------------- flow width
def test_the_flow_width_grows_with_the_flows_per_worker_up_to_each_methods_cap():
    fw, L = _lane_width.flow_width, _lanes.LANES
    caps = _lane_width.MAX_FLOW_WIDTH
    assert fw(1, 1, "euler") == fw(37, 2, "rk45") == L  # few flows: the generic width
    for method, cap in caps.items():
        assert fw(10**6, 2, method) == max(cap, L)
        for n_workers in (1, 2, 3):
            for n_flows in (1, 63, 64, 127, 128, 1000, 4096):
                w = fw(n_flows, n_workers, method)
                assert w >= L and w & (w - 1) == 0 and w <= max(cap, L)
                # each worker gets GROUPS_PER_WORKER full groups, unless at the floor LANES
                assert w == L or n_flows >= _lane_width.GROUPS_PER_WORKER * n_workers * w
                # and the next width up would not give it them
                assert 2 * w > cap or n_flows < _lane_width.GROUPS_PER_WORKER * n_workers * 2 * w


def test_rk45_widths_keep_the_stage_arrays_within_two_thirds_of_the_l1_cache(monkeypatch):
    """The measured cases of lcnfast._lane_width's comment: with 48 KiB of L1 (Zen 5) n = 9
    takes 64 lanes, n = 12 and 15 take 32, n = 21 takes 16; with 32 KiB (Zen 3) n = 9 takes
    32 (never below LANES, never above the cap or the flows' share). Gradient descent has no
    such limit. 7 n width float64 against 2/3 of the cache, e.g. n = 9, 64 lanes: 32,256 <=
    32,768 bytes."""
    fw, L = _lane_width.flow_width, _lanes.LANES
    fits = _lane_width.rk45_stages_fit
    assert fits(9, 64, 48 * 1024) and not fits(9, 128, 48 * 1024)
    assert fits(9, 32, 32 * 1024) and not fits(9, 64, 32 * 1024)
    assert fits(21, 16, 48 * 1024) and not fits(21, 32, 48 * 1024)
    for l1, n, want in ((48, 9, 64), (48, 12, 32), (48, 15, 32), (48, 21, 16), (32, 9, 32)):
        monkeypatch.setattr(_lane_width, "L1_DATA_BYTES", l1 * 1024)
        assert fw(10**6, 2, "rk45", n) == max(want, L), (l1, n)
        assert fw(10**6, 2, "euler", n) == max(_lane_width.MAX_FLOW_WIDTH["euler"], L)
        assert fw(256, 2, "rk45", n) == max(min(want, 32), L)  # 4 groups of 32 per worker


def test_the_l1_data_cache_is_read_from_sysfs_or_taken_as_32_kib(tmp_path):
    """Linux's cache description (index*/level, type, size): the level-1 data cache's size,
    not the instruction cache's or level 2's; 32 KiB when the folder is missing or a size is
    not a number; other entries of the folder do not count."""
    def cache(name, level, kind, size):
        d = tmp_path / name
        d.mkdir()
        for f, v in (("level", level), ("type", kind), ("size", size)):
            (d / f).write_text(f"{v}\n")
    (tmp_path / "a_file").write_text("not a cache\n")  # entries other than index* are skipped
    cache("index0", 1, "Instruction", "32K")
    cache("index1", 1, "Data", "48K")
    cache("index2", 2, "Unified", "1024K")
    assert _lane_width.l1_data_cache_bytes(str(tmp_path)) == 48 * 1024
    assert _lane_width.l1_data_cache_bytes(str(tmp_path / "none")) == 32 * 1024
    (tmp_path / "index1" / "size").write_text("lots\n")
    assert _lane_width.l1_data_cache_bytes(str(tmp_path)) == 32 * 1024


@pytest.mark.parametrize("run", ["gd", "rk45"])
def test_results_through_the_generated_kernel_are_bitwise_the_same_for_every_flow_width(run):
    """Claim: the integrators give bitwise the same Dataset (every variable) whatever the
    number of flows a worker keeps in the generated kernel's lanes (lcnfast._lane_width.
    flow_width; the kernel takes any width at run time, so one process checks every width).
    Why bitwise: as for LANES (module docstring). 37 flows stopping at different steps
    (grad_tol), with saves and loss levels, on two threads: lanes refill at different moments
    at each width, and the widest groups stay partly empty. Checked able to fail: gradient
    descent stepping with h * (1 + 2.2e-16 (width > LANES)) fails it (differences ~1e-12)."""
    arch = Architecture(14, (3, 2, 3), (1, 2, 1))
    td = data.teacher(arch, 24, noise=0.1, seed=18)
    p = Problem(arch, td.X, td.Y, losses.square(), kernel="generated")
    w0 = data.initial_filters(arch, K, scale=0.5, seed=2)
    results = {}
    for width in sorted({_lanes.LANES, 2 * _lanes.LANES, 64}):
        with mock.patch("lcnfast.flows.flow_width", lambda *_, w=width: w):
            if run == "gd":
                ds = lcnfast.gradient_descent(p, w0, h=1e-3, n_steps=400, save_every=100,
                                              grad_tol=0.1, loss_levels=[1.0, 0.5],
                                              n_threads=TWO_THREADS)
            else:
                ds = lcnfast.gradient_flow(p, w0, t_end=0.5, save_times=[0.0, 0.2, 0.5],
                                           grad_tol=0.1, loss_levels=[1.0, 0.5],
                                           n_threads=TWO_THREADS)
        assert ds.attrs["lanes"] == width and ds.attrs["gradient_kernel"] == "generated"
        results[width] = ds
    first, *others = results.values()
    steps = first.n_accepted.values
    assert steps.max() >= 100 and len(np.unique(steps)) > 1  # uneven flows
    for ds in others:
        for name, var in first.data_vars.items():
            np.testing.assert_array_equal(ds[name].values, var.values, err_msg=name)
