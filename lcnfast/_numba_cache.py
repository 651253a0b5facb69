"""Numba's on-disk cache of lcnfast's kernels, kept consistent with the package's sources.

Numba keys a cached function on its own source file only, but every ``@njit`` callee is
compiled into its caller, and module constants such as the lane width
(:mod:`lcnfast._lane_width`, chosen at import) are baked into the machine code: after an edit
of ``_kernels.py``, or in a process with another ``LCNFAST_LANES``, the cached workers of
``_lanes.py`` and ``_rk45.py`` would still run the old code, silently. :func:`purge_stale`
(called once when lcnfast is imported) removes the package's cache files from the directory
Numba caches them in for this process (:func:`cache_dir`) whenever the digest of the package's
sources and lane width differs from the one recorded there; Numba then recompiles. Other cache
directories are left alone: a process with its own ``NUMBA_CACHE_DIR`` never touches the
in-tree cache. With unchanged sources and width it only hashes the sources (~1 ms).

It also keeps a damaged or unwritable cache from ever being fatal (see "damaged entries"
below): :class:`GuardedCache` drops an entry that fails to load and Numba compiles it again,
:func:`caching_available` turns caching off when no cache location is writable; each case
gives one :class:`CacheWarning`.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import inspect
import os
import pickle
import sys
import warnings
from pathlib import Path

from . import _notice
from ._lane_width import LANES

_PKG = Path(__file__).resolve().parent
STAMP = "lcnfast-sources.sha256"


def cache_digest(lanes: int = LANES) -> str:
    """SHA-256 of what the compiled kernels depend on besides their own file: the package's
    Python sources (names and contents, in name order) and the lane width ``lanes``."""
    h = hashlib.sha256()
    for p in sorted(_PKG.glob("*.py")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    h.update(f"lanes={lanes}".encode())
    return h.hexdigest()


def _anchor():
    """A function of this package, for Numba's cache locators."""


def cache_dir() -> Path | None:
    """The directory where Numba caches this package's functions in this process, found by
    Numba's own locators in their order (``NUMBA_CACHE_DIR`` if set, else the in-tree
    ``__pycache__`` if writable, else the user-wide cache, ...; or those of
    ``NUMBA_CACHE_LOCATOR_CLASSES``), or None when no location is writable. All the package's
    kernel modules share it: they sit in one directory."""
    from numba.core import caching

    try:
        return Path(caching.FunctionCache(_anchor).cache_path)
    except RuntimeError:  # "cannot cache function ...: no locator available ..."
        return None


def purge_stale(dirs: list[Path] | None = None) -> list[Path]:
    """Remove Numba's index and data files (``*.nbi``, ``*.nbc``) from each existing
    directory of ``dirs`` (default: :func:`cache_dir`, if any) whose recorded digest is not
    :func:`cache_digest`, then record it. Returns the directories purged. I/O errors (a
    read-only installation, a race with another process) are ignored: Numba then recompiles
    or, at worst, a stale cache survives as it would without this guard."""
    digest = cache_digest()
    if dirs is None:
        dirs = [d for d in [cache_dir()] if d is not None]
    purged = []
    for d in dirs:
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


# ----------------------------------------------------------------------------- damaged entries
# Numba trusts its cache files: a truncated or overwritten index (.nbi) or data file (.nbc)
# raises from pickle (UnpicklingError, EOFError, ...) on every later load, and a data file
# damaged where pickle does not notice would hand corrupt machine code to LLVM. lcnfast's
# dispatchers therefore get a guarded cache (:class:`GuardedCache`, installed by
# :func:`guard_dispatchers` when the package is imported, and by :func:`cfunc` for C
# callbacks): data files carry a SHA-256 of their contents, checked before unpickling; any
# failure to load an entry drops that function's index and data files with one
# :class:`CacheWarning`, and Numba compiles it again (and saves a fresh entry). A cache that
# cannot be written any more is disabled for the function with one warning. When no cache
# location is writable at all (a read-only installation and an unwritable NUMBA_CACHE_DIR),
# lcnfast compiles without a cache (:func:`caching_available`), again with one warning.


class CacheWarning(RuntimeWarning):
    """A problem with lcnfast's on-disk kernel caches (handled: the kernels still run)."""


_WARNED: set = set()


def _warn_once(key, message):
    if key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(message, CacheWarning, stacklevel=2)


@functools.cache
def caching_available() -> bool:
    """Whether Numba can cache this package's functions (some cache location is writable).
    If not, warns once: the kernels are then compiled in every process."""
    from numba.core import caching

    try:
        caching.FunctionCache(_anchor)
    except RuntimeError as e:  # "cannot cache function ...: no locator available ..."
        _warn_once(
            "no-locator",
            f"lcnfast: Numba cannot cache its kernels ({e}); running uncached, so every "
            "process compiles them again. Set NUMBA_CACHE_DIR to a writable directory.",
        )
        return False
    return True


class DamagedEntry(Exception):
    """A cache data file whose checksum does not match its contents."""


_MAGIC = b"lcnfast-nbc-sha256\n"
_HEAD = len(_MAGIC) + 32


