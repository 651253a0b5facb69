"""Tests of the laboratory (lcnfast.study, the lcnfast command): specs, seeds, shards,
resumption, invariance of the results under the execution, dask."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import netCDF4
import numba
import numpy as np
import pytest
import xarray as xr

import lcnfast
from lcnfast import Architecture, Problem, analysis, losses
from lcnfast.flows import balancedness
from lcnfast.study import draws, load, load_problem, load_spec, run_study
from lcnfast.study.shards import finished_shards

ROOT = Path(__file__).resolve().parents[1]

# Eight cells (2 architectures, one strided, x 2 losses x 2 integrators), 1 dataset, 10 flows.
TINY = """
name = "tiny"
description = "test study"
seed = 7
flows_per_dataset = 10
shard_size = 64

[[architectures]]
d0 = 8
k = [2, 2]

[[architectures]]
d0 = 9
k = [3, 2]
s = [2, 1]

[[losses]]
name = "square"

[[losses]]
name = "pseudo_huber"
params = { delta = 1.0 }

[data]
m = 12
noise = 0.1

[init]
scale = 0.5

[[integrator]]
method = "rk45"
t_end = 20.0
rtol = 1e-6
atol = 1e-9
max_steps = 5000
save = 6

[[integrator]]
method = "euler"
h = 0.01
n_steps = 300
save_every = 100

[quick]
flows_per_dataset = 3
"""


def write_spec(tmp_path, text=TINY, name="tiny.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def assert_same_results(a, b):
    """Every data variable identical (values, dims, coordinates, attributes)."""
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        xr.testing.assert_identical(a[v], b[v])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The tiny study run once in this process (shards of 64 flows, default threads)."""
    d = tmp_path_factory.mktemp("ref")
    spec = write_spec(d)
    s = run_study(spec, d / "out", progress=False, report=False)
    return spec, d / "out", load(d / "out"), s


# ----------------------------------------------------------------------------- specs
@pytest.mark.parametrize(
    "edit, where",
    [
        (("seed = 7", "seeed = 7"), "seeed: unknown key (did you mean 'seed'?)"),
        (("s = [2, 1]", "s = [4, 1]"), "architectures[1]: layer 1"),
        (("s = [2, 1]", "s = [2, 0]"), "architectures[1].s: layer 2: stride"),
        (("delta = 1.0", "delta = -1.0"), "losses[1].params"),
        (('name = "pseudo_huber"', 'name = "huber"'), "losses[1].name"),
        (("rtol = 1e-6", "rtoll = 1e-6"), "integrator[0].rtoll: unknown key"),
        (("m = 12", "m = 0"), "data.m[0]: must be >= 1"),
        (("scale = 0.5", 'scale = "big"'), "init.scale[0]: must be a number"),
        (("noise = 0.1", "noise = 0.1\ntarget = {v = [1.0, 2.0]}"), "data.target[0].v"),
        (('method = "euler"', 'method = "heun"'), "integrator[1].method"),
        (("[quick]", "[quick]\nname = 'other'"), "quick.name: unknown key"),
        (("save = 6", "save = 6\nloss_levels = [0.5, 1.5]"), "integrator[0].loss_levels"),
        (("save = 6", "save = 6\nloss_levels = [0.5, 0.5]"), "integrator[0].loss_levels"),
        (("save = 6", "save = 6\nloss_levels = [-0.5]"), "integrator[0].loss_levels[0]"),
    ],
)
def test_spec_errors_name_the_key_and_line(tmp_path, edit, where):
    text = TINY.replace(*edit)
    assert text != TINY
    spec = write_spec(tmp_path, text)
    with pytest.raises(ValueError) as e:
        load_spec(spec, quick="quick" in where)
    msg = str(e.value)
    assert where in msg
    # the line of the offending key, where the locator finds it
    key = where.split(":")[0].split(".")[-1].split("[")[0]
    lines = [n + 1 for n, ln in enumerate(text.splitlines()) if ln.strip().startswith(key)]
    if lines and key not in ("m", "scale"):
        assert "line " in msg


