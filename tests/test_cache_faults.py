"""Fault injection into lcnfast's on-disk kernel caches (issue 17, faults 1 and 2).

A damaged cache entry -- a truncated or empty Numba index (.nbi) or data file (.nbc), random
bytes in a data file or in a generated lane-kernel module ``$LCNFAST_CACHE_DIR/lcnfast_lane_*.py``
-- must be detected, dropped and rebuilt with one warning, never fatal; with no writable cache
location lcnfast must import and run, uncached, with one warning.

Each case runs in subprocesses with a cache of its own (NUMBA_CACHE_DIR, LCNFAST_CACHE_DIR).
Compile cost: one warm-up process runs the workload (a 2-layer square-loss problem through the
generated kernel, a 3-step gradient descent, a function-space loss) in the test session's usual Numba
cache, shared with the rest of the suite, so it compiles only what is not cached yet; every
case starts from a copy of those entries and recompiles only the entries it damages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from numba.core.caching import _CacheLocator

ROOT = Path(__file__).resolve().parents[1]
STAMP = "lcnfast-sources.sha256"

# the workload: prints its numbers, the warnings it saw and where its kernels are cached
WORKLOAD = textwrap.dedent(
    """
    import json, warnings
    seen = []
    warnings.simplefilter("always")
    warnings.showwarning = lambda m, c, *a, **k: seen.append(f"{c.__name__}: {m}")
    import numpy as np
    import lcnfast as lf
    a = lf.Architecture(6, (2, 3), (2, 1))
    rng = np.random.default_rng(0)
    p = lf.Problem(a, rng.standard_normal((6, 5)), rng.standard_normal((a.d_N, 5)),
                   lf.losses.square(), kernel="generated")
    W = np.full((3, a.n_params), 0.5)
    L, G = p.loss_and_grad(W)
    ds = lf.gradient_descent(p, W, h=1e-3, n_steps=3)
    fs = p.function_space_loss(np.ones(a.k_v))
    lane = next(iter(lf._codegen._LOADED.values())).cfunc
    print(json.dumps({
        "numbers": [L.tolist(), G.tolist(), ds.w_final.values.tolist(), fs],
        "warnings": seen,
        "package_cache": lf._euler.euler_worker._cache.cache_path,
        "lane_cache": lane._cache.cache_path,
    }))
    """
)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(env, code=WORKLOAD):
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, cwd=env["LCNFAST_CACHE_DIR"])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _subdir(cache_root, py_file):
    """Where Numba keeps the entries of ``py_file`` under NUMBA_CACHE_DIR=cache_root."""
    return Path(cache_root) / _CacheLocator.get_suitable_cache_subpath(str(py_file))


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    """The workload's reference output and its cache entries (package and lane kernel)."""
    lc0 = tmp_path_factory.mktemp("lc0")
    env = _env(LCNFAST_CACHE_DIR=lc0)
    ref = _run(env)
    assert ref["warnings"] == []
    return ref, lc0


def _case(tmp_path, warm):
    """A private copy of the warm caches: (env, package entries dir, lane entries dir, lane .py)."""
    ref, lc0 = warm
    nc = tmp_path / "numba"
    lc = tmp_path / "lcnfast"
    lc.mkdir()
    (lane_py,) = lc0.glob("lcnfast_lane_*.py")
    shutil.copy2(lane_py, lc / lane_py.name)
    pkg = _subdir(nc, ROOT / "lcnfast" / "_euler.py")
    lane = _subdir(nc, lc / lane_py.name)
    for src, dst, pats in (
        (Path(ref["package_cache"]), pkg, ("*.nbi", "*.nbc", STAMP)),
        (Path(ref["lane_cache"]), lane, (lane_py.stem + "*.nbi", lane_py.stem + "*.nbc")),
    ):
        dst.mkdir(parents=True)
        for pat in pats:
            for f in src.glob(pat):
                shutil.copy2(f, dst / f.name)
    return _env(NUMBA_CACHE_DIR=nc, LCNFAST_CACHE_DIR=lc), pkg, lane, lc / lane_py.name


def _one(d, pattern):
    (f,) = Path(d).glob(pattern)
    return f


def _truncate(f):
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])


def _empty(f):
    f.write_bytes(b"")


