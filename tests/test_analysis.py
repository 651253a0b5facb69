"""Tests of lcnfast.analysis (limit-point classification) and lcnfast.roots (issue 4).

Known answers are constructed from the mathematics (global minima by factoring the convex
minimiser's polynomial, critical points with zero filters whose Hessian is known in closed
form, teacher points of strided architectures), Hessians are checked against finite
differences, and roots against polynomials built from known roots.

The flow engine is not used: ``fake_flow_dataset`` builds a Dataset with the lcnfast.flows
schema around limit points found by BFGS + Newton polishing.
"""

from __future__ import annotations

import json
import warnings

import naive
import numba
import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import xarray as xr
from hypothesis import assume, example, given
from hypothesis import strategies as st

from lcnfast import Architecture, Problem, analysis, data, losses, roots

MIN, SADDLE, DEGEN, NOTCRIT, NONFIN = range(5)


# ----------------------------------------------------------------------------- helpers
def newton_polish(problem, w, iters=40, gtol=1e-12):
    """Newton steps with a pseudo-inverse (the Hessian is singular along the symmetry orbit):
    quadratic convergence to a non-degenerate (modulo symmetry) critical point."""
    w = np.array(w, dtype=float)
    for _ in range(iters):
        g = problem.grad(w)
        if np.linalg.norm(g) < gtol:
            break
        w = w - np.linalg.lstsq(problem.hessian(w), g, rcond=1e-9)[0]
    return w


def local_minima(problem, W0):
    """Limit points of descent from each row of W0: BFGS, then Newton polishing."""
    out = []
    for w0 in W0:
        r = scipy.optimize.minimize(
            problem.loss, w0, jac=problem.grad, method="BFGS", options={"gtol": 1e-7}
        )
        out.append(newton_polish(problem, r.x))
    return np.array(out)


def factor_stride1(v, k):
    """Filters of widths k (all odd, stride 1) whose layer polynomials multiply to p(v):
    complex-conjugate root pairs and real roots are dealt out to the layers, then the layers
    are rescaled to equal norms (product unchanged)."""
    v = np.asarray(v, dtype=float)
    r = np.roots(v[::-1])
    pairs = [z for z in r if z.imag > 1e-9]
    real = [z.real for z in r if abs(z.imag) <= 1e-9]
    need = [ki - 1 for ki in k]
    groups = [[] for _ in k]
    for z in pairs:
        i = next(i for i in range(len(k)) if need[i] >= 2)
        groups[i] += [z, np.conj(z)]
        need[i] -= 2
    for x in real:
        i = next(i for i in range(len(k)) if need[i] >= 1)
        groups[i].append(x)
        need[i] -= 1
    filt = [np.real(np.poly(g))[::-1] if g else np.ones(1) for g in groups]
    filt[0] = filt[0] * v[-1]
    norms = [np.linalg.norm(f) for f in filt]
    gm = np.prod(norms) ** (1.0 / len(k))
    return np.concatenate([f * gm / nf for f, nf in zip(filt, norms)])


def fake_flow_dataset(problem, W0, Wf, *, max_loss_increase=None, status=None):
    """A Dataset with the lcnfast.flows schema (flow, param MultiIndex, time, v_tap, pair)
    around given initial and final points (the "flow" is the two saved states)."""
    arch = problem.arch
    W0 = np.asarray(W0, float)
    Wf = np.asarray(Wf, float)
    K, n = Wf.shape
    layer = np.concatenate([np.full(ki, i + 1) for i, ki in enumerate(arch.k)])
    tap = np.concatenate([np.arange(ki) for ki in arch.k])
    mi = pd.MultiIndex.from_arrays([layer, tap], names=["layer", "tap"])
    coords = xr.Coordinates.from_pandas_multiindex(mi, "param")
    coords = coords.assign(
        flow=np.arange(K), time=[0.0, 1.0], v_tap=np.arange(arch.k_v), pair=np.arange(1, arch.depth)
    )
    fin = np.all(np.isfinite(Wf), axis=1)

    def per(f, W, shape=()):
        out = np.full((K,) + shape, np.nan)
        if fin.any():
            out[fin] = f(W[fin])
        return out

    L0, Lf = problem.loss(W0), per(problem.loss, Wf)
    g0 = np.linalg.norm(problem.grad(W0), axis=1)
    gf = per(lambda W: np.linalg.norm(problem.grad(W), axis=1), Wf)
    V0 = problem.final_filter(W0)
    Vf = per(problem.final_filter, Wf, (arch.k_v,))
    sq = lambda W: np.stack(  # noqa: E731
        [np.sum(W[:, arch.layer_slice(i)] ** 2, 1) for i in range(arch.depth)], 1
    )
    F, P, T, V, R = "flow", "param", "time", "v_tap", "pair"
    ds = xr.Dataset(
        {
            "w_init": ((F, P), W0),
            "w_final": ((F, P), Wf),
            "v_final": ((F, V), Vf),
            "loss_init": (F, L0),
            "loss_final": (F, Lf),
            "grad_norm_final": (F, gf),
            "t_final": (F, np.linspace(1.0, 2.0, K)),
            "status": (F, np.zeros(K, np.int8) if status is None else np.asarray(status, np.int8)),
            "n_accepted": (F, np.full(K, 10)),
            "n_rejected": (F, np.zeros(K, int)),
            "n_grad_evals": (F, np.full(K, 60)),
            "delta_init": ((F, R), np.diff(sq(W0), axis=1)),
            "delta_final": ((F, R), np.diff(sq(Wf), axis=1)),
            "max_loss_increase": (
                F,
                np.full(K, -1e-3) if max_loss_increase is None else max_loss_increase,
            ),
            "v_l1_max": (F, np.maximum(np.abs(V0).sum(1), np.abs(Vf).sum(1))),
            "w": ((F, T, P), np.stack([W0, Wf], axis=1)),
            "loss": ((F, T), np.stack([L0, Lf], axis=1)),
            "grad_norm": ((F, T), np.stack([g0, gf], axis=1)),
        },
        coords=coords,
        attrs={
            "architecture": json.dumps(arch.to_dict()),
            "loss": json.dumps({"name": problem.loss_fn.name, **problem.loss_fn.param_dict}),
        },
    )
    ds["status"].attrs.update(
        flag_values=np.arange(5, dtype=np.int8),
        flag_meanings="converged reached_end max_steps step_underflow non_finite",
    )
    return ds


