"""The numbers of a study's report, per cell: label fractions with Wilson intervals, the
fraction at the global minimum, the Prop. 5.1 and Lemma 3.6 checks and their violations, and
the integration's quantiles (:func:`cell_summary`), from the Dataset of
:func:`lcnfast.study.load`. :mod:`lcnfast.study.report` writes them as markdown.

Every fraction counts all the flows of its cell (diverged ones too) unless its name says
otherwise; quantiles are over the flows with a finite value and say how many those are.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

from ..analysis import LABELS
from ..flows import STATUS
from .figures import QUANTILES as _Q
from .spec import FACTORS

__all__ = ["wilson", "at_reference", "cell_summary", "varying_factors", "prop51_violations",
           "bound_violations", "BOUND_RTOL"]

#: relative allowance for rounding in ``v_l1_max <= bound`` (as lcnfast.analysis.rank_report)
BOUND_RTOL = 1e-9


def wilson(k, n, confidence=0.95):
    """Wilson score interval ``(low, high)`` for ``k`` successes in ``n`` trials (scipy's
    ``binomtest(k, n).proportion_ci(method="wilson")``); ``(nan, nan)`` when ``n = 0``."""
    if n == 0:
        return (np.nan, np.nan)
    ci = scipy.stats.binomtest(int(k), int(n)).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return (float(ci.low), float(ci.high))


def _quantiles(x, name):
    """``{name_q10: ..., name_q50: ..., name_q90: ..., name_n: ...}``: the quantiles over the
    finite values of x and their number ``name_n`` (the denominator: a diverged flow's value
    is often inf or NaN, and would otherwise leave the quantiles unnoticed)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    qs = np.quantile(x, _Q) if x.size else np.full(len(_Q), np.nan)
    return {**{f"{name}_q{round(100 * q)}": float(v) for q, v in zip(_Q, qs)},
            f"{name}_n": int(x.size)}  # fmt: skip


def _label_stats(sub, eig_tol):
    label = sub["label"].values
    out = {f"frac_{name}": float(np.mean(label == code)) for code, name in enumerate(LABELS)}
    out.update(_relative_only_degenerate(sub, label, eig_tol))
    return out


def _relative_only_degenerate(sub, label, eig_tol):
    """``n_degenerate_pd``: flows labelled degenerate whose balanced projected Hessian is
    positive definite above what a degenerate direction shows at the limit's gradient norm g,
    ``max(12 rho^(1/3) (g/4)^(2/3), g^(2/3), eps L(v=0))``: along a quartic direction
    ``L = c delta^4`` the gradient ``g = 4 c delta^3`` comes with the eigenvalue
    ``12 c delta^2 = 12 c^(1/3) (g/4)^(2/3)``, here with c up to rho (the largest
    |eigenvalue|, the Hessian's own scale), and at most ``eig_tol * rho`` (the study's
    analysis tolerance): only the relative part of lcnfast.analysis's threshold calls their
    smallest eigenvalue zero. Ill-conditioned minima, e.g. on data with a nearly singular
    window Gram (measured: lambda_min / g^(2/3) ~ 35-8000 there, ~3-11
    at the quartic common-root limits of the `limits` study, which this leaves out).
    ``degenerate_pd_ratio_min/max``: the range of lambda_min / rho over them."""
    need = ("hess_min_eig_balanced", "hess_scale_balanced", "limit_grad_norm")
    if not all(v in sub for v in need):
        return {"n_degenerate_pd": 0}
    lam = sub["hess_min_eig_balanced"].values
    rho = sub["hess_scale_balanced"].values
    with np.errstate(invalid="ignore"):
        g = np.abs(sub["limit_grad_norm"].values)
        # never below the analysis' own floor g^(2/3) (rho ~ 0 at an l_p interpolating limit)
        floor = np.fmax(12.0 * np.cbrt(rho) * (g / 4.0) ** (2.0 / 3.0), g ** (2.0 / 3.0))
        if "loss_scale" in sub:
            floor = np.fmax(floor, np.finfo(float).eps * sub["loss_scale"].values)
        pd_ = (label == LABELS.index("degenerate")) & (lam > floor) & (lam <= eig_tol * rho)
        ratio = lam[pd_] / rho[pd_]
    return {"n_degenerate_pd": int(pd_.sum()),
            "degenerate_pd_ratio_min": float(ratio.min()) if ratio.size else np.nan,
            "degenerate_pd_ratio_max": float(ratio.max()) if ratio.size else np.nan}  # fmt: skip


