"""Limit points and rank conditions (issue 4): what did the gradient flows converge to?

Public functions
----------------
:func:`classify_points`
    Classify any batch of parameter vectors (K, n_params): criticality, the Hessian spectrum
    modulo the rescaling symmetry of Lemma 3.3, a label (minimum / strict saddle / degenerate /
    not critical), the function-space picture (final filter, convex minimum, loss gaps), the
    roots of the layer polynomials (eq. 2.1) with common roots and multiplicities, and the
    singular values of the Jacobian of pi. Returns an :class:`xarray.Dataset` over ``flow``.
:func:`classify`
    The same for ``w_final`` of a flow Dataset (lcnfast.flows schema), merged into it together
    with the flows' invariants (balancedness drift, loss increases). Never recomputes flows.
:func:`rank_report`, :func:`lemma36_bound`
    Rank conditions on the data (X X^T, the window Gram A) and the bound of Lemma 3.6 /
    Corollary 3.7 on ||v||_1, with the observed ``v_l1_max`` of a flow Dataset.
:func:`summarize`, :func:`check_prop51`
    A small table per label, and the study-level test of [7, Prop. 5.1].
:func:`symmetry_directions`, :func:`convex_minimum`
    Building blocks (orthonormal basis of the rescaling orbit; the convex function-space
    problem).

Conventions and tolerances (all keyword arguments, recorded in the output's attributes)
--------------------------------------------------------------------------------------
``grad_tol`` (absolute, default 1e-6)
    A point is critical when ``||grad L(w)||_2 <= grad_tol``. Absolute because L is the
    paper's unnormalised risk (no 1/m): use the flows' own stopping tolerance, or larger.
``eig_tol`` (relative, default 1e-6)
    An eigenvalue of the projected Hessian *at the balanced point of the orbit* (see below)
    counts as zero when ``|lambda| <= eig_tol * rho``, ``rho`` = largest |eigenvalue| there.
    At a distance d from an exact critical point eigenvalues move by O(d); along a direction
    where L is quartic the eigenvalue at gradient norm g is O(g^(2/3)), so degenerate
    directions need ``eig_tol * rho >~ grad_tol^(2/3)`` to be called zero: raise ``eig_tol``
    accordingly when ``grad_tol`` is large.
``gap_tol`` (relative, default 1e-6)
    ``L(w) - L_ref <= gap_tol * L_scale`` with ``L_scale = L(v = 0)`` (the loss of the zero
    network; ``||Y||_F^2`` for the square loss; 1 if that is 0). Used for ``is_global``,
    ``attains_convex_min`` and ``reached_best``.
``root_tol`` (chordal distance, default 1e-4)
    Roots closer than this are the same (multiplicities, common roots; :mod:`lcnfast.roots`).
    Multiple roots are computed only to about eps^(1/mu) and limits of flows only to the
    accuracy the flow reached, hence the loose default; ``min_root_distance`` is reported as a
    continuous measure so studies need not rely on the threshold.
``jac_tol`` (relative, default 1e-6)
    Rank of the Jacobian of pi: singular values above ``jac_tol * sigma_max`` count. The
    Jacobian is taken at the *normalised* filters ``w^(i) / ||w^(i)||``, which changes neither
    its rank nor the roots but removes the scale imbalance of unbalanced points (J(w) times a
    positive diagonal). For stride 1, J is a generalised Sylvester matrix of the layer
    polynomials: its rank is k_v minus the degree of their common factors, and near a
    coincidence sigma_min shrinks with the root distances (like their *product* when several
    roots of different layers cluster), so ``jac_sv`` and ``min_root_distance`` complement
    each other.
``zero_filter_tol`` (relative, default 1e-12)
    A filter is zero when ``||w^(i)|| <= zero_filter_tol * max_j ||w^(j)||``.

The rescaling symmetry (Lemma 3.3 proof, section 1.1)
------------------------------------------------------
``L(w^(1) c_1, ..., w^(N) c_N) = L(w)`` for ``c_1 ... c_N = 1``, so the orbit through w has
tangent space ``T_w = {(a_1 w^(1), ..., a_N w^(N)) : sum_i a_i = 0}`` (spanned by the paper's
``(..., w^(i), ..., -w^(j), ...)``), of dimension N - 1 when no filter is zero and
``N - #zero filters`` otherwise (the a_i of a zero filter is free). Differentiating
``grad L(D_c w) = D_c^{-1} grad L(w)`` gives ``H(w) t = -D_a grad L(w)`` for ``t = D_a w``: at a
critical point T_w lies in the kernel of the Hessian. We compute an orthonormal basis of T_w
(normalised layer blocks ``e_i = w^(i)/||w^(i)||`` and an orthonormal basis of
``{a : sum_i a_i / ||w^(i)|| = 0}`` by a Householder reflection; with zero filters, the e_i of
the non-zero filters), complete it to an orthonormal basis of R^n with a full SVD, and take
the spectrum of ``Q^T H Q`` on the orthogonal complement (``n_params - dim T_w`` eigenvalues).
This basis depends continuously on w while no filter vanishes, and removes exactly the
directions that are flat for symmetry reasons; flat directions that remain are genuine
degeneracies. ``sym_null_residual = max_j ||H t_j||`` checks the claim.

The Hessian itself is not constant along the orbit: differentiating ``L(D w) = L(w)`` twice
gives ``H(D w) = D^-1 H(w) D^-1`` for every w and every symmetry D. Its inertia (numbers of
negative / zero / positive eigenvalues) is invariant (Sylvester), its eigenvalues are not:
rescaling the filters of a strict minimum by (30, 1/5, 1/6) divides the curvature along layer
1 by 900 and multiplies that along layers 2 and 3 by 25 and 36, and a relative threshold then
called the point degenerate (this happened in testing).
So ``hess_eig`` is the projected spectrum at the point itself (what governs the flow and the
step-size limit of gradient descent near it), and the counts and the label come from
``hess_eig_balanced``, the projected spectrum of ``D^-1 H(w) D^-1`` = the Hessian at the point
``D w`` of the same orbit whose non-zero filters all have the same norm (no second Hessian
evaluation; zero filters are left alone).

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
import math
import numbers
import warnings

import numpy as np
import pandas as pd
import scipy.optimize
import xarray as xr

from . import losses as _losses
from . import roots as _roots
from .architecture import Architecture
from .problem import Problem

__all__ = [
    "LABELS",
    "classify_points",
    "classify",
    "rank_report",
    "lemma36_bound",
    "summarize",
    "check_prop51",
    "symmetry_directions",
    "convex_minimum",
]

#: label code -> meaning (``label`` variable, CF flags)
LABELS = ("minimum", "strict_saddle", "degenerate", "not_critical", "non_finite")
MINIMUM, STRICT_SADDLE, DEGENERATE, NOT_CRITICAL, NON_FINITE = range(5)

DEFAULTS = dict(
    grad_tol=1e-6,
    eig_tol=1e-6,
    gap_tol=1e-6,
    root_tol=1e-4,
    jac_tol=1e-6,
    zero_filter_tol=1e-12,
)

_CHUNK = 2048  # flows per Hessian batch (memory: chunk * n^2 * 8 bytes, several copies)


# ----------------------------------------------------------------------------- validation
def _check_problem(problem):
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a lcnfast.Problem, got {type(problem).__name__}")
    return problem


def _tol(value, name, *, upper=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (upper is not None and value >= upper):
        rng = f"[0, {upper})" if upper is not None else ">= 0"
        raise ValueError(f"{name} must be finite and in {rng}, got {value!r}")
    return value


def _tolerances(kw):
    unknown = set(kw) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown keyword argument(s): {', '.join(sorted(unknown))}")
    t = {**DEFAULTS, **kw}
    return dict(
        grad_tol=_tol(t["grad_tol"], "grad_tol"),
        eig_tol=_tol(t["eig_tol"], "eig_tol", upper=1.0),
        gap_tol=_tol(t["gap_tol"], "gap_tol"),
        root_tol=_tol(t["root_tol"], "root_tol", upper=1.0),
        jac_tol=_tol(t["jac_tol"], "jac_tol", upper=1.0),
        zero_filter_tol=_tol(t["zero_filter_tol"], "zero_filter_tol", upper=1.0),
    )


def _param_batch(arch, w, name):
    """(K, n) float64 array (non-finite entries allowed) from w (n,) or (K, n)."""
    if isinstance(w, (str, bytes)) or w is None:
        raise TypeError(f"{name} must be a numeric array, got {type(w).__name__}")
    try:
        W = np.asarray(w, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numeric array: {e}") from None
    n = arch.n_params
    if W.ndim == 1 and W.shape[0] == n:
        W = W[None, :]
    if W.ndim != 2 or W.shape[1] != n:
        raise ValueError(f"{name} must have shape (n_params,) = ({n},) or (K, {n}), got {W.shape}")
    return np.ascontiguousarray(W)


def _layer_norms(arch, W):
    return np.stack(
        [np.linalg.norm(W[:, arch.layer_slice(i)], axis=1) for i in range(arch.depth)], axis=1
    )


def _deltas(arch, W):
    """Balancedness delta_i = ||w^(i+1)||^2 - ||w^(i)||^2 (Lemma 3.3): (K, N - 1)."""
    return np.diff(_layer_norms(arch, W) ** 2, axis=1)


def _balancing(arch, W, zero):
    """D^-1 (K, n) for the symmetry D = diag(c_i on layer i) that balances w: c_i = g / ||w^(i)||
    with g the geometric mean of the non-zero filter norms (c_i = 1 on zero filters, ``zero``
    (K, N) the mask), so prod c_i = 1, pi(D w) = pi(w) and the non-zero filters of D w all
    have norm g."""
    beta = _layer_norms(arch, W)
    with np.errstate(divide="ignore", invalid="ignore"):
        logb = np.where(zero, 0.0, np.log(np.where(zero, 1.0, beta)))
        nnz = np.maximum((~zero).sum(axis=1, keepdims=True), 1)
        logg = logb.sum(axis=1, keepdims=True) / nnz
        inv_c = np.where(zero, 1.0, np.exp(logb - logg))  # 1 / c_i = ||w^(i)|| / g
    return np.concatenate(
        [np.repeat(inv_c[:, i : i + 1], ki, axis=1) for i, ki in enumerate(arch.k)], axis=1
    )


def _zero_filters(norms, zero_filter_tol):
    return (norms == 0) | (norms <= zero_filter_tol * norms.max(axis=1, keepdims=True))


# ----------------------------------------------------------------------------- symmetry
def symmetry_directions(arch, w, *, zero_filter_tol=DEFAULTS["zero_filter_tol"]):
    """Orthonormal basis of the tangent space of the rescaling orbit (Lemma 3.3's proof).

    The orbit of w under ``w^(i) -> c_i w^(i)``, ``prod c_i = 1`` has tangent space
    ``{(a_1 w^(1), ..., a_N w^(N)) : sum a_i = 0}``, the span of the paper's directions
    ``(..., w^(i), ..., -w^(j), ...)``; with zero filters it is the span of the non-zero
    filters' blocks (see the module docstring).

    Parameters
    ----------
    arch : Architecture
    w : array_like (n_params,) or (K, n_params), finite
    zero_filter_tol : float
        Relative threshold below which a filter counts as zero.

    Returns
    -------
    T : ndarray (K, n_params, N - 1)
        Orthonormal columns; the first ``rank[k]`` columns of ``T[k]`` span the tangent space,
        the others are zero.
    rank : ndarray int (K,)
        Dimension of the tangent space: N - 1 without zero filters, N - #zero filters with.
    """
    if not isinstance(arch, Architecture):
        raise TypeError(f"arch must be an Architecture, got {type(arch).__name__}")
    zero_filter_tol = _tol(zero_filter_tol, "zero_filter_tol", upper=1.0)
    W = _param_batch(arch, w, "w")
    if not np.all(np.isfinite(W)):
        raise ValueError("w contains NaN or Inf")
    return _symmetry_basis(arch, W, _zero_filters(_layer_norms(arch, W), zero_filter_tol))


def _symmetry_basis(arch, W, zero):
    """:func:`symmetry_directions` for clean W (K, n) and a given zero-filter mask (K, N)."""
    K, n = W.shape
    N = arch.depth
    T = np.zeros((K, n, max(N - 1, 0)))
    rank = np.zeros(K, dtype=np.int64)
    if N == 1:
        return T, rank
    beta = _layer_norms(arch, W)
    E = np.zeros((K, n, N))  # normalised layer blocks
    for i in range(N):
        sl = arch.layer_slice(i)
        with np.errstate(invalid="ignore", divide="ignore"):
            E[:, sl, i] = np.where(zero[:, i : i + 1], 0.0, W[:, sl] / beta[:, i : i + 1])
    nz = ~zero.any(axis=1)
    if nz.any():
        b = beta[nz]
        g = b.min(axis=1, keepdims=True) / b  # proportional to 1/beta, entries in (0, 1]
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        u = g.copy()
        u[:, 0] += 1.0  # Householder vector mapping g to -e_0 (g_0 > 0)
        Hh = np.eye(N)[None] - 2.0 * u[:, :, None] * u[:, None, :] / np.sum(u * u, 1)[:, None, None]
        T[nz] = E[nz] @ Hh[:, :, 1:]  # columns 1.. of Hh: orthonormal basis of g^perp
        rank[nz] = N - 1
    for k in np.flatnonzero(~nz):
        cols = np.flatnonzero(~zero[k])
        T[k, :, : cols.size] = E[k][:, cols]
        rank[k] = cols.size
    return T, rank


def _projected_spectrum(H, T, rank):
    """Eigenvalues of the Hessian on the orthogonal complement of the symmetry directions.

    H (K, n, n) symmetric, T (K, n, N-1), rank (K,). Returns eig (K, n) ascending, NaN-padded
    (``n - rank`` values per row), and the residual ``max_j ||H t_j||_2`` (K,).
    """
    K, n, _ = H.shape
    eig = np.full((K, n), np.nan)
    resid = np.zeros(K)
    for r in np.unique(rank):
        idx = np.flatnonzero(rank == r)
        Hg = H[idx]
        if r == 0:
            ev = np.linalg.eigvalsh(Hg)
        else:
            Tg = T[idx][:, :, :r]
            resid[idx] = np.linalg.norm(Hg @ Tg, axis=1).max(axis=1)
            U = np.linalg.svd(Tg, full_matrices=True)[0]
            Q = U[:, :, r:]
            Hr = np.swapaxes(Q, 1, 2) @ Hg @ Q
            ev = np.linalg.eigvalsh(0.5 * (Hr + np.swapaxes(Hr, 1, 2)))
        eig[idx, : n - r] = ev
    return eig, resid


# ----------------------------------------------------------------------------- function space
def _loss_scale(problem):
    L0 = problem.function_space_loss(np.zeros(problem.arch.k_v))
    return L0 if L0 > 0 and math.isfinite(L0) else 1.0


def convex_minimum(problem):
    """Global minimum of the (convex) function-space loss ``v -> L(v)`` over R^{k_v}.

    For a filling architecture (image of pi = R^{k_v}, [7, Thm 4.1]) this is the global
    minimum over w; for any architecture it is a lower bound, attained by w exactly when
    pi(w) is a minimiser.

    Square loss: ``L(v) = v^T A v - 2 b^T v + ||Y||^2`` (:class:`lcnfast.Problem`), minimised by any solution
    of ``A v = b`` (b lies in the range of A, so the least-squares solution is exact even for a
    singular A; we return the minimum-norm one). Other convex losses: Newton's method with a
    trust region (scipy ``trust-exact``, exact Hessian) from the least-squares filter; lp with
    p < 2 (unbounded second derivative at 0) uses L-BFGS-B instead.

    Returns
    -------
    v : ndarray (k_v,)
    loss : float
    info : dict
        ``method``, ``success``, ``grad_norm`` (of dL/dv at v).

    Raises
    ------
    ValueError
        If the loss is not convex (generalized Huber with beta < 0).
    """
    _check_problem(problem)
    loss = problem.loss_fn
    if not loss.convex:
        raise ValueError(f"loss {loss!r} is not convex: the function-space problem is not convex")
    A, b = problem.A, problem.b
    v0 = np.linalg.lstsq(A, b, rcond=None)[0]
    if loss.code == _losses.SQUARE:
        L, G = problem.function_space_grad(v0)
        return (
            v0,
            L,
            {"method": "lstsq(A, b)", "success": True, "grad_norm": float(np.linalg.norm(G))},
        )
    scale = _loss_scale(problem)
    fun = problem.function_space_grad
    use_newton = not (loss.code == _losses.LP and loss.params[0] < 2.0)
    if use_newton:
        res = scipy.optimize.minimize(
            fun,
            v0,
            jac=True,
            hess=problem.function_space_hessian,
            method="trust-exact",
            options={"gtol": 1e-11 * max(1.0, scale), "maxiter": 2000},
        )
        method = "trust-exact"
    if not use_newton or not res.success:
        start = res.x if use_newton else v0
        res = scipy.optimize.minimize(
            fun,
            start,
            jac=True,
            method="L-BFGS-B",
            options={"ftol": 1e-15, "gtol": 1e-11 * max(1.0, scale), "maxiter": 20000},
        )
        method = "L-BFGS-B"
    L, G = fun(res.x)
    return (
        res.x,
        L,
        {"method": method, "success": bool(res.success), "grad_norm": float(np.linalg.norm(G))},
    )


# ----------------------------------------------------------------------------- classify
def _var(dims, data, long_name, units=None, **attrs):
    a = {"long_name": long_name}
    if units is not None:
        a["units"] = units
    a.update(attrs)
    return (dims, data, a)


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
            F, n_zero, "balanced eigenvalues with |lambda| <= eig_tol * rho (-1: not computed)"
        ),
        "n_pos_eig": _var(F, n_pos, "balanced eigenvalues > eig_tol * rho (-1: not computed)"),
        "n_sym_dirs": _var(
            F, nsym, "dimension of the projected-out rescaling orbit tangent (-1: not computed)"
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
            F, jrank, f"numerical rank of the Jacobian of pi (generic rank {generic_rank})"
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
        "root_layer": (R, root_layer, {"long_name": "layer (1-based) of each root slot"}),
        "layer_no": (LN, np.arange(1, N + 1), {"long_name": "layer (1-based)"}),
        "v_tap": np.arange(kv),
    }
    meta["prop51_applicable"] = bool(loss_fn.convex and all(s == 1 for s in arch.s))
    return xr.Dataset(out, coords=coords, attrs={"analysis": json.dumps(meta)})


# ----------------------------------------------------------------------------- flow Datasets
#: a loss increase counts when above this many eps times max(|loss_init|, L(v=0)): the
#: rounding error of evaluating L (Gram path: eps * (||Y||^2 + v^T A v), see Problem's Notes)
LOSS_INCREASE_EPS = 64


def _check_flow_dataset(ds, problem):
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "w_final" not in ds:
        raise ValueError("ds must have a variable 'w_final' (flow, param) (lcnfast.flows schema)")
    if set(ds.w_final.dims) != {"flow", "param"}:
        raise ValueError(f"ds.w_final must have dims (flow, param), got {ds.w_final.dims}")
    arch = problem.arch
    if ds.sizes["param"] != arch.n_params:
        raise ValueError(
            f"ds has {ds.sizes['param']} parameters but the problem's architecture has "
            f"{arch.n_params}"
        )
    if "architecture" in ds.attrs:
        a = json.loads(ds.attrs["architecture"])
        if a != arch.to_dict():
            raise ValueError(f"ds.attrs['architecture'] = {a} does not match problem.arch {arch!r}")
    if "loss" in ds.attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loss = _losses.from_dict(json.loads(ds.attrs["loss"]))
        if loss != problem.loss_fn:
            raise ValueError(
                f"ds.attrs['loss'] = {loss!r} does not match problem.loss_fn {problem.loss_fn!r}"
            )
    if "layer" in ds.coords and "tap" in ds.coords:
        want_layer = np.concatenate([np.full(ki, i + 1) for i, ki in enumerate(arch.k)])
        want_tap = np.concatenate([np.arange(ki) for ki in arch.k])
        if not (
            np.array_equal(ds["layer"].values, want_layer)
            and np.array_equal(ds["tap"].values, want_tap)
        ):
            raise ValueError("ds's param index (layer, tap) is not in the architecture's order")


def _per_flow(da, K):
    """The values of ``da`` as (K, rest), flow first (K = 0 included)."""
    a = da.transpose("flow", ...).values
    return a.reshape(K, int(np.prod(a.shape[1:], dtype=np.int64)))


def classify(ds, problem, **tolerances):
    """Classify the limit points ``w_final`` of a flow Dataset and add the results to it.

    Nothing is integrated again: the analysis uses ``w_final`` and the flows' recorded
    invariants only. The Dataset must follow the :mod:`lcnfast.flows` schema (at least
    ``w_final`` (flow, param); ``delta_init``/``delta_final``, ``max_loss_increase``,
    ``loss_init`` are used when present) and match ``problem`` (architecture and loss
    attributes, parameter order).

    Parameters
    ----------
    ds : xarray.Dataset
    problem : Problem
        The problem the flows were run on (data X, Y are not stored in the Dataset).
    **tolerances
        ``grad_tol``, ``eig_tol``, ``gap_tol``, ``root_tol``, ``jac_tol``, ``zero_filter_tol``
        (see the module docstring).

    Returns
    -------
    xarray.Dataset
        ``ds`` with the variables of :func:`classify_points` (previous analysis variables of the
        same names are replaced), plus ``balance_drift`` (flow) = max_i |delta_final - delta_init|
        and ``loss_increased`` (flow, bool) = ``max_loss_increase`` above rounding level
        (``LOSS_INCREASE_EPS * eps * max(|loss_init|, L(v=0))``), when the inputs exist.
        Attribute ``analysis``: JSON of the tolerances and rules used.
    """
    _check_problem(problem)
    _check_flow_dataset(ds, problem)
    W = ds.w_final.transpose("flow", "param").values
    res = _classify_points(problem, W, None, None, tolerances, finite_only=False)
    extra = {}
    if "delta_init" in ds and "delta_final" in ds:
        d0 = _per_flow(ds.delta_init, W.shape[0])
        d1 = _per_flow(ds.delta_final, W.shape[0])
        with np.errstate(invalid="ignore"):
            drift = np.max(np.abs(d1 - d0), axis=1, initial=0.0)
        drift = np.where(np.all(np.isfinite(d1 - d0), axis=1), drift, np.nan)
        extra["balance_drift"] = _var(
            "flow", drift, "max_i |delta_i(t_final) - delta_i(0)| (Lemma 3.3: 0 for the exact flow)"
        )
    elif "w_init" in ds:
        W0 = ds.w_init.transpose("flow", "param").values
        with np.errstate(invalid="ignore"):
            drift = np.max(
                np.abs(_deltas(problem.arch, W) - _deltas(problem.arch, W0)), axis=1, initial=0.0
            )
        extra["balance_drift"] = _var(
            "flow", drift, "max_i |delta_i(w_final) - delta_i(w_init)| (Lemma 3.3)"
        )
    if "max_loss_increase" in ds:
        inc = ds.max_loss_increase.values
        ref = np.abs(ds.loss_init.values) if "loss_init" in ds else np.zeros_like(inc)
        thr = LOSS_INCREASE_EPS * np.finfo(float).eps * np.maximum(ref, _loss_scale(problem))
        with np.errstate(invalid="ignore"):
            extra["loss_increased"] = _var(
                "flow",
                inc > thr,
                "max_loss_increase above rounding level: the loss increased on some accepted step",
            )
    res = res.assign(extra)
    if "flow" in ds.coords:
        res = res.assign_coords(flow=ds["flow"].values)
    stale = [
        v
        for v in list(res.data_vars) + ["eig", "sv", "root", "root_layer", "layer_no"]
        if v in ds.variables
    ]
    out = ds.drop_vars(stale)
    out = xr.merge([out, res], compat="no_conflicts", join="exact", combine_attrs="override")
    out.attrs = {**ds.attrs, "analysis": res.attrs["analysis"]}
    return out


# ----------------------------------------------------------------------------- rank conditions
def _h(problem):
    """(name, h) with ||VX - Y||_1 <= h(L) for all V (Lemma 3.6 / eq. 3.8), per loss."""
    loss, d_N, m = problem.loss_fn, problem.arch.d_N, problem.m
    if loss.code == _losses.SQUARE:
        # L = ||R||_2^2 (no 1/2) and Cauchy-Schwarz ||R||_1 <= sqrt(d_N m) ||R||_2
        return "sqrt(d_N m L) (square loss, Cauchy-Schwarz)", lambda L: np.sqrt(d_N * m * L)
    if loss.code == _losses.LP:
        p = loss.params[0]
        # Theorem 3.8's proof: ||R||_1 <= d_N m p^(1/p) L^(1/p) (Hoelder, with L = ||R||_p^p / p)
        return (
            f"d_N m p^(1/p) L^(1/p), p = {p:g} (Theorem 3.8)",
            lambda L: d_N * m * p ** (1.0 / p) * np.power(L, 1.0 / p),
        )
    c = loss.l1_slack(d_N)
    return f"L + c m, c = {c:.6g} (Corollary 3.7)", lambda L: L + c * m


def _h_frobenius(problem):
    """h_F with ||VX - Y||_F <= h_F(L)."""
    loss, d_N, m = problem.loss_fn, problem.arch.d_N, problem.m
    if loss.code == _losses.SQUARE:
        return lambda L: np.sqrt(L)
    if loss.code == _losses.LP:
        p = loss.params[0]
        f = (d_N * m) ** max(0.5 - 1.0 / p, 0.0)
        return lambda L: f * np.power(p * L, 1.0 / p)
    return _h(problem)[1]  # ||R||_F <= ||R||_1


def _loss_values(problem, x, name):
    """Loss values as a float array; >= 0 for the square and lp losses (the generalized Huber
    loss with beta < -1 takes negative values: l(0) = log(2 + beta) / alpha < 0)."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name} must be a number or an array of numbers, got {x!r}")
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array of numbers") from None
    if problem.loss_fn.code in (_losses.SQUARE, _losses.LP) and np.any(a[np.isfinite(a)] < 0):
        raise ValueError(f"{name} must be >= 0 for the {problem.loss_fn.name} loss")
    return a


