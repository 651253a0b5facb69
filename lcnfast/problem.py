"""The empirical risk of an LCN on fixed data (paper section 1.2):
``L(w) = sum_i l(pi(w) * x_i, y_i)``, a sum over samples and output coordinates, with the
paper's scaling (no 1/m, no 1/2).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import warnings

import numba
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import _batches as B, _codegen, _data_entry, _kernels as K
from . import _lanes
from .architecture import Architecture
from .losses import SQUARE, Loss


@contextlib.contextmanager
def _on_calling_thread(serial):
    """Run the enclosed batch (a ``prange`` kernel, or rows on threads: lcnfast._batches) on
    the calling thread only when ``serial`` (too little work to wake the thread team or start
    threads: on a busy host waking it cost ~0.3-4 ms per call against ~9 us
    of work, which made e.g. the multistart Newton of lcnfast.analysis.image_minimum 30x
    slower). Numba's thread count is thread-local; results do not depend on it."""
    if not serial:
        yield
        return
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(n)


def n_chunks(W):
    """Number of prange chunks for a batch W (K, n): a few per thread, at most K."""
    return max(1, min(W.shape[0], 8 * numba.get_num_threads()))


_SERIAL_FLOPS = 200_000  # below this much work a call stays on the calling thread
# kernel="auto" generates the straight-line kernel once a Problem has asked for this many
# gradient evaluations: the one-off compile (about a second, then cached on disk) pays off
AUTO_GENERATE_EVALS = 100_000
# ... and only for batches of at least this many vectors in loss_and_grad/grad: passing the
# kernel costs ~7 us per call, more than it saves on a few vectors
AUTO_GENERATE_MIN_BATCH = 64
KERNELS = ("auto", "generic", "generated")

__all__ = ["Problem"]


