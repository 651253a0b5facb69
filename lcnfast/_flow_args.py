"""Validation of the arguments of :func:`lcnfast.gradient_flow` and
:func:`lcnfast.gradient_descent` at the Python boundary: a ValueError or TypeError naming the
argument before any kernel runs (and, for ``attrs``, before a run whose Dataset could not be
written).
"""

from __future__ import annotations

import math
import numbers

import numba
import numpy as np

_MAX_SAVE_BYTES = 8 * 2**30  # refuse save arrays larger than this (memory of a 24 GiB machine)


def positive_float(x, name, *, allow_zero=False):
    """``float(x)``, finite and > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    try:
        x = float(x)
    except OverflowError:  # a Python int beyond float64
        raise ValueError(f"{name} must be finite, got an integer of {len(str(x))} digits") from None
    if not math.isfinite(x) or x < 0 or (x == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {x!r}")
    return x


# counts (steps, saves) run in int64 inside the kernels, with room for j + 1 and products
_COUNT_MAX = 2**62


def count(x, name, *, minimum):
    """A whole number from minimum to 2^62; integral floats (1e6) are taken too."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a whole number, got {x!r}")
    if not isinstance(x, numbers.Integral):
        if not (math.isfinite(x) and float(x).is_integer()):
            raise TypeError(f"{name} must be a whole number, got {x!r}")
        x = int(x)
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    if x > _COUNT_MAX:
        raise ValueError(f"{name} must be <= 2**62, got {x}")
    return int(x)


# the attributes a run writes itself (_dataset); attrs= may not replace them: the analysis reads
# them back (architecture, loss, method, tolerances)
_RUN_ATTRS = frozenset({
    "architecture", "loss", "m", "method", "t_end", "rtol", "atol", "max_steps", "grad_tol",
    "interrupted", "h", "n_steps", "save_every", "gradient_kernel", "lcnfast_version",
    "numba_version", "numpy_version", "threading_layer", "n_threads", "lanes", "wall_time_s",
    "created", "data_sha256",
})
#: netCDF reads these global attributes as conventions (xarray takes ``coordinates``)
_RESERVED_ATTRS = frozenset({"coordinates", "Conventions"})


def _attr_value_ok(val):
    """A netCDF attribute value: a string, a real number (integers within int64), or a
    non-empty 1-d sequence of real numbers."""
    if isinstance(val, str):
        return "\x00" not in val  # netCDF's C strings end at a NUL: the rest was lost
    if isinstance(val, (bool, np.bool_)):
        return False
    if isinstance(val, numbers.Integral):
        return -(2**63) <= int(val) < 2**63
    if isinstance(val, numbers.Real):  # netCDF has no float16 or long double
        return not isinstance(val, np.floating) or val.dtype.itemsize in (4, 8)
    if isinstance(val, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(val)
        except ValueError:  # ragged
            return False
        return (arr.ndim == 1 and arr.size > 0 and arr.dtype.kind in "iuf"
                and (arr.dtype.kind != "f" or arr.dtype.itemsize in (4, 8)))
    return False


def _attr_name_ok(key):
    """A name netCDF stores and xarray reads back as an attribute: not empty, no '/' or
    control characters, no leading '_' (netCDF's own) or trailing space, not reserved."""
    return (key != "" and key == key.rstrip() and not key.startswith("_")
            and "/" not in key and key.isprintable() and key not in _RESERVED_ATTRS)


def extra_attrs(attrs):
    """Validate user attributes before any work is done (netCDF takes strings, numbers and
    1-d lists of numbers); the run's own attributes (_RUN_ATTRS) cannot be replaced."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise TypeError(f"attrs must be a dict, got {type(attrs).__name__}")
    for key, val in attrs.items():
        if not isinstance(key, str):
            raise TypeError(f"attrs keys must be strings, got {key!r}")
        if not _attr_name_ok(key):
            raise ValueError(f"attrs key {key!r} cannot be a netCDF attribute name (empty, "
                             "'/', a control character, a leading '_', a trailing space, or "
                             f"one of {sorted(_RESERVED_ATTRS)})")
        if key in _RUN_ATTRS:
            raise ValueError(f"attrs[{key!r}]: the run writes this attribute itself (the "
                             "analysis reads it back); choose another name")
        if not _attr_value_ok(val):
            raise TypeError(f"attrs[{key!r}] must be a string (without NUL), a real number or a "
                            "1-d list of real numbers (netCDF: no float16 or long double), got "
                            f"{val!r}")
    return dict(attrs)


def t_end_arg(t_end, grad_tol):
    """t_end > 0, or inf (None) to run until ||grad L|| <= grad_tol, which is then required."""
    if t_end is None or (
        isinstance(t_end, numbers.Real) and not isinstance(t_end, bool) and t_end == math.inf
    ):
        if grad_tol is None:
            raise ValueError("t_end=None (or inf) runs until ||grad L|| <= grad_tol: give grad_tol")
        return math.inf
    return positive_float(t_end, "t_end")


def grad_tol_arg(grad_tol):
    if grad_tol is None:
        return -1.0
    return positive_float(grad_tol, "grad_tol", allow_zero=True)


def check_save_size(K, T, n):
    nbytes = 8 * K * T * (n + 2)
    if nbytes > _MAX_SAVE_BYTES:
        raise ValueError(
            f"saving {T} times for {K} flows of {n} parameters needs {nbytes / 2**30:.1f} GiB; "
            "save fewer times (save_times / save_every) or split the flows into shards"
        )


def loss_levels_arg(loss_levels):
    """None -> no levels (an empty array); else a 1-d array of finite reals."""
    if loss_levels is None:
        return np.zeros(0)
    arr = np.asarray(loss_levels)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"loss_levels must be a 1-d sequence of real numbers, got {loss_levels!r}")
    if arr.ndim != 1:
        raise ValueError(f"loss_levels must be 1-d, got an array of shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"loss_levels must be finite, got {loss_levels!r}")
    return arr


def thread_count(n, name):
    """``int(n)`` for a whole number of Numba threads in 1..NUMBA_NUM_THREADS (the most this
    process can use): TypeError otherwise (bool included), ValueError out of range."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise TypeError(f"{name} must be a whole number or None, got {n!r}")
    top = numba.config.NUMBA_NUM_THREADS
    if not 1 <= n <= top:
        raise ValueError(f"{name} must be in 1..{top} (NUMBA_NUM_THREADS), got {n}")
    return int(n)
