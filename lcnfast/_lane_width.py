"""The lane width: how many flows the lane kernels of :mod:`lcnfast._lanes` keep side by side.

Chosen once, when lcnfast is imported, from the CPU that Numba compiles for: 16 lanes when it
has AVX-512 (``+avx512f``), else 8. The environment variable ``LCNFAST_LANES`` overrides the
choice: a power of two from 1 to 64 (empty counts as unset).

The width is a compile-time constant of the kernels, so :mod:`lcnfast._numba_cache` keys the
on-disk cache on it as well as on the sources. Results never depend on it: each lane's
arithmetic is that of one flow alone (tests/test_lane_width.py checks it bitwise).

Pure Python (no Numba kernels): :mod:`lcnfast._numba_cache` reads the width before any cached
kernel is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENV = "LCNFAST_LANES"
MAX_LANES = 64
AVX512_LANES = 16  # four 256-bit vectors of float64 per inner loop (LLVM prefers 256 bits)
DEFAULT_LANES = 8  # two AVX2 vectors of float64 per inner loop


def target_has_avx512() -> bool:
    """Whether the CPU features Numba compiles for (``NUMBA_CPU_FEATURES``, else the host's
    as LLVM reports them) include AVX-512 Foundation."""
    from numba.core import config
    from numba.core.codegen import get_host_cpu_features

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return "+avx512f" in features.split(",")


def lane_width(environ: Mapping[str, str] = os.environ) -> int:
    """The lane width: ``environ[LCNFAST_LANES]`` if set and not empty, else 16 with AVX-512
    and 8 without. Raises ValueError naming LCNFAST_LANES if the variable is not a power of
    two from 1 to MAX_LANES."""
    value = environ.get(ENV, "").strip()
    if not value:
        return AVX512_LANES if target_has_avx512() else DEFAULT_LANES
    try:
        lanes = int(value)
    except ValueError:
        lanes = 0
    if not (1 <= lanes <= MAX_LANES and lanes & (lanes - 1) == 0):
        raise ValueError(
            f"{ENV} must be a power of two from 1 to {MAX_LANES} (the number of flows the "
            f"lane kernels keep side by side), not {environ[ENV]!r}"
        )
    return lanes


LANES = lane_width()
