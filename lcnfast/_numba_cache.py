"""Numba's on-disk cache of lcnfast's kernels, kept consistent with the package's sources.

Numba keys a cached function on its own file's modification time and size only, but every
``@njit`` callee is compiled into its caller: after an edit of ``_kernels.py``, the cached
workers of ``_lanes.py`` and ``_integrate.py`` would still run the old kernels, silently.
:func:`purge_stale` (called once when lcnfast is imported) removes the package's cache files
wherever Numba may keep them whenever the digest of the package's sources differs from the one
recorded there; Numba then recompiles. With unchanged sources it only hashes them (~1 ms).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent
STAMP = "lcnfast-sources.sha256"


def sources_digest() -> str:
    """SHA-256 of the package's Python sources (names and contents, in name order)."""
    h = hashlib.sha256()
    for p in sorted(_PKG.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _anchor():
    """A function of this package, for Numba's cache locators."""


def cache_dirs() -> list[Path]:
    """The directories where Numba may cache this package's functions: the in-tree
    ``__pycache__``, the user-wide cache and ``NUMBA_CACHE_DIR`` (those that apply)."""
    from numba.core import caching

    dirs = [_PKG / "__pycache__"]
    for cls in (caching.UserWideCacheLocator, caching.UserProvidedCacheLocator):
        try:
            loc = cls.from_function(_anchor, __file__)
        except Exception:  # pragma: no cover - a locator that does not apply here
            loc = None
        if loc is not None:
            dirs.append(Path(loc.get_cache_path()))
    return dirs


def purge_stale(dirs: list[Path] | None = None) -> list[Path]:
    """Remove Numba's index and data files (``*.nbi``, ``*.nbc``) from each existing
    directory of ``dirs`` (default :func:`cache_dirs`) whose recorded digest is not that of
    the current sources, then record it. Returns the directories purged. I/O errors (a
    read-only installation, a race with another process) are ignored: Numba then recompiles
    or, at worst, a stale cache survives as it would without this guard."""
    digest = sources_digest()
    purged = []
    for d in cache_dirs() if dirs is None else dirs:
        stamp = d / STAMP
        try:
            if not d.is_dir() or (stamp.is_file() and stamp.read_text().strip() == digest):
                continue
            for p in list(d.glob("*.nbi")) + list(d.glob("*.nbc")):
                p.unlink(missing_ok=True)
            tmp = d / f"{STAMP}.{os.getpid()}.tmp"
            tmp.write_text(digest + "\n")
            os.replace(tmp, stamp)
            purged.append(d)
        except OSError:
            continue
    return purged
