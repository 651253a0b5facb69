"""Report sections of the `discrete` study: gradient descent against the gradient flow.

Every gradient-descent run (method euler) is paired with the gradient flow (method auto) from
the same initial point on the same data (the study's seeds make the pairs). Per pair:
``h lambda_max`` at the flow's limit and at gradient descent's end point, the distance of the
two final filters, and gradient descent's outcome:

- *same limit*: converged, and at the flow's limit in function space (the same final filter v
  within ``SAME_V_RTOL`` and the same loss within ``SAME_L_RTOL * L(v=0)``; the parameters
  differ along the rescaling orbit because Euler does not conserve balancedness);
- *other minimiser*: converged elsewhere;
- *2-cycle*: not converged, and two more steps return to the end point (``CYCLE_RTOL``) while
  one step does not;
- *diverged*: non-finite end point;
- *not converged*: none of these (slow convergence, longer cycles, chaos).

The study directory is the parent of ``figures_dir``; the data of each dataset is read from it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast.flows import I
from lcnfast.study import load_problem
from lcnfast.study.claims import check, claims_markdown, estimate_row
from lcnfast.study.report import markdown_table

#: both limits are critical to ||grad L|| <= 1e-8; the filters then agree to ~1e-8 / lambda_min
#: of the function-space Hessian, far inside 1e-5
SAME_V_RTOL = 1e-5
SAME_L_RTOL = 1e-9
#: w_{k+2} = w_k to this relative accuracy (and w_{k+1} != w_k) means a 2-cycle
CYCLE_RTOL = 1e-6
#: a converged fixed point of gradient descent is linearly stable only if h lambda_max <= 2;
#: the allowance covers lambda_max evaluated at an end point within grad_tol of the fixed point
STABLE_TOL = 1e-6
OUTCOMES = ("same limit", "other minimiser", "2-cycle", "diverged", "not converged")
BINS = (0.0, 0.5, 1.0, 1.5, 1.9, 2.1, 3.0, np.inf)


def _h(ds, study):
    cells = {c.index: c for c in study.cells}
    return np.array([cells[c].integrator.get("h", np.nan) for c in ds["cell"].values])


def _lambda_max(problem, W):
    """(K,) largest eigenvalue of the Hessian of L at the rows of W (NaN for non-finite rows)."""
    out = np.full(W.shape[0], np.nan)
    ok = np.all(np.isfinite(W), axis=1) & (np.abs(W).max(axis=1, initial=0) < 1e100)
    with np.errstate(all="ignore"):
        ok[ok] &= np.all(np.isfinite(problem.hessian(W[ok])), axis=(1, 2))
    if ok.any():
        out[ok] = np.linalg.eigvalsh(problem.hessian(W[ok]))[:, -1]
    return out


def _two_steps(problem, W, h):
    """(K,) bool: w_{k+2} returns to w_k within CYCLE_RTOL while w_{k+1} does not; W (K, n),
    h (K,) the step size of each row."""
    h = np.asarray(h, dtype=float)[:, None]
    out = np.zeros(W.shape[0], dtype=bool)
    ok = np.all(np.isfinite(W), axis=1) & (np.abs(W).max(axis=1, initial=0) < 1e100)
    if ok.any():
        w0, hk = W[ok], h[ok]
        w1 = w0 - hk * problem.grad(w0)
        w2 = w1 - hk * problem.grad(w1)
        scale = np.linalg.norm(w0, axis=1)
        out[ok] = (np.linalg.norm(w2 - w0, axis=1) <= CYCLE_RTOL * scale) & (
            np.linalg.norm(w1 - w0, axis=1) > 100 * CYCLE_RTOL * scale
        )
    return out


def pair_table(ds, study, study_dir):
    """One row per gradient-descent flow: ``flow`` (position in ds), ``h``, ``hl_flow``,
    ``hl_end``, ``v_dist`` (relative), ``outcome``, ``drift`` (balance_drift)."""
    h = _h(ds, study)
    is_gd = np.isfinite(h)
    key = list(zip(ds["dataset"].values, ds["replicate"].values))
    flow_of = {k: i for i, k in enumerate(key) if not is_gd[i]}
    W = np.nan_to_num(ds["w_final"].values, nan=0.0)
    rows = []
    for d in np.unique(ds["dataset"].values):
        sel = np.flatnonzero(ds["dataset"].values == d)
        problem = load_problem(study_dir, int(ds["cell"].values[sel[0]]), int(d))
        n = problem.arch.n_params
        Wd = ds["w_final"].values[sel, :n]
        lam = _lambda_max(problem, Wd)
        gd = sel[is_gd[sel]]
        partner = np.array([flow_of[key[i]] for i in gd])
        lam_of = dict(zip(sel, lam))
        scale = float(ds["loss_scale"].values[sel[0]])
        cycles = _two_steps(problem, W[gd, :n], h[gd])  # one batch per dataset
        for i, j, cyc in zip(gd, partner, cycles):
            rows.append(_row(ds, i, j, h[i], lam_of[j], lam_of[i], cyc, scale))
    return pd.DataFrame(rows)


def _row(ds, i, j, h, lam_flow, lam_end, cycle, scale):
    vi, vj = ds["v_final"].values[i], ds["v_final"].values[j]
    ok = np.isfinite(vi) & np.isfinite(vj)
    with np.errstate(all="ignore"):
        v_dist = np.linalg.norm(vi[ok] - vj[ok]) / np.linalg.norm(vj[ok])
    dl = abs(ds["limit_loss"].values[i] - ds["limit_loss"].values[j])
    status = ds["status"].values[i]
    if status == I.NON_FINITE or not (np.all(np.isfinite(vi)) and np.isfinite(v_dist)):
        outcome = "diverged"
    elif status == I.CONVERGED:
        same = v_dist <= SAME_V_RTOL and dl <= SAME_L_RTOL * scale
        outcome = "same limit" if same else "other minimiser"
    elif cycle:
        outcome = "2-cycle"
    else:
        outcome = "not converged"
    return {"flow": i, "h": h, "hl_flow": h * lam_flow, "hl_end": h * lam_end,
            "v_dist": v_dist, "outcome": outcome, "drift": ds["balance_drift"].values[i],
            "converged": status == I.CONVERGED}  # fmt: skip


def _bin_table(pairs):
    rows = []
    cut = pd.cut(pairs["hl_flow"], BINS, right=False)
    for interval, sub in pairs.groupby(cut, observed=True):
        row = {"h lambda_max at the flow's limit": str(interval), "runs": len(sub),
               "h lambda_max at GD's end q50 / max (converged)": " / ".join(
                   f"{v:.3g}" for v in np.nanquantile(sub["hl_end"][sub["converged"]], [0.5, 1.0]))
               if sub["converged"].any() else "–"}  # fmt: skip
        for o in OUTCOMES:
            row[o] = estimate_row(int((sub["outcome"] == o).sum()), len(sub))
        rows.append(row)
    return pd.DataFrame(rows)


def _h_table(pairs):
    rows = []
    for h, sub in pairs.groupby("h"):
        calm = sub[sub["converged"] & (sub["hl_flow"] < 1.9)]
        rows.append({
            "h": h,
            "h lambda_max (flow) q50": float(np.nanmedian(sub["hl_flow"])),
            "converged": estimate_row(int(sub["converged"].sum()), len(sub)),
            "balance drift q50 (converged, h lambda < 1.9)": float(np.median(calm["drift"]))
            if len(calm) else np.nan,
            "drift / h q50": float(np.median(calm["drift"] / h)) if len(calm) else np.nan,
        })  # fmt: skip
    return pd.DataFrame(rows)


def _drift_slope(pairs):
    """Least-squares slope of log(median drift) against log h over the step sizes with
    converged runs below h lambda = 1.9 (Euler: drift = h^2 sum_k (||g_i||^2 - ||g_j||^2)
    ~ h * integral, so slope 1 is predicted)."""
    pts = [
        (np.log(h), np.log(np.median(sub["drift"])))
        for h, sub in pairs[pairs["converged"] & (pairs["hl_flow"] < 1.9)].groupby("h")
        if len(sub) and np.median(sub["drift"]) > 0
    ]
    if len(pts) < 2:
        return np.nan
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def _figure(pairs, figures_dir):
    path = figures_dir / "discrete_outcomes.png"
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for k, o in enumerate(OUTCOMES):
        sub = pairs[pairs["outcome"] == o]
        if len(sub):
            y = np.clip(np.nan_to_num(sub["v_dist"], nan=1e3), 1e-16, 1e3)
            ax.scatter(sub["hl_flow"], y, s=6, color=f"C{k}", label=o, alpha=0.6)
    ax.axvline(2.0, color="k", ls="--", lw=0.8)
    ax.set(xlabel="h lambda_max at the flow's limit", yscale="log",
           ylabel="||v_GD - v_flow|| / ||v_flow|| (clipped)")  # fmt: skip
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    pairs = pair_table(ds, study, figures_dir.parent)
    fig = _figure(pairs, figures_dir)
    K = ds.sizes["flow"]
    ok = np.full(K, np.nan)
    hl_end = np.full(K, np.nan)
    conv = pairs["converged"].values
    ok[pairs["flow"].values[conv]] = pairs["hl_end"].values[conv] <= 2 + STABLE_TOL
    hl_end[pairs["flow"].values] = pairs["hl_end"].values
    claims = [
        check(
            "Every limit of gradient descent is linearly stable: h lambda_max(end point) <= 2",
            f"h lambda_max <= 2 + {STABLE_TOL:g} at end points with ||grad L|| <= grad_tol",
            ok,
            detail={"h lambda_max - 2": hl_end - 2},
        )
    ]
    slope = _drift_slope(pairs)
    return [
        (
            "Claims and verdicts",
            "A run stops once ||grad L|| <= grad_tol. At a fixed point with h lambda_max "
            "slightly above 2 the unstable mode grows by the factor |1 - h lambda_max| per step "
            "(1.004 at 2.004: one e-fold in 250 steps), so a run can stop there while that "
            "mode is still below the tolerance: such an end point is critical but not a limit "
            "of gradient descent, which would leave it. A violation below therefore means "
            "'stopped at a linearly unstable fixed point', with h lambda_max - 2 listed.\n\n"
            + claims_markdown(claims, ds),
        ),
        (
            "Outcome against h lambda_max",
            "Each gradient-descent run against the gradient flow from the same initial point "
            "(outcomes defined in the study's sections module: *same limit* = the same final "
            f"filter within {SAME_V_RTOL:g} and loss within {SAME_L_RTOL:g} L(v=0)). "
            "Where gradient descent reaches the same limit although h lambda_max > 2 at the "
            "flow's limit, it ends at another point of the same critical orbit (the same v, "
            "other layer norms: Euler does not conserve balancedness) where the curvature is "
            "lower: compare the end point's h lambda_max. Intervals: Wilson 95%.\n\n" + markdown_table(_bin_table(pairs)),
        ),
        (
            "Per step size, and Euler's balancedness drift",
            "Euler changes delta_i by exactly h^2 (||g_i||^2 - ||g_{i+1}||^2) per step, so "
            "over a fixed time the drift is ~ h times an integral: predicted slope 1 of log "
            f"drift against log h. Measured slope: **{slope:.3g}**.\n\n"
            + markdown_table(_h_table(pairs)),
        ),
        ("Distance of the limits", f"![outcomes]({figures_dir.name}/{fig.name})"),
    ]
