"""The batched trust-region Newton method (lcnfast.analysis._trust_region) against scipy's
``trust-exact`` (one start at a time: slow, and the reference whose driver it copies): the
exact subproblem (Nocedal & Wright Thm 4.1), strictly convex quadratics, Rosenbrock functions,
lcnfast Problems, the hard case, non-finite trial values and the stopping rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.optimize
from hypothesis import given
from hypothesis import strategies as st

from lcnfast import Architecture, Problem, data, losses
from lcnfast.analysis import _trust_region as tr

EPS = np.finfo(float).eps


def scipy_runs(loss_and_grad, hessian, W0, gtol, maxiter=1000):
    """scipy's trust-exact from each row of W0 on the batched callables: the reference."""
    out = []
    for w0 in W0:
        out.append(scipy.optimize.minimize(
            lambda x: float(loss_and_grad(x[None])[0][0]), w0,
            jac=lambda x: loss_and_grad(x[None])[1][0], hess=lambda x: hessian(x[None])[0],
            method="trust-exact", options={"gtol": gtol, "maxiter": maxiter},
        ))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- subproblem
@st.composite
def subproblems(draw):
    """(lam ascending, gt, radius) for one model of dimension 1-6, the lowest eigenvalue
    sometimes repeated or 0 (a singular Hessian, as along a rescaling orbit); in a quarter of
    them the gradient has no component along it (the hard case where it is < 0)."""
    n = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lam = np.sort(rng.standard_normal(n) * draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6])))
    lowest = draw(st.sampled_from(["simple", "repeated", "zero"]))
    if lowest == "repeated" and n > 1:
        lam[1] = lam[0]
    elif lowest == "zero":
        lam = np.sort(np.r_[0.0, lam[1:]])
    gt = rng.standard_normal(n) * draw(st.sampled_from([1e-6, 1e-3, 1.0, 1e3, 1e6]))
    if draw(st.booleans()) and draw(st.booleans()):
        gt[lam == lam[0]] = 0.0
    radius = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3]))
    return lam, gt, radius


@given(subproblems())
def test_subproblem_steps_are_globally_optimal(sp):
    """Claim: the step solves min m(p) = g.p + p.H.p/2 s.t. ||p|| <= Delta globally: it is
    feasible, and its value exceeds the dual bound ``d(lambda) = -sum gt^2 / (lam + lambda) / 2
    - lambda Delta^2 / 2`` of its multiplier (d(lambda) <= min m for every lambda >= 0 with
    H + lambda I positive semidefinite: weak duality) by no more than floating point explains."""
    lam, gt, radius = sp
    pt, shift, hits = tr.solve_subproblem(lam[None], gt[None], np.array([radius]))
    pt, shift, hits = pt[0], shift[0], bool(hits[0])
    n = lam.size
    pn = np.linalg.norm(pt)
    assert pn <= radius * (1 + 1e-6)  # _SECULAR_RTOL: the boundary is met to 1e-6
    assert hits == (pn >= radius * (1 - 1e-6))
    # the multiplier is >= 0 and makes H + lambda I positive semidefinite (positive definite
    # by about the eigenvalue resolution n eps max|lam| at least where lam_1 <= 0 and g != 0)
    res = n * EPS * np.abs(lam).max()
    assert shift >= 0 and lam[0] + shift >= 0
    model = gt @ pt + 0.5 * np.sum(lam * pt * pt)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(gt == 0, 0.0, gt * gt / (lam + shift))
    dual = -0.5 * terms.sum() - 0.5 * shift * radius**2
    # the gap m(p) - d(lambda) is lambda (Delta^2 - ||p||^2) / 2 for p = p(lambda): allowed
    # are lambda Delta^2 1e-6 either way (the boundary met to _SECULAR_RTOL from inside or
    # outside), res Delta^2 (a flat direction, |lam_1| <= res, gets the minimum-norm step),
    # and rounding: 1e-12 of the terms' magnitudes (they cancel; ~n eps each)
    size = np.abs(gt @ pt) + np.sum(np.abs(lam) * pt * pt) + terms.sum() + shift * radius**2
    slack = 1e-6 * shift * radius**2 + 1e-12 * size
    assert -slack <= model - dual <= slack + res * radius**2


