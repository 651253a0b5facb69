"""A batched trust-region Newton method: many small smooth minimisations run at once.

Method: Nocedal & Wright, *Numerical Optimization*, 2nd ed. (2006), Algorithm 4.1 (the
trust-region driver) with the subproblem ``min_p g.p + p.H.p / 2 subject to ||p|| <= Delta``
solved exactly as in their section 4.3 (Moré & Sorensen, "Computing a trust region step",
SIAM J. Sci. Stat. Comput. 4 (1983) 553-572), here through an eigendecomposition
``H = Q diag(lam) Q^T`` (``lam`` ascending) in which ``p(lambda) = -Q (Q^T g / (lam + lambda))``:

- the Newton step ``p(0)`` when ``H`` is positive definite and ``||p(0)|| <= Delta``;
- otherwise the ``lambda >= max(0, -lam_1)`` with ``||p(lambda)|| = Delta``, found by Newton's
  method on ``1/||p(lambda)|| - 1/Delta`` (N&W eq. 4.44; the function is concave and increasing,
  so every Newton step lands at or left of the root, and from there the iterates increase to
  it quadratically), safeguarded by the bracket of ``lambda`` it keeps, with a bisection step
  ``max(sqrt(a b), a + (b - a)/100)`` (the safeguard of scipy's ``trust-exact``) when a
  Newton step leaves the bracket, and at most ``_SECULAR_ITERS`` iterations (then the bracket's
  upper end, a step inside the region);
- the hard case (``g`` numerically orthogonal to the eigenvectors of ``lam_1``: even at the
  smallest resolvable shift ``lambda = -lam_1 + n eps max|lam|`` the step stays inside the
  region), where ``lam_1 < 0``: that step plus ``tau q_1`` with the ``tau`` of smaller
  magnitude that reaches the boundary (N&W eq. 4.45). The same completion is applied where the
  root ``lambda`` is too close to ``-lam_1`` to be represented (its bracket a few ulps wide)
  and ``p(lambda)`` stays short of the boundary. Where ``|lam_1|`` is below the resolution the
  direction ``q_1`` is flat: the step of smallest norm (``tau = 0``) is taken.

The driver is scipy's (``scipy.optimize._trustregion._minimize_trust_region``, which ``minimize
(method="trust-exact")`` runs), so that the iterates follow trust-exact's closely: initial radius
1, at most 1000, ratio ``rho = (L(x) - L(x + p)) / (model decrease)``; the radius shrinks by 4
where ``rho < 1/4`` and doubles where ``rho > 3/4`` and the step reached the boundary; the step
is accepted where ``rho > 0.15``. A trial point that is not finite, or whose loss or gradient is
not finite (an overflow), is rejected (``rho = -inf``). All arithmetic is vectorised over the
starts still running; each iteration makes one batched call of ``loss_and_grad`` (the trial
points) and one of ``hessian`` (only the starts whose point moved).

Stopping rules, per start (``status``):

- ``CONVERGED``: ``||grad L(x)||_2 <= gtol`` (checked at ``W0`` too: 0 iterations there);
- ``MAXITER``: ``maxiter`` iterations (accepted or rejected steps, as scipy counts them);
- ``FAILED``: the predicted value ``L(x) - (model decrease)`` rounds to ``L(x)``: the ratio
  test would compare rounding errors (scipy's driver stops there too: its predicted reduction
  is then <= 0, ``status`` 2); or, where ``|L(x)|`` is too small for that rule to act, the radius
  fell below ``max(eps ||x||_2, tiny)``: a step that short changes the largest coordinates of
  x by less than their rounding unit (``tiny``, the smallest normal float, for x = 0); or the
  loss, gradient or Hessian at x is not finite.

A start never leaves the finite numbers: its x is always its last accepted point.
"""

from __future__ import annotations

import dataclasses

import numpy as np

CONVERGED, MAXITER, FAILED = 0, 1, 2
STATUS_NAMES = ("converged", "maxiter", "failed")
_RUNNING = -1