def _scribble(f):
    """64 random bytes over the middle of ``f`` (the length and both ends unchanged)."""
    data = bytearray(f.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = os.urandom(64)
    f.write_bytes(bytes(data))


def _random(f):
    f.write_bytes(b"\xff\xfe" + os.urandom(4000))  # not UTF-8, not Python


# name -> damages [(where, glob, how)] and the substrings the warnings must name, one each
CASES = {
    "truncated": (
        [("pkg", "_euler.euler_worker-*.nbi", _truncate), ("lane", "*.nbc", _truncate)],
        ["_euler.euler_worker", "lcnfast_lane_"],
    ),
    "empty": (
        [("pkg", "_kernels.fs_loss-*.nbc", _empty), ("lane", "*.nbi", _empty)],
        ["_kernels.fs_loss", "lcnfast_lane_"],
    ),
    "random_bytes": (
        [("py", None, _random), ("pkg", "_lanes.generated_serial-*.nbc", _scribble)],
        ["generated kernel file", "_lanes.generated_serial"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_damaged_cache_entry_is_dropped_rebuilt_and_warned_once(case, tmp_path, warm):
    damages, named = CASES[case]
    env, pkg, lane, lane_py = _case(tmp_path, warm)
    for where, pattern, how in damages:
        how(lane_py if where == "py" else _one(pkg if where == "pkg" else lane, pattern))
    out = _run(env)
    assert out["numbers"] == warm[0]["numbers"]
    assert len(out["warnings"]) == len(named), out["warnings"]
    assert all(w.startswith("CacheWarning: lcnfast: ") for w in out["warnings"]), out["warnings"]
    for name in named:
        assert sum(name in w for w in out["warnings"]) == 1, (name, out["warnings"])
    # rebuilt: the next process loads everything again, silently, with the same numbers
    again = _run(env)
    assert again["numbers"] == warm[0]["numbers"] and again["warnings"] == []


def test_no_writable_cache_location_imports_and_runs_uncached_with_one_warning(tmp_path):
    """A read-only installation (its __pycache__ cannot be created), an unwritable
    NUMBA_CACHE_DIR and an unwritable home cache: before, importing failed with
    'RuntimeError: cannot cache function ...: no locator available'. (Unwritable here means
    "under a regular file", which holds for root too.)"""
    pkg = tmp_path / "site" / "lcnfast"
    # the whole package (its subpackages too: an editable install's finder may not serve them)
    shutil.copytree(ROOT / "lcnfast", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "__pycache__").write_text("a file where Python and Numba want a directory")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    code = textwrap.dedent(
        """
        import warnings
        seen = []
        warnings.simplefilter("always")
        warnings.showwarning = lambda m, c, *a, **k: seen.append(f"{c.__name__}: {m}")
        import numpy as np
        import lcnfast as lf
        assert lf.__file__.startswith(%r), lf.__file__
        a = lf.Architecture(6, (2, 3), (2, 1))
        p = lf.Problem(a, np.ones((6, 2)), np.ones((a.d_N, 2)), lf.losses.square())
        print(p.final_filter(np.ones(a.n_params)).tolist())
        print(repr(seen))
        """
        % str(pkg)
    )
    env = _env(NUMBA_CACHE_DIR=blocker / "numba", LCNFAST_CACHE_DIR=blocker / "lcnfast",
               XDG_CACHE_HOME=blocker / "home")
    env["PYTHONPATH"] = str(pkg.parent)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)  # not the source tree: no lcnfast there
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]"
    seen = eval(lines[1])  # a list of strings, printed by repr
    assert len(seen) == 1 and seen[0].startswith("CacheWarning: lcnfast: Numba cannot cache"), seen
    assert not any(p.suffix in (".nbi", ".nbc") for p in tmp_path.rglob("*"))


# ----------------------------------------------------------------------------- in process
# The guard itself, on a one-line function (compiles in well under a second).
MODULE = "import numba\n\n\n@numba.njit(cache=True)\ndef f(x):\n    return x + 1\n"


def _load(path, name):
    import importlib.util

    from lcnfast import _numba_cache

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _numba_cache.guard_dispatchers([mod])
    return mod


def test_guarded_cache_drops_a_damaged_entry_and_survives_an_unwritable_one(
    tmp_path, monkeypatch
):
    from lcnfast import _numba_cache

    import numba.core.config

    monkeypatch.setattr(numba.core.config, "CACHE_DIR", str(tmp_path / "nc"))  # read per locator
    monkeypatch.setattr(_numba_cache, "_WARNED", set())
    src = tmp_path / "lcnfast_guard_probe.py"
    src.write_text(MODULE)
    first = _load(src, "lcnfast_guard_probe_1")
    assert isinstance(first.f._cache, _numba_cache.GuardedCache)
    assert first.f(1) == 2
    cache = Path(first.f._cache.cache_path)
    (nbc,) = cache.glob("*.nbc")
    assert nbc.read_bytes().startswith(_numba_cache._MAGIC)  # checksummed data file
    _scribble(nbc)
    second = _load(src, "lcnfast_guard_probe_2")
    with pytest.warns(_numba_cache.CacheWarning, match="damaged Numba cache entry.*checksum"):
        assert second.f(1) == 2
    assert second.f._cache_misses and not second.f._cache_hits
    third = _load(src, "lcnfast_guard_probe_3")  # rebuilt: loads cleanly
    assert third.f(1) == 2 and third.f._cache_hits
    # an entry that cannot be written (here its index path is taken by a directory)
    for p in cache.glob("*.nb*"):
        p.unlink()
    Path(first.f._cache._inner._cache_file._index_path).mkdir()
    fourth = _load(src, "lcnfast_guard_probe_4")
    with pytest.warns(_numba_cache.CacheWarning, match="cannot write Numba's cache"):
        assert fourth.f(1) == 2
