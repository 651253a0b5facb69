"""Rank conditions on the data and the bound of Lemma 3.6 / Corollary 3.7 on ||v||_1."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from .. import losses as _losses
from ._common import _check_problem


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
    """Loss values as a float array (NaN entries stay NaN: flows never evaluated), each at
    least the loss's minimum ``d_N m l(0)``: 0, but for the generalized Huber loss with
    beta < -1, whose l(0) = log(2 + beta) / alpha < 0 (every loss of lcnfast is even with its
    minimum at r = 0)."""
    if isinstance(x, (str, bytes, bool, np.bool_)) or x is None:
        raise TypeError(f"{name} must be a number or an array of numbers, got {x!r}")
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number or an array of numbers") from None
    if np.asarray(x).dtype.kind == "b":
        raise TypeError(f"{name} must hold numbers, not booleans")
    loss = problem.loss_fn
    floor = problem.arch.d_N * problem.m * min(0.0, float(loss.value(0.0)))
    # a computed loss may sit below the floor by its rounding: ~n eps |floor| for its n terms
    if np.any(a[np.isfinite(a)] < floor - 1e-9 * abs(floor)):
        raise ValueError(f"{name} must be >= {floor:.6g}, the least value of the "
                         f"{loss.name} loss here (d_N m l(0))")
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

    Two conditions (the paper assumes the first; the second suffices for convergence too, by
    Theorem 3.4 (2) and the Gram bound below; what a singular A allows is open):

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
            problem,
            problem.function_space_loss(np.zeros(kv)) if loss0 is None else loss0,
            "loss0",
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