def as_real_array(a, name):
    """``a`` as a float64 array; TypeError naming ``name`` unless it holds real numbers
    (bool, integer or float; not strings, objects or complex numbers)."""
    if a is None or isinstance(a, (str, bytes)):
        raise TypeError(f"{name} must be a numeric array, got {type(a).__name__}")
    try:
        arr = np.asarray(a)
    except ValueError as e:  # ragged nested sequences
        raise ValueError(f"{name} must be a rectangular array: {e}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def window_gram(arch, Xt, Yt=None):
    """Window Gram ``A`` (k_v, k_v) = sum over samples i and outputs j of x_ij x_ij^T, with the
    window x_ij = Xt[i, j s_v : j s_v + k_v]; with targets ``Yt`` (m, d_N) also
    ``b = sum_ij y_ij x_ij`` (k_v,) and returns (A, b). ``Xt`` is X transposed, (m, d0)."""
    win = sliding_window_view(Xt, arch.k_v, axis=1)[:, :: arch.s_v, :]  # (m, d_N, k_v)
    A = np.einsum("ijn,ijq->nq", win, win, optimize=True)
    A = 0.5 * (A + A.T)
    if Yt is None:
        return A
    return A, np.einsum("ij,ijn->n", Yt, win, optimize=True)


def _readonly(a):
    a.setflags(write=False)
    return a


def _finite_matrix(a, name, shape):
    a = as_real_array(a, name)
    if a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _check_finite(W, name):
    """ValueError naming ``name`` if W holds a NaN or an infinity."""
    if not np.all(np.isfinite(W)):
        raise ValueError(f"{name} contains NaN or Inf")


def _overflowed(method, rows, loss=None):
    """Warn if any of the boolean ``rows`` (points whose results are not finite) is set; turn
    NaN losses (an overflow, from finite input and data) into +inf."""
    n_bad = int(np.count_nonzero(rows))
    if n_bad == 0:
        return
    if loss is not None:
        loss[np.isnan(loss)] = np.inf
        what = "the loss is reported as inf, other results may hold inf/NaN entries"
    else:
        what = "the results hold inf/NaN entries"
    warnings.warn(
        f"lcnfast: Problem.{method} overflowed at {n_bad} of {rows.size} points (finite "
        f"parameters too large for float64): {what}",
        RuntimeWarning,
        stacklevel=3,
    )


def _bad_rows(a):
    """Rows (first axis) of ``a`` with a non-finite entry."""
    return ~np.isfinite(a).all(axis=tuple(range(1, a.ndim)))


class Problem:
    """Empirical risk of an architecture on data ``X`` (d0, m), ``Y`` (d_N, m) under a loss.

    Everything reusable is computed once: ``X`` and ``Y`` transposed (so that every
    convolution window is contiguous) and, for the square loss, the window Gram ``A``
    (k_v, k_v), ``b`` (k_v,) and ``||Y||_F^2`` so that ``L(v) = v^T A v - 2 b^T v + ||Y||^2``.

    Every method taking parameters accepts one vector (n_params,) or a batch (K, n_params)
    and returns the matching shape (a float for one vector where the result is scalar).

    Parameters
    ----------
    arch : Architecture
    X : array_like (d0, m)
        Inputs as columns.
    Y : array_like (d_N, m)
        Targets as columns.
    loss : Loss
        From :mod:`lcnfast.losses`.
    use_gram : bool, optional
        Square loss only: evaluate through the window Gram (default True). False forces the
        pass over the data (a reference and a check; other losses always pass over the data).
    kernel : {"auto", "generic", "generated"}, optional
        Batched gradients of the square loss through the Gram (``loss_and_grad``, ``grad``,
        the integrators) can run a straight-line kernel generated for this architecture
        (:mod:`lcnfast._codegen`, about 3x faster for small filters, compiled once per
        architecture and cached on disk). "generated" always uses it (ValueError where it
        does not apply), "generic" never, "auto" (default) once this Problem has asked for
        ``AUTO_GENERATE_EVALS`` gradient evaluations and the architecture is small enough
        (``loss_and_grad`` and ``grad`` only for batches of ``AUTO_GENERATE_MIN_BATCH``
        vectors or more; single vectors always run the generic kernel under "auto").
        Both kernels give equal numbers (see :mod:`lcnfast._codegen`); ``kernel_in_use``
        says which one the last batched evaluation ran.

    Notes
    -----
    Overflow: parameters are checked to be finite, but finite ones can still be too large for
    float64 (``np.full(n, 1e200)``: ``v = pi(w)`` overflows). Every evaluation then warns
    (``RuntimeWarning`` naming the method and the number of points): the loss is reported as
    ``inf`` (the true value exceeds the float range; it is never NaN), the final filter,
    prediction, gradient or Jacobian keep the ``inf``/``NaN`` entries the arithmetic gave.
    Batched gradients of the square loss through the Gram are checked through their loss values
    (see :mod:`lcnfast._lanes`: a gradient overflows without its loss only for layers scaled
    by ~1e150 against each other). Hessians are not checked (l_p with p < 2 has l'' = inf at a
    zero residual by design).

    The Gram path computes the loss as ``v^T A v - 2 b^T v + ||Y||^2``, whose absolute rounding
    error is about ``eps * (||Y||^2 + v^T A v)``: near an exact fit use ``use_gram=False`` when
    the loss value itself (not its gradient) is needed to many digits.

    Compilation: the first Problem off the Gram path in a process (any loss but the square
    loss through the Gram) compiles the pass over the data once, or loads it from Numba's
    disk cache: ~16 s with an empty cache on 2 cores, well under a second afterwards
    (:mod:`lcnfast._data_entry`). The other kernels compile on first use, as usual.
    """

    def __init__(self, arch, X, Y, loss, *, use_gram=True, kernel="auto"):
        if not isinstance(arch, Architecture):
            raise TypeError(f"arch must be an Architecture, got {type(arch).__name__}")
        if not isinstance(loss, Loss):
            raise TypeError(
                f"loss must be a Loss from lcnfast.losses (e.g. losses.square()), got {loss!r}"
            )
        X = as_real_array(X, "X")
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-d array of shape (d0={arch.d0}, m)")
        m = X.shape[1]
        if m < 1:
            raise ValueError("X must have at least one sample (column)")
        self.arch = arch
        self.loss_fn = loss
        # private read-only copies: the caller's arrays stay writable, and a later change to
        # them cannot reach this Problem (whose window Gram is computed once, below)
        self.X = _readonly(np.array(_finite_matrix(X, "X", (arch.d0, m))))
        self.Y = _readonly(np.array(_finite_matrix(Y, "Y", (arch.d_N, m))))
        self.m = m
        if not isinstance(use_gram, (bool, np.bool_)):
            raise TypeError(f"use_gram must be True or False, got {use_gram!r}")
        self.use_gram = bool(use_gram) and loss.code == SQUARE
        if not isinstance(kernel, str) or kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        n_products = _codegen.n_products(arch)
        can_generate = self.use_gram and n_products <= _codegen.MAX_PRODUCTS
        if kernel == "generated" and not can_generate:
            raise ValueError(
                "kernel='generated' needs the square loss through the Gram (use_gram=True) and "
                f"at most {_codegen.MAX_PRODUCTS} products per gradient, got loss "
                f"{loss.name!r}, use_gram={bool(use_gram)}, {n_products} products"
            )
        self.kernel = kernel if can_generate else "generic"
        self.kernel_in_use = None
        self._evals_asked = 0
        # always fresh (writable, private) copies: the kernels see one array type whatever the
        # layout of X and Y (a transpose that is already contiguous, m = 1 or d0 = 1, would
        # otherwise be a view of the read-only X, and every kernel would compile once more
        # for it); writable like the data path's own scratch copies, so that its helpers
        # compile once for both
        Xt = np.array(self.X.T, order="C")
        Yt = np.array(self.Y.T, order="C")
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below
            self.A, self.b = window_gram(arch, Xt, Yt)
            self.yy = float(np.sum(Yt * Yt))
        self.A.setflags(write=False)
        self.b.setflags(write=False)
        if not (np.all(np.isfinite(self.A)) and np.all(np.isfinite(self.b))
                and math.isfinite(self.yy)):
            raise ValueError(
                "X and Y are too large for float64: their window Gram A = sum x x^T, b = sum y x "
                "or ||Y||^2 overflows (max |X| = %.3g, max |Y| = %.3g); rescale the data"
                % (np.max(np.abs(Xt)), np.max(np.abs(Yt))))
        kv = arch.k_v
        self._model = K.Model(
            code=loss.code,
            p0=float(loss.params[0]),
            p1=float(loss.params[1]),
            k=np.asarray(arch.k, np.int64),
            S=np.asarray(arch.dilations, np.int64),
            offs=np.asarray(arch.offsets, np.int64),
            k_v=kv,
            s_v=arch.s_v,
            d_N=arch.d_N,
            use_gram=self.use_gram,
            A=self.A if self.use_gram else _readonly(np.zeros((0, 0))),
            b=self.b if self.use_gram else _readonly(np.zeros(0)),
            yy=self.yy,
            Xt=Xt,
            Yt=Yt,
            x_amax=float(np.max(np.abs(Xt))),
            y_amax=float(np.max(np.abs(Yt))),
            data_fn=_data_entry.NO_DATA_PASS if self.use_gram else _data_entry.address(),
        )


    # ------------------------------------------------------------------ input handling
    def _params(self, w, name="w", check_finite=True):
        """Validate parameters; returns (W (K, n) contiguous float64, single: bool). Without
        ``check_finite`` the caller must call :func:`_check_finite` itself (the batched
        gradients do when their overflow flag is raised: lcnfast._lanes checks W too)."""
        W = as_real_array(w, name)
        n = self.arch.n_params
        if W.ndim == 1 and W.shape[0] == n:
            single = True
            W = W[None, :]
        elif W.ndim == 2 and W.shape[1] == n:
            single = False
        else:
            raise ValueError(
                f"{name} must have shape (n_params,) = ({n},) or (K, {n}), got {W.shape}"
            )
        if check_finite:
            _check_finite(W, name)
        if not (W.flags.c_contiguous and W.flags.writeable):
            # a read-only array (np.broadcast_to, a view of a Dataset's values) would be a
            # second Numba type: every kernel compiled again for it
            W = np.array(W, order="C")
        return W, single

    def _serial(self, W):
        """Whether evaluating W is too little work to wake the thread team."""
        a = self.arch
        if self.use_gram:
            per_point = a.k_v * a.k_v + 4 * a.n_params * a.k_v
        else:
            per_point = 4 * a.d_N * self.m * a.k_v
        return W.shape[0] * per_point < _SERIAL_FLOPS or numba.get_num_threads() == 1

    def _lane_kernel(self, n_evals, batch=None):
        """``(kern, use_kern)`` for a batched evaluation of about ``n_evals`` gradients: the
        generated kernel's address (:func:`lcnfast._codegen.call_lane_kernel`; ``NO_KERNEL``
        when not in use) and whether to use it, as the integrators take them; ``batch``: the
        number of vectors of a ``loss_and_grad`` call (None for flow runs). Records
        ``kernel_in_use``."""
        self._evals_asked += int(n_evals)
        use = self.kernel == "generated" or (
            self.kernel == "auto"
            and self._evals_asked >= AUTO_GENERATE_EVALS
            and (batch is None or batch >= AUTO_GENERATE_MIN_BATCH)
        )
        if use:
            try:
                kern = _codegen.lane_kernel(self.arch)
            except OSError as e:  # e.g. a read-only cache directory
                if self.kernel == "generated":
                    raise
                warnings.warn(
                    f"lcnfast: cannot write generated kernels to {_codegen.cache_dir()} ({e}); "
                    "using the generic kernels (set LCNFAST_CACHE_DIR to a writable directory)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.kernel = "generic"
                use = False
        self.kernel_in_use = "generated" if use else "generic"
        if not use:
            return _codegen.NO_KERNEL, False
        return kern.address, True

    def __setstate__(self, state):
        """Unpickled (in another process, say): the Model takes this process's address of the
        compiled data path (an address from the pickling process would point nowhere)."""
        self.__dict__.update(state)
        if not self.use_gram:
            self._model = self._model._replace(data_fn=_data_entry.address())

    @property
    def model(self):
        """The kernel-side description of this problem (:class:`lcnfast._kernels.Model`)."""
        return self._model

    # ------------------------------------------------------------------ evaluations
    def final_filter(self, w):
        """Final filter ``v = pi(w)`` (Prop. 2.1): (k_v,) or (K, k_v)."""
        W, single = self._params(w)
        md = self._model
        with _on_calling_thread(self._serial(W)):
            V = B.final_filter_batch(W, md.k, md.S, md.offs, md.k_v)
        _overflowed("final_filter", _bad_rows(V))
        return V[0] if single else V

    def predict(self, w):
        """Network output ``V X``: (d_N, m) or (K, d_N, m)."""
        W, single = self._params(w)
        with _on_calling_thread(self._serial(W)):
            Z = B.predict_batch(self._model, W)
        _overflowed("predict", _bad_rows(Z))
        return Z[0] if single else Z

    def loss(self, w):
        """Empirical risk ``L(w)``: float or (K,)."""
        W, single = self._params(w)
        with _on_calling_thread(self._serial(W)):
            out = B.loss_batch(self._model, W)
        _overflowed("loss", ~np.isfinite(out), out)
        return float(out[0]) if single else out

    def loss_and_grad(self, w):
        """``(L(w), grad L(w))``: (float, (n_params,)) or ((K,), (K, n_params))."""
        W, single = self._params(w, check_finite=False)
        L, G, flag = self._loss_grad(W, want_loss=True)
        if flag != 0.0:  # NaN: some entry of w, a loss or a gradient is not finite (rare)
            _check_finite(W, "w")
            _overflowed("loss_and_grad", ~np.isfinite(L) | _bad_rows(G), L)
        return (float(L[0]), G[0]) if single else (L, G)

    def grad(self, w):
        """Gradient ``grad L(w)``: (n_params,) or (K, n_params); bitwise the gradient of
        :meth:`loss_and_grad`, faster on the data path (no loss values)."""
        W, single = self._params(w, check_finite=False)
        _, G, flag = self._loss_grad(W, want_loss=False)
        if flag != 0.0:
            _check_finite(W, "w")
            _overflowed("grad", _bad_rows(G))
        return G[0] if single else G

    def _loss_grad(self, W, want_loss):
        """Losses (K,) (NaN on the data path unless ``want_loss``), gradients (K, n_params) of
        the rows of a validated batch W, and the overflow flag of :mod:`lcnfast._lanes`: 0.0
        if the values it checks are finite, else NaN."""
        L = np.empty(W.shape[0])
        G = np.empty_like(W)
        kern, use = self._lane_kernel(W.shape[0], batch=W.shape[0])
        serial = self._serial(W)
        if use and serial:
            flag = _lanes.generated_serial(self._model, kern, W, L, G)
        elif use:
            flag = _lanes.generated_batch(self._model, kern, W, L, G, n_chunks(W))
        elif serial:
            flag = _lanes.loss_grad_serial(self._model, W, L, G, want_loss)
        else:
            flag = _lanes.loss_grad_batch(self._model, W, L, G, n_chunks(W), want_loss)
        return L, G, flag

    def hessian(self, w):
        """Hessian of L: (n_params, n_params) or (K, n_params, n_params)."""
        W, single = self._params(w)
        with _on_calling_thread(self._serial(W)):
            H = B.hessian_batch(self._model, W)
        return H[0] if single else H

    def jacobian(self, w):
        """Jacobian of ``pi`` at w: (k_v, n_params) or (K, k_v, n_params)."""
        W, single = self._params(w)
        md = self._model
        with _on_calling_thread(self._serial(W)):
            J = B.jacobian_batch(W, md.k, md.S, md.k_v)
        _overflowed("jacobian", _bad_rows(J))
        return J[0] if single else J

    def _filter(self, v):
        """A final filter v (k_v,), validated like parameters (finite)."""
        v = as_real_array(v, "v")
        if v.shape != (self.arch.k_v,):
            raise ValueError(f"v must have shape ({self.arch.k_v},), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError("v contains NaN or Inf")
        return np.ascontiguousarray(v)

    def function_space_loss(self, v):
        """L as a function of the final filter v (k_v,) (the convex problem for convex losses)."""
        L = np.array([K.fs_loss(self._model, self._filter(v))])
        _overflowed("function_space_loss", ~np.isfinite(L), L)
        return float(L[0])

    def function_space_grad(self, v):
        """(L(v), dL/dv) for a final filter v (k_v,)."""
        G = np.empty(self.arch.k_v)
        L = np.array([K.fs_loss_grad(self._model, self._filter(v), G)])
        _overflowed("function_space_grad", ~np.isfinite(L) | ~np.isfinite(G).all(), L)
        return float(L[0]), G

    def function_space_hessian(self, v):
        """d^2 L / dv^2 (k_v, k_v) at a final filter v."""
        H = np.empty((self.arch.k_v, self.arch.k_v))
        K.fs_hessian(self._model, self._filter(v), H)
        return H

    # ------------------------------------------------------------------ data conditions
    @functools.cached_property
    def _data_sha256(self):
        """SHA-256 of the data, X then Y (float64, C order): flow Datasets record it as
        ``attrs["data_sha256"]`` so that :func:`lcnfast.analysis.classify` can refuse a
        Problem on other data (computed once, on first use)."""
        h = hashlib.sha256(self.X.tobytes(order="C"))
        h.update(self.Y.tobytes(order="C"))
        return h.hexdigest()

    def rank_info(self):
        """Rank and smallest singular value of ``X X^T`` (d0, d0) and of the window Gram ``A``.

        Ranks use numpy's default tolerance ``max(shape) * eps * sigma_max``.
        Returns a dict with keys ``xxt_rank``, ``xxt_min_sv``, ``gram_rank``, ``gram_min_sv``.
        """
        XXt = self.X @ self.X.T
        sx = np.linalg.svd(XXt, compute_uv=False)
        sa = np.linalg.svd(self.A, compute_uv=False)
        return {
            "xxt_rank": int(np.linalg.matrix_rank(XXt)),
            "xxt_min_sv": float(sx[-1]),
            "gram_rank": int(np.linalg.matrix_rank(self.A)),
            "gram_min_sv": float(sa[-1]),
        }

    def __repr__(self):
        return f"Problem({self.arch!r}, m={self.m}, loss={self.loss_fn!r})"