def two_layer_block(G, q, ki, kj, Si, Sj):
    """C_ab = sum_m G_m q[m - a S_i - b S_j]: the Hessian block between two zero layers."""
    C = np.zeros((ki, kj))
    for a in range(ki):
        for b in range(kj):
            sh = a * Si + b * Sj
            C[a, b] = sum(G[m + sh] * q[m] for m in range(len(q)))
    return C


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tests make many small calls (scipy loops, single points): with one Numba thread
    they avoid waking a thread team per call, which costs ~0.5 ms on a loaded machine. The
    kernels' independence of the thread count is tested with the core."""
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(old)


@pytest.fixture(scope="module")
def deep():
    """Filling stride-1 architecture with spurious local minima (k = (3, 3, 3))."""
    arch = Architecture(12, (3, 3, 3))
    td = data.teacher(arch, 20, noise=0.3, seed=1)
    return Problem(arch, td.X, td.Y, losses.square())


@pytest.fixture(scope="module")
def deep_minima(deep):
    W0 = 0.7 * np.random.default_rng(5).standard_normal((8, deep.arch.n_params))
    return W0, local_minima(deep, W0)


@pytest.fixture(scope="module")
def shallow():
    arch = Architecture(10, (3, 3))
    td = data.teacher(arch, 15, noise=0.5, seed=3)
    return td, Problem(arch, td.X, td.Y, losses.square())


@pytest.fixture(scope="module")
def strided():
    arch = Architecture(16, (2, 3), (2, 1))  # k_v = 6, s_v = 2, d_N = 6; not filling
    td = data.teacher(arch, 10, noise=0.0, seed=4)
    return td, Problem(arch, td.X, td.Y, losses.square())


# ----------------------------------------------------------------------------- known answers
def test_global_minimum_of_filling_architecture_square_loss(shallow):
    td, pb = shallow
    assert pb.arch.filling
    v_star = np.linalg.solve(pb.A, pb.b)
    w = factor_stride1(v_star, pb.arch.k)
    np.testing.assert_allclose(pb.final_filter(w), v_star, rtol=1e-10, atol=1e-12)
    w = newton_polish(pb, w)
    out = analysis.classify_points(pb, w)
    assert out.label.item() == MIN
    assert out.is_global.item() and out.attains_convex_min.item()
    assert abs(out.loss_gap.item()) <= 1e-10 * pb.function_space_loss(np.zeros(pb.arch.k_v))
    assert out.loss_convex_min.item() == pytest.approx(pb.function_space_loss(v_star), rel=1e-12)
    np.testing.assert_allclose(out.v_convex_min.values, v_star, rtol=1e-9)
    assert out.sizes["flow"] == 1  # a single vector is a batch of one
    n = pb.arch.n_params
    assert out.n_sym_dirs.item() == 1 and out.n_pos_eig.item() == n - 1
    assert out.n_neg_eig.item() == 0 and out.n_zero_eig.item() == 0
    assert not out.has_common_root.item() and out.jac_rank.item() == pb.arch.k_v
    assert out.prop51_ok.item() and out.prop51_ok_jac.item()


def test_global_minimum_convex_solver_pseudo_huber(shallow):
    td, _ = shallow
    pb = Problem(Architecture(10, (3, 3)), td.X, td.Y, losses.pseudo_huber(0.5))
    out0 = analysis.classify_points(pb, np.ones(pb.arch.n_params))
    v_star = out0.v_convex_min.values
    # first-order condition of the convex problem, and an independent minimiser
    _, G = pb.function_space_grad(v_star)
    assert np.linalg.norm(G) <= 1e-8
    ref = scipy.optimize.minimize(
        lambda v: naive.function_space_risk("pseudo_huber", (0.5,), v, td.X, td.Y, 1),
        np.zeros(pb.arch.k_v),
        method="BFGS",
        options={"gtol": 1e-10},
    )
    assert out0.loss_convex_min.item() <= ref.fun + 1e-9
    np.testing.assert_allclose(v_star, ref.x, atol=1e-5)
    w = newton_polish(pb, factor_stride1(v_star, pb.arch.k))
    out = analysis.classify_points(pb, w)
    assert out.label.item() == MIN and out.is_global.item()
    assert out0.label.item() == NOTCRIT and not out0.is_global.item()


def test_two_zero_filters_are_a_strict_saddle(deep):
    """Layers 1, 2 zero: grad = 0 and H = [[0, C], [C^T, 0]] on layers (1, 2): eigenvalues
    +-sigma(C), plus the zero block of layer 3 less its symmetry direction."""
    arch = deep.arch
    w3 = np.array([0.7, -1.2, 0.4])
    w = np.concatenate([np.zeros(6), w3])
    out = analysis.classify_points(deep, w)
    assert out.limit_grad_norm.item() == 0.0 and out.is_critical.item()
    assert out.label.item() == SADDLE
    assert out.n_zero_filters.item() == 2 and out.n_sym_dirs.item() == 1
    _, G = deep.function_space_grad(np.zeros(arch.k_v))
    sig = np.linalg.svd(two_layer_block(G, w3, 3, 3, 1, 1), compute_uv=False)
    want = np.sort(np.concatenate([-sig, sig, [0.0, 0.0]]))
    got = out.hess_eig.values[0, : arch.n_params - 1]
    np.testing.assert_allclose(got, want, atol=1e-10 * sig.max())
    assert np.isnan(out.hess_eig.values[0, -1])
    assert out.n_neg_eig.item() == 3 and out.hess_min_eig.item() == pytest.approx(-sig.max())
    # everything vanishes on the zero polynomial: common roots, rank-deficient Jacobian
    assert out.has_common_root.item() and out.jac_deficient.item()
    assert np.all(np.isnan(out.root_real.values[0, :4]))


