"""Running a study's shards as dask futures: on a ``LocalCluster`` of worker processes started
here (``workers``), or on a running cluster (``scheduler``, ``client``).

Private to :mod:`lcnfast.study.runner`. The workers load the kernels before their first
shard (compiled here for a ``LocalCluster``, which shares this machine's cache; compiled by
each worker of a remote cluster), then the shards run as futures (``client.map``,
``as_completed``) and the progress bar counts them as they end. Ctrl-C reaches this process
alone (a ``LocalCluster``'s workers start with SIGINT ignored): it cancels the shards not
started and closes the cluster of its own. On a cluster that outlives the run, the shards its
workers are running at Ctrl-C run on to their end (dask cannot stop a running task) and write
their files; a run resumed before then attaches to them instead of computing them twice,
also when it was given another shard size (:func:`_adopt_running`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time

from .._notice import FlowProgress
from .shards import _SHARD_RE, Shard, run_shard
from .warm import warm_up

__all__ = ["run_on_dask"]


def run_on_dask(study, d, todo, cluster, threads, compiled_here, progress, say, summary):
    """Run the shards ``todo`` of ``study`` (directory ``d``) on dask, adding each shard's
    figures to ``summary`` as it ends. ``cluster``: ``(client, workers, scheduler)``, exactly
    one not None (see :func:`lcnfast.study.run_study`); ``threads``: Numba threads per worker
    (None: 1); ``compiled_here``: whether this process has compiled the kernels into the cache
    the workers share (a ``LocalCluster``), so that they only load them."""
    client, workers, scheduler = cluster
    tpw = threads or 1
    with (contextlib.nullcontext(client) if client is not None
          else _client(workers, scheduler, tpw)) as cl:  # fmt: skip
        cl.register_plugin(_numba_threads_plugin(tpw))
        say(f"dask: {len(cl.scheduler_info()['workers'])} workers; " + (
            "loading the kernels on each ..." if compiled_here else "compiling kernels on "
            "each (the first run compiles for about a minute, later runs load them) ..."))
        t0 = time.perf_counter()
        cl.run(warm_up, study.spec, str(d), tpw)
        summary.compile_seconds += time.perf_counter() - t0
        say(f"kernels ready on every worker in {time.perf_counter() - t0:.1f} s")
        todo, adopted = _adopt_running(cl, study, todo)
        if adopted:
            say(f"attaching to {len(adopted)} shards of another shard size that the cluster is "
                f"still running ({sum(s.n_flows for s in adopted)} flows)")
        bar = FlowProgress(sum(s.n_flows for s in todo), study.name, progress)
        try:
            # a cluster of this run's own (workers) closes with it; another outlives it
            _run_dask(study, d, todo, cl, bar, summary, tpw, outlives=workers is None)
        finally:
            bar.close()


def _worker_env(threads_per_worker):
    return {
        "NUMBA_NUM_THREADS": str(threads_per_worker),
        "LCNFAST_NOTICES": "0",  # the client says what the workers do
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _numba_threads_plugin(n):
    """A dask WorkerPlugin that makes Numba use ``n`` threads on every worker, restarted ones
    included: the worker process imports lcnfast (and so Numba) before the nanny's ``env``
    reaches ``os.environ``, so Numba's configuration must be reloaded there."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class NumbaThreads(WorkerPlugin):
        name = "lcnfast-numba-threads"

        def __init__(self, n):
            self.n = n

        def setup(self, worker):
            import numba

            os.environ["NUMBA_NUM_THREADS"] = str(self.n)
            numba.config.reload_config()

    return NumbaThreads(n)


@contextlib.contextmanager
def _client(workers, scheduler, threads_per_worker):
    from dask.distributed import Client, LocalCluster

    if scheduler is not None:
        try:
            client = Client(scheduler)
        except OSError as e:  # "Timed out trying to connect to ... after 30 s"
            raise OSError(f"scheduler: {e}") from e
        with client:
            yield client
        return
    with _sigint_ignored():  # the worker processes start here and inherit it
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            env=_worker_env(threads_per_worker),
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    with cluster, Client(cluster) as client:
        try:
            yield client
        except KeyboardInterrupt:
            client.run(_silence_distributed_logs)
            raise