# scipy.optimize._trustregion._minimize_trust_region's defaults
INITIAL_RADIUS = 1.0
MAX_RADIUS = 1000.0
ETA = 0.15

_SECULAR_ITERS = 30  # Newton iterations on 1/||p(lambda)||: quadratic from the left, ~5-10 used
_SECULAR_RTOL = 1e-6  # | ||p|| - Delta | <= this * Delta counts as on the boundary
_EPS = np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny


@dataclasses.dataclass(frozen=True)
class TrustRegionResult:
    """Per start: the last accepted point ``x`` (K, n), its loss ``fun`` (K,) and gradient norm
    ``grad_norm`` (K,), the iterations ``nit`` (K,) and ``status`` (K,) (``CONVERGED``,
    ``MAXITER`` or ``FAILED``; ``STATUS_NAMES[status]`` names it)."""

    x: np.ndarray
    fun: np.ndarray
    grad_norm: np.ndarray
    nit: np.ndarray
    status: np.ndarray


def _shifted_step(gt, lam, shift):
    """``p(shift)`` in the eigenbasis, ``-gt / (lam + shift)`` (m, n), with 0 where ``gt`` is 0
    (also for a zero denominator); ``shift`` (m,)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(gt == 0.0, 0.0, -gt / (lam + shift[:, None]))


def _norm(a):
    """Euclidean norms of the rows of ``a`` (m, n) (inf where they overflow)."""
    with np.errstate(over="ignore"):
        return np.sqrt(np.einsum("ij,ij->i", a, a))


def _secular_root(lam, gt, radius, lo):
    """The ``lambda`` in ``(lo, hi]`` with ``||p(lambda)|| = radius`` for rows where
    ``||p(lo)|| > radius`` (m rows; ``lam`` (m, n) ascending, ``gt`` (m, n), ``radius``, ``lo``
    (m,)): safeguarded Newton on ``1/||p|| - 1/radius`` (N&W eq. 4.44) inside the bracket
    ``[a, b]``, from ``hi = ||gt|| / radius - lam_1`` (where ``||p|| <= radius``). Rows not
    within ``_SECULAR_RTOL`` when their bracket is a few ulps wide (the root is not
    representable closer) or after ``_SECULAR_ITERS`` iterations get ``b`` (inside)."""
    hi = np.maximum(lo, _norm(gt) / radius - lam[:, 0])
    hi += 4 * _EPS * (hi + np.abs(lam[:, 0]))  # above the subtraction's rounding: p(hi) inside
    a, b, lamb = lo.copy(), hi.copy(), hi.copy()
    for _ in range(_SECULAR_ITERS):
        pt = _shifted_step(gt, lam, lamb)
        pn = _norm(pt)
        done = np.abs(pn - radius) <= _SECULAR_RTOL * radius
        outside = pn > radius
        a = np.where(outside, lamb, a)
        b = np.where(outside, b, lamb)
        if np.all(done | (b - a <= 4 * _EPS * b)):
            break
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            qn2 = np.einsum("ij,ij->i", pt, pt / (lam + lamb[:, None]))  # ||R^-T p||^2
            newton = lamb + (pn / radius - 1.0) * pn * pn / qn2
        inside_bracket = np.isfinite(newton) & (newton > a) & (newton < b)
        bisect = np.maximum(np.sqrt(a * b), a + 0.01 * (b - a))
        lamb = np.where(done, lamb, np.where(inside_bracket, newton, bisect))
    return np.where(done, lamb, b)


def _to_boundary(pt, radius):
    """The ``tau`` of smaller magnitude with ``||pt + tau e_1|| = radius`` (m,), for steps
    ``pt`` (m, n) inside (the hard case, N&W eq. 4.45)."""
    p1 = pt[:, 0]
    c = np.einsum("ij,ij->i", pt, pt) - radius**2  # <= 0
    root = np.sqrt(np.maximum(p1 * p1 - c, 0.0))
    denom = p1 + np.where(p1 >= 0, root, -root)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom == 0.0, 0.0, -c / denom)


def solve_subproblem(lam, gt, radius):
    """Exact trust-region steps for m models in their eigenbases.

    Parameters
    ----------
    lam : ndarray (m, n)
        Eigenvalues of each Hessian, ascending (``np.linalg.eigh``).
    gt : ndarray (m, n)
        The gradients in the eigenbases, ``Q^T g``.
    radius : ndarray (m,)
        Trust radii, > 0.

    Returns
    -------
    pt : ndarray (m, n)
        The steps in the eigenbases (``p = Q pt``).
    shift : ndarray (m,)
        Their multipliers ``lambda >= 0``: ``(H + lambda I) p = -g`` up to the ``tau q_1``
        added where ``lam_1 < 0`` and ``p(lambda)`` falls short of the boundary (the hard
        case, or ``lam_1 + lambda`` too small to be resolved in floating point). Then the
        model value is within ``tau^2 (lam_1 + lambda) / 2`` of the optimum (which is at least
        the dual value ``m(p(lambda)) - lambda (Delta^2 - ||p(lambda)||^2) / 2``), against
        ``lambda (Delta^2 - ||p(lambda)||^2) / 2`` without the completion.
    hits : ndarray (m,) bool
        Whether the step is on the boundary (not the interior Newton step or a flat hard case).
    """
    n = lam.shape[1]
    lam1 = lam[:, 0]
    resolution = n * _EPS * np.max(np.abs(lam), axis=1)
    interior = (lam1 > 0) & (_norm(_shifted_step(gt, lam, np.zeros_like(lam1))) <= radius)
    lo = np.maximum(0.0, resolution - lam1)  # the smallest shift that makes lam + shift > 0
    search = ~interior & (_norm(_shifted_step(gt, lam, lo)) > radius)
    shift = np.where(interior, 0.0, lo)
    if search.any():
        shift[search] = _secular_root(lam[search], gt[search], radius[search], lo[search])
    pt = _shifted_step(gt, lam, shift)
    curved = ~interior & (lam1 < -resolution)  # negative curvature along q_1
    short = curved & (_norm(pt) < radius * (1 - _SECULAR_RTOL))
    if short.any():
        pt[short, 0] += _to_boundary(pt[short], radius[short])
    return pt, shift, search | curved


def _model_decrease(lam, gt, pt):
    """``-(g.p + p.H.p / 2)`` in the eigenbases (m,)."""
    return -np.einsum("ij,ij->i", gt, pt) - 0.5 * np.einsum("ij,ij,ij->i", lam, pt, pt)


class _Starts:
    """The state of K minimisations: points x (K, n), losses f (K,), gradients g (K, n),
    radii, iteration counts, status, and each start's model (Hessian eigenvalues ``lam``
    (K, n), eigenvectors ``Q`` (K, n, n), ``gt = Q^T g``), current where ``fresh`` is False."""

    def __init__(self, x, f, g):
        K, n = x.shape
        self.x, self.f, self.g = x, f, g
        self.radius = np.full(K, INITIAL_RADIUS)
        self.nit = np.zeros(K, dtype=np.int64)
        self.status = np.full(K, _RUNNING, dtype=np.int8)
        self.lam = np.zeros((K, n))
        self.Q = np.zeros((K, n, n))
        self.gt = np.zeros((K, n))
        self.fresh = np.ones(K, dtype=bool)

    def update_models(self, hessian, act):
        """Hessians and eigendecompositions at the running starts ``act`` whose point moved;
        a start whose Hessian is not finite fails."""
        idx = act[self.fresh[act]]
        if idx.size == 0:
            return
        H = np.asarray(hessian(self.x[idx]), dtype=np.float64)
        ok = np.isfinite(H).all(axis=(1, 2))
        self.status[idx[~ok]] = FAILED
        idx, H = idx[ok], H[ok]
        if idx.size == 0:
            return
        self.lam[idx], self.Q[idx] = np.linalg.eigh(H)
        self.gt[idx] = np.einsum("kji,kj->ki", self.Q[idx], self.g[idx])
        self.fresh[idx] = False


def _iterate(st, act, loss_and_grad, gtol, maxiter):
    """One trust-region iteration (N&W Alg. 4.1) of the running starts ``act`` (int array)."""
    pt, _, hits = solve_subproblem(st.lam[act], st.gt[act], st.radius[act])
    pred = _model_decrease(st.lam[act], st.gt[act], pt)
    stuck = ~(st.f[act] - pred < st.f[act])  # the predicted value rounds to L(x): warnflag 2
    st.status[act[stuck]] = FAILED
    act, pt, hits, pred = act[~stuck], pt[~stuck], hits[~stuck], pred[~stuck]
    trial = st.x[act] + np.einsum("kij,kj->ki", st.Q[act], pt)
    finite = np.isfinite(trial).all(axis=1)
    f_new = np.full(act.size, np.inf)
    g_new = np.full(trial.shape, np.nan)
    if finite.any():
        f_new[finite], g_new[finite] = loss_and_grad(trial[finite])
    evaluated = np.isfinite(f_new) & np.isfinite(g_new).all(axis=1)
    with np.errstate(invalid="ignore"):
        rho = np.where(evaluated, (st.f[act] - f_new) / pred, -np.inf)
    radius = st.radius[act]
    radius = np.where(rho < 0.25, 0.25 * radius, radius)
    radius = np.where((rho > 0.75) & hits, np.minimum(2.0 * radius, MAX_RADIUS), radius)
    st.radius[act] = radius
    accept = rho > ETA
    take = act[accept]
    st.x[take], st.f[take], st.g[take] = trial[accept], f_new[accept], g_new[accept]
    st.fresh[take] = True
    st.nit[act] += 1
    st.status[take[_norm(g_new[accept]) <= gtol]] = CONVERGED
    running = act[st.status[act] == _RUNNING]
    st.status[running[st.nit[running] >= maxiter]] = MAXITER
    floor = np.maximum(_EPS * _norm(st.x[running]), _TINY)
    st.status[running[(st.radius[running] < floor) & (st.status[running] == _RUNNING)]] = FAILED


def trust_region_newton(loss_and_grad, hessian, W0, gtol, maxiter):
    """Minimise a smooth function from K starts at once by the trust-region Newton method
    above (N&W Alg. 4.1, exact subproblem of section 4.3).

    Parameters
    ----------
    loss_and_grad : callable
        ``W (k, n) -> (L (k,), G (k, n))``, batched (e.g. :meth:`lcnfast.Problem.loss_and_grad`);
        may return inf/NaN where it overflows (those trial points are rejected).
    hessian : callable
        ``W (k, n) -> H (k, n, n)``, symmetric (``eigh`` reads the lower triangle).
    W0 : array_like (K, n)
        Starting points, finite.
    gtol : float >= 0
        Convergence when ``||grad||_2 <= gtol``.
    maxiter : int >= 0
        Iterations per start.

    Returns
    -------
    TrustRegionResult
    """
    W0 = np.array(W0, dtype=np.float64)
    if W0.ndim != 2:
        raise ValueError(f"W0 must have shape (K, n), got {W0.shape}")
    if not np.isfinite(W0).all():
        raise ValueError("W0 contains NaN or Inf")
    f0, g0 = loss_and_grad(W0)
    st = _Starts(W0, np.array(f0, dtype=np.float64), np.array(g0, dtype=np.float64))
    st.status[~(np.isfinite(st.f) & np.isfinite(st.g).all(axis=1))] = FAILED
    st.status[(st.status == _RUNNING) & (_norm(st.g) <= gtol)] = CONVERGED
    st.status[(st.status == _RUNNING) & (maxiter <= 0)] = MAXITER
    act = np.flatnonzero(st.status == _RUNNING)
    while act.size:
        st.update_models(hessian, act)
        act = act[st.status[act] == _RUNNING]
        if act.size:
            _iterate(st, act, loss_and_grad, gtol, maxiter)
        act = act[st.status[act] == _RUNNING]
    return TrustRegionResult(x=st.x, fun=st.f, grad_norm=_norm(st.g), nit=st.nit,
                             status=st.status)
