"""Shards: blocks of flows of one cell and dataset, each run, classified and written as one file.

Layout of a study directory (``data/<study>/`` by default)::

    spec.json              the resolved spec and its hash (the directory's identity)
    datasets/c0003_d0001.nc  X, Y (and the target filter) of dataset 1 of cell 3, written once
    shards/c0003_d0001_f0000064-0000128.nc  flows 64..127 of that dataset, classified
    report.md, figures/    written by ``lcnfast study report``

A shard file holds the flow Dataset of :func:`lcnfast.gradient_flow` (or
:func:`lcnfast.gradient_descent`), the variables of :func:`lcnfast.analysis.classify`, the
bounds of Lemma 3.6 per flow, and the cell's factors as coordinates along ``flow``. It is
written under a temporary name, flushed to the disk and renamed (:func:`lcnfast.to_netcdf`), so
a file that exists is complete; a killed run leaves at most a temporary file, removed by the
next run. A shard file damaged nevertheless (a copy cut short, a disk fault) is not finished:
:func:`finished_shards` names it, and a run renames it to ``<name>.damaged`` and computes its
flows again.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import netCDF4
import numpy as np
import xarray as xr

from .. import analysis as _analysis
from ..flows import FlowWarning, gradient_descent, gradient_flow
from .._signals import sigint_deferred
from ..io import open_dataset, to_netcdf
from ..problem import Problem
from . import draws
from .spec import COORDS, FACTORS, stored_study
from .spec_values import log_save_times

__all__ = [
    "Shard", "plan", "run_shard", "reanalyse_shard", "analyse", "dataset_path", "shard_path",
    "write_datasets",
]  # fmt: skip

_SHARD_RE = re.compile(r"^c(\d{4,})_d(\d{4,})_f(\d{7,})-(\d{7,})\.nc$")


class Shard(NamedTuple):
    """Flows ``f0 .. f1 - 1`` of dataset ``dataset`` of cell ``cell``."""

    cell: int
    dataset: int
    f0: int
    f1: int

    @property
    def name(self):
        return f"c{self.cell:04d}_d{self.dataset:04d}_f{self.f0:07d}-{self.f1:07d}"

    @property
    def n_flows(self):
        return self.f1 - self.f0


def shard_path(study_dir, shard):
    return Path(study_dir) / "shards" / f"{shard.name}.nc"


def dataset_path(study_dir, cell, dataset):
    return Path(study_dir) / "datasets" / f"c{cell:04d}_d{dataset:04d}.nc"


#: appended to the name of a shard file that cannot be read when a run sets it aside
DAMAGED_SUFFIX = ".damaged"


def _file_hash(path):
    with netCDF4.Dataset(path) as f:
        return getattr(f, "spec_hash", None)


def _shard_header(path):
    """``(spec hash, number of flows, recorded shard name)`` of a shard file; OSError or
    RuntimeError when it cannot be opened as netCDF (truncated, empty, not netCDF)."""
    with netCDF4.Dataset(path) as f:
        n = f.dimensions["flow"].size if "flow" in f.dimensions else None
        return getattr(f, "spec_hash", None), n, getattr(f, "shard", None)


class DamagedShardError(OSError):
    """A shard file whose header reads but whose data do not (a disk fault inside the file):
    ``path``; a run sets it aside and computes its flows again. An OSError: the command line
    names the file in one line and exits with status 1, as for any file it cannot read."""

    def __init__(self, path, reason):
        self.path = Path(path)
        super().__init__(
            f"shard file {path} is damaged ({reason}): run the study again (`lcnfast study "
            "run`, which sets the file aside and computes its flows again)"
        )


def open_shard(path):
    """The Dataset of a finished shard file, fully read; :class:`DamagedShardError` naming it
    when its data cannot be read (the header check of :func:`finished_shards` passed)."""
    try:
        return open_dataset(path)
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError) as e:
        raise DamagedShardError(path, getattr(e, "strerror", None) or str(e)) from e


def set_aside_damaged(path):
    """Rename the damaged shard file ``path`` to ``<name>.damaged`` (with a warning): a run,
    which holds the directory's lock, then computes its flows again."""
    _set_aside(Path(path), "its data cannot be read", True)