def test_malformed_toml_and_missing_sections(tmp_path):
    with pytest.raises(ValueError, match=r"invalid TOML.*line 4"):
        load_spec(write_spec(tmp_path, 'name = "x"\nseed = 1\nk = [1, 2\nm = 3\n'))
    with pytest.raises(ValueError, match="architectures: missing"):
        load_spec({"name": "x", "data": {"m": 3}, "integrator": {"t_end": 1.0}})
    with pytest.raises(ValueError, match="data.m: missing"):
        load_spec({"name": "x", "architectures": {"d0": 4, "k": [2]}, "data": {},
                   "integrator": {"t_end": 1.0}})  # fmt: skip
    with pytest.raises(ValueError, match="spec: 'no-such-study' is neither"):
        load_spec("no-such-study")


def test_resolved_spec_fills_defaults_and_round_trips(tmp_path):
    st = load_spec(write_spec(tmp_path))
    assert len(st.cells) == 8 and st.n_flows == 80
    rk = st.spec["integrator"][0]
    assert rk["grad_tol"] is None and rk["save"] == 6
    assert st.spec["analysis"] == {k: float(v) for k, v in analysis.DEFAULTS.items()}
    again = load_spec(json.loads(json.dumps(st.spec)))
    assert again.spec == st.spec and again.spec_hash == st.spec_hash
    quick = load_spec(write_spec(tmp_path), quick=True)
    assert quick.name == "tiny-quick" and quick.n_flows == 24
    assert load_spec(json.loads(json.dumps(quick.spec))).spec_hash == quick.spec_hash
    # execution-only keys do not change the hash
    other = load_spec(write_spec(tmp_path, TINY.replace("shard_size = 64", "shard_size = 3")))
    assert other.spec_hash == st.spec_hash


def test_builtin_quickstart_runs_at_its_quick_size(tmp_path):
    st = load_spec("quickstart")
    assert st.spec["name"] == "quickstart" and st.n_flows >= 200
    assert load_spec("quickstart", quick=True).n_flows < st.n_flows
    s = run_study("quickstart", tmp_path / "q", quick=True, progress=False)
    assert s.report == tmp_path.resolve() / "q" / "report.md" and s.report.is_file()
    # auto with t_end = inf: every flow reaches its grad_tol (1e-10: ~1e-12 is reachable)
    assert s.status_counts == {lcnfast.flows.I.CONVERGED: load_spec("quickstart", quick=True).n_flows}


# ----------------------------------------------------------------------------- seeds and data
def test_draws_are_stateless_and_paired(tmp_path):
    st = load_spec(write_spec(tmp_path))
    c0, c1 = st.cells[0], st.cells[2]  # same architecture, different loss
    assert c0.levels["architecture"] == c1.levels["architecture"]
    assert c0.levels["loss"] != c1.levels["loss"]
    W = draws.initial_points(c0, 0, 0, 8, st.spec["seed"])
    np.testing.assert_array_equal(draws.initial_points(c0, 0, 3, 5, st.spec["seed"]), W[3:5])
    np.testing.assert_array_equal(draws.initial_points(c1, 0, 0, 8, st.spec["seed"]), W)
    assert not np.array_equal(draws.initial_points(c0, 1, 0, 8, st.spec["seed"]), W)
    X0, Y0, v0 = draws.make_dataset(c0, 0, st.spec["seed"])
    X1, Y1, v1 = draws.make_dataset(c1, 0, st.spec["seed"])
    np.testing.assert_array_equal(X0, X1)
    np.testing.assert_array_equal(Y0, Y1)
    assert X0.shape == (8, 12) and Y0.shape == (6, 12) and v0.shape == (3,)


def test_balanced_init_keeps_the_final_filter(tmp_path):
    text = TINY.replace("scale = 0.5", 'scale = 0.5\ndistribution = ["gaussian", "balanced"]')
    st = load_spec(write_spec(tmp_path, text))
    gauss, bal = st.cells[0], st.cells[1]
    assert bal.init_distribution == "balanced"
    arch = gauss.arch()
    Wg = draws.initial_points(gauss, 0, 0, 5, st.spec["seed"])
    Wb = draws.initial_points(bal, 0, 0, 5, st.spec["seed"])
    X, Y, _ = draws.make_dataset(gauss, 0, st.spec["seed"])
    p = Problem(arch, X, Y, losses.square())
    # pi is invariant under the rescaling (section 1.1); rounding of the scaled entries only
    np.testing.assert_allclose(p.final_filter(Wb), p.final_filter(Wg), rtol=1e-13, atol=1e-15)
    # equal layer norms: delta_i = 0 up to rounding of the squared norms
    np.testing.assert_allclose(balancedness(arch, Wb), 0.0, atol=1e-14)


