"""LCN architectures (paper section 1.1, Prop. 1.1 and 2.1).

An architecture is fixed by the input width ``d0``, the filter widths ``k = (k_1..k_N)`` and
the strides ``s = (s_1..s_N)``; the layer widths follow from eq. (1.5),
``d_i = (d_{i-1} - k_i) / s_i + 1`` (no padding), which must be a whole number >= 1.

Parameters of all layers are stored in one flat vector ``w`` of length ``n_params = sum(k)``:
layer ``i`` (0-based) occupies ``w[offsets[i]:offsets[i + 1]]``.
"""

from __future__ import annotations

import functools
import numbers

import numpy as np

__all__ = ["Architecture"]


def _as_whole(value, what):
    """An int from an integral value (3, np.int64(3) or 3.0); TypeError otherwise (bools too)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be a whole number, got the boolean {value!r}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    raise TypeError(f"{what} must be a whole number, got {value!r}")


class Architecture:
    """A linear convolutional network architecture ``(d0; k; s)``.

    Parameters
    ----------
    d0 : int
        Input width (>= 1).
    k : sequence of int
        Filter widths ``k_1..k_N`` (each >= 1).
    s : sequence of int, optional
        Strides ``s_1..s_N`` (each >= 1); default all ones.

    Raises
    ------
    ValueError
        Naming the first bad layer and why (filter wider than its input, width not whole, ...).
    TypeError
        If a width or stride is not a whole number.

    Attributes
    ----------
    d : tuple of int
        All layer widths ``(d_0, ..., d_N)``.
    k, s : tuple of int
        Filter widths and strides.
    depth : int
        Number of layers N.
    dilations : tuple of int
        ``S_i = s_1 ... s_{i-1}`` (``S_1 = 1``): the exponent spacing of layer polynomial (2.1).
    k_v, s_v : int
        Width and stride of the final filter (Prop. 1.1).
    n_params : int
        ``sum(k)``.
    offsets : tuple of int
        Length N + 1; layer ``i`` is ``w[offsets[i]:offsets[i+1]]``.
    """

    def __init__(self, d0, k, s=None):
        d0 = _as_whole(d0, "d0")
        if d0 < 1:
            raise ValueError(f"d0 must be >= 1, got {d0}")
        try:
            k = tuple(k)
        except TypeError:
            raise TypeError(f"k must be a sequence of filter widths, got {k!r}") from None
        if len(k) == 0:
            raise ValueError("k must name at least one layer")
        if s is None:
            s = (1,) * len(k)
        try:
            s = tuple(s)
        except TypeError:
            raise TypeError(f"s must be a sequence of strides, got {s!r}") from None
        if len(s) != len(k):
            raise ValueError(f"k and s must have the same length, got {len(k)} and {len(s)}")
        k = tuple(_as_whole(ki, f"k[{i}] (layer {i + 1})") for i, ki in enumerate(k))
        s = tuple(_as_whole(si, f"s[{i}] (layer {i + 1})") for i, si in enumerate(s))
        d = [d0]
        for i, (ki, si) in enumerate(zip(k, s)):
            layer = f"layer {i + 1}"
            if ki < 1:
                raise ValueError(f"{layer}: filter width k={ki} must be >= 1")
            if si < 1:
                raise ValueError(f"{layer}: stride s={si} must be >= 1")
            if ki > d[-1]:
                raise ValueError(
                    f"{layer}: filter width k={ki} exceeds its input width d={d[-1]} (no padding)"
                )
            if (d[-1] - ki) % si:
                raise ValueError(
                    f"{layer}: (d_in - k) / s = ({d[-1]} - {ki}) / {si} is not a whole number, "
                    f"so the output width is not defined (eq. 1.5)"
                )
            d.append((d[-1] - ki) // si + 1)
        self.d = tuple(d)
        self.k = k
        self.s = s
        self.depth = len(k)
        dil = [1]
        for si in s[:-1]:
            dil.append(dil[-1] * si)
        self.dilations = tuple(dil)
        self.k_v = 1 + sum((ki - 1) * Si for ki, Si in zip(k, dil))
        self.s_v = int(np.prod(s))
        self.n_params = sum(k)
        self.offsets = tuple(int(o) for o in np.concatenate([[0], np.cumsum(k)]))

    # ------------------------------------------------------------------ derived facts
    @property
    def d0(self):
        return self.d[0]

    @property
    def d_N(self):
        return self.d[-1]

    def layer_slice(self, i):
        """Slice of layer ``i`` (0-based, ``0 <= i < depth``) in the flat parameter vector."""
        if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < self.depth:
            raise IndexError(f"layer index must be a whole number in [0, {self.depth}), got {i!r}")
        return slice(self.offsets[i], self.offsets[i + 1])

    @functools.cached_property
    def function_space_dim(self):
        """Generic rank of the Jacobian of pi (the dimension of the function space).

        Equals ``k_v`` for stride 1 and ``sum(k) - (N - 1)`` when every ``k_i <= s_i``. In
        general it is computed as the numerical rank of the Jacobian at two random points
        (generic points realise the generic rank with probability one).
        """
        from ._batches import jacobian_batch  # local: keeps import of this module light

        rng = np.random.default_rng(20260113)
        w = rng.standard_normal((2, self.n_params))
        J = jacobian_batch(
            w, np.asarray(self.k, np.int64), np.asarray(self.dilations, np.int64), self.k_v
        )
        ranks = [np.linalg.matrix_rank(Jk) for Jk in J]
        return int(max(ranks))

    @property
    def filling(self):
        """Whether the image of pi is all of R^{k_v}, where the literature decides it.

        True/False for stride 1 (filling iff at most one k_i is even, [7, Thm 4.1]); False when
        ``function_space_dim < k_v``; None otherwise (open).
        """
        if all(si == 1 for si in self.s):
            return sum(1 for ki in self.k if ki % 2 == 0) <= 1
        if self.function_space_dim < self.k_v:
            return False
        return None

    def to_dict(self):
        """Plain-data description (for Dataset attributes and configs)."""
        return {"d0": self.d0, "k": list(self.k), "s": list(self.s)}

    def __eq__(self, other):
        return isinstance(other, Architecture) and (self.d0, self.k, self.s) == (
            other.d0,
            other.k,
            other.s,
        )

    def __hash__(self):
        return hash((self.d0, self.k, self.s))

    def __repr__(self):
        return f"Architecture(d0={self.d0}, k={self.k}, s={self.s})"
