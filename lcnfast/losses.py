"""Loss functions of the paper (eq. 1.8 and section 3.3), as per-coordinate functions of the
residual ``r = z - y``.

Every loss is a sum over output coordinates and samples of a scalar function ``l(r)``:

=====================  ===========================================  =======================
constructor            l(r)                                         Theorem 3.8 covers it
=====================  ===========================================  =======================
``square()``           r**2  (no 1/2, eq. 1.8)                      yes
``lp(p)``              |r|**p / p                                   for even p
``pseudo_huber(d)``    d * sqrt(1 + r**2 / d**2)                    d > 0
``generalized_huber``  log(exp(a r) + exp(-a r) + b) / a            a > 0, b > -2
``log_cosh(a)``        log(cosh(a r)) / a                           a > 0
=====================  ===========================================  =======================

Values, first and second derivatives are evaluated without overflow for any finite residual
(log cosh and the generalized Huber loss are rewritten in terms of ``exp(-2 a |r|)``).
Inside kernels a loss is chosen by an integer code and two float parameters (no function
arguments to jitted code); :class:`Loss` carries both.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass

import numba as nb
import numpy as np
from numba import types
from numba.extending import intrinsic

from ._jit import CACHE as _CACHE

__all__ = ["Loss", "square", "lp", "pseudo_huber", "generalized_huber", "log_cosh"]

SQUARE, LP, PSEUDO_HUBER, GENERALIZED_HUBER, LOG_COSH = 0, 1, 2, 3, 4
_NAMES = {
    SQUARE: "square",
    LP: "lp",
    PSEUDO_HUBER: "pseudo_huber",
    GENERALIZED_HUBER: "generalized_huber",
    LOG_COSH: "log_cosh",
}


# ----------------------------------------------------------------------------- scalar kernels
@nb.njit(cache=_CACHE, inline="always")
def _gh_den(em, e, beta):
    """1 + e^2 + beta e for e = exp(-a), a >= 0, em = 1 - e (by expm1), written
    (1 - e)^2 + (2 + beta) e: a sum of
    two non-negative terms for beta > -2 (the first by expm1), where 1 + e^2 + beta e cancels
    as beta nears -2 (at beta = -1.9999999 and a ~ 1 it lost ~7 digits); 2 + beta is exact
    for beta in [-2, -1] (Sterbenz)."""
    return em * em + (2.0 + beta) * e


@nb.njit(cache=_CACHE, inline="always")
def loss_value(code, p0, p1, r):
    """l(r) for loss ``code`` with parameters ``(p0, p1)``."""
    if code == SQUARE:
        return r * r
    elif code == LP:
        return abs(r) ** p0 / p0
    elif code == PSEUDO_HUBER:
        return p0 * math.hypot(1.0, r / p0)
    elif code == GENERALIZED_HUBER:
        a = p0 * abs(r)
        return (a + math.log(_gh_den(-math.expm1(-a), math.exp(-a), p1))) / p0
    else:  # LOG_COSH
        a = p0 * abs(r)
        if a < 0.5:  # cosh(a) - 1 = 2 sinh(a/2)^2 without cancellation
            sh = math.sinh(0.5 * a)
            return math.log1p(2.0 * sh * sh) / p0
        e = math.exp(-2.0 * a)
        return (a + math.log1p(e) - math.log(2.0)) / p0


@nb.njit(cache=_CACHE, inline="always")
def loss_d1(code, p0, p1, r):
    """l'(r)."""
    if code == SQUARE:
        return 2.0 * r
    elif code == LP:
        if r == 0.0:
            return 0.0
        return math.copysign(abs(r) ** (p0 - 1.0), r)
    elif code == PSEUDO_HUBER:
        u = r / p0
        return u / math.hypot(1.0, u)
    elif code == GENERALIZED_HUBER:
        a = p0 * abs(r)
        den = _gh_den(-math.expm1(-a), math.exp(-a), p1)
        return math.copysign(-math.expm1(-2.0 * a) / den, r)
    else:  # LOG_COSH
        return math.tanh(p0 * r)