def test_data_options(tmp_path):
    arch = Architecture(8, (2, 2))
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 5))
    Y = rng.standard_normal((6, 5))
    np.savez(tmp_path / "mydata.npz", X=X, Y=Y)
    spec = {
        "name": "opts",
        "architectures": {"d0": 8, "k": [2, 2]},
        "data": {
            "m": 6,
            "inputs": ["gaussian", {"low_rank": 2}, {"gram_singular": 1}],
            "target": ["teacher", "gaussian", {"v": [1.0, 0.0, 1.0]}],
        },
        "integrator": {"t_end": 1.0},
    }
    st = load_spec(spec)
    assert len(st.cells) == 9
    for cell in st.cells:
        Xc, Yc, v = draws.make_dataset(cell, 0, 0)
        assert Xc.shape == (8, 6) and Yc.shape == (6, 6)
        rank = np.linalg.matrix_rank(Xc)
        want = {"gaussian": 6, "low_rank=2": 2}.get(cell.labels["inputs"])
        if want is not None:
            assert rank == want
        if cell.labels["target"].startswith("v="):
            # v* = 1 + x^2 has the roots +-i: outside the image of pi for k = (2, 2)
            np.testing.assert_array_equal(v, [1.0, 0.0, 1.0])
            np.testing.assert_allclose(Yc, lcnfast.data.conv_apply(v, Xc, 1))
    p = Problem(arch, *draws.make_dataset(st.cells[6], 0, 0)[:2], losses.square())
    assert np.linalg.matrix_rank(p.A) == arch.k_v - 1  # gram_singular = 1
    fspec = dict(spec, data={"inputs": {"file": str(tmp_path / "mydata.npz")}, "target": "file"})
    fcell = load_spec(fspec).cells[0]
    Xf, Yf, _ = draws.make_dataset(fcell, 0, 0)
    np.testing.assert_array_equal(Xf, X)
    np.testing.assert_array_equal(Yf, Y)
    with pytest.raises(ValueError, match="data.m: do not set m"):
        load_spec(dict(fspec, data={"m": 5, "inputs": {"file": str(tmp_path / "mydata.npz")}}))
    with pytest.raises(ValueError, match=r"data.inputs\[0\].file: no such file"):
        load_spec(dict(fspec, data={"inputs": {"file": "nope.npz"}}))


# ----------------------------------------------------------------------------- runs
def test_run_writes_shards_with_everything_needed(reference):
    spec, out, ds, summary = reference
    st = load_spec(spec)
    assert summary.n_flows_run == 80 and summary.n_shards_run == 8
    assert sum(summary.status_counts.values()) == 80
    assert ds.sizes["flow"] == 80
    assert set(ds.indexes["flow"].names) >= {"cell", "architecture", "loss_fn", "dataset", "replicate"}
    assert ds["loss"].dims == ("flow", "time")  # the saved loss values, not the factor
    # a factor level selects its flows; padded parameters of the smaller architecture are NaN
    sq = ds.sel(loss_fn="square")
    assert sq.sizes["flow"] == 40
    assert set(ds["param"].to_index()) == {(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)}
    a22 = ds.sel(architecture="(8; 2,2; 1,1)")
    assert np.isnan(a22.w_final.sel(layer=1, tap=2).values).all()
    # one shard file reproduces its run: resolved spec, data, flows
    shard = next((out / "shards").glob("*.nc"))
    f = lcnfast.open_dataset(shard)
    assert load_spec(json.loads(f.attrs["spec"])).spec_hash == st.spec_hash
    cell, dataset = int(f["cell"][0]), int(f["dataset"][0])
    problem = load_problem(out, cell, dataset)
    # limit_loss is the loss summed on the data (never below the minimum by the Gram
    # formula's cancellation), to rounding of the Gram value the engine uses
    np.testing.assert_array_equal(
        analysis.loss_on_data(problem, problem.final_filter(f.w_final.values)), f.limit_loss.values
    )
    np.testing.assert_allclose(problem.loss(f.w_final.values), f.limit_loss.values, rtol=1e-12)
    assert {"label", "is_critical", "lemma36_bound", "balance_drift", "reached_best"} <= set(f)


