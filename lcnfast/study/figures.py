"""The figures of a study report (:mod:`lcnfast.study.report`), one function per figure.

Every function takes the Dataset of :func:`lcnfast.study.load` (or nothing, for the paper's
Figure 1), writes one PNG and returns its path. Figures are built on
:class:`matplotlib.figure.Figure` objects, never through ``pyplot``: no backend is selected
and no global matplotlib state changes, so writing a report from a notebook or a dask worker
leaves the caller's plotting alone (``Figure.savefig`` renders PNG with Agg by itself).

Panels are small multiples, one per cell that has flows, titled by the cell's number and the
levels of the factors that vary in the study (:func:`panel_titles`). Quantile bands are the
10-50-90% quantiles over the cell's flows (all its datasets) with a finite value at each saved
time; a panel whose band ends over fewer than all its flows (the others stopped early) says so.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogFormatterSciNotation, MaxNLocator, NullFormatter

from .. import losses as _losses

__all__ = [
    "QUANTILES",
    "panel_titles",
    "loss_time",
    "loss_gap_time",
    "grad_norm_time",
    "final_loss_hist",
    "fraction_global",
    "paper_figure1",
]

#: the loss at the saved times (flow, time) in a study's Dataset (the flow schema's ``loss``)
LOSS_T = "loss"
#: quantiles of the bands (lower, median, upper)
QUANTILES = (0.1, 0.5, 0.9)
_DPI = 110
_NCOLS = 4


def panel_titles(study, varying):
    """``{cell: title}``: ``"cell 3"`` and a line per factor in ``varying`` (the factors with
    more than one level in the study) with the cell's level."""
    return {
        c.index: "\n".join([f"cell {c.index}", *(f"{f}={c.labels[f]}" for f in varying)])
        for c in study.cells
    }


def _cells(ds):
    """``[(cell, sub-Dataset)]`` for the cells present, in order."""
    cell = ds["cell"].values
    return [(int(c), ds.isel(flow=np.flatnonzero(cell == c))) for c in np.unique(cell)]


# The small-multiple grids are laid out with fixed margins, in inches, instead of matplotlib's
# constrained layout, which measured every panel's tick labels twice per figure: on an
# AVX2 2-core host it took ~40% of a 20-panel figure's time (3.0-4.1 s fixed against
# 4.3-6.2 s constrained, loss_time of `limits --quick`, 2026-12-07). The margins fit what the
# panels carry: log tick labels (10^-12) and a label left of each panel, tick labels, an
# offset text and "time t" below it, and the panel's title (_TITLE_LINE per line) above.
_PANEL_W, _PANEL_H = 3.1, 2.1  # one panel's axes box
_LEFT, _RIGHT, _BOTTOM, _TOP = 0.9, 0.15, 0.75, 0.15  # figure margins (bottom: a supxlabel)
_WGAP, _HGAP = 0.9, 0.65  # between panels, beside the tick labels and titles
_TITLE_LINE = 0.15  # one line of a panel title in 8-point type


