"""The report of a study: ``report.md`` with tables per cell, and ``figures/*.png``.

:func:`write_report` reads a study directory (:func:`lcnfast.study.load`; a partial study gets
a report too, saying so) and writes, in this order:

1. a header: title (``report.title`` or the study's name), description, versions, the number
   of flows found against the number expected;
2. the spec: the grid's factors and their levels, datasets and flows, integrator settings,
   analysis tolerances;
3. tables with one row per cell (columns: the factors that vary, then results), from
   :func:`lcnfast.study.statistics.cell_summary`:

   - *limit points*: fractions of the labels of :func:`lcnfast.analysis.classify`, and the
     fraction at the global minimum (``is_global``, where the analysis decides it: the
     convex minimum over v for filling architectures, the computed minimum over the image of
     pi otherwise) or else at the best value found in the cell's dataset
     (``reached_best``), with Wilson 95% intervals;
   - *Prop. 5.1* (stride 1, convex loss): critical limits not at the convex minimum, how many
     have a common root (and a rank-deficient Jacobian of pi), and every violation with its
     flow's coordinates (cell, dataset, replicate);
   - *Lemma 3.6*: whether ``v_l1_max`` stays below ``lemma36_bound`` (and the Gram bound) for
     every flow, every violation, and the looseness ``bound / v_l1_max``;
   - *integration*: quantiles of ``t_final``, steps, gradient evaluations, balancedness drift
     (Lemma 3.3), loss increases, status counts;

4. the figures of :mod:`lcnfast.study.figures`;
5. the study's own sections: ``report.sections`` in the spec names a Python file defining
   ``sections(ds, study, figures_dir)`` that returns ``[(heading, markdown), ...]``.

Quantiles are written "10% / 50% / 90%" in one column. Tables are plain markdown (no
dependency beyond pandas).
"""

from __future__ import annotations

import datetime
import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numba
import numpy as np
import pandas as pd

from .. import __version__
from ..analysis import LABELS
from ..flows import STATUS
from . import figures as _fig
from . import spec_checks
from .load import load, read_spec
from .spec import FACTORS, Study, load_spec
from .spec_values import spec_warnings_off
from .statistics import (bound_violations, cell_summary, prop51_violations, varying_factors,
                         wilson)

__all__ = [
    "write_report",
    "cell_summary",
    "prop51_violations",
    "bound_violations",
    "varying_factors",
    "markdown_table",
    "wilson",
]

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
_Q = _fig.QUANTILES