@nb.njit(cache=_CACHE, inline="always")
def loss_d2(code, p0, p1, r):
    """l''(r). For lp with 1 < p < 2 it is +inf at r = 0 (and 0 for p = 1, r != 0)."""
    if code == SQUARE:
        return 2.0
    elif code == LP:
        if p0 == 1.0:
            return 0.0
        if p0 == 2.0:
            return 1.0
        if r == 0.0:
            return math.inf if p0 < 2.0 else 0.0
        return (p0 - 1.0) * abs(r) ** (p0 - 2.0)
    elif code == PSEUDO_HUBER:
        c = 1.0 / math.hypot(1.0, r / p0)
        return c * c * c / p0
    elif code == GENERALIZED_HUBER:
        a = p0 * abs(r)
        e = math.exp(-a)
        em = -math.expm1(-a)  # 1 - e
        den = _gh_den(em, e, p1)
        if e > 0.5:  # 4 e^2 + beta e (1 + e^2) as e ((2 + beta)(1 + e^2) - 2 (1 - e)^2): the
            # former cancels as beta nears -2 and e nears 1, the latter as e nears 0
            num = e * ((2.0 + p1) * (1.0 + e * e) - 2.0 * em * em)
        else:
            num = e * (4.0 * e + p1 * (1.0 + e * e))
        return p0 * num / (den * den)
    else:  # LOG_COSH
        a = p0 * abs(r)
        e = math.exp(-2.0 * a)
        den = 1.0 + e
        return p0 * 4.0 * e / (den * den)


@nb.njit(cache=_CACHE)
def _eval_array(code, p0, p1, r, order, out):
    fr = r.ravel()
    fo = out.ravel()
    for i in range(fr.size):
        if order == 0:
            fo[i] = loss_value(code, p0, p1, fr[i])
        elif order == 1:
            fo[i] = loss_d1(code, p0, p1, fr[i])
        else:
            fo[i] = loss_d2(code, p0, p1, fr[i])


# ----------------------------------------------------------------------------- vectorisable tanh
# math.tanh is a libm call that LLVM cannot vectorise (numba's llvmlite has no SVML), and on the
# data path of log-cosh it is most of the cost. _tanh_nd below is branch-free straight-line
# arithmetic that LLVM vectorises (AVX2: 4 lanes), used by the kernels' data path.
#
# Method: tanh(x) = (e^{2x} - 1) / (e^{2x} + 1) with x = alpha d, d = z - y clamped to
# [-X/alpha, X/alpha], X = _TANH_X_MAX = 350 (tanh(x) rounds to 1 from x = 19.1 on; up to 350
# the arithmetic below stays finite and normal: |k| <= 1010). The clamp is the only step that
# depends on the range of d: _tanh_nd_in_range, the same arithmetic without it, gives the same
# bits wherever |d| <= X/alpha, and the data path uses it when a bound on its residuals
# (lcnfast._data_path._tanh_in_range) guarantees that; the loop is ~10% faster without the two
# comparisons at the head of its dependency chain. Range reduction 2x = k ln2 + 2h, |h| <= ln2/4,
# with k = round(2x/ln2) from the 1.5*2^52 shifter trick (needs round-to-nearest and no
# reassociation: never compile this with fastmath 'reassoc'), 2^k built from the exponent
# bits. tanh h = p / q, p = h P(h^2), q = Q(h^2), P and Q quadratics: the minimax rational
# of this type for the relative error on |h| <= 1.0001 ln2/4 (Remez, in mpmath: error 4.8e-18,
# 9.7e-18 with the coefficients rounded to double, 1/20 ulp; an exp Pade approximant of type
# [5/6] (Cephes) needs one FMA more). The reduction runs on d itself,
# h' = d - k ln2 / (2 alpha) = h / alpha, and the powers of alpha go into the coefficients
# (_tanh_consts): alpha d is never formed, one multiplication less per element. Then, with
# s = 2^k, tanh(x) = tanh(k ln2/2 + h) = ((s + 1) p - (1 - s) q) / ((s + 1) q - (1 - s) p),
# one division; 1 - s = 0 exactly when k = 0, so the numerator is then exactly 2p (no
# cancellation near x = 0). P and Q by Horner's rule, which needs one multiplication fewer
# than Estrin's scheme (the tanh pass alone was ~7% faster with the previous cubic Q). The vectorised loop (12 FMA-pipe
# operations and a division per 4 elements) runs at ~75% of its FMA-pipe bound; every
# operation taken out of its ~45-cycle dependency chain has paid so far (the clamp, a
# smaller Q).
# Accuracy in the kernels (fastmath 'contract'): at most 4 ulp against mpmath over
# [-25, 25], [-1, 1], |x| < 1e-3, log-uniform 1e-320..1e2 with both signs, [18, 22],
# [20, 360] with both signs and the range-reduction boundaries k ln2/4, for alpha from
# ALPHA_MIN to ALPHA_MAX
# (tests/test_losses.py, which also checks tanh(+-0) = +-0, tanh(+-inf) = +-1, huge |d| and
# that NaN propagates). Only callers compiled without 'reassoc' may inline it (the shifter
# trick needs exact rounding of t - _SHIFTER).

