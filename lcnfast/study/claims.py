"""Claims and verdicts for study reports: a statement of the paper checked flow by flow.

A *check* is a claim that should hold for every flow it applies to (a theorem, a lemma, an
invariant of the exact flow), evaluated per flow with a stated tolerance. Its verdict is

- **holds**: no tested flow violates it; the 95% Wilson upper bound on the violation rate is
  given (``3.8 / n`` for ``n`` flows without a violation), which is what a Monte Carlo study
  can say about "always";
- **violated**: at least one flow violates it; every violating flow is listed with its
  coordinates (``cell``, ``dataset``, ``replicate``) so it can be rerun and inspected
  (:func:`lcnfast.study.load_problem` rebuilds its problem);
- **not tested**: no flow of the study falls under the claim.

An *estimate* answers a question the paper leaves open with a fraction and its Wilson 95%
interval (:func:`lcnfast.study.statistics.wilson`).

Used by the studies' own report sections (``report.sections`` in a spec):
``[("Claims", claims_markdown([check(...), ...], ds))]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .report import markdown_table
from .statistics import BOUND_RTOL, wilson

__all__ = ["Check", "check", "claims_markdown", "estimate_row", "bound_checks", "quantiles_row"]

#: at most this many violating flows are listed per claim (their count is always given)
MAX_LISTED = 25


@dataclass(frozen=True)
class Check:
    """One claim evaluated on the flows it applies to.

    claim : str
        The statement with its reference, e.g. "Lemma 3.3: balancedness is conserved".
    tolerance : str
        What counts as satisfied numerically, and why that tolerance.
    ok : ndarray of bool, (n,)
        Per tested flow: the claim holds within the tolerance.
    where : ndarray of int, (n,)
        Positions of the tested flows in the study Dataset (``flow`` index).
    detail : dict of str -> ndarray (n,)
        Per tested flow values shown next to each violation (e.g. the measured drift).
    unit : str
        What one entry is ("flows"; "fits" for a claim tested on fits over groups of flows).
    """

    claim: str
    tolerance: str
    ok: np.ndarray
    where: np.ndarray
    detail: dict
    unit: str = "flows"

    @property
    def n(self):
        return int(self.ok.size)

    @property
    def n_violations(self):
        return int((~self.ok).sum())

    @property
    def verdict(self):
        if self.n == 0:
            return "not tested"
        return "holds" if self.n_violations == 0 else "violated"

    def rate_interval(self):
        """Wilson 95% interval of the violation rate."""
        return wilson(self.n_violations, self.n)


def check(claim, tolerance, ok, *, applies=None, detail=None, unit="flows"):
    """A :class:`Check` from per-flow results over the whole study Dataset.

    Parameters
    ----------
    claim, tolerance : str
    ok : array-like of bool or float, (K,)
        Per flow of the study Dataset: the claim holds. NaN (float input) marks flows the claim
        does not apply to, as does ``applies``.
    applies : array-like of bool, (K,), optional
        Flows the claim applies to (default: every flow with a non-NaN ``ok``).
    detail : dict of str -> array-like (K,), optional
        Values listed next to violating flows.
    unit : str
        What an entry is, for the report ("flows", or e.g. "fits" when one flow per group
        carries the group's result).
    """
    ok = np.asarray(ok)
    if ok.ndim != 1:
        raise ValueError(f"ok must be 1-D (one entry per flow), got shape {ok.shape}")
    known = np.isfinite(ok.astype(float))
    mask = known if applies is None else known & np.asarray(applies, dtype=bool)
    where = np.flatnonzero(mask)
    detail = {k: np.asarray(v)[where] for k, v in (detail or {}).items()}
    return Check(claim, tolerance, ok[where].astype(bool), where, detail, unit)


def _measured(c):
    if c.n == 0:
        return "–"
    lo, hi = c.rate_interval()
    return f"{c.n_violations} of {c.n} {c.unit} violate (rate 95% CI [{lo:.2g}, {hi:.2g}])"


def _violations(c, ds):
    """A markdown table of (at most MAX_LISTED of) the flows violating ``c``."""
    bad = c.where[~c.ok]
    rows = {k: ds[k].values[bad] for k in ("cell", "dataset", "replicate") if k in ds.coords}
    rows.update({k: v[~c.ok] for k, v in c.detail.items()})
    df = pd.DataFrame(rows).head(MAX_LISTED)
    more = "" if bad.size <= MAX_LISTED else f"\n\n({bad.size - MAX_LISTED} more not listed.)"
    return markdown_table(df) + more


def claims_markdown(checks, ds):
    """Markdown: a table (claim, tolerance, measured, verdict) and, per violated claim, its
    violating flows. ``ds`` is the study Dataset the checks were computed on."""
    table = pd.DataFrame(
        {
            "claim": [c.claim for c in checks],
            "tolerance": [c.tolerance for c in checks],
            "measured": [_measured(c) for c in checks],
            "verdict": [f"**{c.verdict}**" for c in checks],
        }
    )
    parts = [markdown_table(table)]
    for c in checks:
        if c.verdict == "violated":
            parts += ["", f"Violations of *{c.claim}*:", "", _violations(c, ds)]
    return "\n".join(parts)


def estimate_row(k, n):
    """``"k/n = f [lo, hi]"``: a fraction with its Wilson 95% interval ('–' for n = 0)."""
    if n == 0:
        return "–"
    lo, hi = wilson(k, n)
    return f"{k}/{n} = {k / n:.3g} [{lo:.3g}, {hi:.3g}]"


def quantiles_row(x, qs=(0.5, 0.9)):
    """``"q50 / q90"`` (the quantiles ``qs``) of the finite values of x, to 2 digits; '–' if none."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return " / ".join(f"{v:.2g}" for v in np.quantile(x, qs)) if x.size else "–"


def bound_checks(ds, names=(("Lemma 3.6 / Cor. 3.7 (X X^T full rank)", "lemma36_bound"),
                            ("Gram bound (A positive definite)", "gram_bound"))):  # fmt: skip
    """Checks ``sup_t ||v(t)||_1 <= bound`` (``v_l1_max`` against the study's per-flow bounds of
    Lemma 3.6 and of the window Gram; NaN bounds, where the rank condition fails, are not
    tested), one per ``(name, variable)`` present in ``ds``."""
    obs = ds["v_l1_max"].values
    out = []
    for name, var in names:
        if var not in ds:
            continue
        b = ds[var].values
        with np.errstate(invalid="ignore"):
            ok = np.where(np.isfinite(b), obs <= b * (1 + BOUND_RTOL), np.nan)
        out.append(check(f"{name}: sup_t ||v(t)||_1 <= the bound",
                         f"v_l1_max <= bound * (1 + {BOUND_RTOL:g}) (rounding)", ok,
                         detail={"v_l1_max": obs, "bound": b}))  # fmt: skip
    return out