def lemma36_bound(problem, loss_value):
    """The bound of Lemma 3.6 on ||v||_1 as a function of the loss.

    ``g(L) = (1/d_N) (h(L) + ||Y||_1) ||X^T (X X^T)^{-1}||_1`` (entrywise l1 norms), with h from
    Theorem 3.8's proof (lp: ``d_N m p^(1/p) L^(1/p)``), Corollary 3.7 (pseudo-Huber,
    generalized Huber, log-cosh: ``h(L) = L + c m``, ``c = Loss.l1_slack(d_N)``), or for the
    square loss (no 1/2, ``L = ||R||_2^2``) ``h(L) = sqrt(d_N m L)``. Along a flow L decreases,
    so ``||v(t)||_1 <= g(L(w_0))`` for all t (Theorem 3.4).

    Parameters
    ----------
    problem : Problem
    loss_value : float or array_like
        L(w_0) (for example ``ds.loss_init``).

    Returns
    -------
    float or ndarray, or None
        None when X X^T is singular (the lemma's hypothesis fails).
    """
    _check_problem(problem)
    L = _loss_values(problem, loss_value, "loss_value")
    X = problem.X
    d0 = X.shape[0]
    s = np.linalg.svd(X, compute_uv=False)
    if s.size < d0 or s[-1] <= max(X.shape) * np.finfo(float).eps * s[0]:
        return None
    pinv_l1 = float(np.sum(np.abs(np.linalg.pinv(X))))
    g = (_h(problem)[1](L) + np.sum(np.abs(problem.Y))) * pinv_l1 / problem.arch.d_N
    return float(g) if np.ndim(g) == 0 else g