def _silence_distributed_logs():
    """Log only distributed's critical errors in this process (a worker, by ``Client.run``):
    after Ctrl-C the LocalCluster closes under the shards still running, and distributed logs
    errors of that shutdown, not of the results (the shards are rerun by the next run). The
    one seen most, a shard file's distributed lock that could not be released, is gone since
    lcnfast.to_netcdf takes a lock of its process (lcnfast.io._thread_write_lock)."""
    for name in list(logging.root.manager.loggerDict):
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process for the block (main thread only), so that the
    processes started in it inherit SIGINT ignored: a LocalCluster's workers, which share the
    terminal's process group and so get its Ctrl-C too. Without this, each worker died of it
    with a traceback (and the nannies and the lock of the shard being written logged errors)
    while this process stopped the run; now this process alone handles Ctrl-C, cancels the
    shards and closes the cluster, and the run ends with its "interrupted" summary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _run_dask(study, d, todo, client, progress, summary, threads_per_worker, outlives):
    """The shards ``todo`` as futures, counted into ``progress`` and ``summary`` as they end.
    Interrupted (Ctrl-C), on a cluster that ``outlives`` the run, the shards its workers are
    running are left to finish (:func:`_leave_running`) and the others are cancelled."""
    from dask.distributed import as_completed

    spec = study.spec
    futures = client.map(
        run_shard,
        [str(d)] * len(todo),
        [spec] * len(todo),
        [tuple(s) for s in todo],
        [threads_per_worker] * len(todo),
        key=[shard_key(study, s) for s in todo],
        pure=False,
    )
    try:
        # with_results: the results come on dask's own thread, so that Ctrl-C finds this one
        # waiting on a condition, not inside a call into the client's event loop (there, on
        # distributed 2026.8-2026.11, it also logged a NameError from dask's sync())
        for i, (_, s) in enumerate(as_completed(futures, with_results=True), start=1):
            summary.add(s)
            progress.update(s["n_flows"], f"shards {i}/{len(todo)}")
    except KeyboardInterrupt:
        if outlives:
            _leave_running(client, futures)
        raise
    finally:
        client.cancel(futures)  # all but those left running (they have another holder)


def _key_prefix(study):
    """The start of the dask keys of ``study``'s shards (:func:`shard_key`)."""
    return f"lcnfast-{study.spec_hash[:12]}-"


def shard_key(study, shard):
    """The dask key of a shard's task: the spec's hash and the shard's flows, so that a run
    resumed on the same cluster names a shard's task as the interrupted run did."""
    return _key_prefix(study) + shard.name


def _adopt_running(client, study, todo):
    """``(todo, adopted)``: the shards to submit, with the shards of this spec that the cluster
    is running under another partition adopted whole. A run interrupted on a cluster that
    outlives it leaves its running shards to finish (:func:`_leave_running`); resumed with the
    same shard size, it plans the same shards and its futures attach to them by key. Resumed
    with another size, its plan cuts the same flows differently, and they were computed
    twice. Now each such shard (its key names its flows: :func:`shard_key`) whose flows are
    all still to run is submitted as it is, so that its future attaches to the running task,
    and its flows are cut out of the planned shards. Shards that overlap an adopted one, or
    flows already written, are not adopted (they write their file anyway; a flow is read
    once, lcnfast.study.load). Best effort: an unreachable scheduler adopts nothing."""
    try:
        keys = sorted(str(k) for ks in client.processing().values() for k in ks)
    except (OSError, TimeoutError):
        return todo, []
    prefix = _key_prefix(study)
    planned = {s.name for s in todo}
    blocks = {}  # (cell, dataset) -> the planned flow blocks [(f0, f1)]
    for s in todo:
        blocks.setdefault((s.cell, s.dataset), []).append((s.f0, s.f1))
    adopted = []
    for k in keys:
        m = _SHARD_RE.match(k[len(prefix):] + ".nc") if k.startswith(prefix) else None
        if m is None:
            continue
        r = Shard(*map(int, m.groups()))
        inside = sum(max(0, min(b, r.f1) - max(a, r.f0))
                     for a, b in blocks.get((r.cell, r.dataset), ()))  # fmt: skip
        if r.name in planned or inside != r.n_flows or any(
                (q.cell, q.dataset) == (r.cell, r.dataset) and q.f0 < r.f1 and r.f0 < q.f1
                for q in adopted):  # fmt: skip
            continue
        adopted.append(r)
    if not adopted:
        return todo, []
    rest = []
    for s in todo:  # each planned shard less the adopted flows, in the pieces left
        f = s.f0
        for r in sorted(r for r in adopted if (r.cell, r.dataset) == (s.cell, s.dataset)):
            if r.f0 >= s.f1:
                break
            if f < r.f0:
                rest.append(Shard(s.cell, s.dataset, f, r.f0))
            f = max(f, min(r.f1, s.f1))
        if f < s.f1:
            rest.append(Shard(s.cell, s.dataset, f, s.f1))
    return rest + adopted, adopted


def _leave_running(client, futures):
    """Hand the futures of the shards the workers are running (the scheduler's
    ``processing``) to ``fire_and_forget``: they run to their end and write their files
    (dask cannot stop a running task; released, they would run on anyway, their results
    dropped), and a run resumed before they end submits the same keys (:func:`shard_key`),
    which the scheduler attaches to the running tasks instead of computing them twice. Best
    effort: an unreachable scheduler leaves the shards to the next run."""
    from dask.distributed import fire_and_forget

    try:
        running = {k for keys in client.processing().values() for k in keys}
    except (OSError, TimeoutError):
        return
    fire_and_forget([f for f in futures if f.key in running])
