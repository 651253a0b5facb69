"""Ctrl-C during a long run (issue 17, fault 3): the integrators stop within about a second
of SIGINT and hand back the partial Dataset (status ``interrupted``, the time each flow
reached), instead of ignoring the signal until the kernel returns and discarding everything."""

from __future__ import annotations

import os
import signal
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import lcnfast as lf
from lcnfast import _integrate as I

ROOT = Path(__file__).resolve().parents[1]

# One thread, 64 flows: one group of lanes (8 or 16, lcnfast._lane_width) runs side by side,
# the others wait for a lane (never started when the signal comes). Both runs would take hours:
# the flow is stiff at rtol = 1e-12 (its steps stay small) and t_end = 1e9, the descent has 1e11
# steps.
CHILD = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background parent may ignore it
import numpy as np
import pytest
import lcnfast as lf
arch = lf.Architecture(8, (2, 2), (1, 1))
td = lf.data.teacher(arch, 8, noise=0.1, seed=0)
p = lf.Problem(arch, td.X, td.Y, lf.losses.square(), kernel="generic")
w0 = lf.data.initial_filters(arch, 64, scale=0.5, seed=1)
lf.gradient_flow(p, w0[:2], t_end=1.0)  # compile or load the kernels first
lf.gradient_descent(p, w0[:2], h=1e-3, n_steps=2)
runs = {
    "flow": lambda: lf.gradient_flow(p, w0, t_end=1e9, rtol=1e-12, atol=1e-14,
                                     max_steps=10**12, save_times=[0.0, 1e-3, 1e9], n_threads=1),
    "descent": lambda: lf.gradient_descent(p, w0, h=1e-3, n_steps=10**11, save_every=10**9,
                                           n_threads=1),
}
for name, run in runs.items():
    print("go", name, flush=True)
    ds = run()
    print("back", name, repr(time.time()), flush=True)
    lf.to_netcdf(ds, sys.argv[1] + "/" + name + ".nc")
print("done", flush=True)
"""


def _reader(proc):
    """The child's stdout lines through a queue (so that waiting for one can time out)."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    return lines


def _expect(lines, word, timeout):
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no {word!r} from the child within {timeout} s") from None
    assert line.startswith(word), line
    return line.split()


def test_sigint_stops_long_runs_within_two_seconds_and_keeps_the_partial_dataset(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    lines = _reader(proc)
    try:
        for name in ("flow", "descent"):
            _expect(lines, "go", timeout=900)  # the first may compile the kernels
            time.sleep(1.0)  # well into the run
            sent = time.time()
            proc.send_signal(signal.SIGINT)
            back = float(_expect(lines, "back", timeout=20)[2])
            assert back - sent < 2.0, (name, back - sent)
        _expect(lines, "done", timeout=60)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert err.count("interrupted (SIGINT)") == 2, err

    for name in ("flow", "descent"):
        ds = lf.open_dataset(tmp_path / f"{name}.nc")
        assert ds.attrs["interrupted"] == 1
        assert np.all(ds.status.values == I.INTERRUPTED)
        assert ds.status.attrs["flag_meanings"].split()[I.INTERRUPTED] == "interrupted"
        started = ds.n_grad_evals.values > 0
        assert started.sum() == ds.attrs["lanes"]  # one thread: one group of lanes, none finished
        # running flows: their state so far, at the time each reached
        t = ds.t_final.values[started]
        assert np.all(t > 0) and np.all(np.isfinite(ds.loss_final.values[started]))
        assert np.all(ds.loss_final.values[started] <= ds.loss_init.values[started])
        assert np.any(ds.w_final.values[started] != ds.w_init.values[started], axis=1).all()
        assert not np.isnan(ds.loss.values[started, 0]).any()  # saved at t = 0
        assert np.isnan(ds.loss.values[:, -1]).all()  # never reached the last save time
        # flows never started: at t = 0 where they began, nothing evaluated
        idle = ~started
        assert np.all(ds.t_final.values[idle] == 0)
        np.testing.assert_array_equal(ds.w_final.values[idle], ds.w_init.values[idle])
        assert np.isnan(ds.loss_final.values[idle]).all()
        if name == "descent":  # time = steps taken * h
            np.testing.assert_allclose(t, ds.n_accepted.values[started] * 1e-3, rtol=1e-12)


def test_a_complete_run_says_it_was_not_interrupted():
    arch = lf.Architecture(8, (2, 2), (1, 1))
    td = lf.data.teacher(arch, 8, noise=0.1, seed=0)
    p = lf.Problem(arch, td.X, td.Y, lf.losses.square())
    w0 = lf.data.initial_filters(arch, 3, seed=1)
    assert lf.gradient_flow(p, w0, t_end=0.5).attrs["interrupted"] == 0
    assert lf.gradient_descent(p, w0, h=1e-3, n_steps=5).attrs["interrupted"] == 0
    assert lf.STATUS[I.INTERRUPTED] == "interrupted"
    # the existing codes keep their values
    assert [lf.STATUS[c] for c in range(5)] == [
        "converged", "reached_end", "max_steps", "step_underflow", "non_finite"
    ]


def test_runs_from_a_helper_thread_are_not_affected():
    """SIGINT reaches the main thread only: a run started elsewhere runs in that thread, as
    before, with the same results."""
    arch = lf.Architecture(8, (2, 2), (1, 1))
    td = lf.data.teacher(arch, 8, noise=0.1, seed=0)
    p = lf.Problem(arch, td.X, td.Y, lf.losses.square())
    w0 = lf.data.initial_filters(arch, 3, seed=1)
    box = {}
    th = threading.Thread(target=lambda: box.update(ds=lf.gradient_flow(p, w0, t_end=0.5)))
    th.start()
    th.join()
    main = lf.gradient_flow(p, w0, t_end=0.5)
    assert box["ds"].attrs["interrupted"] == 0
    np.testing.assert_array_equal(box["ds"].w_final.values, main.w_final.values)


def test_other_signals_reach_a_wakeup_fd_installed_before_the_run():
    """During a run the wakeup fd is lcnfast's (to see SIGINT at once); bytes of other signals
    are passed on to the one installed before (an asyncio loop's, say), which is restored."""
    arch = lf.Architecture(8, (2, 2), (1, 1))
    td = lf.data.teacher(arch, 8, noise=0.1, seed=0)
    p = lf.Problem(arch, td.X, td.Y, lf.losses.square(), kernel="generic")
    w0 = lf.data.initial_filters(arch, 64, scale=0.5, seed=1)
    lf.gradient_descent(p, w0[:2], h=1e-3, n_steps=2)
    r, w = os.pipe()
    os.set_blocking(w, False)
    got = []
    old_handler = signal.signal(signal.SIGUSR1, lambda *a: got.append("handler"))
    old_fd = signal.set_wakeup_fd(w)
    timer = threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGUSR1))
    try:
        timer.start()
        t0 = time.monotonic()
        ds = lf.gradient_descent(p, w0[:8], h=1e-3, n_steps=1_500_000, save_every=10**6,
                                 n_threads=1)  # ~0.9 s
        assert time.monotonic() - t0 > 0.1  # the signal came during the run
        assert signal.set_wakeup_fd(old_fd) == w  # restored
        os.set_blocking(r, False)
        assert os.read(r, 64) == bytes([signal.SIGUSR1])
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, old_handler)
        signal.set_wakeup_fd(old_fd)
        os.close(r)
        os.close(w)
    assert got == ["handler"] and ds.attrs["interrupted"] == 0
    assert np.all(ds.status.values == I.REACHED_END)


