"""Report sections of the `rates` study: how fast ||grad L(w(t))|| and L(w(t)) - L_inf decay.

What the mathematics says (self-contained; w' = -grad L(w)):

* **Morse-Bott limit** (label ``minimum``: the Hessian projected off the rescaling orbit is
  positive definite, smallest eigenvalue lambda_min = min ``hess_eig``). Linearising at the
  limit, d = w - w_inf obeys d' = -H d, so every component decays like exp(-lambda_j t) and
  eventually ||grad L|| = ||H d|| ~ exp(-lambda_min t) and L - L_inf = d^T H d / 2 ~
  exp(-2 lambda_min t). Derived (a sharp prediction: the fitted rates are compared with the
  Hessian at the limit, flow by flow).
* **l_p interpolation** (L = sum |r|^p over residuals r = pi(w) X - Y, p >= 4 even, noise 0,
  teacher in the image: L_inf = 0 and L vanishes to order p). In function space e = v - v*,
  F(e) = L is homogeneous of degree p and positive definite (X X^T of full rank), and
  v' = -M(t) grad F(e) with M = J J^T (J the Jacobian of pi), positive definite near a limit
  with a full-rank J. Euler's identity and homogeneity give c F^{(p-1)/p} <= ||grad F|| <=
  C F^{(p-1)/p}, hence -C' F^{2(p-1)/p} <= F' <= -c' F^{2(p-1)/p} and
  **L(t) = Theta(t^{-p/(p-2)})**, ||grad L|| = Theta(t^{-(p-1)/(p-2)}) (derived; in 1-D,
  r' = -p r^{p-1} gives exactly r ~ t^{-1/(p-2)}). That the *local* log-log slope over a late
  window equals the exponent is the heuristic part: Theta bounds only bound the slope error by
  log(C/c) / log(window length); it is exact once the direction e/|e| and M(t) settle
  (corrections O(|w - w_inf|) ~ t^{-1/(p-2)}).
* **Common-root and degenerate limits**: no prediction; the fits below are measurements.

Per flow, both models are fitted by least squares on the same late window of saved points
(``tail_window``): log g = a - rate t (exponential) and log g = a - expo log t (algebraic);
the model with the smaller residual is the flow's decay type. Summaries: quantiles over flows
and a bootstrap 95% interval of the median (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats  # noqa: E402
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast.study.claims import check, claims_markdown, estimate_row
from lcnfast.study.report import markdown_table

#: saved points below MARGIN * (integration floor rtol * lambda_max * ||w||) are not used: the
#: integrated path is the exact flow's only to ~rtol ||w||, i.e. in the gradient to
#: ~rtol lambda_max ||w||; 1e3 keeps the fitted points three decades above that
MARGIN = 1e3
#: the tail starts once ||grad L|| has fallen by this factor from its initial value: earlier
#: points belong to the transient (several modes, plateaus)
TAIL_DROP = 1e-3
#: points of the tail used in a fit (the last ones: the most asymptotic); 24 saves per decade,
#: so 12 points span half a decade of t in the algebraic tails
N_FIT = 12
#: fewer usable points than this: the tail is unresolved (no fit)
MIN_POINTS = 4
#: rounding floor of L - L_inf, relative to L(v = 0): L is a sum of m d_N terms
GAP_FLOOR = 1e3 * np.finfo(float).eps
#: Morse-Bott claim: |fitted rate / predicted rate - 1| <= RATE_TOL. The local slope of
#: log ||grad L|| is a weighted mean of the eigenvalues lambda_j of the modes still present and
#: tends to lambda_min; at the tail (gradient down by >= 1e3) the faster modes have decayed by
#: exp(-(lambda_2 - lambda_1) t), and H(w(t)) differs from H(w_inf) by O(||d||) ~ 1e-3 relative
RATE_TOL = 0.1
#: interpolation claim: |fitted exponent / (p/(p-2)) - 1| <= EXPO_TOL (see the docstring: the
#: corrections to the local slope are O(t^{-1/(p-2)}) ~ 0.03 at t ~ 1e5 for p = 6)
EXPO_TOL = 0.05
#: the interpolation claims apply where the window is asymptotic: the relative change of J J^T
#: still ahead, estimated by ||w(t_fit) - w_inf|| / (||w_inf|| sigma_min(J)) (sigma_min relative
#: to the largest), is at most EXPO_TOL / 5, so that it cannot account for the tolerance
PRECORR_MAX = EXPO_TOL / 5
CLASSES = ("lp interpolation", "common root", "degenerate", "global, full-rank Jacobian",
           "other minimum", "other")  # fmt: skip


def lp_order(loss_label):
    """p of an 'lp(p=...)' loss label, NaN for other losses."""
    s = str(loss_label)
    return float(s.split("p=")[1].rstrip(")")) if s.startswith("lp(p=") else np.nan


def limit_class(ds):
    """(K,) str: the limit type of each flow, the first of CLASSES that applies."""
    p = np.array([lp_order(x) for x in ds["loss_fn"].values])
    interp = (p >= 4) & (ds["noise"].values == 0) & (ds["target"].values == "teacher")
    glob = np.nan_to_num(ds["is_global"].values.astype(float)) == 1
    full = np.nan_to_num(ds["jac_deficient"].values.astype(float)) == 0
    cr = np.nan_to_num(ds["has_common_root"].values.astype(float)) == 1
    lab = ds["label"].values
    conds = [interp, cr, lab == 2, (lab == 0) & glob & full, lab == 0]
    return np.select(conds, CLASSES[:-1], CLASSES[-1])


def tail_window(t, g, g_floor):
    """Indices of the saved points fitted: t > 0, finite, g between g_floor and TAIL_DROP * g(0),
    the last N_FIT of them (empty if fewer than MIN_POINTS)."""
    with np.errstate(invalid="ignore"):
        ok = (t > 0) & np.isfinite(g) & (g >= g_floor) & (g <= TAIL_DROP * g[0])
    idx = np.flatnonzero(ok)[-N_FIT:]
    return idx if idx.size >= MIN_POINTS else idx[:0]


def fit_decay(t, y):
    """Least-squares fits of y > 0 on t > 0: (rate, expo, rms_exp, rms_alg) of
    log y = a - rate t and log y = a - expo log t (rms: residuals in log y)."""
    if len(t) < MIN_POINTS:
        return (np.nan,) * 4
    ly = np.log(y)
    out = []
    for x in (t, np.log(t)):
        coef, res, *_ = np.polyfit(x, ly, 1, full=True)
        rms = np.sqrt(res[0] / len(t)) if res.size else 0.0
        out.append((-coef[0], rms))
    (rate, rms_e), (expo, rms_a) = out
    return rate, expo, rms_e, rms_a


def per_flow_fits(ds, rtol):
    """DataFrame, one row per flow: class, lambda_min, p, fits of ||grad L|| and L - L_inf."""
    t = ds["time"].values
    G = ds["grad_norm"].transpose("flow", "time").values
    Lt = ds["loss"].transpose("flow", "time").values
    cls = limit_class(ds)
    he = ds["hess_eig"].values
    with np.errstate(all="ignore"):
        lam = np.nanmin(np.where(he > 0, he, np.nan), axis=1)
    wn = np.sqrt(np.nansum(ds["w_final"].values ** 2, axis=1))
    floor = MARGIN * rtol * ds["hess_scale"].values * wn
    p = np.array([lp_order(x) for x in ds["loss_fn"].values])
    W = ds["w"].transpose("flow", "time", "param").values
    sv = ds["jac_sv"].values
    with np.errstate(all="ignore"):
        sv_min = np.nanmin(np.where(sv > 0, sv, np.nan), axis=1)
    rows = []
    for j in range(G.shape[0]):
        idx = tail_window(t, G[j], floor[j])
        dw = np.sqrt(np.nansum((W[j, idx[0]] - ds["w_final"].values[j]) ** 2)) if idx.size else np.nan
        rg, eg, rms_e, rms_a = fit_decay(t[idx], G[j, idx])
        l_inf = 0.0 if cls[j] == "lp interpolation" else ds["loss_final"].values[j]
        gap = Lt[j, idx] - l_inf
        # L_inf = 0 is exact at interpolation (no cancellation in L - L_inf)
        floor_L = 0.0 if l_inf == 0.0 else GAP_FLOOR * ds["loss_scale"].values[j]
        keep = gap > floor_L
        rl, el, _, _ = fit_decay(t[idx][keep], gap[keep])
        rows.append(dict(cls=cls[j], lam_min=lam[j], p=p[j], n_fit=idx.size, rate_g=rg,
                         precorr=dw / (wn[j] * sv_min[j]),
                         rate_L=rl, expo_g=eg, expo_L=el, exponential=rms_e < rms_a))  # fmt: skip
    return pd.DataFrame(rows)


def median_ci(x, seed=0):
    """'median [lo, hi]': the median with a bootstrap 95% interval ('–' if < 2 finite values)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return "–"
    if x.size < 2 or np.ptp(x) == 0:
        return f"{np.median(x):.3g}"
    ci = scipy.stats.bootstrap((x,), np.median, confidence_level=0.95, n_resamples=2000,
                               method="percentile", random_state=seed).confidence_interval  # fmt: skip
    return f"{np.median(x):.3g} [{ci.low:.3g}, {ci.high:.3g}]"


