"""The generated tap blocks: the committed lcnfast/_taps.py is what its generator writes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lcnfast


def test_committed_taps_module_is_up_to_date():
    path = Path(lcnfast.__file__).with_name("_taps_gen.py")
    spec = importlib.util.spec_from_file_location("_taps_gen", path)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.TARGET.read_text() == gen.source(), "run: python lcnfast/_taps_gen.py"


def test_fast_convolution_and_correlation_against_plain_sums_for_1_to_30_taps():
    """_conv_sh (the first 13 taps in one pass, the rest in blocks of at most 8) and _corr_sh
    (blocks of up to 13) equal plain numpy sums over the taps, for every filter length the
    blocks split differently (1..30 taps), at 1e-14 relative to the sum of |terms|."""
    import numpy as np

    from lcnfast import _data_path

    rng = np.random.default_rng(4)
    n, sh = 101, 7
    for kv in range(1, 31):
        v = rng.standard_normal(kv)
        X = rng.standard_normal(n + (kv - 1) * sh)
        taps = np.stack([X[q * sh : q * sh + n] for q in range(kv)])  # (kv, n)
        z = np.empty(n)
        _data_path._conv_sh(v, kv, X, sh, z, n)
        scale = np.abs(v) @ np.abs(taps)
        assert np.all(np.abs(z - v @ taps) <= 1e-14 * scale), kv
        g = rng.standard_normal(n)
        G = np.ones(kv)  # corr adds into G
        _data_path._corr_sh(g, kv, X, sh, n, G)
        ref = 1.0 + taps @ g
        assert np.all(np.abs(G - ref) <= 1e-14 * (1.0 + np.abs(taps) @ np.abs(g))), kv
