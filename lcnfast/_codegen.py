"""Straight-line lane kernels for the square loss, generated for one architecture.

Private module. The generic lane kernels of :mod:`lcnfast._lanes` loop over filter taps and
prefix positions whose trip counts (2, 3, 5, ...) are only known at run time; for the tiny
filters of typical LCN studies those loops, not the arithmetic, dominate. Here the whole
gradient of the square loss through the window Gram -- the polynomial product, ``A v``, the
loss and the reverse pass -- is written out as straight-line Python for one architecture
(filter widths and dilations fixed), so that every intermediate lives in a register.

The source is written to a module file in a cache directory and compiled by Numba as a
``cfunc`` with :data:`LANE_KERNEL_SIG` (cached on disk like every other kernel, with the damage
control of :func:`lcnfast._numba_cache.cfunc`; a module file whose text is not the expected
source, damaged or edited, is written again), which the
batched evaluations and the integrators call through a first-class function argument: they
are compiled once for all architectures.

Exactness: the generated code performs the floating-point operations of
:func:`lcnfast._lanes.loss_grad_lanes` in the same order, except that it does not add the
exact zeros the generic loops add (sums start from their first term instead of from 0.0, and
terms multiplying a structurally zero coefficient of a dilated layer are left out). For finite
parameters both kernels therefore give equal numbers (``==``); only the sign of an exact zero
can differ, and which non-finite value (Inf or NaN) a flow shows once it has overflowed.

Kernel signature (``L`` lanes, any ``L >= 1``), a C function::

    kernel(W, A, b, yy, out_g, out_L, out_v, L) -> None

with ``W``, ``out_g`` pointers to C-ordered (n_params, L) float64 arrays, ``A`` to (k_v, k_v),
``b`` to (k_v,), ``out_L`` to (L,), ``out_v`` to (k_v, L), ``yy`` a float64 and ``L`` an int64
(the kernel views them with ``numba.carray``). Numba code calls it through
:func:`call_lane_kernel` with the kernel's address (an int) and the arrays themselves.

Why pointers and an address, not arrays and a first-class function: Numba passes arrays to a
first-class function call as reference-counted values and surrounds that call with Python
fallback and error branches, which keep its reference-count pruning from removing the
increments and decrements of every array the calling function takes: measured, 16 atomic
operations per call of ``_one_flow.grad_kern``, 131 ns per call of which the one-lane kernel
itself took ~40 (86 ns with pointers through a first-class call; see the README, "How it is
fast"). :func:`call_lane_kernel` is a plain indirect C call with no error branch.

SIMD: the loop over lanes vectorises only because the kernel is compiled with Numba's
``noalias`` flag (:func:`lcnfast._numba_cache.cfunc`): without it LLVM would have to check at
run time that no row of ``out_g``, ``out_L``, ``out_v`` overlaps a row of ``W`` -- more checks
than it allows -- and ran the loop one lane at a time (scalar ``mulsd``; measured 1.8-2x
slower for k=(3,3,3) and (2,2,2,2), bitwise the same results). Callers must therefore pass
four distinct, non-overlapping arrays ``W, out_g, out_L, out_v`` (``A`` and ``b`` are only
read). The vectorised loop computes each lane exactly as the scalar one (no reassociation).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path

from llvmlite import ir
from numba import types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from . import _numba_cache

_P = types.CPointer(types.float64)
LANE_KERNEL_SIG = types.void(_P, _P, _P, types.float64, _P, _P, _P, types.int64)

# Above this many multiplications per gradient the generated code gets long enough for LLVM
# to take many seconds, and the generic kernels are no longer loop-overhead bound.
MAX_PRODUCTS = 1000

NO_KERNEL = 0  # the kernel argument of the integrators when the generic kernels are in use


class LaneKernel:
    """A compiled lane kernel: ``cfunc`` (the Numba C callback) and ``address`` (its C
    function, what Numba code passes to :func:`call_lane_kernel`)."""

    def __init__(self, cfunc):
        self.cfunc = cfunc
        self.address = cfunc.address


def check_c_array(ty, ndim, name, caller):
    """Typing check of an intrinsic that passes an array as its data pointer: ``ty`` must be
    a C-contiguous ``ndim``-d float64 array (else TypingError naming ``caller`` and ``name``)."""
    if not (isinstance(ty, types.Array) and ty.dtype == types.float64 and ty.ndim == ndim
            and ty.layout == "C"):
        raise TypingError(f"{caller}: {name} must be a C-contiguous {ndim}-d float64 "
                          f"array, not {ty}")


@intrinsic
def call_lane_kernel(typingctx, kern, W, A, b, yy, out_g, out_L, out_v):
    """``kernel(W, A, b, yy, out_g, out_L, out_v, W.shape[1])`` for the generated kernel at
    address ``kern`` (int), the arrays passed as their data pointers: W, out_g (n_params, L),
    A (k_v, k_v), b (k_v,), out_L (L,), out_v (k_v, L), all C-contiguous float64 (checked when
    the caller compiles; the shapes are the caller's duty, as for any kernel argument). A plain
    indirect call: no reference counting, no error branch (the kernel cannot raise)."""
    if not isinstance(kern, types.Integer):
        raise TypingError(f"call_lane_kernel: kern must be the kernel's address, not {kern}")
    for ty, ndim, name in ((W, 2, "W"), (A, 2, "A"), (b, 1, "b"), (out_g, 2, "out_g"),
                           (out_L, 1, "out_L"), (out_v, 2, "out_v")):
        check_c_array(ty, ndim, name, "call_lane_kernel")
    if not isinstance(yy, types.Float):
        raise TypingError(f"call_lane_kernel: yy must be a float, not {yy}")
    sig = types.void(kern, W, A, b, yy, out_g, out_L, out_v)

    def codegen(context, builder, signature, args):
        dptr = ir.DoubleType().as_pointer()
        i64 = ir.IntType(64)
        fnty = ir.FunctionType(ir.VoidType(), [dptr, dptr, dptr, ir.DoubleType(), dptr, dptr,
                                               dptr, i64])
        fn = builder.inttoptr(context.cast(builder, args[0], signature.args[0], types.intp),
                              fnty.as_pointer())
        arrays = {i: context.make_array(signature.args[i])(context, builder, value=args[i])
                  for i in (1, 2, 3, 5, 6, 7)}
        lanes = builder.extract_value(arrays[1].shape, 1)
        yyv = context.cast(builder, args[4], signature.args[4], types.float64)
        builder.call(fn, [arrays[1].data, arrays[2].data, arrays[3].data, yyv, arrays[5].data,
                          arrays[6].data, arrays[7].data, lanes])
        return context.get_dummy_value()

    return sig, codegen


def _products(arch):
    """Structure of the prefix products of ``arch``: list over i = 0..N of lists of tap terms
    [(param index, source position)] per coefficient, None for a structural zero."""
    offs = arch.offsets
    rows = [[[]]]  # row 0: the constant 1 (an empty product)
    for i, (ki, Si) in enumerate(zip(arch.k, arch.dilations)):
        src = rows[-1]
        n_out = len(src) + (ki - 1) * Si
        dst = []
        for t in range(n_out):
            terms = [
                (offs[i] + a, t - a * Si)
                for a in range(ki)
                if 0 <= t - a * Si < len(src) and src[t - a * Si] is not None
            ]
            dst.append(terms or None)
        rows.append(dst)
    return rows


def n_products(arch):
    """Multiplications per gradient in the generated kernel for ``arch`` (the size that
    decides whether a kernel is generated)."""
    rows = _products(arch)
    kv = len(rows[-1])
    nz = sum(1 for t in rows[-1] if t)  # structurally non-zero coefficients of v
    fwd = sum(len(t) for row in rows[2:] for t in row if t)  # layer 1 only copies w
    gram = kv * nz + 2 * nz + kv + 1  # A v, v.h and b.v, 2 (h - b), 2 lin
    bwd = 0
    for i, ki in enumerate(arch.k):
        if i > 0:
            nzp = sum(1 for t in rows[i] if t is not None)
            bwd += ki * nzp + ki * len(rows[i])
    return fwd + gram + bwd


def kernel_source(arch, name="kernel"):
    """Python source of the straight-line lane kernel for the Architecture ``arch``."""
    k = arch.k
    S = arch.dilations
    N = len(k)
    offs = arch.offsets
    rows = _products(arch)
    n = offs[-1]
    kv = len(rows[-1])
    lines = [
        f"def {name}(W_ptr, A_ptr, b_ptr, yy, g_ptr, L_ptr, v_ptr, lanes):",
        f'    """Generated: loss and gradient of the square loss for k={k}, dilations={S}."""',
        f"    W = carray(W_ptr, ({n}, lanes))",
        f"    A = carray(A_ptr, ({kv}, {kv}))",
        f"    b = carray(b_ptr, ({kv},))",
        f"    out_g = carray(g_ptr, ({n}, lanes))",
        "    out_L = carray(L_ptr, (lanes,))",
        f"    out_v = carray(v_ptr, ({kv}, lanes))",
    ]
    emit = lines.append
    for r in range(kv):
        for q in range(kv):
            emit(f"    A{r}_{q} = A[{r}, {q}]")
        emit(f"    b{r} = b[{r}]")
    emit("    for l in range(W.shape[1]):")
    ind = "        "
    for q in range(n):
        emit(f"{ind}w{q} = W[{q}, l]")
    # forward: prefix products p{i}_{t}; a coefficient is a sum over taps a of w * p_{i-1}
    names = [["1"]]
    for i in range(1, N + 1):
        row = []
        for t, terms in enumerate(rows[i]):
            if terms is None:
                row.append(None)
                continue
            src = names[i - 1]
            parts = [f"w{q}" if src[m] == "1" else f"w{q} * {src[m]}" for q, m in terms]
            emit(f"{ind}p{i}_{t} = " + " + ".join(parts))
            row.append(f"p{i}_{t}")
        names.append(row)
    v = names[N]
    nzv = [q for q in range(kv) if v[q] is not None]
    # Gram: h = A v, L = v.h - 2 b.v + yy, G = 2 (h - b)
    for r in range(kv):
        emit(f"{ind}h{r} = " + (" + ".join(f"A{r}_{q} * {v[q]}" for q in nzv) or "0.0"))
    emit(f"{ind}quad = " + (" + ".join(f"{v[r]} * h{r}" for r in nzv) or "0.0"))
    emit(f"{ind}lin = " + (" + ".join(f"b{r} * {v[r]}" for r in nzv) or "0.0"))
    emit(f"{ind}out_L[l] = quad - 2.0 * lin + yy")
    for r in range(kv):
        emit(f"{ind}out_v[{r}, l] = {v[r] if v[r] is not None else '0.0'}")
    G = []
    for r in range(kv):
        emit(f"{ind}g{N}_{r} = 2.0 * (h{r} - b{r})")
        G.append(f"g{N}_{r}")
    # reverse pass: dL/dw_i[a] = sum_m G[m + a S_i] p_{i-1}[m]; G_{i-1}[m] = sum_a G[m + a S_i] w_i[a]
    for i in range(N - 1, -1, -1):
        src = names[i]
        for a in range(k[i]):
            sh = a * S[i]
            parts = [
                G[m + sh] if src[m] == "1" else f"{G[m + sh]} * {src[m]}"
                for m in range(len(src))
                if src[m] is not None
            ]
            emit(f"{ind}out_g[{offs[i] + a}, l] = " + (" + ".join(parts) or "0.0"))
        if i > 0:
            Gn = []
            for m in range(len(src)):
                parts = [f"{G[m + a * S[i]]} * w{offs[i] + a}" for a in range(k[i])]
                emit(f"{ind}g{i}_{m} = " + " + ".join(parts))
                Gn.append(f"g{i}_{m}")
            G = Gn
    return "\n".join(lines) + "\n"


def _module_source(arch):
    return (
        '"""Generated by lcnfast._codegen; do not edit (written again when its text differs).\n\n'
        'lcnfast._codegen compiles ``kernel`` as a cfunc with LANE_KERNEL_SIG and noalias."""\n\n'
        "from numba import carray\n\n\n"
        + kernel_source(arch)
    )


