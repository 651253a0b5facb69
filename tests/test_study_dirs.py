"""Robustness of study directories and of the ``lcnfast`` command: damaged files, failing
writes, directories taken over by a corrected spec, arguments checked before anything is made.

One tiny study (1 cell, 3 flows in shards of 1, Euler: a second once compiled) is run once per
module; each test works on a copy of it."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

import lcnfast
from lcnfast import cli
from lcnfast.study import draws, load, load_spec, read_spec, run_study
from lcnfast.study.shards import finished_shards

SPEC = """
name = "dirs"
seed = 1
flows_per_dataset = 3
shard_size = 1

[[architectures]]
d0 = 6
k = [2, 2]

[[losses]]
name = "square"

[data]
m = 4

[[integrator]]
method = "euler"
h = 0.01
n_steps = 20
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(spec file, finished study directory, its Dataset)."""
    d = tmp_path_factory.mktemp("dirs")
    spec = d / "dirs.toml"
    spec.write_text(SPEC)
    run_study(spec, d / "out", progress=False, report=False)
    return spec, d / "out", load(d / "out")


@pytest.fixture
def study(tiny, tmp_path):
    """(spec file, a fresh copy of the finished study directory, the study's Dataset)."""
    spec, out, ds = tiny
    shutil.copytree(out, tmp_path / "out")
    return spec, tmp_path / "out", ds


def lcn(capsys, *args):
    """Run the command in this process: (exit status, stdout, stderr)."""
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_line(err):
    """The one ``lcnfast: error:`` line of ``err`` (and no traceback)."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("lcnfast: error:")]
    assert len(lines) == 1, err
    return lines[0]


def assert_same_results(a, b):
    assert set(a.data_vars) == set(b.data_vars)
    for v in a.data_vars:
        xr.testing.assert_identical(a[v], b[v])


# ----------------------------------------------------------------------------- spec.json
@pytest.mark.parametrize("text", ["{}", "{bad", '{"spec_hash": "x"}', "[]", "\udcff"])
def test_a_damaged_spec_json_is_named_by_every_command(study, capsys, text):
    spec, out, _ = study
    (out / "spec.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    for args in (["status", out], ["report", out], ["reanalyse", out, "--quiet"],
                 ["run", spec, "--out", out, "--no-report", "--quiet"]):  # fmt: skip
        rc, _, err = lcn(capsys, "study", *args)
        assert rc == 2, (args, err)
        assert f"damaged spec.json: {out / 'spec.json'}" in error_line(err), args
        assert "done in" not in err  # the report's ticker does not claim success


@pytest.mark.parametrize("edit, where", [
    (lambda s: s.pop("integrator"), "integrator: missing"),
    (lambda s: s.update(integrator=[3]), "integrator[0]: must be a table"),
    (lambda s: s.update(report=None), "report: must be a table"),
    (lambda s: s["integrator"][0].update(method=["euler"]), "integrator[0].method: must be one"),
    (lambda s: s.update(format_version=None), "format_version: missing"),
])  # fmt: skip
def test_a_spec_json_of_the_wrong_structure_is_damaged_not_a_traceback(study, capsys, edit, where):
    """Valid JSON, but spec.integrator missing or [3], spec.report null: status, report and
    reanalyse gave tracebacks (KeyError, AttributeError, exit 1); a method ["euler"] gave
    'unhashable type: list', naming no key."""
    _, out, _ = study
    rec = json.loads((out / "spec.json").read_text())
    edit(rec["spec"])
    (out / "spec.json").write_text(json.dumps(rec))
    for args in (["status", out], ["report", out], ["reanalyse", out, "--quiet"]):
        rc, _, err = lcn(capsys, "study", *args)
        assert rc == 2, (args, err)
        assert f"damaged spec.json: {out / 'spec.json'}: {where}" in error_line(err), args


def test_every_change_of_a_spec_json_key_is_damage_or_another_hash(study):
    """Each key of the stored spec (two levels) deleted or given a value of another type:
    read_spec accepts it (a key outside the hash) or raises ValueError, never another error."""
    _, out, _ = study
    rec = json.loads((out / "spec.json").read_text())
    keys = [(k,) for k in rec["spec"]] + [
        (k, j) for k, v in rec["spec"].items() if isinstance(v, dict) for j in v]
    for path in keys:
        for value in ("<delete>", None, [3], 3, "x", {}, [{}]):
            spec = json.loads(json.dumps(rec["spec"]))
            table = spec if len(path) == 1 else spec[path[0]]
            if value == "<delete>":
                del table[path[-1]]
            else:
                table[path[-1]] = value
            (out / "spec.json").write_text(json.dumps({**rec, "spec": spec}))
            try:
                read_spec(out)
            except ValueError:
                pass


def test_a_study_directory_is_read_without_the_files_its_spec_named(tmp_path, capsys):
    """data.inputs = {file} and report.sections are files of the spec's, read when it runs. A
    finished study directory was unreadable once one moved (damaged spec.json: no such file)
    or the data file changed (does not match its hash), though X and Y are in datasets/. Now
    status, load, reanalyse and the report read it (the report without the sections, saying
    so); a run of the spec with the changed file is still another spec's."""
    X = np.random.default_rng(0).standard_normal((6, 4))
    np.savez(tmp_path / "X.npz", X=X)
    sec = tmp_path / "sec.py"
    sec.write_text("def sections(ds, study, figures_dir):\n    return [('Mine', 'ok')]\n")
    spec = tmp_path / "files.toml"
    spec.write_text(SPEC.replace("m = 4", 'inputs = {file = "X.npz"}')
                    + '\n[report]\nsections = "sec.py"\n')  # fmt: skip
    out = tmp_path / "out"
    run_study(spec, out, progress=False, report=False)
    ref = load(out)
    (tmp_path / "X.npz").rename(tmp_path / "moved.npz")
    sec.rename(tmp_path / "moved.py")
    rc, text, err = lcn(capsys, "study", "status", out)
    assert rc == 0 and "flows 3/3 done" in text, err
    rc, _, err = lcn(capsys, "study", "reanalyse", out, "--quiet")  # and the report
    assert rc == 0, err
    assert f"lcnfast: warning: report.sections: no such file: {sec}" in err
    assert "the study's own sections are left out" in (out / "report.md").read_text()
    np.savez(tmp_path / "X.npz", X=X + 1)  # another file in its place
    assert_same_results(load(out), ref)
    (tmp_path / "moved.py").rename(sec)
    rc, _, err = lcn(capsys, "study", "run", spec, "--out", out, "--no-report", "--quiet")
    assert rc == 2 and "(differing keys: data.inputs)" in error_line(err)


# ----------------------------------------------------------------------------- shard files
def test_damaged_shards_are_named_skipped_then_set_aside_and_recomputed(study, capsys):
    spec, out, ref = study
    shards = sorted((out / "shards").glob("c*.nc"))
    assert len(shards) == 3
    shards[0].write_bytes(shards[0].read_bytes()[:3000])  # truncated
    shards[1].write_bytes(b"")  # empty: what a power loss before the data reached the disk left
    rc, out_text, err = lcn(capsys, "study", "status", out)
    assert rc == 0 and "flows 1/3 done" in out_text, err
    for p, why in ((shards[0], "HDF error"), (shards[1], "Unknown file format")):
        assert f"lcnfast: warning: shard file {p} is damaged (NetCDF: {why}): skipped" in err
    with pytest.warns(UserWarning, match="is damaged"):
        assert load(out).sizes["flow"] == 1
    assert all(p.exists() for p in shards)  # reading sets nothing aside
    with pytest.warns(UserWarning, match=r"is damaged .*: moved to c\S+\.nc\.damaged"):
        s = run_study(spec, out, progress=False, report=False)
    assert s.n_flows_run == 2 and s.n_shards_skipped == 1  # the two damaged ones, once
    assert sorted(p.name for p in (out / "shards").glob("*.damaged")) == [
        p.name + ".damaged" for p in shards[:2]
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same_results(ref, load(out))


def test_a_shard_without_its_flows_is_damaged(study):
    spec, out, _ = study
    p = min((out / "shards").glob("c*.nc"))
    ds = lcnfast.open_dataset(p)
    lcnfast.to_netcdf(ds.isel(flow=slice(0, 0)), p)
    with pytest.warns(UserWarning, match=r"damaged \(0 flows, not 1\)"):
        assert len(finished_shards(out, load_spec(spec).spec_hash)) == 2


def test_a_damaged_dataset_file_is_written_again(study):
    spec, out, ref = study
    data = next((out / "datasets").glob("*.nc"))
    data.write_bytes(b"")
    shutil.rmtree(out / "shards")
    (out / "shards").mkdir()
    run_study(spec, out, progress=False, report=False)
    assert data.stat().st_size > 0
    assert_same_results(ref, load(out))


def _damage_inside(path, readable_header):
    """Overwrite 64 bytes of ``path`` somewhere its header still reads (readable_header(path)
    passes) while its data no longer do (lcnfast.open_dataset raises): a disk fault inside
    the file. The first such offset, so the test is deterministic."""
    data = path.read_bytes()
    for offset in range(len(data) // 3, len(data) - 64, 97):
        path.write_bytes(data[:offset] + bytes(range(64)) + data[offset + 64:])
        try:
            readable_header(path)
        except (OSError, RuntimeError, AttributeError):
            continue
        try:
            lcnfast.open_dataset(path)
        except (OSError, RuntimeError, ValueError, KeyError, AttributeError):
            return offset
    pytest.fail(f"no offset of {path} damages the data but not the header")


def test_a_shard_damaged_inside_is_named_then_set_aside_and_recomputed(study, capsys):
    """A shard whose header reads (spec hash, flow count) but whose data do not passed the
    finished-shard check; then status, load and the report failed with a raw 'NetCDF: HDF
    error' traceback naming no file, and no run could repair it. Now reading it names the
    file in one line, and a run with its report sets it aside and computes its flows again."""
    from lcnfast.study.shards import DamagedShardError, _shard_header

    spec, out, ref = study
    p = sorted((out / "shards").glob("c*.nc"))[1]
    _damage_inside(p, _shard_header)
    assert len(finished_shards(out, load_spec(spec).spec_hash)) == 3  # the header passes
    rc, _, err = lcn(capsys, "study", "status", out)
    assert rc == 1 and f"shard file {p} is damaged" in error_line(err)
    with pytest.raises(DamagedShardError, match="run the study again"):
        load(out)
    with pytest.warns(UserWarning, match=r"is damaged \(its data cannot be read\): moved"):
        s = run_study(spec, out, progress=False)
    assert s.report is not None and s.n_flows_run == 1
    assert (out / "shards" / (p.name + ".damaged")).exists()
    assert_same_results(ref, load(out))


def test_a_dataset_file_damaged_inside_is_written_again(study):
    """The same for a dataset file (X, Y): a file whose header reads but whose contents do
    not is written again (a run reads it in full before it counts as written; the robustness
    hunt's damage left every run failing in the warm-up with a raw 'NetCDF: HDF error'), and
    the results are the same."""
    from lcnfast.study.shards import _file_hash

    spec, out, ref = study
    data = next((out / "datasets").glob("*.nc"))
    _damage_inside(data, _file_hash)
    victim = sorted((out / "shards").glob("c*.nc"))[0]
    victim.unlink()  # a flow to run, so the run reads the data
    run_study(spec, out, progress=False, report=False)
    lcnfast.open_dataset(data)  # written again
    assert_same_results(ref, load(out))


def test_a_shard_under_another_shards_name_is_not_finished(study):
    """A shard file copied over another shard's name (a manual copy, a merge gone wrong) has
    the right spec and flow count: it was accepted, and load duplicated its flows and lost
    the real ones. Its recorded name now decides."""
    spec, out, ref = study
    a, b = sorted((out / "shards").glob("c*.nc"))[:2]
    shutil.copy(a, b)
    with pytest.warns(UserWarning, match=rf"shard file {b} is damaged \(it holds shard {a.stem}\)"):
        assert len(finished_shards(out, load_spec(spec).spec_hash)) == 2
    with pytest.warns(UserWarning, match="moved"):
        run_study(spec, out, progress=False, report=False)
    assert_same_results(ref, load(out))


def test_overlapping_shards_give_each_flow_once(study, tmp_path, capsys):
    """Shards of two sizes over the same flows (a run resumed with another --shard-size
    while the workers of an interrupted --scheduler run still wrote theirs): status counted
    6/3 flows and load returned every flow twice. Each flow is now read once."""
    spec, out, ref = study
    other = tmp_path / "other"
    run_study(spec, other, shard_size=2, progress=False, report=False)
    for p in (other / "shards").glob("c*.nc"):  # flows 0-1 and 2 again, in other files
        shutil.copy(p, out / "shards" / p.name)
    assert len(list((out / "shards").glob("c*.nc"))) == 4  # f2-3 is the same name
    rc, text, err = lcn(capsys, "study", "status", out)
    assert rc == 0 and "flows 3/3 done in 4 shards" in text, err
    assert_same_results(ref, load(out))


def test_to_netcdf_flushes_the_file_and_its_directory_to_disk(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "a.nc"
    lcnfast.to_netcdf(xr.Dataset({"x": ("i", [1.0, 2.0])}), path)
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".lcnfast-partial-")  # before the rename
    assert synced[1] == os.path.realpath(tmp_path)


# ----------------------------------------------------------------------------- failing writes
def _netcdf_fails(monkeypatch):
    def fail(self, *a, **k):
        raise RuntimeError("NetCDF: HDF error")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", fail)


def test_a_write_on_a_full_disk_says_so(tmp_path, monkeypatch):
    _netcdf_fails(monkeypatch)
    full = os.statvfs_result((4096, 4096, 100, 0, 0, 100, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda p: full)
    with pytest.raises(OSError) as e:
        lcnfast.to_netcdf(xr.Dataset({"x": ("i", [1.0])}), tmp_path / "a.nc")
    assert e.value.errno == errno.ENOSPC
    assert str(e.value.strerror).startswith(f"no space left on {tmp_path}")
    assert os.listdir(tmp_path) == []  # the partial file is removed


def test_a_failed_write_names_the_file(tmp_path, monkeypatch):
    _netcdf_fails(monkeypatch)
    with pytest.raises(OSError) as e:
        lcnfast.to_netcdf(xr.Dataset({"x": ("i", [1.0])}), tmp_path / "a.nc")
    assert e.value.filename == str(tmp_path / "a.nc") and "NetCDF: HDF error" in str(e.value)


def test_a_failed_shard_write_is_one_line(study, capsys, monkeypatch):
    spec, out, _ = study
    next((out / "shards").glob("c*.nc")).unlink()
    from lcnfast.study import shards

    def fail(ds, path):
        raise OSError(errno.ENOSPC, f"no space left on {Path(path).parent} (writing {path})")

    monkeypatch.setattr(shards, "to_netcdf", fail)
    rc, _, err = lcn(capsys, "study", "run", spec, "--out", out, "--no-report", "--quiet")
    assert rc == 1 and f"no space left on {out / 'shards'}" in error_line(err)


def test_a_spec_file_that_cannot_be_written_names_it_and_a_later_run_starts_over(
        tiny, tmp_path, capsys, monkeypatch):
    """Claim: a run that fails writing ``spec.json`` (a file size limit, ``ulimit -f``: EFBIG)
    says which file in one line, leaves no temporary file, and the next run in the same
    directory starts the study instead of refusing a directory "not a study directory".
    Checked able to fail on the code before the fix (its run raised the OSError itself, exit
    status 1)."""
    from lcnfast.study import directory

    spec, _, ds = tiny
    out = tmp_path / "out"
    real_fsync = os.fsync

    def too_large(fd):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(directory.os, "fsync", too_large)
    rc, _, err = lcn(capsys, "study", "run", spec, "--out", out, "--no-report", "--quiet")
    assert rc == 2  # as for every unusable --out directory
    assert error_line(err) == f"lcnfast: error: out: cannot write {out / 'spec.json'}: File too large"
    assert sorted(p.name for p in out.iterdir()) == ["datasets", "shards"]
    monkeypatch.setattr(directory.os, "fsync", real_fsync)
    rc, _, err = lcn(capsys, "study", "run", spec, "--out", out, "--no-report", "--quiet")
    assert rc == 0, err
    xr.testing.assert_identical(load(out)[["loss_final", "w_final"]], ds[["loss_final", "w_final"]])


# ----------------------------------------------------------------------------- unwritable, unreachable
def test_a_read_only_directory_is_one_line(study, capsys, monkeypatch):
    _, out, _ = study
    mkdir = Path.mkdir

    def read_only(self, *a, **k):
        if self.name == "figures":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", read_only)
    rc, _, err = lcn(capsys, "study", "report", out)
    assert rc == 1 and error_line(err) == f"lcnfast: error: {out / 'figures'}: Read-only file system"
    from lcnfast.study import directory

    def no_lock(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(directory, "open", no_lock, raising=False)
    rc, _, err = lcn(capsys, "study", "reanalyse", out, "--quiet")
    assert rc == 1 and error_line(err).endswith(".lock: Read-only file system")


def test_out_expands_the_home_directory(tmp_path, monkeypatch):
    """``--out=~/x`` reaches lcnfast unexpanded (the shell expands ``~`` only at the start of
    a word): it made a directory named ``~`` in the current directory."""
    from lcnfast.study.directory import study_dir_for

    monkeypatch.setenv("HOME", str(tmp_path))
    assert study_dir_for(None, "~/x") == tmp_path / "x"
    assert cli._parser().parse_args(["study", "run", "quickstart", "--out=~/x"]).out == "~/x"


def test_a_reader_gone_is_no_error(study):
    _, out, _ = study
    r, w = os.pipe()
    os.close(r)  # `lcnfast study status DIR | head -0`
    env = dict(os.environ, PYTHONPATH=str(Path(lcnfast.__file__).parents[1]))
    p = subprocess.run([sys.executable, "-m", "lcnfast.cli", "study", "status", str(out)],
                       stdout=w, stderr=subprocess.PIPE, text=True, env=env, timeout=300)  # fmt: skip
    os.close(w)
    assert p.returncode == 1 and p.stderr == ""


def test_an_unreachable_scheduler_is_one_line(study, capsys):
    import dask

    spec, out, _ = study
    next((out / "shards").glob("c*.nc")).unlink()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        rc, _, err = lcn(capsys, "study", "run", spec, "--out", out, "--scheduler",
                         "tcp://127.0.0.1:1", "--no-report", "--quiet")  # fmt: skip
    assert rc == 1 and "scheduler: Timed out trying to connect to tcp://127.0.0.1:1" in error_line(err)


def test_a_new_title_or_description_reaches_the_study_directory(study, tmp_path, capsys):
    """report.title, report.sections and description change no number (they are outside the
    spec hash), so a run with them edited is the same study: its spec.json and spec.toml
    take them (and the report with them). Before, the first run's stayed, without a word."""
    _, out, _ = study
    edited = tmp_path / "edited.toml"
    text = SPEC.replace('name = "dirs"', 'name = "dirs"\ndescription = "second thoughts"')
    edited.write_text(text + '\n[report]\ntitle = "New title"\n')
    s = run_study(edited, out, report=False)
    assert s.n_flows_run == 0
    assert "spec.json: description, report updated" in capsys.readouterr().err
    rec = json.loads((out / "spec.json").read_text())
    assert rec["spec"]["report"]["title"] == "New title"
    assert rec["spec"]["description"] == "second thoughts"
    assert (out / "spec.toml").read_text() == edited.read_text()
    assert load(out).attrs["spec_hash"] == rec["spec_hash"] == load_spec(edited).spec_hash


# ----------------------------------------------------------------------------- another spec
def test_a_directory_without_results_is_taken_over_by_a_corrected_spec(tiny, tmp_path, monkeypatch):
    spec, _, ref = tiny
    out = tmp_path / "out"
    broken = tmp_path / "broken.toml"
    broken.write_text(SPEC.replace("m = 4", "m = 4\nn_datasets = 2"))
    make = draws.make_dataset

    def fails_on_dataset_1(cell, d, seed):
        if d == 1:
            raise ValueError("data: cannot make dataset 1")
        return make(cell, d, seed)

    monkeypatch.setattr(draws, "make_dataset", fails_on_dataset_1)
    with pytest.raises(ValueError, match="cannot make dataset 1"):
        run_study(broken, out, progress=False, report=False)
    monkeypatch.undo()
    assert [p.name for p in (out / "datasets").glob("*.nc")] == ["c0000_d0000.nc"]
    assert (out / "spec.toml").read_text() == broken.read_text()
    with pytest.warns(UserWarning, match=r"held no results of its spec \(differing keys: "
                      r"data.n_datasets\): its spec.json is replaced"):  # fmt: skip
        s = run_study(spec, out, progress=False, report=False)
    assert s.n_flows_run == 3
    assert json.loads((out / "spec.json").read_text())["spec_hash"] == load_spec(spec).spec_hash
    assert (out / "spec.toml").read_text() == SPEC
    assert [p.name for p in (out / "datasets").glob("*.nc")] == ["c0000_d0000.nc"]
    assert_same_results(ref, load(out))


def test_a_directory_with_a_shard_of_another_spec_is_still_refused(study, tmp_path):
    _, out, _ = study
    for p in list((out / "shards").glob("c*.nc"))[1:]:
        p.unlink()
    other = tmp_path / "other.toml"
    other.write_text(SPEC.replace("seed = 1", "seed = 2"))
    before = json.loads((out / "spec.json").read_text())
    with pytest.raises(ValueError, match=r"holds the results of another spec \(differing keys: seed\)"):
        run_study(other, out, progress=False, report=False)
    assert json.loads((out / "spec.json").read_text()) == before


# ----------------------------------------------------------------------------- arguments, warnings
def test_too_many_threads_are_refused_before_the_directory_is_made(tiny, tmp_path, capsys):
    import numba

    spec, _, _ = tiny
    n = numba.config.NUMBA_NUM_THREADS + 1
    rc, _, err = lcn(capsys, "study", "run", spec, "--out", tmp_path / "new", "--threads", n)
    assert rc == 2 and f"argument --threads: must be at most {n - 1}" in err
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match=r"threads must be in 1\.\."):
        run_study(spec, tmp_path / "new", threads=n, progress=False)
    assert not (tmp_path / "new").exists()


def test_a_warning_carries_the_prefix_once(capsys):
    cli._shown_warnings.clear()
    cli._show_warning(UserWarning("lcnfast: Problem.grad overflowed"), UserWarning, "p.py", 1)
    assert capsys.readouterr().err == "lcnfast: warning: Problem.grad overflowed\n"
    cli._shown_warnings.clear()


# ----------------------------------------------------------------------------- the plan
def _plan_one_entry_per_flow(n_f, done_ranges, shard_size):
    """The plan as it was computed before (one flag per flow): the reference."""
    cov = np.zeros(n_f, bool)
    for a, b in done_ranges:
        cov[a:b] = True
    todo, f = [], 0
    while f < n_f:
        if cov[f]:
            f += 1
            continue
        g = f
        while g < n_f and not cov[g] and g - f < shard_size:
            g += 1
        todo.append((f, g))
        f = g
    return todo


@given(n_f=st.integers(1, 60), shard_size=st.integers(1, 25), data=st.data())
def test_plan_covers_exactly_the_flows_not_done_in_blocks_of_shard_size(n_f, shard_size, data):
    """plan() works on the finished shards' ranges; it gives the same shards as the
    per-flow reference for any finished shards, overlapping ones included (a resumption
    with another shard size)."""
    from types import SimpleNamespace

    from lcnfast.study.shards import Shard, plan

    ranges = data.draw(st.lists(st.tuples(st.integers(0, n_f - 1), st.integers(1, 30)),
                                max_size=6))  # fmt: skip
    done = [Shard(0, 1, a, min(n_f, a + n)) for a, n in ranges]
    study = SimpleNamespace(spec={"data": {"n_datasets": 2}, "flows_per_dataset": n_f},
                            cells=[0])  # fmt: skip
    todo = plan(study, done, shard_size)
    assert [(s.f0, s.f1) for s in todo if s.dataset == 0] == [(k, min(n_f, k + shard_size))
                                                             for k in range(0, n_f, shard_size)]
    got = [(s.f0, s.f1) for s in todo if s.dataset == 1]
    assert got == _plan_one_entry_per_flow(n_f, [(s.f0, s.f1) for s in done], shard_size)


class _Processing:
    """A client whose scheduler is running ``keys`` (the one call _adopt_running makes)."""

    def __init__(self, keys):
        self.keys = keys

    def processing(self):
        return {"tcp://worker:1": list(self.keys)}


@given(n_f=st.integers(1, 60), size=st.integers(1, 25), old_sizes=st.tuples(
    st.integers(1, 25), st.integers(1, 25)), data=st.data())  # fmt: skip
def test_a_resumed_dask_run_adopts_running_shards_of_another_size(n_f, size, old_sizes, data):
    """A run interrupted on a cluster that outlives it leaves its running shards to finish;
    resumed with another shard size, it planned their flows again (computed twice). Claims of
    on_dask._adopt_running, for any plan (finished shards drawn as ranges), any shards of
    another size running (the old partition's blocks, drawn), keys of another spec and a
    planned shard's own key among them: the shards submitted cover exactly the planned flows,
    none twice; each running shard whose flows are all planned and that overlaps no other
    adopted one is submitted as it is (its key attaches to the running task); no other
    running shard is; the planned shards are cut into pieces no larger than they were. The
    running shards come from two earlier partitions (two interrupted runs), so they can
    overlap each other."""
    from types import SimpleNamespace

    from lcnfast.study.on_dask import _adopt_running, shard_key
    from lcnfast.study.shards import Shard, plan

    study = SimpleNamespace(spec={"data": {"n_datasets": 2}, "flows_per_dataset": n_f},
                            cells=[0], spec_hash="ab" * 32)  # fmt: skip
    ranges = data.draw(st.lists(st.tuples(st.integers(0, n_f - 1), st.integers(1, 30)),
                                max_size=4))  # fmt: skip
    todo = plan(study, [Shard(0, 1, a, min(n_f, a + n)) for a, n in ranges], size)
    old = sorted({Shard(0, d, f, min(n_f, f + k)) for k in old_sizes for d in (0, 1)
                  for f in range(0, n_f, k)})  # fmt: skip
    running = data.draw(st.lists(st.sampled_from(old), max_size=5, unique=True))
    other = SimpleNamespace(spec_hash="cd" * 32)
    keys = [shard_key(study, r) for r in running] + [shard_key(other, old[0])]
    keys += [shard_key(study, todo[0])] if todo else []
    submit, adopted = _adopt_running(_Processing(keys), study, todo)

    def flows(shards):
        return sorted((s.dataset, f) for s in shards for f in range(s.f0, s.f1))

    assert flows(submit) == flows(todo)  # exactly the planned flows, each once
    planned = set(flows(todo))
    want = []
    for r in sorted(running, key=lambda r: shard_key(study, r)):
        if (r not in todo and all((r.dataset, f) in planned for f in range(r.f0, r.f1))
                and not any(q.dataset == r.dataset and q.f0 < r.f1 and r.f0 < q.f1
                            for q in want)):  # fmt: skip
            want.append(r)
    assert sorted(adopted) == sorted(want) and set(adopted) <= set(submit)
    for s in submit:
        if s not in adopted:  # a piece of one planned shard
            home = [t for t in todo if t.dataset == s.dataset and t.f0 <= s.f0 and s.f1 <= t.f1]
            assert len(home) == 1 and s.n_flows >= 1, s
    assert _adopt_running(_Processing([]), study, todo) == (todo, [])


def test_an_unreachable_scheduler_adopts_nothing():
    """_adopt_running is best effort: a scheduler that does not answer leaves the plan as it
    is (the shards it runs write their files anyway; a flow is read once)."""
    from types import SimpleNamespace

    from lcnfast.study.on_dask import _adopt_running
    from lcnfast.study.shards import Shard

    class Gone:
        def processing(self):
            raise OSError("connection refused")

    todo = [Shard(0, 0, 0, 4)]
    assert _adopt_running(Gone(), SimpleNamespace(spec_hash="ab" * 32), todo) == (todo, [])
