"""The ``lcnfast`` command: a thin layer over :mod:`lcnfast.study` (argparse).

::

    lcnfast study run SPEC|NAME [--out DIR] [--workers N | --scheduler ADDR] [--quick] ...
    lcnfast study status DIR
    lcnfast study report DIR
    lcnfast study list
    lcnfast info

Errors in the input (a spec, a directory, an argument) print one line and exit with status 2;
a failure of the system (a file that cannot be read or written, a full disk, an unreachable
scheduler) prints one line naming the file and exits with status 1; Ctrl-C during a run keeps
the shards written and exits with status 130.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

__all__ = ["main"]


def _positive_int(text):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _thread_count(text):
    """A ``--threads`` value: a whole number from 1 to the threads Numba may use here (checked
    while parsing, so that nothing is created for a run that would be refused)."""
    n = _positive_int(text)
    from numba.core import config

    top = config.NUMBA_NUM_THREADS
    if n > top:
        raise argparse.ArgumentTypeError(
            f"must be at most {top} (the threads Numba may use here, NUMBA_NUM_THREADS), got {n}"
        )
    return n


def _parser():
    p = argparse.ArgumentParser(
        prog="lcnfast",
        description="Gradient flows of linear convolutional networks: run and report studies.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="{study,info}")
    st = sub.add_parser("study", help="run, inspect and report Monte Carlo studies")
    ss = st.add_subparsers(dest="action", required=True, metavar="{run,status,report,reanalyse,list}")

    run = ss.add_parser(
        "run",
        help="run a study (or resume it) and write its report",
        description="Run a study spec (a TOML file or a built-in name, see `lcnfast study "
        "list`). Finished shards are kept: run the same command again to resume.",
    )
    run.add_argument("spec", help="a .toml spec file or the name of a built-in study")
    run.add_argument("--out", help="output directory (default: data/<study name>)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--workers", type=_positive_int, help="run on a dask LocalCluster of N worker processes"
    )
    mode.add_argument("--scheduler", help="address of a running dask scheduler")
    run.add_argument("--quick", action="store_true", help="the spec's small [quick] size")
    run.add_argument(
        "--threads",
        type=_thread_count,
        help="Numba threads per process (default: all cores here, 1 per dask worker)",
    )
    run.add_argument("--shard-size", type=_positive_int, help="flows per shard (default: spec)")
    run.add_argument("--no-report", action="store_true", help="do not write the report")
    run.add_argument("--quiet", action="store_true", help="no progress or summary output")

    status = ss.add_parser("status", help="progress of a study directory")
    status.add_argument("dir", help="a study's output directory")
    report = ss.add_parser("report", help="write DIR/report.md and DIR/figures/")
    report.add_argument("dir", help="a study's output directory")
    rean = ss.add_parser(
        "reanalyse",
        help="classify a study's stored flows again (new analysis) and rewrite its report",
        description="Run this version's lcnfast.analysis on every finished shard of DIR "
        "(nothing is integrated again) and rewrite the report.",
    )
    rean.add_argument("dir", help="a study's output directory")
    rean.add_argument("--quiet", action="store_true", help="no progress output")
    ss.add_parser("list", help="the built-in studies (studies/*.toml)")
    sub.add_parser("info", help="versions, threading, cache directories")
    return p


def _cmd_run(a):
    from .study import run_study

    s = run_study(
        a.spec,
        a.out,
        quick=a.quick,
        workers=a.workers,
        scheduler=a.scheduler,
        threads=a.threads,
        shard_size=a.shard_size,
        progress=not a.quiet,
        report=not a.no_report,
    )
    return 130 if s.interrupted else 0


def _cmd_status(a):
    import numpy as np

    from .analysis import LABELS
    from .flows import STATUS
    from .study.load import load, read_spec
    from .study.shards import finished_shards, plan

    study = read_spec(a.dir)
    done = finished_shards(a.dir, study.spec_hash)
    todo = plan(study, done, study.spec["shard_size"])
    n_done = study.n_flows - sum(s.n_flows for s in todo)  # each flow once (shards can overlap)
    print(f"study {study.name} ({a.dir}), spec hash {study.spec_hash[:12]}")
    print(f"cells {len(study.cells)}, flows {n_done}/{study.n_flows} done in {len(done)} shards")
    if todo:
        print(f"left: {sum(s.n_flows for s in todo)} flows (run the same `study run` to resume)")
    if done:
        ds = load(a.dir)
        st = np.asarray(ds.status.values)
        lb = np.asarray(ds.label.values)
        print("status: " + ", ".join(f"{STATUS[c]} {(st == c).sum()}" for c in np.unique(st)))
        print("limit points: " + ", ".join(f"{LABELS[c]} {(lb == c).sum()}" for c in np.unique(lb)))
    rep = Path(a.dir) / "report.md"
    print(f"report: {rep}" if rep.exists() else "report: not written yet (`lcnfast study report`)")
    return 0


def _cmd_report(a):
    from ._notice import Ticker, interactive
    from .study import write_report

    with Ticker("writing the report (tables, figures)", interactive()):
        path = write_report(a.dir)
    print(path)
    return 0


def _cmd_reanalyse(a):
    from .study import reanalyse_study

    counts = reanalyse_study(a.dir, progress=not a.quiet)
    print("limit points: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_list(a):
    from .study import builtin_specs, load_spec
    from .study.spec_values import spec_warnings_off

    specs = builtin_specs()
    if not specs:
        print("no built-in studies found (they live in studies/*.toml of the source tree)")
    for name, path in specs.items():
        with spec_warnings_off():  # listed, not run
            study = load_spec(path)
        desc = " ".join(study.spec["description"].split())
        print(f"{name:16s} {len(study.cells):4d} cells {study.n_flows:8d} flows  {desc[:70]}")
    return 0


def _threading_layer():
    """The threading layer Numba uses in this process: known only once a parallel region has
    run, so run a tiny one (:func:`lcnfast._integrate.parallel_probe`)."""
    import numba

    from ._integrate import parallel_probe

    try:
        parallel_probe(4)
        return numba.threading_layer()
    except Exception as e:  # no layer can be loaded: say why rather than fail
        return f"unavailable ({e})"


def _cmd_info(a):
    import numba
    import numpy as np

    from . import __version__, _numba_cache
    from ._codegen import cache_dir
    from ._lane_width import ENV, L1_DATA_BYTES, LANES, MAX_FLOW_WIDTH, target_has_avx512

    print(f"lcnfast {__version__} ({Path(__file__).resolve().parent})")
    print(f"numba {numba.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    print(f"cores {os.cpu_count()}, Numba threads {numba.get_num_threads()} "
          f"(NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}), "
          f"threading layer {_threading_layer()} (setting {numba.config.THREADING_LAYER!r})")
    print(f"lane width {LANES} flows (LCNFAST_LANES={os.environ.get(ENV, '')!r}; "
          f"AVX-512 {'yes' if target_has_avx512() else 'no'}); through the generated kernel "
          f"up to {max(LANES, max(MAX_FLOW_WIDTH.values()))} on large runs (rk45: while its "
          f"stage arrays fit in 2/3 of the {L1_DATA_BYTES // 1024} KiB L1 data cache)")
    print(f"Numba cache directory: {_numba_cache.cache_dir() or 'none writable (uncached)'}")
    print(f"generated-kernel cache (LCNFAST_CACHE_DIR): {cache_dir()}")
    try:
        import distributed

        print(f"dask.distributed {distributed.__version__}")
    except ImportError:
        print("dask.distributed not installed (pip install 'lcnfast[distributed]' for --workers)")
    return 0


_shown_warnings = set()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """``lcnfast: warning: <message>`` (a leading ``lcnfast: `` of the message dropped), each
    text once per command (a study's spec is read
    by several of its steps, each of which would say it again); on a terminal the line a
    ticker or progress bar is drawing is cleared first (they redraw below it)."""
    text = str(message).removeprefix("lcnfast: ")  # the line says "lcnfast: warning: " itself
    if text in _shown_warnings:
        return
    _shown_warnings.add(text)
    out = sys.stderr if file is None else file
    clear = "\r\x1b[K" if getattr(out, "isatty", lambda: False)() else ""
    print(f"{clear}lcnfast: warning: {text}", file=out)


def _os_error_text(e):
    """One line for an OSError: ``<file>: <reason>`` when it names a file, else its text."""
    reason = " ".join((e.strerror or str(e)).split())
    if e.filename is not None:
        return f"{os.fsdecode(e.filename)}: {reason}"
    return reason


def main(argv=None):
    """Entry point of the ``lcnfast`` console script; returns the exit status."""
    a = _parser().parse_args(argv)
    # a warning is a message to the user, not a traceback line: "lcnfast: warning: ..."
    warnings.showwarning = _show_warning
    _shown_warnings.clear()
    handler = {
        "run": _cmd_run,
        "status": _cmd_status,
        "report": _cmd_report,
        "reanalyse": _cmd_reanalyse,
        "list": _cmd_list,
    }.get(getattr(a, "action", None), _cmd_info)
    try:
        return handler(a)
    except (ValueError, TypeError) as e:
        print(f"lcnfast: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `lcnfast study status DIR | head`: the reader is gone, say nothing
        with contextlib.suppress(OSError, ValueError):  # and nothing when Python flushes at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        print(f"lcnfast: error: {_os_error_text(e)}", file=sys.stderr)
        return 1
    except MemoryError as e:  # numpy: "Unable to allocate 596. GiB for an array ..."
        print(f"lcnfast: error: out of memory ({e or 'MemoryError'}): the study is too large for "
              "this machine (data.m, flows_per_dataset, shard_size, save)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lcnfast: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
