"""Report sections of the `init_scale` study: escape from the saddle w = 0 at small initial
scale sigma, and which limits small initialisations favour.

Predictions (derived here; the report states them next to the measurements):

- **N = 2, stride 1** (linearisation at w = 0): with G = grad_v L(v = 0) (k_v,), the loss near
  w = 0 is ``L(0) + <G, w1 * w2> = L(0) + w1^T M w2`` with the Hankel matrix
  ``M[a, b] = G[a + b]`` (k1, k2), so the flow is linear, ``d/dt (w1, w2) = -(M w2, M^T w1)``:
  its fastest mode grows like ``exp(s t)`` with ``s`` the largest singular value of M. A flow
  started at scale sigma reaches an O(1) loss decrease at ``t_esc ~ (log(1/sigma) + c) / s``:
  the slope of t_esc against log(1/sigma) is ``1 / s`` (c depends on the random initial
  components, not on sigma). For k1 = k2, M is symmetric and the growing mode has w1
  proportional to +-w2: the filters leave w = 0 proportional (repeated roots).
- **N >= 3**: every layer's gradient is a product of the N - 1 others, so ``d||w||/dt ~
  ||w||^(N-1)``, which blows up at ``t ~ sigma^-(N-2)``: a power law with exponent
  ``-(N - 2)`` (only the exponent is predicted).

The escape time is ``t_below`` at the level 0.5 L(v=0), located by the integrator inside its
step (no interpolation of saved points). The study directory is the parent of ``figures_dir``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast import Architecture, Problem
from lcnfast.study import load_problem
from lcnfast.study.claims import check, claims_markdown, estimate_row
from lcnfast.study.report import markdown_table
from lcnfast.study.statistics import at_reference

LEVEL = 0.5
#: the slope of t_esc against log(1/sigma) over sigma in [1e-3, 0.3] matches 1/s within this
#: relative error: the linear phase dominates for small sigma, but the largest sigma carry an
#: O(1) nonlinear phase that bends the fit (a per-flow constant c cancels in the slope only
#: when it does not depend on sigma)
SLOPE_RTOL = 0.15
#: N >= 3: fitted exponent within this of -(N - 2) (same reason)
EXPONENT_ATOL = 0.15


def hankel_top_singular_value(problem):
    """s = sigma_max(M), M[a, b] = G[a + b] (k1, k2), G = grad_v L(v = 0) of a depth-2 stride-1
    problem (computed as the gradient of the depth-1 network with filter v = 0 on the same
    data and loss)."""
    arch = problem.arch
    k1, k2 = arch.k
    flat = Problem(Architecture(arch.d0, (arch.k_v,)), problem.X, problem.Y, problem.loss_fn)
    G = flat.grad(np.zeros((1, arch.k_v)))[0]
    M = np.array([[G[a + b] for b in range(k2)] for a in range(k1)])
    return float(np.linalg.svd(M, compute_uv=False)[0])


def fit_line(x, y):
    """Least-squares slope and its standard error of y against x (finite pairs)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x)[ok], np.asarray(y)[ok]
    if x.size < 3 or np.ptp(x) == 0:
        return np.nan, np.nan
    res = np.polyfit(x, y, 1, cov=True)
    return float(res[0][0]), float(np.sqrt(res[1][0, 0]))


def _escape(ds):
    lv = ds["loss_level"].values
    q = int(np.argmin(np.abs(lv - LEVEL)))
    return ds["t_below"].isel(loss_level=q).values


def _groups(ds, study_dir):
    """Rows per (architecture, dataset, distribution): depth N, s (N = 2), the fit."""
    t_esc = _escape(ds)
    sigma = ds["init_scale"].values.astype(float)
    rows = []
    keys = zip(ds["architecture"].values, ds["dataset"].values, ds["init_distribution"].values)
    for arch, d, dist in dict.fromkeys(keys):
        sel = (ds["architecture"].values == arch) & (ds["dataset"].values == d)
        sel &= ds["init_distribution"].values == dist
        cell = int(ds["cell"].values[np.flatnonzero(sel)[0]])
        problem = load_problem(study_dir, cell, int(d))
        N = problem.arch.depth
        sig = np.unique(sigma[sel])
        med = np.array([np.nanmedian(t_esc[sel & (sigma == s)]) for s in sig])
        row = {"architecture": arch, "dataset": int(d), "distribution": dist, "N": N,
               "sigma": sig, "t_esc_median": med}  # fmt: skip
        if N == 2:
            s = hankel_top_singular_value(problem)
            slope, se = fit_line(np.log(1 / sig), med)
            row.update(s=s, fit=slope * s, fit_se=se * s, predicted=1.0)
        else:
            slope, se = fit_line(np.log(sig), np.log(med))
            row.update(s=np.nan, fit=slope, fit_se=se, predicted=-(N - 2.0))
        rows.append(row)
    return rows


