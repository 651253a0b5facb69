"""Read a study directory back: one Dataset over all shards, and the problem of any dataset."""

from __future__ import annotations

import json
import numbers
import os
from pathlib import Path

import numpy as np
import xarray as xr

from .. import analysis as _analysis
from ..problem import Problem
from .directory import SPEC_FILE, read_spec_file
from .shards import finished_shards, open_shard, read_dataset
from .spec import COORDS, FACTORS, stored_study

__all__ = ["load", "load_problem", "read_spec"]

#: levels of the ``flow`` MultiIndex of :func:`load`
FLOW_LEVELS = ("cell", *(COORDS[f] for f in FACTORS), "dataset", "replicate")


def read_spec(study_dir):
    """The :class:`lcnfast.study.Study` recorded in a study directory (a str or path), as its
    run recorded it: the files the spec names (``data.inputs``, ``report.sections``) are not
    read again (:func:`lcnfast.study.spec.stored_study`), so the directory stays readable when
    they move or change. Raises ValueError naming ``spec.json`` when it is missing, damaged
    (see :func:`lcnfast.study.directory.read_spec_file`; a spec that does not validate) or does
    not match its hash."""
    if not isinstance(study_dir, (str, os.PathLike)):
        raise TypeError(f"study_dir must be a path (str or os.PathLike), got {study_dir!r}")
    p = Path(study_dir) / SPEC_FILE
    if not p.is_file():
        raise ValueError(f"study_dir: {study_dir} has no {SPEC_FILE}: not a study directory")
    rec = read_spec_file(p)
    try:
        study = stored_study(rec["spec"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"damaged {SPEC_FILE}: {p}: {e}") from None
    if study.spec_hash != rec["spec_hash"]:
        raise ValueError(f"study_dir: {p} does not match its hash (edited by hand?)")
    return study


def load(study_dir, *, cells=None):
    """All finished shards of a study as one :class:`xarray.Dataset`.

    The ``flow`` dimension carries a MultiIndex with levels ``cell``, the factors
    (``architecture``, ``loss_fn``, ``integrator``, ``m``, ``noise``, ``inputs``, ``target``,
    ``init_scale``, ``init_distribution``: short labels, as in the report; ``loss`` is the saved
    loss values), ``dataset`` and ``replicate`` (the flow's number within its dataset). So
    ``ds.sel(loss_fn="square")`` selects
    a factor level, ``ds.groupby("cell")`` iterates over cells and
    ``ds.reset_index("cell", drop=True).unstack("flow")`` gives the full grid (the ``cell``
    level would be a dimension of its own, mostly NaN). Variables: the flow schema of :mod:`lcnfast.flows`, the analysis of
    :func:`lcnfast.analysis.classify` (``loss_best_found`` and ``reached_best`` are recomputed
    per cell and dataset over all its shards), ``lemma36_bound``, ``gram_bound``,
    ``xxt_full_rank``, ``gram_pd``, ``gram_min_eig``. Architecture-dependent dimensions
    (``param``, ``v_tap``, ``eig``, ...) are the union over the cells, NaN-padded. Attributes:
    ``spec`` (resolved, JSON), ``spec_hash``, ``study``, ``n_flows_expected``.

    Parameters
    ----------
    study_dir : path
    cells : list of int, optional
        Load only these cells (numbers in ``0 .. n_cells - 1``; a non-empty list, tuple,
        range or 1-d array).
    """
    study = read_spec(study_dir)
    if cells is not None:
        cells = _cell_numbers(cells, len(study.cells))
    shards = finished_shards(study_dir, study.spec_hash)
    if cells is not None:
        shards = [s for s in shards if s.cell in cells]
    if not shards:
        which = "" if cells is None else f" of cells {sorted(cells)}"
        raise ValueError(f"study_dir: {study_dir} has no finished shards{which} yet")
    parts = _common_dimension_coords(_distinct_flows(study_dir, shards))
    ds = xr.concat(
        parts,
        dim="flow",
        data_vars="all",
        coords="different",
        compat="equals",
        join="outer",
        combine_attrs="drop_conflicts",
    )
    ds = _best_found(ds)
    ds = ds.drop_vars("flow").set_index(flow=list(FLOW_LEVELS))
    ds.attrs = {
        "title": f"lcnfast study {study.name}",
        "study": study.name,
        "spec": json.dumps(study.spec),
        "spec_hash": study.spec_hash,
        "n_flows_expected": study.n_flows,
    }
    return ds


def _distinct_flows(study_dir, shards):
    """The Datasets of the finished ``shards``, each flow once: shards of other sizes can
    overlap (a run resumed with another ``--shard-size`` while workers of the interrupted one
    still wrote theirs); a flow is the same computation in each, so the first file in
    (cell, dataset, first flow) order keeps it."""
    parts = []
    covered = {}  # (cell, dataset) -> the end of the flows read so far
    for s in sorted(shards, key=lambda s: (s.cell, s.dataset, s.f0)):
        start = max(s.f0, covered.get((s.cell, s.dataset), 0))
        if start >= s.f1:
            continue
        covered[(s.cell, s.dataset)] = s.f1
        part = open_shard(Path(study_dir) / "shards" / f"{s.name}.nc")
        parts.append(part.isel(flow=slice(start - s.f0, None)) if start > s.f0 else part)
    return parts


def _common_dimension_coords(parts):
    """The shards with every dimension coordinate that any of them has: ``loss_level`` is in
    the shards of integrators with ``loss_levels`` only, and ``xr.concat(coords="different")``
    refuses a coordinate that three or more shards do not all have. With it everywhere, the
    levels are the union (``join="outer"``) and ``t_below`` is NaN for flows without them."""
    coords = {}
    for p in parts:
        for name in p.dims:
            if name != "flow" and name in p.coords:
                coords.setdefault(name, p[name].variable)
    return [p.assign_coords({k: v for k, v in coords.items() if k not in p.dims}) for p in parts]


def _best_found(ds):
    """``loss_best_found``, ``gap_to_best``, ``reached_best`` over each cell and dataset (each
    shard computed them over its own flows only)."""
    key = ds["cell"].values.astype(np.int64) * (int(ds["dataset"].max()) + 1) + ds["dataset"].values
    loss = ds["limit_loss"].values
    best = np.full(loss.shape, np.nan)
    for k in np.unique(key):
        sel = key == k
        finite = sel & np.isfinite(loss)
        if finite.any():
            best[sel] = loss[finite].min()
    meta = json.loads(ds.attrs["analysis"]) if "analysis" in ds.attrs else {}
    gap_tol = meta.get("gap_tol", _analysis.DEFAULTS["gap_tol"])
    scale = ds["loss_scale"].values  # L(v = 0) of each flow's dataset, as lcnfast.analysis
    gap = loss - best
    return ds.assign(
        loss_best_found=("flow", best, ds["loss_best_found"].attrs),
        gap_to_best=("flow", gap, ds["gap_to_best"].attrs),
        reached_best=(
            "flow",
            np.isfinite(loss) & (gap <= gap_tol * scale),
            {"long_name": "gap_to_best <= gap_tol * L(v=0), best over the cell's dataset"},
        ),
    )


def _index(x, name, n):
    """``x`` as a number in ``0 .. n - 1`` (TypeError: not a whole number; ValueError: out
    of range), the error naming the argument ``name``."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be a whole number, got {x!r}")
    if not 0 <= x < n:
        raise ValueError(f"{name} must be in 0..{n - 1}, got {x}")
    return int(x)


def _cell_numbers(cells, n):
    """The set of cell numbers of the ``cells`` argument of :func:`load`."""
    if isinstance(cells, (str, bytes, numbers.Number)) or not hasattr(cells, "__iter__"):
        raise TypeError(f"cells must be a list of cell numbers, got {cells!r}")
    out = {_index(c, "cells", n) for c in cells}
    if not out:
        raise ValueError("cells must not be empty (None: all cells)")
    return out


def load_problem(study_dir, cell, dataset):
    """The :class:`lcnfast.Problem` of dataset ``dataset`` of cell ``cell``, from the stored
    data: with it any analysis of the study's flows can be redone from the files alone.
    ``cell`` is in ``0 .. n_cells - 1``, ``dataset`` in ``0 .. data.n_datasets - 1``."""
    study = read_spec(study_dir)
    cell = _index(cell, "cell", len(study.cells))
    dataset = _index(dataset, "dataset", study.spec["data"]["n_datasets"])
    c = study.cells[cell]
    X, Y = read_dataset(study_dir, cell, dataset)
    return Problem(c.arch(), X, Y, c.loss_fn())