def _grid(n, title_lines=1, *, sharex=True):
    """A figure with ``n`` panels of :data:`_PANEL_W` x :data:`_PANEL_H` inches on a grid of at
    most :data:`_NCOLS` columns (spare axes hidden), room for ``title_lines`` lines of title
    above each; returns ``(figure, list of n axes)``."""
    ncols = min(n, _NCOLS)
    nrows = math.ceil(n / ncols)
    title = title_lines * _TITLE_LINE
    width = _LEFT + ncols * _PANEL_W + (ncols - 1) * _WGAP + _RIGHT
    height = _BOTTOM + nrows * (_PANEL_H + title) + (nrows - 1) * _HGAP + _TOP
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(nrows, ncols, sharex=sharex, squeeze=False, gridspec_kw=dict(
        left=_LEFT / width, right=1 - _RIGHT / width, bottom=_BOTTOM / height,
        top=1 - (_TOP + title) / height, wspace=_WGAP / _PANEL_W,
        hspace=(_HGAP + title) / _PANEL_H)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _panel_title(ax, text, no_offset_text):
    """Set a panel's title (8-point type). Where the y axis can carry no offset text
    (``no_offset_text``: a log axis, a count axis) the title sits at a fixed height (y = 1):
    matplotlib's automatic placement measures the y tick labels of every panel of the row at
    each draw, to keep the title clear of an offset text ("1e-5" above the axis), which cost
    ~30% of a report's drawing (the band figures of ``rates --quick``, 24 panels each). A
    linear y axis of values (negative losses), which may carry an offset text, keeps it."""
    ax.set_title(text, fontsize=8, **({"y": 1.0} if no_offset_text else {}))


def _title_lines(titles):
    """The most lines of any of ``titles`` (a dict of panel titles)."""
    return max((t.count("\n") + 1 for t in titles.values()), default=1)


def _save(fig, path):
    """Write ``fig`` as a PNG with an adaptive 256-colour palette: line plots and bands lose
    nothing visible, and a study's figures shrink ~3-4x (a 48-panel grid ~1 MB -> ~0.3 MB).
    Atomically: the PNG goes to a hidden file beside ``path``, renamed over it once complete,
    so a report killed while it writes leaves the previous figure or none, never a truncated
    one."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=_DPI, format="png")
    buf.seek(0)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with PIL.Image.open(buf) as im:
            im.convert("RGB").quantize(colors=256).save(tmp, format="PNG", optimize=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _filled(sub, var, final_var):
    """The saved ``var`` (flow, time) of one cell, ready for quantiles over flows.

    Saved values after a flow stopped are NaN. A converged flow (status 0) stays at its limit,
    so its NaNs after ``t_final`` become ``final_var``; a flow that stopped for another reason
    (max_steps, step_underflow, non_finite) leaves the band there. Only the times at which
    some flow of the cell has a value are kept (the time axis is the union of the save times
    of all cells; the others are NaN for this cell, and would break the lines). Returns
    ``(times, values)``.
    """
    vals = sub[var].transpose("flow", "time").values
    keep = np.isfinite(vals).any(axis=0)
    t, vals = sub["time"].values[keep], vals[:, keep]
    stopped = (sub["status"].values == 0)[:, None] & (t[None, :] > sub["t_final"].values[:, None])
    fill = np.broadcast_to(sub[final_var].values[:, None], vals.shape)
    vals = np.where(stopped & np.isnan(vals), fill, vals)
    return t, vals


def _quantiles(vals):
    """10/50/90% quantiles over flows (axis 0), NaN where no flow has a value."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN
        return np.nanquantile(vals, QUANTILES, axis=0)


def _time_zero(ds):
    """Where t = 0 goes on a log time axis: a third of the smallest positive saved time."""
    t = ds["time"].values
    pos = t[t > 0]
    return pos.min() / 3.0 if pos.size else 1.0


#: values below 0 by at most this fraction of the largest |value| are rounding, not a sign
ROUNDING_NEGATIVE = 1e-10
#: larger values are not drawn (a log axis with its margins would pass float64's range)
PLOT_MAX = 1e250


def _band(ax, t, vals, t0, color="C0"):
    """Draw the quantile band of ``vals`` (flow, time) against ``t`` with t = 0 moved to t0;
    a log y axis unless some value is truly negative (the generalized Huber loss with
    beta < -1 is negative near r = 0). Values at or below 0 by rounding only (the square
    loss of an exact fit through the Gram formula ends at ~-1e-14 with a loss of 1e2 at the
    start: eps times the terms that cancel) are drawn at the smallest positive value: a
    linear axis hid the whole decay of such cells, next to log-scale panels."""
    x = np.where(t > 0, t, t0)
    # a diverging flow's last saves reach ~1e302 (grad norms): matplotlib's log autoscale
    # adds its margins past float64's range there ("overflow encountered in exp"); drawn as
    # gaps, like the non-finite values that follow them
    vals = np.where(np.abs(vals) <= PLOT_MAX, vals, np.nan)
    finite = vals[np.isfinite(vals)]
    positive = finite[finite > 0]
    rounding = finite.size and finite.min() > -ROUNDING_NEGATIVE * np.abs(finite).max()
    if rounding and positive.size < finite.size and positive.size:
        vals = np.where(np.isfinite(vals) & (vals < positive.min()), positive.min(), vals)
    lo, med, hi = _quantiles(vals)
    ax.fill_between(x, lo, hi, color=color, alpha=0.3, lw=0, label="10-90%")
    ax.plot(x, med, color=color, lw=1.5, label="median")
    ax.set_yscale("log" if rounding and positive.size else "linear")


def _band_count(ax, vals):
    """Say in the panel over how many flows the band's right end is, when not over all the
    cell's flows (the others stopped early: diverged, max_steps, ...): the quantiles at each
    time are over the flows with a finite value then, a denominator that would otherwise
    shrink unseen."""
    n, k = vals.shape[0], int(np.isfinite(vals[:, -1]).sum())
    if k < n:
        ax.text(0.02, 0.03, f"at the end: {k} of {n} flows", transform=ax.transAxes,
                fontsize=7, ha="left", va="bottom")  # fmt: skip


def _nothing_finite(ax, n):
    """Mark a panel whose ``n`` flows have no finite value at any saved time (every flow of
    the cell diverged at once, e.g. from a huge initial scale, or the gap to a best limit
    that none of them reached): the panel stays empty and says why, instead of failing on an
    empty time axis."""
    ax.text(0.5, 0.5, f"no finite value to draw:\nall {n} flows non-finite\n(see the status)",
            transform=ax.transAxes, ha="center", va="center", fontsize=8)  # fmt: skip


def _legend_on_first_drawn(axes):
    """The legend, on the first panel that has labelled artists (a panel of flows without a
    finite value has none: matplotlib would warn of an empty legend there)."""
    drawn = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if drawn:
        drawn[0].legend(fontsize=7)


def _log_time_axis(ax, t0, t_max):
    """Log time axis whose left edge is t = 0 (drawn at ``t0``, tick label "0")."""
    ax.set_xscale("log")
    ax.set_xlim(t0, t_max * 1.05)
    decades = np.arange(math.ceil(math.log10(t0 * 1.5)), math.floor(math.log10(t_max)) + 1)
    ticks = [t0, *(10.0**decades)]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    fmt = LogFormatterSciNotation()
    ax.xaxis.set_major_formatter(lambda x, pos: "0" if x == t0 else fmt(x, pos))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _time_bands(ds, titles, path, var, final_var, transform, ylabel, hline=None):
    """Quantile bands of ``transform(sub, values)`` against time, one panel per cell (log
    time axis; log y axis where the values are positive), each noting over how many of its
    flows the band ends (:func:`_band_count`), or that none has a finite value
    (:func:`_nothing_finite`); ``hline(sub)`` gives an optional dashed
    reference level ``(value, label)`` per panel."""
    cells = _cells(ds)
    fig, axes = _grid(len(cells), _title_lines(titles))
    t0 = _time_zero(ds)
    t_max = max(float(ds["time"].max()), 10 * t0)
    for ax, (c, sub) in zip(axes, cells):
        t, vals = _filled(sub, var, final_var)
        vals = transform(sub, vals)
        if np.isfinite(vals).any():
            _band(ax, t, vals, t0)
            _band_count(ax, vals)
        else:
            _nothing_finite(ax, vals.shape[0])
        level = None if hline is None else hline(sub)
        if level is not None:
            ax.axhline(level[0], color="k", ls="--", lw=0.8, label=level[1])
        _panel_title(ax, titles[c], ax.get_yscale() == "log")  # the scale _band chose
        ax.set_ylabel(ylabel)
    for ax in axes:
        _log_time_axis(ax, t0, t_max)
        ax.set_xlabel("time t")
    _legend_on_first_drawn(axes)
    return _save(fig, path)


def loss_time(ds, titles, path):
    """Loss L(w(t)) against time: 10-50-90% bands over the flows of each cell.

    Shows how fast the flows of a cell descend and whether they split into groups (a wide band
    at late times: flows ending at different limits, or plateaus near saddles). Log-log axes;
    t = 0 is the left edge. Mixes the datasets of a cell, whose losses differ: see
    :func:`loss_gap_time` for a scale-free view.
    """
    return _time_bands(ds, titles, path, LOSS_T, "loss_final", lambda sub, v: v, "loss L(w(t))")


def loss_gap_time(ds, titles, path, gap_tol):
    """Relative gap to the best limit found, ``(L(w(t)) - L_best) / L(v = 0)``, as bands.

    ``L_best`` is the lowest limit loss among the flows of the same cell and dataset and
    ``L(v = 0)`` the loss of the zero network (the analysis' scale), so datasets of a cell are
    comparable and the log axis shows the approach to the best limit (a straight line: a
    power law; a bend down: exponential convergence near a strict minimum). Gaps are floored
    at ``gap_tol`` (dashed): below it a flow counts as at the best value (``reached_best``).
    """

    def gap(sub, vals):
        best = sub["loss_best_found"].values[:, None]
        rel = (vals - best) / sub["loss_scale"].values[:, None]
        return np.where(np.isnan(rel), np.nan, np.maximum(rel, gap_tol))

    return _time_bands(
        ds, titles, path, LOSS_T, "loss_final", gap, "(L(t) - L_best) / L(v=0)",
        hline=lambda sub: (gap_tol, "gap_tol"),
    )  # fmt: skip


def grad_norm_time(ds, titles, path, grad_tols):
    """Gradient norm ``||grad L(w(t))||`` against time as bands, log-log: the decay rate
    (a straight line: a power law, as near degenerate limits; a curve bending down:
    exponential decay, near a strict minimum; a shoulder: a plateau near a saddle). Dashed:
    the integrator's ``grad_tol``, where converged flows stop (they keep their final value)."""

    def tol(sub):
        g = grad_tols.get(int(sub["cell"].values[0]))
        return None if g is None else (g, "grad_tol")

    return _time_bands(
        ds, titles, path, "grad_norm", "grad_norm_final", lambda sub, v: v, "||grad L(w(t))||",
        hline=tol,
    )  # fmt: skip


def final_loss_hist(ds, titles, path):
    """Histogram of the limit loss per cell, stacked by dataset (up to 8 datasets).

    Limits of gradient flows take few distinct values (the global minimum and the spurious
    critical values), so the histogram shows which limits occur and how often. The values:
    ``limit_loss`` (the loss at the final point summed on the data, the value the analysis
    classifies) where the study is analysed, else ``loss_final`` (for the square loss the
    Gram formula's value, which cancellation can put below the minimum, even below 0).
    Dashed lines, per dataset: the global minimum over w (``loss_global_min``) where the
    analysis decides globality (``is_global``), else the best value found. The bins span the
    values and the dashed lines, so that limits far from the reference stay visible bars.
    """
    cells = _cells(ds)
    fig, axes = _grid(len(cells), _title_lines(titles), sharex=False)
    value_var = "limit_loss" if "limit_loss" in ds else "loss_final"
    kinds = set()
    for ax, (c, sub) in zip(axes, cells):
        loss = sub[value_var].values
        dset = sub["dataset"].values
        finite = np.isfinite(loss)
        groups = np.unique(dset)
        refs = [_reference_loss(sub, dset == d, kinds) for d in groups]
        stack = len(groups) <= 8
        if stack:
            data = [loss[finite & (dset == d)] for d in groups]
            labels = [f"dataset {d}" for d in groups]
        else:
            data, labels = [loss[finite]], ["all datasets"]
        if finite.any():
            ax.hist(data, bins=_hist_bins(loss[finite], refs), stacked=True, label=labels)
        for i, r in enumerate(refs):
            if np.isfinite(r):
                ax.axvline(r, color=f"C{i % 10}" if stack else "k", ls="--", lw=0.8)
        n_bad = int((~finite).sum())
        if n_bad:
            ax.text(0.98, 0.95, f"{n_bad} non-finite", transform=ax.transAxes, ha="right", va="top")
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        _panel_title(ax, titles[c], True)  # counts: small integers
        ax.set_ylabel("flows")
    dashed = {frozenset({"global"}): "the global minimum over w",
              frozenset({"best"}): "the best value found",
              frozenset({"global", "best"}): "the global minimum over w where decided, else "
                                            "the best value found"}.get(frozenset(kinds))
    fig.supxlabel("loss at the limit" + (f" (dashed: {dashed})" if dashed else ""), fontsize=9)
    if len(np.unique(ds["dataset"].values)) > 1:
        _legend_on_first_drawn(axes)
    return _save(fig, path)


def _hist_bins(values, refs):
    """30 equal bins over the finite ``values`` and ``refs`` with 5% margins. Explicit bins:
    flows at one limit agree to rounding, a range matplotlib's own binning cannot cut; a
    range of at least 1e-6 of the values' magnitude."""
    shown = np.concatenate([values, [r for r in refs if np.isfinite(r)]])
    lo, hi = shown.min(), shown.max()
    span = max(hi - lo, 1e-6 * max(abs(hi), abs(lo), 1e-300))
    return np.linspace(lo - 0.05 * span, hi + 0.05 * span, 31)


def _reference_loss(sub, sel, kinds):
    """The dashed line of one dataset's flows ``sel`` in :func:`final_loss_hist`: the global
    minimum over w where ``is_global`` is decided for some flow, else the best value found
    (NaN if neither is known); adds ``"global"`` or ``"best"`` to ``kinds``."""
    decided = "is_global" in sub and np.isfinite(sub["is_global"].values[sel]).any()
    var = "loss_global_min" if decided else "loss_best_found"
    if var not in sub:
        return np.nan
    r = sub[var].values[sel]
    if not np.isfinite(r).any():
        return np.nan
    kinds.add("global" if decided else "best")
    return float(np.nanmin(r))


def fraction_global(table, path, titles=None):
    """Fraction of flows at the global minimum per cell, with Wilson 95% intervals; each cell
    labelled by its factor levels (``titles``: :func:`panel_titles`), else by number.

    ``table`` is :func:`lcnfast.study.statistics.cell_summary`; the denominator is every flow of
    the cell (a diverged flow counts as not at the reference). Filled circles: ``is_global``
    (a convex loss: the analysis knows the global minimum over w); open squares:
    ``reached_best``, the fraction at the best value found in the cell's dataset (an upper
    bound on the fraction global when the best found is not global). The question of the
    quickstart study, answered in one picture.
    """
    rows = table[table["n_flows"] > 0]
    labels = [_cell_label(titles[c]) if titles else f"cell {c}" for c in rows.index]
    height = 2.6 + 0.045 * max(map(len, labels), default=0)  # room for the slanted labels
    fig = Figure(figsize=(max(4.0, 0.6 * len(rows) + 2.0), height), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    for ref, marker, face in (("global", "o", None), ("best found", "s", "none")):
        sel = (rows["reference"] == ref).values
        if not sel.any():
            continue
        r = rows[sel]
        err = np.vstack([r["frac_ref"] - r["ref_lo"], r["ref_hi"] - r["frac_ref"]])
        ax.errorbar(
            x[sel], r["frac_ref"], yerr=err, fmt=marker, mfc=face, capsize=3,
            label="global (is_global)" if ref == "global" else "at best found (reached_best)",
        )  # fmt: skip
    ax.set_xticks(x, labels, rotation=40, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("fraction of all flows (Wilson 95%)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _cell_label(title):
    """A one-line tick label from a :func:`panel_titles` title: ``"3: (16; 3,3; 1,1), teacher"``
    (the cell number, then the levels of the varying factors, without the factor names)."""
    head, *levels = title.split("\n")
    return ", ".join([head.removeprefix("cell ") + ":", *(lv.split("=", 1)[-1] for lv in levels)]
                     ).replace(":,", ":")


#: the losses of the paper's Figure 1 (section 3.3): label -> (name, parameters)
FIGURE1_LOSSES = {
    "square  $r^2$": ("square", {}),
    "$\\ell_4$  $|r|^4/4$": ("lp", {"p": 4.0}),
    "$\\ell_1$  $|r|$": ("lp", {"p": 1.0}),
    "pseudo-Huber $\\delta=1$": ("pseudo_huber", {"delta": 1.0}),
    "gen. Huber $\\alpha=1, \\beta=0$": ("generalized_huber", {"alpha": 1.0, "beta": 0.0}),
    "gen. Huber $\\alpha=1, \\beta=-1$": ("generalized_huber", {"alpha": 1.0, "beta": -1.0}),
    "log-cosh $\\alpha=1$": ("log_cosh", {"alpha": 1.0}),
}


def paper_figure1(path):
    """Figure 1 of the paper: the losses of section 3.3 as functions of the residual
    ``r = x - y`` on [-4, 4], evaluated with :mod:`lcnfast.losses` (the code the flows use).

    The smooth losses grow like |r| for large |r| (robust, as l1) and like r^2 near 0
    (differentiable, as l2); this is what Corollary 3.7 needs. The y axis is cut at 6 (the
    l4 loss reaches 64 at r = 4).
    """
    r = np.linspace(-4.0, 4.0, 801)
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    for label, (name, params) in FIGURE1_LOSSES.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # l1 is not analytic: known
            loss = _losses.from_dict({"name": name, **params})
        ax.plot(r, loss.value(r), label=label, lw=1.4)
    ax.set_xlim(-4, 4)
    ax.set_ylim(0, 6)
    ax.set_xlabel("residual r = x - y")
    ax.set_ylabel("loss l(r)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