def _checked_file_class():
    from numba.core import caching

    class CheckedIndexDataCacheFile(caching.IndexDataCacheFile):
        """Numba's index and data files, data files prefixed with a SHA-256 of their payload."""

        def _save_data(self, name, data):
            payload = self._dump(data)
            with self._open_for_write(self._data_path(name)) as f:
                f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)

        def _load_data(self, name):
            path = self._data_path(name)
            with open(path, "rb") as f:
                blob = f.read()
            if blob[: len(_MAGIC)] != _MAGIC or (
                hashlib.sha256(memoryview(blob)[_HEAD:]).digest() != blob[len(_MAGIC) : _HEAD]
            ):
                raise DamagedEntry(f"{os.path.basename(path)}: checksum mismatch")
            return pickle.loads(memoryview(blob)[_HEAD:])

    return CheckedIndexDataCacheFile


_CHECKED = None


class GuardedCache:
    """Wraps the Numba ``FunctionCache`` of one function: damaged entries are dropped and
    recompiled, an unwritable cache is disabled, each with one :class:`CacheWarning`."""

    def __init__(self, inner):
        global _CHECKED
        self._inner = inner
        self._name = getattr(getattr(inner, "_impl", None), "filename_base", repr(inner))
        cf = getattr(inner, "_cache_file", None)
        try:
            if _CHECKED is None:
                _CHECKED = _checked_file_class()
            inner._cache_file = _CHECKED(
                cache_path=cf._cache_path,
                filename_base=inner._impl.filename_base,
                source_stamp=cf._source_stamp,
            )
        except AttributeError:  # pragma: no cover - a Numba whose cache internals differ
            pass

    @property
    def cache_path(self):
        return self._inner.cache_path

    def enable(self):
        self._inner.enable()

    def disable(self):
        self._inner.disable()

    def flush(self):
        self._inner.flush()

    def load_overload(self, sig, target_context):
        try:
            return self._inner.load_overload(sig, target_context)
        except Exception as e:  # noqa: BLE001 - any failure to load means a damaged entry
            removed = self._drop()
            what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            _warn_once(
                ("damaged", self.cache_path, self._name),
                f"lcnfast: damaged Numba cache entry {self._name} in {self.cache_path} "
                f"({what}); removed {len(removed)} file(s), compiling it again",
            )
            return None

    def save_overload(self, sig, data):
        try:
            self._inner.save_overload(sig, data)
        except OSError as e:
            self._inner.disable()
            _warn_once(
                ("unwritable", self.cache_path),
                f"lcnfast: cannot write Numba's cache in {self.cache_path} ({e}); kernels "
                "compiled from now on are not cached",
            )

    def _drop(self):
        """Remove this function's index and data files; returns the paths removed."""
        cf = self._inner._cache_file
        d = Path(cf._cache_path)
        removed = []
        for p in [Path(cf._index_path), *d.glob(glob.escape(self._name) + ".*.nbc")]:
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                continue
            except OSError:  # a read-only cache: nothing to do but compile
                continue
        return removed


def _guard(disp):
    from numba.core.caching import FunctionCache

    if isinstance(getattr(disp, "_cache", None), FunctionCache):
        disp._cache = GuardedCache(disp._cache)


def guard_dispatchers(modules=None):
    """Give every cached Numba dispatcher in ``modules`` (default: lcnfast's modules loaded so
    far) a :class:`GuardedCache`. Idempotent; lcnfast's ``__init__`` calls it once all its
    kernel modules are imported (a kernel module imported later calls it on itself)."""
    from numba.core.dispatcher import Dispatcher

    if modules is None:
        modules = [m for n, m in list(sys.modules.items()) if n.split(".")[0] == "lcnfast"]
    for mod in modules:
        for obj in list(vars(mod).values()):
            if isinstance(obj, Dispatcher):
                _guard(obj)


@functools.cache
def _noalias_pipeline():
    from numba.core import compiler

    class NoAliasCompiler(compiler.Compiler):
        """Numba's pipeline with its ``noalias`` flag set: LLVM is told that the function's
        array arguments never overlap."""

        def __init__(self, typingctx, targetctx, library, args, return_type, flags, locals):
            flags.noalias = True  # a fresh Flags object per compilation
            super().__init__(typingctx, targetctx, library, args, return_type, flags, locals)

    return NoAliasCompiler


def cfunc(sig, *, cache=True, noalias=False, **options):
    """``numba.cfunc(sig, cache=cache, **options)`` with a :class:`GuardedCache` (a C
    callback compiles, or loads from the cache, when it is decorated).

    ``noalias=True`` declares the array arguments non-overlapping (LLVM's ``noalias``), so
    that a loop loading from one array and storing to another vectorises without run-time
    overlap checks (which LLVM gives up on past a handful of pointers). Every caller must then
    pass distinct, non-overlapping arrays for the arguments it writes.
    """
    from numba.core import caching, compiler, sigutils
    from numba.core.ccallback import CFunc

    sig = sigutils.normalize_signature(sig)
    pipeline = _noalias_pipeline() if noalias else compiler.Compiler

    def wrapper(func):
        res = CFunc(func, sig, locals={}, options=options, pipeline_class=pipeline)
        if cache and caching_available():
            try:
                res._cache = GuardedCache(caching.FunctionCache(func))
            except RuntimeError as e:  # no locator for the file of func
                _warn_once(
                    ("no-locator", inspect.getfile(func)),
                    f"lcnfast: Numba cannot cache {func.__name__} ({e}); compiling it uncached",
                )
        with _notice.compiling():  # says so if it takes a while (a cache miss)
            res.compile()
        return res

    return wrapper
