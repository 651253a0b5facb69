"""Running a kernel on several threads at once: an integrator's workers, a batch's rows.

Private module. Every integrator is a worker kernel (``euler_worker``, ``rk45_worker``,
``rodas_worker``) that takes flows from a shared counter until none is left
(:mod:`lcnfast._integrate`, "Layout"). :func:`run_workers` calls it on n threads: the calling
thread and n - 1 Python threads, each entering the compiled kernel, which releases the GIL
(``nogil``), so the threads run on separate cores as a ``prange`` over the workers would.

Why not ``prange``: Numba links every kernel a parallel function calls into that function
and optimises the whole again, so the parallel wrapper of a worker cost as much compile time
as the worker itself once more. For the RODAS worker (``method = "auto"``, the quickstart's
integrator) that was 22-28 s of a cold start on 2 AVX2 cores; a thread per worker costs
~0.1 ms per run instead. It also keeps the integrators off Numba's threading layer (no
second OpenMP team next to the caller's: see lcnfast._signals).

:func:`run_rows` does the same for the batched Hessians, losses, Jacobians, final filters and
predictions of :mod:`lcnfast._batches` (contiguous ranges of rows, one per thread), whose
``prange`` wrappers cost ~17 s of a cold start. The batched gradients (lcnfast._lanes) stay on
``prange``: a call on 4096 flows takes ~0.1 ms, which starting threads would double.
"""

from __future__ import annotations

import threading

__all__ = ["run_rows", "run_workers"]


def run_workers(worker, args, n_workers, stop):
    """Call ``worker(*args)`` (a ``nogil`` Numba kernel) on ``n_workers`` threads at once, the
    calling thread one of them, and wait for all. ``stop`` (1,) int64 is the run's flag that
    the worker polls (and part of ``args``): if the calling thread is interrupted while it
    waits (a KeyboardInterrupt from a SIGINT handler of the caller's own), ``stop[0]`` is set
    so that the other workers end too, and the interrupt propagates once they have. A worker
    that raises (a failed allocation: the kernels raise nothing else) sets ``stop[0]`` too, and
    its exception is raised once all have ended."""
    _run_all([args] * n_workers, worker, stop)


def run_rows(rows, args, K, n_threads):
    """``rows(*args, lo, hi)`` (a ``nogil`` Numba kernel that fills rows lo..hi-1 of its
    outputs) over ``range(K)`` in ``n_threads`` contiguous ranges of equal length, one per
    thread, the calling thread one of them (one call on the calling thread when
    ``n_threads`` is 1 or K < 2). The rows' arithmetic must not depend on the range: results
    are then the same for any thread count."""
    n = max(1, min(int(n_threads), K))
    if n == 1:
        rows(*args, 0, K)
        return
    _run_all([(*args, j * K // n, (j + 1) * K // n) for j in range(n)], rows, None)


def _run_all(calls, fn, stop):
    """``fn(*calls[0])`` on the calling thread and ``fn(*calls[j])`` on helper thread j,
    at once; waits for all, then raises the first exception of any. ``stop`` (1,) int64 or
    None: set to 1 when a call raises or the wait is interrupted (see run_workers)."""
    errors = []
    done = [threading.Event() for _ in calls[1:]]  # one per helper thread

    def call(args, ended=None):
        try:
            fn(*args)
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)
            if stop is not None:
                stop[0] = 1
        finally:
            if ended is not None:
                ended.set()

    for j, ended in enumerate(done, 1):
        threading.Thread(target=call, args=(calls[j], ended), name=f"lcnfast-worker-{j}",
                         daemon=True).start()
    # Waiting on events, not Thread.join: a join interrupted by KeyboardInterrupt can mark a
    # running thread as stopped (Python 3.11, bpo-45274's fix), and a second join then returns
    # at once, with the helper still writing.
    try:
        call(calls[0])
        for ended in done:
            ended.wait()
    except BaseException:
        if stop is not None:
            stop[0] = 1
        for ended in done:
            ended.wait()
        raise
    if errors:
        raise errors[0]