# RODAS / auto (lcnfast._rosenbrock): one thread, 5000 flows integrated one at a time at
# rtol = 1e-13 (minutes of work): SIGINT ends the running flow and starts no other.
CHILD_RODAS = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import lcnfast as lf
arch = lf.Architecture(8, (2, 2), (1, 1))
td = lf.data.teacher(arch, 8, noise=0.1, seed=0)
p = lf.Problem(arch, td.X, td.Y, lf.losses.square(), kernel="generic")
w0 = lf.data.initial_filters(arch, 5000, scale=0.5, seed=1)
method = sys.argv[2]
lf.gradient_flow(p, w0[:2], t_end=1.0, method=method)  # compile or load the kernels first,
p.grad(w0); p.hessian(w0)  # and the batched ones the end of a 5000-flow run takes (a cold cache)
print("go", flush=True)
ds = lf.gradient_flow(p, w0, t_end=1e6, rtol=1e-13, atol=1e-15, method=method, n_threads=1)
print("back", repr(time.time()), flush=True)
lf.to_netcdf(ds, sys.argv[1] + "/rodas.nc")
"""


@pytest.mark.parametrize("method", ["rosenbrock", "auto"])
def test_sigint_stops_the_stiff_methods(tmp_path, method):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", CHILD_RODAS, str(tmp_path), method], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=tmp_path)  # fmt: skip
    lines = _reader(proc)
    try:
        _expect(lines, "go", timeout=900)
        time.sleep(1.0)
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        back = float(_expect(lines, "back", timeout=20)[1])
        assert back - sent < 2.0, back - sent
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ds = lf.open_dataset(tmp_path / "rodas.nc")
    assert ds.attrs["interrupted"] == 1
    status = ds.status.values
    # one worker: the flow it was integrating is interrupted at its state so far, earlier
    # flows ended normally, the rest never started (t_final = 0, nothing evaluated)
    running = status == I.INTERRUPTED
    done = ~running
    assert 0 < np.count_nonzero(ds.n_grad_evals.values > 0) < ds.sizes["flow"]
    idle = running & (ds.n_grad_evals.values == 0)
    assert np.count_nonzero(running & ~idle) == 1
    assert np.all(ds.t_final.values[idle] == 0)
    np.testing.assert_array_equal(ds.w_final.values[idle], ds.w_init.values[idle])
    assert np.isin(status[done], [I.CONVERGED, I.REACHED_END]).all()
    assert (ds.t_final.values[running & ~idle] > 0).all()
