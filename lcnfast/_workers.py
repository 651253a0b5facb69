"""Running an integrator's workers on threads of this process.

Each integrator (:mod:`lcnfast._integrate`, :mod:`lcnfast._rosenbrock`) is a Numba worker
compiled with ``nogil``: a loop that takes the next unstarted flow from a counter shared by
all workers (an atomic fetch-and-add) until none is left or ``stop[0]`` is set. The workers
run on plain threads, the calling thread being one of them, instead of under a ``prange``
loop: a ``parallel=True`` wrapper would link the worker's whole call tree into a parallel
region and optimise and translate it twice more, which cost 12-13 s of compile time for the
RODAS worker (60% of the cold compile of a study), for no speed: a worker runs for the whole
batch, so the launch of a thread (~50 us) is nothing next to it, and the threads share no
cache lines while they run (the running maxima live in each worker's lanes).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba

__all__ = ["run_workers"]


def run_workers(worker, args, n_workers):
    """Compile (or load) ``worker`` for ``args`` in this thread, then run ``worker(*args)``
    on ``n_workers`` threads at once, this one included, and return when all have returned.

    Compiling first keeps Ctrl-C working during a long compile (no kernel runs yet); an
    exception in any worker is raised here once every worker has returned.
    """
    worker.compile(tuple(numba.typeof(a) for a in args))
    if n_workers <= 1:
        worker(*args)
        return
    with ThreadPoolExecutor(n_workers - 1, thread_name_prefix="lcnfast-worker") as pool:
        others = [pool.submit(worker, *args) for _ in range(n_workers - 1)]
        try:
            worker(*args)
        finally:
            for f in others:
                f.result()
