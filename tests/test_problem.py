"""Problem: final filter, prediction, loss, gradient, Hessian and Jacobian against the slow
references in naive.py, for random architectures, losses, data and parameters."""

from __future__ import annotations

import mpmath
import naive
import numba
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import LOSS_SPECS, arch_specs, make_loss, random_params

from lcnfast import Architecture, Problem, losses, threads

# two threads, or the one a process started with NUMBA_NUM_THREADS=1 has
TWO_THREADS = min(2, numba.config.NUMBA_NUM_THREADS)


class Case:
    """One random problem: architecture, loss, data X (d0, m), Y (d_N, m), parameters w."""

    def __init__(self, spec, loss_spec, seed, m, scale, use_gram=True):
        d0, k, s = spec
        self.d0, self.k, self.s = d0, k, s
        self.arch = Architecture(d0, k, s)
        self.loss_spec = loss_spec
        rng = np.random.default_rng(seed)
        self.X = rng.standard_normal((d0, m))
        self.Y = rng.standard_normal((self.arch.d_N, m))
        self.w = random_params(rng, self.arch, scale)
        self.W = np.stack([random_params(rng, self.arch, scale) for _ in range(3)])
        self.problem = Problem(self.arch, self.X, self.Y, make_loss(*loss_spec), use_gram=use_gram)

    def ref_loss(self, w, dtype=np.float64):
        return naive.empirical_risk(*self.loss_spec, w, self.d0, self.k, self.s, self.X, self.Y, dtype)

    def ref_residuals(self, w):
        return naive.residuals(w, self.d0, self.k, self.s, self.X, self.Y)

    def ref_filter(self, w):
        return naive.final_filter(w, self.d0, self.k, self.s)

    def filter_scale(self, w):
        """Entrywise sum of |products| in v: the final filter of |w| (no cancellation)."""
        return naive.final_filter(np.abs(w), self.d0, self.k, self.s)

    def term_scale(self, w):
        """sum_ij |l(r_ij)|: the size of the rounding error of any evaluation of L is ~eps times it."""
        return float(np.sum(np.abs(naive.loss_value(*self.loss_spec, self.ref_residuals(w)))))

    def smooth_enough(self, w, rel=1e-6):
        """False if central differences with relative step ``rel`` would cross the kink of
        lp(p=1) at r = 0. Exact: along one coordinate every residual is linear (pi is linear
        in each coordinate), so it crosses 0 iff its sign differs at the two ends."""
        if self.loss_spec != ("lp", (1.0,)):
            return True
        sign = np.sign(self.ref_residuals(w))
        h = naive.fd_steps(w, rel)
        for a in range(w.size):
            for step in (h[a], -h[a]):
                wa = w.copy()
                wa[a] += step
                if not np.array_equal(np.sign(self.ref_residuals(wa)), sign) or np.any(sign == 0):
                    return False
        return True


LOSSES = st.sampled_from(LOSS_SPECS)
SEEDS = st.integers(0, 2**32 - 1)
SAMPLES = st.integers(1, 6)
SCALES = st.sampled_from([0.5, 1.0, 2.0])


def cases(loss_specs=LOSSES, **arch_kw):
    return st.builds(Case, arch_specs(**arch_kw), loss_specs, SEEDS, SAMPLES, SCALES)


# ----------------------------------------------------------------------------- forward pass
@given(cases())
def test_final_filter_equals_first_row_of_layer_matrix_product(c):
    v = c.problem.final_filter(c.w)
    ref = c.ref_filter(c.w)
    assert v.shape == (c.arch.k_v,)
    # 1e-12 relative (max-norm); floor: 1e-3 of the cancellation-free scale |w| -> |v|
    assert naive.max_rel_err(v, ref, floor=1e-3 * np.max(c.filter_scale(c.w))) <= 1e-12


@given(cases())
def test_predict_equals_V_times_X(c):
    Z = c.problem.predict(c.w)
    ref = naive.predict(c.w, c.d0, c.k, c.s, c.X)
    assert Z.shape == (c.arch.d_N, c.X.shape[1])
    floor = 1e-3 * np.max(c.filter_scale(c.w)) * np.max(np.abs(c.X))
    assert naive.max_rel_err(Z, ref, floor=floor) <= 1e-12


@given(cases())
def test_loss_equals_reference_empirical_risk(c):
    L = c.problem.loss(c.w)
    ref = c.ref_loss(c.w)
    assert isinstance(L, float)
    # 1e-10 relative to |L|; the floor is the sum of |terms| (GH with beta < -1 has negative
    # terms) and, for the square loss through the Gram, ||Y||^2 + ||VX||^2 (see Problem.Notes)
    floor = c.term_scale(c.w)
    if c.problem.use_gram:
        floor = max(floor, float(np.sum(c.Y**2) + np.sum(c.problem.predict(c.w) ** 2)))
    assert abs(L - ref) <= 1e-10 * max(abs(ref), floor)


