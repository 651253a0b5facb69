"""Classification of the limits of a flow Dataset (lcnfast.flows schema)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr

from .. import losses as _losses
from ..flows import STATUS
from ._common import _check_problem, _deltas, _loss_scale, _var
from .points import NOT_CONVERGED, NOT_CRITICAL, _classify_points

STATUS_CODES = {meaning: code for code, meaning in STATUS.items()}
#: flow statuses that end a flow before it converged (label ``not_converged`` when not critical)
STOPPED = ("reached_end", "max_steps", "step_underflow", "interrupted")
#: ``at_grad_floor``: the gradient norm is within this factor of ``grad_floor``
GRAD_FLOOR_FACTOR = 10.0

# ----------------------------------------------------------------------------- flow Datasets
#: a loss increase counts when above this many eps times max(|loss_init|, L(v=0)): the
#: rounding error of evaluating L (Gram path: eps * (||Y||^2 + v^T A v), see Problem's Notes)
LOSS_INCREASE_EPS = 64


def _check_flow_dataset(ds, problem):
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"ds must be an xarray.Dataset, got {type(ds).__name__}")
    if "w_final" not in ds:
        raise ValueError("ds must have a variable 'w_final' (flow, param) (lcnfast.flows schema)")
    if set(ds.w_final.dims) != {"flow", "param"}:
        raise ValueError(f"ds.w_final must have dims (flow, param), got {ds.w_final.dims}")
    _check_variables(ds)
    arch = problem.arch
    if ds.sizes["param"] != arch.n_params:
        raise ValueError(
            f"ds has {ds.sizes['param']} parameters but the problem's architecture has "
            f"{arch.n_params}"
        )
    if "architecture" in ds.attrs:
        a = _json_attr(ds, "architecture")
        if a != arch.to_dict():
            raise ValueError(f"ds.attrs['architecture'] = {a} does not match problem.arch {arch!r}")
    if "loss" in ds.attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                loss = _losses.from_dict(_json_attr(ds, "loss"))
            except (KeyError, TypeError) as e:
                raise ValueError(f"ds.attrs['loss'] is not a loss of lcnfast.flows ({e!r})") from None
        if loss != problem.loss_fn:
            raise ValueError(
                f"ds.attrs['loss'] = {loss!r} does not match problem.loss_fn {problem.loss_fn!r}"
            )
    # the data: a Problem on other data gave wrong labels silently (Datasets before
    # data_sha256 have m only)
    if "m" in ds.attrs and int(ds.attrs["m"]) != problem.m:
        raise ValueError(f"ds.attrs['m'] = {ds.attrs['m']} samples, but the problem has "
                         f"m = {problem.m}: the flows ran on other data")
    if "data_sha256" in ds.attrs and ds.attrs["data_sha256"] != problem._data_sha256:
        raise ValueError("ds.attrs['data_sha256'] does not match the problem's data (X, Y): "
                         "the flows ran on other data")
    if "layer" in ds.coords and "tap" in ds.coords:
        want_layer = np.concatenate([np.full(ki, i + 1) for i, ki in enumerate(arch.k)])
        want_tap = np.concatenate([np.arange(ki) for ki in arch.k])
        if not (
            np.array_equal(ds["layer"].values, want_layer)
            and np.array_equal(ds["tap"].values, want_tap)
        ):
            raise ValueError("ds's param index (layer, tap) is not in the architecture's order")


#: the variables of the flow schema that classify reads where present: dims and kinds of values
_SCHEMA = {
    "w_init": (("flow", "param"), "biuf"), "status": (("flow",), "biuf"),
    "loss_init": (("flow",), "biuf"), "max_loss_increase": (("flow",), "biuf"),
    "t_switch": (("flow",), "biuf"),
}  # fmt: skip


def _check_variables(ds):
    """ValueError naming the variable or attribute unless those classify reads have the flow
    schema's dims and real values (a hand-made Dataset gave numpy broadcast errors, or a
    complex w_final lost its imaginary part silently)."""
    if ds.w_final.dtype.kind not in "biuf":
        raise ValueError(f"ds.w_final must hold real numbers, got dtype {ds.w_final.dtype}")
    for name, (dims, kinds) in _SCHEMA.items():
        if name not in ds:
            continue
        da = ds[name]
        if set(da.dims) != set(dims):
            raise ValueError(f"ds.{name} must have dims {dims}, got {da.dims}")
        if da.dtype.kind not in kinds:
            raise ValueError(f"ds.{name} must hold real numbers, got dtype {da.dtype}")
    if "w_init" in ds and ds.sizes["param"] != ds.w_init.sizes["param"]:
        raise ValueError("ds.w_init and ds.w_final must have the same param dimension")
    rtol = ds.attrs.get("rtol")
    if rtol is not None and (isinstance(rtol, (bool, str)) or not np.isscalar(rtol)
                             or not np.isreal(rtol)):
        raise ValueError(f"ds.attrs['rtol'] must be a real number, got {rtol!r}")


def _json_attr(ds, name):
    try:
        return json.loads(ds.attrs[name])
    except (TypeError, ValueError) as e:
        raise ValueError(f"ds.attrs[{name!r}] is not the JSON lcnfast.flows writes ({e})") from None


def _per_flow(da, K):
    """The values of ``da`` as (K, rest), flow first (K = 0 included)."""
    a = da.transpose("flow", ...).values
    return a.reshape(K, int(np.prod(a.shape[1:], dtype=np.int64)))


def classify(ds, problem, *, global_min=None, **tolerances):
    """Classify the limit points ``w_final`` of a flow Dataset and add the results to it.

    Nothing is integrated again: the analysis uses ``w_final`` and the flows' recorded
    invariants only. The Dataset must follow the :mod:`lcnfast.flows` schema (at least
    ``w_final`` (flow, param); ``delta_init``/``delta_final``, ``max_loss_increase``,
    ``loss_init`` are used when present) and match ``problem`` (architecture and loss
    attributes, parameter order).

    Parameters
    ----------
    ds : xarray.Dataset
    problem : Problem
        The problem the flows were run on (data X, Y are not stored in the Dataset).
    global_min : float or ImageMinimum, optional
        The global minimum of L over w for this problem, computed once by the caller (see
        :mod:`lcnfast.analysis.reference`; otherwise computed here where needed).
    **tolerances
        ``grad_tol``, ``eig_tol``, ``gap_tol``, ``root_tol``, ``jac_tol``, ``zero_filter_tol``
        (see :mod:`lcnfast.analysis`).

    Returns
    -------
    xarray.Dataset
        ``ds`` with the variables of :func:`classify_points` (previous analysis variables of the
        same names are replaced), plus ``balance_drift`` (flow) = max_i |delta_final - delta_init|
        and ``loss_increased`` (flow, bool) = ``max_loss_increase`` above rounding level
        (``LOSS_INCREASE_EPS * eps * max(|loss_init|, L(v=0))``), when the inputs exist.
        With ``status``: flows with status ``non_finite`` are labelled ``non_finite`` (also when
        ``w_final`` is finite), and flows that stopped without converging with
        ``||grad L|| > grad_tol`` get label ``not_converged`` instead of ``not_critical``. With
        ``rtol`` (attribute): ``grad_floor`` and ``at_grad_floor`` (NaN / False without it; see
        :func:`_grad_floor`).
        Attribute ``analysis``: JSON of the tolerances and rules used.
    """
    _check_problem(problem)
    _check_flow_dataset(ds, problem)
    W = ds.w_final.transpose("flow", "param").values
    status = ds.status.values if "status" in ds else None
    diverged = None if status is None else status == STATUS_CODES["non_finite"]
    res = _classify_points(
        problem, W, None, None, tolerances, global_min=global_min, finite_only=False,
        diverged=diverged,
    )  # fmt: skip
    if status is not None:
        label = res.label.values.copy()
        stopped = np.isin(status, [STATUS_CODES[s] for s in STOPPED])
        label[stopped & (label == NOT_CRITICAL)] = NOT_CONVERGED
        res["label"] = (res.label.dims, label, res.label.attrs)
    extra = _grad_floor(res, W, _floor_rtol(ds))
    if "delta_init" in ds and "delta_final" in ds:
        d0 = _per_flow(ds.delta_init, W.shape[0])
        d1 = _per_flow(ds.delta_final, W.shape[0])
        with np.errstate(invalid="ignore"):
            drift = np.max(np.abs(d1 - d0), axis=1, initial=0.0)
        drift = np.where(np.all(np.isfinite(d1 - d0), axis=1), drift, np.nan)
        extra["balance_drift"] = _var(
            "flow",
            drift,
            "max_i |delta_i(t_final) - delta_i(0)| (Lemma 3.3: 0 for the exact flow)",
        )
    elif "w_init" in ds:
        W0 = ds.w_init.transpose("flow", "param").values
        with np.errstate(invalid="ignore"):
            drift = np.max(
                np.abs(_deltas(problem.arch, W) - _deltas(problem.arch, W0)),
                axis=1,
                initial=0.0,
            )
        extra["balance_drift"] = _var(
            "flow", drift, "max_i |delta_i(w_final) - delta_i(w_init)| (Lemma 3.3)"
        )
    if "max_loss_increase" in ds:
        inc = ds.max_loss_increase.values
        ref = np.abs(ds.loss_init.values) if "loss_init" in ds else np.zeros_like(inc)
        thr = LOSS_INCREASE_EPS * np.finfo(float).eps * np.maximum(ref, _loss_scale(problem))
        with np.errstate(invalid="ignore"):
            extra["loss_increased"] = _var(
                "flow",
                inc > thr,
                "max_loss_increase above rounding level: the loss increased on some accepted step",
            )
    res = res.assign(extra)
    if "flow" in ds.coords:
        res = res.assign_coords(flow=ds["flow"].values)
    stale = [
        v
        for v in list(res.data_vars) + ["eig", "sv", "root", "root_layer", "layer_no"]
        if v in ds.variables
    ]
    out = ds.drop_vars(stale)
    out = xr.merge([out, res], compat="no_conflicts", join="exact", combine_attrs="override")
    out.attrs = {**ds.attrs, "analysis": res.attrs["analysis"]}
    return out


def _floor_rtol(ds):
    """Per flow, the relative accuracy the integrator resolves the state to (None if unknown):
    the Dataset's ``rtol`` for Dormand-Prince (``method`` "rk45", and "auto" flows that never
    switched, ``t_switch`` NaN); float64 eps for RODAS ("rosenbrock", switched "auto" flows),
    which is L-stable and takes steps as large as its error control allows near a limit, so
    that its gradient reaches about ``eps lambda_max ||w||`` (see :func:`lcnfast.gradient_flow`).
    None without ``rtol`` (gradient descent)."""
    if "rtol" not in ds.attrs:
        return None
    K = ds.sizes["flow"]
    rtol = np.full(K, float(ds.attrs["rtol"]))
    method = ds.attrs.get("method", "rk45")
    eps = np.finfo(float).eps
    if method == "rosenbrock":
        rtol[:] = eps
    elif method == "auto" and "t_switch" in ds:
        rtol[np.isfinite(ds.t_switch.values)] = eps
    return rtol


def _grad_floor(res, W, rtol):
    """``grad_floor`` and ``at_grad_floor`` (flow) for integrators resolving the state to a
    relative accuracy ``rtol`` ((K,), from :func:`_floor_rtol`; None: NaN / False).

    An explicit integrator's error control is relative, so it resolves the state only to about
    ``rtol * ||w||``: near a minimum the distance to the limit cannot fall much below that, and
    the gradient ``H (w - w*)`` not below ``grad_floor = lambda_max * ||w|| * rtol`` with
    ``lambda_max`` the largest |eigenvalue| of the projected Hessian at the point
    (``hess_scale``; the symmetry directions removed are flat there). Measured for RK45 on
    k = (3, 3) (test_analysis_fixes): flows stalled at the global minimum have gradient norms
    0.05 - 0.12 times ``grad_floor``. ``at_grad_floor``:
    ``grad_tol < ||grad L|| <= GRAD_FLOOR_FACTOR * grad_floor``, i.e. not certified critical,
    but at the integrator's accuracy limit (tighten rtol, or use method "rosenbrock", to
    certify it).
    """
    floor = np.full(W.shape[0], np.nan)
    grad_tol = json.loads(res.attrs["analysis"])["grad_tol"]
    if rtol is not None:
        with np.errstate(invalid="ignore", over="ignore"):
            floor = res.hess_scale.values * np.linalg.norm(W, axis=1) * rtol
    g = res.limit_grad_norm.values
    with np.errstate(invalid="ignore"):
        at = (g > grad_tol) & (g <= GRAD_FLOOR_FACTOR * floor)
    return {
        "grad_floor": _var(
            "flow",
            floor,
            "lambda_max * ||w|| * rtol (eps for RODAS): the integrator's gradient floor",
        ),
        "at_grad_floor": _var(
            "flow",
            at,
            f"grad_tol < ||grad L|| <= {GRAD_FLOOR_FACTOR:g} grad_floor: not certified critical, "
            "but at the integrator's accuracy limit",
        ),
    }