def _claims(ds, fits):
    mb = (ds["label"].values == 0) & (fits["cls"].values != "lp interpolation")
    rg = fits["rate_g"].values / fits["lam_min"].values
    rl = fits["rate_L"].values / (2 * fits["lam_min"].values)
    interp = fits["cls"].values == "lp interpolation"
    asym = interp & (fits["precorr"].values <= PRECORR_MAX)
    p = fits["p"].values
    eL = fits["expo_L"].values / (p / (p - 2))
    eg = fits["expo_g"].values / ((p - 1) / (p - 2))
    with np.errstate(invalid="ignore"):
        ok = {k: np.where(np.isfinite(v), np.abs(v - 1) <= tol, np.nan)
              for k, v, tol in (("g", rg, RATE_TOL), ("L", rl, RATE_TOL),
                                ("eL", eL, EXPO_TOL), ("eg", eg, EXPO_TOL))}  # fmt: skip
    tol_r = (f"|fitted / predicted - 1| <= {RATE_TOL:g} (the local slope tends to lambda_min "
             "from above as faster modes die out; H(w(t)) -> H(w_inf))")
    tol_e = (f"|fitted / predicted - 1| <= {EXPO_TOL:g} (local slope over the last half decade); "
             f"tested where the correction estimate ||w(t) - w_inf|| / (||w_inf|| sigma_min(J)) "
             f"<= {PRECORR_MAX:g}")
    he = ds["hess_eig"].values
    with np.errstate(invalid="ignore"):
        near = np.nanmin(np.abs(fits["rate_g"].values[:, None] / he - 1), axis=1)
        ok_any = np.where(np.isfinite(rg), near <= RATE_TOL, np.nan)
    pre = fits["precorr"].values
    return [
        check("Morse-Bott limit: ||grad L(t)|| ~ exp(-lambda t) with lambda an eigenvalue of "
              "the projected Hessian at the limit", tol_r, ok_any, applies=mb,
              detail={"|rate/nearest eigenvalue - 1|": near}),
        check("Morse-Bott limit: ||grad L(t)|| ~ exp(-lambda_min t), lambda_min = smallest "
              "projected Hessian eigenvalue at the limit", tol_r, ok["g"], applies=mb,
              detail={"rate/lambda_min": rg, "lambda_min": fits["lam_min"].values,
                      "|rate/nearest eigenvalue - 1|": near}),
        check("Morse-Bott limit: L(t) - L_inf ~ exp(-2 lambda_min t)", tol_r, ok["L"],
              applies=mb, detail={"rate/(2 lambda_min)": rl}),
        check("l_p interpolation (p >= 4): L(t) ~ t^(-p/(p-2))", tol_e, ok["eL"],
              applies=asym, detail={"expo/predicted": eL, "p": p, "correction": pre}),
        check("l_p interpolation (p >= 4): ||grad L(t)|| ~ t^(-(p-1)/(p-2))", tol_e, ok["eg"],
              applies=asym, detail={"expo/predicted": eg, "p": p, "correction": pre}),
    ]  # fmt: skip


