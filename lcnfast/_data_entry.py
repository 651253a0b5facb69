"""The fast data path (lcnfast._data_path.data_pass) compiled once, as a C function that the
kernels call through its address.

Private module. Numba links the code of every function a kernel calls into that kernel and
optimises and translates the whole again (README, "Compile time"). The data path -- its tap
blocks for 1 to 13 taps, tanh loops and loss rows -- is by far the largest callee, and some
twenty kernels reach it (the lanes, the one-flow gradients, the batched evaluations, the
integrators' workers): compiled directly, it was compiled that many times over, in every
process, even for the square loss on its window Gram, which never runs it (about half of a
cold `lcnfast study run quickstart`). Here it is a C callback (``numba.cfunc``, cached on disk
by lcnfast._numba_cache) compiled once, on first use: by the first :class:`lcnfast.Problem`
off the Gram path, which puts its address into the Model (``Model.data_fn``; 0 on the Gram
path, where no kernel calls it). :func:`fs_loss_grad_fast` calls it through
:func:`call_data_pass`, a plain indirect C call (no reference counting, no error branch: the
data path cannot raise), with the arrays passed as their data pointers and shapes.

An address is valid in the process that compiled it only: a Problem unpickled in another
process puts that process's address into its Model (``Problem.__setstate__``); a Model on
its own is never sent.
"""

from __future__ import annotations

import functools

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from . import _numba_cache
from ._codegen import check_c_array
from ._data_hessian import data_hessian
from ._data_path import data_pass
from ._jit import JIT as _JIT

_P = types.CPointer(types.float64)
_I = types.int64
_F = types.float64
# data_pass(code, p0, p1, k_v, d_N, s_v, x_amax, y_amax, m, d0, Xt, Yt, v, G, len(G), buf,
# len(buf), want_grad, want_loss, hessian) -> L; with hessian != 0, data_hessian into G as
# the (k_v, k_v) Hessian instead
DATA_PASS_SIG = types.float64(_I, _F, _F, _I, _I, _I, _F, _F, _I, _I, _P, _P, _P, _P, _I, _P, _I,
                              _I, _I, _I)

NO_DATA_PASS = 0  # Model.data_fn on the Gram path


def _data_pass_c(code, p0, p1, kv, dN, sv, x_amax, y_amax, m, d0, Xp, Yp, vp, Gp, nG, bp, nbuf,
                 want_grad, want_loss, hessian):
    Xt = nb.carray(Xp, (m, d0))
    Yt = nb.carray(Yp, (m, dN))
    v = nb.carray(vp, kv)
    buf = nb.carray(bp, nbuf)
    if hessian != 0:
        return data_hessian(code, p0, p1, kv, dN, sv, Xt, Yt, v, nb.carray(Gp, (kv, kv)), buf)
    return data_pass(code, p0, p1, kv, dN, sv, x_amax, y_amax, Xt, Yt, v, nb.carray(Gp, nG),
                     buf, want_grad != 0, want_loss != 0)


@functools.cache
def _compiled():
    return _numba_cache.cfunc(DATA_PASS_SIG, error_model="numpy")(_data_pass_c)


def address():
    """The address of the compiled data path (compiled, or loaded from the cache, on the first
    call in a process: about 10-20 s cold on 2 cores, well under a second from the cache)."""
    return _compiled().address


@intrinsic
def call_data_pass(typingctx, fn, code, p0, p1, kv, dN, sv, x_amax, y_amax, Xt, Yt, v, G, buf,
                   want_grad, want_loss, hessian):
    """``data_pass(...)`` (``hessian`` False) or ``data_hessian(...)`` into G as the
    (k_v, k_v) Hessian (``hessian`` True) through the compiled data path at address ``fn``
    (int; see :func:`address`): the integers and floats as they are, the arrays (C-contiguous
    float64: Xt (m, d0), Yt (m, d_N), v (k_v,), G, buf) as data pointers, with m, d0, len(G),
    len(buf) from their shapes, the bools as 0/1."""
    if not isinstance(fn, types.Integer):
        raise TypingError(f"call_data_pass: fn must be the data path's address, not {fn}")
    for ty, ndim, name in ((Xt, 2, "Xt"), (Yt, 2, "Yt"), (v, 1, "v"), (G, 1, "G"),
                           (buf, 1, "buf")):
        check_c_array(ty, ndim, name, "call_data_pass")
    sig = types.float64(fn, code, p0, p1, kv, dN, sv, x_amax, y_amax, Xt, Yt, v, G, buf,
                        want_grad, want_loss, hessian)

    def codegen(context, builder, signature, args):
        tys = signature.args
        i64 = ir.IntType(64)
        dbl = ir.DoubleType()
        dptr = dbl.as_pointer()

        def as_int(i):
            return context.cast(builder, args[i], tys[i], types.int64)

        def as_float(i):
            return context.cast(builder, args[i], tys[i], types.float64)

        arr = {i: context.make_array(tys[i])(context, builder, value=args[i])
               for i in (9, 10, 11, 12, 13)}
        m = builder.extract_value(arr[9].shape, 0)
        d0 = builder.extract_value(arr[9].shape, 1)
        nG = builder.extract_value(arr[12].shape, 0)
        nbuf = builder.extract_value(arr[13].shape, 0)
        fnty = ir.FunctionType(dbl, [i64, dbl, dbl, i64, i64, i64, dbl, dbl, i64, i64, dptr,
                                     dptr, dptr, dptr, i64, dptr, i64, i64, i64, i64])
        f = builder.inttoptr(as_int(0), fnty.as_pointer())
        return builder.call(f, [as_int(1), as_float(2), as_float(3), as_int(4), as_int(5),
                                as_int(6), as_float(7), as_float(8), m, d0, arr[9].data,
                                arr[10].data, arr[11].data, arr[12].data, nG, arr[13].data,
                                nbuf, as_int(14), as_int(15), as_int(16)])

    return sig, codegen


@nb.njit(**_JIT)
def fs_loss_grad_fast(model, v, G, buf, want_grad, want_loss):
    """The fast data path for ``model`` (:func:`lcnfast._data_path.data_pass`): L(v) if
    ``want_loss`` (else NaN) and, if ``want_grad``, G = dL/dv, with the scratch ``buf`` (from
    lcnfast._data_path._data_buf). On a Model without the compiled data path (the Gram path,
    which never calls it): NaN, and G NaN."""
    if model.data_fn == NO_DATA_PASS:
        if want_grad:
            G[: model.k_v] = np.nan
        return np.nan
    return call_data_pass(model.data_fn, model.code, model.p0, model.p1, model.k_v, model.d_N,
                          model.s_v, model.x_amax, model.y_amax, model.Xt, model.Yt, v, G, buf,
                          want_grad, want_loss, False)


@nb.njit(**_JIT)
def fs_hessian_fast(model, v, H, buf):
    """The function-space Hessian H (k_v, k_v), C-contiguous, of ``model`` at v by
    :func:`lcnfast._data_hessian.data_hessian` with the scratch ``buf`` (from
    lcnfast._data_path._data_buf): True if computed, False with H untouched where that
    layout does not apply (few samples) or the model has no compiled data path (the Gram
    path)."""
    if model.data_fn == NO_DATA_PASS:
        return False
    kv = model.k_v
    r = call_data_pass(model.data_fn, model.code, model.p0, model.p1, kv, model.d_N,
                       model.s_v, model.x_amax, model.y_amax, model.Xt, model.Yt, v,
                       H.reshape(kv * kv), buf, False, False, True)
    return r == 1.0