def _claims(ds, rows):
    K = ds.sizes["flow"]
    checks = []
    for N2, text, tol in (
        (True, "N = 2: slope of t_esc against log(1/sigma) = 1 / sigma_max(Hankel of grad_v L(0))",
         f"fitted slope * sigma_max within {SLOPE_RTOL:g} of 1 (nonlinear phase at large sigma)"),
        (False, "N >= 3: t_esc ~ sigma^-(N-2)",
         f"fitted exponent within {EXPONENT_ATOL:g} of -(N-2)"),
    ):  # fmt: skip
        ok = np.full(K, np.nan)
        fit = np.full(K, np.nan)
        for r in rows:
            if (r["N"] == 2) != N2 or not np.isfinite(r["fit"]):
                continue
            sel = (ds["architecture"].values == r["architecture"])
            sel &= (ds["dataset"].values == r["dataset"])
            sel &= ds["init_distribution"].values == r["distribution"]
            first = np.flatnonzero(sel)[0]  # one entry per group: a group is one fit
            good = abs(r["fit"] - r["predicted"]) <= (SLOPE_RTOL if N2 else EXPONENT_ATOL)
            ok[first], fit[first] = good, r["fit"]
        checks.append(check(text + " (one fit per architecture, dataset, init)", tol, ok,
                            detail={"fitted": fit}, unit="fits"))  # fmt: skip
    return checks


def _fit_table(rows):
    return pd.DataFrame([
        {"architecture": r["architecture"], "dataset": r["dataset"],
         "init": r["distribution"], "N": r["N"],
         "sigma_max(M)": r["s"] if r["N"] == 2 else np.nan,
         "measured (N=2: slope * sigma_max; N>=3: exponent)":
             f"{r['fit']:.3g} +- {r['fit_se']:.2g}",
         "predicted": r["predicted"],
         "median t_esc at sigma = " + ", ".join(f"{s:g}" for s in r["sigma"]):
             ", ".join(f"{t:.3g}" for t in r["t_esc_median"])}
        for r in rows
    ])  # fmt: skip


def _limits_table(ds):
    rows = []
    for (arch, dist, sigma), idx in pd.Series(range(ds.sizes["flow"])).groupby(
        [ds["architecture"].values, ds["init_distribution"].values, ds["init_scale"].values]
    ).groups.items():
        sub = ds.isel(flow=np.asarray(idx))
        common = sub["has_common_root"].values.astype(bool)
        hit, _ = at_reference(sub)  # as the report's tables: diverged flows are not at it
        rows.append({
            "architecture": arch, "init": dist, "sigma": sigma,
            "limits with a common root": estimate_row(int(common.sum()), common.size),
            "at the global minimum (or best found)": estimate_row(int(hit.sum()), hit.size),
            "max root multiplicity q50": float(np.nanmedian(sub["max_root_multiplicity"])),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _figure(ds, rows, figures_dir):
    path = figures_dir / "init_scale_escape.png"
    t_esc = _escape(ds)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, arch in enumerate(dict.fromkeys(ds["architecture"].values)):
        sel = ds["architecture"].values == arch
        ax.scatter(ds["init_scale"].values[sel] * np.exp(0.1 * np.random.default_rng(i)
                   .standard_normal(sel.sum())), t_esc[sel], s=4, color=f"C{i}", alpha=0.3,
                   label=str(arch))  # fmt: skip
        for r in rows:
            if r["architecture"] == arch:
                ax.plot(r["sigma"], r["t_esc_median"], color=f"C{i}", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="initial scale sigma (jittered)",
           ylabel=f"t_esc: first t with L <= {LEVEL:g} L(v=0)")  # fmt: skip
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    rows = _groups(ds, figures_dir.parent)
    fig = _figure(ds, rows, figures_dir)
    return [
        ("Claims and verdicts", claims_markdown(_claims(ds, rows), ds)),
        (
            "Escape times",
            "Per architecture, dataset and initialisation: the fit over sigma of the median "
            "escape time (least squares, +- one standard error). N = 2: slope of t_esc "
            "against log(1/sigma) times sigma_max of the Hankel matrix M[a, b] = "
            "(grad_v L(0))[a + b] (linearisation at w = 0: predicted 1). N >= 3: exponent of "
            "the power law t_esc ~ sigma^p (predicted p = -(N - 2)).\n\n"
            + markdown_table(_fit_table(rows))
            + f"\n\n![escape times]({figures_dir.name}/{fig.name})",
        ),
        (
            "Which limits small initialisations reach",
            "For equal widths (N = 2, k = (3,3)) the linearisation predicts proportional "
            "filters leaving w = 0, hence repeated roots: does the fraction of limits with a "
            "common root grow as sigma shrinks? Intervals: Wilson 95%.\n\n"
            + markdown_table(_limits_table(ds)),
        ),
    ]
