"""The labels of a study's factor levels: short (``"(16; 3,3; 1,1)"``, ``"pseudo_huber(delta=1)"``,
``"rk45(t_end=200, rtol=1e-08)"``), as the report's tables, the figures' titles and the
``flow`` MultiIndex of :func:`lcnfast.study.load` show them, and distinct for distinct values.

Private helper of :mod:`lcnfast.study.spec`.
"""

from __future__ import annotations

import json
from pathlib import Path


def level_labels(spec):
    """Short, unique labels for the values of each factor."""

    def arch_label(a):
        k = ",".join(map(str, a["k"]))
        s = ",".join(map(str, a["s"]))
        return f"({a['d0']}; {k}; {s})"

    def loss_label(x):
        p = ", ".join(f"{k}={v:g}" for k, v in x["params"].items())
        return f"{x['name']}({p})" if p else x["name"]

    def integ_label(x):
        if x["method"] == "euler":
            return f"euler(h={x['h']:g}, n_steps={x['n_steps']})"
        return f"{x['method']}(t_end={x['t_end']:g}, rtol={x['rtol']:g})"

    def inputs_label(x):
        if x == "gaussian":
            return x
        (k, v), = ((k, v) for k, v in x.items() if k != "sha256")
        return f"file:{Path(v).name}" if k == "file" else f"{k}={v}"

    def inputs_exact(x, group):
        # files of the same name in different folders: as many trailing path parts as tell
        # them apart (file:da/data.npz, file:db/data.npz)
        mine = Path(x["file"]).parts
        others = [Path(g["file"]).parts for g in group if g != x]
        n = next((n for n in range(2, len(mine) + 1)
                  if all(o[-n:] != mine[-n:] for o in others)), len(mine))
        return "file:" + "/".join(mine[-n:])

    def target_label(x):
        if isinstance(x, str):
            return x
        return "v=[" + ", ".join(f"{v:g}" for v in x["v"]) + "]"

    def loss_exact(x, group):
        p = ", ".join(f"{k}={v!r}" for k, v in x["params"].items())
        return f"{x['name']}({p})"

    def integ_exact(x, group):
        differ = [k for k in x if len({json.dumps(g.get(k)) for g in group}) > 1]
        return integ_label(x)[:-1] + "".join(f", {k}={x[k]}" for k in differ) + ")"

    def target_exact(x, group):
        return "v=[" + ", ".join(f"{v!r}" for v in x["v"]) + "]"

    d, i = spec["data"], spec["init"]
    return {
        "architecture": [arch_label(a) for a in spec["architectures"]],
        "loss": _distinct([loss_label(x) for x in spec["losses"]], spec["losses"], loss_exact),
        "integrator": _distinct([integ_label(x) for x in spec["integrator"]], spec["integrator"],
                                integ_exact),
        "m": [-1 if m is None else m for m in d["m"]],
        "noise": d["noise"],
        "inputs": _distinct([inputs_label(x) for x in d["inputs"]], d["inputs"], inputs_exact),
        "target": _distinct([target_label(x) for x in d["target"]], d["target"], target_exact),
        "init_scale": i["scale"],
        "init_distribution": i["distribution"],
    }


def _distinct(labels, values, exact):
    """``labels`` where labels of different values coincide (two integrators that differ only
    in grad_tol, two deltas equal to 6 digits) relabelled by ``exact(value, group)``: full
    precision numbers, for an integrator the settings that differ in the group. Equal
    values keep equal labels (spec_checks.distinct_levels refuses them)."""
    out = list(labels)
    for lab in set(labels):
        idx = [j for j, other in enumerate(labels) if other == lab]
        group = [values[j] for j in idx]
        if len({json.dumps(v, sort_keys=True) for v in group}) > 1:
            for j in idx:
                out[j] = exact(values[j], group)
    return out
