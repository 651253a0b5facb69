"""Results do not depend on the number of threads nor on how flows are batched.

The batched kernels split a batch into chunks over ``prange`` (a few per thread), so the
chunking differs between thread counts and between Numba's threading layers (TBB where its
wheel is installed: lcnfast._threading_layer; OpenMP otherwise); each flow's arithmetic must
not. The integrators' own
thread and batch invariance is tested with each method (test_flows, test_rosenbrock,
test_events); here also the thread runner they use, lcnfast._threads.run_workers.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lcnfast import Architecture, Problem, data, losses
from lcnfast._threading_layer import TBB_LIBRARY, preload_tbb

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import sys
    import numba
    import numpy as np
    from lcnfast import Architecture, Problem, data, losses

    out = sys.argv[1]
    arch = Architecture(23, (3, 4, 2), (2, 1, 1))
    td = data.teacher(arch, 9, noise=0.1, seed=2024)
    W = data.initial_filters(arch, 203, seed=7)
    for name, loss in [("square", losses.square()), ("logcosh", losses.log_cosh(2.0))]:
        p = Problem(arch, td.X, td.Y, loss)
        L, G = p.loss_and_grad(W)
        np.save(f"{out}/{name}_loss.npy", L)
        np.save(f"{out}/{name}_grad.npy", G)
        np.save(f"{out}/{name}_hessian.npy", p.hessian(W))
        np.save(f"{out}/{name}_filter.npy", p.final_filter(W))
        # a few flows alone
        np.save(f"{out}/{name}_single_grad.npy", np.stack([p.grad(W[i]) for i in (0, 101, 202)]))
        # a batch big enough for the prange kernels (smaller ones stay on the calling thread)
        np.save(f"{out}/{name}_big_grad.npy", p.grad(np.tile(W, (20, 1))))
    print(numba.get_num_threads(), numba.threading_layer())
    """
)

NAMES = [
    f"{loss}_{what}"
    for loss in ("square", "logcosh")
    for what in ("loss", "grad", "hessian", "filter", "single_grad", "big_grad")
]


def _tbb_wheel_installed():
    try:
        importlib.metadata.distribution("tbb")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def lcnfast_layer():
    """The threading layer lcnfast's prange kernels run on: TBB where its wheel is installed
    (the x86-64 platforms, a dependency there), else OpenMP (Numba's wheels have it)."""
    return "tbb" if _tbb_wheel_installed() else "omp"


