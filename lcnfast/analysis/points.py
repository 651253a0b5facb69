"""Classification of parameter points: gradient, projected Hessian, roots, function space.

Labels (``label``, int8 with CF flag_values / flag_meanings)
------------------------------------------------------------
From the gradient at the point and the balanced projected spectrum, ``tol = eig_tol * rho``:

- ``not_critical`` (3): ``||grad L|| > grad_tol`` (the spectrum is still reported).
- ``strict_saddle`` (1): critical and the projected Hessian has an eigenvalue < -tol.
- ``degenerate`` (2): critical, no negative eigenvalue, some |eigenvalue| <= tol: the
  second-order test is inconclusive (a non-strict minimum or a higher-order saddle).
- ``minimum`` (0): critical and the projected Hessian is positive definite: a strict local
  minimum modulo the symmetry (the critical set is the orbit near w, Morse-Bott).
- ``non_finite`` (4): the point has NaN/Inf entries (e.g. a diverged flow); nothing computed.

Two zero filters (any loss, any data): every column of the Jacobian of pi contains a zero
factor, so ``grad L = J^T dL/dv = 0`` and the point is critical. The Hessian is
``J^T (d^2L/dv^2) J + sum_m G_m d^2 v_m/dw^2`` with ``J = 0``; the only surviving block couples
the two zero layers i, j: ``C_ab = sum_m G_m q_ij[m - a S_i - b S_j]`` with ``G = dL/dv`` at
``v = 0`` and ``q_ij`` the product of the other layer polynomials. The Hessian is
``[[0, C], [C^T, 0]]`` there, with eigenvalues ``+-sigma(C)``: a **strict saddle** whenever
C != 0 (generic: v = 0 is not a critical point of the function-space loss). With three or more
zero filters, or when C = 0 (e.g. G = 0, the zero network is optimal), the Hessian vanishes and
the point is **degenerate** (L changes only at third order or higher).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr

from .. import roots as _roots
from ._common import (
    _check_problem,
    _deltas,
    _layer_norms,
    _loss_scale,
    _param_batch,
    _tolerances,
    _var,
)
from .function_space import convex_minimum
from .symmetry import _balancing, _projected_spectrum, _symmetry_basis, _zero_filters

LABELS = ("minimum", "strict_saddle", "degenerate", "not_critical", "non_finite")
MINIMUM, STRICT_SADDLE, DEGENERATE, NOT_CRITICAL, NON_FINITE = range(5)
_CHUNK = 2048  # flows per Hessian batch (memory: chunk * n^2 * 8 bytes, several copies)


def classify_points(problem, w, *, w_init=None, hessians=None, **tolerances):
    """Classify a batch of parameter vectors as limit points of the gradient flow.

    Parameters
    ----------
    problem : Problem
    w : array_like (n_params,) or (K, n_params)
        Points to classify, finite (ValueError otherwise, as :meth:`Problem.grad`; the
        diverged flows of a Dataset, NaN/Inf in ``w_final``, are labelled ``non_finite`` by
        :func:`classify`).
    w_init : array_like (K, n_params), optional
        Initial points of the flows; adds ``balance_drift`` = max_i |delta_i(w) - delta_i(w_init)|
        (Lemma 3.3: delta_i = ||w^(i+1)||^2 - ||w^(i)||^2 is constant along the exact flow).
    hessians : array_like (K, n_params, n_params), optional
        Hessians to use instead of :meth:`Problem.hessian` (e.g. finite differences).
    grad_tol, eig_tol, gap_tol, root_tol, jac_tol, zero_filter_tol : float
        See the module docstring (defaults in ``lcnfast.analysis.DEFAULTS``).

    Returns
    -------
    xarray.Dataset
        Dimensions ``flow`` (K), ``eig`` (n_params), ``sv`` (min(k_v, n_params)),
        ``root`` (k_v - 1, coordinate ``root_layer``), ``layer_no`` (N), ``v_tap`` (k_v).
        Per flow: ``limit_loss``, ``limit_grad_norm``, ``is_critical``, ``label``,
        ``hess_eig`` (flow, eig), ``hess_min_eig``, ``hess_scale``, ``hess_eig_balanced``
        (flow, eig), ``hess_min_eig_balanced``, ``hess_scale_balanced``, ``n_neg_eig``,
        ``n_zero_eig``, ``n_pos_eig``, ``n_sym_dirs``, ``sym_null_residual``, ``limit_v``
        (flow, v_tap), ``filter_norm`` (flow, layer_no), ``n_zero_filters``, ``root_real``,
        ``root_imag``, ``root_multiplicity``, ``root_shared`` (flow, root),
        ``has_common_root``, ``min_root_distance``, ``max_root_multiplicity``, ``jac_sv``
        (flow, sv; relative to the largest), ``jac_rank``, ``jac_deficient``,
        ``loss_best_found`` (scalar), ``gap_to_best``, ``reached_best``; for convex losses
        ``loss_convex_min`` (scalar), ``v_convex_min`` (v_tap), ``loss_gap``,
        ``attains_convex_min``; for filling architectures with a convex loss ``is_global``;
        for stride 1 and a convex loss ``prop51_ok`` and ``prop51_ok_jac``; with ``w_init``,
        ``balance_drift``. Attributes record the tolerances and rules.
    """
    return _classify_points(problem, w, w_init, hessians, tolerances, finite_only=True)


def _classify_points(problem, w, w_init, hessians, tolerances, *, finite_only):
    """:func:`classify_points`; unless ``finite_only``, rows of ``w`` with NaN/Inf are taken
    and get label ``non_finite`` and NaN elsewhere (the diverged flows of :func:`classify`)."""
    _check_problem(problem)
    tol = _tolerances(tolerances)
    arch = problem.arch
    W = _param_batch(arch, w, "w")
    if finite_only and not np.all(np.isfinite(W)):
        raise ValueError("w contains NaN or Inf")
    K, n = W.shape
    N, kv = arch.depth, arch.k_v
    finite = np.all(np.isfinite(W), axis=1)
    Wf = W[finite]
    Kf = Wf.shape[0]
    if hessians is not None:
        Hs = np.asarray(hessians, dtype=np.float64)
        if Hs.ndim == 2:
            Hs = Hs[None]
        if Hs.shape != (K, n, n):
            raise ValueError(f"hessians must have shape ({K}, {n}, {n}), got {Hs.shape}")
        Hs = Hs[finite]
        if not np.all(np.isfinite(Hs)):
            raise ValueError("hessians contains NaN or Inf (for rows where w is finite)")
    if w_init is not None:
        W0 = _param_batch(arch, w_init, "w_init")
        if W0.shape != W.shape:
            raise ValueError(f"w_init must have the shape of w, {W.shape}, got {W0.shape}")
        if finite_only and not np.all(np.isfinite(W0)):
            raise ValueError("w_init contains NaN or Inf")

    def full(shape, fill, dtype=np.float64):
        return np.full((K,) + shape, fill, dtype=dtype)

    # --- loss, gradient, final filter
    loss = full((), np.nan)
    gnorm = full((), np.nan)
    V = full((kv,), np.nan)
    if Kf:
        Lf, Gf = problem.loss_and_grad(Wf)
        loss[finite] = Lf
        gnorm[finite] = np.linalg.norm(Gf, axis=1)
        V[finite] = problem.final_filter(Wf)
    critical = finite & (gnorm <= tol["grad_tol"])

    # --- Hessian spectrum modulo the rescaling symmetry, at the point and at the balanced
    # point of its orbit (H(Dw) = D^-1 H(w) D^-1: same inertia, scale-free thresholds)
    eig = full((n,), np.nan)
    eig_b = full((n,), np.nan)
    resid = full((), np.nan)
    nsym = full((), -1, np.int16)
    if Kf:
        zero = _zero_filters(_layer_norms(arch, Wf), tol["zero_filter_tol"])
        dinv = _balancing(arch, Wf, zero)  # (Kf, n): D^-1 per flow
        T, rank = _symmetry_basis(arch, Wf, zero)
        Tb, _ = _symmetry_basis(arch, Wf / dinv, zero)
        ev = np.empty((Kf, n))
        evb = np.empty((Kf, n))
        rs = np.empty(Kf)
        for c0 in range(0, Kf, _CHUNK):
            c1 = min(Kf, c0 + _CHUNK)
            H = Hs[c0:c1] if hessians is not None else problem.hessian(Wf[c0:c1])
            ev[c0:c1], rs[c0:c1] = _projected_spectrum(H, T[c0:c1], rank[c0:c1])
            d = dinv[c0:c1]
            Hb = d[:, :, None] * H * d[:, None, :]
            evb[c0:c1], _ = _projected_spectrum(Hb, Tb[c0:c1], rank[c0:c1])
        eig[finite], eig_b[finite], resid[finite], nsym[finite] = ev, evb, rs, rank
    with np.errstate(invalid="ignore"):
        valid = ~np.isnan(eig)

        def spread(e):
            sc = np.nanmax(np.where(valid, np.abs(e), -np.inf), axis=1)
            return np.where(finite, sc, np.nan)

        scale = spread(eig)
        scale_b = spread(eig_b)
        thr = tol["eig_tol"] * scale_b
        n_neg = np.where(finite, np.sum(valid & (eig_b < -thr[:, None]), axis=1), -1).astype(
            np.int16
        )
        n_pos = np.where(finite, np.sum(valid & (eig_b > thr[:, None]), axis=1), -1).astype(
            np.int16
        )
        n_zero = np.where(finite, np.sum(valid, axis=1) - n_neg - n_pos, -1).astype(np.int16)
        min_eig = np.where(finite, np.nanmin(np.where(valid, eig, np.inf), axis=1), np.nan)
        min_eig_b = np.where(finite, np.nanmin(np.where(valid, eig_b, np.inf), axis=1), np.nan)
    label = np.full(K, NOT_CRITICAL, dtype=np.int8)
    label[critical & (n_pos == np.sum(valid, axis=1))] = MINIMUM
    label[critical & (n_zero > 0)] = DEGENERATE
    label[critical & (n_neg > 0)] = STRICT_SADDLE
    label[~finite] = NON_FINITE

    # --- filters, roots, Jacobian of pi
    norms = full((N,), np.nan)
    n_zero_f = full((), -1, np.int16)
    nroot = kv - 1
    root = full((nroot,), np.nan + 0j, np.complex128)
    mult = full((nroot,), 0, np.int16)
    shared = full((nroot,), False, bool)
    has_common = full((), False, bool)
    min_dist = full((), np.nan)
    nj = min(kv, n)
    jsv = full((nj,), np.nan)
    jrank = full((), -1, np.int16)
    root_layer = np.concatenate(
        [np.full((ki - 1) * S, i + 1) for i, (ki, S) in enumerate(zip(arch.k, arch.dilations))]
    ).astype(np.int64)
    generic_rank = arch.function_space_dim
    if Kf:
        beta = _layer_norms(arch, Wf)
        norms[finite] = beta
        n_zero_f[finite] = zero.sum(axis=1)
        z, rl, zl = _roots.layer_roots(arch, Wf, zero_tol=tol["zero_filter_tol"])
        assert np.array_equal(rl, root_layer)
        cr = _roots.common_roots(z, rl, zl | zero, tol["root_tol"])  # same rule: zl == zero
        root[finite] = z
        mult[finite] = cr["multiplicity"]
        shared[finite] = cr["shared"]
        has_common[finite] = cr["has_common_root"]
        min_dist[finite] = cr["min_distance"]
        Wn = Wf.copy()
        for i in range(N):
            sl = arch.layer_slice(i)
            with np.errstate(invalid="ignore", divide="ignore"):
                Wn[:, sl] = np.where(zero[:, i : i + 1], 0.0, Wf[:, sl] / beta[:, i : i + 1])
        sv = np.linalg.svd(problem.jacobian(Wn), compute_uv=False)
        smax = sv[:, :1]
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(smax > 0, sv / np.where(smax > 0, smax, 1.0), 0.0)
        jsv[finite] = rel
        jrank[finite] = np.sum((sv > tol["jac_tol"] * smax) & (smax > 0), axis=1)
    jac_def = finite & (jrank < generic_rank)
    max_mult = np.where(finite, mult.max(axis=1, initial=0), -1).astype(np.int16)

    # --- function space: best found, convex minimum, global
    lscale = _loss_scale(problem)
    gap_abs = tol["gap_tol"] * lscale
    best = float(np.min(loss[finite])) if Kf else np.nan
    gap_best = loss - best
    F, E, J, R, LN, VT = "flow", "eig", "sv", "root", "layer_no", "v_tap"
    out = {
        "limit_loss": _var(F, loss, "L(w) at the point (the paper's unnormalised risk)"),
        "limit_grad_norm": _var(F, gnorm, "||grad L(w)||_2 at the point"),
        "is_critical": _var(F, critical, f"||grad L|| <= grad_tol = {tol['grad_tol']:g}"),
        "label": _var(
            F,
            label,
            "limit point type from the gradient and the projected Hessian",
            flag_values=np.arange(len(LABELS), dtype=np.int8),
            flag_meanings=" ".join(LABELS),
        ),
        "hess_eig": _var(
            (F, E),
            eig,
            "eigenvalues (ascending) of the Hessian on the orthogonal complement of the "
            "rescaling-symmetry directions; NaN-padded",
        ),
        "hess_min_eig": _var(F, min_eig, "smallest eigenvalue of the projected Hessian"),
        "hess_scale": _var(F, scale, "largest |eigenvalue| of the projected Hessian"),
        "hess_eig_balanced": _var(
            (F, E),
            eig_b,
            "as hess_eig at the balanced point of the orbit (equal filter norms): "
            "D^-1 H D^-1, same inertia; the counts and the label use these",
        ),
        "hess_min_eig_balanced": _var(F, min_eig_b, "smallest of hess_eig_balanced"),
        "hess_scale_balanced": _var(F, scale_b, "largest |hess_eig_balanced| (rho)"),
        "n_neg_eig": _var(F, n_neg, "balanced eigenvalues < -eig_tol * rho (-1: not computed)"),
        "n_zero_eig": _var(
            F,
            n_zero,
            "balanced eigenvalues with |lambda| <= eig_tol * rho (-1: not computed)",
        ),
        "n_pos_eig": _var(F, n_pos, "balanced eigenvalues > eig_tol * rho (-1: not computed)"),
        "n_sym_dirs": _var(
            F,
            nsym,
            "dimension of the projected-out rescaling orbit tangent (-1: not computed)",
        ),
        "sym_null_residual": _var(
            F,
            resid,
            "max_j ||H t_j||_2 over the orthonormal symmetry directions t_j "
            "(0 at an exact critical point)",
        ),
        "limit_v": _var((F, VT), V, "final filter v = pi(w) (Prop. 2.1)"),
        "filter_norm": _var((F, LN), norms, "||w^(i)||_2 per layer"),
        "n_zero_filters": _var(F, n_zero_f, "number of zero filters (-1: not computed)"),
        "root_real": _var(
            (F, R),
            root.real,
            "real part of the roots of the layer polynomials (eq. 2.1); inf: root at infinity; "
            "NaN: zero layer or not computed",
        ),
        "root_imag": _var(
            (F, R),
            np.where(np.isinf(root.real), 0.0, root.imag),
            "imaginary part of the roots of the layer polynomials (eq. 2.1)",
        ),
        "root_multiplicity": _var(
            (F, R), mult, "multiplicity of the root in its own layer polynomial"
        ),
        "root_shared": _var(
            (F, R), shared, "another layer polynomial has this root (within root_tol)"
        ),
        "has_common_root": _var(
            F, has_common, "two layer polynomials share a root (infinity included)"
        ),
        "min_root_distance": _var(
            F,
            min_dist,
            "smallest chordal distance between roots of different layers",
        ),
        "max_root_multiplicity": _var(F, max_mult, "largest root multiplicity within one layer"),
        "jac_sv": _var(
            (F, J),
            jsv,
            "singular values of the Jacobian of pi at the normalised filters, "
            "divided by the largest",
        ),
        "jac_rank": _var(
            F,
            jrank,
            f"numerical rank of the Jacobian of pi (generic rank {generic_rank})",
        ),
        "jac_deficient": _var(F, jac_def, "jac_rank below the generic rank (for stride 1: k_v)"),
        "loss_best_found": _var((), best, "lowest limit_loss among these points"),
        "gap_to_best": _var(F, gap_best, "limit_loss - loss_best_found"),
        "reached_best": _var(F, finite & (gap_best <= gap_abs), "gap_to_best <= gap_tol * L(v=0)"),
    }
    meta = {**tol, "loss_scale": lscale, "labels": list(LABELS)}
    loss_fn = problem.loss_fn
    filling = arch.filling
    meta["filling"] = filling
    if loss_fn.convex:
        v_star, L_star, info = convex_minimum(problem)
        if Kf and best < L_star - gap_abs:
            warnings.warn(
                f"a point has loss {best!r} below the convex solver's minimum {L_star!r} "
                f"({info['method']}); using the lower value",
                RuntimeWarning,
                stacklevel=2,
            )
            L_star = best
            v_star = V[finite][np.argmin(loss[finite])]
        gap = loss - L_star
        attains = finite & (gap <= gap_abs)
        out["loss_convex_min"] = _var(
            (), L_star, "min over v in R^{k_v} of the convex function-space loss"
        )
        out["v_convex_min"] = _var(VT, v_star, "a minimiser of the function-space loss")
        out["loss_gap"] = _var(F, gap, "limit_loss - loss_convex_min (the global gap when filling)")
        out["attains_convex_min"] = _var(F, attains, "loss_gap <= gap_tol * L(v=0)")
        meta["convex_solver"] = info
        if filling:
            out["is_global"] = _var(
                F,
                attains,
                "global minimum of L over w (filling architecture, convex loss)",
            )
            meta["global_reference"] = "convex function-space minimum (filling, convex loss)"
        else:
            meta["global_reference"] = (
                "none: not a filling architecture (loss_convex_min is only a lower bound); "
                "see loss_best_found"
            )
        if all(s == 1 for s in arch.s):
            nonglobal = critical & ~attains
            out["prop51_ok"] = _var(
                F,
                ~(nonglobal & ~has_common),
                "[7, Prop 5.1]: not (critical, not at the convex minimum, and no common root)",
            )
            out["prop51_ok_jac"] = _var(
                F,
                ~(nonglobal & ~jac_def),
                "as prop51_ok with common roots detected by the rank of the Jacobian of pi",
            )
    else:
        meta["global_reference"] = "none: the loss is not convex; see loss_best_found"
    if w_init is not None:
        with np.errstate(invalid="ignore"):
            drift = np.max(np.abs(_deltas(arch, W) - _deltas(arch, W0)), axis=1, initial=0.0)
        drift = np.where(finite & np.all(np.isfinite(W0), axis=1), drift, np.nan)
        out["balance_drift"] = _var(F, drift, "max_i |delta_i(w) - delta_i(w_init)| (Lemma 3.3)")
    coords = {
        "eig": np.arange(n),
        "sv": np.arange(nj),
        "root": np.arange(nroot),
        "root_layer": (
            R,
            root_layer,
            {"long_name": "layer (1-based) of each root slot"},
        ),
        "layer_no": (LN, np.arange(1, N + 1), {"long_name": "layer (1-based)"}),
        "v_tap": np.arange(kv),
    }
    meta["prop51_applicable"] = bool(loss_fn.convex and all(s == 1 for s in arch.s))
    return xr.Dataset(out, coords=coords, attrs={"analysis": json.dumps(meta)})
