"""Running an integrator's worker kernel on several threads at once.

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
"""

from __future__ import annotations

import threading

__all__ = ["run_workers"]


def run_workers(worker, args, n_workers, stop):
    """Call ``worker(*args)`` (a ``nogil`` Numba kernel) on ``n_workers`` threads at once, the
    calling thread one of them, and wait for all. ``stop`` (1,) int64 is the run's flag that
    the worker polls (and part of ``args``): if the calling thread is interrupted while it
    waits (a KeyboardInterrupt from a SIGINT handler of the caller's own), ``stop[0]`` is set
    so that the other workers end too, and the interrupt propagates once they have. A worker
    that raises (a failed allocation: the kernels raise nothing else) sets ``stop[0]`` too, and
    its exception is raised once all have ended."""
    errors = []
    done = [threading.Event() for _ in range(1, n_workers)]  # one per helper thread

    def call(ended=None):
        try:
            worker(*args)
        except BaseException as exc:  # re-raised in the calling thread below
            errors.append(exc)
            stop[0] = 1
        finally:
            if ended is not None:
                ended.set()

    for i, ended in enumerate(done, 1):
        threading.Thread(target=call, args=(ended,), name=f"lcnfast-worker-{i}",
                         daemon=True).start()
    # Waiting on events, not Thread.join: a join interrupted by KeyboardInterrupt can mark a
    # running thread as stopped (Python 3.11, bpo-45274's fix), and a second join then returns
    # at once, with the helper still writing.
    try:
        call()
        for ended in done:
            ended.wait()
    except BaseException:
        stop[0] = 1
        for ended in done:
            ended.wait()
        raise
    if errors:
        raise errors[0]
