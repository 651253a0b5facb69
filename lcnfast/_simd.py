"""What the fast data path needs from the CPU and Numba cannot express: 512-bit vectorisation
of a loop, and a quotient without the divider (lcnfast._data_path, lcnfast._taps).

Private module.

- :func:`prefer_512` (an intrinsic, called first in a jitted function): on a CPU with AVX-512,
  LLVM's X86 backend vectorises loops with 256-bit vectors unless the function says otherwise
  (its cost model prefers 256 bits there; clang's ``-mprefer-vector-width=512`` is the
  per-translation-unit switch, which Numba does not offer). It gives the function LLVM's
  ``"prefer-vector-width"="512"`` attribute, and ``noinline``, so that the attribute governs
  the body wherever it is called from (inlined into a caller, the body would be vectorised at
  the caller's width, and a reduction's summation order, which follows the vector width, would
  depend on the caller). Without AVX-512 it changes nothing (LLVM then has no 512-bit
  registers to prefer). Measured on the log-cosh data path, one core (README, "How it is
  fast"): the 13-tap convolution and correlation ~0.52 -> ~0.37 ns per output each.
  llvmlite's ``FunctionAttributes`` accepts a fixed list of attribute names only; the string
  attribute is added to its underlying set, which it prints verbatim.
- :func:`quotient` (g = num / den over n elements): with AVX-512, the divider's throughput
  (one float64 quotient per ~2 cycles, 256 or 512 bits alike) bounds the log-cosh tanh, so
  the quotient is computed from ``vrcp14pd`` (|relative error| < 2^-14), one Newton step
  (< 2^-27) and one correction of the quotient itself:
  ``x = r + r (1 - den r)``, ``q = num x``, ``g = q - x (den q - num)``, the last two
  fused (FMA; written so that -0 / den stays -0), so that g is within one ulp of the
  correctly rounded num / den (faithful: the error before the final rounding is ~2^-54
  relative). Each element's result depends on its own num and den only (the tail is
  computed in lane 0 of the same vector arithmetic), so it is the same at any position, in
  any chunking. Without AVX-512: the division itself.
"""

from __future__ import annotations

import numba as nb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import JIT
from ._lane_width import target_has_avx512

# whether quotient uses vrcp14pd (the CPU features Numba compiles for; a compile-time constant:
# Numba's cache index includes the target's features)
RCP14 = target_has_avx512()

_F64 = ir.DoubleType()
_V8 = ir.VectorType(_F64, 8)


@intrinsic
def prefer_512(typingctx):
    """Marks the calling function ``"prefer-vector-width"="512"`` and ``noinline`` (see the
    module docstring). Call it as the first statement; returns None."""

    def codegen(context, builder, signature, args):
        attrs = builder.function.attributes
        try:  # a string attribute, printed verbatim
            set.add(attrs, '"prefer-vector-width"="512"')
        except TypeError:  # an llvmlite whose attribute set is no set: 256-bit code, still right
            pass
        attrs.add("noinline")
        return context.get_dummy_value()

    return types.none(), codegen


def _quotient_v8(builder, num, den):
    """IR: num / den for two <8 x double> by vrcp14pd, a Newton step and a correction."""
    mod = builder.module
    rcp14 = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_V8, [_V8, _V8, ir.IntType(8)]), "llvm.x86.avx512.rcp14.pd.512")
    fma = cgutils.get_or_insert_function(mod, ir.FunctionType(_V8, [_V8] * 3), "llvm.fma.v8f64")
    neg_den = builder.fneg(den)
    r = builder.call(rcp14, [den, ir.Constant(_V8, [0.0] * 8), ir.Constant(ir.IntType(8), -1)])
    e = builder.call(fma, [neg_den, r, ir.Constant(_V8, [1.0] * 8)])  # 1 - den r
    x = builder.call(fma, [r, e, r])  # 1 / den to ~2^-27
    q = builder.fmul(num, x)
    # g = q - x (den q - num) (not q + x (num - den q): the same value, and tanh(-0) stays -0)
    res = builder.call(fma, [den, q, builder.fneg(num)])
    return builder.call(fma, [builder.fneg(x), res, q])


@intrinsic
def _quotient8(typingctx, num, den, g, i):
    """g[i:i+8] = num[i:i+8] / den[i:i+8] (vrcp14pd; no bounds check: i + 8 <= size)."""

    def codegen(context, builder, signature, args):
        ptrs = []
        for k in range(3):
            arr = context.make_array(signature.args[k])(context, builder, args[k])
            ptrs.append(builder.bitcast(builder.gep(arr.data, [args[3]]), _V8.as_pointer()))
        n8 = builder.load(ptrs[0], align=8)
        d8 = builder.load(ptrs[1], align=8)
        builder.store(_quotient_v8(builder, n8, d8), ptrs[2], align=8)
        return context.get_dummy_value()

    return types.none(num, den, g, i), codegen


@intrinsic
def _quotient1(typingctx, num, den):
    """num / den for two float64, in lane 0 of :func:`_quotient8`'s arithmetic (same bits)."""
    if num != types.float64 or den != types.float64:
        return None

    def codegen(context, builder, signature, args):
        zero = ir.Constant(ir.IntType(32), 0)
        n8 = builder.insert_element(ir.Constant(_V8, [0.0] * 8), args[0], zero)
        d8 = builder.insert_element(ir.Constant(_V8, [1.0] * 8), args[1], zero)
        return builder.extract_element(_quotient_v8(builder, n8, d8), zero)

    return types.float64(types.float64, types.float64), codegen


@nb.njit(**JIT)
def quotient_rcp14(num, den, g, n):
    """g[t] = num[t] / den[t] for t < n, faithfully (within one ulp), by vrcp14pd: needs
    AVX-512 (use :func:`quotient`). g may be num or den (in place)."""
    n8 = n - n % 8
    for i in range(0, n8, 8):
        _quotient8(num, den, g, i)
    for t in range(n8, n):
        g[t] = _quotient1(num[t], den[t])


@nb.njit(**JIT)
def quotient_div(num, den, g, n):
    """g[t] = num[t] / den[t] for t < n, by division (correctly rounded). g may be num or den."""
    prefer_512()
    for t in range(n):
        g[t] = num[t] / den[t]


# g[t] = num[t] / den[t] for t < n (g may be num or den): quotient_rcp14 where the CPU has
# AVX-512, else quotient_div (chosen here, so that the other is never compiled: vrcp14pd has no
# instruction to select without AVX-512)
quotient = quotient_rcp14 if RCP14 else quotient_div
