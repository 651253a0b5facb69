"""Study specifications: read a TOML file, validate every key, fill in defaults, form the grid.

A study is a Cartesian grid of *cells*. Each factor below is a single value or a list of values
(a list is a factor of the grid): ``architectures``, ``losses`` and ``integrator`` (a table or an
array of tables), and the keys ``data.m``, ``data.noise``, ``data.inputs``, ``data.target``,
``init.scale``, ``init.distribution``. Every cell runs ``data.n_datasets`` datasets with
``flows_per_dataset`` flows each. The full format, with every default, is in the README
("Study specifications").

:func:`load_spec` returns a :class:`Study`: the *resolved* spec (every default filled in, plain
JSON data, stored in every output file so that one file reproduces its run), its hash, and the
cells. Errors are ``ValueError`` naming the key path (``architectures[2].s: ...``) and, where it
can be found, the line of the TOML file.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import tomllib
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .. import losses as _losses
from ..architecture import Architecture
from . import _keys as K
from . import spec_checks
from . import spec_values as values
from .labels import level_labels
from ._keys import SpecError

__all__ = [
    "Study", "Cell", "load_spec", "stored_study", "spec_diff", "FORMAT_VERSION", "builtin_specs",
]  # fmt: skip

#: version of the resolved-spec format and of the shard files (part of the spec hash)
FORMAT_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_TOP = {
    "name", "description", "seed", "architectures", "losses", "data", "init", "integrator",
    "flows_per_dataset", "shard_size", "analysis", "report", "quick",
}  # fmt: skip
#: keys that do not change any number of a run (left out of the spec hash)
EXECUTION_KEYS = ("description", "shard_size", "report", "quick")


class Cell(NamedTuple):
    """One cell of the grid: the factor values and their indices in the spec's lists.

    ``index`` is the cell's number (row-major over the factors in :data:`FACTORS` order);
    ``levels`` maps each factor to the index of its value in the spec (the seeds use them);
    ``labels`` maps each factor to a short string (the coordinates of :func:`lcnfast.study.load`).
    """

    index: int
    architecture: dict
    loss: dict
    integrator: dict
    m: int | None
    noise: float
    inputs: object
    target: object
    init_scale: float
    init_distribution: str
    levels: dict
    labels: dict

    def arch(self):
        """The cell's :class:`lcnfast.Architecture`."""
        a = self.architecture
        return Architecture(a["d0"], a["k"], a["s"])

    def loss_fn(self):
        """The cell's :class:`lcnfast.losses.Loss`."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # lp(p odd): warned at validation
            return _losses.from_dict({"name": self.loss["name"], **self.loss["params"]})


#: the grid's factors, in the order of the cell index (slowest first)
FACTORS = (
    "architecture", "loss", "integrator", "m", "noise", "inputs", "target",
    "init_scale", "init_distribution",
)  # fmt: skip


#: the name of each factor's coordinate in the study's Datasets: the loss factor is
#: ``loss_fn`` because ``loss`` is the flow schema's saved loss values (flow, time)
COORDS = {f: ("loss_fn" if f == "loss" else f) for f in FACTORS}


class Study(NamedTuple):
    """A validated study: ``spec`` (resolved, JSON-ready), ``spec_hash``, ``cells``, ``source``
    (the TOML file, or None)."""

    spec: dict
    spec_hash: str
    cells: tuple
    source: str | None

    @property
    def name(self):
        return self.spec["name"]

    @property
    def n_flows(self):
        return len(self.cells) * self.spec["data"]["n_datasets"] * self.spec["flows_per_dataset"]


# the spec hashes whose data spec_checks.datasets_are_usable has drawn in this process
_DATA_CHECKED = set()


def _merge(base, over):
    """Deep merge of ``over`` into a copy of ``base`` (tables merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


# ----------------------------------------------------------------------------- resolution
def _resolve(raw, ctx, base_dir, quick):
    K.table(ctx, "", raw)
    K.known(ctx, "", raw, _TOP)
    if quick:
        q = K.table(ctx, "quick", raw.get("quick", {}))
        K.known(ctx, "quick", q, _TOP - {"quick", "name"})
        raw = _merge({k: v for k, v in raw.items() if k != "quick"}, q)
        ctx.overrides = tuple(_leaf_paths(q))
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ctx.error("name", f"must be a name of letters, digits, '_', '-', '.', got {name!r}")
    desc = raw.get("description", "")
    if not isinstance(desc, str):
        raise ctx.error("description", "must be a string")
    if "architectures" not in raw:
        raise ctx.error("architectures", "missing (a table {d0, k, s} or an array of tables)")
    if "integrator" not in raw:
        raise ctx.error("integrator", "missing (e.g. {method = \"auto\", t_end = 200.0})")
    if "data" not in raw:
        raise ctx.error("data", "missing (at least data.m)")
    spec = {
        "format_version": FORMAT_VERSION,
        "name": name + ("-quick" if quick else ""),
        "description": desc,
        "seed": K.whole(ctx, "seed", raw.get("seed", 0), 0, maximum=None),
        "architectures": [
            values.architecture(ctx, f"architectures[{i}]", a)
            for i, a in enumerate(K.factor_list(ctx, "architectures", raw["architectures"]))
        ],
        "losses": [
            values.loss(ctx, f"losses[{i}]", x)
            for i, x in enumerate(K.factor_list(ctx, "losses", raw.get("losses", "square")))
        ],
        "integrator": [
            values.integrator(ctx, f"integrator[{i}]", x)
            for i, x in enumerate(K.factor_list(ctx, "integrator", raw["integrator"]))
        ],
        "data": values.data(ctx, raw["data"], base_dir),
        "init": values.init(ctx, raw.get("init", {})),
        "flows_per_dataset": K.whole(ctx, "flows_per_dataset", raw.get("flows_per_dataset", 100), 1),
        "analysis": spec_checks.analysis_tolerances(ctx, raw.get("analysis", {})),
        "shard_size": K.whole(ctx, "shard_size", raw.get("shard_size", 256), 1),
        "report": values.report(ctx, raw.get("report", {}), base_dir),
        "quick": bool(quick),
    }
    for i, t in enumerate(spec["data"]["target"]):
        if isinstance(t, dict):
            for j, a in enumerate(spec["architectures"]):
                kv = Architecture(a["d0"], a["k"], a["s"]).k_v
                if len(t["v"]) != kv:
                    raise ctx.error(
                        f"data.target[{i}].v",
                        f"has {len(t['v'])} taps but architectures[{j}] has k_v = {kv}",
                    )
    spec_checks.data_can_be_drawn(ctx, spec)
    spec_checks.save_sizes(ctx, spec)
    spec_checks.distinct_levels(ctx, level_labels(spec))
    return spec


def _leaf_paths(table, prefix=""):
    """The key paths of the non-table values of a nested dict (``data.m``, ``flows_per_dataset``)."""
    for k, v in table.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _leaf_paths(v, path + ".")
        else:
            yield path


def _cells(spec):
    d, i = spec["data"], spec["init"]
    values = {
        "architecture": spec["architectures"],
        "loss": spec["losses"],
        "integrator": spec["integrator"],
        "m": d["m"],
        "noise": d["noise"],
        "inputs": d["inputs"],
        "target": d["target"],
        "init_scale": i["scale"],
        "init_distribution": i["distribution"],
    }
    labels = level_labels(spec)  # distinct levels: spec_checks.distinct_levels
    cells = []
    ranges = [range(len(values[f])) for f in FACTORS]
    for n, idx in enumerate(itertools.product(*ranges)):
        lv = dict(zip(FACTORS, idx))
        kw = {f: values[f][lv[f]] for f in FACTORS}
        cells.append(
            Cell(index=n, levels=lv, labels={f: labels[f][lv[f]] for f in FACTORS}, **kw)
        )
    return tuple(cells)


def science_part(spec):
    """The part of a resolved spec that determines the numbers (what the hash covers)."""
    return {k: v for k, v in spec.items() if k not in EXECUTION_KEYS}


def spec_hash(spec):
    """SHA-256 of the canonical JSON of :func:`science_part`."""
    text = json.dumps(science_part(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def spec_diff(a, b, path=""):
    """Key paths where two resolved specs differ (science part only), e.g. ``["data.noise"]``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if not path and key in EXECUTION_KEYS:
                continue
            sub = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                out.append(sub)
            else:
                out += spec_diff(a[key], b[key], sub)
        return out
    return [] if a == b else [path]


def builtin_specs():
    """The built-in study specs: ``{name: path}`` of ``studies/*.toml`` in the source tree."""
    root = Path(__file__).resolve().parents[2] / "studies"
    return {p.stem: p for p in sorted(root.glob("*.toml"))}


def _find(spec):
    """The TOML file of ``spec``: an existing file, else the built-in study of that name (a
    directory of the name, such as a study's output ``--out quickstart``, never shadows it)."""
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    name = os.fspath(spec)
    builtin = builtin_specs()
    if name in builtin:
        return builtin[name]
    local = Path("studies") / f"{name}.toml"
    if local.is_file():
        return local
    if p.is_dir():
        raise SpecError(f"spec: {p} is a directory, not a spec file")
    if p.exists():
        raise SpecError(f"spec: {p} is not a regular file")
    if p.suffix == ".toml":
        raise SpecError(f"spec: no such file: {p}")
    known = ", ".join(builtin) or "none found"
    raise SpecError(f"spec: {name!r} is neither a .toml file nor a built-in study ({known})")


def load_spec(spec, *, quick=False):
    """Read and validate a study spec.

    Parameters
    ----------
    spec : str, path or dict
        A TOML file, the name of a built-in study (``lcnfast study list``), or the spec as a
        dict (the parsed TOML, or a resolved spec read back from an output file).
    quick : bool
        Apply the spec's ``[quick]`` overrides (a small version of the study, for tests and
        trials); the study's name gets the suffix ``-quick``.

    Returns
    -------
    Study

    Raises
    ------
    ValueError (SpecError)
        Malformed TOML, unknown keys, invalid values, with the key path and line.
    TypeError
        ``spec`` neither a str, a path nor a dict; ``quick`` not a bool.
    """
    if not isinstance(quick, (bool, np.bool_)):
        raise TypeError(f"quick must be True or False, got {quick!r}")
    if isinstance(spec, dict):
        raw, text, source, base = copy.deepcopy(spec), None, None, Path.cwd()
        if raw.get("format_version") is not None:  # a resolved spec: strip what _resolve adds
            raw, quick = _unresolve(raw, quick, stored=False)
    else:
        if not isinstance(spec, (str, os.PathLike)):
            raise TypeError(
                f"spec must be a TOML file, a built-in study's name or a dict, got {spec!r}"
            )
        path = _find(spec)
        try:
            text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no TOML
        except UnicodeDecodeError as e:
            raise SpecError(f"{path}: not a UTF-8 TOML file ({e.reason} at byte {e.start})") from None
        source, base = str(path), path.resolve().parent
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: invalid TOML: {e}") from None
    return _make_study(raw, K.Ctx(text, source), base, quick)


def stored_study(spec):
    """The :class:`Study` of a resolved spec as a run recorded it (a study directory's
    ``spec.json``, a shard's ``spec`` attribute, the spec a run hands to its shards).

    Validated as :func:`load_spec` validates, but its external files are taken as recorded:
    the ``data.inputs`` files keep their recorded sha256 (their X and Y are in the study's
    ``datasets/*.nc``) and the ``report.sections`` path is not looked up. So a study directory
    stays readable after a file it used moved or changed, with its own hash; a *run* of a spec
    whose file changed still reads the file (:func:`load_spec`) and gets another hash.
    Raises SpecError as :func:`load_spec`; gives none of its warnings (given by the run).
    """
    if not isinstance(spec, dict) or spec.get("format_version") is None:
        raise SpecError("format_version: missing (not a resolved spec)")
    raw, quick = _unresolve(copy.deepcopy(spec), False, stored=True)
    with values.spec_warnings_off():  # warned about when it was run
        return _make_study(raw, K.Ctx(None, None, stored=True), Path.cwd(), quick)


def _make_study(raw, ctx, base, quick):
    """Resolve ``raw`` (a parsed spec) into a :class:`Study`; the data of a spec not read
    back from a run (``ctx.stored``, checked when it ran) are drawn once per process. The
    ``[quick]`` table is validated at the full size too (resolved, then dropped): a typo in
    it is found by the first run, not by a later ``--quick`` one."""
    resolved = _resolve(raw, ctx, base, quick)
    cells, digest = _cells(resolved), spec_hash(resolved)
    spec_checks.shard_count(ctx, resolved, len(cells))
    if not ctx.stored and digest not in _DATA_CHECKED:  # each step of a run reads the spec
        spec_checks.datasets_are_usable(ctx, resolved, cells)
        _DATA_CHECKED.add(digest)
    if not quick and "quick" in raw:
        _resolve(raw, copy.copy(ctx), base, True)  # its own overrides: errors at quick.<key>
    return Study(resolved, digest, cells, ctx.source)


def _unresolve(raw, quick, stored):
    """A resolved spec (``raw``, a copy) back to the input of :func:`_resolve`, and its quick
    flag: what _resolve adds is stripped (the flag and the ``-quick`` suffix, None defaults;
    a file's sha256 unless ``stored``, so that :func:`load_spec` hashes the file again).
    Values of the wrong type (a damaged ``spec.json``) are left for _resolve to refuse,
    naming their key."""
    if raw.pop("format_version") != FORMAT_VERSION:
        raise SpecError("format_version: written by another version of lcnfast.study")
    if raw.pop("quick", False):
        if isinstance(raw.get("name"), str):
            raw["name"] = raw["name"].removesuffix("-quick")
        raw["quick"] = {}
        quick = True
    if isinstance(raw.get("integrator"), list):
        raw["integrator"] = [_unresolve_integrator(x) for x in raw["integrator"]]
    data = raw.get("data")
    if not stored and isinstance(data, dict) and isinstance(data.get("inputs"), list):
        data["inputs"] = [
            {"file": x["file"]} if isinstance(x, dict) and "file" in x else x
            for x in data["inputs"]
        ]
    if isinstance(raw.get("report"), dict):
        raw["report"] = {k: v for k, v in raw["report"].items() if v is not None}
    return raw, quick


def _unresolve_integrator(x):
    """A resolved integrator without its None defaults (anything but a table: as it is)."""
    return {k: v for k, v in x.items() if v is not None} if isinstance(x, dict) else x