@given(cases(loss_specs=st.just(("square", ()))))
def test_square_loss_gram_path_equals_data_pass(c):
    pg = c.problem
    pd = Problem(c.arch, c.X, c.Y, losses.square(), use_gram=False)
    assert pg.use_gram and not pd.use_gram
    for w in [c.w, *c.W]:
        Lg, gg = pg.loss_and_grad(w)
        Ld, gd = pd.loss_and_grad(w)
        scale = float(np.sum(c.Y**2) + np.sum(pd.predict(w) ** 2))
        assert abs(Lg - Ld) <= 1e-10 * max(abs(Ld), 1e-3 * scale)
        assert naive.max_rel_err(gg, gd, floor=1e-6 * scale) <= 1e-10
        assert pg.loss(w) == pytest.approx(Ld, rel=1e-10, abs=1e-13 * scale)


def test_use_gram_is_ignored_for_losses_other_than_square():
    a = Architecture(6, (3, 2))
    X = np.ones((6, 2))
    Y = np.zeros((a.d_N, 2))
    assert Problem(a, X, Y, losses.square()).use_gram is True
    assert Problem(a, X, Y, losses.square(), use_gram=False).use_gram is False
    assert Problem(a, X, Y, losses.log_cosh(1.0), use_gram=True).use_gram is False


# ----------------------------------------------------------------------------- derivatives
@given(cases())
def test_grad_equals_central_differences_of_reference_loss(c):
    assume(c.smooth_enough(c.w))
    L, g = c.problem.loss_and_grad(c.w)
    assert g.shape == (c.arch.n_params,)
    # central differences, h = 1e-6 max(1, |w_a|), of the reference risk in long double
    # (eps ~1e-19, so the differences are not limited by rounding)
    g_fd = naive.fd_gradient(lambda x: c.ref_loss(x, np.longdouble), c.w, rel=1e-6)
    floor = 1e-6 * c.term_scale(c.w)
    assert naive.max_rel_err(g, g_fd, floor=floor) <= 1e-6
    # loss() and loss_and_grad() may run different kernels; they must agree to rounding
    assert L == pytest.approx(c.problem.loss(c.w), rel=1e-12, abs=1e-12 * c.term_scale(c.w))
    np.testing.assert_array_equal(g, c.problem.grad(c.w))


@given(cases())
def test_hessian_equals_central_differences_of_grad_and_is_symmetric(c):
    assume(c.smooth_enough(c.w, rel=1e-5))
    H = c.problem.hessian(c.w)
    n = c.arch.n_params
    assert H.shape == (n, n)
    # central differences of Problem.grad (float64), h = 1e-5 max(1, |w_a|)
    H_fd = naive.fd_hessian_of_grad(c.problem.grad, c.w, rel=1e-5)
    g = c.problem.grad(c.w)
    floor = max(1e-6 * c.term_scale(c.w), 1e-6 * float(np.max(np.abs(g), initial=0.0)), 1e-12)
    assert naive.max_rel_err(H, H_fd, floor=floor) <= 1e-5
    scale = max(float(np.max(np.abs(H))), floor)
    assert float(np.max(np.abs(H - H.T))) <= 1e-12 * scale


@given(cases())
def test_grad_and_hessian_equal_chain_rule_reference_to_rounding(c):
    # g = J^T G and H = J^T H_v J + sum_m G_m d^2 v_m / dw^2, every factor from the dense
    # references (patch matrix, exact differences of the multilinear pi): much sharper than
    # finite differences of the loss
    v = c.ref_filter(c.w)
    J = naive.fd_jacobian(lambda x: naive.final_filter_small(x, c.k, c.s), c.w, rel=1.0)
    T = naive.filter_second_derivatives(c.w, c.k, c.s)
    G, Hv, G_abs, Hv_abs = naive.function_space_derivatives(*c.loss_spec, v, c.X, c.Y, c.arch.s_v)
    g_ref = J.T @ G
    H_ref = J.T @ Hv @ J + np.einsum("m,mab->ab", G, T)
    Ja, Ta = np.abs(J), np.abs(T)
    g_scale = float(np.max(Ja.T @ G_abs))
    H_scale = float(np.max(Ja.T @ Hv_abs @ Ja + np.einsum("m,mab->ab", G_abs, Ta)))
    g = c.problem.grad(c.w)
    H = c.problem.hessian(c.w)
    assert np.max(np.abs(g - g_ref)) <= 1e-10 * g_scale
    assert np.max(np.abs(H - H_ref)) <= 1e-10 * H_scale
    # and in function space
    L, G_k = c.problem.function_space_grad(v)
    assert np.max(np.abs(G_k - G)) <= 1e-10 * float(np.max(G_abs))
    Hv_k = c.problem.function_space_hessian(v)
    assert np.max(np.abs(Hv_k - Hv)) <= 1e-10 * float(np.max(Hv_abs))


