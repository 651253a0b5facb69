"""Hypothesis strategies and small helpers shared by the test modules."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import strategies as st

from lcnfast import Architecture, losses

# Every loss of eq. (1.8) / section 3.3 with the parameter values the tests use.
LOSS_SPECS = (
    [("square", ())]
    + [("lp", (p,)) for p in (1.0, 2.0, 3.0, 4.0, 6.0)]
    + [("pseudo_huber", (d,)) for d in (0.3, 1.0, 4.0)]
    + [("generalized_huber", (a, b)) for a in (0.3, 1.0, 4.0) for b in (-1.5, -0.5, 0.0, 1.0, 3.0)]
    + [("log_cosh", (a,)) for a in (0.3, 1.0, 4.0)]
)


def spec_id(spec):
    name, params = spec
    return name + "".join(f"-{p:g}" for p in params)


def make_loss(name, params):
    """The lcnfast Loss for a spec, without the (tested elsewhere) non-analytic lp warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return getattr(losses, name)(*params)


@st.composite
def arch_specs(draw, min_depth=1, max_depth=4, max_k=6, max_s=3, max_dN=4):
    """A valid (d0, k, s): filter widths and strides drawn freely, d0 built backwards from a
    drawn output width with d_{i-1} = (d_i - 1) s_i + k_i, so that eq. (1.5) holds and d0
    stays modest (at most a few hundred)."""
    N = draw(st.integers(min_depth, max_depth))
    k = tuple(draw(st.lists(st.integers(1, max_k), min_size=N, max_size=N)))
    s = tuple(draw(st.lists(st.integers(1, max_s), min_size=N, max_size=N)))
    d = draw(st.integers(1, max_dN))
    for ki, si in zip(reversed(k), reversed(s)):
        d = (d - 1) * si + ki
    return d, k, s


def architectures(**kw):
    return arch_specs(**kw).map(lambda t: Architecture(*t))


def random_params(rng, arch, scale=1.0):
    """Parameters with layer i ~ N(0, scale^2 / k_i), so that the final filter stays O(scale^N)."""
    return np.concatenate(
        [scale * rng.standard_normal(ki) / np.sqrt(ki) for ki in arch.k]
    )
