"""The rescaling symmetry (Lemma 3.3 proof, section 1.1)
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
"""

from __future__ import annotations

import numpy as np

from ..architecture import Architecture
from ._common import DEFAULTS, _layer_norms, _param_batch, _tol


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
        [np.repeat(inv_c[:, i : i + 1], ki, axis=1) for i, ki in enumerate(arch.k)],
        axis=1,
    )


def _zero_filters(norms, zero_filter_tol):
    return (norms == 0) | (norms <= zero_filter_tol * norms.max(axis=1, keepdims=True))


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


_CHUNK = 2048  # points per Hessian batch (memory: chunk * n^2 * 8 bytes, several copies)
#: near the zero-filter set, filters up to this factor times the geometric mean norm are zero
#: (it absorbs rounding and mild imbalance of a balanced path)
NEAR_ZERO_FACTOR = 2.0


def _hessian_spectra(problem, W, hessians, zero):
    """Projected spectra at the points W (K, n) and at the balanced points of their orbits.

    Returns ``eig``, ``eig_b`` (K, n) NaN-padded, ``resid``, ``resid_b`` (K,) (``max_j ||H t_j||``
    at the point and at the balanced point) and ``rank`` (K,) (symmetry directions removed).
    ``hessians`` (K, n, n) or None (then :meth:`Problem.hessian`)."""
    arch = problem.arch
    K, n = W.shape
    dinv = _balancing(arch, W, zero)  # (K, n): D^-1 per point
    T, rank = _symmetry_basis(arch, W, zero)
    Tb, _ = _symmetry_basis(arch, W / dinv, zero)
    eig, eig_b = np.empty((K, n)), np.empty((K, n))
    resid, resid_b = np.empty(K), np.empty(K)
    for c0 in range(0, K, _CHUNK):
        c = slice(c0, min(K, c0 + _CHUNK))
        H = hessians[c] if hessians is not None else problem.hessian(W[c])
        eig[c], resid[c] = _projected_spectrum(H, T[c], rank[c])
        d = dinv[c]
        eig_b[c], resid_b[c] = _projected_spectrum(
            d[:, :, None] * H * d[:, None, :], Tb[c], rank[c]
        )
    return eig, eig_b, resid, resid_b, rank


def _small_filter(problem, W, rtol):
    """(K,) bool: ``||pi(w)||_2 <= rtol * ||Y||_F / ||X||_2`` (the size of a filter that maps
    the inputs to the targets' size); always True for Y = 0 (the zero network is optimal).
    Without this test a critical point whose whole Hessian is tiny (a degenerate limit, e.g.
    an l_p interpolation with p >= 4) passes the orbit check although its filters are O(1)."""
    y = np.linalg.norm(problem.Y)
    if y == 0:
        return np.ones(W.shape[0], dtype=bool)
    scale = y / np.linalg.norm(problem.X, 2)
    with np.errstate(all="ignore"):
        v = np.linalg.norm(problem.final_filter(W), axis=1)
    return v <= rtol * scale


def orbit_spectra(problem, W, hessians, critical, *, eig_tol, zero_filter_tol):
    """Hessian spectra modulo the rescaling symmetry, with the zero-filter rule.

    Filters with ``||w^(i)|| <= zero_filter_tol * max_j ||w^(j)||`` are zero. Then the orbit
    check: by ``H(w) t = -D_a grad L(w)`` for ``t = D_a w`` the symmetry directions are null
    only up to ``resid_b ~ ||grad L|| / g`` at the balanced point (g = the filters' geometric
    mean norm). Near the zero-filter set this is not small: along a balanced path to w = 0,
    ``||grad L|| ~ ||dL/dv|| g^(N-1)`` and both ``resid_b`` and the whole Hessian are of order
    ``||dL/dv|| g^(N-2)``, so projecting the orbit out would remove a direction of curvature as
    large as the spectrum (for k = (1, 1) exactly the negative one of the saddle w = 0) although
    ||grad L|| passes any absolute ``grad_tol``. So at a critical point (``critical``, (K,) bool)
    whose final filter is small (``||pi(w)|| <= sqrt(eig_tol) ||Y||_F / ||X||_2``: pi(w) = 0
    exactly on the zero-filter set) with ``resid_b > sqrt(eig_tol) * rho_b`` (rho_b the largest balanced |eigenvalue|: the removed
    block is not flat even at the geometric mean of exactly flat and the spectrum's scale; at
    critical points away from zero filters ``resid_b ~ grad_tol / g`` is many orders below), the
    point is taken as near the zero-filter set: filters with norm at most ``NEAR_ZERO_FACTOR``
    times g are zero, and the spectra are those of the point they approach, w with these
    filters set to 0 (Hessian from :meth:`Problem.hessian` there, also when ``hessians`` are
    given). Two zero filters give ``+-sigma(C)``: a strict saddle whenever v = 0 is not
    critical for the function-space loss; three or more, or ``dL/dv = 0`` at v = 0, a
    degenerate point (see :mod:`lcnfast.analysis.points`). The Hessian at the nearby point
    itself would mislead both ways: for ``L = (w_1 w_2)^2`` (Y = 0, the zero network optimal) it
    is indefinite at ``(a, -a)``, and projecting the orbit out of it leaves the positive part.

    Returns
    -------
    dict with ``eig``, ``eig_b``, ``resid``, ``rank`` (see :func:`_hessian_spectra`), ``zero``
    (K, N) bool and ``near_zero`` (K,) bool (the orbit check fired).
    """
    arch = problem.arch
    norms = _layer_norms(arch, W)
    zero = _zero_filters(norms, zero_filter_tol)
    eig, eig_b, resid, resid_b, rank = _hessian_spectra(problem, W, hessians, zero)
    rho_b = np.nanmax(np.abs(eig_b), axis=1) if W.shape[0] else np.zeros(0)
    near = critical & (resid_b > np.sqrt(eig_tol) * rho_b) & (arch.depth > 1)
    if near.any():  # and the final filter is small: pi(w) = 0 exactly on the zero-filter set
        near[near] &= _small_filter(problem, W[near], np.sqrt(eig_tol))
    if near.any():
        rows = np.flatnonzero(near)
        with np.errstate(divide="ignore"):
            g = np.exp(np.mean(np.log(norms[rows]), axis=1, keepdims=True))
        zero[rows] |= norms[rows] <= NEAR_ZERO_FACTOR * g
        Wz = W[rows].copy()
        for i in range(arch.depth):
            Wz[:, arch.layer_slice(i)] *= ~zero[rows, i : i + 1]
        e, eb, r, _, rk = _hessian_spectra(problem, Wz, None, zero[rows])
        eig[rows], eig_b[rows], resid[rows], rank[rows] = e, eb, r, rk
    return {
        "eig": eig,
        "eig_b": eig_b,
        "resid": resid,
        "rank": rank,
        "zero": zero,
        "near_zero": near,
    }
