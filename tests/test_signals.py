"""lcnfast._signals.sigint_deferred: Ctrl-C noted while Numba compiles or netCDF writes, raised
when the block ends (an interrupt raised inside llvmlite's ctypes callbacks was swallowed:
lost, or Numba left half-done; one inside netCDF4 left its lock held, and the run hung)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from lcnfast._signals import sigint_deferred


@pytest.fixture(autouse=True)
def python_sigint_handler():
    """Python's own SIGINT handler for each test: a process started in the background by a
    shell inherits SIGINT ignored, where sigint_deferred (rightly) stays inert."""
    prev = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, prev)


def test_sigint_in_the_block_is_raised_when_it_ends():
    said, done = [], []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred(said.append):
            os.kill(os.getpid(), signal.SIGINT)
            done.append("the block went on")
    assert done == ["the block went on"] and len(said) == 1 and "Ctrl-C again" in said[0]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_second_sigint_raises_at_once():
    done = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            done.append("not reached")
    assert done == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_sigint_no_interrupt_and_the_blocks_own_error_wins():
    with sigint_deferred():
        pass
    with pytest.raises(ValueError):
        with sigint_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            raise ValueError("the block's own")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_inert_outside_the_main_thread_and_nested():
    seen = []

    def other():
        with sigint_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert seen == [signal.default_int_handler]
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred():
            outer = signal.getsignal(signal.SIGINT)
            with sigint_deferred():
                assert signal.getsignal(signal.SIGINT) is outer
                os.kill(os.getpid(), signal.SIGINT)
            seen.append("inner block ended without raising")
    assert seen[-1] == "inner block ended without raising"


def test_check_raises_between_steps():
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with sigint_deferred() as noted:
            noted.check()
            steps.append(1)
            os.kill(os.getpid(), signal.SIGINT)
            steps.append(2)
            noted.check()
            steps.append(3)
    assert steps == [1, 2]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
