"""The report of a study (lcnfast.study.report): files, tables, checks, custom sections.

One tiny study (square loss; a filling stride-1 and a strided architecture; rk45 and Euler;
2 datasets of 3 flows per cell, in shards of 2) is run once for the module.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from lcnfast.study import load, read_spec, run_study, write_report
from lcnfast.study import report as R

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = (
    "loss_time.png",
    "loss_gap_time.png",
    "grad_norm_time.png",
    "final_loss_hist.png",
    "fraction_global.png",
    "losses.png",
)
SECTIONS = '''
def sections(ds, study, figures_dir):
    (figures_dir / "custom.txt").write_text("made by the study's sections")
    return [("Custom check", f"flows seen by the section: {ds.sizes['flow']}"),
            ("Second", "cells: " + str(len(study.cells)))]
'''


def _spec(sections):
    return {
        "name": "tiny-report",
        "description": "a tiny study for the report tests",
        "seed": 3,
        "flows_per_dataset": 3,
        "shard_size": 2,
        "architectures": [{"d0": 6, "k": [3, 3]}, {"d0": 6, "k": [2, 2], "s": [2, 1]}],
        "losses": "square",
        "integrator": [
            {"method": "rk45", "t_end": 50.0, "grad_tol": 1e-7, "max_steps": 20000, "save": 8},
            {"method": "euler", "h": 1e-3, "n_steps": 500, "save_every": 100},
        ],
        "data": {"m": 8, "noise": 0.1, "n_datasets": 2},
        "init": {"scale": 0.5},
        "report": {"title": "Tiny report", "sections": str(sections)},
    }


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    sections = root / "sections.py"
    sections.write_text(SECTIONS)
    out = root / "study"
    run_study(_spec(sections), out=out, report=False, progress=False, threads=1)
    write_report(out)
    return out


@pytest.fixture(scope="module")
def loaded(study_dir):
    """The study's Dataset (tests that change it take a deep copy)."""
    return load(study_dir)


@pytest.fixture(scope="module")
def text(study_dir):
    return (study_dir / "report.md").read_text()


def _table_after(text, marker):
    """Header and rows (lists of stripped cells) of the first markdown table after ``marker``."""
    lines = text.split(marker, 1)[1].splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    table = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        table.append([c.strip() for c in ln.strip("|").split(" | ")])
    return table[0], table[2:]


def test_figures_are_pngs_and_linked(study_dir, text):
    for name in FIGURES:
        path = study_dir / "figures" / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert f"(figures/{name})" in text