def test_rerun_skips_finished_shards(reference, tmp_path):
    spec, out, ds, _ = reference
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.nc")}
    # partial files: removed where the writer is gone, kept where it may still write (a shard
    # an interrupted run left running on a cluster: lcnfast.study.on_dask)
    from lcnfast import io as lio
    from lcnfast.study.directory import REMOTE_PARTIAL_AGE

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = lio._host()
    partial = {
        name: out / "shards" / f".lcnfast-partial-{name}-0123456789ab.nc"
        for name in (f"{host}-{dead.pid}", f"{host}-{os.getpid()}", "somehost-99999",
                     "otherhost-99999")
    }  # fmt: skip
    for p in partial.values():
        p.write_bytes(b"half a file")
    old = time.time() - REMOTE_PARTIAL_AGE - 60
    os.utime(partial["somehost-99999"], (old, old))
    s = run_study(spec, out, progress=False, report=False)
    gone = {name for name, p in partial.items() if not p.exists()}
    # this host's dead writer and another host's file unchanged for 11 minutes go; a live
    # writer of this host (this process) and a fresh file of another host stay
    assert gone == {f"{host}-{dead.pid}", "somehost-99999"}, gone
    for name in set(partial) - gone:
        partial[name].unlink()
    assert s.n_flows_run == 0 and s.n_shards_skipped == 8
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.nc")} == mtimes


def test_reanalyse_restores_the_analysis_and_keeps_the_flows(reference, tmp_path):
    # a shard whose analysis variables were damaged (as an older analysis would have left
    # them) is analysed again from its stored end points: the same labels and fields as a
    # fresh run, the engine's variables untouched, nothing integrated
    import shutil

    from lcnfast.study import reanalyse_study

    spec, out, ref, _ = reference
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for p in (copy / "shards").glob("*.nc"):
        with lcnfast.open_dataset(p) as f:
            ds = f.load()
        ds["label"][:] = 3
        ds = ds.drop_vars(["is_critical", "lemma36_bound"])
        lcnfast.to_netcdf(ds, p)
    assert (load(copy)["label"] == 3).all()
    counts = reanalyse_study(copy, progress=False, report=False)
    assert sum(counts.values()) == ref.sizes["flow"]
    assert_same_results(ref, load(copy))
    r = subprocess.run([sys.executable, "-m", "lcnfast.cli", "study", "reanalyse", str(copy),
                        "--quiet"], capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0 and "limit points:" in r.stdout and (copy / "report.md").exists()


def test_shard_size_and_threads_do_not_change_results(reference, tmp_path):
    spec, _, ref, _ = reference
    small = run_study(spec, tmp_path / "s3", shard_size=3, threads=1, progress=False, report=False)
    assert small.n_shards_run == 8 * 4  # 10 flows per dataset in blocks of 3, 3, 3, 1
    assert_same_results(ref, load(tmp_path / "s3"))
    # 2 threads where the process has them (NUMBA_NUM_THREADS=1 allows one only)
    nt = min(2, numba.config.NUMBA_NUM_THREADS)
    run_study(spec, tmp_path / "t2", shard_size=7, threads=nt, progress=False, report=False)
    assert_same_results(ref, load(tmp_path / "t2"))


def test_directory_of_another_spec_is_refused_before_any_flow(reference, tmp_path):
    spec, out, _, _ = reference
    changed = write_spec(tmp_path, TINY.replace("noise = 0.1", "noise = 0.2"))
    n = len(list((out / "shards").glob("*")))
    with pytest.raises(ValueError, match=r"differing keys: data\.noise"):
        run_study(changed, out, progress=False, report=False)
    assert len(list((out / "shards").glob("*"))) == n
    other = tmp_path / "notastudy"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a study directory"):
        run_study(spec, other, progress=False, report=False)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="out: "):
        run_study(spec, afile / "sub", progress=False, report=False)
    with pytest.raises(ValueError, match="shard_size"):
        run_study(spec, tmp_path / "x", shard_size=0, progress=False, report=False)


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("NUMBA_NUM_THREADS", None)
    return env


