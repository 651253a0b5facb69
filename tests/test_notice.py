"""What a long wait says: compile notices, the Ticker, flow progress (lcnfast._notice) and the
``progress=`` argument of the flows."""

import threading
import time

import numba
import numpy as np
import pytest

import lcnfast as lf
from lcnfast import _notice, losses


def _fresh_kernel(module):
    """A new jitted function that looks as if defined in ``module`` (a compile on first call)."""

    def f(x):
        return x * 2.0 + 1.0

    f.__module__ = module
    return numba.njit(cache=False)(f)


@pytest.fixture
def instant(monkeypatch):
    """Compile notices show at once (no delay) and are not silenced by the environment."""
    monkeypatch.setattr(_notice, "COMPILE_DELAY", 0.0)
    monkeypatch.delenv("LCNFAST_NOTICES", raising=False)


def test_a_compile_of_an_lcnfast_function_says_so(instant, capsys):
    f = _fresh_kernel("lcnfast._probe")
    assert f(1.0) == 3.0
    err = capsys.readouterr().err
    # not a terminal under pytest: one line when it starts, one with the time when it ends
    assert err.startswith(_notice.COMPILE_TEXT + " ...\n")
    assert f"{_notice.COMPILE_TEXT}: done in" in err and err.count("\n") == 2
    f(2.0)  # compiled: nothing to say
    assert capsys.readouterr().err == ""


def test_compile_notices_stay_silent_where_they_should(instant, capsys, monkeypatch):
    _fresh_kernel("somebody_else")(1.0)  # not lcnfast's
    with _notice.quiet():
        _fresh_kernel("lcnfast._probe")(1.0)
    with _notice.Ticker("working", live=False):  # a caller that says what it does itself
        _fresh_kernel("lcnfast._probe")(1.0)
    err = capsys.readouterr().err
    assert err == "working ...\n" + err.splitlines()[1] + "\n" and "done in" in err
    monkeypatch.setenv("LCNFAST_NOTICES", "0")
    _fresh_kernel("lcnfast._probe")(1.0)
    assert capsys.readouterr().err == ""


def test_a_quick_compile_says_nothing(capsys, monkeypatch):
    monkeypatch.delenv("LCNFAST_NOTICES", raising=False)
    monkeypatch.setattr(_notice, "COMPILE_DELAY", 30.0)  # far longer than this compile
    _fresh_kernel("lcnfast._probe")(1.0)
    assert capsys.readouterr().err == ""


def test_compiling_block_nests_into_one_notice(instant, capsys):
    with _notice.compiling():
        _fresh_kernel("lcnfast._probe")(1.0)  # an inner compile: counted, not shown again
    err = capsys.readouterr().err
    assert err.count(_notice.COMPILE_TEXT) == 2 and err.count("done in") == 1


def test_a_c_callback_compile_says_so(instant, capsys):
    from lcnfast import _numba_cache

    def twice(x):
        return 2.0 * x

    cb = _numba_cache.cfunc("float64(float64)", cache=False)(twice)  # compiles here
    assert cb.ctypes(1.5) == 3.0
    assert _notice.COMPILE_TEXT + ": done in" in capsys.readouterr().err


