"""Report sections of the `strided` study: limits of gradient flows on all-strided architectures.

For an all-strided architecture (every stride >= 2 where it matters: s_i = k_i here) the end-to-end
filter is a tensor-like product of the layer filters, and pi(w) has rank at most
sum_i k_i - N + 1 (the N - 1 rescalings of Lemma 3.3 leave v unchanged). A limit is a smooth,
*interior* point of the image when that rank is attained there and no filter is zero (a zero
filter makes v = 0, where the image is singular). The claim checked flow by flow:

* every converged flow ends at such a point: ``jac_rank == sum k_i - N + 1`` (singular values of
  the Jacobian of pi at the normalised filters above ``jac_tol`` times the largest; lcnfast.analysis)
  and ``n_zero_filters == 0``.

Measured (no claim: the image is not convex, several local minima can exist): the distinct limit
values per dataset, found by single-linkage clustering of the final losses
(``cluster_values``), how many flows reach the best one, and how robust the clustering is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.cluster.hierarchy as sch
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast.study.claims import check, claims_markdown, estimate_row
from lcnfast.study.report import markdown_table

#: final losses closer than CLUSTER_RTOL * L(v = 0) are one limit value. The flows stop at
#: ||grad L|| <= grad_tol = 1e-10; at a limit with curvature lambda_min >= 1e-6 the loss is then
#: within grad_tol^2 / (2 lambda_min) <= 1e-14 of its limit, and rounding of L is ~1e-16 L(v=0):
#: 1e-8 is far above both and far below the separations of distinct critical values observed
#: (the report gives the smallest separation in units of the tolerance)
CLUSTER_RTOL = 1e-8
#: the clustering is called stable when the number of values is the same with the tolerance
#: multiplied and divided by this factor
STABILITY_FACTOR = 100.0


def expected_rank(arch):
    """sum k_i - N + 1: the dimension of the image of pi for an all-strided architecture."""
    return int(sum(arch.k) - arch.depth + 1)


def cluster_values(values, tol):
    """Cluster labels 0, 1, ... of 1-D ``values`` (single linkage: values joined by a chain of
    gaps <= tol share a label), numbered in increasing order of value; NaN values get -1."""
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape, -1)
    ok = np.flatnonzero(np.isfinite(values))
    if ok.size == 1:
        out[ok] = 0
    elif ok.size > 1:
        lab = sch.fcluster(sch.linkage(values[ok, None], method="single"), tol, "distance")
        order = {c: i for i, c in enumerate(sorted(set(lab), key=lambda c: values[ok][lab == c].min()))}
        out[ok] = [order[c] for c in lab]
    return out


def per_dataset(ds):
    """DataFrame, one row per (cell, dataset): distinct limit values and who reaches the best."""
    rows = []
    key = pd.MultiIndex.from_arrays([ds["cell"].values, ds["dataset"].values])
    for (cell, d), idx in pd.Series(np.arange(ds.sizes["flow"]), index=key).groupby(level=[0, 1]):
        idx = idx.values
        conv = idx[ds["status"].values[idx] == 0]
        vals = ds["loss_final"].values[conv]
        tol = CLUSTER_RTOL * ds["loss_scale"].values[idx[0]]
        lab = cluster_values(vals, tol)
        n_val = int(lab.max() + 1) if lab.size else 0
        stable = all(
            int(cluster_values(vals, tol * f).max(initial=-1)) + 1 == n_val
            for f in (STABILITY_FACTOR, 1 / STABILITY_FACTOR)
        )
        centres = np.array([vals[lab == c].mean() for c in range(n_val)])
        sep = np.diff(centres).min() / tol if n_val > 1 else np.nan
        rows.append(dict(cell=cell, dataset=d, architecture=ds["architecture"].values[idx[0]],
                         loss_fn=ds["loss_fn"].values[idx[0]], target=ds["target"].values[idx[0]],
                         flows=idx.size, converged=conv.size, n_values=n_val,
                         at_best=int((lab == 0).sum()), stable=stable, separation=sep,
                         off_best_minima=int((ds["label"].values[conv][lab > 0] == 0).sum()),
                         gaps=(centres - centres[0]) / ds["loss_scale"].values[idx[0]],
                         freq=np.bincount(lab, minlength=n_val) / max(conv.size, 1)))  # fmt: skip
    return pd.DataFrame(rows)


def is_kronecker(arch):
    """True when every coefficient of v is one product of taps, one per layer (the offsets
    sum_i a_i S_i, a_i < k_i, S_i the dilations, are distinct: each layer's stride at least
    the reach of the layers before it, e.g. s_i >= k_i). Then pi is the Kronecker product of
    the filters, and its Jacobian has rank sum k_i - N + 1 wherever no filter is zero (the
    tangent space of the Segre variety): the rank claim adds nothing to the zero-filter claim
    there."""
    sums = {0}
    for k, S in zip(arch.k, arch.dilations):
        sums = {o + a * S for o in sums for a in range(k)}
    return len(sums) == int(np.prod(arch.k))


def _claims(ds, study):
    cells = {c.index: c for c in study.cells}
    exp = np.array([expected_rank(cells[c].arch()) for c in ds["cell"].values])
    kron = np.array([is_kronecker(cells[c].arch()) for c in ds["cell"].values], dtype=bool)
    conv = ds["status"].values == 0
    rank = ds["jac_rank"].values
    nz = ds["n_zero_filters"].values
    sv = ds["jac_sv"].values
    with np.errstate(all="ignore"):
        sv_r = np.array([row[e - 1] if e <= np.isfinite(row).sum() else np.nan
                         for row, e in zip(sv, exp)])  # fmt: skip
    jac_tol = study.spec["analysis"]["jac_tol"]
    return [
        check("[8] all-strided: every limit is a regular point of pi, rank of its Jacobian = "
              "sum k_i - N + 1", f"singular values above jac_tol = {jac_tol:g} x the largest "
              "(at the normalised filters, where the rescaling imbalance is removed); tested "
              "on the architectures whose v has sums of products (not Kronecker: see below)",
              rank == exp, applies=conv & ~kron,
              detail={"jac_rank": rank, "expected": exp, "sigma_(expected)/sigma_max": sv_r}),
        check("[8] all-strided: no limit has a zero filter (interior point of the image)",
              "||w^(i)|| > zero_filter_tol x max_j ||w^(j)||", nz == 0, applies=conv,
              detail={"n_zero_filters": nz}),
    ]  # fmt: skip


def _kronecker_note(ds, study):
    """' (here: ...)': which of the study's architectures are Kronecker products."""
    cells = {c.index: c for c in study.cells}
    archs = {}
    for c in dict.fromkeys(ds["cell"].values):
        archs[cells[c].labels["architecture"]] = is_kronecker(cells[c].arch())
    kron = [a for a, k in archs.items() if k]
    other = [a for a, k in archs.items() if not k]
    return (f" (here Kronecker: {', '.join(kron) or 'none'}; tested for rank: "
            f"{', '.join(other) or 'none'})")


