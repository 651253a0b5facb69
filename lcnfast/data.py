"""Synthetic data and initialisations. All randomness is drawn here, in Python, with numpy
Generators (never inside kernels), so results do not depend on threads or batching."""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import numpy as np

from .architecture import Architecture
from .problem import as_real_array, window_gram

__all__ = [
    "TeacherData",
    "teacher",
    "initial_filters",
    "low_rank_inputs",
    "gram_singular_inputs",
    "gram_near_singular_inputs",
    "teacher_for_inputs",
]


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


def _rng(seed):
    """``numpy.random.default_rng(seed)``, its errors naming ``seed`` (a bool is refused: numpy
    would take True as the seed 1)."""
    if isinstance(seed, (bool, np.bool_)):
        raise TypeError(f"seed must be None, a whole number >= 0, a SeedSequence or a Generator, "
                        f"got {seed!r}")
    try:
        return np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise type(e)(
            f"seed must be None, a whole number >= 0, a SeedSequence or a Generator, got "
            f"{seed!r} ({e})"
        ) from None


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


def _teacher_targets(arch, X, rng, noise):
    """Draw teacher filters (N(0, 1)) from rng, then Y = teacher(X) + noise * N(0, 1)."""
    from ._batches import final_filter_batch

    w_t = rng.standard_normal(arch.n_params)
    v_t = final_filter_batch(
        w_t[None, :],
        np.asarray(arch.k, np.int64),
        np.asarray(arch.dilations, np.int64),
        np.asarray(arch.offsets, np.int64),
        arch.k_v,
    )[0]
    Y = conv_apply(v_t, X, arch.s_v)
    if noise > 0:
        Y = Y + noise * rng.standard_normal(Y.shape)
    return TeacherData(X, Y, w_t, v_t)


def teacher(arch, m, *, noise=0.0, seed=None):
    """Teacher-student data for ``arch`` with ``m`` samples.

    The teacher is an LCN of the same architecture with N(0, 1) filter entries, so its final
    filter is realisable; ``noise`` is the standard deviation of i.i.d. Gaussian noise on Y.
    Returns a :class:`TeacherData`.
    """
    _check_arch(arch)
    m = _check_count(m, "m")
    noise = _check_nonneg(noise, "noise")
    rng = _rng(seed)
    X = rng.standard_normal((arch.d0, m)) / np.sqrt(m)
    return _teacher_targets(arch, X, rng, noise)


def initial_filters(arch, K, *, scale=1.0, seed=None):
    """K initial parameter vectors (K, n_params), entries i.i.d. N(0, scale^2).

    Rows are drawn in order from one stream, so the first K rows do not depend on how many
    more are asked for: ``initial_filters(a, 10, seed=s)[:5] == initial_filters(a, 5, seed=s)``.
    """
    _check_arch(arch)
    K = _check_count(K, "K")
    scale = _check_nonneg(scale, "scale")
    rng = _rng(seed)
    return scale * rng.standard_normal((K, arch.n_params))


# ----------------------------------------------------------------------------- rank conditions
# Two conditions on the inputs X (d0, m) matter for Lemma 3.6 / Theorem 3.4: the
# paper's hypothesis rank(X X^T) = d0, and the weaker one that the window Gram
# A = sum_{i,j} x_ij x_ij^T (k_v, k_v) over all windows x_ij = X[j s_v : j s_v + k_v, i] is
# positive definite (v -> V X injective). The generators below separate them. Ranks are
# checked with numpy's default tolerance (max(shape) * eps * sigma_max); a draw that misses
# the promised ranks (a probability-zero event for the Gaussian constructions when the request
# is feasible) is redrawn a few times before a ValueError.

_MAX_DRAWS = 8


def _rank_sym(A):
    ev = np.linalg.eigvalsh(A)
    if ev[-1] <= 0:
        return 0
    return int(np.sum(ev > A.shape[0] * np.finfo(float).eps * ev[-1]))


def _conv_matrix(u, d0, s_v):
    """Dense (d_N, d0) convolution matrix of filter u (k_v,) with stride s_v (eq. 1.4)."""
    k_v = u.shape[0]
    d_N = (d0 - k_v) // s_v + 1
    U = np.zeros((d_N, d0))
    for j in range(d_N):
        U[j, j * s_v : j * s_v + k_v] = u
    return U


def low_rank_inputs(arch, m, rank, *, seed=None):
    """Inputs X (d0, m) with rank(X X^T) = ``rank`` and a positive definite window Gram A.

    ``X = B C / sqrt(rank m)`` with B (d0, rank), C (rank, m) i.i.d. N(0, 1), so entries have
    variance 1/m as in :func:`teacher`. With ``rank < d0`` (necessarily so when m < d0,
    including m = 1) the paper's hypothesis fails while A stays positive definite: the d_N
    windows of a generic rank-r column space span R^{k_v} when ``d_N * rank >= k_v``.

    Parameters
    ----------
    arch : Architecture
    m : int >= 1
        Number of samples.
    rank : int
        ``1 <= rank <= min(d0, m)``.
    seed : int, Generator or None

    Returns
    -------
    ndarray (d0, m)

    Raises
    ------
    ValueError
        If ``rank`` is out of range or ``d_N * rank < k_v`` (then A is singular for every X of
        that rank: use :func:`gram_singular_inputs` for that case).
    """
    _check_arch(arch)
    m = _check_count(m, "m")
    rank = _check_count(rank, "rank")
    if rank > min(arch.d0, m):
        raise ValueError(f"rank must be <= min(d0, m) = {min(arch.d0, m)}, got {rank}")
    if arch.d_N * rank < arch.k_v:
        raise ValueError(
            f"rank: the windows of a rank-{rank} X span at most d_N * rank = "
            f"{arch.d_N * rank} < k_v = {arch.k_v} dimensions, so A cannot be positive definite"
        )
    rng = _rng(seed)
    for _ in range(_MAX_DRAWS):
        B = rng.standard_normal((arch.d0, rank))
        C = rng.standard_normal((rank, m))
        X = (B @ C) / np.sqrt(rank * m)
        if np.linalg.matrix_rank(X) == rank and _rank_sym(window_gram(arch, X.T)) == arch.k_v:
            return X
    raise ValueError(  # pragma: no cover - probability zero for feasible requests
        f"could not draw X of rank {rank} with a positive definite window Gram for {arch!r}"
    )


