"""Report sections of the `convergence` study: Theorems 3.4 / 3.8, Lemmas 3.3 and 3.6.

``sections(ds, study, figures_dir)`` (the ``report.sections`` hook of lcnfast.study) returns
the claims with verdicts, a table per loss and per architecture, and a figure of the distance
to the limit over time.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast.flows import I
from lcnfast.study.claims import (
    bound_checks,
    check,
    claims_markdown,
    estimate_row,
    quantiles_row,
)  # fmt: skip
from lcnfast.study.report import markdown_table

#: balancedness drift allowed, in units of rtol * (1 + max ||w||^2): delta_i is quadratic in w,
#: so a relative error rtol in w moves it by ~2 rtol ||w||^2 per unit of accumulated error;
#: 1e3 leaves room for the accumulation over the ~10^2-10^3 steps of a flow
DRIFT_FACTOR = 1e3


def per_flow_cells(ds, study):
    """(K,) arrays over the study's flows: the cell's Loss and Architecture objects."""
    cells = {c.index: c for c in study.cells}
    cell = ds["cell"].values
    return [cells[c].loss_fn() for c in cell], [cells[c].arch() for c in cell]


def _rtol(ds, study):
    cells = {c.index: c for c in study.cells}
    return np.array([cells[c].integrator.get("rtol", np.nan) for c in ds["cell"].values])


def _claims(ds, study):
    losses, _ = per_flow_cells(ds, study)
    covered = np.array([loss.analytic for loss in losses])
    converged = ds["status"].values == I.CONVERGED
    gn = ds["grad_norm_final"].values
    drift_scale = _rtol(ds, study) * (1.0 + ds["w_norm_max"].values ** 2)
    drift_ratio = ds["balance_drift"].values / drift_scale
    grad_tol = study.spec["integrator"][0]["grad_tol"]
    checks = [
        check(
            "Thm 3.4 / 3.8: every flow converges to a critical point (losses the theorem covers)",
            f"||grad L(w(T))|| <= grad_tol = {grad_tol:g} reached within max_steps (a finite "
            "run can show the gradient vanish, not w converge: see the distance to the limit "
            "below)",
            converged,
            applies=covered,
            detail={"grad_norm_final": gn, "t_final": ds["t_final"].values,
                    "status": ds["status"].values},  # fmt: skip
        ),
        check(
            "Lemma 3.3: the balancedness delta_i(t) is constant",
            f"drift <= {DRIFT_FACTOR:g} * rtol * (1 + max ||w||^2) (delta is quadratic in w; "
            "room for error accumulated over the steps)",
            drift_ratio <= DRIFT_FACTOR,
            applies=np.isfinite(drift_ratio),
            detail={"balance_drift": ds["balance_drift"].values, "drift/scale": drift_ratio},
        ),
        check(
            "L(w(t)) is non-increasing",
            "no accepted step increases L by more than 64 eps * max(L(0), L(v=0)) (rounding)",
            ~ds["loss_increased"].values.astype(bool),
            detail={"max_loss_increase": ds["max_loss_increase"].values},
        ),
    ]
    checks += bound_checks(ds)
    return checks


def _table_by(ds, study, key):
    """One row per level of ``key`` ("loss_fn" or "architecture")."""
    losses, _ = per_flow_cells(ds, study)
    covered = np.array([loss.analytic for loss in losses])
    rows = []
    for level in dict.fromkeys(ds[key].values):
        sel = ds[key].values == level
        sub = ds.isel(flow=np.flatnonzero(sel))
        conv = sub["status"].values == I.CONVERGED
        with np.errstate(divide="ignore", invalid="ignore"):
            loose = sub["lemma36_bound"].values / sub["v_l1_max"].values
        row = {key: level}
        if key == "loss_fn":
            row["Thm 3.8 covers"] = bool(covered[sel].all())
        row.update({
            "converged [95% CI]": estimate_row(int(conv.sum()), conv.size),
            "grad norm q50 / max": quantiles_row(sub["grad_norm_final"].values, (0.5, 1.0)),
            "distance to limit (Newton) q50 / q90": (
                quantiles_row(sub["newton_step_final"].values) if "newton_step_final" in sub else "–"
            ),
            "t_final q50 / q90": quantiles_row(sub["t_final"].values),
            "steps q50 / q90": quantiles_row(sub["n_accepted"].values + sub["n_rejected"].values),
            "Lemma 3.6 bound / sup ||v||_1 q10 / q50": quantiles_row(loose, (0.1, 0.5)),
        })  # fmt: skip
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def _distance_figure(ds, figures_dir):
    """||w(t) - w(T)|| at the saved times, median and 10-90% band per loss (log-log)."""
    path = figures_dir / "convergence_distance.png"
    t = ds["time"].values
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, level in enumerate(dict.fromkeys(ds["loss_fn"].values)):
        sub = ds.isel(flow=np.flatnonzero(ds["loss_fn"].values == level))
        # parameters are the union over architectures (NaN where a flow has none); saved
        # states are NaN after the flow stopped
        diff = sub["w"].transpose("flow", "time", "param").values - sub["w_final"].values[:, None]
        saved = np.isfinite(diff).any(axis=2)
        d = np.where(saved, np.sqrt(np.nansum(diff**2, axis=2)), np.nan)
        with warnings.catch_warnings():  # times after every flow stopped: all NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, med, hi = np.nanquantile(np.where(d > 0, d, np.nan), [0.1, 0.5, 0.9], axis=0)
        ok = np.isfinite(med) & (t > 0)
        color = f"C{i % 10}"
        ax.plot(t[ok], med[ok], color=color, label=str(level))
        ax.fill_between(t[ok], lo[ok], hi[ok], color=color, alpha=0.15, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="time t", ylabel="||w(t) - w(T)||_2")
    ax.set_title("distance to the final point (median, 10-90%), per loss")
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    fig = _distance_figure(ds, figures_dir)
    grad_tol = study.spec["integrator"][0]["grad_tol"]
    text_claims = (
        "Each claim is checked on every flow it applies to. The statements are proven, so "
        "the verdicts are consistency checks of the computed flows: a violation would point "
        "at the integrator, the analysis or an unmet hypothesis, not at the paper; a bound "
        "far above the observed values (the Lemma 3.6 column below) can only catch such "
        "errors. The losses l_3 and l_1.5 are outside Theorem 3.8 (not analytic); their "
        "outcomes are in the tables below, not in the verdicts.\n\n"
        + claims_markdown(_claims(ds, study), ds)
    )
    text_loss = (
        f"*converged*: ||grad L|| <= {grad_tol:g} within max_steps, with Wilson 95% "
        "intervals. *distance to limit*: the last Newton-like correction "
        "||(Hess L)^+ grad L|| at the end point (an estimate of ||w(T) - w_inf||; "
        "rosenbrock/auto only). *bound / sup ||v||_1*: how loose Lemma 3.6 is.\n\n"
        + _table_by(ds, study, "loss_fn")
    )
    text_arch = _table_by(ds, study, "architecture")
    text_fig = (
        "||w(t) - w(T)|| at the saved times. It reaches 0 at t = T by construction, so the "
        "figure is no evidence of convergence by itself; what it shows is how the flows "
        "approach their end points: a straight line on these log-log axes is a power law "
        "(as near degenerate limits), a curve that bends down is exponential (as at "
        "Morse-Bott minima).\n\n"
        f"![distance to the limit]({figures_dir.name}/{fig.name})"
    )
    return [
        ("Claims and verdicts", text_claims),
        ("Convergence per loss", text_loss),
        ("Convergence per architecture", text_arch),
        ("Distance to the limit over time", text_fig),
    ]
