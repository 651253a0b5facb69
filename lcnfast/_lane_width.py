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

DEFAULT_L1_DATA_BYTES = 32 * 2**10  # where the host's cannot be read


def l1_data_cache_bytes(sysfs: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The size in bytes of CPU 0's level-1 data cache, as Linux reports it under ``sysfs``
    (``index*/level``, ``type``, ``size`` such as "48K"); DEFAULT_L1_DATA_BYTES where it
    cannot be read (another system, a container without sysfs, a size that is no number)."""

    def read(entry, name):
        with open(os.path.join(sysfs, entry, name)) as f:
            return f.read().strip()

    units = {"K": 2**10, "M": 2**20}
    try:
        entries = sorted(e for e in os.listdir(sysfs) if e.startswith("index"))
    except OSError:
        return DEFAULT_L1_DATA_BYTES
    for entry in entries:
        try:
            if read(entry, "level") != "1" or read(entry, "type") not in ("Data", "Unified"):
                continue
            size = read(entry, "size")
            return int(size[:-1]) * units[size[-1]] if size[-1:] in units else int(size)
        except (OSError, ValueError):
            return DEFAULT_L1_DATA_BYTES
    return DEFAULT_L1_DATA_BYTES


L1_DATA_BYTES = l1_data_cache_bytes()

# The widest group of flows a worker keeps in the generated kernel's lanes, per integrator.
# Measured (square loss (32; 3,3,3), m = 128, one thread, AVX2; studies/bench_width.py):
# one call of the generated kernel costs ~50 ns plus ~9 ns per lane, so at 8 lanes the fixed
# part is a third of the gradient; gradient descent ran 2.2-2.6e7 evaluations/s at 8 lanes,
# 3.3-3.8e7 at 32 and 3.8-4.4e7 at 64 (4096 flows).
MAX_FLOW_WIDTH = {"euler": 64, "rk45": 64}
GROUPS_PER_WORKER = 4  # at least this many full groups of flows per worker
# Dormand-Prince's bookkeeping runs across the lanes over its seven stage arrays (7 n width
# float64, n parameters), and its best width depends on whether they stay in the L1 cache:
# at most RK45_STAGES_L1_SHARE of it. Measured (two threads, studies/bench_width.py and
# alternating runs of each width): on a 2-core Zen 3 (AVX2, 32 KiB), (32; 3,3,3) with n = 9
# was fastest at 32 lanes (384 flows, one thread: 3.17e7 gradient evaluations/s against 2.77e7
# at 64; 4096 flows, 4 rounds: 7.4-8.4e7 against 7.4-8.2e7). On a 2-core Zen 5 (AVX-512, 48
# KiB), n = 9 at 64 lanes (32 KiB of stages) beat 32 in every round (1024 flows, 4 rounds:
# median 1.54e8 against 1.34e8, and 1.50e8 against 1.39e8 at 32 and 1.43e8 at 128 in a
# second run); n = 12 ((48; 4,4,4)) and n = 15 ((64; 5,5,5)) ran alike at 32 and 64 (3
# rounds: 8.7-9.5e7 against 8.4-10.1e7; 2.4-2.7e7 against 2.5-2.6e7); n = 21 ((64; 7,7,7)),
# 74 KiB of stages at 64 lanes, ran 25% slower at 64 than at 32 (t_end = 2: 7.6-7.9e6
# against 0.98-1.04e7), and fastest at 16 (t_end = 1: 1.29-1.33e7 against 1.20-1.24e7 at 32).
# Two thirds of L1 separates these cases (n = 9: 64 lanes on Zen 5, 32 on Zen 3; n = 12 and
# 15: 32; n = 21: 16).
RK45_STAGES_L1_SHARE = 2 / 3


def rk45_stages_fit(n_params: int, width: int, l1_bytes: int | None = None) -> bool:
    """Whether Dormand-Prince's seven stage arrays of ``width`` flows with ``n_params``
    parameters each take at most RK45_STAGES_L1_SHARE of the L1 data cache (``l1_bytes``,
    default the host's, L1_DATA_BYTES)."""
    l1 = L1_DATA_BYTES if l1_bytes is None else l1_bytes
    return 7 * n_params * width * 8 <= RK45_STAGES_L1_SHARE * l1


def flow_width(n_flows: int, n_workers: int, method: str, n_params: int = 0) -> int:
    """How many flows a worker of ``method`` ("euler" or "rk45") keeps side by side through
    the generated kernel: the widest of LANES, 2 LANES, 4 LANES, ... up to
    ``MAX_FLOW_WIDTH[method]`` that still gives each of ``n_workers`` workers
    ``GROUPS_PER_WORKER`` groups of ``n_flows`` flows (never below LANES); for "rk45" also
    one whose stage arrays of ``n_params`` parameters per flow fit (:func:`rk45_stages_fit`).
    A wide group pays the kernel's fixed cost once for more flows; enough groups per worker
    keep the workers busy to the end (lanes refill one flow at a time; the last group of each
    worker runs partly empty). Results do not depend on it (each lane computes its flow
    alone)."""
    width = LANES
    while (2 * width <= MAX_FLOW_WIDTH[method]
           and n_flows >= GROUPS_PER_WORKER * n_workers * 2 * width
           and (method != "rk45" or rk45_stages_fit(n_params, 2 * width))):
        width *= 2
    return width
