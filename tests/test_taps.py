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
