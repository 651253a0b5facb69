"""Report sections of the `rank` study: which rank condition decides convergence?

``sections(ds, study, figures_dir)`` returns the claims with verdicts (Theorem 3.4 under
full-rank X X^T; Theorem 3.4 with the Gram bound when only the window Gram A is positive
definite; the bounds of Lemma 3.6 and of the Gram), the open case of a singular A as an
estimate, a table per cell (growth of ||w(t)||, the component of v in the
kernel of A, gradient norms), and a figure of ||w(t)||. The study directory is the parent of
``figures_dir``: the data of each dataset is read from it (:func:`lcnfast.study.load_problem`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast.flows import I
from lcnfast.study import load_problem
from lcnfast.study.claims import (
    bound_checks,
    check,
    claims_markdown,
    estimate_row,
    quantiles_row,
)  # fmt: skip
from lcnfast.study.report import markdown_table

#: ||w|| grew when ||w(T)|| / ||w(T/10)|| exceeds this: a converged flow's norm changes by
#: O(distance to the limit) << 1% over its last decade of time
GROWTH = 1.01


def w_norms(ds):
    """(K, T) ||w(t)|| at the saved times (NaN after a flow stopped; parameters are the union
    over architectures, NaN-padded)."""
    w = ds["w"].transpose("flow", "time", "param").values
    saved = np.isfinite(w).any(axis=2)
    return np.where(saved, np.sqrt(np.nansum(w**2, axis=2)), np.nan)


def growth_ratio(ds, norms):
    """(K,) ||w(T)|| / ||w(t)|| for the last saved t <= T / 10 (T = t_final); NaN without such t."""
    t = ds["time"].values
    T = ds["t_final"].values
    wT = np.sqrt(np.nansum(ds["w_final"].values ** 2, axis=1))
    out = np.full(T.shape, np.nan)
    for f in range(T.size):
        idx = np.flatnonzero((t <= T[f] / 10) & np.isfinite(norms[f]))
        if idx.size:
            out[f] = wT[f] / norms[f, idx[-1]]
    return out


def kernel_component(ds, study_dir):
    """(K, 2): lambda_min(A) / lambda_max(A) of the flow's dataset, and |u^T v_final| /
    ||v_final|| for u the eigenvector of the smallest eigenvalue of A (the kernel direction when
    A is singular)."""
    out = np.full((ds.sizes["flow"], 2), np.nan)
    cell, dset = ds["cell"].values, ds["dataset"].values
    v = ds["v_final"].values
    for c, d in {(int(a), int(b)) for a, b in zip(cell, dset)}:
        A = load_problem(study_dir, c, d).A
        ev, U = np.linalg.eigh(A)
        sel = np.flatnonzero((cell == c) & (dset == d))
        k = A.shape[0]
        vs = v[sel, :k]
        out[sel, 0] = ev[0] / ev[-1]
        out[sel, 1] = np.abs(vs @ U[:, 0]) / np.linalg.norm(vs, axis=1)
    return out


def _cell_rows(ds, study, growth, kern):
    rows = []
    for c in study.cells:
        sel = np.flatnonzero(ds["cell"].values == c.index)
        if sel.size == 0:
            continue
        sub = ds.isel(flow=sel)
        conv = sub["status"].values == I.CONVERGED
        rows.append({
            "cell": c.index,
            "architecture": c.labels["architecture"],
            "m": c.labels["m"],
            "inputs": c.labels["inputs"],
            "target": c.labels["target"],
            "X X^T full rank": bool(sub["xxt_full_rank"].values.all()),
            "A pos. def.": bool(sub["gram_pd"].values.all()),
            "lambda_min / lambda_max of A": quantiles_row(kern[sel, 0], (0.5,)),
            "converged [95% CI]": estimate_row(int(conv.sum()), conv.size),
            "grad norm q50 / max": quantiles_row(sub["grad_norm_final"].values, (0.5, 1.0)),
            "sup ||w|| q50 / max": quantiles_row(sub["w_norm_max"].values, (0.5, 1.0)),
            "||w(T)|| / ||w(T/10)|| q50 / max": quantiles_row(growth[sel], (0.5, 1.0)),
            "kernel component of v q50 / max": quantiles_row(kern[sel, 1], (0.5, 1.0)),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _claims(ds, growth):
    # a flow whose gradient stalls at the float64 floor of its integrator (grad_floor of
    # lcnfast.analysis: lambda_max ||w|| eps for RODAS) while ||w|| no longer grows has
    # converged as far as double precision can tell
    # (measured: flows of the nearly singular cells stop at max_steps with ||grad L|| ~ 6e-10
    # at lambda_max ~ 1e6, ||w|| ~ 27, where float64 resolves the gradient to ~6e-9; rerun with
    # 20x the steps they wander between 7e-11 and 2e-9 at the same point)
    floor = ds["at_grad_floor"].values.astype(bool) if "at_grad_floor" in ds else False
    critical = ds["is_critical"].values.astype(bool)
    with np.errstate(invalid="ignore"):
        settled = (floor | critical) & ~(growth > GROWTH)
    converged = (ds["status"].values == I.CONVERGED) | settled
    full = ds["xxt_full_rank"].values.astype(bool)
    pd_ = ds["gram_pd"].values.astype(bool)
    detail = {"status": ds["status"].values, "grad_norm_final": ds["grad_norm_final"].values,
              "w_norm_max": ds["w_norm_max"].values, "growth": growth}  # fmt: skip
    checks = [
        check(
            "Thm 3.4: with X X^T of full rank every flow converges",
            "||grad L|| <= the integrator's grad_tol; or, stopped by max_steps, critical to "
            "the analysis' grad_tol or at the integrator's float64 floor (at_grad_floor), "
            f"with ||w(T)|| / ||w(T/10)|| <= {GROWTH:g}",
            converged,
            applies=full,
            detail=detail,
        ),
        check(
            "Thm 3.4 (2) with the Gram bound: with A positive definite every flow converges "
            "(X X^T rank-deficient)",
            "as above",
            converged,
            applies=pd_ & ~full,
            detail=detail,
        ),
    ]
    checks += bound_checks(ds)
    return checks, converged, pd_


def _open_case(converged, pd_):
    """Markdown: the estimate for the flows whose window Gram A is singular."""
    singular = ~pd_
    if not singular.any():
        return "*Open case, A singular*: no flow of this study has a singular A."
    return (
        "*Open case, A singular* (v -> VX has a kernel: L is constant along it, so no bound "
        "(3.4) of ||v||_1 by L exists): flows that converged by the claims' test above: "
        f"{estimate_row(int(converged[singular].sum()), int(singular.sum()))} (Wilson 95%). "
        "The paper says nothing here: this is an observation, not a verdict."
    )


def _norm_figure(ds, norms, figures_dir):
    """Median and 10-90% band of ||w(t)|| per inputs kind, one panel per architecture."""
    path = figures_dir / "rank_w_norm.png"
    t = ds["time"].values
    archs = list(dict.fromkeys(ds["architecture"].values))
    fig = Figure(figsize=(5 * len(archs), 3.8), layout="constrained")
    axes = fig.subplots(1, len(archs), squeeze=False)
    for ax, a in zip(axes[0], archs):
        for i, inp in enumerate(dict.fromkeys(ds["inputs"].values)):
            for j, m in enumerate(sorted(set(ds["m"].values))):
                sel = (ds["architecture"].values == a) & (ds["inputs"].values == inp)
                sel &= ds["m"].values == m
                if not sel.any():
                    continue
                n = norms[sel]
                # a stopped flow keeps its last state: carry it forward for the bands
                n = pd.DataFrame(n.T).ffill().values.T
                with np.errstate(all="ignore"):
                    lo, med, hi = np.nanquantile(n, [0.1, 0.5, 0.9], axis=0)
                ok = t > 0
                ls = ("-", "--", ":")[j % 3]
                ax.plot(t[ok], med[ok], color=f"C{i}", ls=ls, label=f"{inp}, m={m}")
                ax.fill_between(t[ok], lo[ok], hi[ok], color=f"C{i}", alpha=0.1, lw=0)
        ax.set(xscale="log", yscale="log", xlabel="time t", ylabel="||w(t)||", title=str(a))
        ax.legend(fontsize=6)
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    norms = w_norms(ds)
    growth = growth_ratio(ds, norms)
    kern = kernel_component(ds, figures_dir.parent)
    fig = _norm_figure(ds, norms, figures_dir)
    checks, converged, pd_ = _claims(ds, growth)
    return [
        (
            "Claims and verdicts",
            "The paper proves convergence when X X^T has full rank: Theorem 3.4 (2) needs "
            "only condition (3.4), a bound of ||pi(w)||_1 by a non-decreasing function of "
            "L, and Lemma 3.6 derives it from the full rank of X X^T. A positive definite "
            "window Gram A gives such a bound too, for every loss of Theorem 3.8 (the Gram "
            "bound: ||v||_1 <= sqrt(k_v / lambda_min(A)) (h_F(L) + ||Y||_F), from "
            "||VX||_F^2 = v^T A v), so convergence with A positive definite is a corollary "
            "of Theorem 3.4, not a conjecture. The verdicts below are therefore consistency "
            "checks of the flows: a violation would point at the integrator, the analysis or "
            "an unmet hypothesis, not at the paper. What is open is a singular A.\n\n"
            + claims_markdown(checks, ds) + "\n\n" + _open_case(converged, pd_),
        ),
        (
            "Per cell",
            "*converged*: ||grad L|| <= grad_tol before t_end (Wilson 95% intervals). "
            "*||w(T)|| / ||w(T/10)||*: growth of the parameters over the last decade of time "
            f"(above {GROWTH:g}: still growing). *kernel component*: |u^T v(T)| / ||v(T)|| for "
            "u the eigenvector of A's smallest eigenvalue: the part of v the data cannot "
            "see.\n\n" + markdown_table(_cell_rows(ds, study, growth, kern)),
        ),
        (
            "||w(t)|| over time",
            "Median and 10-90% band per input kind and m (a flow that stopped keeps its last "
            f"value).\n\n![norms]({figures_dir.name}/{fig.name})",
        ),
    ]