def rank_report(problem, ds=None, *, loss0=None):
    """Rank conditions on the data, and the bound of Lemma 3.6 against observed ||v(t)||_1.

    Two conditions (which of them decides convergence is open: the paper assumes the first):

    - the paper's hypothesis: ``X X^T`` (d0, d0) has full rank (needs m >= d0);
    - the window Gram ``A`` (k_v, k_v) is positive definite, i.e. ``v -> V X`` is injective.
      It is implied by the first and is what the boundedness proof uses: with
      ``||VX||_F^2 = v^T A v >= lambda_min(A) ||v||_2^2`` one gets
      ``||v||_1 <= sqrt(k_v / lambda_min(A)) (h_F(L) + ||Y||_F)`` (``gram_bound``, an
      extension of Lemma 3.6 that needs only A > 0; ``h_F`` bounds ``||VX - Y||_F``).

    Ranks use numpy's default tolerance (``max(shape) * eps * sigma_max``; for X X^T through the
    singular values of X, which are accurate to eps * sigma_max rather than eps * sigma_max^2).

    Parameters
    ----------
    problem : Problem
    ds : xarray.Dataset, optional
        Flow Dataset; its ``loss_init`` gives the bounds per flow and ``v_l1_max`` (max over
        accepted states of ||v||_1) is compared with them.
    loss0 : float or array_like, optional
        L(w_0) to evaluate the bounds at when ``ds`` is not given (default L(v = 0), the loss
        of the zero network).

    Returns
    -------
    dict
        ``d0, m, k_v, d_N``; ``xxt_rank``, ``xxt_min_eig``, ``xxt_cond`` (inf when singular),
        ``xxt_full_rank``; ``gram_rank``, ``gram_min_eig``, ``gram_cond``, ``gram_pd``;
        ``h`` (the formula used), ``pinv_l1`` (``||X^T (X X^T)^{-1}||_1`` or None),
        ``loss0``, ``lemma36_bound`` (g(loss0), None when X X^T is singular), ``gram_bound``
        (None when A is singular); with ``ds`` also ``v_l1_max`` (per flow),
        ``lemma36_holds`` / ``gram_bound_holds`` (all finite flows within the bound, or None)
        and ``lemma36_ratio`` / ``gram_ratio`` (bound / observed per flow: the looseness).
    """
    _check_problem(problem)
    X = problem.X
    d0, m = X.shape
    kv = problem.arch.k_v
    eps = np.finfo(float).eps
    s = np.linalg.svd(X, compute_uv=False)
    xrank = int(np.sum(s > max(d0, m) * eps * s[0])) if s.size and s[0] > 0 else 0
    full = xrank == d0
    xmin = float(s[-1] ** 2) if s.size == d0 else 0.0
    ea = np.linalg.eigvalsh(problem.A)
    grank = int(np.sum(ea > kv * eps * ea[-1])) if ea[-1] > 0 else 0
    gpd = grank == kv
    rep = {
        "d0": d0,
        "m": m,
        "k_v": kv,
        "d_N": problem.arch.d_N,
        "xxt_rank": xrank,
        "xxt_min_eig": xmin,
        "xxt_cond": float(s[0] ** 2 / s[-1] ** 2) if full else math.inf,
        "xxt_full_rank": full,
        "gram_rank": grank,
        "gram_min_eig": float(ea[0]),
        "gram_cond": float(ea[-1] / ea[0]) if gpd else math.inf,
        "gram_pd": gpd,
        "h": _h(problem)[0],
        "pinv_l1": float(np.sum(np.abs(np.linalg.pinv(X)))) if full else None,
    }
    if ds is not None:
        if not isinstance(ds, xr.Dataset):
            raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
        for v in ("loss_init", "v_l1_max"):
            if v not in ds:
                raise ValueError(f"ds must have a variable {v!r} (flow) (lcnfast.flows schema)")
        if loss0 is not None:
            raise ValueError("give either ds or loss0, not both")
        L0 = ds.loss_init.values.astype(float)
    else:
        L0 = _loss_values(
            problem, problem.function_space_loss(np.zeros(kv)) if loss0 is None else loss0, "loss0"
        )
    rep["loss0"] = L0
    rep["lemma36_bound"] = lemma36_bound(problem, L0) if full else None
    if gpd:
        hF = _h_frobenius(problem)
        rep["gram_bound"] = np.sqrt(kv / ea[0]) * (hF(L0) + np.linalg.norm(problem.Y))
    else:
        rep["gram_bound"] = None
    if ds is not None:
        obs = ds.v_l1_max.values.astype(float)
        rep["v_l1_max"] = obs
        ok = np.isfinite(obs) & np.isfinite(L0)
        for key, bkey in (("lemma36", "lemma36_bound"), ("gram", "gram_bound")):
            b = rep[bkey]
            if b is None:
                rep[f"{key}_holds" if key == "lemma36" else "gram_bound_holds"] = None
                rep[f"{key}_ratio"] = None
                continue
            # a relative 1e-9 allowance for the rounding in ||v||_1 and L
            holds = bool(np.all(obs[ok] <= b[ok] * (1 + 1e-9)))
            rep[f"{key}_holds" if key == "lemma36" else "gram_bound_holds"] = holds
            with np.errstate(divide="ignore", invalid="ignore"):
                rep[f"{key}_ratio"] = np.where(ok, b / obs, np.nan)
    return rep