def _run(tmp_path, threads, layer=None):
    """The SCRIPT's arrays from a child with ``threads`` Numba threads on the threading layer
    ``layer`` (None: lcnfast's choice, which the child must have used)."""
    out = tmp_path / f"threads{threads}{layer or ''}"
    out.mkdir()
    script = tmp_path / "compute.py"
    script.write_text(SCRIPT)
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = str(threads)
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer is not None:
        env["NUMBA_THREADING_LAYER"] = layer
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = subprocess.run(
        [sys.executable, str(script), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    # the child really used that many threads, on that layer
    assert res.stdout.split()[-2:] == [str(threads), layer or lcnfast_layer()]
    return {name: np.load(out / f"{name}.npy") for name in NAMES}


def test_results_bitwise_identical_for_one_and_two_threads_on_either_layer(tmp_path):
    one = _run(tmp_path, 1)
    two = _run(tmp_path, 2)
    two_omp = _run(tmp_path, 2, "omp") if lcnfast_layer() != "omp" else two
    for name in NAMES:
        for res in (two, two_omp):
            assert one[name].shape == res[name].shape, name
            assert np.array_equal(one[name], res[name]), name
    # and each flow alone equals the same flow inside the batch
    for res in (one, two):
        for loss in ("square", "logcosh"):
            assert np.array_equal(res[f"{loss}_single_grad"], res[f"{loss}_grad"][[0, 101, 202]])
            assert np.array_equal(res[f"{loss}_big_grad"][-203:], res[f"{loss}_grad"])
    assert one["square_grad"].shape == (203, 9)
    assert one["logcosh_hessian"].shape == (203, 9, 9)


@pytest.mark.parametrize("loss", [losses.square(), losses.log_cosh(2.0), losses.generalized_huber(1.0, -1.0)])
def test_flow_alone_equals_flow_inside_batch_bitwise(loss):
    arch = Architecture(23, (3, 4, 2), (2, 1, 1))
    td = data.teacher(arch, 9, noise=0.1, seed=2024)
    W = data.initial_filters(arch, 57, seed=8)
    p = Problem(arch, td.X, td.Y, loss)
    L, G = p.loss_and_grad(W)
    H = p.hessian(W)
    V = p.final_filter(W)
    for i in (0, 13, 28, 56):
        Li, gi = p.loss_and_grad(W[i])
        assert Li == L[i]
        assert np.array_equal(gi, G[i])
        assert np.array_equal(p.hessian(W[i]), H[i])
        assert np.array_equal(p.final_filter(W[i]), V[i])
        # and inside a different batch (other neighbours, other position, other chunking)
        sub = np.concatenate([W[i : i + 1], W[::-1]])
        assert np.array_equal(p.grad(sub)[0], G[i])
        assert np.array_equal(p.hessian(sub[:2])[0], H[i])


# ----------------------------------------------------------------------------- run_workers
# The integrators run their worker kernel on n threads with lcnfast._threads.run_workers; these
# tests drive it with Python workers (it calls any callable the same way).


def test_run_workers_runs_every_worker_at_once_the_caller_among_them():
    # claim: n workers run concurrently (a barrier of n passes only if all are inside at once;
    # its timeout turns a serial run into a failure, not a hang), one of them in the caller
    from lcnfast._threads import run_workers

    n = 3
    barrier = threading.Barrier(n, timeout=30)
    idents = []

    def worker(stop):
        idents.append(threading.get_ident())
        barrier.wait()

    stop = np.zeros(1, np.int64)
    run_workers(worker, (stop,), n, stop)
    assert len(set(idents)) == n
    assert threading.get_ident() in idents
    assert stop[0] == 0


def test_run_workers_stops_the_others_and_raises_a_workers_exception():
    from lcnfast._threads import run_workers

    ended = []

    def worker(stop):
        if threading.current_thread().name == "lcnfast-worker-1":
            raise MemoryError("no room")
        deadline = time.monotonic() + 30
        while stop[0] == 0 and time.monotonic() < deadline:  # polls as the kernels do
            time.sleep(0.001)
        ended.append(bool(stop[0]))

    stop = np.zeros(1, np.int64)
    with pytest.raises(MemoryError, match="no room"):
        run_workers(worker, (stop,), 3, stop)
    assert ended == [True, True]  # both others saw the flag and ended before the raise


def test_an_interrupt_while_waiting_stops_the_workers_before_it_propagates():
    # a KeyboardInterrupt raised in the caller while it waits for the helpers (a SIGINT handler
    # of the caller's own; here Python's default one) must not leave them running, writing
    # into the outputs
    from lcnfast._threads import run_workers

    ended = []

    def worker(stop):
        if threading.current_thread() is threading.main_thread():
            threading.Timer(0.2, signal.pthread_kill, (threading.get_ident(), signal.SIGINT)).start()
            return
        deadline = time.monotonic() + 30
        while stop[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        ended.append(bool(stop[0]))

    stop = np.zeros(1, np.int64)
    # Python's own handler, whatever this process inherited: started in the background by a
    # non-interactive shell (`nohup ... &`), a process begins with SIGINT ignored, and the
    # signal would never arrive (a CI run launched that way failed here after 30 s)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_workers(worker, (stop,), 2, stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert ended == [True]
    assert stop[0] == 1


def test_preload_tbb_loads_the_wheels_library_or_nothing():
    """preload_tbb returns the path of the library it loaded, and None without a wheel (the
    platforms with no tbb wheel: Numba then runs OpenMP), without an error."""
    assert preload_tbb("no-such-distribution-lcnfast") is None
    assert preload_tbb("pytest") is None  # installed, but holds no TBB library
    path = preload_tbb()
    if _tbb_wheel_installed():
        assert path is not None and path.name.startswith(TBB_LIBRARY.split(".")[0])
        assert path.is_file()
    else:
        assert path is None


FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import numpy as np
    from lcnfast import Architecture, Problem, data, losses

    arch = Architecture(16, (3, 3), (1, 1))
    td = data.teacher(arch, 32, seed=0)
    p = Problem(arch, td.X, td.Y, losses.square(), kernel="generic")
    W = data.initial_filters(arch, 4096, seed=1)  # big enough for the prange kernels

    def grad_bytes(_):
        return p.grad(W).tobytes()

    if __name__ == "__main__":
        here = grad_bytes(0)  # the parent's thread team is up before the fork
        with mp.get_context("fork").Pool(2) as pool:
            there = pool.map(grad_bytes, range(2), chunksize=1)
        print(all(g == here for g in there))
    """
)


def test_a_forked_process_runs_the_batched_gradients_after_its_parent_did(tmp_path):
    """multiprocessing's "fork" (Python 3.11's default on Linux) after a batched gradient: on
    TBB the children compute the same bits as the parent. On GNU OpenMP (Numba's omp layer on
    Linux) each child died with "Terminating: fork() called from a process already using GNU
    OpenMP, this is unsafe." and the pool waited forever (checked 2026-12-08 with
    NUMBA_THREADING_LAYER=omp). Where the tbb wheel is missing lcnfast runs on OpenMP, so the
    claim is made only where it is installed."""
    if lcnfast_layer() != "tbb":
        pytest.skip("no tbb wheel on this platform: Numba runs OpenMP, which is not fork-safe")
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    env = dict(os.environ, NUMBA_NUM_THREADS="2")
    env.pop("NUMBA_THREADING_LAYER", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                         timeout=240)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[-1] == "True", res.stdout
