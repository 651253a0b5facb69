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

import contextlib
import copy
import hashlib
import itertools
import json
import math
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
from .labels import level_labels
from ._keys import SpecError

__all__ = ["Study", "Cell", "load_spec", "spec_diff", "FORMAT_VERSION", "builtin_specs"]

#: version of the resolved-spec format and of the shard files (part of the spec hash)
FORMAT_VERSION = 1

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

_FLOW_OPTIONAL = {
    "rtol": 1e-8, "atol": 1e-10, "grad_tol": None, "max_steps": 100_000, "save": 25,
    "loss_levels": None,
}  # fmt: skip
#: integrator methods: method -> (required keys, defaults of the optional keys). rk45,
#: rosenbrock and auto are the methods of :func:`lcnfast.gradient_flow`, euler is
#: :func:`lcnfast.gradient_descent`
METHODS = {
    "auto": (("t_end",), _FLOW_OPTIONAL),
    "rk45": (("t_end",), _FLOW_OPTIONAL),
    "rosenbrock": (("t_end",), _FLOW_OPTIONAL),
    "euler": (("h", "n_steps"), {"grad_tol": None, "save_every": None, "loss_levels": None}),
}
DEFAULT_METHOD = "auto"
#: with t_end = inf (run until grad_tol), ``save = n`` spans 0 and 1e-2 .. this time
INF_SAVE_END = 1e6

_TOP = {
    "name", "description", "seed", "architectures", "losses", "data", "init", "integrator",
    "flows_per_dataset", "shard_size", "analysis", "report", "quick",
}  # fmt: skip
_DATA = {"m", "noise", "inputs", "target", "n_datasets"}
_INIT = {"scale", "distribution"}
_REPORT = {"title", "sections"}
#: keys that do not change any number of a run (left out of the spec hash)
_EXECUTION_KEYS = ("description", "shard_size", "report", "quick")


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


# ----------------------------------------------------------------------------- sections
def _architecture(ctx, path, a):
    K.table(ctx, path, a)
    K.known(ctx, path, a, {"d0", "k", "s"})
    for key in ("d0", "k"):
        if key not in a:
            raise ctx.error(f"{path}.{key}", "missing (an architecture needs d0 and k)")
    k = a["k"] if isinstance(a["k"], list) else [a["k"]]
    s = a.get("s")
    s = None if s is None else (s if isinstance(s, list) else [s])
    try:
        arch = Architecture(a["d0"], k, s)
    except (TypeError, ValueError) as e:
        msg = str(e)
        head = msg.split(":")[0]
        key = next(
            (k for k in ("d0", "k", "s") if head.startswith((f"{k} ", f"{k}[", f"{k} and"))), None
        )
        if key is None and "stride" in msg:
            key = "s"
        elif key is None and "filter width" in msg:
            key = "k"
        raise ctx.error(f"{path}.{key}" if key else path, msg) from None
    return arch.to_dict()


# the spec warnings already given in this process (catch_warnings above resets Python's own
# once-per-location registry, so a spec read by every step of a run warned at every step)
_WARNED = set()
# > 0 inside spec_warnings_off()
_QUIET = [0]
# the spec hashes whose data spec_checks.datasets_are_usable has drawn in this process
_DATA_CHECKED = set()


@contextlib.contextmanager
def spec_warnings_off():
    """Read specs without their warnings (an lp loss outside Theorem 3.8...): for a spec read
    back from a study directory (warned about when it was run) or listed, not run."""
    _QUIET[0] += 1
    try:
        yield
    finally:
        _QUIET[0] -= 1


def _loss(ctx, path, x):
    if isinstance(x, str):
        x = {"name": x}
    K.table(ctx, path, x)
    K.known(ctx, path, x, {"name", "params"})
    if "name" not in x:
        raise ctx.error(f"{path}.name", "missing")
    params = K.table(ctx, f"{path}.params", x.get("params", {}))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = _losses.from_dict({"name": x["name"], **params})
    except TypeError as e:
        raise ctx.error(f"{path}.params", f"{e} (loss {x['name']!r})") from None
    except ValueError as e:
        key = "name" if "unknown loss" in str(e) else "params"
        raise ctx.error(f"{path}.{key}", str(e)) from None
    for w in caught:
        text = f"{path}: {w.message}"
        if text not in _WARNED and not _QUIET[0]:  # each step of a run reads it: say it once
            _WARNED.add(text)
            warnings.warn(text, UserWarning, stacklevel=4)
    return {"name": loss.name, "params": loss.param_dict}


