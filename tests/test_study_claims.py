"""lcnfast.study.claims (verdicts) and the building blocks of the built-in studies' report
sections that are computed rather than read off the data (each against a direct reference)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lcnfast import Architecture, Problem, losses
from lcnfast.study.claims import check, claims_markdown, estimate_row

SECTIONS = Path(__file__).resolve().parents[1] / "studies" / "sections"


def _sections(name):
    spec = importlib.util.spec_from_file_location(f"sections_{name}", SECTIONS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ds(K):
    idx = np.arange(K)
    return xr.Dataset(coords={"cell": ("flow", idx % 3), "dataset": ("flow", idx % 2),
                              "replicate": ("flow", idx)})  # fmt: skip


def test_check_verdicts_and_violations_listed():
    ds = _ds(6)
    ok = np.array([1.0, 1.0, np.nan, 0.0, 1.0, np.nan])
    c = check("claim A", "tol", ok, detail={"x": np.arange(6) * 10.0})
    assert (c.n, c.n_violations, c.verdict) == (4, 1, "violated")
    assert list(c.where) == [0, 1, 3, 4]
    md = claims_markdown([c, check("claim B", "tol", np.ones(6, bool))], ds)
    # the violating flow is listed with its coordinates and detail value
    assert "| 0 | 1 | 3 | 30 |" in md.replace(".0 |", " |")
    assert "**holds**" in md and "**violated**" in md
    assert check("C", "t", np.ones(6, bool), applies=np.zeros(6, bool)).verdict == "not tested"
    # no violation among n: the Wilson upper bound shrinks like ~3.8 / n
    lo, hi = check("D", "t", np.ones(1000, bool)).rate_interval()
    assert lo == 0 and 0.002 < hi < 0.005
    with pytest.raises(ValueError, match="ok must be 1-D"):
        check("E", "t", np.ones((2, 2)))


def test_estimate_row():
    assert estimate_row(0, 0) == "–"
    assert estimate_row(5, 10).startswith("5/10 = 0.5 [0.23")


def test_distinct_values_clusters_within_tolerance():
    lim = _sections("limits")
    vals = np.array([1.0, 1.0 + 1e-9, 2.0, 2.0 + 5e-8, np.nan, 3.0])
    assert lim.distinct_values(vals, scale=1.0, rtol=1e-7) == 3
    assert lim.distinct_values(vals, scale=1.0, rtol=1e-12) == 5
    assert lim.distinct_values([np.nan], 1.0) == 0


def test_hankel_prediction_is_the_linearised_growth_rate():
    # claim: near w = 0 a depth-2 flow is linear with matrix [[0, -M], [-M^T, 0]]; its largest
    # eigenvalue sigma_max(M) is the growth rate. Reference: the largest eigenvalue of the
    # negative Hessian of L at w = 0 (exactly that block matrix), to rounding
    sec = _sections("init_scale")
    rng = np.random.default_rng(0)
    for k in ((3, 3), (2, 4), (3, 5)):
        arch = Architecture(12, k)
        X = rng.standard_normal((12, 20))
        p = Problem(arch, X, rng.standard_normal((arch.d_N, 20)), losses.square())
        H = p.hessian(np.zeros((1, arch.n_params)))[0]
        lam = np.linalg.eigvalsh(-H)[-1]
        assert sec.hankel_top_singular_value(p) == pytest.approx(lam, rel=1e-10)


def test_fit_line_recovers_slope():
    sec = _sections("init_scale")
    x = np.log(1 / np.array([0.1, 0.01, 0.001, 1e-4]))
    slope, se = sec.fit_line(x, 2.5 * x + 1.0)
    assert slope == pytest.approx(2.5) and se < 1e-10
    assert math.isnan(sec.fit_line(x[:2], x[:2])[0])


def test_growth_ratio_against_direct_norms():
    sec = _sections("rank")
    t = np.array([0.0, 1.0, 10.0, 100.0])
    w = np.array([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [np.nan, np.nan]]])
    ds = xr.Dataset(
        {"w": (("flow", "time", "param"), w), "t_final": ("flow", [50.0]),
         "w_final": (("flow", "param"), [[4.0, 0.0]])},
        coords={"time": t},
    )  # fmt: skip
    norms = sec.w_norms(ds)
    np.testing.assert_allclose(norms, [[1.0, 2.0, 3.0, np.nan]])
    # T = 50: the last saved t <= 5 is t = 1 (norm 2): ratio 4 / 2
    assert sec.growth_ratio(ds, norms)[0] == pytest.approx(2.0)