def test_subproblem_hard_case_reaches_the_boundary_along_the_negative_eigenvector():
    """Claim: with g orthogonal to the eigenvector of a negative eigenvalue (H = diag(2, -2),
    g = (2, 0), Delta = 1) the solution is lambda = 2, p = (-1/2, +-sqrt(3)/2): the hard case
    of N&W p. 87-88 (a Newton step would stay on the axis y = 0 and go to the saddle)."""
    pt, shift, hits = tr.solve_subproblem(np.array([[-2.0, 2.0]]), np.array([[0.0, 2.0]]),
                                          np.array([1.0]))
    # the multiplier is -lam_1 plus the resolution 2 eps * 2, which moves p_2 by ~eps
    assert shift[0] == pytest.approx(2.0, abs=1e-14) and hits[0]
    np.testing.assert_allclose(np.abs(pt[0]), [np.sqrt(3) / 2, 0.5], rtol=1e-14)


# ----------------------------------------------------------------------------- quadratics
def quadratic(A, c):
    """f(x) = (x - c).A.(x - c) / 2 as batched callables."""
    def loss_and_grad(W):
        D = W - c
        G = D @ A
        return 0.5 * np.einsum("ki,ki->k", D, G), G

    return loss_and_grad, lambda W: np.broadcast_to(A, (W.shape[0],) + A.shape).copy()