@given(cases(loss_specs=st.sampled_from([("square", ()), ("log_cosh", (1.0,))])))
def test_hessian_diagonal_blocks_are_gauss_newton_terms(c):
    # v is linear in each single layer, so the diagonal block of layer i is J_i^T H_v J_i
    H = c.problem.hessian(c.w)
    J = c.problem.jacobian(c.w)
    Hv = c.problem.function_space_hessian(c.problem.final_filter(c.w))
    for i in range(c.arch.depth):
        sl = c.arch.layer_slice(i)
        ref = J[:, sl].T @ Hv @ J[:, sl]
        assert naive.max_rel_err(H[sl, sl], ref, floor=1e-12 * np.max(np.abs(H))) <= 1e-10


@given(cases())
def test_jacobian_equals_fd_jacobian_of_reference_final_filter(c):
    J = c.problem.jacobian(c.w)
    assert J.shape == (c.arch.k_v, c.arch.n_params)
    # pi is linear in every single coordinate, so central differences are exact up to rounding
    J_fd = naive.fd_jacobian(lambda x: naive.final_filter_small(x, c.k, c.s), c.w, rel=1e-3)
    floor = 1e-3 * np.max(c.filter_scale(c.w)) / max(1.0, np.max(np.abs(c.w)))
    assert naive.max_rel_err(J, J_fd, floor=floor) <= 1e-10


@given(cases())
def test_function_space_loss_grad_hessian_match_dense_convolution_reference(c):
    p = c.problem
    v = p.final_filter(c.w)
    spec = c.loss_spec
    sv = c.arch.s_v
    ref = naive.function_space_risk(*spec, v, c.X, c.Y, sv)
    L_fs = p.function_space_loss(v)
    assert abs(L_fs - ref) <= 1e-10 * max(abs(ref), c.term_scale(c.w), float(np.sum(c.Y**2)))
    assert L_fs == pytest.approx(p.loss(c.w), rel=1e-12, abs=1e-12 * c.term_scale(c.w))
    R = naive.conv_matrix(v, c.d0, sv) @ c.X - c.Y
    if spec == ("lp", (1.0,)):
        assume(np.min(np.abs(R)) > 1e-3 * (1 + np.max(np.abs(v))))
    L2, G = p.function_space_grad(v)
    assert L2 == pytest.approx(L_fs, rel=1e-12, abs=1e-12 * c.term_scale(c.w))
    G_fd = naive.fd_gradient(lambda x: naive.function_space_risk(*spec, x, c.X, c.Y, sv, np.longdouble), v)
    assert naive.max_rel_err(G, G_fd, floor=1e-6 * c.term_scale(c.w)) <= 1e-6
    Hv = p.function_space_hessian(v)
    Hv_fd = naive.fd_jacobian(lambda x: p.function_space_grad(x)[1], v, rel=1e-5)
    assert naive.max_rel_err(Hv, Hv_fd, floor=1e-6 * max(c.term_scale(c.w), np.max(np.abs(G)))) <= 1e-5


# ----------------------------------------------------------------------------- structure
@given(cases(min_depth=2))
def test_balancedness_identity_eq_3_2(c):
    # grad . (0, .., w^(i), .., -w^(j), ..) = 0: every layer's <w^(i), grad_i> equals G . v
    g = c.problem.grad(c.w)
    a = c.arch
    dots = [float(np.dot(c.w[a.layer_slice(i)], g[a.layer_slice(i)])) for i in range(a.depth)]
    scale = float(np.sum(np.abs(c.w * g)))
    for i in range(a.depth):
        for j in range(i + 1, a.depth):
            direction = np.zeros(a.n_params)
            direction[a.layer_slice(i)] = c.w[a.layer_slice(i)]
            direction[a.layer_slice(j)] = -c.w[a.layer_slice(j)]
            assert abs(float(g @ direction)) <= 1e-11 * max(scale, 1e-300)
            assert abs(dots[i] - dots[j]) <= 1e-11 * max(scale, 1e-300)


@given(cases(min_depth=2), st.sampled_from([1e-3, 1e-2, 0.1]))
def test_gradient_step_changes_balancedness_by_h2_times_gradient_norms(c, h):
    # delta_ij(w - h g) - delta_ij(w) = h^2 (||g_i||^2 - ||g_j||^2)  (from eq. 3.2)
    a = c.arch
    g = c.problem.grad(c.w)
    w1 = c.w - h * g
    sq = lambda x, i: float(np.sum(x[a.layer_slice(i)] ** 2))  # noqa: E731
    for i in range(a.depth):
        for j in range(i + 1, a.depth):
            change = (sq(w1, i) - sq(w1, j)) - (sq(c.w, i) - sq(c.w, j))
            predicted = h**2 * (sq(g, i) - sq(g, j))
            scale = sq(w1, i) + sq(w1, j) + sq(c.w, i) + sq(c.w, j)
            assert abs(change - predicted) <= 1e-12 * scale + 1e-9 * abs(predicted)


