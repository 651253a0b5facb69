"""netCDF input/output of lcnfast Datasets.

netCDF cannot store a pandas MultiIndex, so :func:`to_netcdf` writes the ``param`` index as
its two levels ``layer`` and ``tap`` and :func:`open_dataset` rebuilds it: a round trip gives
a Dataset identical to the one written (``xarray.testing.assert_identical``).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import secrets
import socket
import stat
import sys

import xarray as xr

__all__ = ["to_netcdf", "open_dataset"]


def _encoding(ds, level):
    enc = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "fiub" and var.ndim > 0:
            enc[name] = {"zlib": True, "complevel": level, "shuffle": True}
    return enc


# Temporary files of to_netcdf: ``.lcnfast-partial-<host>-<pid>-<random>.nc`` next to the
# target. A process killed while writing (kill -9, power loss) leaves one behind; the next
# to_netcdf into that directory removes those of processes of this host that no longer run.
_PARTIAL = ".lcnfast-partial-"


def _host():
    return socket.gethostname().replace("-", "_").replace(os.sep, "_") or "host"


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists (another user's)
        return True
    return True


def _partial_writer_gone(name, age, other_host_age):
    """Whether the ``to_netcdf`` temporary file ``name`` (``.lcnfast-partial-<host>-<pid>-``
    ``<random>.nc``), last modified ``age`` seconds ago, was left by a writer that no longer
    runs: a process of this host that is gone (never this one), or, since a process of another
    host cannot be asked, a file of another host unchanged for ``other_host_age`` seconds."""
    if not (name.startswith(_PARTIAL) and name.endswith(".nc")):
        return False
    prefix = f"{_PARTIAL}{_host()}-"
    if not name.startswith(prefix):
        return age >= other_host_age
    pid = name[len(prefix) :].split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid))


def _remove_stale_partials(directory):
    """Remove this host's partial files in ``directory`` whose writer no longer runs."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if _partial_writer_gone(name, 0.0, math.inf):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def _create_partial(directory):
    """Create an empty partial file with the mode a new file gets here (0666 less the umask,
    and the directory's default ACL, applied by the system); returns its path."""
    base = f"{_PARTIAL}{_host()}-{os.getpid()}-"
    for _ in range(100):
        tmp = os.path.join(directory, base + secrets.token_hex(6) + ".nc")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"path: cannot create a temporary file in {directory!r}")


def _fsync_file(path):
    """Flush the content of the file ``path`` to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory):
    """Flush the entries of ``directory`` (a rename into it) to the disk, where the system
    allows it (some cannot open or sync a directory: then the system keeps its own pace)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


#: free bytes below which a failed write is blamed on a full disk (the failed write itself
#: fills the disk to its last blocks before it fails)
_NEARLY_FULL = 1 << 20


def _no_space(directory, exc):
    """Whether ``exc`` (raised while writing into ``directory``) came from a full disk: its
    errno (or a chained one's) is ENOSPC, or the directory's file system is (nearly) full."""
    e = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < _NEARLY_FULL


def _write_error(exc, directory, path):
    """The OSError to raise for a failed write of ``path``: "no space left on <directory>" when
    the disk is full (netCDF says only "NetCDF: HDF error"), else the error with the file named."""
    if _no_space(directory, exc):
        return OSError(errno.ENOSPC, f"no space left on {directory} (writing {path})")
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return OSError(getattr(exc, "errno", None) or errno.EIO, f"cannot write it: {reason}", path)


def _thread_write_lock():
    """A context in which xarray writes a netCDF file under a lock of this process, not one
    of the dask scheduler in use. In a dask worker (a study's shard) xarray took a distributed
    lock: a round trip to the scheduler per write, and a client of the worker's own which,
    when the cluster closed under a write after Ctrl-C, printed "Exception ignored in
    Client.__del__ ... IOLoop is closed" at the end of an interrupted run. The data written
    are numpy arrays and the file (a fresh temporary one) is ours alone: xarray's thread lock
    suffices. ``scheduler="synchronous"`` is what makes xarray choose it; dask is only asked
    if it is loaded already (otherwise xarray takes that lock anyway)."""
    dask = sys.modules.get("dask")
    if dask is None or not hasattr(dask, "config"):
        return contextlib.nullcontext()
    return dask.config.set(scheduler="synchronous")


def to_netcdf(ds, path, *, complevel=4):
    """Write ``ds`` to ``path`` (netCDF4, zlib-compressed) atomically.

    The file is written under a temporary name in the same directory,
    ``.lcnfast-partial-<host>-<pid>-<random>.nc``, flushed to the disk (fsync) and renamed
    into place, and the directory is flushed after the rename where the system allows: so
    neither a crash nor a power loss leaves a half-written or empty file at ``path``; partial
    files left by killed processes of this host are removed by the next write into that
    directory. A failed write raises OSError naming ``path`` (the netCDF library's
    RuntimeError included); on a full disk its text is "no space left on <directory>". A new file gets the usual mode (0666
    less the umask); an existing file keeps its mode (and, where permitted, its owner and
    group). If ``path`` is a symbolic link, the file it points to is replaced and the link
    kept. Returns ``path``.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    target = os.path.realpath(path)  # through symbolic links: write the file they point to
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ValueError(f"path: directory {directory!r} does not exist")
    if os.path.isdir(target):
        raise ValueError(f"path: {path!r} is a directory")
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    out = ds
    if "param" in ds.indexes and "layer" in ds.coords:
        out = ds.reset_index("param")
    _remove_stale_partials(directory)
    tmp = _create_partial(directory)
    try:
        with _thread_write_lock():
            out.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                          encoding=_encoding(out, complevel))  # fmt: skip
        if old is not None:  # keep the owner (where permitted) and mode of the file replaced
            st = os.stat(tmp)
            if (st.st_uid, st.st_gid) != (old.st_uid, old.st_gid):
                with contextlib.suppress(OSError):  # only root may give a file away
                    os.chown(tmp, old.st_uid, old.st_gid)
            os.chmod(tmp, stat.S_IMODE(old.st_mode))  # after chown, which clears set-id bits
        _fsync_file(tmp)
        os.replace(tmp, target)
    except (OSError, RuntimeError) as e:  # RuntimeError: "NetCDF: HDF error", a full disk too
        err = _write_error(e, directory, path)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if err is e:
            raise
        raise err from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)
    return path


def open_dataset(path):
    """Read a Dataset written by :func:`to_netcdf` (fully loaded, file closed), with the
    ``param`` MultiIndex (layer, tap) restored."""
    with xr.open_dataset(path, engine="netcdf4") as f:
        ds = f.load()
    if "layer" in ds.coords and "tap" in ds.coords and "param" in ds.dims:
        ds = ds.set_index(param=["layer", "tap"])
    for var in ds.variables.values():
        for key in ("zlib", "complevel", "shuffle"):
            var.encoding.pop(key, None)
    return ds