_SHIFTER = 6755399441055744.0  # 1.5 * 2**52: x + _SHIFTER rounds x to an integer
_TANH_X_MAX = 350.0  # clamp of alpha d: tanh(350) = 1; 2^k stays normal (|k| <= 1010)
_TWO_OVER_LN2 = 2.0 / math.log(2.0)
_HALF_LN2 = 0.5 * math.log(2.0)
# tanh h = h (_PC + _PB s + _PA s^2) / (_QD + _QC s + _QB s^2), s = h^2, |h| <= ln2/4: the
# minimax relative error approximation of this type (Remez in mpmath, 50 digits; _QD = 2 fixed)
_PA = 0.0021147989898694544
_PB = 0.2221981572791481
_PC = 2.0
_QB = 0.031736406976098926
_QC = 0.8888648239457987
_QD = 2.0
_BIAS = np.uint64(1023)
_S52 = np.uint64(52)
# log-cosh's alpha range: the coefficients of _tanh_consts carry up to alpha^5 and stay normal
ALPHA_MIN = 1e-30
ALPHA_MAX = 1e30


@intrinsic
def _f2u(typingctx, x):
    """The bits of a float64 as uint64 (a bitcast, vectorisable)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.uint64))

    return types.uint64(types.float64), codegen


@intrinsic
def _u2f(typingctx, x):
    """The float64 whose bits are the uint64 x (a bitcast, vectorisable)."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return types.float64(types.uint64), codegen


@nb.njit(cache=_CACHE, inline="always", error_model="numpy")
def _tanh_consts(alpha):
    """The constants of :func:`_tanh_nd` for tanh(alpha d), ALPHA_MIN <= alpha <= ALPHA_MAX:
    (clamp bound _TANH_X_MAX / alpha, 2 alpha/ln2, ln2/(2 alpha), then the coefficients of
    p and q times the powers of alpha that make them polynomials in h' = h / alpha)."""
    a2 = alpha * alpha
    a4 = a2 * a2
    return (_TANH_X_MAX / alpha, alpha * _TWO_OVER_LN2, _HALF_LN2 / alpha, _PA * (a4 * alpha),
            _PB * (a2 * alpha), _PC * alpha, _QB * a4, _QC * a2)


@nb.njit(cache=_CACHE, inline="always", error_model="numpy")
def _tanh_nd(d, cs):
    """(num, den) with tanh(alpha d) = num / den for any d; ``cs`` = :func:`_tanh_consts`
    (alpha). d is clamped to [-bound, bound], bound = _TANH_X_MAX / alpha, first (NaN stays
    NaN: comparisons with NaN are false)."""
    bound = cs[0]
    d = bound if d > bound else d
    d = -bound if d < -bound else d
    return _tanh_nd_in_range(d, cs)