def _set_aside(path, reason, move):
    """Warn that the shard file ``path`` is damaged; with ``move``, rename it to
    ``<name>.damaged`` (no longer a shard file, so its flows are computed again)."""
    if not move:
        warnings.warn(
            f"shard file {path} is damaged ({reason}): skipped; a run of the study "
            "computes its flows again",
            stacklevel=3,
        )
        return
    aside = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, aside)
    warnings.warn(
        f"shard file {path} is damaged ({reason}): moved to {aside.name}; its flows are "
        "computed again",
        stacklevel=3,
    )


def finished_shards(study_dir, spec_hash, *, set_aside=False):
    """Shards whose file exists and carries ``spec_hash`` (others raise: never mixed).

    A shard file that cannot be opened as netCDF (truncated, empty: a copy cut short, a disk
    fault), does not hold its shard's flows or records another shard's name (a file copied
    or renamed by hand) is not finished: a warning names it, and with ``set_aside`` (a run,
    which holds the directory's lock) it is renamed to ``<name>.damaged``, so that the run
    computes its flows again. Only the header is read here; damage inside the data shows
    when the shard is read (:func:`open_shard`).
    """
    done = []
    for p in sorted((Path(study_dir) / "shards").glob("*.nc")):
        m = _SHARD_RE.match(p.name)
        if not m:
            continue
        shard = Shard(*map(int, m.groups()))
        try:
            h, n, name = _shard_header(p)
        except (OSError, RuntimeError, AttributeError) as e:  # AttributeError: a damaged attribute
            _set_aside(p, getattr(e, "strerror", None) or str(e), set_aside)
            continue
        if h != spec_hash:
            raise ValueError(
                f"{p} belongs to another spec (hash {h}, this spec {spec_hash}): "
                "use another output directory"
            )
        if n != shard.n_flows:
            _set_aside(p, f"{n} flows, not {shard.n_flows}", set_aside)
            continue
        if name is not None and name != shard.name:
            _set_aside(p, f"it holds shard {name}", set_aside)
            continue
        done.append(shard)
    return done


def _dataset_written(path, spec_hash):
    """Whether the dataset file ``path`` exists and holds data of ``spec_hash``, read in full
    (a file that cannot be read, header or data, is written again: the data are drawn again
    from the seeds, the same numbers)."""
    try:
        if not (path.exists() and _file_hash(path) == spec_hash):
            return False
        open_dataset(path)  # as the run reads it: every variable and attribute
        return True
    except (OSError, RuntimeError, KeyError, ValueError, AttributeError):
        return False


def plan(study, done, shard_size):
    """The shards still to run: for every cell and dataset, the flows not covered by a
    finished shard, in blocks of at most ``shard_size`` (so a resumption with another shard
    size computes nothing twice). Works on the finished shards' ranges, never on one entry
    per flow (a dataset may have billions of flows)."""
    n_d, n_f = study.spec["data"]["n_datasets"], study.spec["flows_per_dataset"]
    covered = {}
    for s in done:
        covered.setdefault((s.cell, s.dataset), []).append((s.f0, s.f1))
    todo = []
    for c in range(len(study.cells)):
        for d in range(n_d):
            f = 0  # the first flow not yet planned nor covered
            for a, b in sorted(covered.get((c, d), [])) + [(n_f, n_f)]:
                while f < a:  # the gap f .. a - 1, in blocks of shard_size
                    g = min(a, f + shard_size)
                    todo.append(Shard(c, d, f, g))
                    f = g
                f = max(f, b)
    return todo


# ----------------------------------------------------------------------------- datasets
def write_datasets(study, study_dir):
    """Write the data (X, Y) of every cell and dataset not written yet; returns the count."""
    n = 0
    for cell in study.cells:
        for d in range(study.spec["data"]["n_datasets"]):
            path = dataset_path(study_dir, cell.index, d)
            if _dataset_written(path, study.spec_hash):
                continue
            X, Y, v_target = draws.make_dataset(cell, d, study.spec["seed"])
            problem = Problem(cell.arch(), X, Y, cell.loss_fn())
            rank = _analysis.rank_report(problem)
            data_vars = {
                "X": (("x_row", "sample"), X, {"long_name": "inputs x_i as columns (d0, m)"}),
                "Y": (("y_row", "sample"), Y, {"long_name": "targets y_i as columns (d_N, m)"}),
            }
            if v_target is not None:
                data_vars["v_target"] = (
                    "v_tap", v_target, {"long_name": "target filter (teacher's pi(w*), or given)"}
                )  # fmt: skip
            attrs = {
                "title": f"lcnfast study {study.name}: data of cell {cell.index}, dataset {d}",
                "spec": json.dumps(study.spec),
                "spec_hash": study.spec_hash,
                "cell": cell.index,
                "dataset": d,
                "cell_labels": json.dumps(cell.labels),
                **{
                    k: int(v) if isinstance(v, (bool, np.bool_)) else v
                    for k, v in rank.items()
                    if k in ("xxt_rank", "xxt_full_rank", "gram_rank", "gram_pd", "gram_min_eig")
                },
            }
            to_netcdf(xr.Dataset(data_vars, attrs=attrs), path)
            n += 1
    return n


