"""Checks of a study spec that need the library's own rules: the analysis tolerances, the data
each cell draws, the size of the saved trajectories, the levels of every grid factor, and the
``report.sections`` file (imported before a run, by :func:`sections_file`).

Private helpers of :mod:`lcnfast.study.spec`. Each check calls the validation that the run
itself would meet (:mod:`lcnfast.analysis`, :mod:`lcnfast.data` through
:func:`lcnfast.study.draws.draw_inputs`, :mod:`lcnfast.flows`), so a spec that a run would
refuse part-way (after ``spec.json`` and the first datasets are written) is refused by
:func:`lcnfast.study.load_spec`, naming the key path and line (:class:`SpecError`).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import traceback
from pathlib import Path

import numpy as np

from .. import analysis as _analysis
from ..analysis._common import _tolerances
from ..architecture import Architecture
from .._flow_args import check_save_size
from . import _keys as K
from . import draws

#: the key path of each grid factor (lcnfast.study.spec.FACTORS)
FACTOR_KEYS = {
    "architecture": "architectures", "loss": "losses", "integrator": "integrator",
    "m": "data.m", "noise": "data.noise", "inputs": "data.inputs", "target": "data.target",
    "init_scale": "init.scale", "init_distribution": "init.distribution",
}  # fmt: skip


def analysis_tolerances(ctx, x):
    """The ``[analysis]`` table: every tolerance of :data:`lcnfast.analysis.DEFAULTS`, > 0 and
    within the range :func:`lcnfast.analysis.classify` takes (e.g. ``eig_tol`` < 1)."""
    K.table(ctx, "analysis", x)
    K.known(ctx, "analysis", x, set(_analysis.DEFAULTS))
    out = {}
    for key, default in _analysis.DEFAULTS.items():
        path = f"analysis.{key}"
        out[key] = K.real(ctx, path, x.get(key, default), positive=True)
        try:
            _tolerances({key: out[key]})
        except (TypeError, ValueError) as e:
            raise ctx.error(path, str(e)) from None
    return out


def _arches(spec):
    return [Architecture(a["d0"], a["k"], a["s"]) for a in spec["architectures"]]


def data_can_be_drawn(ctx, spec):
    """Draw the inputs of every (architecture, m, inputs) once, with a throwaway seed: the
    rank, nullity and file-shape checks of the run (lcnfast.data, draws) apply; a ``"file"``
    target needs the file's Y of shape (d_N, m). A stored spec's files (``ctx.stored``) were
    checked when it ran: they may be gone since."""
    d = spec["data"]
    for i, inp in enumerate(d["inputs"]):
        if inp == "gaussian" or (ctx.stored and "file" in inp):
            continue
        path = f"data.inputs[{i}].{next(iter(inp))}"
        for j, arch in enumerate(_arches(spec)):
            for m in d["m"]:
                where = f"architectures[{j}]" + ("" if m is None else f", m = {m}")
                try:
                    X, Y = draws.draw_inputs(arch, inp, m, np.random.default_rng(0))
                except (ValueError, OSError) as e:
                    msg = str(e).removeprefix("data.inputs.file: ")
                    raise ctx.error(path, f"{msg} ({where})") from None
                for t, target in enumerate(d["target"]):
                    if target == "file" and (Y is None or Y.shape != (arch.d_N, X.shape[1])):
                        shape = "none" if Y is None else Y.shape
                        raise ctx.error(
                            f"data.target[{t}]",
                            f'"file" needs a Y of shape (d_N={arch.d_N}, m={X.shape[1]}) in '
                            f"{inp['file']}, got {shape} ({where})",
                        )


def save_sizes(ctx, spec, shard_size=None):
    """The saved trajectories of a shard (``min(shard_size, flows_per_dataset)`` flows) fit
    the limit of :mod:`lcnfast.flows` for every integrator and architecture."""
    n_flows = min(shard_size or spec["shard_size"], spec["flows_per_dataset"])
    for i, x in enumerate(spec["integrator"]):
        if x["method"] == "euler":
            path, n_save = f"integrator[{i}].save_every", x["n_steps"] // x["save_every"] + 1
        else:
            save = x["save"]
            path, n_save = f"integrator[{i}].save", (save if isinstance(save, int) else len(save))
        for j, arch in enumerate(_arches(spec)):
            try:
                check_save_size(n_flows, n_save, arch.n_params)
            except ValueError as e:
                raise ctx.error(
                    path, f"{e} (architectures[{j}], shards of {n_flows} flows)"
                ) from None


#: the most shards a study may have: each is a file in one directory and an entry of the
#: run's plan, and ten million files already strain a file system (and the run's memory)
MAX_SHARDS = 10**7


def shard_count(ctx, spec, n_cells, shard_size=None):
    """The study's shards (``n_cells`` x datasets x ceil(flows per dataset / shard size)) are
    at most :data:`MAX_SHARDS`."""
    size = shard_size or spec["shard_size"]
    n = n_cells * spec["data"]["n_datasets"] * -(-spec["flows_per_dataset"] // size)
    if n > MAX_SHARDS:
        raise ctx.error(
            "flows_per_dataset",
            f"the study would have {n:.3g} shards of at most {size} flows ({n_cells} cells x "
            f"{spec['data']['n_datasets']} datasets x {spec['flows_per_dataset']} flows), at "
            f"most {MAX_SHARDS:.0e} (one file each): raise shard_size or run fewer flows",
        )


def distinct_levels(ctx, labels):
    """Every factor's levels are distinct (``labels``: factor -> list of level labels)."""
    for f, lab in labels.items():
        if len(set(map(str, lab))) != len(lab):
            raise ctx.error(FACTOR_KEYS[f], f"the list has repeated values {lab}")


