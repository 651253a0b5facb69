"""Architecture: widths (eq. 1.5), Prop. 1.1, dilations, offsets, function-space dimension,
filling, and input validation."""

from __future__ import annotations

import math

import naive
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import arch_specs

from lcnfast import Architecture


# ----------------------------------------------------------------------------- widths, Prop. 1.1
def test_paper_example_k4_s2_maps_R8_to_R3():
    # the example of eq. (1.4): a width-4, stride-2 filter maps R^8 to R^3
    a = Architecture(8, [4], [2])
    assert a.d == (8, 3)
    assert (a.d0, a.d_N, a.depth) == (8, 3, 1)
    assert (a.k_v, a.s_v) == (4, 2)
    assert a.dilations == (1,)
    assert a.offsets == (0, 4)
    assert a.n_params == 4


def test_three_layer_widths_and_final_filter_by_hand():
    # d = (27, 13, 4, 2): 13 = (27-3)/2+1, 4 = (13-4)/3+1, 2 = (4-3)/1+1
    a = Architecture(27, (3, 4, 3), (2, 3, 1))
    assert a.d == (27, 13, 4, 2)
    assert a.dilations == (1, 2, 6)
    assert a.k_v == 3 + 3 * 2 + 2 * 6 == 21
    assert a.s_v == 6
    assert a.offsets == (0, 3, 7, 10)
    assert a.n_params == 10
    assert [a.layer_slice(i) for i in range(3)] == [slice(0, 3), slice(3, 7), slice(7, 10)]


def test_default_strides_are_one():
    a = Architecture(10, (3, 2))
    assert a.s == (1, 1)
    assert a.d == (10, 8, 7)
    assert (a.k_v, a.s_v) == (4, 1)


@given(arch_specs())
def test_widths_kv_sv_dilations_offsets_match_eq_1_5_and_prop_1_1(spec):
    d0, k, s = spec
    a = Architecture(d0, k, s)
    assert a.d == naive.widths(d0, k, s)
    assert a.k == k and a.s == s and a.depth == len(k)
    assert a.k_v == naive.k_v(k, s)
    assert a.s_v == naive.s_v(s)
    assert a.dilations == naive.dilations(s)
    assert a.n_params == sum(k)
    assert a.offsets == tuple(int(x) for x in np.cumsum((0,) + k))
    # the end-to-end convolution has the same output width: d_N = (d0 - k_v) / s_v + 1
    assert (d0 - a.k_v) % a.s_v == 0
    assert a.d_N == (d0 - a.k_v) // a.s_v + 1


@given(arch_specs(), st.integers(0, 2**32 - 1))
def test_layer_product_is_one_convolution_with_width_kv_and_stride_sv(spec, seed):
    # Prop. 1.1 on the dense matrices: W_N ... W_1 == Pi_{(d0, d_N), k_v, s_v}(v), v = row 0
    d0, k, s = spec
    a = Architecture(d0, k, s)
    w = np.random.default_rng(seed).standard_normal(a.n_params)
    V = naive.product_matrix(w, d0, k, s)
    v = V[0, : a.k_v]
    assert np.all(V[0, a.k_v :] == 0)
    np.testing.assert_array_equal(V != 0, naive.conv_matrix(v, d0, a.s_v) != 0)
    np.testing.assert_allclose(V, naive.conv_matrix(v, d0, a.s_v), rtol=1e-12, atol=0)


@given(
    st.integers(1, 40),
    st.lists(st.integers(-1, 8), min_size=1, max_size=4),
    st.data(),
)
def test_random_d0_k_s_valid_iff_eq_1_5_holds_and_errors_name_first_bad_layer(d0, k, data):
    s = data.draw(st.lists(st.integers(-1, 4), min_size=len(k), max_size=len(k)))
    bad = naive.first_bad_layer(d0, k, s)
    if bad is None:
        a = Architecture(d0, k, s)
        assert a.d == naive.widths(d0, k, s)
    else:
        with pytest.raises(ValueError, match=rf"\blayer {bad}\b"):
            Architecture(d0, k, s)


