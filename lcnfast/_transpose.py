"""Rows of a batch to lanes and back: the transposes around the lane kernels.

Private module. The lane kernels (:mod:`lcnfast._lanes`, :mod:`lcnfast._codegen`) compute
one flow per SIMD lane, so they take their parameters as (n, lanes) arrays, while a batch
``W`` of ``lcnfast.Problem`` holds one flow per row, (K, n). Moving a chunk of rows into
lanes and the gradients back is a transpose of (c, n) to (n, c) and back.

Written as plain Numba loops, those transposes moved one double per load and per store, with
the index arithmetic of a short inner loop (n = 9 for k = (3, 3, 3)): about 2 cycles per
double, ~45 us of the ~92 us of a batched square-loss gradient of 4096 flows on one thread
(the generated kernel itself took ~47 us). Numba leaves LLVM's SLP vectoriser off and the
loop vectoriser does not turn a strided copy into shuffles, so the 4 x 4 blocks here are
written in LLVM IR (:func:`_transpose4x4`): four 256-bit loads, eight shuffles, four 256-bit
stores per 16 doubles. The moves are bit copies (NaN payloads and the sign of zero included):
the kernels see exactly the values of the plain loops.
"""

from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from ._jit import JIT as _JIT


@intrinsic
def _transpose4x4(typingctx, src, s0, s_stride, dst, d0, d_stride):
    """``dst[d0 + j d_stride + i] = src[s0 + i s_stride + j]`` for i, j in 0..3: the 4 x 4
    block of the flat C-contiguous float64 array ``src`` at ``s0`` (rows ``s_stride`` apart)
    into ``dst`` transposed. No bounds checks: the caller's duty."""
    for ty, name in ((src, "src"), (dst, "dst")):
        if not (isinstance(ty, types.Array) and ty.dtype == types.float64 and ty.ndim == 1
                and ty.layout == "C"):
            raise TypingError(f"_transpose4x4: {name} must be a C-contiguous 1-d float64 "
                              f"array, not {ty}")
    sig = types.void(src, types.intp, types.intp, dst, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        vec = ir.VectorType(ir.DoubleType(), 4)
        mask_type = ir.VectorType(ir.IntType(32), 4)
        src_a = context.make_array(signature.args[0])(context, builder, value=args[0])
        dst_a = context.make_array(signature.args[3])(context, builder, value=args[3])
        s0v, ssv, d0v, dsv = (context.cast(builder, args[i], signature.args[i], types.intp)
                              for i in (1, 2, 4, 5))

        def block_row(array, start, stride, i):
            offset = builder.add(start, builder.mul(stride, ir.Constant(start.type, i)))
            return builder.bitcast(builder.gep(array.data, [offset]), vec.as_pointer())

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(mask_type, mask))

        r = [builder.load(block_row(src_a, s0v, ssv, i), align=8) for i in range(4)]
        lo01 = shuffle(r[0], r[1], [0, 4, 2, 6])  # (r0[0], r1[0], r0[2], r1[2])
        hi01 = shuffle(r[0], r[1], [1, 5, 3, 7])
        lo23 = shuffle(r[2], r[3], [0, 4, 2, 6])
        hi23 = shuffle(r[2], r[3], [1, 5, 3, 7])
        columns = (shuffle(lo01, lo23, [0, 1, 4, 5]), shuffle(hi01, hi23, [0, 1, 4, 5]),
                   shuffle(lo01, lo23, [2, 3, 6, 7]), shuffle(hi01, hi23, [2, 3, 6, 7]))
        for j, column in enumerate(columns):
            builder.store(column, block_row(dst_a, d0v, dsv, j), align=8)
        return context.get_dummy_value()

    return sig, codegen


@nb.njit(**_JIT)
def _copy_transposed(src, s0, s_stride, dst, d0, d_stride, rows, cols):
    """``dst[d0 + j d_stride + i] = src[s0 + i s_stride + j]`` for i < rows, j < cols: the
    (rows, cols) block of the flat array src at s0 (rows s_stride apart) into dst transposed;
    4 x 4 blocks by :func:`_transpose4x4`, the last cols % 4 and rows % 4 one by one."""
    r4 = rows - rows % 4
    c4 = cols - cols % 4
    for i in range(0, r4, 4):
        for j in range(0, c4, 4):
            _transpose4x4(src, s0 + i * s_stride + j, s_stride, dst, d0 + j * d_stride + i,
                          d_stride)  # fmt: skip
    for i in range(r4):
        for j in range(c4, cols):
            dst[d0 + j * d_stride + i] = src[s0 + i * s_stride + j]
    for i in range(r4, rows):
        for j in range(cols):
            dst[d0 + j * d_stride + i] = src[s0 + i * s_stride + j]


@nb.njit(**_JIT)
def rows_to_lanes(W, f0, c, Wl):
    """``Wl[q, b] = W[f0 + b, q]`` for b < c, q < n: rows f0..f0+c-1 of W (K, n) into the
    lanes of Wl (n, >= c); both C-contiguous, the ranges the caller's duty."""
    n = W.shape[1]
    _copy_transposed(W.reshape(W.size), f0 * n, n, Wl.reshape(Wl.size), 0, Wl.shape[1], c, n)


@nb.njit(**_JIT)
def lanes_to_rows(Gl, c, G, f0):
    """``G[f0 + b, q] = Gl[q, b]`` for b < c, q < n: the first c lanes of Gl (n, >= c) into
    rows f0..f0+c-1 of G (K, n); both C-contiguous, the ranges the caller's duty."""
    n = G.shape[1]
    _copy_transposed(Gl.reshape(Gl.size), 0, Gl.shape[1], G.reshape(G.size), f0 * n, n, n, c)
