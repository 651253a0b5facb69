"""Report sections of the `limits` study: which limits are global ([7, Thm 4.1, Prop. 5.1]).

``sections(ds, study, figures_dir)`` returns the claims with verdicts, a table per cell
(fraction global, distinct limit values, common and multiple roots) and a figure of the loss
gaps of the limits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast.analysis import LABELS
from lcnfast.study.claims import check, claims_markdown, estimate_row
from lcnfast.study.report import markdown_table
from lcnfast.study.statistics import at_reference

#: two limit values are the same critical value when they differ by at most this times the
#: loss of the zero network (L(v=0)): flows stop at ||grad L|| <= 1e-10, which moves the loss
#: by O(grad^2 / lambda_min) << 1e-7 L(v=0); distinct critical values of these problems are
#: separated by far more (the table's spread shows it)
VALUE_RTOL = 1e-7
#: a root of multiplicity >= 2 (on the discriminant) or a root shared between layers
MULTIPLE = 2


def distinct_values(values, scale, rtol=VALUE_RTOL):
    """Number of clusters of the sorted finite ``values`` with gaps above ``rtol * scale``."""
    v = np.sort(np.asarray(values, dtype=float)[np.isfinite(values)])
    if v.size == 0:
        return 0
    return int(1 + np.sum(np.diff(v) > rtol * scale))


def _cell_rows(ds, study):
    rows = []
    crit = ds["is_critical"].values.astype(bool)
    for c in study.cells:
        sel = np.flatnonzero(ds["cell"].values == c.index)
        if sel.size == 0:
            continue
        sub = ds.isel(flow=sel)
        hit, ref = at_reference(sub)
        nonglob = crit[sel] & ~hit
        n_values = [
            distinct_values(
                sub["limit_loss"].values[(sub["dataset"].values == d) & crit[sel]],
                float(sub["loss_scale"].values[sub["dataset"].values == d][0]),
            )
            for d in np.unique(sub["dataset"].values)
        ]
        multi = sub["max_root_multiplicity"].values >= MULTIPLE
        common = sub["has_common_root"].values.astype(bool)
        labels = sub["label"].values
        rows.append({
            "cell": c.index,
            "architecture": c.labels["architecture"],
            "target": c.labels["target"],
            "noise": c.labels["noise"],
            "at the global minimum [95% CI]": estimate_row(int(hit.sum()), hit.size),
            "reference": ref,
            "distinct limit values per dataset": ", ".join(map(str, n_values)),
            "non-global: common root": estimate_row(int((nonglob & common).sum()), int(nonglob.sum())),
            "non-global: multiple root": estimate_row(int((nonglob & multi).sum()), int(nonglob.sum())),
            "non-global strict local minima": estimate_row(
                int((nonglob & (labels == LABELS.index("minimum"))).sum()), hit.size
            ),
            "labels": ", ".join(
                f"{LABELS[k]} {int((labels == k).sum())}" for k in np.unique(labels)
            ),
        })  # fmt: skip
    return pd.DataFrame(rows)


def _claims(ds, study):
    stride1 = np.array(
        [all(s == 1 for s in c.architecture["s"]) for c in study.cells]
    )[ds["cell"].values]
    checks = [
        check(
            "[7, Prop. 5.1]: a critical limit (stride 1, convex loss) without a common root "
            "of the layer polynomials is a global minimum",
            "root test: roots within root_tol (chordal) are shared; global: loss within "
            "gap_tol * L(v=0) of the convex minimum",
            ds["prop51_ok"].values.astype(float),
            applies=stride1,
            detail={"limit_loss": ds["limit_loss"].values, "loss_gap": ds["loss_gap"].values,
                    "min_root_distance": ds["min_root_distance"].values},  # fmt: skip
        )
    ]
    if "prop51_ok_jac" in ds:
        checks.append(
            check(
                "[7, Prop. 5.1], Jacobian form: a critical limit where the Jacobian of pi has "
                "full rank k_v is a global minimum",
                "rank: singular values above jac_tol * sigma_max (at normalised filters)",
                ds["prop51_ok_jac"].values.astype(float),
                applies=stride1,
                detail={"limit_loss": ds["limit_loss"].values,
                        "loss_gap": ds["loss_gap"].values},  # fmt: skip
            )
        )
    return checks


def _gap_figure(ds, figures_dir):
    """Histogram of log10 of the loss gap to the convex minimum per architecture."""
    path = figures_dir / "limits_gaps.png"
    archs = list(dict.fromkeys(ds["architecture"].values))
    fig = Figure(figsize=(3.2 * len(archs), 3.2), layout="constrained")
    axes = fig.subplots(1, len(archs), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], archs):
        sub = ds.isel(flow=np.flatnonzero(ds["architecture"].values == a))
        gap = sub["loss_gap"].values / sub["loss_scale"].values
        gap = np.log10(np.clip(gap[np.isfinite(gap)], 1e-16, None))
        ax.hist(gap, bins=40, color="C0")
        ax.set(title=str(a), xlabel="log10 (L - L_convex min) / L(v=0)")
    axes[0, 0].set_ylabel("flows")
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    fig = _gap_figure(ds, figures_dir)
    how = (
        "*reference* global: `is_global` of lcnfast.analysis (filling architectures: the convex "
        "minimum over v; other architectures: the minimum over the image of pi computed by the "
        "analysis); *best found*: the lowest limit value any flow of the study found in the "
        "dataset (`reached_best`), where the analysis does not decide globality"
    )
    return [
        ("Claims and verdicts", claims_markdown(_claims(ds, study), ds)),
        (
            "Limits per cell",
            f"{how}. Intervals: Wilson 95%. *distinct limit values*: critical limits whose "
            f"losses differ by more than {VALUE_RTOL:g} L(v=0). *common / multiple root*: "
            "among the critical limits not at the global minimum, how many have a root shared "
            "by two layers (Prop. 5.1's mechanism) or a root of multiplicity >= 2 (on the "
            "discriminant). *non-global strict local minima*: among all flows, limits not at "
            "the global minimum whose Hessian is positive definite modulo the rescaling "
            "symmetry (label `minimum`): spurious local minima, which Prop. 5.1 allows only "
            "with a common root.\n\n" + markdown_table(_cell_rows(ds, study)),
        ),
        (
            "Loss gaps of the limits",
            "Gap of each limit's loss to the convex minimum over v, relative to L(v=0). For "
            "a filling architecture the gap is zero at the global minimum; for the others "
            "the target outside the image of pi leaves a positive gap even at the global "
            f"minimum over w.\n\n![loss gaps]({figures_dir.name}/{fig.name})",
        ),
    ]