def test_killed_run_resumes_with_nothing_lost_or_computed_twice(reference, tmp_path):
    spec, _, ref, _ = reference
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "lcnfast.cli", "study", "run", str(spec), "--out", str(out),
           "--shard-size", "1", "--no-report", "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 900  # a cold cache on a loaded host: minutes of compiling first
    try:
        while time.time() < deadline and len(list((out / "shards").glob("c*.nc"))) < 5:
            time.sleep(0.05)
            assert proc.poll() is None, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
    done_before = finished_shards(out, load_spec(spec).spec_hash)
    assert 5 <= len(done_before) < 80
    for p in (out / "shards").glob("c*.nc"):  # every shard file that exists is complete
        with netCDF4.Dataset(p) as f:
            assert f.variables["w_final"].shape[0] == 1
    s = run_study(spec, out, shard_size=64, progress=False, report=False)
    assert s.n_flows_run == 80 - len(done_before)  # nothing computed twice
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # no partial file
    assert_same_results(ref, load(out))


def test_dask_workers_give_the_same_results(reference, tmp_path):
    spec, _, ref, _ = reference
    s = run_study(spec, tmp_path / "dask", workers=2, shard_size=4, progress=False, report=False)
    assert s.n_flows_run == 80
    assert_same_results(ref, load(tmp_path / "dask"))


def test_dask_worker_dying_mid_shard_is_recomputed(reference, tmp_path):
    from dask.distributed import Client, LocalCluster

    from lcnfast.study.on_dask import _numba_threads_plugin, _worker_env

    spec, _, ref, _ = reference
    out = tmp_path / "dying"
    killed = {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, env=_worker_env(1),
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        client.register_plugin(_numba_threads_plugin(1))
        assert set(client.run(lambda: __import__("numba").get_num_threads()).values()) == {1}

        run_over = threading.Event()

        def kill_a_busy_worker():
            # no deadline: the workers may first compile for minutes on a loaded host with a
            # cold cache (a 120 s deadline ran out before the first shard was written)
            while not run_over.is_set() and not killed:
                busy = {w: t for w, t in client.processing().items() if t}
                if busy and (out / "shards").is_dir() and any((out / "shards").glob("c*.nc")):
                    w, tasks = next(iter(busy.items()))
                    pid = client.run(os.getpid, workers=[w])[w]
                    os.kill(pid, signal.SIGKILL)
                    killed.update(worker=w, tasks=list(tasks))
                time.sleep(0.02)

        t = threading.Thread(target=kill_a_busy_worker)
        t.start()
        try:
            s = run_study(spec, out, client=client, shard_size=2, progress=False, report=False)
        finally:
            run_over.set()
            t.join()
    assert killed, "no worker was busy to be killed"
    assert s.n_flows_run == 80  # each shard's result counted once
    names = [p.name for p in (out / "shards").iterdir()]
    assert len(names) == 40 == len(set(names))  # no duplicate, no partial file of the killed worker
    assert_same_results(ref, load(out))


# ----------------------------------------------------------------------------- command line
# Shards of 2 flows of a few seconds each on 2 dask workers: Ctrl-C comes with most to run.
SLOW_DASK = """
name = "slow-dask"
seed = 3
flows_per_dataset = 24
shard_size = 2

[[architectures]]
d0 = 16
k = [3, 3, 3]

[data]
m = 32
noise = 0.1

[integrator]
method = "rk45"
t_end = 100.0
max_steps = 200000
save = 10
"""

# the CLI with Python's SIGINT handler (a background parent may have SIGINT ignored)
CLI = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
       "sys.argv[0] = 'lcnfast'; runpy.run_module('lcnfast', run_name='__main__')")