def test_ticker_shows_after_its_delay_only(capsys):
    with _notice.Ticker("short", live=False, delay=5.0):
        pass
    assert capsys.readouterr().err == ""
    with _notice.Ticker("long", live=False, delay=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.startswith("long ...\nlong: done in 0.")


def test_a_ticker_off_a_terminal_says_the_wait_goes_on(capsys):
    """In a log a 100 s compile showed one start line and one end line only."""
    with _notice.Ticker("long", live=False, interval=0.1):
        time.sleep(0.45)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "long ..." and lines[-1].startswith("long: done in 0.")
    assert 3 <= sum(ln.startswith("long ... ") and ln.endswith(" s") for ln in lines) <= 5


def test_a_ticker_ended_by_an_exception_says_stopped(capsys):
    """An interrupted compile step was logged as "done in 18.4 s"."""
    with pytest.raises(KeyboardInterrupt):
        with _notice.Ticker("compiling", live=False):
            raise KeyboardInterrupt
    assert capsys.readouterr().err.startswith("compiling ...\ncompiling: stopped after 0.")


def test_flow_progress_lines_off_a_terminal(capsys):
    p = _notice.FlowProgress(10, "demo", True, interval=0.0)
    p.update(4, "shards 1/3")
    p.update(6)
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("demo: 4/10 flows, shards 1/3, ") and "ETA" in lines[0]
    assert lines[-1].startswith("demo: 10/10 flows, shards 1/3, ")
    # the last line shows the final count and postfix once, also when the flows were all
    # counted before the postfix came (a study's shard: its flows, then "shards 3/3")
    p = _notice.FlowProgress(10, "demo", True, interval=60.0)
    p.update(10)
    p.update(0, "shards 3/3")
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo: 10/10 flows, shards 3/3, "), lines
    # before the first flow ends there is no rate: the ETA is "?" (it read "ETA nan s" in the
    # lines of a study whose first shard ran for minutes)
    p = _notice.FlowProgress(10, "demo", True, interval=0.0)
    p.update(0, "shards 0/3")
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(ln.endswith(" s elapsed, ETA ?") for ln in lines), lines


def test_flow_progress_moves_while_no_flow_finishes(capsys, monkeypatch):
    """Between finished flows (a shard of flows that all end together, a dask shard, the
    analysis after the flows) the display goes on: before, a terminal's bar stood at its last
    update, elapsed time and ETA frozen (an ETA of 1 s shown for minutes), and off a
    terminal no line came until the next flow ended."""
    monkeypatch.setattr(_notice, "interactive", lambda: True)
    p = _notice.FlowProgress(10, "demo", True, tick=0.05)
    p.update(2)
    time.sleep(2.2)
    p.close()
    out = capsys.readouterr().err
    assert "2/10 [00:02<00:0" in out, out  # elapsed 2 s; ETA from the mean rate: ~8-9 s
    monkeypatch.setattr(_notice, "interactive", lambda: False)
    p = _notice.FlowProgress(10, "demo", True, interval=0.3, tick=0.05)
    p.update(2)
    time.sleep(1.2)
    p.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all(x.startswith("demo: 2/10 flows, ") for x in lines), lines


def test_watch_status_counts_finished_flows_while_a_thread_works(capsys):
    status = np.full(6, -1, np.int8)
    p = _notice.FlowProgress(6, "w", True, interval=0.0)

    def finish():  # stands in for a kernel that releases the GIL
        for i in range(6):
            time.sleep(0.05)
            status[i] = 0

    with _notice.watch_status(status, p, period=0.01):
        t = threading.Thread(target=finish)
        t.start()
        t.join()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("w: 6/6 flows")
    counts = [int(s.split()[1].split("/")[0]) for s in lines]
    assert counts == sorted(counts)


@pytest.fixture(scope="module")
def small_problem():
    arch = lf.Architecture(d0=12, k=(2, 2), s=(1, 1))
    data = lf.data.teacher(arch, m=8, noise=0.1, seed=0)
    return lf.Problem(arch, data.X, data.Y, losses.square()), lf.data.initial_filters(
        arch, 20, scale=0.5, seed=1)


@pytest.mark.parametrize("method", ["euler", "rk45", "auto"])
def test_flows_progress_argument(small_problem, method, capsys, monkeypatch):
    problem, w0 = small_problem
    monkeypatch.setattr(lf.flows, "_PROGRESS_DELAY", 0.0)
    monkeypatch.setenv("LCNFAST_NOTICES", "0")  # a cold cache's compile notices aside

    def run(progress):
        if method == "euler":
            return lf.gradient_descent(problem, w0, h=1e-2, n_steps=50, progress=progress)
        return lf.gradient_flow(problem, w0, method=method, t_end=2.0, progress=progress)

    quiet = run(False)
    run(None)  # not a terminal: no bar
    assert capsys.readouterr().err == ""
    shown = run(True)
    name = "gradient_descent" if method == "euler" else f"gradient_flow ({method})"
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"{name}: 20/20 flows")
    # the bar only watches: the flows are bitwise the same
    for var in ("w_final", "loss_final", "t_final", "status", "n_grad_evals"):
        np.testing.assert_array_equal(quiet[var].values, shown[var].values)
    with pytest.raises(TypeError, match="progress"):
        run("yes")


def test_a_failed_compile_ends_its_notice(instant, capsys):
    def broken(x):
        return x + "a string"  # a typing error

    broken.__module__ = "lcnfast._probe"
    f = numba.njit(cache=False)(broken)
    with pytest.raises(numba.core.errors.TypingError):
        f(1.0)
    assert "done in" in capsys.readouterr().err  # Numba ends the event on an error too
    assert _notice._CompileNotices.depth == 0 and _notice._CompileNotices.ticker is None
    _fresh_kernel("lcnfast._probe")(1.0)  # the next compile says so again
    assert _notice.COMPILE_TEXT in capsys.readouterr().err


def test_interactive_means_a_terminal_or_a_jupyter_stream(monkeypatch):
    import io

    class OutStream(io.StringIO):  # what ipykernel puts in sys.stderr
        pass

    OutStream.__module__ = "ipykernel.iostream"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, expected in ((io.StringIO(), False), (OutStream(), True), (Terminal(), True)):
        monkeypatch.setattr("sys.stderr", stream)
        assert _notice.interactive() is expected
        # and so does the default of the flows' progress argument
        assert lf.flows._progress_wanted(None) is expected


def test_the_bar_class_needs_ipywidgets_for_the_widget(monkeypatch):
    """Without ipywidgets tqdm.auto warned "IProgress not found" in Jupyter on every bar: the
    text bar then (ipykernel renders its carriage returns); with it, tqdm.auto's choice."""
    import sys
    import types

    import tqdm.auto
    import tqdm.std

    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    assert _notice._tqdm_class() is tqdm.std.tqdm
    monkeypatch.setitem(sys.modules, "ipywidgets", types.ModuleType("ipywidgets"))
    assert _notice._tqdm_class() is tqdm.auto.tqdm
