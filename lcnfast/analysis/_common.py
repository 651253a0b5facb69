"""Shared pieces of :mod:`lcnfast.analysis`: default tolerances, argument checks, layer norms,
the loss scale and the xarray variable helper."""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..problem import Problem

DEFAULTS = dict(
    grad_tol=1e-6,
    eig_tol=1e-6,
    gap_tol=1e-6,
    root_tol=1e-4,
    jac_tol=1e-6,
    zero_filter_tol=1e-12,
)


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
        [np.linalg.norm(W[:, arch.layer_slice(i)], axis=1) for i in range(arch.depth)],
        axis=1,
    )


def _deltas(arch, W):
    """Balancedness delta_i = ||w^(i+1)||^2 - ||w^(i)||^2 (Lemma 3.3): (K, N - 1)."""
    return np.diff(_layer_norms(arch, W) ** 2, axis=1)


def _loss_scale(problem):
    L0 = problem.function_space_loss(np.zeros(problem.arch.k_v))
    return L0 if L0 > 0 and math.isfinite(L0) else 1.0


def _var(dims, data, long_name, units=None, **attrs):
    a = {"long_name": long_name}
    if units is not None:
        a["units"] = units
    a.update(attrs)
    return (dims, data, a)