def _preasymptotic(fits):
    """The interpolation flows outside the exponent claims: count and fitted / predicted."""
    sub = fits[(fits["cls"] == "lp interpolation") & ~(fits["precorr"] <= PRECORR_MAX)]
    if sub.empty:
        return "none."
    ratio = sub["expo_L"] / (sub["p"] / (sub["p"] - 2))
    return (f"{len(sub)} of {int((fits['cls'] == 'lp interpolation').sum())}, fitted / "
            f"predicted exponent of L {median_ci(ratio)} (median [95% CI]), correction "
            f"{sub['precorr'].min():.2g} to {sub['precorr'].max():.2g}.")


def _table(fits):
    """One row per (class, loss): the decay type and the fitted rates / exponents."""
    rows = []
    for (cls, p), sub in fits.groupby(["cls", "p"], dropna=False, sort=False):
        fitted = sub[sub["n_fit"] >= MIN_POINTS]
        n_exp = int(fitted["exponential"].sum())
        interp = cls == "lp interpolation"
        ratio_g = np.nan if interp else fitted["rate_g"] / fitted["lam_min"]
        ratio_L = np.nan if interp else fitted["rate_L"] / (2 * fitted["lam_min"])
        pred_L = f" ({p / (p - 2):.3g})" if interp else ""
        rows.append({
            "limit type": cls, "l_p: p": "square" if np.isnan(p) else f"{p:g}",
            "flows": len(sub), "tail resolved": estimate_row(len(fitted), len(sub)),
            "exponential fits better": estimate_row(n_exp, len(fitted)),
            "grad rate / lambda_min": median_ci(ratio_g),
            "(L - L_inf) rate / (2 lambda_min)": median_ci(ratio_L),
            "exponent of L (predicted)": median_ci(fitted["expo_L"]) + pred_L,
            "exponent of grad": median_ci(fitted["expo_g"]),
        })  # fmt: skip
    return markdown_table(pd.DataFrame(rows))