@pytest.mark.parametrize("spec", [((8, (3, 3), (1, 1))), ((16, (2, 3), (2, 1)))])
def test_zero_network_of_depth_two_is_a_strict_saddle(spec):
    arch = Architecture(*spec)
    td = data.teacher(arch, 6, noise=0.2, seed=7)
    pb = Problem(arch, td.X, td.Y, losses.square())
    out = analysis.classify_points(pb, np.zeros(arch.n_params))
    _, G = pb.function_space_grad(np.zeros(arch.k_v))
    C = two_layer_block(G, [1.0], arch.k[0], arch.k[1], *arch.dilations)
    sig = np.linalg.svd(C, compute_uv=False)
    assert out.label.item() == SADDLE and out.n_sym_dirs.item() == 0
    np.testing.assert_allclose(
        out.hess_eig.values[0],
        np.sort(np.concatenate([-sig, sig, np.zeros(arch.n_params - 2 * sig.size)])),
        atol=1e-10 * sig.max(),
    )


def test_three_zero_filters_and_optimal_zero_network_are_degenerate(deep):
    n = deep.arch.n_params
    out = analysis.classify_points(deep, np.zeros(n))  # H = 0: L changes only at third order
    assert out.label.item() == DEGEN and out.n_zero_eig.item() == n and out.n_sym_dirs.item() == 0
    assert np.all(out.hess_eig.values == 0.0)
    # two zero filters but Y = 0: G = dL/dv(0) = 0 makes C = 0; the zero network is optimal
    pb0 = Problem(deep.arch, deep.X, np.zeros_like(deep.Y), losses.square())
    w = np.concatenate([np.zeros(6), [0.7, -1.2, 0.4]])
    out = analysis.classify_points(pb0, w)
    assert out.label.item() == DEGEN and out.is_global.item()


def test_non_critical_point(deep):
    w = np.random.default_rng(0).standard_normal(deep.arch.n_params)
    out = analysis.classify_points(deep, w)
    assert out.label.item() == NOTCRIT and not out.is_critical.item()
    assert out.limit_grad_norm.item() == pytest.approx(np.linalg.norm(deep.grad(w)), rel=1e-14)
    assert out.limit_loss.item() == pytest.approx(deep.loss(w), rel=1e-14)
    assert out.loss_gap.item() > 0 and not out.is_global.item()
    # a tolerance above the gradient norm makes it "critical" (and the Hessian decides)
    out2 = analysis.classify_points(deep, w, grad_tol=2 * out.limit_grad_norm.item())
    assert out2.is_critical.item() and out2.label.item() != NOTCRIT


def test_strided_teacher_is_a_global_minimum(strided):
    td, pb = strided
    assert pb.arch.filling is not True
    out = analysis.classify_points(pb, td.w_teacher)
    # limit_loss is summed from the data's residuals: rounding relative to the residuals of a
    # noiseless teacher (~eps |Y|), squared, far below this bound
    assert 0 <= out.limit_loss.item() <= 1e-13 * np.sum(td.Y**2)
    assert out.label.item() == MIN
    assert out.attains_convex_min.item() and out.reached_best.item()
    assert "prop51_ok" not in out  # strided
    # not filling: is_global compares with the computed minimum over the image of pi
    assert out.is_global.item() == 1.0 and out.is_global.attrs["global_reference"] == "image_min"
    meta = json.loads(out.attrs["analysis"])
    assert meta["global_reference"] == "image_min" and not meta["prop51_applicable"]
    assert out.jac_rank.item() == pb.arch.function_space_dim and not out.jac_deficient.item()


# ----------------------------------------------------------------------------- Hessian checks
def test_hessian_classification_agrees_with_finite_differences(deep, deep_minima, strided):
    _, Wm = deep_minima
    rng = np.random.default_rng(11)
    pts = [
        Wm[0],
        Wm[1],
        np.concatenate([np.zeros(6), [0.7, -1.2, 0.4]]),
        rng.standard_normal(deep.arch.n_params),
    ]
    for pb, W in ((deep, np.array(pts)), (strided[1], strided[0].w_teacher[None, :])):
        H_fd = np.array([naive.fd_hessian_of_grad(pb.grad, w, rel=1e-5) for w in W])
        H_fd = 0.5 * (H_fd + np.swapaxes(H_fd, 1, 2))
        a = analysis.classify_points(pb, W)
        b = analysis.classify_points(pb, W, hessians=H_fd)
        np.testing.assert_array_equal(a.label.values, b.label.values)
        scale = a.hess_scale.values[:, None]
        diff = np.abs(a.hess_eig.values - b.hess_eig.values) / scale
        assert np.nanmax(diff) <= 1e-6
        np.testing.assert_array_equal(np.isnan(a.hess_eig.values), np.isnan(b.hess_eig.values))


def test_symmetry_directions_are_null_at_critical_points(deep, deep_minima):
    _, Wm = deep_minima
    out = analysis.classify_points(deep, Wm)
    assert np.all(out.limit_grad_norm.values <= 1e-11)
    assert np.all(out.sym_null_residual.values <= 1e-9 * out.hess_scale.values)
    # the full Hessian has exactly N - 1 more near-zero eigenvalues than the projected one
    H = deep.hessian(Wm)
    ev = np.linalg.eigvalsh(H)
    tol = 1e-6 * np.abs(ev).max(axis=1, keepdims=True)
    n_full_zero = np.sum(np.abs(ev) <= tol, axis=1)
    np.testing.assert_array_equal(n_full_zero, out.n_zero_eig.values + deep.arch.depth - 1)


