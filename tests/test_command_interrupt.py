"""Ctrl-C while the ``lcnfast`` command imports lcnfast (~1.2 s: Numba, xarray) ends it with
the command's one line ``lcnfast: interrupted``, as a Ctrl-C later does, instead of 10-30 lines
of traceback from importlib (lcnfast._command). Programs that merely import lcnfast keep
Python's own handling of KeyboardInterrupt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lcnfast._command import is_the_command

ROOT = Path(__file__).resolve().parents[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.mark.parametrize(
    "argv, orig_argv, expected",
    [
        (["/venv/bin/lcnfast", "study", "list"], ["/venv/bin/python", "/venv/bin/lcnfast"], True),
        ([r"C:\venv\Scripts\lcnfast.exe", "info"], [], True),
        (["-m", "study"], ["python", "-m", "lcnfast", "study"], True),  # while -m imports it
        (["/x/lcnfast/__main__.py", "info"], ["python3", "-m", "lcnfast", "info"], True),
        (["/venv/bin/pytest", "-q"], ["python", "/venv/bin/pytest", "-q"], False),
        (["my_study.py"], ["python", "my_study.py"], False),
        (["-c"], ["python", "-c", "import lcnfast"], False),
        (["-m"], ["python", "-m", "lcnfast_tools"], False),
    ],
)
def test_is_the_command(argv, orig_argv, expected):
    assert is_the_command(argv, orig_argv) is expected


# The hook itself, without timing: a child that is "the command" (argv[0] = lcnfast) raises
# KeyboardInterrupt at its top level, as one arriving during the import would; a child that is
# not keeps Python's traceback.
CHILD = """
import sys
sys.argv[0] = {argv0!r}
from lcnfast import _command
_command.quiet_interrupt()
raise KeyboardInterrupt
"""


@pytest.mark.parametrize("argv0, quiet", [("/venv/bin/lcnfast", True), ("analysis.py", False)])
def test_an_uncaught_interrupt_of_the_command_is_one_line(argv0, quiet):
    r = subprocess.run([sys.executable, "-c", CHILD.format(argv0=argv0)], env=_env(),
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    # Python ends a process whose KeyboardInterrupt went uncaught by SIGINT itself (130 in a
    # shell), whatever the hook printed
    assert r.returncode == -signal.SIGINT, (r.returncode, r.stderr)
    if quiet:
        assert r.stderr == "lcnfast: interrupted\n", r.stderr
    else:
        assert "Traceback" in r.stderr and r.stderr.rstrip().endswith("KeyboardInterrupt")


@pytest.mark.parametrize("delay", [0.2, 0.6])
def test_ctrl_c_while_the_command_starts_says_interrupted_without_a_traceback(delay):
    """The real thing: SIGINT ``delay`` seconds into ``python -m lcnfast study list``. Where
    the import is already over by then (a fast machine, warm caches), lcnfast.cli.main
    catches it and exits with 130; either way one line and no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "lcnfast", "study", "list"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:  # the whole command ran before the signal came: nothing to check
        pytest.skip(f"`lcnfast study list` ended within {delay} s")
    assert proc.returncode in (-signal.SIGINT, 130), (proc.returncode, err)
    assert "Traceback" not in err and err.strip() == "lcnfast: interrupted", err
