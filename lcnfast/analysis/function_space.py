"""The function-space picture: the loss as a function of the final filter v = pi(w)."""

from __future__ import annotations

import numpy as np
import scipy.optimize

from .. import losses as _losses
from ._common import _check_problem, _loss_scale


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
            {
                "method": "lstsq(A, b)",
                "success": True,
                "grad_norm": float(np.linalg.norm(G)),
            },
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
        {
            "method": method,
            "success": bool(res.success),
            "grad_norm": float(np.linalg.norm(G)),
        },
    )