def cache_dir():
    """Where generated kernel modules live: ``$LCNFAST_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/lcnfast`` (``~/.cache/lcnfast``). Numba caches their machine code in
    ``__pycache__`` there."""
    env = os.environ.get("LCNFAST_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lcnfast"


_LOADED = {}


def lane_kernel(arch):
    """The compiled straight-line kernel (a :class:`LaneKernel`) for the Architecture
    ``arch``, generated, written and compiled on first use (about a second for small filters;
    later processes load it from the disk cache)."""
    key = (arch.k, arch.dilations)
    if key in _LOADED:
        return _LOADED[key]
    src = _module_source(arch)
    tag = hashlib.sha256(src.encode()).hexdigest()[:20]
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"lcnfast_lane_{tag}.py"
    data = src.encode()
    try:
        ok = path.read_bytes() == data
        if not ok:  # the name is a digest of the text: damaged (or edited by hand)
            warnings.warn(
                f"lcnfast: generated kernel file {path} is damaged (its text is not the "
                "generated source); writing it again",
                _numba_cache.CacheWarning,
                stacklevel=3,
            )
    except FileNotFoundError:
        ok = False
    if not ok:
        # atomic: concurrent processes write the same text; the file is never seen half-written
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".lcnfast-partial-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    name = f"lcnfast_lane_{tag}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    # from the verified text, not through a .pyc that could be damaged in turn
    exec(compile(data, str(path), "exec"), mod.__dict__)
    _LOADED[key] = LaneKernel(_numba_cache.cfunc(LANE_KERNEL_SIG, noalias=True)(mod.kernel))
    return _LOADED[key]
