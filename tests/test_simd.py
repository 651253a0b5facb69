"""lcnfast._simd: the quotient of the log-cosh tanh without the divider, and 512-bit vectors."""

import re

import llvmlite.binding as llvm
import numba as nb
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lcnfast import _simd

needs_avx512 = pytest.mark.skipif(
    not _simd.RCP14, reason="vrcp14pd needs AVX-512, which the CPU Numba compiles for lacks")


def _ulps(got, exact):
    """|got - exact| in units of the spacing at |exact| (0 where both are equal or both NaN)."""
    both_nan = np.isnan(got) & np.isnan(exact)
    diff = np.where(both_nan, 0.0, np.abs(got - exact))
    return diff / np.spacing(np.abs(exact))


# the data path divides the tanh's numerator by its denominator: den in [1, ~2^1013]
# (2^k + 1 with |k| <= 1010 times a quadratic near 2), |num| <= den, down to subnormal
# quotients (tanh of a tiny residual); here den up to 2^1020 and num / den from 1e-320 to 1
_dens = st.floats(1.0, 2.0**1020)
_ratios = st.one_of(st.floats(-1.0, 1.0), st.floats(1e-320, 1e-300), st.sampled_from([0.0, -0.0]))


@needs_avx512
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_dens, _ratios), min_size=1, max_size=40), st.integers(0, 7))
@example([(1.0, 0.0), (1.0, -0.0), (3.0, 1.0), (2.0**1020, -1.0), (2.0**1000, 1e-320)], 0)
def test_quotient_rcp14_is_within_one_ulp_of_the_division(pairs, offset):
    """Claim: vrcp14pd (relative error < 2^-14), one Newton step (< 2^-27) and one correction
    of the quotient leave an error of ~2^-54 relative before the last rounding, so g is the
    correctly rounded quotient or its neighbour: at most 1 ulp (subnormal quotients too, where
    the ulp is 2^-1074), and -0 / den = -0. Lengths 1..40 and views starting anywhere run
    both the 8-wide body and the lane-0 tail."""
    den = np.array([d for d, _ in pairs])
    num = np.array([r * d for d, r in pairs])
    buf = np.zeros(3 * (len(pairs) + 8))
    nv, dv, gv = (buf[k * (len(pairs) + 8) + offset:][: len(pairs)] for k in range(3))
    nv[:] = num
    dv[:] = den
    _simd.quotient_rcp14(nv, dv, gv, len(pairs))
    exact = num / den
    assert _ulps(gv, exact).max() <= 1.0, (gv, exact)
    np.testing.assert_array_equal(np.signbit(gv), np.signbit(exact))


@needs_avx512
def test_quotient_rcp14_propagates_nan_and_is_the_same_anywhere_and_in_place():
    """NaN in num or den gives NaN; each element's quotient depends on its num and den only
    (the same bits in the 8-wide body, in the tail, at any offset), and g may be num."""
    rng = np.random.default_rng(5)
    den = np.exp(rng.uniform(0, 700, 37))
    num = den * rng.uniform(-1, 1, 37)
    num[3] = np.nan
    den[11] = np.nan
    g = np.empty(37)
    _simd.quotient_rcp14(num, den, g, 37)
    assert np.isnan(g[3]) and np.isnan(g[11])
    assert np.isfinite(np.delete(g, [3, 11])).all()
    for start in range(1, 9):
        part = np.empty(37 - start)
        _simd.quotient_rcp14(num[start:], den[start:], part, 37 - start)
        np.testing.assert_array_equal(part, g[start:])
    in_place = num.copy()
    _simd.quotient_rcp14(in_place, den, in_place, 37)
    np.testing.assert_array_equal(in_place, g)
    untouched = np.full(40, 7.0)
    _simd.quotient_rcp14(num, den, untouched, 29)  # writes the first 29 only
    assert (untouched[29:] == 7.0).all()


def test_quotient_div_is_the_division_and_quotient_is_chosen_by_the_cpu():
    rng = np.random.default_rng(6)
    den = rng.uniform(1, 10, 21)
    num = rng.uniform(-10, 10, 21)
    g = np.empty(21)
    _simd.quotient_div(num, den, g, 21)
    np.testing.assert_array_equal(g, num / den)
    assert _simd.quotient is (_simd.quotient_rcp14 if _simd.RCP14 else _simd.quotient_div)


def _axpy_asm(with_prefer_512):
    """The assembly of a fresh (uncached) saxpy loop, with or without prefer_512()."""
    if with_prefer_512:
        def axpy(a, x, y, n):
            _simd.prefer_512()
            for t in range(n):
                y[t] += a * x[t]
    else:
        def axpy(a, x, y, n):
            for t in range(n):
                y[t] += a * x[t]
    f = nb.njit(axpy)
    x = np.ones(64)
    y = np.zeros(64)
    f(2.0, x, y, 64)
    assert (y == 2.0).all()
    sig = f.signatures[0]
    return f.inspect_llvm(sig), f.inspect_asm(sig)


def test_prefer_512_sets_the_attribute_and_512_bit_vectors_follow_on_avx512():
    """The attribute and noinline are in the function's IR; with AVX-512 the loop is
    vectorised with zmm registers. Without the attribute LLVM picks by its tuning for the CPU:
    256 bits on Intel's AVX-512 cores (the data path's case: README, "How it is fast"), 512 on
    AMD's Zen 4 and 5 ("znver4", "znver5": LLVM's tuning there does not prefer 256 bits; seen
    on a Zen 5 host on 2026-12-08), where the attribute changes nothing."""
    ir_text, asm = _axpy_asm(True)
    assert '"prefer-vector-width"="512"' in ir_text and "noinline" in ir_text
    _, asm_default = _axpy_asm(False)
    if _simd.RCP14:
        assert re.search(r"v(mul|add|fmadd\w*)pd\s+[^\n]*zmm", asm)
        if not llvm.get_host_cpu_name().startswith("znver"):
            assert "zmm" not in asm_default
    else:
        assert "zmm" not in asm