def _figure(ds, fits, figures_dir):
    """Left: log ||grad L|| against lambda_min t (Morse-Bott flows: slope -1). Right: the
    interpolation flows on log-log axes with the predicted slopes."""
    path = figures_dir / "rates_tails.png"
    t = ds["time"].values
    G = ds["grad_norm"].transpose("flow", "time").values
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    a0, a1 = fig.subplots(1, 2)
    for j in np.flatnonzero((ds["label"].values == 0) & (fits["cls"] != "lp interpolation")):
        x = fits["lam_min"].values[j] * t
        a0.plot(x, G[j] / G[j, 0], lw=0.6, alpha=0.5, color="C0")
    x = np.linspace(0, 40, 50)
    a0.plot(x, 1e2 * np.exp(-x), "k--", label="exp(-lambda_min t)")
    a0.set(yscale="log", xlim=(0, 40), ylim=(1e-14, 10), xlabel="lambda_min t",
           ylabel="||grad L(t)|| / ||grad L(0)||", title="Morse-Bott limits")  # fmt: skip
    a0.legend(fontsize=8)
    for j in np.flatnonzero(fits["cls"] == "lp interpolation"):
        p = fits["p"].values[j]
        a1.plot(t[1:], G[j, 1:], lw=0.6, alpha=0.6, color="C1" if p == 4 else "C2")
    for p, c in ((4, "C1"), (6, "C2")):
        tt = np.geomspace(1e2, 1e6, 10)
        a1.plot(tt, 1e2 * tt ** (-(p - 1) / (p - 2)), "--", color=c,
                label=f"p={p}: t^-{(p - 1) / (p - 2):.3g}")  # fmt: skip
    a1.set(xscale="log", yscale="log", xlabel="t", ylabel="||grad L(t)||",
           title="l_p at interpolation")  # fmt: skip
    a1.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    rtol = study.spec["integrator"][0]["rtol"]
    fits = per_flow_fits(ds, rtol)
    fig = _figure(ds, fits, figures_dir)
    text_claims = (
        "Fits use the last saved points with ||grad L|| between "
        f"{MARGIN:g} x the integration floor (rtol lambda_max ||w||) and {TAIL_DROP:g} x its "
        "initial value (at most "
        f"{N_FIT}, at least {MIN_POINTS}); flows with fewer points are not tested.\n\n"
        + claims_markdown(_claims(ds, fits), ds)
        + "\n\nReading the verdicts. The rate lambda_min is the generic one: a flow whose "
        "slowest mode starts with a small coefficient shows the next eigenvalue over the "
        "resolved tail (then the first claim holds and the second fails). The exponents are "
        "asymptotic: along the window J J^T still changes by about ||w(t) - w_inf|| / "
        "(||w_inf|| sigma_min(J)) (the *correction*; sigma_min(J) the smallest non-zero "
        "singular value of the Jacobian of pi relative to the largest), and the exponent "
        "claims are tested only where that is at most "
        f"{PRECORR_MAX:g}. Interpolation flows above it (an ill-conditioned J: the local "
        "slope is still rising towards the exponent when the flow stops): "
        + _preasymptotic(fits)
    )
    text_table = (
        "Per limit type and loss (square: p = –): the fraction of flows whose tail is "
        "resolved, the fraction whose tail is better fitted by an exponential than by a power "
        "law (Wilson 95%), and medians with bootstrap 95% intervals of the fitted rate "
        "relative to the Hessian prediction and of the fitted exponents (a power-law fit of an "
        "exponential tail gives exponent ~ rate x t, i.e. large). Limit types, first match: "
        "*lp interpolation* (l_p, p >= 4, noise 0, teacher: L_inf = 0 and the Hessian "
        "vanishes there; lcnfast.analysis may still label these `minimum`, its eig_tol being "
        "relative to the largest eigenvalue, itself ~0), *common root* (layers share a root: "
        "rank-deficient Jacobian of pi), *degenerate* (label: a zero projected-Hessian "
        "eigenvalue), *global, full-rank Jacobian*, *other minimum*, *other*; types no flow "
        "falls in are absent.\n\n" + _table(fits)
    )
    text_fig = f"![decay of the gradient norm]({figures_dir.name}/{fig.name})"
    return [
        ("Claims and verdicts", text_claims),
        ("Decay per limit type", text_table),
        ("Tails of the gradient norm", text_fig),
    ]