def _save_times(ctx, path, save, t_end):
    if isinstance(save, list):
        try:
            t = np.asarray(save, dtype=np.float64)
        except (TypeError, ValueError):
            raise ctx.error(path, "must be a whole number or a list of times") from None
        if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
            raise ctx.error(path, "must be a non-empty list of finite times")
        if t.min() < 0 or t.max() > t_end or np.any(np.diff(t) <= 0):
            raise ctx.error(path, f"times must increase strictly within [0, t_end = {t_end:g}]")
        return [float(v) for v in t]
    n = K.whole(ctx, path, save, 2)
    return n


def log_save_times(n, t_end):
    """``n`` save times: 0, then ``n - 1`` log-spaced times from ``t_end * 1e-4`` to ``t_end``
    (``t_end = inf``: from 1e-2 to ``INF_SAVE_END``; the flows stop at their limits before)."""
    if math.isinf(t_end):
        return np.concatenate([[0.0], np.geomspace(1e-2, INF_SAVE_END, n - 1)])
    return np.concatenate([[0.0], np.geomspace(t_end * 1e-4, t_end, n - 1)])


def _t_end(ctx, path, x, grad_tol):
    if isinstance(x, float) and x == math.inf:
        if grad_tol is None:
            raise ctx.error(path, "inf (run until converged) needs grad_tol")
        return math.inf
    return K.real(ctx, path, x, positive=True)