def _interrupted_cli(args, cwd, ready, env):
    """Run ``lcnfast ARGS`` in its own process group (as a terminal's job), Ctrl-C the group
    once ``ready()`` (polled; the workers may compile first), and return (returncode, stderr)."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, err


def test_ctrl_c_on_dask_workers_ends_with_the_summary_and_no_traceback(tmp_path):
    """Ctrl-C in a terminal reaches its whole process group, the LocalCluster's workers too:
    they died of it with tracebacks (and nanny and lock errors) in the run's output. Now they
    ignore it, the run cancels its shards, and ends as a local run does: the "interrupted"
    summary, exit status 130, no traceback."""
    spec = tmp_path / "slow.toml"
    spec.write_text(SLOW_DASK)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    returncode, err = _interrupted_cli(
        ["study", "run", str(spec), "--out", str(out), "--no-report", "--workers", "2"], tmp_path,
        ready=lambda: list((out / "shards").glob("c*.nc")), env=env)  # fmt: skip
    assert returncode == 130, err
    assert "Traceback" not in err and " - ERROR - " not in err, err
    assert "interrupted: the shards written are kept" in err
    assert len(list((out / "shards").glob("c*.nc"))) < 24  # stopped with shards to run


# Two shards of 2 flows, each running for ~10-15 s on this 2-core AVX2 host (2e6 rk45 steps,
# to max_steps: ~7 us a step): longer than a resumed run takes to start and submit them again.
LONG_SHARDS = (SLOW_DASK.replace("flows_per_dataset = 24", "flows_per_dataset = 4")
               .replace("t_end = 100.0", "t_end = 1e4")
               .replace("max_steps = 200000", "max_steps = 2000000")
               .replace('name = "slow-dask"', 'name = "long-shards"'))  # fmt: skip


@pytest.fixture(scope="module")
def outliving_cluster():
    """A cluster that outlives the runs (as ``--scheduler`` finds one): two worker processes,
    shared by the tests below so that its workers load the kernels once."""
    from dask.distributed import Client, LocalCluster

    from lcnfast.study.on_dask import _worker_env

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, env=_worker_env(1),
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        yield cluster, client


@pytest.mark.parametrize("resume_size", [None, 4])
def test_ctrl_c_on_a_running_cluster_then_resume_computes_no_shard_twice(
        outliving_cluster, tmp_path, resume_size):  # fmt: skip
    """On a cluster that outlives the run (``--scheduler``), the shards its workers are
    running at Ctrl-C run on to their end (dask cannot stop them). A run resumed before then
    submitted them again, and a shard could be computed twice, on another worker. Now the
    interrupted run leaves them to the scheduler (fire_and_forget), and the resumed run's
    futures attach to them: the scheduler still holds both after the first run has ended, the
    resumed run plans both (no file yet), and each shard file is written exactly once (one
    inode each, watched throughout). Resumed with another shard size (``resume_size`` 4: one
    shard of the 4 flows), the resumed run planned the same flows in other shards and
    computed them twice; now it adopts the running shards (on_dask._adopt_running) and says
    so, and again each of the two files is written once and no other."""
    cluster, client = outliving_cluster
    spec = tmp_path / "long.toml"
    spec.write_text(LONG_SHARDS)
    out = tmp_path / "out"
    shards = out / "shards"
    inodes = {}
    watching = threading.Event()

    def watch():  # every inode each shard file has had (a second write replaces it)
        while not watching.wait(0.02):
            for p in shards.glob("c*.nc") if shards.is_dir() else ():
                try:
                    inodes.setdefault(p.name, set()).add(p.stat().st_ino)
                except FileNotFoundError:
                    pass

    def ours():
        return {k for keys in client.processing().values() for k in keys
                if str(k).startswith("lcnfast-")}  # fmt: skip

    args = ["study", "run", str(spec), "--out", str(out), "--no-report", "--scheduler",
            cluster.scheduler_address]  # fmt: skip
    more = [] if resume_size is None else ["--shard-size", str(resume_size)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        returncode, err = _interrupted_cli(
            args, tmp_path, ready=lambda: len(ours()) == 2, env=_env())  # both running
        assert returncode == 130 and "Traceback" not in err, err
        assert len(ours()) == 2 and not list(shards.glob("c*.nc"))  # left running
        r = subprocess.run([sys.executable, "-c", CLI, *args, *more], env=_env(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=900)  # fmt: skip
        assert r.returncode == 0, r.stderr
        if resume_size is None:
            assert "4 to run in 2 shards (0 shards done)" in r.stderr, r.stderr  # submitted again
        else:
            assert "4 to run in 1 shards (0 shards done)" in r.stderr, r.stderr
            assert "attaching to 2 shards of another shard size" in r.stderr, r.stderr
    finally:
        watching.set()
        watcher.join()
    names = sorted(p.name for p in shards.glob("c*.nc"))
    assert names == ["c0000_d0000_f0000000-0000002.nc", "c0000_d0000_f0000002-0000004.nc"]
    assert sorted(inodes) == names
    assert all(len(v) == 1 for v in inodes.values()), inodes  # each written once


def test_command_line_end_to_end(tmp_path):
    spec = write_spec(tmp_path)
    out = tmp_path / "cli"

    def lcn(*args):
        return subprocess.run([sys.executable, "-m", "lcnfast.cli", *args], env=_env(),
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    r = lcn("study", "run", str(spec), "--out", str(out), "--quick", "--no-report")
    assert r.returncode == 0, r.stderr
    assert "study tiny-quick: 8 cells" in r.stderr
    assert "preparing the kernels for pseudo_huber, square" in r.stderr and "flows: 24 run" in r.stderr
    assert "Numba is compiling" not in r.stderr  # the runner's own line says it, once
    r = lcn("study", "status", str(out))
    assert r.returncode == 0 and "flows 24/24 done" in r.stdout
    assert "report: not written yet" in r.stdout
    r = lcn("study", "report", str(out))
    assert r.returncode == 0 and r.stdout.strip() == str(out / "report.md")
    assert "## Limit points" in (out / "report.md").read_text()
    r = lcn("study", "list")
    assert r.returncode == 0 and "quickstart" in r.stdout
    r = lcn("info")
    assert r.returncode == 0 and "numba" in r.stdout and "LCNFAST_CACHE_DIR" in r.stdout
    assert re.search(r"threading layer (omp|tbb|workqueue) \(setting", r.stdout)  # in use
    bad = write_spec(tmp_path, TINY.replace("seed = 7", "seeed = 7"), "bad.toml")
    r = lcn("study", "run", str(bad), "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "seeed: unknown key" in r.stderr
    assert not (tmp_path / "bad").exists()
    for args in (["--help"], ["study", "--help"], ["study", "run", "--help"]):
        r = lcn(*args)
        assert r.returncode == 0 and "usage: lcnfast" in r.stdout
    r = subprocess.run([sys.executable, "-m", "lcnfast", "study", "list"], env=_env(),
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0 and "quickstart" in r.stdout  # python -m lcnfast is the command


# ----------------------------------------------------------------------------- the README
def _readme_block(heading, lang):
    text = (ROOT / "README.md").read_text()
    part = text[text.index(heading) :]
    start = part.index(f"```{lang}\n") + len(lang) + 4
    return part[start : part.index("```", start)]


def test_readme_spec_example_is_valid(tmp_path):
    toml = _readme_block("### The spec format", "toml")
    (tmp_path / "limits_report.py").write_text("def sections(ds, study, figures_dir):\n    return []\n")
    st = load_spec(write_spec(tmp_path, toml, "example.toml"))
    assert st.name == "limits-22" and len(st.cells) == 4  # 2 losses x 2 noise levels
    assert st.spec["report"]["sections"] == str(tmp_path / "limits_report.py")
    assert st.spec["integrator"][0]["max_steps"] == 20_000
    assert st.spec["integrator"][0]["t_end"] == float("inf")


def test_documented_defaults():
    """The defaults the README's spec example states in its comments."""
    st = load_spec({"name": "d", "architectures": {"d0": 6, "k": [2, 2]}, "data": {"m": 4},
                    "integrator": {"t_end": 1.0}})  # fmt: skip
    s = st.spec
    assert (s["seed"], s["flows_per_dataset"], s["shard_size"]) == (0, 100, 256)
    assert s["architectures"][0]["s"] == [1, 1] and s["losses"] == [{"name": "square", "params": {}}]
    assert s["data"] == {"m": [4], "noise": [0.0], "inputs": ["gaussian"], "target": ["teacher"],
                         "n_datasets": 1}  # fmt: skip
    assert s["init"] == {"scale": [1.0], "distribution": ["gaussian"]}
    assert s["integrator"] == [{"method": "auto", "t_end": 1.0, "rtol": 1e-8, "atol": 1e-10,
                                "max_steps": 100_000, "save": 25, "grad_tol": None}]  # fmt: skip
    eu = load_spec({"name": "d", "architectures": {"d0": 6, "k": [2, 2]}, "data": {"m": 4},
                    "integrator": {"method": "euler", "h": 0.1, "n_steps": 55}})  # fmt: skip
    assert eu.spec["integrator"][0]["save_every"] == 5
    np.testing.assert_allclose(
        lcnfast.study.spec_values.log_save_times(25, 1000.0)[[0, 1, -1]], [0.0, 0.1, 1000.0]
    )
    np.testing.assert_allclose(
        lcnfast.study.spec_values.log_save_times(30, np.inf)[[0, 1, -1]], [0.0, 1e-2, 1e6]
    )