@given(cases(min_depth=2), st.sampled_from([0.25, 3.0, -2.0]))
def test_rescaling_two_layers_leaves_filter_and_loss_unchanged(c, kappa):
    # the remark after Prop. 1.1: (.., w^(i) / kappa, .., kappa w^(j), ..) has the same v
    a = c.arch
    w2 = c.w.copy()
    w2[a.layer_slice(0)] /= kappa
    w2[a.layer_slice(a.depth - 1)] *= kappa
    v1, v2 = c.problem.final_filter(c.w), c.problem.final_filter(w2)
    assert naive.max_rel_err(v2, v1, floor=np.max(c.filter_scale(c.w))) <= 1e-13
    assert c.problem.loss(w2) == pytest.approx(c.problem.loss(c.w), rel=1e-11, abs=1e-11 * c.term_scale(c.w))


# ----------------------------------------------------------------------------- batches
@given(cases(), st.sampled_from([1, 2, 5, 8, 9, 16, 17, 33]), SEEDS)
def test_batch_results_equal_row_by_row_single_results_bitwise(c, K, seed):
    # K covers one row, partial, full and several blocks of the gradient's SIMD lanes (8 or 16)
    p = c.problem
    rng = np.random.default_rng(seed)
    W = np.stack([random_params(rng, c.arch) for _ in range(K)])
    L_b, G_b = p.loss_and_grad(W)
    assert L_b.shape == (K,) and G_b.shape == (K, c.arch.n_params)
    batch = {
        "loss": p.loss(W),
        "grad": p.grad(W),
        "hessian": p.hessian(W),
        "final_filter": p.final_filter(W),
        "predict": p.predict(W),
        "jacobian": p.jacobian(W),
    }
    assert batch["hessian"].shape == (K, c.arch.n_params, c.arch.n_params)
    assert batch["predict"].shape == (K, c.arch.d_N, c.X.shape[1])
    assert batch["jacobian"].shape == (K, c.arch.k_v, c.arch.n_params)
    for r in range(K):
        L1, g1 = p.loss_and_grad(W[r])
        assert L_b[r] == L1
        np.testing.assert_array_equal(G_b[r], g1)
        for name, out in batch.items():
            np.testing.assert_array_equal(out[r], getattr(p, name)(W[r]), err_msg=name)
    # a batch of one row is a batch, not a single vector
    assert p.loss(W[:1]).shape == (1,)
    # a row evaluated inside a larger batch in a different position gives the same bits
    W2 = np.concatenate([W[::-1], W])
    np.testing.assert_array_equal(p.grad(W2)[K:], G_b)
    np.testing.assert_array_equal(p.hessian(W2)[:K], batch["hessian"][::-1])


def test_empty_batch_gives_empty_results():
    a = Architecture(8, (4,), (2,))
    p = Problem(a, np.ones((8, 2)), np.ones((3, 2)), losses.square())
    W = np.zeros((0, 4))
    assert p.loss(W).shape == (0,)
    assert p.grad(W).shape == (0, 4)
    assert p.hessian(W).shape == (0, 4, 4)
    assert p.loss_and_grad(W)[1].shape == (0, 4)
    assert p.final_filter(W).shape == (0, 4)
    assert p.predict(W).shape == (0, 3, 2)
    assert p.jacobian(W).shape == (0, 4, 4)


def test_inputs_are_not_modified():
    a = Architecture(9, (3, 3), (2, 1))
    rng = np.random.default_rng(0)
    X, Y, W = rng.standard_normal((9, 3)), rng.standard_normal((a.d_N, 3)), rng.standard_normal((4, 6))
    X0, Y0, W0 = X.copy(), Y.copy(), W.copy()
    p = Problem(a, X, Y, losses.log_cosh(1.0))
    for f in (p.loss, p.loss_and_grad, p.hessian, p.final_filter, p.predict, p.jacobian):
        f(W)
        f(W[1])
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)
    np.testing.assert_array_equal(W, W0)


def test_non_contiguous_and_integer_parameters_are_accepted():
    a = Architecture(9, (3, 3), (2, 1))
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((9, 3)), rng.standard_normal((a.d_N, 3))
    p = Problem(a, np.asfortranarray(X), Y, losses.pseudo_huber(1.0))
    q = Problem(a, X, Y, losses.pseudo_huber(1.0))
    W = rng.standard_normal((6, 4)).T  # (4, 6), not C-contiguous
    np.testing.assert_array_equal(p.grad(W), q.grad(np.ascontiguousarray(W)))
    np.testing.assert_array_equal(p.loss([1, 2, 3, -1, 0, 2]), q.loss(np.array([1.0, 2, 3, -1, 0, 2])))


