"""Study-level summaries of a classified flow Dataset."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import xarray as xr

from .points import LABELS


def check_prop51(ds):
    """Study-level test of [7, Prop. 5.1] on a classified Dataset.

    For stride 1 and a convex loss, a critical point whose layer polynomials have no common
    root is a global minimum (the Jacobian of pi then has rank k_v, so ``J^T dL/dv = 0`` forces
    ``dL/dv = 0``). Hence every critical limit that does not attain the convex function-space
    minimum must have a common root.

    Returns
    -------
    dict
        ``applicable`` (bool) and, if so, ``n_nonglobal_critical``, ``n_with_common_root``,
        ``n_with_jac_deficient``, ``all_have_common_roots``, ``all_jac_deficient`` and
        ``violations`` (flow labels of non-global critical limits without a detected common
        root).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "label" not in ds or "analysis" not in ds.attrs:
        raise ValueError("ds has not been classified: run lcnfast.analysis.classify(ds, problem)")
    meta = json.loads(ds.attrs["analysis"])
    if not meta.get("prop51_applicable") or "prop51_ok" not in ds:
        return {
            "applicable": False,
            "reason": "Prop. 5.1 needs stride 1 and a convex loss (generalized Huber: beta >= 0)",
        }
    nonglobal = ds.is_critical.values & ~ds.attains_convex_min.values
    common = ds.has_common_root.values
    jac = ds.jac_deficient.values
    flows = ds["flow"].values
    return {
        "applicable": True,
        "n_nonglobal_critical": int(nonglobal.sum()),
        "n_with_common_root": int((nonglobal & common).sum()),
        "n_with_jac_deficient": int((nonglobal & jac).sum()),
        "all_have_common_roots": bool(np.all(common[nonglobal])),
        "all_jac_deficient": bool(np.all(jac[nonglobal])),
        "violations": flows[nonglobal & ~common].tolist(),
    }


def summarize(ds, quantiles=(0.1, 0.5, 0.9)):
    """A small table per label of a classified flow Dataset (ready for a report).

    Rows: the labels of :data:`LABELS` and ``all``. Columns: ``count``, ``fraction``; loss
    quantiles ``loss_q10``... of ``limit_loss`` (evaluated on the data); time quantiles
    ``t_q10``... of ``t_final`` (when present); ``converged`` (fraction with status 0, when
    present); ``drift_median``, ``drift_max`` (``balance_drift``); fractions ``global``
    (``is_global == 1`` among the flows where it is decided, NaN if none), ``common_root`` (``has_common_root``), ``loss_increased`` when present.
    Statistics of an empty row are NaN. ``df.attrs["prop51"]`` holds :func:`check_prop51`.

    Returns
    -------
    pandas.DataFrame
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "label" not in ds:
        raise ValueError("ds has no 'label': run lcnfast.analysis.classify(ds, problem) first")
    try:
        qs = [float(q) for q in quantiles]
    except TypeError:
        raise TypeError("quantiles must be a sequence of numbers in [0, 1]") from None
    if not all(0 <= q <= 1 for q in qs):
        raise ValueError("quantiles must lie in [0, 1]")
    label = ds.label.values
    K = label.size
    loss = ds.limit_loss.values
    cols = {}
    groups = [(name, label == code) for code, name in enumerate(LABELS)] + [
        ("all", np.ones(K, bool))
    ]

    def q(arr, sel, qq):
        a = arr[sel]
        a = a[np.isfinite(a)]
        return float(np.quantile(a, qq)) if a.size else np.nan

    def frac(arr, sel):
        return float(np.mean(arr[sel])) if sel.any() else np.nan

    for name, sel in groups:
        row = {
            "count": int(sel.sum()),
            "fraction": float(sel.sum()) / K if K else np.nan,
        }
        for qq in qs:
            row[f"loss_q{round(100 * qq)}"] = q(loss, sel, qq)
        if "t_final" in ds:
            for qq in qs:
                row[f"t_q{round(100 * qq)}"] = q(ds.t_final.values, sel, qq)
        if "status" in ds:
            row["converged"] = frac(ds.status.values == 0, sel)
        if "balance_drift" in ds:
            row["drift_median"] = q(ds.balance_drift.values, sel, 0.5)
            row["drift_max"] = q(ds.balance_drift.values, sel, 1.0)
        if "is_global" in ds:
            g = ds.is_global.values.astype(float)
            row["global"] = frac(g == 1.0, sel & np.isfinite(g))
        for var, col in (
            ("has_common_root", "common_root"),
            ("loss_increased", "loss_increased"),
        ):
            if var in ds:
                row[col] = frac(ds[var].values.astype(bool), sel)
        cols[name] = row
    df = pd.DataFrame.from_dict(cols, orient="index")
    df.index.name = "label"
    df.attrs["prop51"] = check_prop51(ds)
    return df