#: the factors a cell's data depend on (lcnfast.study.draws.make_dataset)
_DATA_FACTORS = ("architecture", "m", "noise", "inputs", "target")


def datasets_are_usable(ctx, spec, cells):
    """The first dataset of every distinct data setting is drawn as the run draws it, and must
    make a usable Problem: lcnfast.Problem refuses data too large for float64 (a window Gram,
    b or ||Y||^2 that overflows: ``noise = 1e300``, a target ``v`` of 1e300, a huge
    ``gram_near_singular``), which the run would meet only after writing ``spec.json``."""
    from ..losses import square
    from ..problem import Problem

    seen = set()
    for cell in cells:
        key = tuple(cell.levels[f] for f in _DATA_FACTORS)
        if key in seen:
            continue
        seen.add(key)
        where = ", ".join(f"{FACTOR_KEYS[f]} = {cell.labels[f]}" for f in _DATA_FACTORS)
        try:
            X, Y, _ = draws.make_dataset(cell, 0, spec["seed"])
            Problem(cell.arch(), X, Y, square())
        except (ValueError, np.linalg.LinAlgError) as e:
            raise ctx.error("data", f"{e} ({where})") from None
        except MemoryError as e:
            raise ctx.error("data", f"a dataset does not fit in memory: {e} ({where})") from None


def sections_module(path):
    """Import the ``report.sections`` file ``path`` afresh (under a name derived from its path;
    ``sys.path`` left alone) and check that it defines a callable ``sections``. Raises
    ValueError naming ``report.sections`` and the file when it is missing, cannot be imported
    (a syntax error with its line; an exception its code raises, with the type, message and
    line) or defines no function ``sections``."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"report.sections: no such file: {p}")
    name = "lcnfast_report_sections_" + hashlib.sha256(str(p).encode()).hexdigest()[:12]
    loader = importlib.machinery.SourceFileLoader(name, str(p))  # any suffix, not only .py
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    try:
        loader.exec_module(module)
    except SyntaxError as e:
        at = f", line {e.lineno}" if e.filename == str(p) else f": {e.filename}, line {e.lineno}"
        raise ValueError(f"report.sections: {p}{at}: SyntaxError: {e.msg}") from None
    except Exception as e:  # the file's own code: whatever it raises is the file's error
        raise ValueError(f"report.sections: {raised(e, p)} (on import)") from None
    if not callable(getattr(module, "sections", None)):
        raise ValueError(
            f"report.sections: {p} defines no function sections(ds, study, figures_dir)"
        )
    return module


def raised(e, path):
    """``<path>, line <n>: <Type>: <message>`` of an exception raised by the code of the file
    ``path`` (n: the last line of that file in the traceback; without it if none)."""
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
    where = f"{path}, line {lines[-1]}" if lines else str(path)
    return f"{where}: {type(e).__name__}: {e}"


def sections_file(study, missing_ok=False):
    """The ``report.sections`` file of ``study`` (a :class:`lcnfast.study.Study`), if any,
    imports and defines ``sections``: checked before a run (or a re-analysis), whose report
    would otherwise fail after every flow ran. Not by ``load_spec``: importing runs the file's
    code, and listing the studies or a notebook reading a spec should not. ``missing_ok``: a
    file gone is no error (a study directory's report leaves its sections out). Raises
    SpecError naming ``report.sections``, the file and the spec's line."""
    path = study.spec["report"]["sections"]
    if path is None or (missing_ok and not Path(path).is_file()):
        return
    try:
        sections_module(path)
    except ValueError as e:
        text = Path(study.source).read_text(encoding="utf-8") if study.source else None
        ctx = K.Ctx(text, study.source)
        raise ctx.error("report.sections", str(e).removeprefix("report.sections: ")) from None