@given(st.integers(1, 8), st.integers(0, 2**32 - 1), st.sampled_from([1.0, 1e2, 1e4]))
def test_strictly_convex_quadratics_reach_the_minimiser_like_trust_exact(n, seed, cond):
    """Claim: from starts up to 100 away, both methods stop with ||g|| <= gtol, so both are
    within gtol / lam_min(A) of the unique minimiser c (||x - c|| <= ||A^-1|| ||g||)."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.geomspace(1.0, cond, n)
    A = (Q * lam) @ Q.T
    A = 0.5 * (A + A.T)
    c = rng.standard_normal(n)
    W0 = c + rng.standard_normal((6, n)) * np.array([0.01, 0.1, 1, 10, 100, 100])[:, None]
    # near c the gradient A (x - c) is computed to ~||A|| eps ||c|| (x holds c only to eps):
    # gtol = 1e-8 ||A|| is far above that (reachable); near it the test would test rounding
    gtol = 1e-8 * cond
    fg, hess = quadratic(A, c)
    res = tr.trust_region_newton(fg, hess, W0, gtol, 1000)
    ref = scipy_runs(fg, hess, W0, gtol)
    assert np.all(res.status == tr.CONVERGED) and all(r.success for r in ref)
    assert np.all(res.grad_norm <= gtol)
    bound = gtol / lam[0] * (1 + 1e-6)  # plus the gradient's relative rounding
    assert np.all(np.linalg.norm(res.x - c, axis=1) <= bound)
    assert np.all(np.linalg.norm(res.x - np.array([r.x for r in ref]), axis=1) <= 2 * bound)


# ----------------------------------------------------------------------------- Rosenbrock
def rosenbrock(W):
    """The n-dimensional Rosenbrock function sum 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2 and its
    gradient, batched."""
    a, b = W[:, :-1], W[:, 1:]
    f = np.sum(100 * (b - a * a) ** 2 + (1 - a) ** 2, axis=1)
    G = np.zeros_like(W)
    G[:, :-1] += -400 * a * (b - a * a) - 2 * (1 - a)
    G[:, 1:] += 200 * (b - a * a)
    return f, G


def rosenbrock_hessian(W):
    K, n = W.shape
    H = np.zeros((K, n, n))
    for i in range(n - 1):
        H[:, i, i] += 1200 * W[:, i] ** 2 - 400 * W[:, i + 1] + 2
        H[:, i, i + 1] -= 400 * W[:, i]
        H[:, i + 1, i] -= 400 * W[:, i]
        H[:, i + 1, i + 1] += 200
    return H


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_rosenbrock_batch_converges_like_trust_exact(n):
    """Claim: from 24 starts in [-2, 2]^n both methods reach ||g|| <= gtol = 1e-6 (nonconvex:
    for n >= 4 some starts end at the second local minimum near (-1, 1, ..., 1), so the points
    are not compared); the same driver constants give about the same number of iterations.
    gtol: at that local minimum (f = 3.9-4.0) a step whose predicted decrease ~||g||^2 / lam
    is below the rounding unit of f stops both methods (scipy: status 2); Newton's last step
    usually lands far below that floor, not always (at gtol = 1e-8 one start of 24 stopped at
    ||g|| = 1.3e-7 for n = 5); 1e-6 is reached from every start (measured)."""
    W0 = np.random.default_rng(n).uniform(-2, 2, (24, n))
    res = tr.trust_region_newton(rosenbrock, rosenbrock_hessian, W0, 1e-6, 1000)
    ref = scipy_runs(rosenbrock, rosenbrock_hessian, W0, 1e-6)
    assert np.all(res.status == tr.CONVERGED) and np.all(res.grad_norm <= 1e-6)
    assert all(r.success for r in ref)
    # measured: totals within 8% of trust-exact's (whose subproblem stops within 10% of the
    # boundary, ours within 1e-6): 20% says "the same method", not "the same rounding"
    assert abs(res.nit.sum() - sum(r.nit for r in ref)) <= 0.2 * sum(r.nit for r in ref)
    # every end is a local minimum: the Hessian there is positive definite
    assert np.all(np.linalg.eigvalsh(rosenbrock_hessian(res.x))[:, 0] > 0)
    # within ||g|| / lam_min(H(1)) <= 1e-6 / 0.399 of (1, ..., 1) for those that went there
    at_one = np.all(np.abs(res.x - 1) < 1e-5, axis=1)
    assert at_one.sum() >= 12  # the global minimum (1, ..., 1) from most starts


# ----------------------------------------------------------------------------- Problems
@pytest.mark.parametrize("k, s, loss", [((2, 3), (2, 1), "square"), ((3, 2, 2), None, "square"),
                                        ((2, 3), None, "pseudo_huber")])
def test_lcnfast_problems_reach_critical_points_like_trust_exact(k, s, loss):
    """Claim: on small LCN losses (the Hessian singular along the rescaling orbits) both methods
    reach ||g|| <= gtol from all 16 starts, and the lowest loss found is the same.
    gtol = 1e-7 L(0): measured reachable by both (at 1e-10 L(0), image_minimum's value, a part
    of the starts of either method stops at the rounding floor of the loss instead)."""
    arch = Architecture(16 if s else 12, k, s)
    td = data.teacher(arch, 15, noise=0.3, seed=2)
    loss_fn = losses.square() if loss == "square" else losses.pseudo_huber(1.0)
    pb = Problem(arch, td.X, td.Y, loss_fn)
    W0 = np.random.default_rng(1).standard_normal((16, arch.n_params))
    gtol = 1e-7 * pb.loss(np.zeros(arch.n_params))
    res = tr.trust_region_newton(pb.loss_and_grad, pb.hessian, W0, gtol, 1000)
    ref = scipy_runs(pb.loss_and_grad, pb.hessian, W0, gtol)
    assert np.all(res.status == tr.CONVERGED) and all(r.success for r in ref)
    # the reported norms are those of the gradients at the returned points
    np.testing.assert_allclose(res.grad_norm, np.linalg.norm(pb.grad(res.x), axis=1), rtol=1e-12)
    assert np.all(res.grad_norm <= gtol)
    # both best values are minima of the same function to ||g|| <= gtol; the best basin is a
    # quadratic well, where the loss is within ~gtol^2 / lam_min of its minimum: 1e-10 relative
    # is far above that and far below the gaps between distinct local minima (measured: >= 1e-3
    # relative here; both best values were equal to the last bit)
    assert res.fun.min() == pytest.approx(min(r.fun for r in ref), rel=1e-10)


def test_a_start_that_overflows_leaves_the_others_bitwise_unchanged():
    """Claim: a start whose loss overflows (w ~ 1e160: v = pi(w) ~ 1e320) fails at once and
    is left where it is; the other starts run exactly as they do without it (the batched
    kernels and eigh treat each row alone)."""
    arch = Architecture(12, (2, 3))
    td = data.teacher(arch, 15, noise=0.3, seed=2)
    pb = Problem(arch, td.X, td.Y, losses.square())
    W0 = np.random.default_rng(3).standard_normal((5, arch.n_params))
    alone = tr.trust_region_newton(pb.loss_and_grad, pb.hessian, W0, 1e-6, 1000)
    W1 = np.insert(W0, 2, 1e160, axis=0)
    with pytest.warns(RuntimeWarning, match="overflowed"):
        res = tr.trust_region_newton(pb.loss_and_grad, pb.hessian, W1, 1e-6, 1000)
    assert res.status[2] == tr.FAILED and res.nit[2] == 0 and np.all(res.x[2] == 1e160)
    keep = np.arange(6) != 2
    np.testing.assert_array_equal(res.x[keep], alone.x)
    np.testing.assert_array_equal(res.nit[keep], alone.nit)
    assert np.all(res.status[keep] == tr.CONVERGED)


# ----------------------------------------------------------------------------- hard case
def saddle(W):
    """f(x, y) = x^2 - y^2 + y^4 / 4: a saddle at 0, minima at (0, +-sqrt 2)."""
    x, y = W[:, 0], W[:, 1]
    return x * x - y * y + y**4 / 4, np.stack([2 * x, -2 * y + y**3], axis=1)


def saddle_hessian(W):
    H = np.zeros((W.shape[0], 2, 2))
    H[:, 0, 0] = 2.0
    H[:, 1, 1] = -2.0 + 3 * W[:, 1] ** 2
    return H


def test_hard_case_leaves_the_saddle_axis():
    """Claim: from (x, 0), g = (2x, 0) is orthogonal to the eigenvector (0, 1) of the negative
    eigenvalue; Newton's step would converge to the saddle (0, 0) along y = 0, the exact
    trust-region step (the hard case) leaves the axis and reaches a minimum (0, +-sqrt 2).
    scipy's trust-exact does too. The starts at the saddle itself (g = 0) stop there with 0
    iterations: ||g|| <= gtol is the only test (scipy's as well). gtol = 1e-6: reachable (at
    f = -1, curvatures 2 and 4, a step from ||g|| below ~4e-8 can predict a decrease below the
    rounding unit of f, which stops both methods: at gtol = 1e-10 two of our starts and one of
    scipy's stopped so)."""
    W0 = np.array([[1.0, 0.0], [5.0, 0.0], [0.1, 0.0], [-3.0, 0.0], [0.0, 0.0]])
    res = tr.trust_region_newton(saddle, saddle_hessian, W0, 1e-6, 1000)
    ref = scipy_runs(saddle, saddle_hessian, W0, 1e-6)
    moved = slice(0, 4)
    # ||g|| <= 1e-6 and the Hessian diag(2, 4) at the minima: within 1e-6 / 2 of them
    np.testing.assert_allclose(np.abs(res.x[moved]), [[0, np.sqrt(2)]] * 4, atol=5e-7)
    np.testing.assert_allclose(np.abs([r.x for r in ref[:4]]), [[0, np.sqrt(2)]] * 4, atol=5e-7)
    assert np.all(res.status == tr.CONVERGED)
    assert res.nit[4] == 0 and np.all(res.x[4] == 0.0) and ref[4].nit == 0


# ----------------------------------------------------------------------------- non-finite values
def barrier(W):
    """f(x) = sum x_i - log x_i, minimised at x = 1; +inf (and NaN gradient) outside x > 0, as
    lcnfast.Problem reports an overflow."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.sum(W - np.log(W), axis=1)
        G = 1 - 1 / W
    bad = ~np.all(W > 0, axis=1)
    f[bad] = np.inf
    G[bad] = np.nan
    return f, G


def barrier_hessian(W):
    return np.stack([np.diag(1 / w**2) for w in W])


def test_non_finite_trial_points_are_rejected():
    """Claim: starting far from x = 1 the radius doubles until a trial step crosses x = 0,
    where the loss is +inf: that step is rejected (rho = -inf, the radius shrinks) and every
    start still converges to 1, to ||g|| = ||1 - 1/x|| <= 1e-6, i.e. |x - 1| <= ~1e-6 (gtol
    reachable: f = 2 there, see the saddle test); the other starts of the batch are not
    disturbed (they converge too). scipy does the same (+inf gives it rho = -inf as well)."""
    calls = []

    def recording(W):
        f, G = barrier(W)
        calls.append(np.count_nonzero(~np.isfinite(f)))
        return f, G

    W0 = np.array([[10.0, 3.0], [50.0, 0.5], [2.0, 200.0], [1.5, 1.2]])
    res = tr.trust_region_newton(recording, barrier_hessian, W0, 1e-6, 1000)
    assert sum(calls) >= 3  # non-finite trial values did occur
    assert np.all(res.status == tr.CONVERGED)
    np.testing.assert_allclose(res.x, 1.0, atol=1.1e-6)
    ref = scipy_runs(barrier, barrier_hessian, W0, 1e-6)
    assert all(r.success for r in ref)
    np.testing.assert_allclose([r.x for r in ref], 1.0, atol=1.1e-6)


def test_a_non_finite_hessian_fails_its_start_only():
    """Claim: a start whose Hessian is not finite (here: NaN wherever x_0 > 5) cannot build a
    model and fails where it is (here its start: 0 iterations); the others converge."""
    fg, hess = quadratic(np.diag([1.0, 2.0]), np.zeros(2))

    def nan_hessian(W):
        H = hess(W)
        H[W[:, 0] > 5] = np.nan
        return H

    W0 = np.array([[6.0, 0.0], [1.0, 1.0], [-3.0, 2.0]])
    res = tr.trust_region_newton(fg, nan_hessian, W0, 1e-10, 1000)
    assert res.status[0] == tr.FAILED and res.nit[0] == 0 and np.all(res.x[0] == W0[0])
    assert np.all(res.status[1:] == tr.CONVERGED)


# ----------------------------------------------------------------------------- stopping rules
def test_a_start_converged_at_w0_takes_no_iteration_and_no_hessian():
    """Claim: ||g(W0)|| <= gtol stops a start before any step (scipy: nit = 0), and no
    Hessian is evaluated for it; the other starts of the batch run as usual."""
    A = np.diag([1.0, 4.0])
    c = np.array([1.0, -2.0])
    fg, hess = quadratic(A, c)
    rows = []

    def counting_hessian(W):
        rows.append(W.copy())
        return hess(W)

    W0 = np.array([c, c + 1e-12, c + 3.0])  # ||g|| = 0, ~4e-12 and ~13
    res = tr.trust_region_newton(fg, counting_hessian, W0, 1e-9, 1000)
    np.testing.assert_array_equal(res.nit[:2], 0)
    np.testing.assert_array_equal(res.x[:2], W0[:2])
    assert np.all(res.status == tr.CONVERGED) and res.nit[2] > 0
    assert [len(r) for r in rows] == [1] * len(rows) and np.all(rows[0] == W0[2])


def test_maxiter_counts_rejected_steps_like_scipy():
    """Claim: maxiter stops a start after that many iterations (accepted or rejected), the
    status says MAXITER, and trust-exact counts the same (its nit)."""
    W0 = np.random.default_rng(0).uniform(-2, 2, (6, 3))
    res = tr.trust_region_newton(rosenbrock, rosenbrock_hessian, W0, 1e-8, 3)
    ref = scipy_runs(rosenbrock, rosenbrock_hessian, W0, 1e-8, maxiter=3)
    assert np.all(res.status == tr.MAXITER) and np.all(res.nit == 3)
    assert all(r.status == 1 and r.nit == 3 for r in ref)


def test_a_model_decrease_below_the_rounding_of_the_loss_stops_like_scipy():
    """Claim: f(x) = 1 + x^2 / 2 at x = 1e-9 with gtol = 0: the Newton step would decrease f by
    5e-19, below the rounding unit of f(x) = 1, so the ratio test cannot be evaluated; the start
    stops (FAILED) where it is, without an iteration, as trust-exact stops (status 2, 'A bad
    approximation caused failure to predict improvement')."""
    fg, hess = quadratic(np.eye(1), np.zeros(1))

    def shifted(W):
        f, G = fg(W)
        return f + 1.0, G

    W0 = np.array([[1e-9]])
    res = tr.trust_region_newton(shifted, hess, W0, 0.0, 1000)
    ref = scipy_runs(shifted, hess, W0, 0.0)[0]
    assert res.status[0] == tr.FAILED and res.nit[0] == 0 and res.x[0, 0] == 1e-9
    assert ref.status == 2 and ref.nit == 0


def test_radius_floor_stops_a_start_whose_loss_never_changes():
    """Claim: a loss that is exactly 0 everywhere with a (wrong) gradient 1 predicts a decrease
    at every step and never gets it (rho = 0): the radius shrinks by 4 per iteration from 1
    until it is below eps ||x|| (x = (1, 1): eps sqrt 2 = 3.1e-16), i.e. after 26 iterations
    (4^-26 = 2.2e-16, 4^-25 = 8.9e-16), and the start fails where it is."""
    def flat(W):
        return np.zeros(W.shape[0]), np.ones_like(W)

    res = tr.trust_region_newton(flat, lambda W: np.zeros((W.shape[0], 2, 2)),
                                 np.ones((1, 2)), 1e-8, 1000)
    assert res.status[0] == tr.FAILED and res.nit[0] == 26 and np.all(res.x == 1.0)


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="shape"):
        tr.trust_region_newton(rosenbrock, rosenbrock_hessian, np.ones(3), 1e-8, 10)
    with pytest.raises(ValueError, match="NaN"):
        tr.trust_region_newton(rosenbrock, rosenbrock_hessian, np.full((2, 3), np.nan), 1e-8, 10)


def test_image_minimum_runs_every_start_through_one_batched_call(monkeypatch):
    """image_minimum's Newton case hands all its starts to one trust_region_newton call (the
    point of the batching); lp with p < 2 keeps scipy's BFGS per start."""
    from lcnfast.analysis import function_space

    calls = []
    solver = tr.trust_region_newton
    monkeypatch.setattr(tr, "trust_region_newton",
                        lambda fg, h, W0, *a: calls.append(len(W0)) or solver(fg, h, W0, *a))
    arch = Architecture(10, (2, 3))
    td = data.teacher(arch, 12, noise=0.3, seed=1)
    function_space._image_minimum(Problem(arch, td.X, td.Y, losses.square()), 8, 0, 1e-6, 1000)
    assert calls == [8]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # lp(1.5) is not analytic: a notice
        pb = Problem(arch, td.X, td.Y, losses.lp(1.5))
    function_space._image_minimum(pb, 4, 0, 1e-6, 200)
    assert calls == [8]