def test_symmetry_identity_away_from_critical_points(deep):
    """H(w) (D_a w) = -D_a grad L(w) for sum(a) = 0 (derivative of the rescaling invariance):
    the identity behind the projection, at arbitrary (non-critical) w."""
    arch = deep.arch
    rng = np.random.default_rng(2)
    w = rng.standard_normal(arch.n_params)
    a = np.array([0.3, -1.0, 0.7])
    Da = np.concatenate([np.full(ki, ai) for ki, ai in zip(arch.k, a)])
    lhs = deep.hessian(w) @ (Da * w)
    np.testing.assert_allclose(lhs, -Da * deep.grad(w), rtol=1e-10, atol=1e-10 * np.abs(lhs).max())


@pytest.mark.parametrize("zero_layers", [(), (1,), (0, 2), (0, 1, 2)])
def test_symmetry_basis(deep, zero_layers):
    arch = deep.arch
    w = np.random.default_rng(3).standard_normal(arch.n_params)
    for i in zero_layers:
        w[arch.layer_slice(i)] = 0.0
    T, rank = analysis.symmetry_directions(arch, w)
    r = rank[0]
    assert r == (arch.depth - 1 if not zero_layers else arch.depth - len(zero_layers))
    Tr = T[0][:, :r]
    np.testing.assert_allclose(Tr.T @ Tr, np.eye(r), atol=1e-13)
    assert np.all(T[0][:, r:] == 0)
    # each direction is (a_1 w^(1), ..., a_N w^(N)) with sum a_i = 0 (no zero filters)
    for t in Tr.T:
        coef = []
        for i in range(arch.depth):
            wi, ti = w[arch.layer_slice(i)], t[arch.layer_slice(i)]
            if i in zero_layers:
                assert np.all(ti == 0)
                continue
            ai = wi @ ti / (wi @ wi)
            np.testing.assert_allclose(ti, ai * wi, atol=1e-13)
            coef.append(ai)
        if not zero_layers:
            assert abs(sum(coef)) <= 1e-12


def test_tiny_filter_next_to_huge_one_counts_as_zero_consistently(deep):
    """Norms (1e-7, 1, 1e6): layer 1 is zero relative to the largest filter (zero_filter_tol
    1e-12); balancing must not change that verdict (it rescales the reference norm)."""
    w = np.random.default_rng(4).standard_normal(deep.arch.n_params)
    for i, c in enumerate((1e-7, 1.0, 1e6)):
        sl = deep.arch.layer_slice(i)
        w[sl] *= c / np.linalg.norm(w[sl])
    out = analysis.classify_points(deep, w)
    assert out.n_zero_filters.item() == 1 and out.n_sym_dirs.item() == 2
    assert np.sum(~np.isnan(out.hess_eig_balanced.values)) == deep.arch.n_params - 2
    assert np.all(np.isnan(out.root_real.values[0, :2]))  # layer 1's slots: zero polynomial