def read_dataset(study_dir, cell, dataset):
    """(X, Y) of a dataset of a study directory."""
    ds = open_dataset(dataset_path(study_dir, cell, dataset))
    return ds["X"].values, ds["Y"].values


# ----------------------------------------------------------------------------- one shard
_STUDIES = {}  # resolved spec (canonical JSON) -> Study, per process (dask workers reuse it)


def recorded_study(spec):
    """The Study of a run's resolved spec (a dict), as the run recorded it
    (:func:`.spec.stored_study`), validated once per process and spec."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _STUDIES:
        _STUDIES[key] = stored_study(spec)
    return _STUDIES[key]


def integrate(problem, W0, integ, n_threads):
    """Run the flows of one integrator setting (a resolved ``integrator`` entry: its keys are
    the keyword arguments of :func:`lcnfast.gradient_descent` or :func:`lcnfast.gradient_flow`,
    but ``save``, which gives the save times)."""
    kw = {k: v for k, v in integ.items() if k not in ("method", "save", "loss_levels")}
    fractions = integ.get("loss_levels")
    if fractions is not None:  # fractions of L(v=0) -> absolute levels for the engine
        zero = float(problem.loss(np.zeros((1, problem.arch.n_params)))[0])
        kw["loss_levels"] = [q * zero for q in fractions]
    if integ["method"] == "euler":
        ds = gradient_descent(problem, W0, n_threads=n_threads, progress=False, **kw)
    else:
        save = integ["save"]
        save_t = log_save_times(save, integ["t_end"]) if isinstance(save, int) else save
        ds = gradient_flow(
            problem, W0, method=integ["method"], save_times=save_t, n_threads=n_threads,
            progress=False, **kw,
        )
    if fractions is not None:  # the same coordinate in every dataset's shards
        ds = ds.assign_coords(
            loss_level=("loss_level", fractions, {"long_name": "event level / L(v=0)"})
        )
    return ds


def _lemma36(problem, ds):
    """Per-flow bounds on ||v||_1 (Lemma 3.6; the Gram extension), NaN where they do not apply."""
    rep = _analysis.rank_report(problem, ds)
    K = ds.sizes["flow"]
    out = {}
    for key, long_name in (
        ("lemma36_bound", "Lemma 3.6 bound g(L(w_0)) on ||v(t)||_1 (NaN: X X^T singular)"),
        ("gram_bound", "bound on ||v(t)||_1 from lambda_min(A) > 0 (NaN: A singular)"),
    ):
        b = rep[key]
        arr = np.full(K, np.nan) if b is None else np.broadcast_to(np.asarray(b, float), (K,))
        out[key] = ("flow", np.array(arr), {"long_name": long_name})
    out["xxt_full_rank"] = ("flow", np.full(K, rep["xxt_full_rank"]), {"long_name": "X X^T full rank"})
    out["gram_pd"] = ("flow", np.full(K, rep["gram_pd"]), {"long_name": "window Gram A > 0"})
    out["gram_min_eig"] = ("flow", np.full(K, rep["gram_min_eig"]), {"long_name": "lambda_min(A)"})
    scale = json.loads(ds.attrs["analysis"])["loss_scale"]
    out["loss_scale"] = ("flow", np.full(K, scale), {"long_name": "L(v = 0), the analysis' scale"})
    return out


def _per_flow(ds):
    """Give every variable the ``flow`` dimension (scalars of the analysis are per dataset),
    and turn ``root_layer`` into a variable: then shards of any cells concatenate along flow."""
    if "root_layer" in ds.coords:
        ds = ds.reset_coords("root_layer")
    for name in list(ds.data_vars):
        if "flow" not in ds[name].dims:
            ds[name] = ds[name].expand_dims(flow=ds.sizes["flow"]).copy()
    return ds


def analyse(ds, problem, study):
    """The analysis of a shard's flows: :func:`lcnfast.analysis.classify` with the spec's
    tolerances, and the per-flow rank conditions and bounds of Lemma 3.6. Variables of a
    previous analysis are replaced (so a stored shard can be analysed again)."""
    ds = _analysis.classify(ds, problem, **study.spec["analysis"])
    return ds.assign(_lemma36(problem, ds))


def reanalyse_shard(study_dir, spec, path):
    """Analyse a finished shard file again with this version of :mod:`lcnfast.analysis`
    (nothing is integrated again: the flows' stored end points and invariants are used) and
    rewrite it atomically. Returns ``{"shard", "label"}`` (label counts)."""
    study = recorded_study(spec)
    path = Path(path)
    m = _SHARD_RE.match(path.name)
    if not m:
        raise ValueError(f"path: {path} is not a shard file")
    shard = Shard(*map(int, m.groups()))
    cell = study.cells[shard.cell]
    X, Y = read_dataset(study_dir, shard.cell, shard.dataset)
    problem = Problem(cell.arch(), X, Y, cell.loss_fn())
    ds = open_shard(path)
    if ds.attrs.get("spec_hash") != study.spec_hash:
        raise ValueError(f"{path} belongs to another spec: use its own study directory")
    t0 = time.perf_counter()
    ds = _per_flow(analyse(ds, problem, study))
    ds.attrs.update(classify_seconds=time.perf_counter() - t0, reanalysed=_now())
    with sigint_deferred():  # an interrupt inside netCDF can leave its lock held (_signals)
        to_netcdf(ds, path)
    label = ds.label.values
    return {"shard": shard.name, "label": {int(v): int((label == v).sum()) for v in np.unique(label)}}


def _now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run_shard(study_dir, spec, shard, n_threads=None):
    """Run, classify and write one shard; returns a small summary dict.

    ``spec`` is the resolved spec (a dict: it travels to dask workers as plain data).
    """
    t0 = time.perf_counter()
    study = recorded_study(spec)
    shard = Shard(*shard)
    cell = study.cells[shard.cell]
    X, Y = read_dataset(study_dir, shard.cell, shard.dataset)
    problem = Problem(cell.arch(), X, Y, cell.loss_fn())
    W0 = draws.initial_points(cell, shard.dataset, shard.f0, shard.f1, study.spec["seed"])
    with warnings.catch_warnings():
        # flows that stop early are counted by status in the summary and the report; one
        # warning per shard would repeat that hundreds of times in a study's output
        warnings.simplefilter("ignore", FlowWarning)
        ds = integrate(problem, W0, cell.integrator, n_threads)
    if ds.attrs.get("interrupted"):  # Ctrl-C in the engine: its flows stopped part-way
        raise KeyboardInterrupt  # the shard is not written, so a resumption runs it again
    t1 = time.perf_counter()
    ds = analyse(ds, problem, study)
    t2 = time.perf_counter()
    n_d, n_f = study.spec["data"]["n_datasets"], study.spec["flows_per_dataset"]
    replicate = np.arange(shard.f0, shard.f1)
    K = shard.n_flows
    coords = {
        "flow": ((shard.cell * n_d) + shard.dataset) * n_f + replicate,
        "cell": ("flow", np.full(K, shard.cell)),
        "dataset": ("flow", np.full(K, shard.dataset)),
        "replicate": ("flow", replicate),
    }
    for f in FACTORS:
        coords[COORDS[f]] = ("flow", np.full(K, cell.labels[f]))
    ds = _per_flow(ds.assign_coords(coords))
    ds.attrs.update(
        spec=json.dumps(study.spec),
        spec_hash=study.spec_hash,
        study=study.name,
        shard=shard.name,
        cell_labels=json.dumps(cell.labels),
        flow_seconds=t1 - t0,
        classify_seconds=t2 - t1,
    )
    path = shard_path(study_dir, shard)
    with sigint_deferred():  # an interrupt inside netCDF can leave its lock held (_signals)
        to_netcdf(ds, path)
    status = ds.status.values
    label = ds.label.values
    return {
        "shard": shard.name,
        "path": str(path),
        "n_flows": K,
        "n_grad_evals": int(ds.n_grad_evals.sum()),
        "status": {int(s): int((status == s).sum()) for s in np.unique(status)},
        "label": {int(s): int((label == s).sum()) for s in np.unique(label)},
        "flow_seconds": t1 - t0,
        "classify_seconds": t2 - t1,
        "seconds": time.perf_counter() - t0,
        "pid": os.getpid(),
    }
