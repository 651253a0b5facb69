"""A study's progress bar counts a shard's flows as the engine ends them, not only when the
shard is written (lcnfast.flows.counting_finished_flows; the runner's _ShardFlows)."""

from __future__ import annotations

import time

import numpy as np

import lcnfast as lf
from lcnfast import flows
from lcnfast.study import runner

QUICK_SQUARE = """
name = "progress"
seed = 3
flows_per_dataset = 5
shard_size = 2

[[architectures]]
d0 = 8
k = [3, 3]

[[losses]]
name = "square"

[data]
m = 12

[[integrator]]
method = "euler"
h = 0.01
n_steps = 50
save_every = 25
"""


class Recorder:
    """A FlowProgress stand-in: the running count at every update, with its time."""

    def __init__(self, *args, **kwargs):
        self.done, self.seen, self.t0 = 0, [], time.perf_counter()

    def update(self, n, postfix=""):
        assert n >= 0
        self.done += n
        self.seen.append((time.perf_counter() - self.t0, self.done, postfix))

    def close(self):
        pass


def test_the_engine_reports_flows_as_they_end():
    """Two flows start at w = 0 (a critical point: grad = 0 for two layers, grad_tol stops
    them at once) and two run 8e6 steps (~1-2 s): the counter sees 2 finished flows while
    the others run (the helper thread polls every 0.25 s), then 4."""
    arch = lf.Architecture(8, (2, 2))
    d = lf.data.teacher(arch, 12, noise=0.1, seed=0)
    p = lf.Problem(arch, d.X, d.Y, lf.losses.square())
    w0 = lf.data.initial_filters(arch, 4, scale=0.5, seed=1)
    w0[:2] = 0.0
    kw = dict(h=1e-3, grad_tol=1e-30, progress=False)
    lf.gradient_descent(p, w0, n_steps=10, **kw)  # compile / load
    with flows.counting_finished_flows(Recorder()) as rec:
        ds = lf.gradient_descent(p, w0, n_steps=8_000_000, save_every=8_000_000, **kw)
    assert ds.status.values.tolist() == [0, 0, 1, 1]  # converged at once; reached the end
    assert rec.done == 4
    assert any(done == 2 for _, done, _ in rec.seen[:-1]), rec.seen
    # outside the block nothing is counted
    lf.gradient_descent(p, w0, n_steps=10, **kw)
    assert rec.done == 4
    # two runs in one block: counted one after the other
    with flows.counting_finished_flows(Recorder()) as rec:
        lf.gradient_descent(p, w0, n_steps=10, **kw)
        lf.gradient_flow(p, w0[:3], t_end=0.1, progress=False)
    assert rec.done == 7 and [done for _, done, _ in rec.seen][-1] == 7


def test_the_study_bar_counts_each_flow_once(tmp_path, monkeypatch):
    """5 flows in shards of 2, 2, 1: the bar ends at 5 (the engine's counts and the runner's
    per-shard remainder add up, never twice) with the shard count in its postfix."""
    bars = []
    monkeypatch.setattr(runner, "FlowProgress", lambda *a, **k: bars.append(Recorder()) or bars[-1])
    spec = tmp_path / "progress.toml"
    spec.write_text(QUICK_SQUARE)
    summary = runner.run_study(spec, tmp_path / "out", progress=False, report=False)
    assert summary.n_flows_run == 5 and summary.n_shards_run == 3
    (bar,) = bars
    assert bar.done == 5
    assert [p for _, _, p in bar.seen if p] == ["shards 1/3", "shards 2/3", "shards 3/3"]
    counts = np.array([done for _, done, _ in bar.seen])
    assert (np.diff(counts) >= 0).all()
