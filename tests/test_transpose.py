"""lcnfast._transpose: rows of a batch to lanes and back, against numpy's transpose, bit for bit."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lcnfast import _transpose

# bit patterns a kernel must see unchanged: signed zeros, infinities, NaNs with payloads and
# sign, subnormals (compared as int64 below, so -0.0 != 0.0 and NaN payloads count)
_SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, 5e-324, -2.5e-310, 1.0, -1.0]
                    + [np.int64(v).view(np.float64) for v in (0x7FF8000000000001,
                                                              -0x0007FFFFFFFFFFFF)])


def _batch(K, n, seed):
    """(K, n) random doubles, a tenth of them special bit patterns."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((K, n))
    mask = rng.random((K, n)) < 0.1
    W[mask] = rng.choice(_SPECIAL, mask.sum())
    return W


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 23), K=st.integers(1, 70), data=st.data())
@example(n=9, K=64, data=None)  # the square-loss benchmark's (3, 3, 3): two 4-blocks and a column
@example(n=4, K=8, data=None)  # whole blocks only
def test_rows_to_lanes_and_back_are_the_transposes_bit_for_bit(n, K, data):
    """Claim: rows f0..f0+c-1 of W land in the first c lanes of Wl transposed, nothing else of
    Wl is written, and lanes_to_rows puts them back into exactly those rows of G: bit copies
    (compared as int64), for every n (the 4 x 4 blocks, the last n % 4 parameters), every c
    (the last c % 4 flows) and any offsets f0 (unaligned blocks)."""
    if data is None:
        f0, c, extra = 0, K, 0
    else:
        f0 = data.draw(st.integers(0, K - 1))
        c = data.draw(st.integers(1, K - f0))
        extra = data.draw(st.integers(0, 5))
    W = _batch(K, n, seed=K * 31 + n)
    Wl = np.full((n, c + extra), 7.0)
    _transpose.rows_to_lanes(W, f0, c, Wl)
    assert np.array_equal(Wl[:, :c].view(np.int64), W[f0:f0 + c].T.view(np.int64))
    assert np.all(Wl[:, c:] == 7.0)

    G = np.full((K, n), 3.0)
    _transpose.lanes_to_rows(Wl, c, G, f0)
    assert np.array_equal(G[f0:f0 + c].view(np.int64), W[f0:f0 + c].view(np.int64))
    assert np.all(G[:f0] == 3.0) and np.all(G[f0 + c:] == 3.0)


def test_transpose4x4_refuses_arrays_it_cannot_read_as_flat_doubles():
    """The intrinsic takes flat C-contiguous float64 arrays: anything else is a typing error
    naming the argument, not a misread of memory."""
    from numba import njit
    from numba.core.errors import TypingError

    @njit
    def call(src, dst):
        _transpose._transpose4x4(src, 0, 4, dst, 0, 4)

    with pytest.raises(TypingError, match="src must be a C-contiguous 1-d float64"):
        call(np.zeros(16, np.float32), np.zeros(16))
    with pytest.raises(TypingError, match="dst must be a C-contiguous 1-d float64"):
        call(np.zeros(16), np.zeros((4, 4)))