# ----------------------------------------------------------------------------- summaries
def check_prop51(ds):
    """Study-level test of [7, Prop. 5.1] on a classified Dataset.

    For stride 1 and a convex loss, a critical point whose layer polynomials have no common
    root is a global minimum (the Jacobian of pi then has rank k_v, so ``J^T dL/dv = 0`` forces
    ``dL/dv = 0``). Hence every critical limit that does not attain the convex function-space
    minimum must have a common root.

    Returns
    -------
    dict
        ``applicable`` (bool) and, if so, ``n_nonglobal_critical``, ``n_with_common_root``,
        ``n_with_jac_deficient``, ``all_have_common_roots``, ``all_jac_deficient`` and
        ``violations`` (flow labels of non-global critical limits without a detected common
        root).
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "label" not in ds or "analysis" not in ds.attrs:
        raise ValueError("ds has not been classified: run lcnfast.analysis.classify(ds, problem)")
    meta = json.loads(ds.attrs["analysis"])
    if not meta.get("prop51_applicable") or "prop51_ok" not in ds:
        return {
            "applicable": False,
            "reason": "Prop. 5.1 needs stride 1 and a convex loss (generalized Huber: beta >= 0)",
        }
    nonglobal = ds.is_critical.values & ~ds.attains_convex_min.values
    common = ds.has_common_root.values
    jac = ds.jac_deficient.values
    flows = ds["flow"].values
    return {
        "applicable": True,
        "n_nonglobal_critical": int(nonglobal.sum()),
        "n_with_common_root": int((nonglobal & common).sum()),
        "n_with_jac_deficient": int((nonglobal & jac).sum()),
        "all_have_common_roots": bool(np.all(common[nonglobal])),
        "all_jac_deficient": bool(np.all(jac[nonglobal])),
        "violations": flows[nonglobal & ~common].tolist(),
    }


def summarize(ds, quantiles=(0.1, 0.5, 0.9)):
    """A small table per label of a classified flow Dataset (ready for a report).

    Rows: the labels of :data:`LABELS` and ``all``. Columns: ``count``, ``fraction``; loss
    quantiles ``loss_q10``... (``loss_final`` if present, else ``limit_loss``); time quantiles
    ``t_q10``... of ``t_final`` (when present); ``converged`` (fraction with status 0, when
    present); ``drift_median``, ``drift_max`` (``balance_drift``); fractions ``global``
    (``is_global``), ``common_root`` (``has_common_root``), ``loss_increased`` when present.
    Statistics of an empty row are NaN. ``df.attrs["prop51"]`` holds :func:`check_prop51`.

    Returns
    -------
    pandas.DataFrame
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "label" not in ds:
        raise ValueError("ds has no 'label': run lcnfast.analysis.classify(ds, problem) first")
    try:
        qs = [float(q) for q in quantiles]
    except TypeError:
        raise TypeError("quantiles must be a sequence of numbers in [0, 1]") from None
    if not all(0 <= q <= 1 for q in qs):
        raise ValueError("quantiles must lie in [0, 1]")
    label = ds.label.values
    K = label.size
    loss = (ds.loss_final if "loss_final" in ds else ds.limit_loss).values
    cols = {}
    groups = [(name, label == code) for code, name in enumerate(LABELS)] + [
        ("all", np.ones(K, bool))
    ]

    def q(arr, sel, qq):
        a = arr[sel]
        a = a[np.isfinite(a)]
        return float(np.quantile(a, qq)) if a.size else np.nan

    def frac(arr, sel):
        return float(np.mean(arr[sel])) if sel.any() else np.nan

    for name, sel in groups:
        row = {"count": int(sel.sum()), "fraction": float(sel.sum()) / K if K else np.nan}
        for qq in qs:
            row[f"loss_q{round(100 * qq)}"] = q(loss, sel, qq)
        if "t_final" in ds:
            for qq in qs:
                row[f"t_q{round(100 * qq)}"] = q(ds.t_final.values, sel, qq)
        if "status" in ds:
            row["converged"] = frac(ds.status.values == 0, sel)
        if "balance_drift" in ds:
            row["drift_median"] = q(ds.balance_drift.values, sel, 0.5)
            row["drift_max"] = q(ds.balance_drift.values, sel, 1.0)
        for var, col in (
            ("is_global", "global"),
            ("has_common_root", "common_root"),
            ("loss_increased", "loss_increased"),
        ):
            if var in ds:
                row[col] = frac(ds[var].values.astype(bool), sel)
        cols[name] = row
    df = pd.DataFrame.from_dict(cols, orient="index")
    df.index.name = "label"
    df.attrs["prop51"] = check_prop51(ds)
    return df