def _integrator(ctx, path, x):
    K.table(ctx, path, x)
    method = x.get("method", DEFAULT_METHOD)
    if method not in METHODS:
        raise ctx.error(f"{path}.method", f"must be one of {sorted(METHODS)}, got {method!r}")
    required, optional = METHODS[method]
    K.known(ctx, path, x, {"method", *required, *optional})
    out = {"method": method}
    for key in required:
        if key not in x:
            raise ctx.error(f"{path}.{key}", f"missing (method {method!r} needs {required})")
    g = x.get("grad_tol")
    grad_tol = None if g is None else K.real(ctx, f"{path}.grad_tol", g, low=0.0)
    if method != "euler":
        out["t_end"] = _t_end(ctx, f"{path}.t_end", x["t_end"], grad_tol)
        out["rtol"] = K.real(ctx, f"{path}.rtol", x.get("rtol", optional["rtol"]), positive=True)
        if out["rtol"] >= 1:  # as lcnfast.gradient_flow
            raise ctx.error(f"{path}.rtol", f"must be < 1 (a relative error), got {out['rtol']!r}")
        out["atol"] = K.real(ctx, f"{path}.atol", x.get("atol", optional["atol"]), low=0.0)
        out["max_steps"] = K.whole(ctx, f"{path}.max_steps", x.get("max_steps", 100_000), 1)
        out["save"] = _save_times(ctx, f"{path}.save", x.get("save", 25), out["t_end"])
    else:
        out["h"] = K.real(ctx, f"{path}.h", x["h"], positive=True)
        out["n_steps"] = K.whole(ctx, f"{path}.n_steps", x["n_steps"], 0)
        se = x.get("save_every")
        out["save_every"] = (
            max(1, out["n_steps"] // 10) if se is None else K.whole(ctx, f"{path}.save_every", se, 1)
        )
    out["grad_tol"] = grad_tol
    levels = _loss_levels(ctx, f"{path}.loss_levels", x.get("loss_levels"))
    if levels is not None:  # absent otherwise: the hashes of specs without events are unchanged
        out["loss_levels"] = levels
    return out


def _loss_levels(ctx, path, x):
    """Event levels as fractions of L(v = 0) (the loss of the zero network), in (0, 1]: each
    flow records the first time its loss is at or below ``q * L(v=0)`` (``t_below``)."""
    if x is None:
        return None
    levels = [K.real(ctx, f"{path}[{i}]", q, positive=True) for i, q in enumerate(K.as_list(x))]
    if not levels or any(q > 1 for q in levels) or len(set(levels)) != len(levels):
        raise ctx.error(path, f"must be distinct fractions of L(v=0) in (0, 1], got {x!r}")
    return levels


def _inputs(ctx, path, x, base_dir):
    if x == "gaussian":
        return "gaussian"
    if isinstance(x, dict) and len(x) == 1:
        (key, val), = x.items()
        if key == "low_rank":
            return {"low_rank": K.whole(ctx, f"{path}.low_rank", val, 1)}
        if key == "gram_singular":
            return {"gram_singular": K.whole(ctx, f"{path}.gram_singular", val, 1)}
        if key == "gram_near_singular":
            eps = K.real(ctx, f"{path}.gram_near_singular", val, positive=True)
            return {"gram_near_singular": eps}
        if key == "file":
            if not isinstance(val, str):
                raise ctx.error(f"{path}.file", f"must be a path string, got {val!r}")
            p = Path(val).expanduser()
            if not p.is_absolute():
                p = (base_dir / p).resolve()
            if not p.is_file():
                raise ctx.error(f"{path}.file", f"no such file: {p}")
            if p.suffix not in (".npz", ".nc"):
                raise ctx.error(f"{path}.file", "must be a .npz or netCDF (.nc) file")
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
            return {"file": str(p), "sha256": digest}
    raise ctx.error(
        path,
        'must be "gaussian", {low_rank = r}, {gram_singular = nullity}, '
        '{gram_near_singular = eps} or {file = "X.npz"}, '
        f"got {x!r}",
    )


def _target(ctx, path, x):
    if x in ("teacher", "gaussian", "file"):
        return x
    if isinstance(x, dict) and set(x) == {"v"}:
        v = x["v"]
        if not isinstance(v, list) or not v:
            raise ctx.error(f"{path}.v", "must be a non-empty list of numbers")
        return {"v": [K.real(ctx, f"{path}.v[{i}]", vi) for i, vi in enumerate(v)]}
    raise ctx.error(
        path, f'must be "teacher", "gaussian", "file" or {{v = [...]}}, got {x!r}'
    )


def _data(ctx, x, base_dir):
    K.table(ctx, "data", x)
    K.known(ctx, "data", x, _DATA)
    out = {}
    ms = K.factor_list(ctx, "data.m", x.get("m", [None]))
    out["m"] = [None if m is None else K.whole(ctx, f"data.m[{i}]", m, 1) for i, m in enumerate(ms)]
    out["noise"] = [
        K.real(ctx, f"data.noise[{i}]", v, low=0.0)
        for i, v in enumerate(K.factor_list(ctx, "data.noise", x.get("noise", 0.0)))
    ]
    inp = K.factor_list(ctx, "data.inputs", x.get("inputs", "gaussian"))
    out["inputs"] = [_inputs(ctx, f"data.inputs[{i}]", v, base_dir) for i, v in enumerate(inp)]
    tg = K.factor_list(ctx, "data.target", x.get("target", "teacher"))
    out["target"] = [_target(ctx, f"data.target[{i}]", v) for i, v in enumerate(tg)]
    out["n_datasets"] = K.whole(ctx, "data.n_datasets", x.get("n_datasets", 1), 1)
    files = [isinstance(i, dict) and "file" in i for i in out["inputs"]]
    if any(files) and any(m is not None for m in out["m"]):
        raise ctx.error("data.m", "do not set m with inputs = {file = ...}: m comes from the file")
    if not all(files) and any(m is None for m in out["m"]):
        raise ctx.error("data.m", "missing (the number of samples; a list makes it a factor)")
    if "file" in out["target"] and not all(files):
        raise ctx.error("data.target", '"file" needs inputs = {file = ...} with a Y array')
    return out


def _init(ctx, x):
    K.table(ctx, "init", x)
    K.known(ctx, "init", x, _INIT)
    scales = [
        K.real(ctx, f"init.scale[{i}]", v, positive=True)
        for i, v in enumerate(K.factor_list(ctx, "init.scale", x.get("scale", 1.0)))
    ]
    dists = K.factor_list(ctx, "init.distribution", x.get("distribution", "gaussian"))
    for i, d in enumerate(dists):
        if d not in ("gaussian", "balanced"):
            raise ctx.error(
                f"init.distribution[{i}]", f'must be "gaussian" or "balanced", got {d!r}'
            )
    return {"scale": scales, "distribution": dists}


def _report(ctx, x, base_dir):
    K.table(ctx, "report", x)
    K.known(ctx, "report", x, _REPORT)
    title = x.get("title")
    if title is not None and not isinstance(title, str):
        raise ctx.error("report.title", "must be a string")
    sections = x.get("sections")
    if sections is not None:
        if not isinstance(sections, str):
            raise ctx.error("report.sections", "must be the path of a Python file")
        p = Path(sections).expanduser()
        p = p if p.is_absolute() else (base_dir / p).resolve()
        if not p.is_file():
            raise ctx.error("report.sections", f"no such file: {p}")
        sections = str(p)
    return {"title": title, "sections": sections}


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
            _architecture(ctx, f"architectures[{i}]", a)
            for i, a in enumerate(K.factor_list(ctx, "architectures", raw["architectures"]))
        ],
        "losses": [
            _loss(ctx, f"losses[{i}]", x)
            for i, x in enumerate(K.factor_list(ctx, "losses", raw.get("losses", "square")))
        ],
        "integrator": [
            _integrator(ctx, f"integrator[{i}]", x)
            for i, x in enumerate(K.factor_list(ctx, "integrator", raw["integrator"]))
        ],
        "data": _data(ctx, raw["data"], base_dir),
        "init": _init(ctx, raw.get("init", {})),
        "flows_per_dataset": K.whole(ctx, "flows_per_dataset", raw.get("flows_per_dataset", 100), 1),
        "analysis": spec_checks.analysis_tolerances(ctx, raw.get("analysis", {})),
        "shard_size": K.whole(ctx, "shard_size", raw.get("shard_size", 256), 1),
        "report": _report(ctx, raw.get("report", {}), base_dir),
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
    return {k: v for k, v in spec.items() if k not in _EXECUTION_KEYS}


