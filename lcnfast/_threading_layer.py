"""Numba's threading layer for lcnfast's ``prange`` kernels: TBB where its wheel is installed.

Private module. The batched gradients (:mod:`lcnfast._lanes`, behind ``Problem.grad`` and
``Problem.loss_and_grad``) are ``prange`` kernels: a call on 4096 vectors takes ~30-50 us on
two threads. Under OpenMP (Numba's layer when it finds no TBB) each call is a fork and a join
of a static split: the calling thread waits for the other thread's half, and when that
thread's core is busy (another process, or the hypervisor running another guest on it) the
call took 85-140 us on 2 threads against ~44 us on one (2-core AMD EPYC, 2026-12-08; the
README, "Measured speed"). TBB's scheduler lets the calling thread take the chunks no other
thread has started (work stealing): 50-57 us there, and the same ~30 us as OpenMP on quiet
cores. Results do not depend on the layer: the chunks are whole blocks of independent lanes.
TBB is also fork-safe: after a batched gradient, a process forked by multiprocessing (Python
3.11's default on Linux) computes on; under GNU OpenMP (Numba's omp layer on Linux) each child
died ("fork() called from a process already using GNU OpenMP, this is unsafe") and a pool of
them waited forever (tests/test_threads.py).

Numba loads TBB as ``libtbb.so.12`` (``libtbb.12.dylib``, ``tbb12.dll``) through the dynamic
loader, which does not search the ``lib`` folder of a virtual environment where pip puts the
``tbb`` wheel's library (numba issue #6108): Numba then quietly falls back to OpenMP.
:func:`preload_tbb` loads the wheel's library by its path first; the loader then finds it by
that name. Numba's default order of layers (tbb, omp, workqueue) does the rest, and
``NUMBA_THREADING_LAYER`` still chooses another.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import sys

__all__ = ["preload_tbb"]

# the name Numba asks the loader for (numba.np.ufunc.parallel._check_tbb_version_compatible)
if sys.platform.startswith("win"):
    TBB_LIBRARY = "tbb12.dll"
elif sys.platform == "darwin":
    TBB_LIBRARY = "libtbb.12.dylib"
else:
    TBB_LIBRARY = "libtbb.so.12"


def preload_tbb(distribution="tbb"):
    """Load the TBB library of the installed ``distribution`` (the ``tbb`` wheel) by its
    path, so that Numba finds it by name. Returns the path loaded, or None when the wheel is
    not installed, has no such file or the file does not load (Numba then picks OpenMP or
    its workqueue, as without this module). Loading it twice is harmless."""
    try:
        files = importlib.metadata.distribution(distribution).files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == TBB_LIBRARY:
            path = f.locate().resolve()
            try:
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return None
            return path
    return None