def test_run_until_converged_with_the_stiff_methods(tmp_path):
    """t_end = inf with grad_tol (TOML inf): rosenbrock and auto run every flow to
    ||grad L|| <= grad_tol; inf without grad_tol is refused."""
    text = TINY.replace("t_end = 20.0", "t_end = inf\ngrad_tol = 1e-10").replace(
        'method = "rk45"', 'method = "auto"'
    )
    text = text.replace('method = "euler"\nh = 0.01\nn_steps = 300\nsave_every = 100',
                        'method = "rosenbrock"\nt_end = inf\ngrad_tol = 1e-10')  # fmt: skip
    st = load_spec(write_spec(tmp_path, text), quick=True)
    assert [x["method"] for x in st.spec["integrator"]] == ["auto", "rosenbrock"]
    run_study(st.spec, tmp_path / "out", progress=False, report=False)
    ds = load(tmp_path / "out")
    assert (ds.status.values == lcnfast.flows.I.CONVERGED).all()
    assert (ds.grad_norm_final.values <= 1e-10).all()
    with pytest.raises(ValueError, match=r"integrator\[0\].t_end: inf \(run until converged\) needs"):
        load_spec(write_spec(tmp_path, TINY.replace("t_end = 20.0", "t_end = inf")))


def test_loss_levels_on_some_integrators_load_with_t_below_nan_elsewhere(tmp_path):
    """loss_levels on the rk45 integrator only, two architectures: load (and so status and
    report) refused the finished study ("'loss_level' not present in all datasets"): only
    some shards have the coordinate, and xr.concat refuses that from three shards on."""
    text = TINY.replace("save = 6", "save = 6\nloss_levels = [0.5]")
    st = load_spec(write_spec(tmp_path, text), quick=True)
    run_study(st.spec, tmp_path / "out", progress=False, report=False)
    ds = load(tmp_path / "out")
    assert ds.sizes["flow"] == st.n_flows and list(ds.loss_level.values) == [0.5]
    euler = (ds.integrator.values == ds.integrator.values[-1])
    assert euler.sum() == st.n_flows // 2
    assert np.isnan(ds.t_below.values[euler]).all()
    assert np.isfinite(ds.t_below.values[~euler]).any()


