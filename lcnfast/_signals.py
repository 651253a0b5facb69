"""Ctrl-C where Python's KeyboardInterrupt cannot do: inside a running kernel, and in the
stretches where Python cannot be interrupted safely.

:func:`sigint_sets` (the integrators) makes SIGINT set the flag a running kernel polls.

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
import os
import select
import signal
import threading

__all__ = ["sigint_deferred", "sigint_sets"]


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


# How SIGINT reaches a running kernel. Python runs its signal handlers in the main thread
# between bytecodes, never while that thread is inside a kernel, but its C-level handler also
# writes the signal number to the "wakeup fd" at once (signal.set_wakeup_fd). During a run that
# fd is a pipe read by a watcher thread (made once; it waits in select without the GIL, which
# the kernel does not hold either): on SIGINT it sets the flag the kernel polls. Bytes of other
# signals go on to the wakeup fd installed before (asyncio's, say); the pipe is drained when
# the run ends. One worker kernel runs in the calling thread, the others in helper threads
# (lcnfast._threads); none is a parallel kernel, so no helper brings a second OpenMP thread
# team (a parallel kernel run from a helper thread made the main thread's parallel kernels 3x
# slower on two cores). SIGINT's Python handler is replaced during the run by one that only
# sets the flag, so no KeyboardInterrupt follows.
class _Watcher:
    lock = threading.Lock()
    pipe = None  # (read end, write end), both non-blocking, made on first use
    stop = None  # the flag of the run in progress, or None
    forward = -1  # the wakeup fd installed before the run

    @classmethod
    def start(cls):
        if cls.pipe is None:
            cls.pipe = os.pipe()
            for fd in cls.pipe:
                os.set_blocking(fd, False)
            threading.Thread(target=cls._watch, name="lcnfast-sigint", daemon=True).start()
        return cls.pipe[1]

    @classmethod
    def _watch(cls):
        while True:
            select.select([cls.pipe[0]], [], [])
            with cls.lock:
                cls.drain()

    @classmethod
    def drain(cls):
        """Act on the signal numbers in the pipe (call with the lock held)."""
        while True:
            try:
                data = os.read(cls.pipe[0], 512)
            except BlockingIOError:
                return
            other = bytes(b for b in data if b != signal.SIGINT)
            if len(other) < len(data) and cls.stop is not None:
                cls.stop[0] = 1
            if other and cls.forward >= 0:
                with contextlib.suppress(OSError):
                    os.write(cls.forward, other)

    @classmethod
    def reset_in_child(cls):
        """After fork: the watcher thread did not come along; make a new one when needed."""
        if cls.pipe is not None:
            for fd in cls.pipe:
                with contextlib.suppress(OSError):
                    os.close(fd)
        cls.lock = threading.Lock()
        cls.pipe = None
        cls.stop = None
        cls.forward = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_Watcher.reset_in_child)


@contextlib.contextmanager
def sigint_sets(stop):
    """While active, SIGINT sets ``stop[0] = 1`` (also while the thread is in a kernel) instead
    of raising KeyboardInterrupt; in effect only in the main thread with Python's default SIGINT
    handler in place (elsewhere SIGINT behaves as usual)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum, frame):
        stop[0] = 1

    try:
        wfd = _Watcher.start()
        with _Watcher.lock:
            _Watcher.forward = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
            _Watcher.stop = stop
    except (OSError, ValueError):  # pragma: no cover - no pipes or wakeup fd here
        yield
        return
    prev = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev)
        with _Watcher.lock:
            signal.set_wakeup_fd(_Watcher.forward)  # later signals go where they went before
            _Watcher.drain()  # those of the run: SIGINT sets the flag, others are passed on
            _Watcher.forward = -1
            _Watcher.stop = None