# ----------------------------------------------------------------------------- markdown
def _fmt(x):
    """A table entry: '–' for missing, yes/no, integers as such, floats to 3 digits."""
    if x is None or (isinstance(x, (float, np.floating)) and np.isnan(x)):
        return "–"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{x:.3g}"
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown_table(df):
    """A pandas DataFrame as a markdown table (columns only; put the index in a column)."""
    cols = [_fmt(str(c)) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _q(row, name, of="n_flows"):
    """'q10 / q50 / q90' of ``name`` from a cell_summary row, followed by '(k finite of n)'
    when the quantiles are over fewer than the ``row[of]`` flows they describe (the others
    diverged), 'none finite (n)' when over none of them."""
    vals = [row.get(f"{name}_q{round(100 * q)}", np.nan) for q in _Q]
    n, total = int(row.get(f"{name}_n", 0)), int(row[of])
    if n == 0:
        return f"none finite ({total})" if total else "–"
    text = " / ".join(_fmt(v) for v in vals)
    return text if n == total else f"{text} ({n} finite of {total})"


def _cell_frame(table, varying, columns):
    """A table for markdown: ``cell``, the varying factors, ``flows`` (found / expected),
    then ``columns`` = {header: function of a cell_summary row (a dict)} ('–' for a cell
    without flows)."""
    rows = []
    for cell, row in table.iterrows():
        row = row.to_dict()
        out = {"cell": cell, **{f: row[f] for f in varying}}
        out["flows"] = f"{int(row['n_flows'])}/{int(row['n_expected'])}"
        out.update({h: (fn(row) if row["n_flows"] else "–") for h, fn in columns.items()})
        rows.append(out)
    return pd.DataFrame(rows)


def _ci(row):
    """'k/n = fraction [low, high]': the flows at the reference of all n flows of the cell."""
    return (f"{int(row['k_ref'])}/{int(row['n_ref'])} = {_fmt(row['frac_ref'])} "
            f"[{_fmt(row['ref_lo'])}, {_fmt(row['ref_hi'])}]")  # fmt: skip


def _counts(row, names, prefix):
    parts = [f"{n} {int(row[f'{prefix}{n}'])}" for n in names if row.get(f"{prefix}{n}", 0) > 0]
    return ", ".join(parts) or "none"


# ----------------------------------------------------------------------------- sections
def _levels(study, factor):
    """The labels of a factor's levels, in spec order."""
    return list(dict.fromkeys(str(c.labels[factor]) for c in study.cells))


def _header(ds, study, table, title):
    spec = study.spec
    n_found, n_total = ds.sizes["flow"], study.n_flows
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# {title}", ""]
    if spec["description"]:
        lines += [spec["description"], ""]
    lines += [
        f"- study `{study.name}`, spec hash `{study.spec_hash[:12]}`, seed {spec['seed']}",
        f"- written {now} by lcnfast {__version__} (numba {numba.__version__})",
        f"- flows: {n_found} of {n_total} expected"
        + (" (complete)" if n_found == n_total else " (**partial**)"),
    ]
    if n_found < n_total:
        short = table.index[table["n_flows"] < table["n_expected"]].tolist()
        lines += [
            "",
            f"> **Partial study**: {n_found} of {n_total} flows are in finished shards; "
            f"incomplete cells: {', '.join(map(str, short))}. Every number below covers the "
            "finished shards only. Run the study again to finish it (finished shards are kept).",
        ]
    return "\n".join(lines)


def _integrator_settings(x):
    keys = [k for k in x if k != "method"]
    fmt = {k: (f"{len(x[k])} times" if isinstance(x[k], list) else _fmt(x[k])) for k in keys}
    return ", ".join(f"{k}={v}" for k, v in fmt.items())


def _spec_section(study):
    spec = study.spec
    n_d, n_f = spec["data"]["n_datasets"], spec["flows_per_dataset"]
    grid = " x ".join(f"{f} {len(_levels(study, f))}" for f in varying_factors(study))
    factors = pd.DataFrame(
        [{"factor": f, "levels": len(_levels(study, f)), "values": ", ".join(_levels(study, f))}
         for f in FACTORS]
    )  # fmt: skip
    integ = pd.DataFrame(
        [{"level": lab, "method": x["method"], "settings": _integrator_settings(x)}
         for lab, x in zip(_levels(study, "integrator"), spec["integrator"])]
    )  # fmt: skip
    tols = ", ".join(f"{k} = {v:g}" for k, v in spec["analysis"].items())
    return "\n\n".join([
        "## Specification",
        f"{len(study.cells)} cell(s){f' ({grid})' if grid else ''}, each with {n_d} dataset(s) "
        f"of {n_f} flow(s): {study.n_flows} in all. Architectures are written (d0; k; s)"
        + ("; m = -1: from the file." if "-1" in _levels(study, "m") else "."),
        markdown_table(factors),
        "Integrators:",
        markdown_table(integ),
        f"Analysis tolerances (lcnfast.analysis): {tols}.",
    ])  # fmt: skip


def _limits_section(table, varying):
    cols = {name: (lambda r, n=name: r[f"frac_{n}"]) for name in LABELS}
    cols["at reference (Wilson 95%)"] = _ci
    cols["reference"] = lambda r: r["reference"]
    return "\n\n".join([
        "## Limit points",
        "Fraction of each cell's flows per label of the limit point (gradient norm and the "
        "Hessian modulo the rescaling symmetry), and the fraction at the reference value: "
        "*global* = at the global minimum over w (`is_global`: for a filling architecture "
        "and a convex loss the limit attains the convex function-space minimum; otherwise "
        "its loss matches the minimum over the image of pi computed by multistart Newton "
        "(lcnfast.analysis.image_minimum)); *best found* = within "
        "gap_tol L(v=0) of the lowest limit loss among the flows of the same cell and dataset "
        "(`reached_best`: no proof of globality). *k/n*: k of all the cell's n flows; a flow "
        "without a finite limit (non_finite: diverged) counts as not at the reference. "
        "Intervals: Wilson score, 95%.",
        markdown_table(_cell_frame(table, varying, cols)),
    ] + _degenerate_pd_note(table))  # fmt: skip


def _degenerate_pd_note(table):
    """[markdown] for the cells with degenerate limits that only the relative tolerance
    calls degenerate (statistics._relative_only_degenerate), else []."""
    if "n_degenerate_pd" not in table or not (table["n_degenerate_pd"].fillna(0) > 0).any():
        return []
    rows = table[table["n_degenerate_pd"].fillna(0) > 0]
    cells = ", ".join(
        f"{cell} ({int(r['n_degenerate_pd'])} of {int(r['n_flows'])}, lambda_min / rho "
        f"{_fmt(r['degenerate_pd_ratio_min'])} to {_fmt(r['degenerate_pd_ratio_max'])})"
        for cell, r in rows.iterrows()
    )
    return [
        "*degenerate* by the relative tolerance only: in cells " + cells + ", degenerate "
        "limits have a positive definite projected Hessian whose smallest eigenvalue is "
        "below eig_tol rho (rho the largest |eigenvalue|) but above what a degenerate "
        "direction shows at the limit's gradient norm g (12 rho^(1/3) (g/4)^(2/3): a quartic "
        "direction L = c delta^4 with c up to rho). Most likely ill-conditioned strict "
        "minima (e.g. a nearly singular window Gram), which the relative tolerance cannot "
        "tell from degenerate points (`hess_min_eig_balanced`, `hess_scale_balanced` per "
        "flow; classify the limits with a smaller eig_tol to label them)."
    ]


def _prop51_section(table, ds, varying):
    parts = [
        "## Prop. 5.1: critical limits off the convex minimum have common roots",
        "For stride 1 and a convex loss, a critical point whose layer polynomials have no "
        "common root is a critical point of the convex function-space loss, so its filter is "
        "the convex minimum. So every critical limit not at the convex minimum must have a "
        "common root (`has_common_root`); a rank-deficient Jacobian of pi (`jac_deficient`) "
        "is the second, independent test. *Off the convex minimum* is not *non-global*: for "
        "a non-filling architecture the convex minimum can lie outside the image of pi, and "
        "then even the limits at the global minimum over w (counted global in the table "
        "above) are off it, and must have a common root.",
    ]
    app = table[table["prop51"].eq(True)] if "prop51" in table else table.iloc[:0]
    rest = [c for c in table.index if c not in app.index]
    if len(app):
        cols = {
            "critical, off the convex min": lambda r: r["n_nonglobal_critical"],
            "with common root": lambda r: r["n_common_root"],
            "Jacobian deficient": lambda r: r["n_jac_deficient"],
            "violations": lambda r: r["n_prop51_violations"],
        }
        parts.append(markdown_table(_cell_frame(app, varying, cols)))
        bad = prop51_violations(ds)
        parts.append(
            "No violation: every critical limit off the convex minimum has a common root."
            if bad.empty else
            f"**{len(bad)} violation(s)** (critical limits off the convex minimum without a "
            "detected common root):\n\n" + markdown_table(bad)
        )  # fmt: skip
    if rest:
        parts.append(
            f"Not applicable (a stride > 1, a non-convex loss, or no flows yet): cells "
            f"{', '.join(map(str, rest))}."
        )
    return "\n\n".join(parts)


def _within(key):
    """'k/n' flows within a bound of the n where it applies, marked when some are not (with
    how many of those have a non-finite v_l1_max: diverged), 'n/a' when it does not apply."""

    def fn(r):
        n, ok = int(r[f"n_{key}"]), int(r[f"n_{key}_ok"])
        if n == 0:
            return "n/a"
        if ok == n:
            return f"{ok}/{n}"
        bad = int(r[f"n_{key}_nonfinite"])
        return f"**{ok}/{n}: VIOLATED**" + (f" ({bad} non-finite)" if bad else "")

    return fn


def _bounds_section(table, ds, varying):
    cols = {
        "Lemma 3.6 within": _within("lemma36"),
        "bound / v_l1_max (10/50/90%)": lambda r: _q(r, "lemma36_ratio", "n_lemma36"),
        "Gram bound within": _within("gram"),
        "Gram bound / v_l1_max": lambda r: _q(r, "gram_ratio", "n_gram"),
    }
    bad = bound_violations(ds)
    return "\n\n".join([
        "## Bounds on ||v(t)||_1 (Lemma 3.6, Theorem 3.4)",
        "Along a flow the loss decreases, so ||v(t)||_1 <= g(L(w_0)) (Lemma 3.6, needs X X^T of "
        "full rank); the Gram bound needs only the window Gram A > 0 (lcnfast.analysis."
        "rank_report). `v_l1_max` is the largest ||v||_1 over the accepted states of a flow; "
        "the ratio bound / v_l1_max measures how loose the bound is (1: tight). *within k/n*: "
        "k of the n flows of the cell where the bound applies; a flow whose v_l1_max is not "
        "finite (diverged) is not within it (ratio 0). n/a: the bound's hypothesis fails on "
        "the cell's data, or L(w_0) is not finite.",
        markdown_table(_cell_frame(table, varying, cols)),
        "Every flow stays within the bounds that apply." if bad.empty else
        f"**{len(bad)} flow(s) above a bound:**\n\n" + markdown_table(bad),
    ])  # fmt: skip


def _integration_section(table, varying):
    status = [STATUS[k] for k in sorted(STATUS)]
    cols = {
        "t_final (10/50/90%)": lambda r: _q(r, "t_final"),
        "steps": lambda r: _q(r, "steps"),
        "gradient evaluations": lambda r: _q(r, "grad_evals"),
        "balance drift": lambda r: _q(r, "drift"),
        "loss increased": lambda r: r["n_loss_increased"],
        "status": lambda r: _counts(r, status, "status_"),
    }
    return "\n\n".join([
        "## Integration",
        "Quantiles over each cell's flows of the stopping time, the steps (accepted + "
        "rejected), the gradient evaluations; the balancedness drift max_i |delta_i(t_final) "
        "- delta_i(0)| (0 for the exact flow, Lemma 3.3: the integrator's error); the number "
        "of flows whose loss increased on an accepted step (above rounding); and why the flows "
        "stopped. Quantiles are over the flows with a finite value: *(k finite of n)* when "
        "some of the cell's n flows have none (diverged: see the status).",
        markdown_table(_cell_frame(table, varying, cols)),
    ])  # fmt: skip


def _figures(ds, study, table, figdir):
    """Write every figure; returns ``[(file name, caption)]`` in report order."""
    titles = _fig.panel_titles(study, varying_factors(study))
    gap_tol = study.spec["analysis"]["gap_tol"]
    grad_tols = {c.index: c.integrator["grad_tol"] for c in study.cells}
    made = [
        (_fig.loss_time(ds, titles, figdir / "loss_time.png"),
         "Loss against time per cell: median and 10-90% band over the flows with a finite "
         "value at each time (log-log; the left edge is t = 0; converged flows stay at their "
         "final loss, flows stopped otherwise leave the band: a panel says \"at the end: k of "
         "n flows\" when some did)."),
        (_fig.loss_gap_time(ds, titles, figdir / "loss_gap_time.png", gap_tol),
         "Relative gap to the best limit of the flow's dataset, (L(t) - L_best) / L(v=0), "
         "floored at gap_tol (dashed): the approach to the best value, comparable across "
         "datasets."),
        (_fig.grad_norm_time(ds, titles, figdir / "grad_norm_time.png", grad_tols),
         "Gradient norm against time per cell (log-log): the decay rate; dashed: the "
         "integrator's grad_tol."),
        (_fig.final_loss_hist(ds, titles, figdir / "final_loss_hist.png"),
         "Losses at the limits per cell (limit_loss), stacked by dataset; dashed: the global "
         "minimum over w (where decided) or the best value found."),
        (_fig.fraction_global(table, figdir / "fraction_global.png", titles),
         "Fraction of all the cell's flows at the global minimum (filled) or at the best value "
         "found (open), diverged flows counted as not there, with Wilson 95% intervals."),
        (_fig.paper_figure1(figdir / "losses.png"),
         "The losses of section 3.3 on r in [-4, 4] (the paper's Figure 1), evaluated with "
         "lcnfast.losses."),
    ]  # fmt: skip
    return [(p.name, caption) for p, caption in made]


def _figures_section(figs):
    parts = ["## Figures"]
    for name, caption in figs:
        parts.append(f"![{name}]({FIGURES_DIR}/{name})\n\n*{name}*: {caption}")
    return "\n\n".join(parts)


def load_sections(spec):
    """The Python module of a study's ``report.sections`` file, imported as the report imports
    it: for analysis notebooks that reuse a report's tables and helpers.

    Parameters
    ----------
    spec : str, path, dict or Study
        A built-in study's name, a TOML file, a spec dict (as :func:`load_spec` takes) or a
        :class:`lcnfast.study.Study`.

    Returns
    -------
    module
        Imported afresh on every call (an edited file is read again), under a name derived
        from the file's path; ``sys.path`` is left alone.

    Raises ``ValueError`` when the spec names no ``report.sections`` file, or when the file
    is missing or defines no function ``sections(ds, study, figures_dir)``.
    """
    if not isinstance(spec, Study):
        with spec_warnings_off():  # read for its sections file, not run
            spec = load_spec(spec)
    study = spec
    path = study.spec["report"]["sections"]
    if not path:
        raise ValueError(f"spec: study {study.name!r} has no report.sections file")
    return spec_checks.sections_module(path)


def _custom_sections(path, ds, study, figdir):
    """Import ``report.sections`` (a Python file) and return its ``sections(ds, study,
    figures_dir)``: a list of ``(heading, markdown)`` pairs (checked). ``ds`` is the study's
    Dataset (:func:`lcnfast.study.load`), ``study`` its :class:`lcnfast.study.Study`,
    ``figures_dir`` where to put figures. Whatever goes wrong in the file's code is one
    ValueError naming report.sections, the exception and its line in the file."""
    p = Path(path)
    fn = spec_checks.sections_module(p).sections
    try:
        got = fn(ds, study, figdir)
        pairs = isinstance(got, Iterable) and not isinstance(got, (str, bytes, dict))
        out = list(got) if pairs else None  # a generator runs here
    except Exception as e:  # the study's own code, called with the study's data
        raise ValueError(f"report.sections: {spec_checks.raised(e, p)} (in sections())") from None
    if out is None:
        raise TypeError(
            f"report.sections: {p}: sections() must return a list of (heading, markdown) "
            f"pairs, got {got!r:.80}"
        )
    for i, item in enumerate(out):
        pair = isinstance(item, tuple) and len(item) == 2
        if not (pair and all(isinstance(s, str) for s in item)):
            raise TypeError(
                f"report.sections: {p}: sections() item {i} must be a (heading, markdown) pair "
                f"of strings, got {item!r}"
            )
    return out


def _study_sections(path, ds, study, figdir):
    """The markdown of the study's own sections (``report.sections``). A file gone since the
    run (moved, or the study directory copied to another machine) leaves them out, saying so
    in the report and in a warning: the rest of the report needs only the study directory."""
    if not Path(path).is_file():
        msg = f"report.sections: no such file: {path}: the study's own sections are left out"
        warnings.warn(msg, stacklevel=3)
        return [f"## The study's own sections\n\n*{msg}.*"]
    return [f"## {heading}\n\n{md}" for heading, md in _custom_sections(path, ds, study, figdir)]


def write_report(study_dir):
    """Write ``report.md`` and ``figures/*.png`` of a study directory (see the module
    docstring for the content); returns the path of ``report.md``. Works on a partial study
    (the report says so); raises ``ValueError`` when no shard is finished yet."""
    d = Path(study_dir)
    study = read_spec(d)
    ds = load(d)
    figdir = d / FIGURES_DIR
    figdir.mkdir(exist_ok=True)
    table = cell_summary(ds, study)
    varying = varying_factors(study)
    rep = json.loads(ds.attrs["spec"])["report"]
    title = rep["title"] or f"Study report: {study.name}"
    parts = [
        _header(ds, study, table, title),
        _spec_section(study),
        _limits_section(table, varying),
        _prop51_section(table, ds, varying),
        _bounds_section(table, ds, varying),
        _integration_section(table, varying),
        _figures_section(_figures(ds, study, table, figdir)),
    ]
    if rep["sections"]:
        parts += _study_sections(rep["sections"], ds, study, figdir)
    path = d / REPORT_FILE
    tmp = d / f".{REPORT_FILE}.tmp"
    tmp.write_text("\n\n".join(parts) + "\n")
    os.replace(tmp, path)
    return path