@nb.njit(cache=_CACHE, inline="always", error_model="numpy")
def _tanh_reduced(d, cs):
    """The range reduction of :func:`_tanh_nd` for |d| <= _TANH_X_MAX / alpha: (t, p, q),
    t = 2 alpha d / ln2 + _SHIFTER, whose low bits hold k = round(2 alpha d / ln2), and
    tanh h = p / q for the reduced h = alpha d - k ln2 / 2 (also the generalized Huber
    derivative of lcnfast._loss_rows)."""
    _, k2, c1, pa, pb, pc, qb, qc = cs
    t = d * k2 + _SHIFTER
    kf = t - _SHIFTER  # k, exactly
    h = d - kf * c1  # h' = h / alpha
    s = h * h
    p = h * ((pa * s + pb) * s + pc)
    q = (qb * s + qc) * s + _QD
    return t, p, q


@nb.njit(cache=_CACHE, inline="always", error_model="numpy")
def _pow2_neg_k(t):
    """2^-k, exactly, for the ``t`` of :func:`_tanh_reduced` (k in its low bits; |k| <= 1010,
    so 2^-k is normal): the sech^2 and generalized Huber rows' scale S."""
    return _u2f((_BIAS - _f2u(t)) << _S52)


@nb.njit(cache=_CACHE, inline="always", error_model="numpy")
def _tanh_nd_in_range(d, cs):
    """:func:`_tanh_nd` for |d| <= _TANH_X_MAX / alpha only (the same bits there, no clamp;
    outside, the result is undefined)."""
    t, p, q = _tanh_reduced(d, cs)
    sc = _u2f((_f2u(t) + _BIAS) << _S52)  # 2^k: the low bits of t hold k
    a = sc + 1.0
    b = 1.0 - sc  # +0 when k = 0: num = 2p - 0 keeps the sign of p = -0 (tanh(-0) = -0)
    return a * p - b * q, a * q - b * p


# ----------------------------------------------------------------------------- log cosh sums
# The data path (lcnfast._data_path._lc_sums) sums log cosh a_t over a chunk as
#     sum_{a_t <= 1/8} series(a_t) + sum_{a_t > 1/8} a_t - log prod_{a_t > 1/8} (1 + tanh a_t),
# the product taken of the factors (1 + tanh a) / sqrt 2 (_RSQRT2) and corrected by
# n log(2) / 2 (_HALF_LN2) so that it stays in range over a chunk (lcnfast._data_path._PROD_CHUNK).
_RSQRT2 = math.sqrt(0.5)
# log cosh a for 0 <= a <= 1/8: its Taylor series in a^2 to a^16 (truncation < 3e-19 relative).
# Above 1/8, a - log(1 + tanh a) is exact to about eps / (a^2 / 2) relative, at most 128 eps
# (each factor of the product rounds at eps, the term is ~a^2 / 2); below, it would lose up to
# all digits: so a <= 1/8 is summed by the series and contributes the factor 1 to the
# product. Both are computed for every element and combined by exact 0/1 masks (a vectorised
# loop; a branch per element would not vectorise).
_LC_SERIES_MAX = 0.125
_LC_C = (0.5, -0.08333333333333333, 0.022222222222222223, -0.006746031746031746,
         0.0021869488536155205, -0.0007386029608251831, 0.0002565805740408915,
         -9.09896491907074e-05)  # mpmath.taylor(log(cosh(x)))


@nb.njit(cache=_CACHE, inline="always", error_model="numpy")
def _log_cosh_series(a):
    """log cosh a for |a| <= 1/8 (Taylor series in s = a^2, Horner)."""
    s = a * a
    c0, c1, c2, c3, c4, c5, c6, c7 = _LC_C
    return s * (c0 + s * (c1 + s * (c2 + s * (c3 + s * (c4 + s * (c5 + s * (c6 + s * c7)))))))


