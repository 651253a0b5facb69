"""The random numbers of a study: datasets and initial points from stateless seed streams.

Every dataset and every flow has its own ``numpy.random.SeedSequence(seed, spawn_key=key)``, so
each number is bitwise the same whatever the shard size, the number of workers, the order of
the shards or a resumption. The keys use the *levels* (indices in the spec's lists) of only the
factors that the draw depends on, so cells that differ in other factors share their draws
(common random numbers, a paired design):

- dataset ``d`` of a cell: ``(0, architecture, m, inputs, target, d)``. The inputs X and the
  teacher are the same for every loss, integrator, initialisation and noise level; the noise
  is ``noise * E`` with the same E.
- flow ``f`` of dataset ``d``: ``(1, architecture, d, f)``, a vector z of N(0, 1) entries; the
  initial point is ``scale * z`` (``init.distribution = "gaussian"``) or that point moved
  along its rescaling orbit to equal layer norms (``"balanced"``: the same final filter
  ``v = pi(w)``, all balancedness constants delta_i = 0, Lemma 3.3). So the flows of every loss,
  integrator and scale start from the same directions.
"""

from __future__ import annotations

import zipfile

import numpy as np
import xarray as xr

from .. import data as _data
from ..architecture import Architecture
from ..problem import as_real_array

__all__ = ["make_dataset", "draw_inputs", "initial_points", "read_data_file"]

_DATA_KEY, _FLOW_KEY = 0, 1


def _rng(seed, key):
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=tuple(int(k) for k in key)))


def read_data_file(path):
    """X (d0, m) and Y (d_N, m) or None from a ``.npz`` (arrays ``X``, ``Y``) or netCDF file
    (variables ``X``, ``Y``). ValueError naming the file when it is no such file or its arrays
    do not hold real numbers (a complex X lost its imaginary part with a numpy warning)."""
    if str(path).endswith(".npz"):
        if not zipfile.is_zipfile(path):  # np.load took it for a pickle: "use allow_pickle"
            raise ValueError(f"data.inputs.file: {path} is not a .npz file (np.savez writes one)")
        with np.load(path) as f:
            arrays = {k: f[k] for k in ("X", "Y") if k in f.files}
    else:
        try:
            with xr.open_dataset(path) as f:
                arrays = {k: f[k].values for k in ("X", "Y") if k in f}
        except (OSError, ValueError) as e:  # xarray: three lines on engines for any bad file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"data.inputs.file: {path} is not a netCDF file xarray can read "
                             f"({first})") from None
    if "X" not in arrays:
        raise ValueError(f"data.inputs.file: {path} has no array 'X'")
    try:
        X, Y = (None if k not in arrays else np.array(as_real_array(arrays[k], k)) for k in "XY")
    except (TypeError, ValueError) as e:
        raise ValueError(f"data.inputs.file: {path}: {e}") from None
    return X, Y


def make_dataset(cell, dataset, seed):
    """Data (X, Y) of dataset number ``dataset`` of ``cell``.

    Inputs: ``"gaussian"`` X ~ N(0, 1/m); ``{low_rank = r}`` rank-r X with a positive definite
    window Gram; ``{gram_singular = q}`` X whose window Gram has q zero eigenvalues;
    ``{gram_near_singular = eps}`` a generic perturbation of size eps of a nullity-1 X (the
    smallest eigenvalue of A is O(eps^2); :mod:`lcnfast.data`); ``{file = ...}`` the file's X. Targets: ``"teacher"`` Y = pi(w*) * X
    with w* ~ N(0, 1) (realisable); ``"gaussian"`` Y ~ N(0, 1/m) entries (no structure);
    ``{v = [...]}`` Y = the convolution with v (stride s_v), v possibly outside the image of pi;
    ``"file"`` the file's Y. Then ``noise`` times N(0, 1) entries are added to Y.

    Returns
    -------
    X : ndarray (d0, m)
    Y : ndarray (d_N, m)
    v_target : ndarray (k_v,) or None
        The target filter (teacher or given v), when there is one.
    """
    arch = cell.arch()
    lv = cell.levels
    rng = _rng(seed, (_DATA_KEY, lv["architecture"], lv["m"], lv["inputs"], lv["target"], dataset))
    X, Y_file = draw_inputs(arch, cell.inputs, cell.m, rng)
    m = X.shape[1]
    v_target = None
    target = cell.target
    if target == "teacher":
        td = _data.teacher_for_inputs(arch, X, noise=0.0, seed=rng)
        Y, v_target = td.Y, td.v_teacher
    elif target == "gaussian":
        Y = rng.standard_normal((arch.d_N, m)) / np.sqrt(m)
    elif target == "file":
        if Y_file is None:
            raise ValueError(f"data.target: 'file' but {cell.inputs['file']} has no Y")
        Y = Y_file
    else:
        v_target = np.asarray(target["v"], dtype=np.float64)
        Y = _data.conv_apply(v_target, X, arch.s_v)
    if Y.shape != (arch.d_N, m):
        raise ValueError(f"data: Y must have shape (d_N={arch.d_N}, m={m}), got {Y.shape}")
    if cell.noise > 0:
        Y = Y + cell.noise * rng.standard_normal(Y.shape)
    return X, np.ascontiguousarray(Y), v_target


