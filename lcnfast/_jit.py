"""Numba compile options shared by the kernel modules.

- JIT: cached (unless no cache location is writable: see lcnfast._numba_cache), no GIL,
  numpy's error model (1/0 gives inf, no exception).
- Fast-math flags, only on the private data-path helpers that name them (never 'nnan'/'ninf':
  NaN and Inf keep their meaning, a diverging flow still shows up as NaN/Inf):
  - JIT_C: 'contract' lets LLVM fuse a*b + c into one FMA (more accurate, not reordered);
  - JIT_R: 'reassoc' too, for the reductions over output positions only, so that LLVM can
    vectorise them. The summation order is then fixed by the compiled code: deterministic on a
    given machine, and it depends only on the problem's shape, never on other flows, the batch
    or the threads. Helpers under 'reassoc' must not contain the tanh range reduction.
"""

from ._numba_cache import caching_available

CACHE = caching_available()
JIT = dict(cache=CACHE, nogil=True, error_model="numpy")
JIT_C = dict(JIT, fastmath={"contract"})
JIT_R = dict(JIT, fastmath={"reassoc", "contract"})