def _global_known(sub):
    """Whether the analysis knows the global minimum over w for these flows (a convex loss:
    ``loss_global_min`` is finite, ``is_global`` decided for every finite limit)."""
    known = [np.isfinite(sub[v].values).any() for v in ("is_global", "loss_global_min") if v in sub]
    return any(known)


def at_reference(sub):
    """``(hit, reference)`` for the flows ``sub`` (a cell's, or any group's): per flow, at the
    global minimum over w where the analysis knows it (``is_global == 1``, reference
    ``"global"``; a diverged flow, ``is_global`` NaN, is not), else at the best value found in
    its dataset (``reached_best``, reference ``"best found"``). The report's tables and the
    studies' own sections count with it, so that they agree."""
    if _global_known(sub):
        return sub["is_global"].values == 1, "global"
    return sub["reached_best"].values.astype(bool), "best found"


def _reference_stats(sub):
    """Fraction at the global minimum over w (``is_global``) where the analysis knows it, or
    else at the best value found (``reached_best``), with its Wilson interval.

    The denominator ``n_ref`` is every flow of the cell: a flow without a finite limit
    (diverged: ``is_global`` NaN, ``reached_best`` false) counts as not at the reference.
    Counting only the flows where ``is_global`` is decided made 1 global flow among 16, 15 of
    them diverged, read "1 [0.207, 1]".
    """
    hit, ref = at_reference(sub)
    k, n = int(hit.sum()), hit.size
    lo, hi = wilson(k, n)
    return {"reference": ref, "k_ref": k, "n_ref": n, "frac_ref": k / n if n else np.nan,
            "ref_lo": lo, "ref_hi": hi}  # fmt: skip


def _prop51_mask(sub):
    """Boolean masks over flows: Prop. 5.1 applies (``prop51_ok`` is not NaN: stride 1 and a
    convex loss), the limit is critical and not at the convex minimum, it has a common root."""
    K = sub.sizes["flow"]
    ok = sub["prop51_ok"].values.astype(float) if "prop51_ok" in sub else np.full(K, np.nan)
    applicable = np.isfinite(ok)
    nonglobal = applicable & sub["is_critical"].values.astype(bool)
    if "attains_convex_min" in sub:
        nonglobal &= ~sub["attains_convex_min"].values.astype(bool)
    return applicable, nonglobal, sub["has_common_root"].values.astype(bool)


def _prop51_stats(sub):
    applicable, nonglobal, common = _prop51_mask(sub)
    if not applicable.any():
        return {"prop51": False}
    jac = sub["jac_deficient"].values.astype(bool)
    return {
        "prop51": True,
        "n_nonglobal_critical": int(nonglobal.sum()),
        "n_common_root": int((nonglobal & common).sum()),
        "n_jac_deficient": int((nonglobal & jac).sum()),
        "n_prop51_violations": int((nonglobal & ~common).sum()),
    }