# ----------------------------------------------------------------------------- public objects
@dataclass(frozen=True)
class Loss:
    """A per-coordinate loss ``l(r)`` of the residual ``r = z - y``.

    Use the constructors (:func:`square`, :func:`lp`, ...) rather than this class directly.

    Attributes
    ----------
    name : str
    code : int
        Integer code used inside kernels.
    params : tuple of float
        ``(p0, p1)``: ``p`` for lp, ``delta`` for pseudo-Huber, ``(alpha, beta)`` for the
        generalized Huber loss, ``alpha`` for log-cosh (unused entries are 0).
    """

    name: str
    code: int
    params: tuple

    def __post_init__(self):
        # every Loss is checked, also one built directly or by dataclasses.replace: the
        # kernels branch on the code and trust the parameters
        code = self.code
        if isinstance(code, bool) or not isinstance(code, numbers.Integral) or code not in _NAMES:
            raise ValueError(f"loss code must be one of {sorted(_NAMES)}, got {code!r}: build "
                             "losses with lcnfast.losses.square(), lp(p), pseudo_huber(delta), "
                             "generalized_huber(alpha, beta) or log_cosh(alpha)")
        if self.name != _NAMES[code]:
            raise ValueError(f"loss name {self.name!r} does not match its code {code} "
                             f"({_NAMES[code]!r})")
        params = self.params
        if not isinstance(params, tuple) or len(params) != 2:
            raise ValueError(f"loss params must be a tuple (p0, p1), got {params!r}")
        for v in params:
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"loss params must be real numbers, got {params!r}")
        # Python floats and int, as the constructors give them: a numpy scalar (np.float32(4))
        # passed the checks and then failed the run after its flows, writing the Dataset's
        # JSON attributes; and float32 parameters would reach the kernels as another type
        params = tuple(float(v) for v in params)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "code", int(code))
        _check_params(code, *params)

    @property
    def convex(self):
        """Whether l is convex (generalized Huber only for beta >= 0)."""
        if self.code == GENERALIZED_HUBER:
            return self.params[1] >= 0.0
        return True

    @property
    def analytic(self):
        """Whether l is real-analytic (lp only for even p), as Theorem 3.8 needs."""
        if self.code == LP:
            p = self.params[0]
            return float(p).is_integer() and int(p) % 2 == 0
        return True

    @property
    def param_dict(self):
        """The loss parameters by name."""
        names = {
            SQUARE: (),
            LP: ("p",),
            PSEUDO_HUBER: ("delta",),
            GENERALIZED_HUBER: ("alpha", "beta"),
            LOG_COSH: ("alpha",),
        }[self.code]
        return {n: self.params[i] for i, n in enumerate(names)}

    def _eval(self, r, order):
        arr = np.asarray(r)
        if arr.dtype.kind not in "biuf":  # None or strings became NaN, or a numpy error
            raise TypeError(f"r must be a real number or an array of them, got {r!r}")
        scalar = arr.ndim == 0
        r = np.ascontiguousarray(arr, dtype=np.float64)  # (a 0-d input becomes 1-d here)
        out = np.empty_like(r)
        _eval_array(self.code, self.params[0], self.params[1], r, order, out)
        return float(out[0]) if scalar else out

    def value(self, r):
        """l(r), elementwise."""
        return self._eval(r, 0)

    def derivative(self, r):
        """l'(r), elementwise."""
        return self._eval(r, 1)

    def second_derivative(self, r):
        """l''(r), elementwise."""
        return self._eval(r, 2)

    def l1_slack(self, d_N):
        """The constant ``c`` of eq. (3.9) for one sample: ``||Wx - y||_1 <= l(Wx, y) + c``.

        None for lp (the paper uses Lemma 3.6 directly) and for the square loss.
        """
        if self.code == PSEUDO_HUBER:
            return 0.0
        if self.code == GENERALIZED_HUBER:
            a, b = self.params
            return d_N * math.log(2.0 / (2.0 + b)) / a if b < 0 else 0.0
        if self.code == LOG_COSH:
            return d_N * math.log(2.0) / self.params[0]
        return None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.param_dict.items())
        return f"{self.name}({args})"


