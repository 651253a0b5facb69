"""to_netcdf on a shared machine (issue 17, fault 7): partial files that say what they are and
are cleaned up, the umask and an existing file's mode respected, symbolic links kept."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import lcnfast as lf
from lcnfast import io as lio

ROOT = Path(__file__).resolve().parents[1]


def _ds(n=10):
    rng = np.random.default_rng(0)
    return xr.Dataset({"x": (("a", "b"), rng.standard_normal((n, 3)))}, attrs={"k": 1})


def _partials(d):
    return sorted(p.name for p in Path(d).iterdir() if p.name.startswith(".lcnfast-partial-"))


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def test_a_new_file_gets_the_mode_the_umask_gives(tmp_path, umask):
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        umask(mask)
        path = tmp_path / f"new-{mask:o}.nc"
        lf.to_netcdf(_ds(), path)
        assert _mode(path) == mode, (oct(mask), oct(_mode(path)))


def test_an_overwrite_keeps_the_mode_of_the_file_replaced(tmp_path, umask):
    umask(0o077)  # would give 0600 to a new file
    path = tmp_path / "f.nc"
    lf.to_netcdf(_ds(), path)
    for mode in (0o644, 0o640, 0o444):
        os.chmod(path, mode)
        lf.to_netcdf(_ds(3), path)
        assert _mode(path) == mode
        xr.testing.assert_identical(lf.open_dataset(path), _ds(3))


def test_a_symbolic_link_is_kept_and_its_target_written(tmp_path):
    target_dir = tmp_path / "data"
    target_dir.mkdir()
    target = target_dir / "flows.nc"
    lf.to_netcdf(_ds(), target)
    link = tmp_path / "latest.nc"
    link.symlink_to(target)
    assert lf.to_netcdf(_ds(4), link) == str(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    xr.testing.assert_identical(lf.open_dataset(target), _ds(4))
    assert _partials(tmp_path) == [] and _partials(target_dir) == []
    dangling = tmp_path / "next.nc"
    dangling.symlink_to(target_dir / "next-target.nc")
    lf.to_netcdf(_ds(2), dangling)
    assert dangling.is_symlink()
    xr.testing.assert_identical(lf.open_dataset(target_dir / "next-target.nc"), _ds(2))


def test_path_none_names_path():
    with pytest.raises(TypeError, match=r"\bpath\b"):
        lf.to_netcdf(_ds(), None)


def test_stale_partials_of_dead_processes_of_this_host_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid no longer runs (reaped)
    host = lio._host()
    names = {
        "dead": f".lcnfast-partial-{host}-{dead.pid}-0123456789ab.nc",
        "alive": f".lcnfast-partial-{host}-{os.getppid()}-0123456789ab.nc",
        "mine": f".lcnfast-partial-{host}-{os.getpid()}-0123456789ab.nc",
        "other host": f".lcnfast-partial-{host}x-{dead.pid}-0123456789ab.nc",
        "not ours": f".tmp-{dead.pid}.nc",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a file")
    lf.to_netcdf(_ds(), tmp_path / "out.nc")
    left = set(p.name for p in tmp_path.iterdir())
    assert names["dead"] not in left
    assert {names[k] for k in ("alive", "mine", "other host", "not ours")} <= left


WRITER = """
import sys
import numpy as np, xarray as xr
import lcnfast as lf
rng = np.random.default_rng(0)
ds = xr.Dataset({"x": (("a", "b"), rng.standard_normal((2_000_000, 2)))})
while True:
    lf.to_netcdf(ds, sys.argv[1])
"""


def _size(p):
    try:
        return p.stat().st_size
    except FileNotFoundError:  # renamed into place meanwhile
        return 0


def test_kill_9_during_a_write_leaves_a_named_partial_that_the_next_write_removes(tmp_path):
    target = tmp_path / "big.nc"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    for _attempt in range(3):  # the kill may (rarely) fall between two writes: try again
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], env=env,
                                cwd=tmp_path)
        try:
            deadline = time.monotonic() + 120
            while not any(_size(tmp_path / n) > 0 for n in _partials(tmp_path)):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()  # reaped: its pid no longer runs
        if _partials(tmp_path):
            break
    (left,) = _partials(tmp_path)
    assert left.startswith(f".lcnfast-partial-{lio._host()}-{proc.pid}-") and left.endswith(".nc")
    lf.to_netcdf(_ds(), tmp_path / "other.nc")
    assert _partials(tmp_path) == []


def _write_in_a_task(path):
    lf.to_netcdf(xr.Dataset({"a": ("x", np.arange(3.0))}), path)
    return path


def test_a_write_in_a_dask_task_takes_no_lock_of_the_scheduler(tmp_path):
    """In a dask worker (a study's shard) xarray took a distributed lock for every write: a
    round trip to the scheduler, and a worker client whose shutdown under a write after Ctrl-C
    printed "Exception ignored in Client.__del__ ... IOLoop is closed". to_netcdf writes under
    a lock of its own process: the scheduler holds no semaphore afterwards (it held one named
    after the temporary file)."""
    from dask.distributed import Client, LocalCluster

    path = tmp_path / "in_task.nc"
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        assert client.submit(_write_in_a_task, str(path)).result() == str(path)
        names = client.run_on_scheduler(lambda dask_scheduler: list(
            getattr(dask_scheduler.extensions.get("semaphores"), "max_leases", {})))  # fmt: skip
    assert names == [], names
    assert lf.open_dataset(path).a.values.tolist() == [0.0, 1.0, 2.0]