def gram_singular_inputs(arch, m, *, nullity=1, seed=None):
    """Inputs X (d0, m) whose window Gram A has exactly ``nullity`` zero eigenvalues.

    Draw ``nullity`` filters u_l (k_v,) and take the columns of X in the common null space of
    their convolution matrices U_l (d_N, d0), stride s_v: then ``u_l^T A u_l = ||U_l X||^2 = 0``,
    so v -> V X is not injective (V X is unchanged by adding any combination of the u_l to v)
    and X X^T is singular as well. The null space has dimension at least
    ``d0 - nullity * d_N``, which must be >= 1; X has that many random directions (rank
    ``min(null dimension, m)``), entries of variance about 1/m.

    Parameters
    ----------
    arch : Architecture
    m : int >= 1
    nullity : int >= 1
        Dimension of the kernel of A; at most ``k_v - 1``.
    seed : int, Generator or None

    Returns
    -------
    ndarray (d0, m)

    Raises
    ------
    ValueError
        If the request is infeasible: ``nullity >= k_v`` (so always for ``k_v = 1``), an empty
        common null space, or too few windows to span the rest of R^{k_v}
        (``d_N * min(m, p) < k_v - nullity`` with p the null-space dimension).
    """
    _check_arch(arch)
    m = _check_count(m, "m")
    nullity = _check_count(nullity, "nullity")
    if nullity >= arch.k_v:
        raise ValueError(
            f"nullity must be < k_v = {arch.k_v} (A = 0 needs X = 0), got {nullity}"
        )
    rng = _rng(seed)
    for _ in range(_MAX_DRAWS):
        U = np.concatenate(
            [_conv_matrix(rng.standard_normal(arch.k_v), arch.d0, arch.s_v) for _ in range(nullity)]
        )
        _, s, Vt = np.linalg.svd(U)
        r = int(np.sum(s > max(U.shape) * np.finfo(float).eps * s[0]))
        null = Vt[r:].T  # (d0, p)
        p = null.shape[1]
        if p == 0:
            raise ValueError(
                f"nullity: the {nullity} convolution constraints leave no inputs "
                f"(d0 = {arch.d0}, d_N = {arch.d_N}); use a smaller nullity"
            )
        if arch.d_N * min(p, m) < arch.k_v - nullity:
            raise ValueError(
                f"m: the {arch.d_N} x min(m, {p}) windows span at most "
                f"{arch.d_N * min(p, m)} < k_v - nullity = {arch.k_v - nullity} dimensions; "
                f"need d_N * min(m, {p}) >= {arch.k_v - nullity} (more samples or a smaller k_v)"
            )
        X = null @ rng.standard_normal((p, m)) * np.sqrt(arch.d0 / (p * m))
        if _rank_sym(window_gram(arch, X.T)) == arch.k_v - nullity:
            return X
    raise ValueError(
        f"could not make the window Gram of {arch!r} have nullity {nullity} with m = {m} "
        "samples (too few windows to span the rest of R^k_v); use more samples"
    )


def gram_near_singular_inputs(arch, m, eps, *, seed=None):
    """Inputs X (d0, m) whose window Gram A is positive definite but nearly singular.

    ``X = X0 + eps * G`` with X0 from :func:`gram_singular_inputs` (nullity 1, kernel spanned
    by a unit filter u) and G with i.i.d. N(0, 1/m) entries: ``u^T A u = ||U (X0 + eps G)||^2
    = eps^2 ||U G||^2``, so the smallest eigenvalue of A is O(eps^2) times its typical one,
    while the rest of the spectrum is that of the singular A up to O(eps). X X^T has full
    rank when m >= d0 (G is generic). The studied limit is eps -> 0 (the singular case).

    Parameters
    ----------
    arch : Architecture
    m : int >= 1
    eps : float > 0
        Size of the generic perturbation.
    seed : int, Generator or None

    Returns
    -------
    ndarray (d0, m)
    """
    _check_arch(arch)
    m = _check_count(m, "m")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    if not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    rng = _rng(seed)
    X0 = gram_singular_inputs(arch, m, nullity=1, seed=rng)
    return X0 + eps * rng.standard_normal((arch.d0, m)) / np.sqrt(m)


def teacher_for_inputs(arch, X, *, noise=0.0, seed=None):
    """Teacher-student targets for given inputs X (d0, m): as :func:`teacher` but with X
    supplied (e.g. from :func:`low_rank_inputs` or :func:`gram_singular_inputs`).

    Returns a :class:`TeacherData` (X is copied as float64).
    """
    _check_arch(arch)
    X = np.array(as_real_array(X, "X"))  # complex X lost its imaginary part; strings passed
    if X.ndim != 2 or X.shape[0] != arch.d0 or X.shape[1] < 1:
        raise ValueError(f"X must have shape (d0={arch.d0}, m) with m >= 1, got {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("X contains NaN or Inf")
    noise = _check_nonneg(noise, "noise")
    rng = _rng(seed)
    return _teacher_targets(arch, X, rng, noise)