@given(
    st.integers(1, 60),
    st.lists(st.integers(1, 5), min_size=1, max_size=3),
    st.data(),
)
def test_random_valid_architectures_accepted_with_assume(d0, k, data):
    # d0 drawn freely, invalid combinations rejected (the other strategy builds d0 backwards)
    s = data.draw(st.lists(st.integers(1, 3), min_size=len(k), max_size=len(k)))
    assume(naive.first_bad_layer(d0, k, s) is None)
    a = Architecture(d0, k, s)
    assert a.d == naive.widths(d0, k, s)
    assert min(a.d) >= 1


# ----------------------------------------------------------------------------- function space
def _reference_function_space_dim(k, s, seed):
    """Numerical rank of the FD Jacobian of the reference final filter, max over two points.

    The final filter is multilinear in the layers, so central differences are exact up to
    rounding (relative error ~1e-13); rtol 1e-9 separates zero from nonzero singular values.
    """
    rng = np.random.default_rng(seed)
    ranks = []
    for _ in range(2):
        w = rng.standard_normal(sum(k))
        J = naive.fd_jacobian(lambda x: naive.final_filter_small(x, k, s), w)
        ranks.append(naive.numerical_rank(J, rtol=1e-9))
    return max(ranks)


@given(arch_specs(max_depth=3, max_k=5), st.integers(0, 2**32 - 1))
def test_function_space_dim_equals_rank_of_fd_jacobian_of_reference_filter(spec, seed):
    d0, k, s = spec
    a = Architecture(d0, k, s)
    ref = _reference_function_space_dim(k, s, seed)
    assert a.function_space_dim == ref
    # it can never exceed k_v nor sum(k) - (N - 1) (the N - 1 rescalings of Prop. 1.1's remark)
    assert a.function_space_dim <= min(a.k_v, a.n_params - (a.depth - 1))


@pytest.mark.parametrize("k", [(1,), (4,), (2, 2), (3, 2, 4), (1, 5, 1), (2, 3, 2, 2)])
def test_function_space_dim_is_kv_for_stride_one(k):
    a = Architecture(sum(k) + 3, k)
    assert a.function_space_dim == a.k_v == sum(k) - (len(k) - 1)


@pytest.mark.parametrize(
    "k, s",
    [((2, 2), (2, 1)), ((2, 3), (2, 1)), ((3, 2, 2), (3, 2, 1)), ((2, 2, 2), (2, 2, 2)),
     ((1, 3), (2, 1)), ((3, 4), (3, 2))],
)
def test_function_space_dim_is_sum_k_minus_depth_plus_one_when_k_le_s(k, s):
    # k_i <= s_i: the layer polynomials use disjoint exponent digits, pi is a tensor product
    d = 2
    for ki, si in zip(reversed(k), reversed(s)):
        d = (d - 1) * si + ki
    a = Architecture(d, k, s)
    assert a.function_space_dim == sum(k) - (len(k) - 1)
    assert a.function_space_dim == _reference_function_space_dim(k, s, seed=5)


# ----------------------------------------------------------------------------- filling
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5))
def test_filling_stride_one_iff_at_most_one_even_filter(k):
    a = Architecture(sum(k) + 2, k)
    assert a.filling is (sum(ki % 2 == 0 for ki in k) <= 1)


@pytest.mark.parametrize(
    "k, expected", [((3, 3, 3), True), ((2, 3, 5), True), ((2, 2), False), ((4, 1, 2), False),
                    ((1, 1), True), ((2,), True)]
)
def test_filling_stride_one_examples(k, expected):
    assert Architecture(sum(k) + 1, k).filling is expected


@pytest.mark.parametrize("k, s", [((2, 2), (2, 1)), ((3, 2), (2, 1)), ((2, 3, 2), (1, 2, 1))])
def test_filling_false_when_function_space_dim_below_kv(k, s):
    d = 1
    for ki, si in zip(reversed(k), reversed(s)):
        d = (d - 1) * si + ki
    a = Architecture(d, k, s)
    assert a.function_space_dim < a.k_v
    assert a.filling is False


def test_filling_none_for_nonunit_stride_with_full_function_space():
    # k = (3, 1), s = (2, 1): v = w2 * w1, function_space_dim = k_v = 3, not decided by the
    # stride-one rule as implemented (documented: None = open)
    a = Architecture(5, (3, 1), (2, 1))
    assert a.function_space_dim == a.k_v == 3
    assert a.filling is None


