"""Run a study: prepare its directory, compile, run the shards (here or on dask), summarise.

:func:`run_study` is the library entry point behind ``lcnfast study run``. A run

1. validates the spec (:func:`lcnfast.study.load_spec`) and the output directory: a directory
   holding another spec's results is refused with the keys that differ, never mixed (one
   holding none, left by a run that failed before its first shard, is taken over);
2. takes the directory's lock (one run at a time), removes temporary files a killed run left,
   writes the data of every cell and dataset once;
3. plans the shards not finished yet (a resumption computes nothing twice);
4. compiles the kernels once, before fan-out, saying so;
5. runs the shards in this process, or as dask futures on a ``LocalCluster`` of worker
   processes (``workers``) or an existing cluster (``scheduler``; :mod:`.on_dask`), with a
   progress bar;
6. prints a summary and writes the report.

Ctrl-C stops a run after the shards already written: run the same command again to resume.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import analysis as _analysis
from .._flow_args import thread_count
from ..flows import STATUS, counting_finished_flows, threads as _threads
from .shards import (DamagedShardError, finished_shards, plan, reanalyse_shard, run_shard,
                     set_aside_damaged)
from .shards import shard_path, write_datasets
from . import _keys, spec_checks
from .directory import (SPEC_FILE, check_spec_file, lock, open_study_dir,
                        remove_partial_files, study_dir_for)
from .on_dask import run_on_dask
from .spec import load_spec
from .._notice import FlowProgress, Ticker, interactive, quiet
from .._signals import sigint_deferred
from .warm import compile_rodas_tail, compiling_aside, warm_analysis, warm_up

__all__ = ["run_study", "RunSummary"]


@dataclass
class RunSummary:
    """What a run did. Times in seconds; counts over the shards run by this call."""

    study_dir: Path
    n_flows_total: int
    n_flows_run: int = 0
    n_shards_run: int = 0
    n_shards_skipped: int = 0
    wall_seconds: float = 0.0
    compile_seconds: float = 0.0
    flow_seconds: float = 0.0
    classify_seconds: float = 0.0
    report_seconds: float = 0.0
    n_grad_evals: int = 0
    status_counts: dict = field(default_factory=dict)
    label_counts: dict = field(default_factory=dict)
    report: Path | None = None
    interrupted: bool = False

    @property
    def overhead_fraction(self):
        """Share of the wall time outside compilation, flows and classification (the
        study's own cost: data, files, scheduling), for runs in this process."""
        busy = self.compile_seconds + self.flow_seconds + self.classify_seconds
        return max(0.0, 1.0 - busy / self.wall_seconds) if self.wall_seconds > 0 else math.nan

    def add(self, s):
        self.n_flows_run += s["n_flows"]
        self.n_shards_run += 1
        self.flow_seconds += s["flow_seconds"]
        self.classify_seconds += s["classify_seconds"]
        self.n_grad_evals += s["n_grad_evals"]
        for key, counts in (("status_counts", s["status"]), ("label_counts", s["label"])):
            acc = getattr(self, key)
            for code, n in counts.items():
                acc[int(code)] = acc.get(int(code), 0) + n

    def lines(self):
        out = [
            f"study directory: {self.study_dir}",
            f"flows: {self.n_flows_run} run in {self.n_shards_run} shards, "
            f"{self.n_shards_skipped} shards already done; {self.n_flows_total} in the study",
            f"wall time {self.wall_seconds:.1f} s (kernels {self.compile_seconds:.1f} s; "
            f"flows {self.flow_seconds:.1f} s and classification {self.classify_seconds:.1f} s, "
            f"summed over workers; report {self.report_seconds:.1f} s)",
        ]
        if self.n_flows_run:
            rate = self.n_grad_evals / max(self.flow_seconds, 1e-9)
            out.append(f"gradient evaluations: {self.n_grad_evals:.3g} ({rate:.3g}/s in the flows)")
            st = ", ".join(f"{STATUS[c]} {n}" for c, n in sorted(self.status_counts.items()))
            lb = ", ".join(
                f"{_analysis.LABELS[c]} {n}" for c, n in sorted(self.label_counts.items())
            )
            now = " (of the flows run now)" if self.n_shards_skipped else ""
            out += [f"status{now}: {st}", f"limit points{now}: {lb}"]
        if self.interrupted:
            out.append("interrupted: the shards written are kept; run the same command to resume")
        if self.report is not None:
            out.append(f"report: {self.report}")
        return out


def _check_flag(value, name):
    """``value`` must be a bool (a string such as "no" would count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _loss_names(study):
    return ", ".join(sorted({c.loss["name"] for c in study.cells}))


# ----------------------------------------------------------------------------- execution
class _ShardFlows:
    """The flows of one shard finished so far, counted into the study's bar as the engine
    ends them (:func:`lcnfast.flows.counting_finished_flows`): a long shard moves the bar
    before it is written (flows that stop at different times: adaptive runs to grad_tol)."""

    def __init__(self, bar, n_flows):
        self.bar, self.n_flows, self.done = bar, n_flows, 0

    def update(self, n, postfix=""):
        n = min(n, self.n_flows - self.done)  # a shard's flows, counted once
        self.done += n
        self.bar.update(n)

    def close(self):
        pass


def _run_local(study, d, todo, n_threads, progress, summary):
    for i, shard in enumerate(todo):
        with counting_finished_flows(_ShardFlows(progress, shard.n_flows)) as counted:
            s = run_shard(str(d), study.spec, tuple(shard), n_threads)
        summary.add(s)
        progress.update(s["n_flows"] - counted.done, f"shards {i + 1}/{len(todo)}")


def _report_repairing(study, d, shard_size, n_threads, summary):
    """``write_report(d)``; a shard file whose data cannot be read (its header passed
    finished_shards: a disk fault inside it) is set aside and its flows are computed again
    here, then the report is written again (at most once per shard file)."""
    from .report import write_report

    repaired = set()
    while True:
        try:
            return write_report(d)
        except DamagedShardError as e:
            if e.path in repaired:  # damaged again once computed again: the disk, not the file
                raise
            repaired.add(e.path)
            set_aside_damaged(e.path)
            todo = plan(study, finished_shards(d, study.spec_hash, set_aside=True), shard_size)
            bar = FlowProgress(sum(s.n_flows for s in todo), study.name, False)
            _run_local(study, d, todo, n_threads, bar, summary)


def _whole(x):
    return not isinstance(x, bool) and isinstance(x, int) and x >= 1


def _check_run_args(workers, scheduler, client, threads, shard_size):
    """Raise ValueError for arguments of :func:`run_study` it would refuse later, before
    anything is created."""
    if sum(x is not None for x in (workers, scheduler, client)) > 1:
        raise ValueError("give at most one of workers, scheduler and client")
    if workers is not None and not _whole(workers):
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    if threads is not None:
        thread_count(threads, "threads")  # what flows.threads would refuse later
    if shard_size is not None and not _whole(shard_size):
        raise ValueError(f"shard_size must be a whole number >= 1, got {shard_size!r}")


def run_study(
    spec,
    out=None,
    *,
    quick=False,
    workers=None,
    scheduler=None,
    client=None,
    threads=None,
    shard_size=None,
    progress=True,
    report=True,
):
    """Run a study (or the part of it not yet done) and write its report.

    Parameters
    ----------
    spec : str, path or dict
        A TOML file, a built-in study's name, or a spec dict (see :func:`load_spec`).
    out : path, optional
        Output directory (default ``data/<name>``, ``data/<name>-quick`` with ``quick``).
    quick : bool
        Run the spec's ``[quick]`` size.
    workers : int, optional
        Run the shards on a dask ``LocalCluster`` of this many worker processes.
    scheduler : str, optional
        Address of an existing dask scheduler (e.g. one started by dask-jobqueue).
    client : dask.distributed.Client, optional
        An existing client (instead of ``workers`` / ``scheduler``).
    threads : int, optional
        Numba threads per process (this process, or each dask worker; default: all cores here,
        1 per dask worker).
    shard_size : int, optional
        Flows per shard (default: the spec's ``shard_size``). Results do not depend on it.
    progress : bool
        Show progress (a bar on a terminal, a line every 10 s elsewhere) and messages.
    report : bool
        Write ``report.md`` and ``figures/`` at the end.

    Returns
    -------
    RunSummary
    """
    t_start = time.perf_counter()
    _check_flag(progress, "progress")
    _check_flag(report, "report")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a path (str or os.PathLike) or None, got {out!r}")
    study = load_spec(spec, quick=quick)
    _check_run_args(workers, scheduler, client, threads, shard_size)
    if report:
        spec_checks.sections_file(study)
    shard_size = _shard_size(study, shard_size)
    d = open_study_dir(study, study_dir_for(study, out)).resolve()
    say = _say(progress)
    summary = RunSummary(study_dir=d, n_flows_total=study.n_flows)
    distributed = sum(x is not None for x in (workers, scheduler, client)) == 1
    with lock(d), quiet():  # the runner says what it is doing itself
        changed = check_spec_file(study, d)
        if changed:
            say(f"{SPEC_FILE}: {', '.join(changed)} updated from the spec (they change no number)")
        if remove_partial_files(d):
            say("removed temporary files of an interrupted run")
        done = finished_shards(d, study.spec_hash, set_aside=True)
        todo = plan(study, done, shard_size)
        summary.n_shards_skipped = len(done)
        n_todo = sum(s.n_flows for s in todo)
        say(
            f"study {study.name}: {len(study.cells)} cells x {study.spec['data']['n_datasets']} "
            f"datasets x {study.spec['flows_per_dataset']} flows = {study.n_flows} flows; "
            f"{n_todo} to run in {len(todo)} shards ({len(done)} shards done) -> {d}"
        )
        try:
            # a LocalCluster's workers share this machine's cache: compile here, on both cores,
            # and they load the kernels (each worker compiling for itself would share the cores)
            here = bool(todo) and (not distributed or workers is not None)
            _prepare(study, d, threads, here, progress, say, summary)
            if todo and not distributed:
                bar = FlowProgress(n_todo, study.name, progress)
                try:
                    _run_local(study, d, todo, threads, bar, summary)
                finally:
                    bar.close()
            elif todo:
                run_on_dask(study, d, todo, (client, workers, scheduler), threads, here,
                            progress, say, summary)  # fmt: skip
        except KeyboardInterrupt:
            summary.interrupted = True
        remove_partial_files(d)  # of workers killed mid-write (their shards were rerun)
        if report and not summary.interrupted:
            t0 = time.perf_counter()
            with Ticker("writing the report (tables, figures)", progress and interactive()) \
                    if progress else contextlib.nullcontext():
                summary.report = _report_repairing(study, d, shard_size, threads, summary)
            summary.report_seconds = time.perf_counter() - t0
        summary.wall_seconds = time.perf_counter() - t_start
    if progress:
        for line in summary.lines():
            print(line, file=sys.stderr)
    return summary


def _say(progress):
    """``say(*parts)``: a message line on stderr when ``progress``, else nothing."""
    if progress:
        return lambda *a: print(*a, file=sys.stderr, flush=True)
    return lambda *a: None


def _shard_size(study, shard_size):
    """The run's flows per shard: the spec's unless ``shard_size`` is given, which must pass
    the spec's own checks (the spec's value passed them in load_spec)."""
    if shard_size is None:
        return study.spec["shard_size"]
    try:
        spec_checks.save_sizes(_keys.Ctx(None, None), study.spec, shard_size)
        spec_checks.shard_count(_keys.Ctx(None, None), study.spec, len(study.cells), shard_size)
    except ValueError as e:
        raise ValueError(f"shard_size={shard_size}: {e}") from None
    return shard_size


def _prepare(study, d, threads, here, progress, say, summary):
    """Write the data of every dataset (once) and, if ``here`` (the shards run in this process,
    or on a LocalCluster that loads what this one compiles), compile or load every kernel the
    run needs, the integrators in a second process meanwhile (lcnfast.study.warm), with a
    ticker. Ctrl-C while Numba compiles is lost or breaks Numba (lcnfast._signals): it is
    noted, and raised between the steps (``noted.check``), each at most a few compiles long."""
    what = (
        f"preparing the kernels for {_loss_names(study)} (compiled on the first run, "
        "30-60 s on 2 cores; later runs load them in seconds)" if here else "writing the data"
    )
    t0 = time.perf_counter()
    with sigint_deferred(say) as noted, _threads(threads), Ticker(
        what, progress and interactive()
    ) if progress else contextlib.nullcontext():
        with compiling_aside(study.spec, enabled=here):  # the integrators, on core 2
            write_datasets(study, d)
            if here:
                noted.check()
                compile_rodas_tail(study.spec, between=noted.check)  # core 2's last
                warm_analysis(study.spec, str(d), between=noted.check)
        if here:
            warm_up(study.spec, str(d), threads, between=noted.check)
            summary.compile_seconds = time.perf_counter() - t0


def reanalyse_study(study_dir, *, progress=True, report=True):
    """Analyse every finished shard of a study again with this version of
    :mod:`lcnfast.analysis` and the spec's tolerances, then rewrite the report.

    Nothing is integrated again: :func:`lcnfast.analysis.classify` and the rank bounds use the
    stored end points and invariants of the flows (the shards' engine variables and the stored
    data). Use it when the analysis improved, or to analyse an old study with new fields. Each
    shard is rewritten atomically, so an interrupted re-analysis leaves every file complete
    (run it again to finish). Returns ``{label name: count}`` over all flows.
    """
    from .load import read_spec  # load imports this module

    _check_flag(progress, "progress")
    _check_flag(report, "report")
    study = read_spec(study_dir)
    if report:
        spec_checks.sections_file(study, missing_ok=True)
    d = Path(study_dir).resolve()
    say = _say(progress)
    counts = {}
    with lock(d), (contextlib.nullcontext() if progress else quiet()):
        remove_partial_files(d)
        done = finished_shards(d, study.spec_hash, set_aside=True)
        say(f"study {study.name}: analysing {len(done)} shards again -> {d}")
        bar = FlowProgress(sum(s.n_flows for s in done), study.name, progress)
        try:
            for i, shard in enumerate(done):
                s = reanalyse_shard(str(d), study.spec, shard_path(d, shard))
                for code, n in s["label"].items():
                    name = _analysis.LABELS[code]
                    counts[name] = counts.get(name, 0) + n
                bar.update(shard.n_flows, f"shards {i + 1}/{len(done)}")
        finally:
            bar.close()
        if report:
            from .report import write_report

            with Ticker("writing the report (tables, figures)", progress and interactive()) \
                    if progress else contextlib.nullcontext():
                path = write_report(d)
            say(f"report: {path}")
    return counts
