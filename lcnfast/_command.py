"""The ``lcnfast`` command's quiet Ctrl-C, from the first moment of its import.

Private module, imported first by ``lcnfast/__init__.py`` (it imports nothing of its own).
Importing lcnfast takes ~1.2 s (Numba, xarray). A Ctrl-C in that time raised
KeyboardInterrupt inside importlib, and Python printed 10-30 lines of traceback before
:func:`lcnfast.cli.main`, which says ``lcnfast: interrupted`` and exits with status 130, had
even started. When this process is the command (the console script ``lcnfast``, or
``python -m lcnfast``), :func:`quiet_interrupt` makes an uncaught KeyboardInterrupt print that
same line instead; Python then ends the process by SIGINT as for any uncaught
KeyboardInterrupt (status 130 in a shell). Other exceptions, and every other program that
imports lcnfast, keep Python's own hook.
"""

from __future__ import annotations

import os
import sys

__all__ = ["quiet_interrupt"]


def is_the_command(argv=None, orig_argv=None):
    """Whether this process runs the ``lcnfast`` command: ``argv[0]`` is the console script
    (``lcnfast``, ``lcnfast.exe``), or the interpreter was started as ``python -m lcnfast``
    (``sys.orig_argv``: while ``-m`` imports the package, ``sys.argv[0]`` is still ``-m``)."""
    argv = sys.argv if argv is None else argv
    orig = getattr(sys, "orig_argv", ()) if orig_argv is None else orig_argv
    name = argv[0].replace("\\", "/").rsplit("/", 1)[-1] if argv else ""  # also C:\...\x.exe
    if os.path.splitext(name)[0] == "lcnfast":
        return True
    return any(a == "-m" and b == "lcnfast" for a, b in zip(orig, orig[1:]))


def quiet_interrupt():
    """If :func:`is_the_command`, install a ``sys.excepthook`` that prints
    ``lcnfast: interrupted`` for an uncaught KeyboardInterrupt (and passes any other exception
    to the hook it replaces)."""
    if not is_the_command():
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, KeyboardInterrupt):
            print("lcnfast: interrupted", file=sys.stderr, flush=True)
        else:
            previous(kind, value, tb)

    sys.excepthook = hook
