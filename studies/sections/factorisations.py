"""Report sections of the `factorisations` study: which factorisation of the optimal filter
does the gradient flow pick?

For stride 1 the polynomial of the end-to-end filter v is the product of the layer polynomials
(eq. 2.1), so at a limit every layer's roots are a subset of v's roots. For a filling
architecture at the global minimum v is the convex minimiser v* (one per dataset): a flow's
*assignment* is the layer each root of v* belongs to. It is canonicalised by listing the roots
of v* in the order of :func:`lcnfast.roots.poly_roots` (by real part, then imaginary part) and
writing the layer of each, e.g. ``"1 2 2 1"``; a conjugate pair always goes to one layer (real
filters).

Assignments are found by matching (``scipy.optimize.linear_sum_assignment`` on chordal
distances on the Riemann sphere) the layer roots to the roots of v*: the final layer roots give
the flow's assignment (and the matched distance checks the factorisation, the claim); the
*initial* layer roots give the assignment "nearest to the initial roots": among the
*admissible* assignments (layer i receives k_i - 1 roots, a conjugate pair goes to one layer:
the factorisations of v* into real layer polynomials, :func:`admissible`), the one with the
smallest total distance between each layer's initial roots and the roots it receives. Measured: how many distinct assignments occur per dataset, how often the flow keeps
the nearest-initial assignment (against a baseline of the same count with the nearest-initial
assignments shuffled among the flows of the dataset), and, pairing flows with the same initial
v(0), whether the balanced and the gaussian initialisation (different balancedness constants
delta_i, the same v(0)) pick the same assignment.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import scipy.optimize  # noqa: E402
from matplotlib.figure import Figure  # not pyplot: no backend chosen, none changed

from lcnfast import roots as _roots
from lcnfast.study.claims import check, claims_markdown, estimate_row
from lcnfast.study.report import markdown_table, wilson

#: factorisation claim: matched chordal distance between a layer root and a root of v* at most
#: this. The flows stop at ||grad L|| <= 1e-10: v is within ~1e-10 / lambda_min of v*, and a
#: simple root moves by ~||dv|| / |p'(z)|, far below 1e-6 unless two roots of v* nearly
#: coincide (then the listed distance says by how much)
MATCH_TOL = 1e-6
#: the shuffle baseline: permutations of the nearest-initial assignments within a dataset
N_SHUFFLES = 200


def assign(layer_roots, root_layer, target):
    """Match layer roots to the roots of v*: (layer of each target root (int array), the largest
    matched chordal distance). NaN roots (zero layers) make the assignment undefined (None)."""
    z = np.asarray(layer_roots, dtype=complex)
    if np.isnan(z.real).any() or np.isnan(np.asarray(target).real).any():
        return None, np.nan
    cost = _roots.chordal_distance(z[:, None], np.asarray(target)[None, :])
    r, c = scipy.optimize.linear_sum_assignment(cost)
    out = np.empty(len(target), dtype=int)
    out[c] = np.asarray(root_layer)[r]
    return out, float(cost[r, c].max())


def admissible(target, sizes, imag_tol=1e-9):
    """Every assignment of the roots of v* to the layers that real layer filters can have:
    layer i gets sizes[i] roots (1-based layers) and a conjugate pair goes to one layer.
    Returns an int array (n_assignments, n_roots)."""
    target = np.asarray(target)
    scale = imag_tol * (1 + np.abs(target))
    units, used = [], set()
    for i, z in enumerate(target):  # real roots and conjugate pairs
        if i in used:
            continue
        if abs(z.imag) <= scale[i] or np.isinf(z.real):
            units.append([i])
        else:
            d = np.abs(target - np.conj(z))
            d[[i, *used]] = np.inf
            units.append([i, int(np.argmin(d))])
        used.update(units[-1])
    out = []
    for layers in itertools.product(range(1, len(sizes) + 1), repeat=len(units)):
        a = np.empty(len(target), dtype=int)
        for u, layer in zip(units, layers):
            a[u] = layer
        if all((a == i + 1).sum() == s for i, s in enumerate(sizes)):
            out.append(a)
    return np.array(out).reshape(-1, len(target))


def nearest_admissible(layer_roots, root_layer, target, candidates):
    """The candidate assignment whose roots are nearest the given layer roots: the smallest
    total chordal distance of an optimal matching within every layer. None with NaN roots."""
    z = np.asarray(layer_roots, dtype=complex)
    if np.isnan(z.real).any() or len(candidates) == 0:
        return None
    rl = np.asarray(root_layer)
    costs = []
    for a in candidates:
        c = 0.0
        for layer in np.unique(rl):
            m = _roots.chordal_distance(z[rl == layer][:, None], np.asarray(target)[a == layer][None, :])
            r, k = scipy.optimize.linear_sum_assignment(m)
            c += m[r, k].sum()
        costs.append(c)
    return candidates[int(np.argmin(costs))]


def per_flow(ds, study):
    """DataFrame, one row per flow: assignment (final), nearest-initial assignment, match
    distance, and the factors."""
    cells = {c.index: c for c in study.cells}
    W0 = ds["w_init"].transpose("flow", "param").values
    rows = []
    for j in range(ds.sizes["flow"]):
        arch = cells[int(ds["cell"].values[j])].arch()
        w0 = W0[j][np.isfinite(W0[j])]
        vstar = ds["v_convex_min"].values[j]
        target = _roots.poly_roots(vstar[np.isfinite(vstar)])
        z0, rl, _ = _roots.layer_roots(arch, w0)
        zf = ds["root_real"].values[j] + 1j * ds["root_imag"].values[j]
        zf = zf[: len(rl)]
        fin, dist = assign(zf, rl, target)
        cand = admissible(target, [k - 1 for k in arch.k])
        ini = nearest_admissible(z0, rl, target, cand)
        rows.append(dict(flow=j, architecture=ds["architecture"].values[j],
                         scale=ds["init_scale"].values[j],
                         distribution=ds["init_distribution"].values[j],
                         dataset=ds["dataset"].values[j], replicate=ds["replicate"].values[j],
                         is_global=ds["is_global"].values[j] == 1, match=dist,
                         n_admissible=len(cand),
                         final=_label(fin), nearest_initial=_label(ini)))  # fmt: skip
    return pd.DataFrame(rows)


def _label(a):
    return None if a is None else " ".join(map(str, a))


def shuffle_baseline(final, nearest, rng):
    """Mean fraction of agreements when the nearest-initial labels are permuted (chance level
    for the given label frequencies)."""
    final, nearest = np.asarray(final), np.asarray(nearest)
    return float(np.mean([np.mean(final == rng.permutation(nearest)) for _ in range(N_SHUFFLES)]))


def _keep_table(fl):
    """Per (architecture, scale, distribution): distinct assignments, keeps the nearest."""
    rng = np.random.default_rng(0)
    rows = []
    g = fl[fl["is_global"] & fl["final"].notna()]
    for key, sub in g.groupby(["architecture", "scale", "distribution"], sort=False):
        # a dataset whose v* has one real factorisation only cannot tell: left out
        choice = sub[sub["n_admissible"] >= 2]
        keep = int((choice["final"] == choice["nearest_initial"]).sum())
        base = [shuffle_baseline(d["final"], d["nearest_initial"], rng) * len(d)
                for _, d in choice.groupby("dataset")]  # fmt: skip
        n_dist = sub.groupby("dataset")["final"].nunique()
        n_adm = sub.groupby("dataset")["n_admissible"].first()
        rows.append({
            "architecture": key[0], "init scale": key[1], "distribution": key[2],
            "flows at the global min": estimate_row(len(sub), int(
                ((fl["architecture"] == key[0]) & (fl["scale"] == key[1])
                 & (fl["distribution"] == key[2])).sum())),
            "distinct assignments per dataset (median / max)":
                f"{n_dist.median():g} / {n_dist.max()}",
            "admissible assignments (median / max)": f"{n_adm.median():g} / {n_adm.max()}",
            "keeps the nearest-initial assignment": estimate_row(keep, len(choice)),
            "shuffle baseline": f"{sum(base) / len(choice):.3g}" if len(choice) else "–",
        })  # fmt: skip
    return pd.DataFrame(rows)


def paired_same(fl, factor, levels):
    """Flows that differ only in ``factor`` (two ``levels``; the other factors, dataset and
    replicate equal: the same initial directions, common random numbers): per value of the
    remaining factor, (pairs, pairs with the same assignment)."""
    other = "scale" if factor == "distribution" else "distribution"
    # only datasets whose v* has a choice of factorisation (else "same" holds trivially)
    g = fl[fl["is_global"] & fl["final"].notna() & (fl["n_admissible"] >= 2)]
    piv = g.pivot_table(index=["architecture", other, "dataset", "replicate"],
                        columns=factor, values="final", aggfunc="first")  # fmt: skip
    if not set(levels) <= set(piv.columns):
        return pd.DataFrame(columns=["architecture", other, "pairs", "same"])
    piv = piv.dropna(subset=list(levels))
    same = (piv[levels[0]] == piv[levels[1]]).groupby(level=[0, 1])
    return pd.DataFrame({"pairs": same.size(), "same": same.sum()}).reset_index()


def _pairs_markdown(fl, factor, levels):
    pairs = paired_same(fl, factor, levels)
    col = f"same assignment ({levels[0]} vs {levels[1]})"
    pairs[col] = [estimate_row(int(k), int(n)) for k, n in zip(pairs["same"], pairs["pairs"])]
    return markdown_table(pairs.drop(columns=["pairs", "same"]))


def _claims(ds, fl):
    glob = fl["is_global"].values
    ok = np.where(np.isfinite(fl["match"].values), fl["match"].values <= MATCH_TOL, np.nan)
    return [
        check("Consistency, stride 1: at the global minimum each layer's roots are roots of "
              "the optimal v (true at any w with pi(w) = v*, by Prop. 2.1: v's polynomial is "
              "the product of the layer polynomials; this tests the roots and the tolerances)",
              f"matched chordal distance <= {MATCH_TOL:g} (flows stop at ||grad L|| <= "
              "1e-10; a simple root moves by ~||v - v*|| / |p'(z)|)", ok, applies=glob,
              detail={"match distance": fl["match"].values}),
    ]  # fmt: skip


def _figure(tab, figures_dir):
    path = figures_dir / "factorisations_keep.png"
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (_, r) in enumerate(tab.iterrows()):
        if r["shuffle baseline"] == "–":
            continue
        k, n = (int(x) for x in r["keeps the nearest-initial assignment"].split(" = ")[0].split("/"))
        lo, hi = wilson(k, n)
        ax.errorbar(i, k / n, yerr=[[k / n - lo], [hi - k / n]], fmt="o", color="C0")
        ax.plot(i, float(r["shuffle baseline"]), "x", color="C3")
    ax.set_xticks(range(len(tab)), [f"{r.architecture}\n{r['init scale']:g} {r.distribution}"
                                     for _, r in tab.iterrows()], fontsize=6, rotation=45)  # fmt: skip
    ax.set(ylim=(0, 1), ylabel="fraction (o: keeps nearest, x: shuffle baseline)")
    fig.savefig(path, dpi=110)
    return path


def sections(ds, study, figures_dir):
    """The study's report sections: [(heading, markdown), ...]."""
    fl = per_flow(ds, study)
    tab = _keep_table(fl)
    fig = _figure(tab, figures_dir) if len(tab) else None
    text_keep = (
        "*keeps*: the flow's final assignment equals the assignment of v*'s roots to the layers "
        "with the nearest initial roots (Wilson 95%), over the datasets whose v* has at least "
        "two admissible assignments. *shuffle baseline*: the agreement "
        "expected by chance with the same frequencies of assignments (nearest-initial labels "
        f"permuted within each dataset, {N_SHUFFLES} permutations).\n\n" + markdown_table(tab)
    )
    text_pairs = (
        "The balanced initialisation is the gaussian one moved along its rescaling orbit "
        "(same v(0), same layer roots, balancedness constants delta_i = 0 instead of random): "
        "a pair has the same dataset and replicate. Only the balancedness differs.\n\n"
        + _pairs_markdown(fl, "distribution", ("gaussian", "balanced"))
    )
    scales = sorted(set(fl["scale"]))
    text_scale = (
        "Flows with the same dataset, replicate and distribution start from the same "
        "directions at every scale: only ||w(0)|| (and with it the balancedness constants, "
        "quadratic in w) differs.\n\n"
        + (_pairs_markdown(fl, "scale", (scales[0], scales[-1])) if len(scales) > 1 else "–")
    )
    out = [
        ("Claims and verdicts", claims_markdown(_claims(ds, fl), ds)),
        ("Which assignment, and does it follow the initial roots?", text_keep),
        ("Does the balancedness change the assignment?", text_pairs),
        ("Does the initial scale change the assignment?", text_scale),
    ]
    if fig is not None:
        out.append(("Keeping the nearest roots", f"![keeps]({figures_dir.name}/{fig.name})"))
    return out
