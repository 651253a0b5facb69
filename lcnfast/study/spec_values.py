"""The values of a study spec's sections, checked and with their defaults filled in:
``architectures``, ``losses``, ``integrator``, ``data``, ``init`` and ``report`` (the format is in
the README, "Study specifications"). :mod:`lcnfast.study.spec` assembles them into the resolved
spec and its grid of cells.

Each of :func:`architecture`, :func:`loss`, :func:`integrator`, :func:`data`, :func:`init`
and :func:`report` returns the resolved, JSON-ready value or raises the
``SpecError`` of ``ctx`` naming the key path and, where it can be found, the TOML line.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import warnings
from pathlib import Path

import numpy as np

from .. import losses as _losses
from ..architecture import Architecture
from . import _keys as K

__all__ = ["architecture", "loss", "integrator", "data", "init", "report", "spec_warnings_off",
           "log_save_times", "METHODS"]

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

_DATA = {"m", "noise", "inputs", "target", "n_datasets"}
_INIT = {"scale", "distribution"}
_REPORT = {"title", "sections"}


def architecture(ctx, path, a):
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


# the spec warnings already given in this process (the catch_warnings of loss() resets
# Python's own once-per-location registry, so a spec read by every step of a run warned at
# every step)
_WARNED = set()
# > 0 inside spec_warnings_off()
_QUIET = [0]


@contextlib.contextmanager
def spec_warnings_off():
    """Read specs without their warnings (an lp loss outside Theorem 3.8...): for a spec read
    back from a study directory (warned about when it was run) or listed, not run."""
    _QUIET[0] += 1
    try:
        yield
    finally:
        _QUIET[0] -= 1


def loss(ctx, path, x):
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


def integrator(ctx, path, x):
    K.table(ctx, path, x)
    method = x.get("method", DEFAULT_METHOD)
    if not isinstance(method, str) or method not in METHODS:
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
    if ctx.stored and isinstance(x, dict) and set(x) == {"file", "sha256"}:
        return _recorded_file(ctx, path, x)
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


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _recorded_file(ctx, path, x):
    """A data file as a run recorded it, ``{file = absolute path, sha256 = its hash}``, not
    read: its X and Y are in the study's datasets, and it may have moved or changed since."""
    if not (isinstance(x["file"], str) and Path(x["file"]).is_absolute()):
        raise ctx.error(f"{path}.file", f"must be an absolute path, got {x['file']!r}")
    if not (isinstance(x["sha256"], str) and _SHA256_RE.match(x["sha256"])):
        raise ctx.error(f"{path}.sha256", f"must be a SHA-256 in hex, got {x['sha256']!r}")
    return dict(x)


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


def data(ctx, x, base_dir):
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


def init(ctx, x):
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


def report(ctx, x, base_dir):
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
        if not ctx.stored and not p.is_file():  # a stored spec's: the report says if it is gone
            raise ctx.error("report.sections", f"no such file: {p}")
        sections = str(p)
    return {"title": title, "sections": sections}

