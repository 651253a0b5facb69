"""Ctrl-C in the stretches where Python cannot be interrupted safely.

A KeyboardInterrupt is raised in whatever Python code runs when SIGINT arrives. Two places of a
study run make that harmful:

- Numba compiling: llvmlite calls back into Python (its object-cache hooks) from C through
  ctypes, which swallows an exception raised there ("Exception ignored on calling ctypes
  callback function"). The interrupt is then lost (the run went on to the end), or Numba is
  left half-done and the next step fails ("RuntimeError: no compiled object yet for
  <Library ...>");
- writing a netCDF file: an interrupt inside netCDF4/xarray can leave the HDF5 lock held, and
  the next write waits for it forever (a run hung at 0% CPU holding its directory's lock).

:func:`sigint_deferred` turns SIGINT into a note for the length of such a block and raises
KeyboardInterrupt as it ends: one Ctrl-C always stops the run, at the end of the block.
"""

from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["sigint_deferred"]


class _Noted:
    """What :func:`sigint_deferred` yields: ``check()`` raises KeyboardInterrupt now if a
    SIGINT was noted (call it between the steps of a long block)."""

    def __init__(self):
        self.hits = 0

    def check(self):
        if self.hits:
            raise KeyboardInterrupt


@contextlib.contextmanager
def sigint_deferred(on_first=None):
    """Within the block SIGINT is noted instead of raising; on leaving, KeyboardInterrupt is
    raised if one came (after the block's own exception, if any, which then propagates
    instead). Yields an object whose ``check()`` raises it earlier, between the block's steps.
    ``on_first(text)`` is called at the first SIGINT with a line saying so. A second SIGINT
    raises at once (the user insists). In effect only in the main thread with Python's
    default SIGINT handler in place (elsewhere SIGINT behaves as it would without it, and
    ``check()`` never raises; a block inside another leaves it to the outer one)."""
    noted = _Noted()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield noted
        return

    def handler(signum, frame):
        noted.hits += 1
        if noted.hits > 1:
            raise KeyboardInterrupt
        if on_first is not None:
            on_first("interrupted: stopping at the end of this step (Ctrl-C again to stop at once)")

    prev = signal.signal(signal.SIGINT, handler)
    try:
        yield noted
    finally:
        signal.signal(signal.SIGINT, prev)
    noted.check()