@given(arch_specs(max_depth=3, max_k=4))
def test_filling_consistent_with_rule_for_every_architecture(spec):
    a = Architecture(*spec)
    if all(si == 1 for si in a.s):
        assert a.filling is (sum(ki % 2 == 0 for ki in a.k) <= 1)
    elif a.function_space_dim < a.k_v:
        assert a.filling is False
    else:
        assert a.filling is None


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "d0, k, s, layer",
    [
        (3, (4,), (1,), 1),  # k > d_in
        (8, (2, 5), (2, 1), 2),  # d1 = 4 < k2 = 5
        (8, (3,), (2,), 1),  # (8 - 3) / 2 not whole
        (9, (3, 3), (2, 2), 2),  # d1 = 4, (4 - 3) / 2 not whole
        (5, (2, 0), (1, 1), 2),  # k < 1
        (5, (-1,), (1,), 1),
        (5, (2, 2), (1, 0), 2),  # s < 1
        (5, (2, 2, 2), (1, 1, -2), 3),
        (5, (6, 0), (1, 1), 1),  # two bad layers: the first is named
        (6, (2, 3, 9), (2, 1, 1), 3),  # d = (6, 3, 1), then k3 = 9 > 1
    ],
)
def test_invalid_layer_raises_value_error_naming_first_bad_layer(d0, k, s, layer):
    assert naive.first_bad_layer(d0, k, s) == layer
    with pytest.raises(ValueError, match=rf"\blayer {layer}\b"):
        Architecture(d0, k, s)


@pytest.mark.parametrize("d0", [0, -3])
def test_d0_below_one_raises_value_error(d0):
    with pytest.raises(ValueError, match="d0"):
        Architecture(d0, (1,))


def test_mismatched_k_and_s_lengths_raise_value_error():
    with pytest.raises(ValueError, match="same length"):
        Architecture(10, (2, 2), (1,))
    with pytest.raises(ValueError, match="same length"):
        Architecture(10, (2,), (1, 1))


@pytest.mark.parametrize("k", [(), []])
def test_empty_k_raises_value_error(k):
    with pytest.raises(ValueError, match="at least one layer"):
        Architecture(10, k)


@pytest.mark.parametrize(
    "d0, k, s, pattern",
    [
        (2.5, (1,), None, "d0"),
        ("3", (1,), None, "d0"),
        (None, (1,), None, "d0"),
        (5, (2.5,), None, r"layer 1\b"),
        (5, ("3",), None, r"layer 1\b"),
        (5, (2, "3"), None, r"layer 2\b"),
        (5, (2, 2), (1, 1.5), r"layer 2\b"),
        (5, (2,), ("1",), r"layer 1\b"),
        (5, 3, None, r"\bk\b"),
        (5, (2,), 1, r"\bs\b"),
    ],
)
def test_non_integer_widths_or_strides_raise_type_error(d0, k, s, pattern):
    with pytest.raises(TypeError, match=pattern):
        Architecture(d0, k, s)


def test_whole_floats_and_numpy_integers_are_accepted_as_integers():
    ref = Architecture(8, (4,), (2,))
    assert Architecture(8.0, (4.0,), (2.0,)) == ref
    assert Architecture(np.int64(8), np.array([4]), np.array([2], dtype=np.int32)) == ref
    assert all(type(x) is int for x in ref.d + ref.k + ref.s + (ref.k_v, ref.s_v))
    assert all(type(x) is int for x in Architecture(np.int64(8), np.array([4]), [2]).d)


def test_bool_widths_raise_type_error():
    with pytest.raises(TypeError):
        Architecture(True, (1,))
    with pytest.raises(TypeError):
        Architecture(3, (True,))


# ----------------------------------------------------------------------------- small API
def test_equality_hash_to_dict_and_repr():
    a = Architecture(27, (3, 4, 3), (2, 3, 1))
    b = Architecture(27, [3, 4, 3], [2, 3, 1])
    c = Architecture(27, (3, 4, 3), (2, 3, 1))
    assert a == b == c and hash(a) == hash(b)
    assert a != Architecture(28, (4, 4, 3), (2, 3, 1))
    assert a != (27, (3, 4, 3), (2, 3, 1))
    assert a.to_dict() == {"d0": 27, "k": [3, 4, 3], "s": [2, 3, 1]}
    assert Architecture(**a.to_dict()) == a
    assert "d0=27" in repr(a)
    assert math.prod(a.s) == a.s_v