def test_kernels_see_one_data_type_whatever_the_layout_of_X_and_Y():
    """Every layout of X and Y (C or Fortran order, a single sample, a single row) gives the
    kernels the same Numba type: no kernel compiles a second time because of it (a contiguous
    transpose used to be passed as a read-only view, and each kernel compiled again)."""
    import numba

    a = Architecture(5, (3, 3), (1, 1))
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((5, 4)), rng.standard_normal((a.d_N, 4))
    variants = [(X, Y), (np.asfortranarray(X), np.asfortranarray(Y)), (X[:, :1], Y[:, :1])]
    types = {numba.typeof(Problem(a, x, y, losses.log_cosh(1.0))._model) for x, y in variants}
    b = Architecture(1, (1,), (1,))
    types.add(numba.typeof(Problem(b, rng.standard_normal((1, 3)), rng.standard_normal((1, 3)),
                                   losses.log_cosh(1.0))._model))
    assert len(types) == 1, types


# ----------------------------------------------------------------------------- bad input
def _small():
    a = Architecture(8, (4,), (2,))
    rng = np.random.default_rng(3)
    return a, rng.standard_normal((8, 5)), rng.standard_normal((3, 5))


@pytest.mark.parametrize(
    "which, bad, exc",
    [
        ("X", np.ones(8), ValueError),  # 1-d
        ("X", np.ones((7, 5)), ValueError),  # wrong d0
        ("X", np.ones((8, 5, 1)), ValueError),  # 3-d
        ("X", np.ones((8, 0)), ValueError),  # no samples
        ("X", np.full((8, 5), np.nan), ValueError),
        ("X", np.where(np.eye(8, 5) > 0, np.inf, 1.0), ValueError),
        ("X", np.full((8, 5), "a"), TypeError),
        ("Y", np.ones((3, 4)), ValueError),  # wrong m
        ("Y", np.ones((2, 5)), ValueError),  # wrong d_N
        ("Y", np.ones(15), ValueError),
        ("Y", np.where(np.eye(3, 5) > 0, -np.inf, 1.0), ValueError),
        ("Y", np.where(np.eye(3, 5) > 0, np.nan, 1.0), ValueError),
        ("Y", np.full((3, 5), "b"), TypeError),
        ("Y", None, TypeError),
    ],
)
def test_bad_data_raises_naming_the_argument(which, bad, exc):
    a, X, Y = _small()
    kwargs = {"X": X, "Y": Y, which: bad}
    with pytest.raises(exc, match=rf"\b{which}\b"):
        Problem(a, kwargs["X"], kwargs["Y"], losses.square())


@pytest.mark.parametrize("bad", [None, "abc"])
def test_missing_or_string_X_raises_naming_X(bad):
    a, X, Y = _small()
    with pytest.raises((ValueError, TypeError), match=r"\bX\b"):
        Problem(a, bad, Y, losses.square())


METHODS = ["loss", "loss_and_grad", "grad", "hessian", "final_filter", "predict", "jacobian"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "bad, exc",
    [
        (np.ones(3), ValueError),
        (np.ones(5), ValueError),
        (np.ones((2, 5)), ValueError),
        (np.ones((2, 2, 4)), ValueError),  # 3-d
        (np.ones((1, 1, 4)), ValueError),
        (np.float64(1.0), ValueError),  # 0-d
        (np.array([1.0, np.nan, 0.0, 1.0]), ValueError),
        (np.array([[1.0, 2.0, 3.0, 4.0], [1.0, np.inf, 0.0, 1.0]]), ValueError),
        (np.array(["a", "b", "c", "d"]), TypeError),
        ("abcd", TypeError),
        (None, TypeError),
        ({"w": 1}, TypeError),
        ([[1.0, 2.0], [3.0]], (TypeError, ValueError)),  # ragged
    ],
)
def test_bad_parameters_raise_naming_w(method, bad, exc):
    a, X, Y = _small()
    p = Problem(a, X, Y, losses.log_cosh(1.0))
    with pytest.raises(exc, match=r"\bw\b"):
        getattr(p, method)(bad)


_DEEP, _ONE_LAYER = Architecture(12, (3, 2, 2), (1, 2, 1)), Architecture(12, (4,), (2,))


def test_read_only_parameters_compile_nothing_new():
    """A read-only w (np.broadcast_to, a view of a Dataset's values) was a second Numba type
    for every batched kernel: each compiled again (seconds to a minute) for the same result."""
    from lcnfast import _batches, _lanes

    arch = Architecture(8, (2, 2))
    rng = np.random.default_rng(0)
    p = Problem(arch, rng.standard_normal((8, 6)), rng.standard_normal((arch.d_N, 6)),
                losses.square())
    W = rng.standard_normal((3, arch.n_params))
    kernels = (_lanes.loss_grad_serial, _lanes.generated_serial, _batches.loss_rows,
               _batches.hessian_rows)
    methods = ("grad", "loss_and_grad", "loss", "hessian")
    want = [getattr(p, m)(W) for m in methods]
    n_sigs = [len(k.signatures) for k in kernels]
    R = W.copy()
    R.flags.writeable = False
    for m, w in zip(methods, want):
        got = getattr(p, m)(R)  # loss_and_grad: a pair of arrays
        pairs = zip(got, w) if isinstance(w, tuple) else [(got, w)]
        assert all(np.array_equal(a, b) for a, b in pairs)
    assert [len(k.signatures) for k in kernels] == n_sigs