def _real(value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {value!r}")
    return float(value)


# the parameter ranges: outside them the losses' values overflow or the kernels' arithmetic
# leaves its range (log-cosh: the vectorised tanh carries up to alpha^5 in its coefficients;
# pseudo-Huber: r / delta; generalized Huber: log(2 + beta) / alpha)
PARAM_MIN = ALPHA_MIN
PARAM_MAX = ALPHA_MAX


def _in_range(value, what):
    if not PARAM_MIN <= value <= PARAM_MAX:  # false for NaN
        raise ValueError(f"{what} must be between {PARAM_MIN:g} and {PARAM_MAX:g}, got {value!r}")


def _check_params(code, p0, p1):
    """ValueError naming the parameter unless ``(p0, p1)`` are valid for loss ``code``."""
    if code == LP:
        if not (math.isfinite(p0) and p0 >= 1):
            raise ValueError(f"p must be a finite number >= 1, got {p0!r}")
    elif code == PSEUDO_HUBER:
        _in_range(p0, "delta")
    elif code == GENERALIZED_HUBER:
        _in_range(p0, "alpha")
        if not (math.isfinite(p1) and p1 > -2.0):
            raise ValueError(f"beta must be a finite number > -2, got {p1!r}")
    elif code == LOG_COSH:
        _in_range(p0, "alpha")
    unused = {SQUARE: (p0, p1), LP: (p1,), PSEUDO_HUBER: (p1,), LOG_COSH: (p1,)}.get(code, ())
    if any(v != 0.0 for v in unused):
        raise ValueError(f"{_NAMES[code]} loss: unused parameters must be 0, got {(p0, p1)!r}")


def square():
    """Square loss ``l(r) = r**2`` (eq. 1.8; no factor 1/2)."""
    return Loss("square", SQUARE, (0.0, 0.0))


def lp(p):
    """l_p loss ``|r|**p / p`` for ``p >= 1``.

    Theorem 3.8 covers even p only; other p give a non-analytic loss and a warning.
    """
    loss = Loss("lp", LP, (_real(p, "p"), 0.0))
    p = loss.params[0]
    if not (p.is_integer() and int(p) % 2 == 0):
        warnings.warn(
            f"lp loss with p={p:g} is not analytic (p is not an even integer): "
            "Theorem 3.8 does not cover it",
            stacklevel=2,
        )
    return loss


def pseudo_huber(delta):
    """Pseudo-Huber loss ``delta * sqrt(1 + r**2 / delta**2)``,
    ``PARAM_MIN <= delta <= PARAM_MAX`` (1e-30 and 1e30)."""
    return Loss("pseudo_huber", PSEUDO_HUBER, (_real(delta, "delta"), 0.0))


def generalized_huber(alpha, beta):
    """Generalized Huber loss ``log(exp(alpha r) + exp(-alpha r) + beta) / alpha``.

    ``PARAM_MIN <= alpha <= PARAM_MAX`` (1e-30 and 1e30) and ``beta > -2``; convex only for
    ``beta >= 0``.
    """
    return Loss("generalized_huber", GENERALIZED_HUBER, (_real(alpha, "alpha"), _real(beta, "beta")))


def log_cosh(alpha):
    """log-cosh loss ``log(cosh(alpha r)) / alpha``, ``PARAM_MIN <= alpha <= PARAM_MAX``
    (1e-30 and 1e30: the data path's vectorised tanh carries up to alpha^5 in its coefficients)."""
    return Loss("log_cosh", LOG_COSH, (_real(alpha, "alpha"), 0.0))


def from_dict(d):
    """Inverse of ``{"name": loss.name, **loss.param_dict}`` (used to read Dataset attributes)."""
    d = dict(d)
    name = d.pop("name")
    ctor = {
        "square": square,
        "lp": lp,
        "pseudo_huber": pseudo_huber,
        "generalized_huber": generalized_huber,
        "log_cosh": log_cosh,
    }.get(name)
    if ctor is None:
        raise ValueError(f"unknown loss name {name!r}")
    return ctor(**d)
