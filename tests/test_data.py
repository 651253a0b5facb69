"""Teacher data and initial filters (lcnfast.data)."""

from __future__ import annotations

import naive
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import architectures

from lcnfast import Architecture, Problem, data, losses


@given(architectures(), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_teacher_shapes_and_noise_free_targets_equal_reference_VX(arch, m, seed):
    td = data.teacher(arch, m, seed=seed)
    assert td.X.shape == (arch.d0, m)
    assert td.Y.shape == (arch.d_N, m)
    assert td.w_teacher.shape == (arch.n_params,)
    assert td.v_teacher.shape == (arch.k_v,)
    d0, k, s = arch.d0, arch.k, arch.s
    v_ref = naive.final_filter(td.w_teacher, d0, k, s)
    v_scale = np.max(naive.final_filter(np.abs(td.w_teacher), d0, k, s))
    assert naive.max_rel_err(td.v_teacher, v_ref, floor=1e-3 * v_scale) <= 1e-12
    Y_ref = naive.predict(td.w_teacher, d0, k, s, td.X)
    floor = 1e-3 * v_scale * np.max(np.abs(td.X))
    assert naive.max_rel_err(td.Y, Y_ref, floor=floor) <= 1e-12
    # the teacher is a global minimiser with zero loss (square loss, data pass)
    p = Problem(arch, td.X, td.Y, losses.square(), use_gram=False)
    assert p.loss(td.w_teacher) <= 1e-24 * max(1.0, float(np.sum(Y_ref**2)))


def test_teacher_X_entries_have_variance_one_over_m():
    arch = Architecture(61, (5, 3), (1, 2))
    for m in (50, 400):
        X = data.teacher(arch, m, seed=m).X
        n = X.size
        # sample variance of n i.i.d. N(0, 1/m): relative sd sqrt(2/n); allow 5 sd
        assert abs(np.var(X) * m - 1) < 5 * np.sqrt(2 / n)
        assert abs(np.mean(X)) * np.sqrt(m) < 5 / np.sqrt(n)


def test_teacher_weights_are_standard_normal():
    arch = Architecture(400, (100, 101, 100))
    w = data.teacher(arch, 2, seed=11).w_teacher
    assert abs(np.var(w) - 1) < 5 * np.sqrt(2 / w.size)


def test_teacher_noise_adds_gaussian_noise_of_given_sd():
    arch = Architecture(40, (3, 3))
    clean = data.teacher(arch, 300, seed=4)
    noisy = data.teacher(arch, 300, noise=0.25, seed=4)
    # same X and teacher (drawn first from the same stream); only Y differs
    np.testing.assert_array_equal(noisy.X, clean.X)
    np.testing.assert_array_equal(noisy.w_teacher, clean.w_teacher)
    E = noisy.Y - clean.Y
    assert abs(np.std(E) / 0.25 - 1) < 5 * np.sqrt(0.5 / E.size)
    assert abs(np.mean(E)) < 5 * 0.25 / np.sqrt(E.size)


def test_teacher_same_seed_reproduces_and_different_seed_differs():
    arch = Architecture(13, (3, 2), (2, 1))
    a = data.teacher(arch, 7, noise=0.1, seed=123)
    b = data.teacher(arch, 7, noise=0.1, seed=123)
    c = data.teacher(arch, 7, noise=0.1, seed=124)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.X, c.X)
    assert not np.array_equal(a.w_teacher, c.w_teacher)
    # a Generator works as a seed too
    d = data.teacher(arch, 7, seed=np.random.default_rng(123))
    np.testing.assert_array_equal(d.X, data.teacher(arch, 7, seed=123).X)


@given(architectures(max_depth=3), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_initial_filters_first_rows_do_not_depend_on_total_count(arch, K, seed):
    big = data.initial_filters(arch, K + 5, seed=seed)
    small = data.initial_filters(arch, K, seed=seed)
    assert small.shape == (K, arch.n_params)
    assert big.shape == (K + 5, arch.n_params)
    np.testing.assert_array_equal(big[:K], small)
    np.testing.assert_array_equal(data.initial_filters(arch, K, seed=seed), small)


def test_initial_filters_scale_is_the_standard_deviation():
    arch = Architecture(30, (4, 3, 2))
    for scale in (0.1, 1.0, 3.0):
        W = data.initial_filters(arch, 2000, scale=scale, seed=5)
        assert W.shape == (2000, 9)
        assert abs(np.std(W) / scale - 1) < 5 * np.sqrt(0.5 / W.size)
        assert abs(np.mean(W)) < 5 * scale / np.sqrt(W.size)
    # the scale multiplies one fixed stream
    np.testing.assert_allclose(
        data.initial_filters(arch, 10, scale=3.0, seed=5),
        3.0 * data.initial_filters(arch, 10, scale=1.0, seed=5),
        rtol=1e-15,
    )
    np.testing.assert_array_equal(data.initial_filters(arch, 3, scale=0.0, seed=5), 0.0)


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(arch=(8, (4,), (2,)), m=3), TypeError, "arch"),
        (dict(arch=None, m=3), TypeError, "arch"),
        (dict(m=0), ValueError, "m"),
        (dict(m=-2), ValueError, "m"),
        (dict(m=2.5), ValueError, "m"),
        (dict(m=True), ValueError, "m"),
        (dict(m=3, noise=-0.1), ValueError, "noise"),
        (dict(m=3, noise=np.inf), ValueError, "noise"),
        (dict(m=3, noise=np.nan), ValueError, "noise"),
        (dict(m=3, noise="0.1"), TypeError, "noise"),
        (dict(m=3, seed=-1), ValueError, "seed"),
        (dict(m=3, seed="x"), TypeError, "seed"),
    ],
)
def test_teacher_validation(kwargs, exc, word):
    kwargs = {"arch": Architecture(8, (4,), (2,)), **kwargs}
    arch = kwargs.pop("arch")
    m = kwargs.pop("m")
    with pytest.raises(exc, match=rf"\b{word}\b"):
        data.teacher(arch, m, **kwargs)


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(arch="arch", K=3), TypeError, "arch"),
        (dict(K=0), ValueError, "K"),
        (dict(K=1.0), ValueError, "K"),
        (dict(K=None), ValueError, "K"),
        (dict(K=3, scale=-1.0), ValueError, "scale"),
        (dict(K=3, scale=np.nan), ValueError, "scale"),
        (dict(K=3, scale=[1.0]), TypeError, "scale"),
        (dict(K=2, seed=-1), ValueError, "seed"),  # numpy's message alone did not name seed
        (dict(K=2, seed=1.5), TypeError, "seed"),
    ],
)
def test_initial_filters_validation(kwargs, exc, word):
    kwargs = {"arch": Architecture(8, (4,), (2,)), **kwargs}
    arch = kwargs.pop("arch")
    K = kwargs.pop("K")
    with pytest.raises(exc, match=rf"\b{word}\b"):
        data.initial_filters(arch, K, **kwargs)