def test_no_docstring_points_outside_the_repository():
    """The design notes and the paper live outside the repository: nothing may cite them."""
    for p in [*(ROOT / "lcnfast").rglob("*.py"), *(ROOT / "studies").glob("*.py"), ROOT / "README.md"]:
        text = p.read_text()
        assert "DESIGN.md" not in text and "../shared" not in text, p


def test_the_command_says_each_warning_once_and_clears_a_live_line(capsys):
    """A study's spec is read by several steps of a run (validation, warm-up, shards, report),
    each of which warns about, e.g., a non-analytic loss: the command says it once. On a
    terminal the ticker's or bar's line is cleared first (they redraw below)."""
    import io

    from lcnfast import cli

    cli._shown_warnings.clear()
    for text in ("losses[7]: lp loss with p=3 is not analytic", "other", "other"):
        for _ in range(2):
            cli._show_warning(UserWarning(text), UserWarning, "spec.py", 602)
    assert capsys.readouterr().err == (
        "lcnfast: warning: losses[7]: lp loss with p=3 is not analytic\n"
        "lcnfast: warning: other\n")

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    cli._show_warning(UserWarning("new"), UserWarning, "f.py", 1, file=term)
    assert term.getvalue() == "\r\x1b[Klcnfast: warning: new\n"
    cli._shown_warnings.clear()


def test_a_spec_warning_is_given_once_per_process(tmp_path):
    """The steps of a run (validation, warm-up, shards, report) each read the spec: its
    warnings (here a non-analytic l_p loss) come once, from the Python API as from the
    command (which also says each warning text once: the test above)."""
    spec = {
        "name": "warn-once", "seed": 1, "flows_per_dataset": 1,
        "architectures": [{"d0": 6, "k": [2, 2]}],
        "losses": [{"name": "lp", "params": {"p": 5.5}}],
        "data": {"m": 4, "n_datasets": 1},
        "integrator": [{"method": "euler", "h": 1e-3, "n_steps": 2}],
    }  # fmt: skip
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            load_spec(spec)
    texts = [str(w.message) for w in rec if "p=5.5" in str(w.message)]
    assert texts == ["losses[0]: lp loss with p=5.5 is not analytic (p is not an even "
                     "integer): Theorem 3.8 does not cover it"]