def spec_hash(spec):
    """SHA-256 of the canonical JSON of :func:`science_part`."""
    text = json.dumps(science_part(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def spec_diff(a, b, path=""):
    """Key paths where two resolved specs differ (science part only), e.g. ``["data.noise"]``."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if not path and key in _EXECUTION_KEYS:
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
    p = Path(spec).expanduser()
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise SpecError(f"spec: no such file: {p}")
        return p
    builtin = builtin_specs()
    if spec in builtin:
        return builtin[spec]
    local = Path("studies") / f"{spec}.toml"
    if local.is_file():
        return local
    known = ", ".join(builtin) or "none found"
    raise SpecError(f"spec: {spec!r} is neither a .toml file nor a built-in study ({known})")


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
            if raw.pop("format_version") != FORMAT_VERSION:
                raise SpecError("format_version: written by another version of lcnfast.study")
            if raw.pop("quick", False):
                raw["name"] = raw["name"].removesuffix("-quick")
                raw["quick"] = {}
                quick = True
            raw["integrator"] = [_unresolve_integrator(x) for x in raw["integrator"]]
            raw["data"]["inputs"] = [
                {"file": x["file"]} if isinstance(x, dict) and "file" in x else x
                for x in raw["data"]["inputs"]
            ]
            raw["report"] = {k: v for k, v in raw["report"].items() if v is not None}
    else:
        if not isinstance(spec, (str, os.PathLike)):
            raise TypeError(
                f"spec must be a TOML file, a built-in study's name or a dict, got {spec!r}"
            )
        path = _find(spec)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise SpecError(f"{path}: not a UTF-8 TOML file ({e.reason} at byte {e.start})") from None
        source, base = str(path), path.resolve().parent
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise SpecError(f"{path}: invalid TOML: {e}") from None
    ctx = K.Ctx(text, source)
    resolved = _resolve(raw, ctx, base, quick)
    cells, digest = _cells(resolved), spec_hash(resolved)
    spec_checks.shard_count(ctx, resolved, len(cells))
    if digest not in _DATA_CHECKED:  # each step of a run reads the spec: draw once
        spec_checks.datasets_are_usable(ctx, resolved, cells)
        _DATA_CHECKED.add(digest)
    return Study(resolved, digest, cells, source)


def _unresolve_integrator(x):
    out = {k: v for k, v in x.items() if v is not None}
    return out
