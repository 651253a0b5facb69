"""Classification of parameter points: gradient, projected Hessian, roots, function space.

Labels (``label``, int8 with CF flag_values / flag_meanings)
------------------------------------------------------------
From the gradient at the point and the balanced projected spectrum,
``tol = max(eig_tol * rho, ||grad L(w)||^(2/3), eps * L(v=0))`` (the absolute part: a spectrum
taken at a point with gradient norm g resolves eigenvalues only down to about g^(2/3), the size
a quartic direction's eigenvalue has there, and to the rounding of the Hessian; it keeps a
Hessian that vanishes as a whole, e.g. at an l_p interpolating limit with p >= 4, from being
judged against its own rounding):

- ``not_critical`` (3): ``||grad L|| > grad_tol`` (the spectrum is still reported).
- ``strict_saddle`` (1): critical and the projected Hessian has an eigenvalue < -tol.
- ``degenerate`` (2): critical, no negative eigenvalue, some |eigenvalue| <= tol: the
  second-order test is inconclusive (a non-strict minimum or a higher-order saddle).
- ``minimum`` (0): critical and the projected Hessian is positive definite: a strict local
  minimum modulo the symmetry (the critical set is the orbit near w, Morse-Bott).
- ``non_finite`` (4): the point has NaN/Inf entries, or its loss, gradient or final filter
  overflow float64 (a diverged flow, e.g. ``w ~ 1e43``; for a flow Dataset also status
  ``non_finite``); nothing else is computed and no overflow warning is issued.
- ``not_converged`` (5, flow Datasets only, :func:`lcnfast.analysis.classify`): the flow
  stopped without converging (status ``reached_end``, ``max_steps``, ``step_underflow`` or
  ``interrupted``) and ``||grad L|| > grad_tol``. :func:`classify_points` labels such points
  ``not_critical``: it does not know how they were obtained.

Two zero filters (any loss, any data): every column of the Jacobian of pi contains a zero
factor, so ``grad L = J^T dL/dv = 0`` and the point is critical. The Hessian is
``J^T (d^2L/dv^2) J + sum_m G_m d^2 v_m/dw^2`` with ``J = 0``; the only surviving block couples
the two zero layers i, j: ``C_ab = sum_m G_m q_ij[m - a S_i - b S_j]`` with ``G = dL/dv`` at
``v = 0`` and ``q_ij`` the product of the other layer polynomials. The Hessian is
``[[0, C], [C^T, 0]]`` there, with eigenvalues ``+-sigma(C)``: a **strict saddle** whenever
C != 0 (generic: v = 0 is not a critical point of the function-space loss). With three or more
zero filters, or when C = 0 (e.g. G = 0, the zero network is optimal), the Hessian vanishes and
the point is **degenerate** (L changes only at third order or higher).

Points *near* the zero-filter set (e.g. a flow converging to w = 0 along a balanced path,
stopped at ``w = (1e-6, -1e-6)`` for k = (1, 1)) pass the absolute ``grad_tol`` while their
filters are not zero relative to each other; the orbit check of
:func:`lcnfast.analysis.symmetry.orbit_spectra` recognises them (the symmetry directions are
not flat there) and counts their small filters as zero, so they get the label, roots and
common-root convention of the zero-filter point they approach (``near_zero_filters``).

Loss values
-----------
``limit_loss`` is evaluated on the data (residual form, :func:`loss_on_data`): for the square
loss ``||V X - Y||_F^2 >= 0`` with a relative rounding error. The flows' own ``loss_final`` uses
the Gram formula ``v^T A v - 2 b^T v + ||Y||^2`` (fast, but with an absolute error of about
``eps (||Y||^2 + v^T A v)``: -3e-14 at an exact fit); every gap (``loss_gap``, ``global_gap``,
``gap_to_best``) uses ``limit_loss`` and minima computed on the data.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr

from .. import roots as _roots
from ._common import (
    _check_problem, _deltas, _layer_norms, _loss_scale, _param_batch, _tolerances, _var,
)  # fmt: skip
from .function_space import loss_on_data
from .reference import reference_vars
from .symmetry import orbit_spectra

LABELS = (
    "minimum",
    "strict_saddle",
    "degenerate",
    "not_critical",
    "non_finite",
    "not_converged",
)
MINIMUM, STRICT_SADDLE, DEGENERATE, NOT_CRITICAL, NON_FINITE, NOT_CONVERGED = range(6)


def classify_points(problem, w, *, w_init=None, hessians=None, global_min=None, **tolerances):
    """Classify a batch of parameter vectors as limit points of the gradient flow.

    Parameters
    ----------
    problem : Problem
    w : array_like (n_params,) or (K, n_params)
        Points to classify, finite (ValueError otherwise, as :meth:`Problem.grad`; the
        diverged flows of a Dataset, NaN/Inf in ``w_final``, are labelled ``non_finite`` by
        :func:`classify`). Finite points whose loss or gradient overflow are ``non_finite``.
    w_init : array_like (K, n_params), optional
        Initial points of the flows; adds ``balance_drift`` = max_i |delta_i(w) - delta_i(w_init)|
        (Lemma 3.3: delta_i = ||w^(i+1)||^2 - ||w^(i)||^2 is constant along the exact flow).
    hessians : array_like (K, n_params, n_params), optional
        Hessians to use instead of :meth:`Problem.hessian` (e.g. finite differences).
    global_min : float or ImageMinimum, optional
        The global minimum of L over w, computed once per dataset by the caller (e.g. with
        :func:`lcnfast.analysis.image_minimum`); see :func:`lcnfast.analysis.reference.reference_vars`
        for what is used when it is not given.
    grad_tol, eig_tol, gap_tol, root_tol, jac_tol, zero_filter_tol : float
        See :mod:`lcnfast.analysis` (defaults in ``lcnfast.analysis.DEFAULTS``).

    Returns
    -------
    xarray.Dataset
        Dimensions ``flow`` (K), ``eig`` (n_params), ``sv`` (min(k_v, n_params)),
        ``root`` (k_v - 1, coordinate ``root_layer``), ``layer_no`` (N), ``v_tap`` (k_v).
        Per flow: ``limit_loss`` (on the data), ``limit_grad_norm``, ``is_critical``, ``label``,
        ``hess_eig`` (flow, eig), ``hess_min_eig``, ``hess_scale``, ``hess_eig_balanced``
        (flow, eig), ``hess_min_eig_balanced``, ``hess_scale_balanced``, ``n_neg_eig``,
        ``n_zero_eig``, ``n_pos_eig``, ``n_sym_dirs``, ``sym_null_residual``,
        ``near_zero_filters``, ``limit_v`` (flow, v_tap), ``filter_norm`` (flow, layer_no),
        ``n_zero_filters``, ``root_real``, ``root_imag``, ``root_multiplicity``,
        ``root_shared`` (flow, root), ``has_common_root``, ``min_root_distance``,
        ``max_root_multiplicity``, ``jac_sv`` (flow, sv; relative to the largest),
        ``jac_rank``, ``jac_deficient``, ``loss_best_found`` (scalar), ``gap_to_best``,
        ``reached_best``; ``is_global`` (float 1/0, NaN where undecided), ``loss_global_min``
        (scalar) and ``global_gap`` with attribute ``global_reference``; for convex losses
        ``loss_convex_min`` (scalar), ``v_convex_min`` (v_tap), ``loss_gap``,
        ``attains_convex_min``; for stride 1 and a convex loss ``prop51_ok`` and
        ``prop51_ok_jac``; with ``w_init``, ``balance_drift``. Attribute ``analysis``: JSON of
        the tolerances and rules.
    """
    return _classify_points(
        problem, w, w_init, hessians, tolerances, global_min=global_min, finite_only=True
    )


def _evaluate(problem, W, ok):
    """Loss on the data, gradient norm and final filter of the rows ``ok`` of W (K, n); rows
    whose values overflow are removed from ``ok`` (returned) silently: they are non_finite."""
    K = W.shape[0]
    loss, gnorm = np.full(K, np.nan), np.full(K, np.nan)
    V = np.full((K, problem.arch.k_v), np.nan)
    if ok.any():
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            Lg, G = problem.loss_and_grad(W[ok])
            Vf = problem.final_filter(W[ok])
        good = np.isfinite(Lg) & np.all(np.isfinite(G), axis=1) & np.all(np.isfinite(Vf), axis=1)
        Ld = np.full(good.shape, np.inf)
        Ld[good] = loss_on_data(problem, Vf[good])
        good &= np.isfinite(Ld)
        idx = np.flatnonzero(ok)[good]
        loss[idx], gnorm[idx], V[idx] = Ld[good], np.linalg.norm(G[good], axis=1), Vf[good]
        ok = np.zeros(K, bool)
        ok[idx] = True
    return ok, loss, gnorm, V


def _counts(eig, eig_b, finite, eig_tol, floor):
    """Inertia of the balanced projected spectra against ``max(eig_tol * rho, floor)`` (K,)
    and the scales (``floor``: see :func:`_eig_floor`)."""
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(eig)

        def spread(e):
            sc = np.nanmax(np.where(valid, np.abs(e), -np.inf), axis=1)
            return np.where(finite, sc, np.nan)

        scale_b = spread(eig_b)
        thr = np.maximum(eig_tol * scale_b, floor)
        n_neg = np.where(finite, np.sum(valid & (eig_b < -thr[:, None]), axis=1), -1)
        n_pos = np.where(finite, np.sum(valid & (eig_b > thr[:, None]), axis=1), -1)
        n_zero = np.where(finite, np.sum(valid, axis=1) - n_neg - n_pos, -1)
        min_eig = np.where(finite, np.nanmin(np.where(valid, eig, np.inf), axis=1), np.nan)
        min_eig_b = np.where(finite, np.nanmin(np.where(valid, eig_b, np.inf), axis=1), np.nan)
    return {
        "n_valid": np.sum(valid, axis=1),
        "n_neg": n_neg.astype(np.int16),
        "n_pos": n_pos.astype(np.int16),
        "n_zero": n_zero.astype(np.int16),
        "scale": spread(eig),
        "scale_b": scale_b,
        "min_eig": min_eig,
        "min_eig_b": min_eig_b,
    }


def _eig_floor(problem, gnorm):
    """(K,) absolute resolution of a projected spectrum: ``max(||grad L(w)||^(2/3), eps L_scale)``.

    At a point with gradient norm g, a direction along which L is quartic has an eigenvalue
    O(g^(2/3)) although it is 0 at the critical point; and Hessian entries carry rounding of
    about eps times the loss scale L(v=0). Without this floor a spectrum that vanishes as a
    whole (the Hessian at an l_p interpolating limit, p >= 4, is 0) would be judged relative to
    its own rounding-sized entries and get any label."""
    with np.errstate(invalid="ignore"):
        g = np.abs(np.asarray(gnorm, dtype=float)) ** (2.0 / 3.0)
    return np.maximum(np.nan_to_num(g, nan=0.0), np.finfo(float).eps * _loss_scale(problem))


def _labels(critical, finite, c):
    label = np.full(critical.shape, NOT_CRITICAL, dtype=np.int8)
    label[critical & (c["n_pos"] == c["n_valid"])] = MINIMUM
    label[critical & (c["n_zero"] > 0)] = DEGENERATE
    label[critical & (c["n_neg"] > 0)] = STRICT_SADDLE
    label[~finite] = NON_FINITE
    return label


def _roots_and_jacobian(problem, Wf, zero, tol):
    """Roots of the layer polynomials, common roots and the Jacobian of pi at the rows Wf."""
    arch = problem.arch
    beta = _layer_norms(arch, Wf)
    z, rl, zl = _roots.layer_roots(arch, Wf, zero_tol=tol["zero_filter_tol"])
    cr = _roots.common_roots(z, rl, zl | zero, tol["root_tol"])
    Wn = Wf.copy()
    for i in range(arch.depth):
        sl = arch.layer_slice(i)
        with np.errstate(invalid="ignore", divide="ignore"):
            Wn[:, sl] = np.where(zero[:, i : i + 1], 0.0, Wf[:, sl] / beta[:, i : i + 1])
    sv = np.linalg.svd(problem.jacobian(Wn), compute_uv=False)
    smax = sv[:, :1]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(smax > 0, sv / np.where(smax > 0, smax, 1.0), 0.0)
    jrank = np.sum((sv > tol["jac_tol"] * smax) & (smax > 0), axis=1)
    return {"norms": beta, "roots": z, "root_layer": rl, "cr": cr, "jsv": rel, "jrank": jrank}


def _root_layer(arch):
    return np.concatenate(
        [np.full((ki - 1) * S, i + 1) for i, (ki, S) in enumerate(zip(arch.k, arch.dilations))]
    ).astype(np.int64)


def _classify_points(problem, w, w_init, hessians, tolerances, *, global_min, finite_only,
                     diverged=None):  # fmt: skip
    """:func:`classify_points`; unless ``finite_only``, rows of ``w`` with NaN/Inf (and the
    rows of ``diverged`` (K,) bool) get label ``non_finite`` and NaN elsewhere."""
    _check_problem(problem)
    tol = _tolerances(tolerances)
    arch = problem.arch
    W = _param_batch(arch, w, "w")
    if finite_only and not np.all(np.isfinite(W)):
        raise ValueError("w contains NaN or Inf")
    K, n = W.shape
    N, kv = arch.depth, arch.k_v
    Hs = _check_hessians(hessians, K, n, np.all(np.isfinite(W), axis=1))
    W0 = _check_w_init(arch, w_init, W, finite_only)
    finite = np.all(np.isfinite(W), axis=1)
    if diverged is not None:
        finite &= ~diverged
    finite, loss, gnorm, V = _evaluate(problem, W, finite)
    critical = finite & (gnorm <= tol["grad_tol"])
    Wf = W[finite]
    Kf = Wf.shape[0]

    def full(shape, fill, dtype=np.float64):
        return np.full((K,) + shape, fill, dtype=dtype)

    eig, eig_b, resid = full((n,), np.nan), full((n,), np.nan), full((), np.nan)
    nsym, near = full((), -1, np.int16), full((), False, bool)
    norms, n_zero_f = full((N,), np.nan), full((), -1, np.int16)
    root, mult = full((kv - 1,), np.nan + 0j, np.complex128), full((kv - 1,), 0, np.int16)
    shared, has_common = full((kv - 1,), False, bool), full((), False, bool)
    min_dist = full((), np.nan)
    nj = min(kv, n)
    jsv, jrank = full((nj,), np.nan), full((), -1, np.int16)
    if Kf:
        Hf = Hs[finite] if Hs is not None else None
        sp = orbit_spectra(problem, Wf, Hf, critical[finite], eig_tol=tol["eig_tol"],
                           zero_filter_tol=tol["zero_filter_tol"])  # fmt: skip
        eig[finite], eig_b[finite], resid[finite] = sp["eig"], sp["eig_b"], sp["resid"]
        nsym[finite], near[finite] = sp["rank"], sp["near_zero"]
        n_zero_f[finite] = sp["zero"].sum(axis=1)
        rj = _roots_and_jacobian(problem, Wf, sp["zero"], tol)
        assert np.array_equal(rj["root_layer"], _root_layer(arch))
        norms[finite], root[finite] = rj["norms"], rj["roots"]
        mult[finite], shared[finite] = rj["cr"]["multiplicity"], rj["cr"]["shared"]
        has_common[finite] = rj["cr"]["has_common_root"]
        min_dist[finite] = rj["cr"]["min_distance"]
        jsv[finite], jrank[finite] = rj["jsv"], rj["jrank"]
    c = _counts(eig, eig_b, finite, tol["eig_tol"], _eig_floor(problem, gnorm))
    label = _labels(critical, finite, c)
    generic_rank = arch.function_space_dim
    jac_def = finite & (jrank < generic_rank)
    r = {
        "c": c, "finite": finite, "loss": loss, "gnorm": gnorm, "critical": critical,
        "label": label, "eig": eig, "eig_b": eig_b, "nsym": nsym, "resid": resid, "near": near,
        "V": V, "norms": norms, "n_zero_f": n_zero_f, "root": root, "mult": mult,
        "shared": shared, "has_common": has_common, "min_dist": min_dist, "jsv": jsv,
        "jrank": jrank, "jac_def": jac_def, "generic_rank": generic_rank,
    }  # fmt: skip
    out = _point_vars(r, tol)
    ref_vars, meta = reference_vars(
        problem, loss, V, finite, critical, has_common, jac_def, tol, global_min
    )
    out.update(ref_vars)
    if W0 is not None:
        with np.errstate(invalid="ignore"):
            drift = np.max(np.abs(_deltas(arch, W) - _deltas(arch, W0)), axis=1, initial=0.0)
        drift = np.where(finite & np.all(np.isfinite(W0), axis=1), drift, np.nan)
        out["balance_drift"] = _var(
            "flow", drift, "max_i |delta_i(w) - delta_i(w_init)| (Lemma 3.3)"
        )
    coords = {
        "eig": np.arange(n),
        "sv": np.arange(nj),
        "root": np.arange(kv - 1),
        "root_layer": (
            "root",
            _root_layer(arch),
            {"long_name": "layer (1-based) of each root slot"},
        ),
        "layer_no": ("layer_no", np.arange(1, N + 1), {"long_name": "layer (1-based)"}),
        "v_tap": np.arange(kv),
    }
    meta = {
        **tol,
        **meta,
        "labels": list(LABELS),
        "orbit_tol": float(np.sqrt(tol["eig_tol"])),
        "loss_values": "limit_loss on the data (residual form)",
    }
    return xr.Dataset(out, coords=coords, attrs={"analysis": json.dumps(meta)})


def _check_w_init(arch, w_init, W, finite_only):
    if w_init is None:
        return None
    W0 = _param_batch(arch, w_init, "w_init")
    if W0.shape != W.shape:
        raise ValueError(f"w_init must have the shape of w, {W.shape}, got {W0.shape}")
    if finite_only and not np.all(np.isfinite(W0)):
        raise ValueError("w_init contains NaN or Inf")
    return W0


def _check_hessians(hessians, K, n, finite):
    if hessians is None:
        return None
    Hs = np.asarray(hessians, dtype=np.float64)
    if Hs.ndim == 2:
        Hs = Hs[None]
    if Hs.shape != (K, n, n):
        raise ValueError(f"hessians must have shape ({K}, {n}, {n}), got {Hs.shape}")
    if not np.all(np.isfinite(Hs[finite])):
        raise ValueError("hessians contains NaN or Inf (for rows where w is finite)")
    return Hs


def _point_vars(r, tol):
    """The per-point variables of :func:`classify_points` from the arrays in ``r``."""
    c = r["c"]
    F, E, J, R, LN, VT = "flow", "eig", "sv", "root", "layer_no", "v_tap"
    finite = r["finite"]
    return {
        "limit_loss": _var(
            F, r["loss"], "L(w) at the point, evaluated on the data (residual form)"
        ),
        "limit_grad_norm": _var(F, r["gnorm"], "||grad L(w)||_2 at the point"),
        "is_critical": _var(F, r["critical"], f"||grad L|| <= grad_tol = {tol['grad_tol']:g}"),
        "label": _var(
            F,
            r["label"],
            "limit point type from the gradient and the projected Hessian",
            flag_values=np.arange(len(LABELS), dtype=np.int8),
            flag_meanings=" ".join(LABELS),
        ),
        "hess_eig": _var(
            (F, E),
            r["eig"],
            "eigenvalues (ascending) of the Hessian on the orthogonal complement of the "
            "rescaling-symmetry directions; NaN-padded",
        ),
        "hess_min_eig": _var(F, c["min_eig"], "smallest eigenvalue of the projected Hessian"),
        "hess_scale": _var(F, c["scale"], "largest |eigenvalue| of the projected Hessian"),
        "hess_eig_balanced": _var(
            (F, E),
            r["eig_b"],
            "as hess_eig at the balanced point of the orbit (equal filter norms): "
            "D^-1 H D^-1, same inertia; the counts and the label use these",
        ),
        "hess_min_eig_balanced": _var(F, c["min_eig_b"], "smallest of hess_eig_balanced"),
        "hess_scale_balanced": _var(F, c["scale_b"], "largest |hess_eig_balanced| (rho)"),
        "n_neg_eig": _var(
            F, c["n_neg"], "balanced eigenvalues < -eig_tol * rho (-1: not computed)"
        ),
        "n_zero_eig": _var(
            F, c["n_zero"], "balanced eigenvalues with |lambda| <= eig_tol * rho (-1: not computed)"
        ),
        "n_pos_eig": _var(F, c["n_pos"], "balanced eigenvalues > eig_tol * rho (-1: not computed)"),
        "n_sym_dirs": _var(
            F,
            r["nsym"],
            "dimension of the projected-out rescaling orbit tangent (-1: not computed)",
        ),
        "sym_null_residual": _var(
            F,
            r["resid"],
            "max_j ||H t_j||_2 over the orthonormal symmetry directions t_j "
            "(0 at an exact critical point)",
        ),
        "near_zero_filters": _var(
            F,
            r["near"],
            "critical, but the symmetry directions are not flat at the balanced point "
            "(residual > sqrt(eig_tol) rho): near the zero-filter set, whose small filters "
            "count as zero",
        ),
        "limit_v": _var((F, VT), r["V"], "final filter v = pi(w) (Prop. 2.1)"),
        "filter_norm": _var((F, LN), r["norms"], "||w^(i)||_2 per layer"),
        "n_zero_filters": _var(F, r["n_zero_f"], "number of zero filters (-1: not computed)"),
        "root_real": _var(
            (F, R),
            r["root"].real,
            "real part of the roots of the layer polynomials (eq. 2.1); inf: root at infinity; "
            "NaN: zero layer or not computed",
        ),
        "root_imag": _var(
            (F, R),
            np.where(np.isinf(r["root"].real), 0.0, r["root"].imag),
            "imaginary part of the roots of the layer polynomials (eq. 2.1)",
        ),
        "root_multiplicity": _var(
            (F, R), r["mult"], "multiplicity of the root in its own layer polynomial"
        ),
        "root_shared": _var(
            (F, R), r["shared"], "another layer polynomial has this root (within root_tol)"
        ),
        "has_common_root": _var(
            F, r["has_common"], "two layer polynomials share a root (infinity included)"
        ),
        "min_root_distance": _var(
            F, r["min_dist"], "smallest chordal distance between roots of different layers"
        ),
        "max_root_multiplicity": _var(
            F,
            np.where(finite, r["mult"].max(axis=1, initial=0), -1).astype(np.int16),
            "largest root multiplicity within one layer",
        ),
        "jac_sv": _var(
            (F, J),
            r["jsv"],
            "singular values of the Jacobian of pi at the normalised filters, "
            "divided by the largest",
        ),
        "jac_rank": _var(
            F,
            r["jrank"],
            f"numerical rank of the Jacobian of pi (generic rank {r['generic_rank']})",
        ),
        "jac_deficient": _var(
            F, r["jac_def"], "jac_rank below the generic rank (for stride 1: k_v)"
        ),
    }
