"""Shared test configuration.

Hypothesis profiles (no deadlines: the first call of a kernel may load it from Numba's cache,
and the machine is shared):

- ``ci``  : few examples, used when the environment has ``CI=true``.
- ``dev`` : more examples, the default elsewhere.

``HYPOTHESIS_PROFILE=<name>`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The tests import the helpers in tests/naive.py as ``naive``. The repository root goes first
# so that ``import lcnfast`` finds the source tree even when the editable install's finder
# maps ``lcnfast`` as a namespace package (it does if the install predates lcnfast/__init__.py).
_TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(_TESTS.parent), str(_TESTS)]

_COMMON = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("ci", max_examples=12, derandomize=True, **_COMMON)
settings.register_profile("dev", max_examples=60, **_COMMON)

_default = "ci" if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


# ----------------------------------------------------------------------------- workers
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject.toml): one pytest-xdist worker per CPU this process may run on,
    at most 4. pytest-xdist would ask psutil, which counts the host's CPUs, not the ones a
    container or ``taskset`` leaves us; more workers than cores only compile the same
    kernels side by side."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(
        os.cpu_count() or 1)  # macOS and Windows have no affinity call
    return max(1, min(4, len(cpus)))


# ----------------------------------------------------------------------------- lane width
# tests/test_lane_width.py compares this process with a subprocess at another lane width, which
# compiles for ~90 s on one core. The process that leads the session starts it as soon as the
# test is collected (under pytest-xdist the controller, when a worker reports it), and it
# runs while the tests do; the test reads its results wherever it runs.
_OTHER_WIDTH = {}
_WIDTH_TEST = "test_results_are_bitwise_the_same_for_two_lane_widths"


def _start_other_width():
    if "run" not in _OTHER_WIDTH:
        from test_lane_width import OtherWidthRun

        _OTHER_WIDTH["run"] = OtherWidthRun()


def pytest_collection_finish(session):
    if "PYTEST_XDIST_WORKER" not in os.environ and any(
            item.name == _WIDTH_TEST for item in session.items):
        _start_other_width()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    if any(i.endswith("::" + _WIDTH_TEST) for i in ids):
        _start_other_width()


def pytest_sessionfinish(session):
    run = _OTHER_WIDTH.pop("run", None)
    if run is not None:
        run.close()


@pytest.fixture
def other_width_run():
    """Makes sure the other lane width's run of this session exists: started at collection,
    or now if the test was reached some other way."""
    from test_lane_width import session_dir

    if not session_dir().is_dir():
        _start_other_width()
