"""Saying what a long wait is: Numba compiling lcnfast's kernels, and flows running.

Private module.

- :class:`Ticker`: a line on stderr for a step that keeps the caller busy, with the elapsed
  seconds (updated in place on a terminal or in Jupyter, :func:`interactive`; elsewhere one
  line when it starts and one when it ends), shown only once the step has lasted ``delay``
  seconds.
- Compile notices: Numba compiles a kernel on its first call with new argument types (tens
  of seconds for an integrator on 2 cores) or loads it from its disk cache (well under a
  second). A listener on Numba's ``numba:compile`` event, which Numba triggers for a real
  compile only (a cache hit triggers nothing), shows a :class:`Ticker` ("lcnfast: Numba is
  compiling kernels ...") for the outermost compile of an lcnfast function once it has lasted
  ``COMPILE_DELAY`` seconds; :func:`compiling` does the same around the compile of a C
  callback (lcnfast._numba_cache.cfunc: Numba triggers no event there). Any active Ticker
  (the study runner's "compiling kernels" line, say) or :func:`quiet` block silences them,
  and so does the environment variable ``LCNFAST_NOTICES=0`` (dask workers of a study).
- :class:`FlowProgress`: a bar of finished flows (tqdm on a terminal or in Jupyter; elsewhere
  a line every ``interval`` seconds), used by the study runner (per shard) and by
  :func:`lcnfast.gradient_flow` / :func:`lcnfast.gradient_descent` (``progress=``), which
  poll the flows' status array from a helper thread while the kernel runs without the GIL
  (:func:`watch_status`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

import numpy as np

COMPILE_DELAY = 2.0  # seconds a compile lasts before its notice shows
COMPILE_TEXT = ("lcnfast: Numba is compiling kernels (first use on this machine; cached for "
                "later runs)")

_lock = threading.RLock()
_silence = 0  # active Tickers and quiet() blocks


@contextlib.contextmanager
def quiet():
    """No compile notices within the block (the caller says what is happening itself)."""
    global _silence
    with _lock:
        _silence += 1
    try:
        yield
    finally:
        with _lock:
            _silence -= 1


def interactive():
    """Whether someone watches stderr as it is written: a terminal, or the output stream of a
    Jupyter kernel (ipykernel's OutStream, which renders carriage returns in place)."""
    err = sys.stderr
    isatty = getattr(err, "isatty", None)
    if isatty is not None and isatty():
        return True
    return type(err).__module__.startswith("ipykernel.")


def _enabled():
    return _silence == 0 and os.environ.get("LCNFAST_NOTICES", "1") != "0"


class Ticker:
    """A line on stderr while the calling thread is busy: ``text ... 12 s`` updated every half
    second on a terminal (``live``), else ``text ...``, ``text ... 30 s`` every ``interval``
    seconds (a log shows the wait goes on) and ``text: done in 42.3 s`` (``stopped after
    42.3 s`` when the block raised); nothing at all if the block ends within ``delay``
    seconds. Compile notices are silent meanwhile."""

    def __init__(self, text, live, delay=0.0, interval=30.0):
        self.text, self.live, self.delay, self.interval = text, live, delay, interval
        self._stop = threading.Event()
        self._shown = False

    def __enter__(self):
        global _silence
        with _lock:
            _silence += 1
        self.t0 = time.perf_counter()
        if self.delay <= 0 and not self.live:
            self._show()
        self._thread = threading.Thread(target=self._run, name="lcnfast-ticker", daemon=True)
        self._thread.start()
        return self

    def _show(self):
        self._shown = True
        if not self.live:
            print(self.text + " ...", file=sys.stderr, flush=True)

    def _run(self):
        if not self._shown:
            if self._stop.wait(self.delay):
                return
            self._show()
        if self.live:
            while not self._stop.wait(0.5):
                el = time.perf_counter() - self.t0
                print(f"\r{self.text} ... {el:4.0f} s", end="", file=sys.stderr, flush=True)
        else:
            while not self._stop.wait(self.interval):
                el = time.perf_counter() - self.t0
                print(f"{self.text} ... {el:.0f} s", file=sys.stderr, flush=True)

    def __exit__(self, exc_type, exc, tb):
        global _silence
        self._stop.set()
        self._thread.join()
        with _lock:
            _silence -= 1
        if not self._shown:
            return
        el = time.perf_counter() - self.t0
        # an exception (an interrupt, a failure) ends the block: not "done"
        end = f"done in {el:.1f} s" if exc_type is None else f"stopped after {el:.1f} s"
        print(f"\r{self.text} ... {end}" if self.live else f"{self.text}: {end}",
              file=sys.stderr, flush=True)


class _CompileNotices:
    """The outermost compile of an lcnfast function (or :func:`compiling` block) shows a
    delayed Ticker; nested compiles only count."""

    depth = 0
    ticker = None

    @classmethod
    def start(cls, ours):
        with _lock:
            cls.depth += 1
            if cls.depth == 1 and ours and _enabled():
                cls.ticker = Ticker(COMPILE_TEXT, interactive(), delay=COMPILE_DELAY)
                ticker = cls.ticker
            else:
                return
        ticker.__enter__()

    @classmethod
    def end(cls):
        with _lock:
            cls.depth -= 1
            ticker = cls.ticker if cls.depth == 0 else None
            if ticker is not None:
                cls.ticker = None
        if ticker is not None:
            ticker.__exit__(None, None, None)


@contextlib.contextmanager
def compiling():
    """Around a compile that Numba triggers no event for (a C callback): its compile notice."""
    _CompileNotices.start(True)
    try:
        yield
    finally:
        _CompileNotices.end()


def install_compile_notices():
    """Listen to Numba's ``numba:compile`` events (once per process)."""
    from numba.core import event

    if getattr(install_compile_notices, "done", False):
        return

    class Listener(event.Listener):
        def on_start(self, ev):
            disp = (ev.data or {}).get("dispatcher")
            module = getattr(getattr(disp, "py_func", None), "__module__", "") or ""
            _CompileNotices.start(module.split(".")[0] == "lcnfast")

        def on_end(self, ev):
            _CompileNotices.end()

    event.register("numba:compile", Listener())
    install_compile_notices.done = True


def _tqdm_class():
    """tqdm's widget bar where Jupyter can draw it (ipywidgets installed), else its text bar,
    which ipykernel's stream renders too: tqdm.auto without ipywidgets warns "IProgress not
    found" on every bar."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm


class FlowProgress:
    """Finished flows out of ``total``: a tqdm bar on a terminal or in Jupyter (shown once
    ``delay`` seconds have passed), elsewhere a line every ``interval`` seconds and one at the
    end; nothing if not ``enabled``.

    The display moves while no flow finishes too (flows of a fixed length end together, a
    dask shard reports when it is written, the analysis of a shard follows its flows): a
    helper thread redraws the bar every ``tick`` seconds (its elapsed time, and its ETA from
    the mean rate so far, not a rate frozen at the last finished flow) and writes the lines
    off a terminal on time. :meth:`update` may be called from any thread."""

    def __init__(self, total, desc, enabled, interval=10.0, delay=0.0, tick=1.0):
        tqdm = _tqdm_class()
        self.total, self.done, self.interval, self.desc = total, 0, interval, desc
        self.tty = enabled and interactive()
        self.lines = enabled and not self.tty
        # smoothing=0: the rate is the mean since the start, so the ETA grows while nothing ends
        self.bar = tqdm(total=total, desc=desc, unit="flow", disable=not self.tty, smoothing=0,
                        delay=delay, file=sys.stderr)
        self.t0 = self.last = time.perf_counter()
        self.delay = delay
        self.postfix = ""
        self._shown = None  # (done, postfix) of the last line written off a terminal
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker = None
        if self.tty or self.lines:
            self._ticker = threading.Thread(target=self._tick, args=(tick,), daemon=True,
                                            name="lcnfast-progress-tick")
            self._ticker.start()

    def _tick(self, period):
        while not self._stop.wait(period):
            if self.tty and time.perf_counter() - self.t0 >= self.delay:
                self.bar.refresh()  # tqdm's own lock
            elif self.lines:
                self.update(0)

    def update(self, n, postfix=""):
        with self._lock:
            self.done += n
            self.bar.update(n)
            if postfix:
                self.postfix = postfix
                self.bar.set_postfix_str(postfix)
            now = time.perf_counter()
            if self.lines and now - self.last >= self.interval:
                self._line(now)

    def _line(self, now):
        el = now - self.t0
        # no flow finished yet: no rate, so no ETA ("?" as tqdm's bar shows it; was "nan s")
        eta = f"{el / self.done * (self.total - self.done):.0f} s" if self.done else "?"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.done}/{self.total} flows{extra}, {el:.0f} s elapsed, "
              f"ETA {eta}", file=sys.stderr, flush=True)
        self.last = now
        self._shown = (self.done, self.postfix)

    def close(self):
        """End the display: off a terminal, a last line with the final count and postfix
        unless the last line already showed them."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self.lines and self._shown != (self.done, self.postfix):
            self._line(time.perf_counter())
        self.bar.close()


@contextlib.contextmanager
def watch_status(status, progress, period=0.25):
    """While the block runs (a kernel, without the GIL), a helper thread counts the flows
    with a status (``status >= 0``: finished) every ``period`` seconds into ``progress``
    (a :class:`FlowProgress` or a counter with its ``done``, ``update`` and ``close``, on top
    of what it had counted before; or None: nothing runs)."""
    if progress is None:
        yield
        return
    stop = threading.Event()
    base = progress.done  # a counter may come counting from earlier runs

    def count():
        return base + int(np.count_nonzero(status >= 0))

    def poll():
        while not stop.wait(period):
            progress.update(count() - progress.done)

    thread = threading.Thread(target=poll, name="lcnfast-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        progress.update(count() - progress.done)
        progress.close()
