"""The guard against stale Numba caches: cache files go when the digest of the sources and the
lane width changes, in the one directory Numba uses in the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lcnfast import _numba_cache


def _fill(d):
    for name in ("_lanes.f-10.py311.nbi", "_lanes.f-10.py311.1.nbc", "x.cpython-311.pyc"):
        (d / name).write_text("x")


def test_stale_cache_files_are_removed_and_the_digest_recorded(tmp_path):
    _fill(tmp_path)
    (tmp_path / _numba_cache.STAMP).write_text("an older digest\n")
    assert _numba_cache.purge_stale([tmp_path]) == [tmp_path]
    assert sorted(p.name for p in tmp_path.iterdir()) == [_numba_cache.STAMP, "x.cpython-311.pyc"]
    assert (tmp_path / _numba_cache.STAMP).read_text().strip() == _numba_cache.cache_digest()


def test_cache_files_stay_while_the_sources_are_unchanged(tmp_path):
    (tmp_path / _numba_cache.STAMP).write_text(_numba_cache.cache_digest() + "\n")
    _fill(tmp_path)
    assert _numba_cache.purge_stale([tmp_path]) == []
    assert len(list(tmp_path.iterdir())) == 4


def test_a_cache_without_a_digest_is_purged_and_missing_directories_are_skipped(tmp_path):
    _fill(tmp_path)
    assert _numba_cache.purge_stale([tmp_path, tmp_path / "absent"]) == [tmp_path]
    assert not list(tmp_path.glob("*.nb*"))


def test_the_digest_covers_the_lane_width():
    # the width is baked into the compiled kernels: a cache made with another width is stale
    assert _numba_cache.cache_digest(8) != _numba_cache.cache_digest(16)
    assert _numba_cache.cache_digest() == _numba_cache.cache_digest(_numba_cache.LANES)


def test_only_the_cache_numba_uses_in_the_process_is_guarded(tmp_path, monkeypatch):
    """A process with its own NUMBA_CACHE_DIR (and another lane width) purges that directory
    and leaves the others alone. The user-wide cache is redirected into tmp_path
    (XDG_CACHE_HOME) and filled with a stale stamp and cache files, which must survive."""
    from numba.core.caching import UserWideCacheLocator

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    locator = UserWideCacheLocator.from_function(_numba_cache._anchor, _numba_cache.__file__)
    user_wide = Path(locator.get_cache_path())
    assert user_wide.is_relative_to(tmp_path / "xdg")
    _fill(user_wide)
    (user_wide / _numba_cache.STAMP).write_text("an older digest\n")
    before = sorted(p.name for p in user_wide.iterdir())

    lanes = 16 if _numba_cache.LANES == 8 else 8
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "nc"), LCNFAST_LANES=str(lanes))
    code = "from lcnfast import _numba_cache; print(_numba_cache.cache_dir())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    used = Path(out.stdout.strip())
    assert used.is_relative_to(tmp_path / "nc")
    assert (used / _numba_cache.STAMP).read_text().strip() == _numba_cache.cache_digest(lanes)
    assert sorted(p.name for p in user_wide.iterdir()) == before
    assert (user_wide / _numba_cache.STAMP).read_text() == "an older digest\n"