def _cell_table(tab):
    rows = []
    for (arch, loss, target), sub in tab.groupby(["architecture", "loss_fn", "target"], sort=False):
        several = int((sub["n_values"] > 1).sum())
        rows.append({
            "architecture": arch, "loss": loss, "target": target, "datasets": len(sub),
            "distinct values per dataset (median / max)":
                f"{sub['n_values'].median():g} / {sub['n_values'].max()}",
            "datasets with several values": estimate_row(several, len(sub)),
            "flows at the best value": estimate_row(int(sub["at_best"].sum()),
                                                    int(sub["converged"].sum())),
            "non-best flows at a minimum (label)": estimate_row(
                int(sub["off_best_minima"].sum()), int((sub["converged"] - sub["at_best"]).sum())),
            "clustering stable (x/÷ 100)": estimate_row(int(sub["stable"].sum()), len(sub)),
            "smallest separation / tol": f"{np.nanmin(sub['separation']):.3g}"
            if np.isfinite(sub["separation"]).any() else "–",
        })  # fmt: skip
    return markdown_table(pd.DataFrame(rows))


def _figure(tab, figures_dir):
    """Every non-best limit value: its gap to the best (relative to L(v = 0)) and how often it
    is reached, per architecture."""
    path = figures_dir / "strided_values.png"
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (arch, sub) in enumerate(tab.groupby("architecture", sort=False)):
        g = np.concatenate([r[1:] for r in sub["gaps"]] + [[]])
        f = np.concatenate([r[1:] for r in sub["freq"]] + [[]])
        ax.scatter(g, f, s=14, color=f"C{i}", label=f"{arch} ({g.size} values)")
    ax.set(xscale="log", xlabel="(L_value - L_best) / L(v=0)", ylim=(0, 1),
           ylabel="fraction of the dataset's flows", title="non-best limit values")  # fmt: skip
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    tab = per_dataset(ds)
    fig = _figure(tab, figures_dir)
    text_vals = (
        f"Final losses of the converged flows of a dataset within {CLUSTER_RTOL:g} x L(v=0) of "
        "each other (single linkage) are one limit value. *at the best value*: flows in the "
        "lowest cluster (the best found in the dataset, not a certified global minimum: the "
        "image of pi is not convex), Wilson 95% intervals. *stable*: the number of values is "
        f"unchanged with the tolerance x/÷ {STABILITY_FACTOR:g}. *separation*: the smallest gap "
        "between distinct values in units of the tolerance. *non-best flows at a minimum*: of the "
        "flows ending above the best value, those whose limit is a strict local minimum modulo "
        "the symmetry (lcnfast.analysis label).\n\n" + _cell_table(tab)
    )
    return [
        ("Claims and verdicts",
         "For an architecture whose every layer's stride is at least the reach of the layers "
         "before it (e.g. s_i >= k_i), each coefficient of v is a single product of taps: pi "
         "is the Kronecker product of the filters, whose Jacobian has full rank wherever no "
         "filter is zero. There the zero-filter claim is the whole test; the rank claim is "
         "tested on the other architectures" + _kronecker_note(ds, study) + ".\n\n"
         + claims_markdown(_claims(ds, study), ds)),
        ("Distinct limit values per dataset", text_vals),
        ("Non-best limit values", f"![non-best values]({figures_dir.name}/{fig.name})"),
    ]
