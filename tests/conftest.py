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