def test_unbalanced_points_are_handled_like_balanced_ones(deep, deep_minima):
    """Rescaling a limit point along its orbit changes neither the label nor the projected
    spectrum's signs, nor the Jacobian rank (computed at normalised filters)."""
    _, Wm = deep_minima
    w = Wm[0]
    c = np.array([30.0, 1 / 5.0, 1 / 6.0])
    Dc = np.concatenate([np.full(ki, ci) for ki, ci in zip(deep.arch.k, c)])
    a = analysis.classify_points(deep, w)
    b = analysis.classify_points(deep, Dc * w)
    assert a.label.item() == b.label.item() == MIN
    assert a.jac_rank.item() == b.jac_rank.item()
    np.testing.assert_allclose(a.jac_sv.values, b.jac_sv.values, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(a.limit_v.values, b.limit_v.values, rtol=1e-12)


# ----------------------------------------------------------------------------- roots
def _poly(rts, lead=1.0):
    """Ascending real coefficients of lead * prod (x - r)."""
    return lead * np.real(np.poly(rts))[::-1]


def _match(got, want, tol):
    """Every wanted root is matched (greedily) by a distinct computed one within tol."""
    got = list(got)
    for z in want:
        d = [abs(z - g) if np.isfinite(g) else (0.0 if np.isinf(z) else np.inf) for g in got]
        j = int(np.argmin(d))
        assert d[j] <= tol, (z, got)
        got.pop(j)


def test_roots_with_known_multiplicities_and_conjugate_pairs():
    want = [1.0, 1.0, -2.0, -1 + 2j, -1 - 2j]
    z = roots.poly_roots(_poly(want, 3.0))
    _match(z, want, 1e-7)
    mult, centre = roots.root_clusters(z, 1e-5)
    order = np.argsort([abs(c - 1) for c in centre])
    assert sorted(mult.tolist()) == [1, 1, 1, 2, 2]
    np.testing.assert_allclose(centre[order[:2]], [1.0, 1.0], atol=1e-12)
    cplx = z[np.abs(z.imag) > 1e-6]
    np.testing.assert_allclose(np.sort(cplx.imag), [-2.0, 2.0], atol=1e-12)
    np.testing.assert_allclose(cplx.real, [-1.0, -1.0], atol=1e-12)


def test_triple_root_is_one_cluster_at_the_default_tolerance():
    want = [0.5, 0.5, 0.5, -1.0]
    z = roots.poly_roots(_poly(want))
    assert np.max(np.abs(z - 0.5)[:3]) > 1e-7  # computed copies do split (eps^(1/3))
    mult, centre = roots.root_clusters(z, analysis.DEFAULTS["root_tol"])
    assert sorted(mult.tolist()) == [1, 3, 3, 3]
    np.testing.assert_allclose(centre[mult == 3], 0.5, atol=1e-12)


def test_roots_at_infinity_zero_and_zero_polynomial():
    z = roots.poly_roots([1.0, -3.0, 0.0, 0.0])  # 1 - 3x, formal degree 3
    assert z[0] == pytest.approx(1 / 3) and np.all(np.isinf(z[1:].real))
    z = roots.poly_roots([0.0, 0.0, 2.0, 1.0])  # x^2 (x + 2): exact zeros
    np.testing.assert_array_equal(np.sort_complex(z)[1:], [0, 0])
    assert np.all(np.isnan(roots.poly_roots([0.0, 0.0, 0.0]).real))
    z = roots.poly_roots([[1.0, -3.0, 0.0], [2.0, 0.0, 1e-20 * 0]])
    assert z.shape == (2, 2) and np.isinf(z[1]).all()


def test_dilated_layer_roots():
    arch = Architecture(16, (2, 3), (2, 1))  # layer 2 has dilation S = 2: w0 + w1 x^2 + w2 x^4
    w = np.array([1.0, -2.0, -4.0, 0.0, 1.0])  # (1 - 2x)(x^4 - 4)
    z, layer, zero = roots.layer_roots(arch, w)
    np.testing.assert_array_equal(layer, [1, 2, 2, 2, 2])
    assert not zero.any()
    assert z[0] == pytest.approx(0.5)
    s = np.sqrt(2)
    _match(z[1:], [s, -s, 1j * s, -1j * s], 1e-12)
    # leading coefficient zero in the dilated layer: two roots at infinity
    z, _, _ = roots.layer_roots(arch, np.array([1.0, -2.0, -4.0, 1.0, 0.0]))
    assert np.sum(np.isinf(z.real)) == 2


@given(
    st.lists(
        st.tuples(st.floats(-3, 3), st.floats(0.05, 3), st.integers(1, 2)), min_size=0, max_size=2
    ),
    st.lists(st.tuples(st.floats(-3, 3), st.integers(1, 3)), min_size=1, max_size=3),
)
# a triple root next to a double pair: 1.67e-3 off (QZ on the pencil, rho = 8187)
@example(pairs=[(0.0, 1.0, 1), (3.0, 0.5, 2)], reals=[(3.0, 3)])
# triple roots at 3 next to a double pair: 1.5e-2 off, within 4 of this test's bound
@example(pairs=[(3.0, 0.6211297419012983, 2), (2.0914364933817433, 0.4164452587670286, 1)],
         reals=[(1.4377749537830962, 3), (3.0, 3), (0.0, 1)])
def test_roots_recovered_from_random_factorisations(pairs, reals):
    """Polynomials built from known (real and conjugate-pair) roots with multiplicities."""
    want = []
    for re, im, mu in pairs:
        want += [complex(re, im), complex(re, -im)] * mu
    for x, mu in reals:
        want += [x] * mu
    # distinct roots well apart and multiplicities <= 3, so that the clusters are well defined
    base = sorted({complex(r) for r in want}, key=lambda c: (c.real, c.imag))
    d = [abs(a - b) for i, a in enumerate(base) for b in base[i + 1 :]]
    assume(not d or min(d) >= 0.5)
    assume(all(sum(1 for x in want if complex(x) == b) <= 3 for b in base))
    _check_factorisation(want, base)


def _root_error_bound(want, b):
    """First-order error of the computed roots of prod (x - want) near its mu-fold root b.

    np.poly's coefficients (rounded, error ~ n eps times those of prod (x + |r|), c_hat) and
    a backward-stable solver (QZ or the balanced companion matrix: error ~ n eps ||c||) both
    perturb p by dp with |dp(b)| <~ n eps max|c_hat| sum_i |b|^i. A mu-fold root then moves
    by |dp(b) / q(b)|^(1/mu), q = p / (x - b)^mu (each of its mu copies, on a circle)."""
    n = len(want)
    mu = sum(1 for x in want if complex(x) == b)
    c_hat = np.real(np.poly([-abs(complex(r)) for r in want]))
    dp = n * np.finfo(float).eps * np.abs(c_hat).max() * sum(abs(b) ** i for i in range(n + 1))
    q = abs(np.prod([b - complex(x) for x in want if complex(x) != b]))
    return mu, (dp / q) ** (1.0 / mu)


def _check_factorisation(want, base):
    """poly_roots and root_clusters on prod (x - want), ``base`` its distinct roots.

    The bounds are condition-based (a fixed tolerance either failed on triple roots next to
    others, 2.7e-2 was seen, or said nothing about simple ones, ~1e-15): each computed root
    within 4 first-order bounds of its true root (:func:`_root_error_bound`; measured up to
    0.94 of one bound over 260,000 random clusters, 2026-12-07); the clusters found with a
    chordal tolerance of 4 such spreads, 1e-9 at least, are the true ones; a cluster's mean
    cancels the spread to first order, and its error, ~|dp(b) / q(b)| sum_j 1 / |b - r_j|
    (the next order of the perturbation), is within 4 of that."""
    z = roots.poly_roots(_poly(want))
    bounds = {b: _root_error_bound(want, b) for b in base}
    got = list(z)
    for b in base:
        mu, rad = bounds[b]
        for _ in range(mu):
            j = int(np.argmin([abs(g - b) for g in got]))
            assert abs(got[j] - b) <= 4 * rad, (b, mu, rad, z)
            got.pop(j)
    # chordal spread of a cluster <= its absolute diameter 2 rad / (1 + |b|^2)
    tol = max(1e-9, 4 * max(2 * rad / (1 + abs(b) ** 2) for b, (_, rad) in bounds.items()))
    sep = [roots.chordal_distance(a, b) for i, a in enumerate(base) for b in base[i + 1 :]]
    assume(not sep or tol < 0.5 * min(sep))
    mult, centre = roots.root_clusters(z, tol)
    for c, mu in zip(centre, mult):
        truth = min(base, key=lambda b: abs(b - c))
        assert mu == bounds[truth][0], (truth, c, mu, z)
        mu_t, rad = bounds[truth]
        near = sum(1 / abs(truth - b) for b in base if b != truth)
        lim = 4 * rad if mu_t == 1 else 4 * rad**mu_t * max(1.0, near)
        assert abs(c - truth) <= lim, (truth, c, lim)


def test_chordal_distance():
    d = roots.chordal_distance
    assert d(np.inf, np.inf) == 0 and d(0, np.inf) == 1.0
    assert d(1e12, np.inf) == pytest.approx(1e-12)
    assert d(1j, -1j) == pytest.approx(1.0)
    z = np.array([0.3 + 1j, -2.0, 5.0 - 0.5j])
    np.testing.assert_allclose(d(z[:, None], z[None, :]), d(z[None, :], z[:, None]))


def test_common_roots_and_the_jacobian_rank():
    """Stride 1: J of pi has rank k_v iff no two layer polynomials share a root (incl. inf)."""
    arch = Architecture(8, (3, 3))
    td = data.teacher(arch, 4, noise=0.1, seed=0)
    pb = Problem(arch, td.X, td.Y, losses.square())
    cases = {
        "shared finite root": (np.r_[_poly([1.0, 2.0]), _poly([2.0, -3.0])], True),
        "distinct roots": (np.r_[_poly([1.0, 2.0]), _poly([-1.0, -3.0])], False),
        "shared root at infinity": (np.r_[[1.0, 1.0, 0.0], [2.0, -1.0, 0.0]], True),
        "one root at infinity": (np.r_[[1.0, 1.0, 0.0], _poly([2.0, -3.0])], False),
        "shared complex pair": (np.r_[_poly([1j, -1j]), _poly([1j, -1j])], True),
    }
    W = np.array([w for w, _ in cases.values()])
    out = analysis.classify_points(pb, W)
    want = np.array([c for _, c in cases.values()])
    np.testing.assert_array_equal(out.has_common_root.values, want)
    np.testing.assert_array_equal(out.jac_deficient.values, want)
    # the rank drops by the degree of the common factor (the Sylvester matrix of p1, p2)
    np.testing.assert_array_equal(out.jac_rank.values, arch.k_v - np.array([1, 0, 1, 0, 2]))
    assert out.min_root_distance.values[0] <= 1e-14
    # slots (sorted per layer: 1, 2 | -3, 2): the shared root 2 is flagged in both layers
    np.testing.assert_allclose(out.root_real.values[0], [1.0, 2.0, -3.0, 2.0], rtol=1e-12)
    np.testing.assert_array_equal(out.root_shared.values[0], [False, True, False, True])
    np.testing.assert_array_equal(out.root_layer.values, [1, 1, 2, 2])
    # shared complex pair: multiplicity 1 in each layer, both pairs shared
    assert out.root_shared.values[4].all() and np.all(out.root_multiplicity.values[4] == 1)


def test_shared_root_that_is_double_in_one_layer():
    """(x - 2.1)^2 and (x - 2.1)(x + 2): the double root is computed only to ~1e-8, but its
    cluster centre is accurate, so the distance to the other layer's root is at rounding level."""
    arch = Architecture(8, (3, 3))
    td = data.teacher(arch, 4, noise=0.1, seed=0)
    pb = Problem(arch, td.X, td.Y, losses.square())
    w = np.r_[_poly([2.1, 2.1], 2.0), _poly([2.1, -2.0])]
    z, _, _ = roots.layer_roots(arch, w)
    assert abs(z[0] - z[1]) > 1e-9  # the computed copies of the double root do split
    out = analysis.classify_points(pb, w)
    np.testing.assert_array_equal(out.root_multiplicity.values[0], [2, 2, 1, 1])
    np.testing.assert_array_equal(out.root_shared.values[0], [True, True, False, True])
    assert out.min_root_distance.item() <= 1e-14
    assert out.has_common_root.item() and out.jac_rank.item() == arch.k_v - 1
    assert out.max_root_multiplicity.item() == 2


@pytest.mark.parametrize("zero", [0, 1])
def test_zero_layer_common_root_convention(zero):
    """k = (3, 1): a zero layer 1 next to a non-zero constant shares no root (J full rank);
    a zero constant layer 2 shares every root of layer 1 (J rank-deficient)."""
    arch = Architecture(6, (3, 1))
    td = data.teacher(arch, 3, noise=0.1, seed=0)
    pb = Problem(arch, td.X, td.Y, losses.square())
    w = np.array([1.0, -3.0, 2.0, 1.5])
    w[arch.layer_slice(zero)] = 0.0
    out = analysis.classify_points(pb, w)
    assert out.n_zero_filters.item() == 1
    assert out.has_common_root.item() == bool(zero == 1)
    assert out.jac_deficient.item() == bool(zero == 1)


@given(st.integers(0, 10**6), st.booleans())
def test_common_root_detection_agrees_with_jacobian_rank(seed, share):
    """Random real roots, well separated (distinct points of a grid with spacing 0.25 plus a
    small jitter: when several roots cluster, sigma_min of J behaves like a product of their
    distances and the numerical rank test is marginal); ``share`` makes one root common."""
    rng = np.random.default_rng(seed)
    arch = Architecture(11, (3, 5, 3))  # stride 1, k_v = 9
    pb = Problem(arch, rng.standard_normal((11, 3)), rng.standard_normal((3, 3)), losses.square())
    grid = rng.permutation(np.linspace(-2.0, 2.0, 17))[: arch.k_v - 1] + rng.uniform(-0.02, 0.02, 8)
    rts = np.split(grid, np.cumsum([ki - 1 for ki in arch.k])[:-1])
    if share:
        i, j = rng.choice(3, 2, replace=False)
        rts[j][0] = rts[i][-1]
    w = np.concatenate([_poly(r, rng.uniform(0.5, 2)) for r in rts])
    out = analysis.classify_points(pb, w)
    assert out.has_common_root.item() == share
    assert out.jac_deficient.item() == share
    assert out.jac_rank.item() == arch.k_v - int(share)


# ----------------------------------------------------------------------------- Prop. 5.1 study
def test_prop51_every_nonglobal_limit_has_common_roots(deep, deep_minima):
    W0, Wm = deep_minima
    ds = analysis.classify(fake_flow_dataset(deep, W0, Wm), deep)
    res = analysis.check_prop51(ds)
    assert res["applicable"]
    assert 0 < res["n_nonglobal_critical"] < len(Wm)  # both kinds of limits occur (seeded)
    assert res["all_have_common_roots"] and res["all_jac_deficient"] and res["violations"] == []
    assert ds.is_global.attrs["global_reference"] == "convex_min"  # filling, square loss
    ng = ds.is_critical.values & (ds.is_global.values == 0)
    assert np.all(ds.label.values[ng] == MIN)  # spurious *local minima* for k = (3, 3, 3)
    assert np.all(ds.loss_gap.values[ng] > 1e-3)
    assert np.all(ds.min_root_distance.values[ng] < 1e-8)
    assert np.all(ds.min_root_distance.values[~ng] > 1e-2)


def test_prop51_not_applicable_for_nonconvex_generalized_huber(deep, deep_minima):
    pb = Problem(deep.arch, deep.X, deep.Y, losses.generalized_huber(1.0, -1.0))
    W0, Wm = deep_minima
    ds = analysis.classify(fake_flow_dataset(pb, W0, Wm), pb)
    assert "prop51_ok" not in ds and "loss_gap" not in ds
    # non-convex loss, no global_min given: undecided
    assert np.all(np.isnan(ds.is_global.values)) and ds.is_global.global_reference == "none"
    assert not analysis.check_prop51(ds)["applicable"]
    assert np.isfinite(ds.loss_best_found.item()) and np.all(ds.gap_to_best.values >= 0)


# ----------------------------------------------------------------------------- flow Datasets
def test_classify_flow_dataset(deep, deep_minima):
    W0, Wm = deep_minima
    Wf = Wm.copy()
    Wf[3] = np.nan  # a diverged flow
    inc = np.full(len(Wm), -1e-3)
    inc[0] = 1e-3  # a real increase
    inc[1] = 1e-16 * deep.loss(W0[1])  # rounding level: not an increase
    status = np.zeros(len(Wm))
    status[3] = 4
    ds = fake_flow_dataset(deep, W0, Wf, max_loss_increase=inc, status=status)
    ds = ds.assign_coords(flow=np.arange(100, 100 + len(Wm)))
    before = ds.copy(deep=True)
    out = analysis.classify(ds, deep)
    xr.testing.assert_identical(ds, before)  # input untouched
    np.testing.assert_array_equal(out.flow.values, ds.flow.values)
    assert out.label.values[3] == NONFIN and np.isnan(out.hess_min_eig.values[3])
    assert np.all(out.label.values[np.arange(len(Wm)) != 3] == MIN)
    np.testing.assert_array_equal(out.loss_increased.values[:3], [True, False, False])
    d = np.abs(ds.delta_final.values - ds.delta_init.values).max(axis=1)
    np.testing.assert_allclose(out.balance_drift.values, d)
    assert out.label.attrs["flag_meanings"] == " ".join(analysis.LABELS)
    assert json.loads(out.attrs["analysis"])["grad_tol"] == analysis.DEFAULTS["grad_tol"]
    # re-classifying with other tolerances replaces the variables
    again = analysis.classify(out, deep, grad_tol=1e-20)
    assert np.all(again.label.values[np.arange(len(Wm)) != 3] == NOTCRIT)
    assert set(again.data_vars) == set(out.data_vars)


def test_classify_netcdf_round_trip(deep, deep_minima, tmp_path):
    W0, Wm = deep_minima
    out = analysis.classify(fake_flow_dataset(deep, W0[:3], Wm[:3]), deep)
    path = tmp_path / "c.nc"
    out.reset_index("param").to_netcdf(path, engine="netcdf4")
    with xr.open_dataset(path, engine="netcdf4") as f:
        back = f.load().set_index(param=["layer", "tap"])
    xr.testing.assert_identical(out, back)


def test_classify_rejects_mismatched_datasets(deep, deep_minima, shallow):
    W0, Wm = deep_minima
    ds = fake_flow_dataset(deep, W0[:2], Wm[:2])
    with pytest.raises(ValueError, match="architecture"):
        analysis.classify(
            ds.assign_attrs(architecture=json.dumps({"d0": 12, "k": [3, 3, 3], "s": [1, 1, 2]})),
            deep,
        )
    with pytest.raises(ValueError, match="loss"):
        analysis.classify(
            ds.assign_attrs(loss=json.dumps({"name": "log_cosh", "alpha": 1.0})), deep
        )
    with pytest.raises(ValueError, match="parameters"):
        analysis.classify(ds, shallow[1])
    shuffled = ds.isel(param=np.r_[3:9, 0:3])
    with pytest.raises(ValueError, match="order"):
        analysis.classify(shuffled, deep)
    with pytest.raises(ValueError, match="w_final"):
        analysis.classify(ds.drop_vars("w_final"), deep)
    with pytest.raises(TypeError, match="ds"):
        analysis.classify(ds.w_final, deep)
    with pytest.raises(TypeError, match="problem"):
        analysis.classify(ds, "deep")


def test_classify_refuses_a_problem_on_other_data(deep):
    """Flows classified against a Problem on other data got wrong labels silently (the
    architecture and the loss were checked, the data not): the Dataset records m and the
    data's SHA-256, and classify compares them."""
    arch = deep.arch
    W0 = 0.7 * np.random.default_rng(6).standard_normal((2, arch.n_params))
    ds = lf_flow(deep, W0)
    assert ds.attrs["m"] == deep.m and len(ds.attrs["data_sha256"]) == 64
    analysis.classify(ds, deep)  # the same data, also rebuilt from copies
    analysis.classify(ds, Problem(arch, deep.X.copy(), deep.Y.copy(), losses.square()))
    other = data.teacher(arch, 20, noise=0.3, seed=2)
    with pytest.raises(ValueError, match="data_sha256"):
        analysis.classify(ds, Problem(arch, other.X, other.Y, losses.square()))
    fewer = data.teacher(arch, 25, noise=0.3, seed=1)
    with pytest.raises(ValueError, match="m = 25"):
        analysis.classify(ds, Problem(arch, fewer.X, fewer.Y, losses.square()))
    # a Dataset from before data_sha256: m still checked
    before = ds.copy()
    del before.attrs["data_sha256"]
    with pytest.raises(ValueError, match="m = 25"):
        analysis.classify(before, Problem(arch, fewer.X, fewer.Y, losses.square()))
    assert "data_sha256" in ds.attrs


def lf_flow(problem, W0):
    from lcnfast import gradient_flow

    return gradient_flow(problem, W0, t_end=1.0, method="rk45", progress=False)


def test_summarize(deep, deep_minima):
    W0, Wm = deep_minima
    W = np.concatenate([Wm, np.zeros((1, deep.arch.n_params)), W0[:2]])
    ds = analysis.classify(fake_flow_dataset(deep, np.concatenate([W0, W0[:3]]), W), deep)
    df = analysis.summarize(ds)
    assert list(df.index) == list(analysis.LABELS) + ["all"]
    counts = np.bincount(ds.label.values, minlength=len(analysis.LABELS))
    np.testing.assert_array_equal(df["count"].values[:-1], counts)
    assert df.loc["all", "count"] == len(W) and df["fraction"].values[:-1].sum() == pytest.approx(1)
    sel = ds.label.values == MIN
    assert df.loc["minimum", "loss_q50"] == pytest.approx(
        np.quantile(ds.limit_loss.values[sel], 0.5)
    )
    assert df.loc["minimum", "global"] == pytest.approx(ds.is_global.values[sel].mean())
    assert df.loc["degenerate", "count"] == 1 and df.loc["not_critical", "count"] == 2
    assert np.isnan(df.loc["strict_saddle", "loss_q50"])
    assert df.attrs["prop51"]["applicable"]
    with pytest.raises(ValueError, match="classify"):
        analysis.summarize(fake_flow_dataset(deep, W0[:1], Wm[:1]))


# ----------------------------------------------------------------------------- validation
def test_classify_points_validation(deep):
    n = deep.arch.n_params
    w = np.zeros(n)
    with pytest.raises(TypeError, match="problem"):
        analysis.classify_points(None, w)
    with pytest.raises(ValueError, match="w must have shape"):
        analysis.classify_points(deep, np.zeros(n + 1))
    with pytest.raises(TypeError, match="w must be"):
        analysis.classify_points(deep, "w")
    with pytest.raises(TypeError, match="unknown keyword"):
        analysis.classify_points(deep, w, grad_tl=1e-6)
    with pytest.raises(ValueError, match="eig_tol"):
        analysis.classify_points(deep, w, eig_tol=2.0)
    with pytest.raises(ValueError, match="grad_tol"):
        analysis.classify_points(deep, w, grad_tol=-1.0)
    with pytest.raises(TypeError, match="root_tol"):
        analysis.classify_points(deep, w, root_tol="x")
    with pytest.raises(ValueError, match="hessians"):
        analysis.classify_points(deep, w, hessians=np.zeros((2, n, n)))
    with pytest.raises(ValueError, match="hessians contains NaN"):
        analysis.classify_points(deep, w, hessians=np.full((1, n, n), np.nan))
    with pytest.raises(ValueError, match="w_init"):
        analysis.classify_points(deep, w, w_init=np.zeros((2, n)))
    with pytest.raises(ValueError, match="tol"):
        roots.root_clusters([1.0 + 0j], 1.5)
    with pytest.raises(ValueError, match="coeffs"):
        roots.poly_roots([1.0, np.nan])


def test_balance_drift_from_initial_points(deep):
    rng = np.random.default_rng(8)
    W0 = rng.standard_normal((3, deep.arch.n_params))
    W1 = W0 * np.concatenate([np.full(3, 2.0), np.full(3, 0.5), np.ones(3)])
    out = analysis.classify_points(deep, W1, w_init=W0)
    sq = lambda W: np.stack(
        [np.sum(W[:, i * 3 : i * 3 + 3] ** 2, 1) for i in range(3)], 1
    )  # noqa: E731
    want = np.abs(np.diff(sq(W1), axis=1) - np.diff(sq(W0), axis=1)).max(axis=1)
    np.testing.assert_allclose(out.balance_drift.values, want, rtol=1e-12)


def test_convex_minimum_rejects_nonconvex_loss(deep):
    pb = Problem(deep.arch, deep.X, deep.Y, losses.generalized_huber(1.0, -0.5))
    with pytest.raises(ValueError, match="not convex"):
        analysis.convex_minimum(pb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pb3 = Problem(deep.arch, deep.X, deep.Y, losses.lp(1.5))
    v, L, info = analysis.convex_minimum(pb3)
    assert info["method"] == "L-BFGS-B" and info["grad_norm"] <= 1e-4
    rng = np.random.default_rng(0)
    for dv in 1e-3 * rng.standard_normal((5, pb3.arch.k_v)):
        assert pb3.function_space_loss(v + dv) >= L - 1e-12


# ----------------------------------------------------------------------------- NaN and K = 0
def test_classify_points_rejects_nan_like_problem_grad(deep):
    n = deep.arch.n_params
    with pytest.raises(ValueError, match=r"\bw\b.*NaN"):
        analysis.classify_points(deep, np.full((1, n), np.nan))
    with pytest.raises(ValueError, match=r"\bw\b.*NaN"):
        analysis.classify_points(deep, np.r_[np.ones(n - 1), np.inf])
    with pytest.raises(ValueError, match=r"\bw_init\b.*NaN"):
        analysis.classify_points(deep, np.ones(n), w_init=np.full(n, np.nan))


def test_classify_takes_an_empty_flow_dataset(deep):
    """gradient_flow accepts K = 0; classifying its Dataset failed with 'cannot reshape
    array of size 0'."""
    from lcnfast import gradient_flow

    ds = gradient_flow(deep, np.zeros((0, deep.arch.n_params)), t_end=1.0)
    out = analysis.classify(ds, deep)
    assert out.sizes["flow"] == 0 and out.label.shape == (0,)
    assert out.balance_drift.shape == (0,)