def test_a_figure_write_that_fails_leaves_the_earlier_figure_whole(tmp_path, monkeypatch):
    """Claim: figures are replaced atomically. A write that dies halfway (here PIL raising
    after half the PNG, as a SIGKILL or a full disk would stop it) leaves the earlier file
    byte for byte and no temporary file; a write that succeeds replaces it. Checked able to
    fail: saving straight to the path leaves a truncated PNG."""
    from matplotlib.figure import Figure

    import lcnfast.study.figures as F

    path = tmp_path / "fig.png"
    F._save(Figure(figsize=(2, 2)), path)
    before = path.read_bytes()
    assert before[:8] == PNG_MAGIC

    real_save = PIL.Image.Image.save

    def dies_halfway(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if not isinstance(fp, (str, Path)):  # matplotlib's own PNG, into memory
            return
        data = Path(fp).read_bytes()
        Path(fp).write_bytes(data[: len(data) // 2])
        raise OSError("disk full")

    fig = Figure(figsize=(3, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    monkeypatch.setattr(PIL.Image.Image, "save", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        F._save(fig, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.png"]
    monkeypatch.setattr(PIL.Image.Image, "save", real_save)
    F._save(fig, path)
    assert path.read_bytes() != before and path.read_bytes()[:8] == PNG_MAGIC


def test_header_and_spec(text):
    assert text.startswith("# Tiny report\n")
    assert "a tiny study for the report tests" in text
    assert "flows: 24 of 24 expected (complete)" in text
    assert "Partial study" not in text
    assert re.search(r"\| architecture \| 2 \| \(6; 3,3; 1,1\), \(6; 2,2; 2,1\) \|", text)
    assert "| euler(h=0.001, n_steps=500) | euler | h=0.001, n_steps=500" in text


def test_cell_table_one_row_per_cell(study_dir, loaded, text):
    study = read_spec(study_dir)
    table = R.cell_summary(loaded, study)
    assert list(table.index) == [0, 1, 2, 3]
    assert (table["n_flows"] == 6).all() and (table["n_expected"] == 6).all()
    expected = {"architecture", "integrator", "frac_minimum", "frac_non_finite", "frac_ref",
                "ref_lo", "ref_hi", "n_lemma36_ok", "t_final_q50", "steps_q90",
                "grad_evals_q10", "drift_q50", "n_loss_increased", "status_converged"}  # fmt: skip
    assert expected <= set(table.columns)
    assert "loss" not in table.columns  # one level: not a column
    # every cell decides globality (filling: the convex minimum; strided: the minimum over the
    # image of pi that lcnfast.analysis computes)
    assert list(table["reference"]) == ["global"] * 4
    assert list(table["prop51"]) == [True, True, False, False]
    fracs = table[[f"frac_{x}" for x in ("minimum", "strict_saddle", "degenerate",
                                         "not_critical", "non_finite", "not_converged")]]  # fmt: skip
    np.testing.assert_allclose(fracs.sum(axis=1), 1.0)
    head, rows = _table_after(text, "## Limit points")
    assert head[:4] == ["cell", "architecture", "integrator", "flows"]
    assert head[-2:] == ["at reference (Wilson 95%)", "reference"]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    assert all(r[3] == "6/6" for r in rows)
    for heading in ("## Bounds on", "## Integration"):
        _, rows = _table_after(text, heading)
        assert [r[0] for r in rows] == ["0", "1", "2", "3"]


def test_wilson_interval():
    lo, hi = R.wilson(7, 10)  # Wilson score interval, z = 1.959964
    assert lo == pytest.approx(0.396774, abs=1e-5) and hi == pytest.approx(0.892208, abs=1e-5)
    assert R.wilson(0, 12) == pytest.approx((0.0, 0.242494), abs=1e-5)
    assert np.isnan(R.wilson(0, 0)).all()


def test_wilson_in_the_table(study_dir, loaded):
    table = R.cell_summary(loaded, read_spec(study_dir))
    for _, row in table.iterrows():
        lo, hi = R.wilson(row["k_ref"], row["n_ref"])
        assert (row["ref_lo"], row["ref_hi"]) == (lo, hi)
        assert lo <= row["frac_ref"] <= hi


def test_diverged_flows_count_in_every_denominator(study_dir, loaded):
    """Flows without a finite limit (non_finite: is_global NaN, v_l1_max inf, drift NaN) stay
    in the denominators: the fraction at the global minimum is k of all the cell's flows (it
    was k of the flows where is_global is decided: 1 global flow of 16, 15 diverged, read
    "1 [0.207, 1]"), and the bounds and quantiles say over how many flows they are."""
    ds = loaded.copy(deep=True)
    study = read_spec(study_dir)
    flows = np.flatnonzero(ds["cell"].values == 0)
    assert (ds["is_global"].values[flows] == 1).all()  # all 6 global before
    gone = flows[:4]
    ds["is_global"].values[gone] = np.nan
    ds["reached_best"].values[gone] = False
    ds["label"].values[gone] = R.LABELS.index("non_finite")
    ds["v_l1_max"].values[gone] = np.inf
    ds["balance_drift"].values[gone] = np.nan
    table = R.cell_summary(ds, study)
    row = table.loc[0]
    assert (row["reference"], row["k_ref"], row["n_ref"]) == ("global", 2, 6)
    assert row["frac_ref"] == pytest.approx(2 / 6)
    assert (row["ref_lo"], row["ref_hi"]) == R.wilson(2, 6)
    assert (row["n_lemma36"], row["n_lemma36_ok"], row["n_lemma36_nonfinite"]) == (6, 2, 4)
    assert row["drift_n"] == 2
    varying = R.varying_factors(study)
    _, rows = _table_after(R._limits_section(table, varying), "## Limit points")
    assert rows[0][-2:] == [f"2/6 = 0.333 [{R._fmt(row['ref_lo'])}, {R._fmt(row['ref_hi'])}]",
                            "global"]  # fmt: skip
    _, rows = _table_after(R._bounds_section(table, ds, varying), "## Bounds")
    assert rows[0][4] == "**2/6: VIOLATED** (4 non-finite)"
    bad = R.bound_violations(ds)
    assert (bad["bound"] == "Lemma 3.6").sum() == 4  # the non-finite ones listed too
    _, rows = _table_after(R._integration_section(table, varying), "## Integration")
    assert rows[0][7].endswith("(2 finite of 6)")
    # every flow of a cell diverged: still the global reference, 0 of 6
    ds["is_global"].values[flows] = np.nan
    ds["reached_best"].values[flows] = False
    row = R.cell_summary(ds, study).loc[0]
    assert (row["reference"], row["k_ref"], row["n_ref"]) == ("global", 0, 6)


def test_the_studies_sections_count_the_reference_as_the_report_does():
    """The built-in studies' sections (limits, init_scale) switched to "best found" for a
    whole cell as soon as one flow's is_global was undecided (a diverged flow), while the
    report's table kept the global minimum with the diverged flow counted as not at it: the
    two disagreed on the same cell. Both count with statistics.at_reference now."""
    import importlib.util
    import xarray as xr

    from lcnfast.study.statistics import at_reference

    sub = xr.Dataset({"is_global": ("flow", [1.0, np.nan, 0.0, 1.0]),
                      "loss_global_min": ("flow", [0.5] * 4),
                      "reached_best": ("flow", [True, False, True, True])})
    hit, ref = at_reference(sub)
    assert ref == "global" and hit.tolist() == [True, False, False, True]
    undecided = sub.assign(is_global=("flow", [np.nan] * 4), loss_global_min=("flow", [np.nan] * 4))
    hit, ref = at_reference(undecided)
    assert ref == "best found" and hit.tolist() == [True, False, True, True]
    for name in ("limits", "init_scale"):
        path = Path(__file__).parents[1] / "studies" / "sections" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"sections_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.at_reference is at_reference


def test_report_of_a_cell_whose_flows_are_never_finite(study_dir, loaded, tmp_path):
    """Every flow of cell 0 non-finite at every save time (init scale 1e60: the loss is inf at
    t = 0 and the flows stop there): the figures are drawn, that cell's band panels empty
    and saying so, and the tables say the flows diverged (the report failed with "not enough
    values to unpack" on the empty time axis)."""
    from lcnfast.flows import STATUS

    ds = loaded.copy(deep=True)
    study = read_spec(study_dir)
    flows = np.flatnonzero(ds["cell"].values == 0)
    for var in ("loss", "grad_norm"):
        ds[var][{"flow": flows}] = np.nan
        ds[var][{"flow": flows, "time": 0}] = np.inf
    for var, value in (("status", [k for k, v in STATUS.items() if v == "non_finite"][0]),
                       ("label", R.LABELS.index("non_finite")), ("t_final", 0.0),
                       ("loss_final", np.inf), ("limit_loss", np.nan), ("is_global", np.nan),
                       ("reached_best", False), ("loss_best_found", np.nan)):  # fmt: skip
        ds[var][{"flow": flows}] = value
    table = R.cell_summary(ds, study)
    for name, _ in R._figures(ds, study, table, tmp_path):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC, name
    varying = R.varying_factors(study)
    head, rows = _table_after(R._limits_section(table, varying), "## Limit points")
    assert rows[0][head.index("non_finite")] == "1"
    assert rows[0][-2:] == ["0/6 = 0 [0, 0.39]", "global"]
    _, rows = _table_after(R._integration_section(table, varying), "## Integration")
    assert rows[0][-1] == "non_finite 6"


def test_planted_prop51_violation_is_listed(study_dir, loaded):
    ds = loaded.copy(deep=True)
    study = read_spec(study_dir)
    i = int(np.flatnonzero((ds["cell"].values == 1) & (ds["dataset"].values == 1))[2])
    for var, value in (("is_critical", True), ("attains_convex_min", False),
                       ("has_common_root", False), ("prop51_ok", 0.0)):  # fmt: skip
        ds[var].values[i] = value
    bad = R.prop51_violations(ds)
    assert len(bad) == 1
    assert bad.iloc[0][["cell", "dataset", "replicate"]].tolist() == [1, 1, 2]
    table = R.cell_summary(ds, study)
    assert table.loc[1, "n_prop51_violations"] == 1
    assert table.loc[1, "n_nonglobal_critical"] >= 1
    md = R._prop51_section(table, ds, R.varying_factors(study))
    assert "**1 violation(s)**" in md
    head, rows = _table_after(md, "violation(s)**")
    assert head[:3] == ["cell", "dataset", "replicate"] and rows[0][:3] == ["1", "1", "2"]


def test_no_violation_reported_on_clean_data(text):
    assert "No violation: every critical limit off the convex minimum has a common root." in text
    assert "Not applicable (a stride > 1, a non-convex loss, or no flows yet): cells 2, 3." in text


def test_planted_bound_violation_is_listed(study_dir, loaded):
    ds = loaded.copy(deep=True)
    i = int(np.flatnonzero(ds["cell"].values == 2)[4])
    ds["v_l1_max"].values[i] = 2.0 * ds["lemma36_bound"].values[i]
    bad = R.bound_violations(ds)
    assert set(bad["bound"]) == {"Lemma 3.6", "Gram"}
    assert (bad[["cell", "dataset", "replicate"]].values == [2, 1, 1]).all()
    table = R.cell_summary(ds, read_spec(study_dir))
    assert table.loc[2, "n_lemma36_ok"] == table.loc[2, "n_lemma36"] - 1 == 5


def test_custom_sections_are_appended(study_dir, text):
    assert "## Custom check\n\nflows seen by the section: 24" in text
    assert text.index("## Custom check") > text.index("## Figures")
    assert "## Second\n\ncells: 4" in text
    assert (study_dir / "figures" / "custom.txt").is_file()


def test_bad_sections_file(study_dir, loaded, tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def sections(ds, study, figures_dir):\n    return ['just a string']\n")
    with pytest.raises(TypeError, match="item 0 must be a .heading, markdown. pair"):
        R._custom_sections(str(bad), loaded, read_spec(study_dir), tmp_path)
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no function sections"):
        R._custom_sections(str(bad), loaded, read_spec(study_dir), tmp_path)


@pytest.mark.parametrize("code, error, what", [
    ("def sections(ds, study, figures_dir):\n    return [('a', ds.attrs['nope'])]\n",
     ValueError, r"bad\.py, line 2: KeyError: 'nope' \(in sections\(\)\)"),
    ("def sections(ds, study, figures_dir):\n    return None\n",
     TypeError, r"bad\.py: sections\(\) must return a list of \(heading, markdown\) pairs, "
                "got None"),
    ("def sections(ds, study, figures_dir):\n    yield 1 / 0\n",
     ValueError, r"bad\.py, line 2: ZeroDivisionError: division by zero \(in sections\(\)\)"),
    ("def sections(ds, study, figures_dir)\n    return []\n",
     ValueError, r"bad\.py, line 1: SyntaxError: expected ':'"),
    ("import no_such_module_here\n",
     ValueError, r"bad\.py, line 1: ModuleNotFoundError: .* \(on import\)"),
])  # fmt: skip
def test_errors_of_the_sections_code_are_one_line_naming_it(study_dir, loaded, tmp_path, code,
                                                            error, what):
    """A KeyError inside sections() or a syntax error gave a traceback, a None return
    "'NoneType' object is not iterable" without naming report.sections."""
    bad = tmp_path / "bad.py"
    bad.write_text(code)
    with pytest.raises(error, match=rf"^report\.sections: .*{what}$"):
        R._custom_sections(str(bad), loaded, read_spec(study_dir), tmp_path)


def test_a_run_refuses_a_bad_sections_file_before_any_flow(tmp_path):
    """A sections file without sections() or with a syntax error failed the run after all
    its flows (at the report); now the run refuses it first, naming report.sections."""
    bad = tmp_path / "bad.txt"  # any suffix is imported
    for code, what in (("x = 1\n", "defines no function sections"),
                       ("def sections(ds, study, figures_dir)\n", "line 1: SyntaxError")):
        bad.write_text(code)
        with pytest.raises(ValueError, match=rf"^report\.sections: {bad}.*{what}"):
            run_study(_spec(bad), out=tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()


def test_load_sections_gives_the_reports_module(study_dir, loaded, tmp_path):
    """lcnfast.study.load_sections: the module the report calls, from a Study, a spec dict or a
    built-in name; re-read after an edit; a clear ValueError without a sections file."""
    from lcnfast.study import load_sections

    study = read_spec(study_dir)
    mod = load_sections(study)
    assert mod.sections(loaded, study, tmp_path)[1] == ("Second", "cells: 4")
    src = Path(study.spec["report"]["sections"])
    spec = _spec(src)
    assert load_sections(spec).sections is not mod.sections  # imported afresh
    assert callable(load_sections("rates").per_flow_fits)  # as the built-in notebooks use it
    no_sections = dict(spec, report={"title": "t"})
    with pytest.raises(ValueError, match="has no report.sections file"):
        load_sections(no_sections)
    bad = tmp_path / "nosections.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no function sections"):
        load_sections(dict(spec, report={"sections": str(bad)}))


def test_partial_study_says_so(study_dir, tmp_path):
    """Cell 3 without any shard and cell 2 with one shard (of 2 flows) missing."""
    part = tmp_path / "partial"
    shutil.copytree(study_dir, part)
    (part / "report.md").unlink()
    (part / "shards" / "c0002_d0001_f0000000-0000002.nc").unlink()
    for shard in (part / "shards").glob("c0003_*.nc"):
        shard.unlink()
    text = write_report(part).read_text()
    assert "flows: 16 of 24 expected (**partial**)" in text
    note = "> **Partial study**: 16 of 24 flows are in finished shards; incomplete cells: 2, 3."
    assert note in text
    _, rows = _table_after(text, "## Limit points")
    assert [r[3] for r in rows] == ["6/6", "6/6", "4/6", "0/6"]
    assert rows[3][4:] == ["–"] * (len(rows[3]) - 4)
    for name in FIGURES:
        assert (part / "figures" / name).read_bytes()[:8] == PNG_MAGIC


def test_final_loss_histogram_of_flows_at_one_limit(study_dir, loaded, tmp_path):
    """Flows at one limit agree to rounding: the histogram must still be drawn (matplotlib
    refused 30 bins over a range of a few ulp)."""
    from lcnfast.study import figures as F

    ds = loaded.copy()
    L = ds["limit_loss"].values.copy()
    L[:] = 3.0 + np.arange(L.size) * 4e-16
    ds["limit_loss"] = ("flow", L)
    study = read_spec(study_dir)
    path = F.final_loss_hist(ds, F.panel_titles(study, R.varying_factors(study)), tmp_path / "h.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_loss_bands_take_a_log_axis_unless_a_loss_is_truly_negative():
    """The square loss of an exact fit ends a few 1e-14 below 0 through the Gram formula's
    rounding: its panels were drawn on a linear axis (0-500), the whole decay to 1e-24 a flat
    line next to log-scale panels. A loss negative beyond rounding (the generalized Huber loss
    with beta < -1) keeps the linear axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lcnfast.study import figures as F

    t = np.array([0.0, 1.0, 10.0, 100.0])
    exact_fit = np.array([[400.0, 3.0, 1e-12, -4.3e-14], [500.0, 2.0, 1e-20, 2.4e-24]])
    truly_negative = np.array([[3.0, 1.0, -0.5, -0.69], [2.0, 0.5, -0.6, -0.69]])
    fig, (a, b) = plt.subplots(1, 2)
    F._band(a, t, exact_fit, 0.1)
    F._band(b, t, truly_negative, 0.1)
    assert a.get_yscale() == "log" and b.get_yscale() == "linear"
    assert a.get_ylim()[0] > 0 and a.get_ylim()[0] < 1e-20  # down to the smallest positive
    plt.close(fig)
    # a diverging flow's gradient norms near 1e302 took the log axis's margins past float64
    # ("overflow encountered in exp" on the report's stderr): drawn as gaps
    import warnings

    diverging = np.array([[1.0, 1e100, 1e302, np.nan], [1.0, 0.5, 0.1, 0.01]])
    fig, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F._band(ax, t, diverging, 0.1)
        assert ax.get_yscale() == "log" and np.all(np.isfinite(ax.get_ylim()))
    plt.close(fig)


def test_final_loss_histogram_marks_the_global_minimum_over_w(loaded):
    """The dashed line of each dataset is the global minimum over w (loss_global_min: the
    image minimum for a non-filling or strided architecture, above the convex minimum) where
    the analysis decides globality, else the best value found; and the bins reach it, so
    that limits far from it stay visible bars (the histogram drew the convex minimum as
    "global min" for every architecture, and bins over the limits alone)."""
    from lcnfast.study import figures as F

    strided = False
    for c in np.unique(loaded["cell"].values):
        sub = loaded.isel(flow=np.flatnonzero(loaded["cell"].values == c))
        for d in np.unique(sub["dataset"].values):
            sel = sub["dataset"].values == d
            kinds = set()
            ref = F._reference_loss(sub, sel, kinds)
            assert kinds == {"global"}
            assert ref == sub["loss_global_min"].values[sel][0]
            convex = sub["loss_convex_min"].values[sel][0]
            strided |= ref > convex + 1e-9 * abs(convex)
            undecided = sub.copy(deep=True)
            undecided["is_global"].values[:] = np.nan
            kinds = set()
            assert F._reference_loss(undecided, sel, kinds) == np.nanmin(
                sub["loss_best_found"].values[sel])
            assert kinds == {"best"}
    assert strided  # the strided cell's global minimum lies above the convex one: a real check
    bins = F._hist_bins(np.array([87.0, 87.0, 87.0]), [35.0, np.nan])
    assert bins[0] <= 35.0 and bins[-1] >= 87.0 and np.all(np.diff(bins) > 0)


def test_fraction_global_labels_cells_by_their_levels():
    from lcnfast.study import figures as F

    title = "cell 3\narchitecture=(16; 3,3; 1,1)\ntarget=v=[1, 0, -2, 0, 1]"
    assert F._cell_label(title) == "3: (16; 3,3; 1,1), v=[1, 0, -2, 0, 1]"
    assert F._cell_label("cell 0") == "0:"


def test_degenerate_limits_that_only_the_relative_tolerance_calls_degenerate_are_named(
        study_dir, loaded):
    """Claim: a degenerate limit whose balanced spectrum is positive above what a quartic
    direction shows at its gradient norm g (12 rho^(1/3) (g/4)^(2/3)) is one that only
    eig_tol * rho calls degenerate (an ill-conditioned minimum, as on nearly singular data:
    lambda_min / rho ~ 3e-8 there); the report counts those per cell and says so, and does not
    count degenerate limits below that (a quartic direction, as at the common-root limits of
    the limits study) or labels other than degenerate."""
    ds = loaded.copy(deep=True)
    study = read_spec(study_dir)
    flows = np.flatnonzero(ds["cell"].values == 0)
    deg = R.LABELS.index("degenerate")
    g = ds["limit_grad_norm"].values[flows[:3]]
    ds["label"].values[flows[:3]] = deg
    ds["hess_scale_balanced"].values[flows[:3]] = 1e6
    quartic = 12 * 1e6 ** (1 / 3) * (g / 4) ** (2 / 3)
    # two above the quartic eigenvalue (by 2x and 4x), one below it: only the first two count
    ds["hess_min_eig_balanced"].values[flows[:3]] = quartic * np.array([2, 4, 0.9])
    assert (quartic * 4 < 1e-6 * 1e6).all()  # all three under eig_tol * rho
    row = R.cell_summary(ds, study).loc[0]
    assert row["n_degenerate_pd"] == 2
    # degenerate for another reason (an eigenvalue above eig_tol * rho is not what made it so)
    ds2 = ds.copy(deep=True)
    ds2["hess_min_eig_balanced"].values[flows[0]] = 2.0
    assert R.cell_summary(ds2, study).loc[0]["n_degenerate_pd"] == 1
    ratios = quartic[:2] * np.array([2, 4]) / 1e6
    assert row["degenerate_pd_ratio_min"] == pytest.approx(ratios.min())
    assert row["degenerate_pd_ratio_max"] == pytest.approx(ratios.max())
    text = R._limits_section(R.cell_summary(ds, study), R.varying_factors(study))
    assert "by the relative tolerance only: in cells 0 (2 of 6" in text
    # nothing to say on the untouched study
    clean = R._limits_section(R.cell_summary(loaded, study), R.varying_factors(study))
    assert "relative tolerance only" not in clean
