"""netCDF input/output of lcnfast Datasets.

netCDF cannot store a pandas MultiIndex, so :func:`to_netcdf` writes the ``param`` index as
its two levels ``layer`` and ``tap`` and :func:`open_dataset` rebuilds it: a round trip gives
a Dataset identical to the one written (``xarray.testing.assert_identical``).
"""

from __future__ import annotations

import os
import tempfile

import xarray as xr

__all__ = ["to_netcdf", "open_dataset"]


def _encoding(ds, level):
    enc = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "fiub" and var.ndim > 0:
            enc[name] = {"zlib": True, "complevel": level, "shuffle": True}
    return enc


def to_netcdf(ds, path, *, complevel=4):
    """Write ``ds`` to ``path`` (netCDF4, zlib-compressed) atomically.

    The file is written under a temporary name in the same directory and renamed into place,
    so a crash never leaves a half-written file at ``path``. Returns ``path``.
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"path: directory {directory!r} does not exist")
    out = ds
    if "param" in ds.indexes and "layer" in ds.coords:
        out = ds.reset_index("param")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nc", dir=directory)
    os.close(fd)
    try:
        out.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=_encoding(out, complevel))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
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
