"""A study's output directory: its ``spec.json`` (the resolved spec and hash), its lock, and
the checks that keep one spec's results apart from another's.

Layout (README, "What lands in the study directory"): ``spec.json`` and ``spec.toml``,
``datasets/`` (the data of each cell and dataset), ``shards/`` (one netCDF file of flows per
shard), ``report.md`` and ``figures/``, and ``.lock``, held by the run or reanalysis using the
directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import warnings
from pathlib import Path

from ..io import _partial_writer_gone
from .spec import EXECUTION_KEYS, spec_diff

__all__ = ["SPEC_FILE", "study_dir_for", "read_spec_file", "open_study_dir", "check_spec_file",
           "lock", "remove_partial_files"]

SPEC_FILE = "spec.json"

# a partial file of another host's writer younger than this may still be written (seconds)
REMOTE_PARTIAL_AGE = 600.0


def study_dir_for(study, out=None):
    """The output directory: ``out`` (``~`` expanded, as the shell does not in ``--out=~/x``),
    or ``data/<study name>`` under the current directory."""
    return Path(out).expanduser() if out is not None else Path("data") / study.name


def _check_writable(d):
    probe = d / f".write-test-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"out: cannot write to {d}: {e.strerror}") from None


def read_spec_file(path):
    """The record ``{"spec_hash": ..., "spec": {...}}`` of a study directory's ``spec.json``
    at ``path``. Raises ValueError naming the file when it is damaged: not UTF-8 JSON, or not
    an object with a string ``spec_hash`` and an object ``spec``."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"damaged {SPEC_FILE}: {path}: {e}") from None
    if not (
        isinstance(rec, dict)
        and isinstance(rec.get("spec_hash"), str)
        and isinstance(rec.get("spec"), dict)
    ):
        raise ValueError(
            f"damaged {SPEC_FILE}: {path}: not an object with 'spec_hash' (a string) and "
            "'spec' (an object)"
        )
    return rec


def _write_spec_file(study, d):
    """Write ``d/spec.json`` (flushed to the disk, renamed into place) and ``d/spec.toml``, the
    spec's source file (removed when the spec has none)."""
    text = json.dumps({"spec_hash": study.spec_hash, "spec": study.spec}, indent=1)
    tmp = d / f".{SPEC_FILE}.tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / SPEC_FILE)
    except OSError as e:  # a full disk, a file size limit: name the file, leave no trace
        tmp.unlink(missing_ok=True)
        raise ValueError(f"out: cannot write {d / SPEC_FILE}: {e.strerror or e}") from None
    if study.source:
        shutil.copyfile(study.source, d / "spec.toml")
    else:
        (d / "spec.toml").unlink(missing_ok=True)


def _unfinished_start(d):
    """Whether ``d`` holds only what a run leaves when it fails before writing its
    ``spec.json`` (a full disk, a file size limit): the lock, empty ``shards/`` and
    ``datasets/``, the spec's temporary file. Such a directory counts as empty."""
    for p in d.iterdir():
        if p.name in ("shards", "datasets") and p.is_dir() and not any(p.iterdir()):
            continue
        if p.name not in (".lock", f".{SPEC_FILE}.tmp"):
            return False
    return True


def _holds_results(d):
    """Whether ``d/shards`` holds any file but a writer's temporary ones (a shard of its
    spec, finished or damaged)."""
    shards = d / "shards"
    return shards.is_dir() and any(
        not p.name.startswith(".lcnfast-partial-") for p in shards.iterdir()
    )


def _take_over(study, d):
    """Give the study directory ``d``, whose spec differs from ``study``'s but which holds no
    results (a run that failed before its first shard), to ``study``: under the lock, its
    ``spec.json`` is replaced and the old spec's data files removed, with a warning."""
    with lock(d):
        old = read_spec_file(d / SPEC_FILE)
        if old["spec_hash"] == study.spec_hash:  # another run of this spec took it meanwhile
            return
        keys = spec_diff(old["spec"], study.spec) or ["(format)"]
        if _holds_results(d):
            raise ValueError(
                f"out: {d} holds the results of another spec (differing keys: "
                f"{', '.join(keys)}); use another --out directory or delete {d}"
            )
        for p in (d / "datasets").glob("*"):
            p.unlink()
        _write_spec_file(study, d)
    warnings.warn(
        f"out: {d} held no results of its spec (differing keys: {', '.join(keys)}): "
        "its spec.json is replaced by this spec and its data files removed",
        stacklevel=3,
    )


def open_study_dir(study, d):
    """Create or check a study directory for ``study``; returns its Path.

    Raises ValueError when it is unwritable, holds results of another spec (naming the keys
    that differ), has a damaged ``spec.json``, or is a non-empty directory that is not a study
    directory. A directory of another spec that holds no results (its run failed before
    finishing a shard) is taken over by ``study``, with a warning.
    """
    d = Path(d)
    if d.exists() and not d.is_dir():
        raise ValueError(f"out: {d} exists and is not a directory")
    spec_file = d / SPEC_FILE
    if spec_file.exists():
        if read_spec_file(spec_file)["spec_hash"] != study.spec_hash:
            _take_over(study, d)
    elif d.exists() and not _unfinished_start(d):
        raise ValueError(
            f"out: {d} is not empty and holds no {SPEC_FILE}: not a study directory; "
            "use an empty or new directory"
        )
    try:
        (d / "shards").mkdir(parents=True, exist_ok=True)
        (d / "datasets").mkdir(exist_ok=True)
    except OSError as e:
        raise ValueError(f"out: cannot create {d}: {e.strerror}") from None
    _check_writable(d)
    if not spec_file.exists():
        _write_spec_file(study, d)
    return d


def check_spec_file(study, d):
    """Raise ValueError unless ``d/spec.json`` is ``study``'s (checked under the lock: another
    run may have written or replaced it since :func:`open_study_dir`). Returns the keys
    outside the hash (``description``, ``report``, ``shard_size``) that this run's spec
    changed: ``spec.json`` and ``spec.toml`` are rewritten with them, so that the report
    takes a new title or sections file (before, the first run's stayed, without a word)."""
    old = read_spec_file(d / SPEC_FILE)
    if old["spec_hash"] != study.spec_hash:
        raise ValueError(f"out: another run gave {d} to another spec meanwhile; run again")
    changed = [k for k in EXECUTION_KEYS if old["spec"].get(k) != study.spec.get(k)]
    if changed:
        _write_spec_file(study, d)
    return changed


@contextlib.contextmanager
def lock(d):
    fh = open(d / ".lock", "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"out: another run is using {d} (lock {d / '.lock'})") from None
        yield
    finally:
        fh.close()


def remove_partial_files(d):
    """Remove the partial files of killed runs or workers (lcnfast.to_netcdf writes
    ``.lcnfast-partial-<host>-<pid>-*.nc`` and renames it), and only those: the lock keeps
    other runs out, but not the shards an interrupted run left running on a cluster
    (lcnfast.study.on_dask), which a resumed run attaches to. So a file whose writer may still
    run stays: one of a live process of this host, or one of another host modified within
    the last ``REMOTE_PARTIAL_AGE`` seconds. Returns the number removed."""
    now = time.time()
    n = 0
    for sub in ("shards", "datasets"):
        for p in (d / sub).glob(".lcnfast-partial-*"):
            try:
                age = now - p.stat().st_mtime
            except FileNotFoundError:  # renamed into place meanwhile
                continue
            if _partial_writer_gone(p.name, age, REMOTE_PARTIAL_AGE):
                p.unlink(missing_ok=True)
                n += 1
    return n