def _above(obs, b):
    """Flows whose ``v_l1_max`` (``obs``) is not within their finite bound ``b``: above it,
    or not finite (a diverged flow: inf or NaN)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(b) & ~(obs <= b * (1 + BOUND_RTOL))


def _bound_stats(sub):
    """Per bound (``lemma36``, ``gram``): ``n_<key>`` flows where it applies (a finite bound),
    ``n_<key>_ok`` of them within it (a flow whose ``v_l1_max`` is not finite, diverged, is
    not), ``n_<key>_nonfinite`` of them with a non-finite ``v_l1_max``, and the quantiles of
    bound / v_l1_max over them (0 for an infinite v_l1_max)."""
    out = {}
    obs = sub["v_l1_max"].values
    for key, var in (("lemma36", "lemma36_bound"), ("gram", "gram_bound")):
        b = sub[var].values if var in sub else np.full(obs.shape, np.nan)
        applies = np.isfinite(b)
        out[f"n_{key}"] = int(applies.sum())
        out[f"n_{key}_ok"] = int((applies & ~_above(obs, b)).sum())
        out[f"n_{key}_nonfinite"] = int((applies & ~np.isfinite(obs)).sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            out.update(_quantiles(b[applies] / obs[applies], f"{key}_ratio"))
    return out


def _integration_stats(sub):
    out = {}
    out.update(_quantiles(sub["t_final"].values, "t_final"))
    out.update(_quantiles(sub["n_accepted"].values + sub["n_rejected"].values, "steps"))
    out.update(_quantiles(sub["n_grad_evals"].values, "grad_evals"))
    out.update(_quantiles(sub["balance_drift"].values, "drift"))
    out["n_loss_increased"] = int(sub["loss_increased"].values.astype(bool).sum())
    status = sub["status"].values
    out.update({f"status_{name}": int((status == code).sum()) for code, name in STATUS.items()})
    return out


def varying_factors(study):
    """The factors with more than one level in the study, in grid order."""
    return [f for f in FACTORS if len({str(c.labels[f]) for c in study.cells}) > 1]


def cell_summary(ds, study):
    """One row per cell of the study (index ``cell``; cells without flows yet have
    ``n_flows = 0`` and NaN): the labels of the varying factors, ``n_flows``, ``n_expected``,
    ``frac_<label>`` per label, the reference fraction (``reference`` = "global" or "best
    found", ``k_ref`` of ``n_ref`` = all the cell's flows, diverged ones counted as not at
    the reference, ``frac_ref``, Wilson ``ref_lo``, ``ref_hi``), Prop. 5.1 counts (``prop51``
    applicable, ``n_nonglobal_critical``, ``n_common_root``, ``n_jac_deficient``,
    ``n_prop51_violations``), bounds (``n_lemma36`` flows with a bound, ``n_lemma36_ok``
    within it, ``n_lemma36_nonfinite`` with a non-finite v_l1_max, ``lemma36_ratio_q10/50/90``
    = bound / v_l1_max; the same for ``gram``), and quantiles ``t_final_q*``, ``steps_q*``
    (accepted + rejected), ``grad_evals_q*``, ``drift_q*`` (balance_drift),
    ``n_loss_increased``, ``status_<name>``, ``n_degenerate_pd`` (degenerate only by the
    relative eig_tol, with ``degenerate_pd_ratio_min/max``). Every quantile ``<name>_q*``
    comes with ``<name>_n``, the number of finite values it is taken over.
    """
    varying = varying_factors(study)
    n_expected = study.spec["data"]["n_datasets"] * study.spec["flows_per_dataset"]
    cell_of_flow = ds["cell"].values
    rows = {}
    for c in study.cells:
        row = {f: c.labels[f] for f in varying}
        sel = np.flatnonzero(cell_of_flow == c.index)
        row.update(n_flows=sel.size, n_expected=n_expected)
        if sel.size:
            sub = ds.isel(flow=sel)
            row.update(_label_stats(sub, study.spec["analysis"]["eig_tol"]))
            for part in (_reference_stats, _prop51_stats, _bound_stats, _integration_stats):
                row.update(part(sub))
        rows[c.index] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "cell"
    return df


def _flow_coords(ds, sel):
    """The coordinates (cell, dataset, replicate) of the flows ``sel`` (a boolean mask)."""
    return {k: ds[k].values[sel] for k in ("cell", "dataset", "replicate")}


def prop51_violations(ds):
    """Every flow that violates Prop. 5.1: stride 1, convex loss, a critical limit not at the
    convex minimum and no common root of the layer polynomials. Columns: ``cell``,
    ``dataset``, ``replicate``, ``label``, ``limit_loss``, ``loss_gap``,
    ``min_root_distance``, ``jac_deficient`` (a rank-deficient Jacobian of pi would still
    indicate a common root the root test missed)."""
    _, nonglobal, common = _prop51_mask(ds)
    sel = nonglobal & ~common
    out = _flow_coords(ds, sel)
    out["label"] = [LABELS[k] for k in ds["label"].values[sel]]
    for var in ("limit_loss", "loss_gap", "min_root_distance", "jac_deficient"):
        out[var] = ds[var].values[sel] if var in ds else np.full(sel.sum(), np.nan)
    return pd.DataFrame(out)


def bound_violations(ds):
    """Every flow with ``v_l1_max`` above its bound (Lemma 3.6, or the Gram bound of
    :func:`lcnfast.analysis.rank_report`) or not finite (diverged), as counted in the report's
    table. Columns: ``cell``, ``dataset``, ``replicate``, ``bound`` (which), ``v_l1_max``,
    ``value`` (the bound)."""
    parts = []
    obs = ds["v_l1_max"].values
    for name, var in (("Lemma 3.6", "lemma36_bound"), ("Gram", "gram_bound")):
        if var not in ds:
            continue
        b = ds[var].values
        sel = _above(obs, b)
        part = _flow_coords(ds, sel)
        part.update(bound=name, v_l1_max=obs[sel], value=b[sel])
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
