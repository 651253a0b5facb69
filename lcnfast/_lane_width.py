"""The lane width: how many flows the lane kernels of :mod:`lcnfast._lanes` keep side by side.

Chosen once, when lcnfast is imported, from the CPU that Numba compiles for: 16 lanes when it
has AVX-512 (``+avx512f``), else 8. The environment variable ``LCNFAST_LANES`` overrides the
choice: a power of two from 1 to 64 (empty counts as unset).

The integrators' workers keep this many flows side by side with the generic lane kernels.
Through the straight-line kernel generated for the square loss (:mod:`lcnfast._codegen`),
which takes any number of lanes at run time, a worker keeps :func:`flow_width` flows instead:
more lanes for large runs, since each call of that kernel has a fixed cost.

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

# The widest group of flows a worker keeps in the generated kernel's lanes, per integrator.
# Measured (square loss (32; 3,3,3), m = 128, one thread, AVX2; studies/bench_width.py):
# one call of the generated kernel costs ~50 ns plus ~9 ns per lane, so at 8 lanes the fixed
# part is a third of the gradient; gradient descent ran 2.2-2.6e7 evaluations/s at 8 lanes,
# 3.3-3.8e7 at 32 and 3.8-4.4e7 at 64 (4096 flows). Dormand-Prince, whose bookkeeping runs
# across the lanes, depends on the CPU. On a 2-core Zen 3 (AVX2, 32 KiB L1 data cache) it was
# fastest at 32 (384 flows, one thread: 3.17e7 against 2.77e7 at 64; 1024 flows, two threads:
# even; 4096 flows, two threads, 4 alternating rounds: 7.4-8.2e7 at 64, 7.4-8.4e7 at 32), its
# seven stage arrays alone filling the L1 cache at 64 lanes (n = 9). On a 2-core Zen 5
# (AVX-512, 48 KiB) 64 lanes were faster in every round (1024 flows, two threads, 4 rounds:
# median 1.54e8 against 1.34e8 at 32, and 1.50e8 against 1.39e8 at 32 and 1.43e8 at 128 in
# a second run, where gradient descent had 1.62e8 at 64, 1.58e8 at 128; 4096 flows, one
# thread, 3 rounds: 7.6-8.2e7 against 7.1-7.6e7 at 32): with 512-bit vectors the fixed costs
# weigh more. Hence its cap follows the CPU.
MAX_FLOW_WIDTH = {"euler": 64, "rk45": 64 if target_has_avx512() else 32}
GROUPS_PER_WORKER = 4  # at least this many full groups of flows per worker


def flow_width(n_flows: int, n_workers: int, method: str) -> int:
    """How many flows a worker of ``method`` ("euler" or "rk45") keeps side by side through
    the generated kernel: the widest of LANES, 2 LANES, 4 LANES, ... up to
    ``MAX_FLOW_WIDTH[method]`` that still gives each of ``n_workers`` workers
    ``GROUPS_PER_WORKER`` groups of ``n_flows`` flows (never below LANES). A wide group pays
    the kernel's fixed cost once for more flows; enough groups per worker keep the workers
    busy to the end (lanes refill one flow at a time; the last group of each worker runs
    partly empty). Results do not depend on it (each lane computes its flow alone)."""
    width = LANES
    while (2 * width <= MAX_FLOW_WIDTH[method]
           and n_flows >= GROUPS_PER_WORKER * n_workers * 2 * width):
        width *= 2
    return width
