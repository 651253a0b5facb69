"""The guard against stale Numba caches: cache files go when the sources' digest changes."""

from __future__ import annotations

import os
import subprocess
import sys

from lcnfast import _numba_cache


def _fill(d):
    for name in ("_lanes.f-10.py311.nbi", "_lanes.f-10.py311.1.nbc", "x.cpython-311.pyc"):
        (d / name).write_text("x")


def test_stale_cache_files_are_removed_and_the_digest_recorded(tmp_path):
    _fill(tmp_path)
    (tmp_path / _numba_cache.STAMP).write_text("an older digest\n")
    assert _numba_cache.purge_stale([tmp_path]) == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == [_numba_cache.STAMP, "x.cpython-311.pyc"]
    assert (tmp_path / _numba_cache.STAMP).read_text().strip() == _numba_cache.sources_digest()


def test_cache_files_stay_while_the_sources_are_unchanged(tmp_path):
    (tmp_path / _numba_cache.STAMP).write_text(_numba_cache.sources_digest() + "\n")
    _fill(tmp_path)
    assert _numba_cache.purge_stale([tmp_path]) == []
    assert len(list(tmp_path.iterdir())) == 4


def test_a_cache_without_a_digest_is_purged_and_missing_directories_are_skipped(tmp_path):
    _fill(tmp_path)
    assert _numba_cache.purge_stale([tmp_path, tmp_path / "absent"]) == [tmp_path]
    assert not list(tmp_path.glob("*.nb*"))


def test_numba_cache_dir_is_among_the_directories_guarded(tmp_path):
    code = "from lcnfast import _numba_cache; print(*_numba_cache.cache_dirs(), sep='\\n')"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert any(line.startswith(str(tmp_path)) for line in out.stdout.splitlines())
