"""Synthetic data and initialisations. All randomness is drawn here, in Python, with numpy
Generators (never inside kernels), so results do not depend on threads or batching."""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from .architecture import Architecture

__all__ = ["TeacherData", "teacher", "initial_filters"]


class TeacherData(NamedTuple):
    """Data from a teacher LCN: ``Y = V_teacher X + noise * E``.

    X : (d0, m), entries i.i.d. N(0, 1/m).
    Y : (d_N, m).
    w_teacher : (n_params,) teacher parameters, entries i.i.d. N(0, 1).
    v_teacher : (k_v,) the teacher's final filter pi(w_teacher).
    """

    X: np.ndarray
    Y: np.ndarray
    w_teacher: np.ndarray
    v_teacher: np.ndarray


def _check_arch(arch):
    if not isinstance(arch, Architecture):
        raise TypeError(f"arch must be an Architecture, got {type(arch).__name__}")


def _check_count(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _check_nonneg(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return float(value)


def conv_apply(v, X, s_v):
    """Apply the convolution with filter v (k_v,) and stride s_v to the columns of X (d0, m)."""
    k_v = v.shape[0]
    win = np.lib.stride_tricks.sliding_window_view(X, k_v, axis=0)[::s_v]  # (d_N, m, k_v)
    return win @ v


def teacher(arch, m, *, noise=0.0, seed=None):
    """Teacher-student data for ``arch`` with ``m`` samples.

    The teacher is an LCN of the same architecture with N(0, 1) filter entries, so its final
    filter is realisable; ``noise`` is the standard deviation of i.i.d. Gaussian noise on Y.
    Returns a :class:`TeacherData`.
    """
    _check_arch(arch)
    m = _check_count(m, "m")
    noise = _check_nonneg(noise, "noise")
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((arch.d0, m)) / np.sqrt(m)
    w_t = rng.standard_normal(arch.n_params)
    from ._kernels import final_filter_batch

    v_t = final_filter_batch(
        w_t[None, :],
        np.asarray(arch.k, np.int64),
        np.asarray(arch.dilations, np.int64),
        np.asarray(arch.offsets, np.int64),
        arch.k_v,
        1,
    )[0]
    Y = conv_apply(v_t, X, arch.s_v)
    if noise > 0:
        Y = Y + noise * rng.standard_normal(Y.shape)
    return TeacherData(X, Y, w_t, v_t)


def initial_filters(arch, K, *, scale=1.0, seed=None):
    """K initial parameter vectors (K, n_params), entries i.i.d. N(0, scale^2).

    Rows are drawn in order from one stream, so the first K rows do not depend on how many
    more are asked for: ``initial_filters(a, 10, seed=s)[:5] == initial_filters(a, 5, seed=s)``.
    """
    _check_arch(arch)
    K = _check_count(K, "K")
    scale = _check_nonneg(scale, "scale")
    rng = np.random.default_rng(seed)
    return scale * rng.standard_normal((K, arch.n_params))