def draw_inputs(arch, inp, m, rng):
    """Inputs X (d0, m) and the file's Y (d_N, m) or None, for a resolved ``data.inputs``
    value ``inp`` and ``m`` samples (None for a file), drawn with the Generator ``rng``.
    Raises ValueError where they cannot be made (a rank above min(d0, m), a file X of
    another d0, ...): :mod:`lcnfast.study.spec_checks` runs it once on every spec."""
    if inp == "gaussian":
        return rng.standard_normal((arch.d0, m)) / np.sqrt(m), None
    if "low_rank" in inp:
        return _data.low_rank_inputs(arch, m, inp["low_rank"], seed=rng), None
    if "gram_singular" in inp:
        return _data.gram_singular_inputs(arch, m, nullity=inp["gram_singular"], seed=rng), None
    if "gram_near_singular" in inp:
        X = _data.gram_near_singular_inputs(arch, m, inp["gram_near_singular"], seed=rng)
        return X, None
    X, Y = read_data_file(inp["file"])
    if X.ndim != 2 or X.shape[0] != arch.d0 or X.shape[1] < 1:
        raise ValueError(
            f"data.inputs.file: X must have shape (d0={arch.d0}, m) with m >= 1, got {X.shape} "
            f"({inp['file']})"
        )
    if not np.all(np.isfinite(X)) or (Y is not None and not np.all(np.isfinite(Y))):
        raise ValueError(f"data.inputs.file: X or Y contains NaN or Inf ({inp['file']})")
    return X, Y


def initial_points(cell, dataset, f0, f1, seed):
    """Initial points (f1 - f0, n_params) of flows f0..f1-1 of dataset ``dataset`` of ``cell``."""
    arch = cell.arch()
    lv = cell.levels["architecture"]
    Z = np.empty((f1 - f0, arch.n_params))
    for r, f in enumerate(range(f0, f1)):
        Z[r] = _rng(seed, (_FLOW_KEY, lv, dataset, f)).standard_normal(arch.n_params)
    W = cell.init_scale * Z
    if cell.init_distribution == "balanced":
        W = balance(arch, W)
    return W


def balance(arch: Architecture, W):
    """Move each row of W (K, n_params) along its rescaling orbit to equal layer norms.

    Layer i is multiplied by ``g / ||w^(i)||`` with g the geometric mean of the layer norms, so
    the factors multiply to 1 and ``pi(w)`` is unchanged (section 1.1). Rows with a zero layer
    are returned unchanged.
    """
    W = np.array(W, dtype=np.float64)
    norms = np.stack([np.linalg.norm(W[:, arch.layer_slice(i)], axis=1) for i in range(arch.depth)], 1)
    ok = np.all(norms > 0, axis=1)
    g = np.exp(np.mean(np.log(np.where(ok[:, None], norms, 1.0)), axis=1))
    for i in range(arch.depth):
        sl = arch.layer_slice(i)
        W[ok, sl] *= (g[ok] / norms[ok, i])[:, None]
    return W