@pytest.mark.parametrize("a, kernel, loss", [
    (_DEEP, "generic", losses.square()), (_DEEP, "generated", losses.square()),
    (_DEEP, "generic", losses.log_cosh(1.0)), (_ONE_LAYER, "generic", losses.log_cosh(1.0))])
@pytest.mark.parametrize("K", [1, 7, 300])
@pytest.mark.parametrize("n_threads", sorted({1, TWO_THREADS}))
def test_a_nan_or_inf_anywhere_in_a_batch_raises_naming_w(a, kernel, loss, K, n_threads):
    """grad and loss_and_grad look for a NaN or Inf in w only when the kernels' overflow flag
    is raised (lcnfast._lanes checks W in the same chunks as the results): every row and
    column of a batch, on the Gram and the data path, the generic and the generated kernel,
    serial (K = 1, 7) and in prange chunks (K = 300 on 2 threads), must still raise. On the
    one-layer log-cosh problem an Inf in w leaves the gradient finite (the residuals are
    +-inf, tanh(+-inf) = +-1), so a check of the results alone would miss it there."""
    rng = np.random.default_rng(K)
    X, Y = rng.standard_normal((12, 9)), rng.standard_normal((a.d_N, 9))
    p = Problem(a, X, Y, loss, kernel=kernel)
    W = rng.standard_normal((K, a.n_params))
    spots = [(0, 0), (K - 1, a.n_params - 1), (K // 2, 3)]
    with threads(n_threads):
        for (i, j), bad in zip(spots * 2, [np.nan, np.inf, -np.inf, np.inf, np.nan, -np.inf]):
            Wb = W.copy()
            Wb[i, j] = bad
            for method in ("grad", "loss_and_grad"):
                with pytest.raises(ValueError, match=r"\bw\b contains NaN or Inf"):
                    getattr(p, method)(Wb)
        G = p.grad(W)  # and a finite batch still passes
    assert np.all(np.isfinite(G))


@pytest.mark.parametrize("method", ["function_space_loss", "function_space_grad", "function_space_hessian"])
@pytest.mark.parametrize(
    "bad",
    [np.ones(3), np.ones(5), np.ones((1, 4)), np.array([1.0, np.nan, 0.0, 1.0]),
     np.array([0.0, 0.0, -np.inf, 0.0])],
)
def test_bad_final_filter_raises_naming_v(method, bad):
    a, X, Y = _small()
    p = Problem(a, X, Y, losses.square())
    with pytest.raises(ValueError, match=r"\bv\b"):
        getattr(p, method)(bad)


@pytest.mark.parametrize("bad", ["square", losses.square, None, 2.0])
def test_loss_that_is_not_a_Loss_raises_type_error(bad):
    a, X, Y = _small()
    with pytest.raises(TypeError, match=r"\bloss\b"):
        Problem(a, X, Y, bad)


@pytest.mark.parametrize("bad", [(8, (4,), (2,)), {"d0": 8, "k": [4], "s": [2]}, None])
def test_arch_that_is_not_an_Architecture_raises_type_error(bad):
    _, X, Y = _small()
    with pytest.raises(TypeError, match=r"\barch\b"):
        Problem(bad, X, Y, losses.square())


def test_numeric_strings_as_w_raise_type_error():
    a, X, Y = _small()
    p = Problem(a, X, Y, losses.square())
    with pytest.raises(TypeError, match=r"\bw\b"):
        p.loss(np.array(["1", "2", "3", "4"]))


def test_complex_w_raises_type_error():
    a, X, Y = _small()
    p = Problem(a, X, Y, losses.square())
    with pytest.raises(TypeError, match=r"\bw\b"):
        p.loss(np.ones(4) + 1j)


# ----------------------------------------------------------------------------- rank_info
def test_rank_info_full_rank_X():
    a = Architecture(9, (3, 3), (2, 1))  # k_v = 7, s_v = 2, d_N = 2
    rng = np.random.default_rng(7)
    X = rng.standard_normal((9, 20))
    p = Problem(a, X, rng.standard_normal((2, 20)), losses.square())
    info = p.rank_info()
    assert set(info) == {"xxt_rank", "xxt_min_sv", "gram_rank", "gram_min_sv"}
    assert info["xxt_rank"] == 9
    sv = np.linalg.svd(X @ X.T, compute_uv=False)
    assert info["xxt_min_sv"] == pytest.approx(sv[-1], rel=1e-10)
    A = naive.window_gram(X, a.k_v, a.s_v)
    assert info["gram_rank"] == np.linalg.matrix_rank(A) == 7
    assert info["gram_min_sv"] == pytest.approx(np.linalg.svd(A, compute_uv=False)[-1], rel=1e-10)
    np.testing.assert_allclose(p.A, A, rtol=1e-13, atol=1e-13 * np.max(np.abs(A)))


def test_rank_info_rank_deficient_X():
    a = Architecture(9, (3, 3), (2, 1))  # d0 = 9 > m = 3
    rng = np.random.default_rng(8)
    X = rng.standard_normal((9, 3))
    p = Problem(a, X, rng.standard_normal((2, 3)), losses.square())
    info = p.rank_info()
    assert info["xxt_rank"] == 3
    assert info["xxt_min_sv"] < 1e-12 * np.linalg.norm(X) ** 2
    A = naive.window_gram(X, a.k_v, a.s_v)  # 3 samples x 2 windows: rank 6 < k_v = 7
    assert info["gram_rank"] == np.linalg.matrix_rank(A) == 6
    assert info["gram_min_sv"] < 1e-12 * np.max(np.abs(A))


def test_rank_info_single_window_gram_has_rank_one():
    b = Architecture(5, (3, 3))  # k_v = 5 = d0, so d_N = 1: one window per sample
    X = np.arange(1.0, 6.0)[:, None]
    p = Problem(b, X, np.zeros((1, 1)), losses.square())
    info = p.rank_info()
    assert info["gram_rank"] == 1 and info["xxt_rank"] == 1
    np.testing.assert_allclose(p.A, np.outer(X[:, 0], X[:, 0]), rtol=1e-15)


@given(cases(loss_specs=st.just(("square", ()))))
def test_window_gram_and_b_match_explicit_windows(c):
    p = c.problem
    A = naive.window_gram(c.X, c.arch.k_v, c.arch.s_v)
    assert naive.max_rel_err(p.A, A, floor=1e-300) <= 1e-12
    # b_n = sum_ij y_ji x_{(j-1)s_v+n, i} = <Y, Pi(e_n) X>
    b = np.array(
        [np.sum(c.Y * (naive.conv_matrix(e, c.d0, c.arch.s_v) @ c.X)) for e in np.eye(c.arch.k_v)]
    )
    floor = 1e-3 * np.sum(np.abs(c.Y)) * np.max(np.abs(c.X))
    assert naive.max_rel_err(p.b, b, floor=floor) <= 1e-12


@pytest.mark.parametrize("alpha", [1e-6, 1e-3, 0.05, 1.0, 1e3])
def test_log_cosh_over_many_chunks_is_accurate_for_tiny_and_saturated_residuals(alpha):
    """The data path sums log cosh over chunks of up to 2040 outputs: alpha |r| <= 1/8 by a
    series (alpha = 1e-6: all of them; the log of a product of 1 + tanh lost 6 digits there),
    above as alpha |r| minus the log of a product of (1 + |tanh|) / sqrt 2 (alpha = 1e3: every
    factor is sqrt 2, the extreme the chunk length is chosen for). Loss against mpmath to
    4 ulp-ish; gradient against the chain rule."""
    arch = Architecture(64, (5, 5, 5), (1, 1, 1))
    rng = np.random.default_rng(3)
    X = rng.standard_normal((64, 48))
    Y = rng.standard_normal((arch.d_N, 48))
    w = random_params(rng, arch, 1.0)
    P = Problem(arch, X, Y, losses.log_cosh(alpha))
    L, g = P.loss_and_grad(w)
    R = naive.residuals(w, 64, (5, 5, 5), (1, 1, 1), X, Y)
    assert R.size > 2040
    with mpmath.workdps(30):
        ref = float(mpmath.fsum(mpmath.log(mpmath.cosh(mpmath.mpf(alpha) * float(r))) for r in R.ravel()) / alpha)
    assert np.isfinite(L) and abs(L - ref) <= 4e-15 * abs(ref)
    # gradient by the chain rule: J(w)^T P^T l'(r), J exact by central differences (pi is
    # linear in each coordinate)
    J = naive.fd_jacobian(lambda u: naive.final_filter(u, 64, (5, 5, 5), (1, 1, 1)), w)
    ref_g = J.T @ (naive.patch_matrix(X, arch.k_v, arch.s_v).T @ naive.loss_d1("log_cosh", (alpha,), R).ravel())
    assert naive.max_rel_err(g, ref_g, floor=1e-12 * np.max(np.abs(ref_g))) <= 1e-9


@pytest.mark.parametrize(
    "d0, k, s, m, mode",
    [
        (40, (3, 4), (1, 1), 24, 2),  # sample-major copies, stride 1
        (100, (3, 4), (1, 1), 45, 2),  # sample-major copies in blocks of 20, 20 and 5 samples
        (41, (3, 4), (2, 1), 24, 2),  # sample-major copies, stride 2
        (12, (3, 3), (1, 1), 5, 1),  # flat groups of rows (windows straddling two rows)
        (30, (2, 3), (1, 1), 5, 1),  # flat groups, one row each (2 d_N < d0)
        (17, (3, 2), (2, 1), 5, 0),  # row by row, strided
    ],
)
@pytest.mark.parametrize("loss", [losses.log_cosh(0.7), losses.pseudo_huber(0.5)])
def test_grad_without_the_loss_is_bitwise_the_gradient_of_loss_and_grad(d0, k, s, m, mode, loss):
    """Problem.grad runs the data path without the loss values (log-cosh: one pass for
    tanh, no log-cosh sums); the gradient must be the same bits as loss_and_grad's, in every
    layout of the data path, for a single vector and for a batch spanning lane blocks."""
    from lcnfast import _data_path

    arch = Architecture(d0, k, s)
    rng = np.random.default_rng(11)
    X = rng.standard_normal((d0, m))
    Y = rng.standard_normal((arch.d_N, m))
    p = Problem(arch, X, Y, loss)
    assert _data_path._data_layout(p.model)[0] == mode
    W = np.stack([random_params(rng, arch, 1.0) for _ in range(11)])
    L, G = p.loss_and_grad(W)
    np.testing.assert_array_equal(p.grad(W), G)
    np.testing.assert_array_equal(p.grad(W[3]), G[3])
    assert np.all(np.isfinite(L)) and np.all(np.isfinite(G))
    # and the gradient is right: the chain rule on the reference residuals
    w = W[5]
    R = naive.residuals(w, d0, k, s, X, Y)
    J = naive.fd_jacobian(lambda u: naive.final_filter(u, d0, k, s), w)
    ref = J.T @ (naive.patch_matrix(X, arch.k_v, arch.s_v).T
                 @ naive.loss_d1(loss.name, loss.params[:1], R).ravel())
    assert naive.max_rel_err(G[5], ref, floor=1e-12 * np.max(np.abs(ref))) <= 1e-9
    ref_L = naive.empirical_risk(loss.name, loss.params[:1], w, d0, k, s, X, Y)
    assert abs(L[5] - ref_L) <= 1e-13 * abs(ref_L)


# ----------------------------------------------------------------------------- overflow
@pytest.mark.parametrize(
    "loss, kw",
    [
        (losses.square(), {}),
        (losses.square(), {"kernel": "generated"}),
        (losses.square(), {"use_gram": False}),
        (losses.log_cosh(1.0), {}),
        (losses.pseudo_huber(0.5), {}),
    ],
)
def test_overflow_gives_inf_loss_and_a_warning_never_a_silent_nan(loss, kw):
    """Finite parameters too large for float64 (v = pi(w) overflows): the loss used to come
    back NaN and the gradient all-NaN without a word (log-cosh too), the final filter inf."""
    import warnings

    a = Architecture(10, (2, 3), (2, 1))
    rng = np.random.default_rng(5)
    p = Problem(a, rng.standard_normal((10, 6)), rng.standard_normal((a.d_N, 6)), loss, **kw)
    W = np.stack([np.full(a.n_params, 1e200), rng.standard_normal(a.n_params)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a point in range: not a word
        L_ok, G_ok = p.loss_and_grad(W[1])
        p.loss(W[1]), p.grad(W[1]), p.final_filter(W[1])
    with pytest.warns(RuntimeWarning, match=r"Problem\.loss overflowed at 1 of 2 points"):
        L = p.loss(W)
    assert L[0] == np.inf and L[1] == p.loss(W[1])
    with pytest.warns(RuntimeWarning, match=r"Problem\.loss_and_grad overflowed at 1 of 2"):
        L, G = p.loss_and_grad(W)
    assert L[0] == np.inf and L[1] == L_ok and np.array_equal(G[1], G_ok)
    assert not np.isfinite(G[0]).all()
    with pytest.warns(RuntimeWarning, match=r"Problem\.grad overflowed at 1 of 2"):
        p.grad(W)
    with pytest.warns(RuntimeWarning, match=r"Problem\.loss overflowed at 1 of 1"):
        assert p.loss(W[0]) == np.inf  # one vector: a float, inf
    with pytest.warns(RuntimeWarning, match=r"Problem\.final_filter overflowed at 1 of 2"):
        V = p.final_filter(W)
    assert np.isinf(V[0]).all() and np.isfinite(V[1]).all()
    with pytest.warns(RuntimeWarning, match=r"Problem\.predict overflowed"):
        p.predict(W)
    if loss.code == losses.SQUARE:
        with pytest.warns(RuntimeWarning, match=r"function_space_loss overflowed"):
            assert p.function_space_loss(np.full(a.k_v, 1e300)) == np.inf
