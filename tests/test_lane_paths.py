"""Dormand-Prince's two paths through a step: the lanes with nothing to record move across the
lanes at once (SIMD), the others take the per-lane checks. Both must record the same."""

import warnings
from unittest import mock

import numpy as np
import pytest

import lcnfast as lf
from lcnfast import _integrate as I
from lcnfast import _rk45
from lcnfast.losses import square

_step_counts = _rk45._rk_step_counts.py_func


_CALLS = []


def _every_lane_per_lane(accepted, gn, wn, L_new, nonfinite, t_new, t_save, grad_tol, qm):
    _CALLS.append(int(accepted.sum()))
    qm[:] = 0  # no lane is quiet


def _every_accepted_lane_busy(flow, h, accepted, t, t_save, L_new, lev_top, n_acc, n_rej,
                              evals, rejected, t_new, am, busy):
    _step_counts(flow, h, accepted, t, t_save, L_new, lev_top, n_acc, n_rej, evals, rejected,
                 t_new, am, busy)
    busy[:] = accepted  # every accepted step checks its saves and levels lane by lane


def _fetch_add(arr, i, v):
    old = arr[i]
    arr[i] += v
    return old


def _in_python(worker, args, n_workers, stop):
    """The worker run once by the Python interpreter (its ``py_func``), the helpers it calls
    compiled as always."""
    worker.py_func(*args)


@pytest.mark.parametrize("kernel", ["generic", "generated"])
def test_rk45_records_the_same_on_both_paths(kernel):
    """Claim: rk45's records -- final states and filters, saved rows, first passage times of
    loss levels (t_below), the running maxima of the loss increase, ||v||_1 and ||w||_2,
    counts and statuses -- are bitwise the same whether a lane's accepted step takes the moves
    across the lanes (``_rk45._rk_quiet_lanes``, ``_rk_quiet_update``) or the per-lane checks.
    How: the compiled worker against the same worker run by the Python interpreter with every
    accepted lane sent through the per-lane checks (no lane quiet, every accepted step
    checking its saves and levels); the arithmetic is the compiled helpers' on both sides, so
    any difference is a path that records differently. 11 flows in one group of 8 lanes
    (refills), ending at t_end, on the gradient (grad_tol), at max_steps and (one, at its
    start) non-finite, with rejected steps, levels crossed mid-run and save times inside
    steps. Checked able to fail: ||w||_2's maximum not kept on the quiet path; a lane's level
    bound left at -inf when its flow starts (every crossing missed); a lane's next save time
    set to inf after its dense saves (the later saves missed)."""
    arch = lf.Architecture(14, (3, 2, 3), (1, 2, 1))
    td = lf.data.teacher(arch, 24, noise=0.1, seed=18)
    p = lf.Problem(arch, td.X, td.Y, square(), kernel=kernel)
    w0 = lf.data.initial_filters(arch, 11, scale=0.5, seed=2)
    w0[0] *= 1e80  # its loss overflows at the start
    w0[1] *= 3.0
    L0 = float(np.median(p.loss(w0)))
    levels = [L0 * q for q in (0.5, 0.1, 0.02, 1e-3)]
    kw = {"t_end": 0.1, "rtol": 1e-5, "atol": 1e-9, "grad_tol": 0.4, "max_steps": 80,
          "loss_levels": levels, "save_times": np.linspace(0.0, 0.1, 7), "n_threads": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lf.flows.FlowWarning)
        fast = lf.gradient_flow(p, w0, **kw)
        _CALLS.clear()
        with mock.patch.multiple(_rk45, _rk_quiet_lanes=_every_lane_per_lane,
                                 _rk_step_counts=_every_accepted_lane_busy,
                                 _atomic_load=lambda arr, i: arr[i], _fetch_add=_fetch_add), \
                mock.patch.object(lf.flows, "run_workers", _in_python):
            slow = lf.gradient_flow(p, w0, **kw)
    statuses = set(fast.status.values.tolist())
    assert statuses == {I.CONVERGED, I.REACHED_END, I.MAX_STEPS, I.NON_FINITE}, statuses
    tb = fast.t_below.values
    assert np.sum((tb > 0) & np.isfinite(tb)) >= 20  # crossed mid-run, not at the start
    assert int(fast.n_accepted.sum()) > 500 and int(fast.n_rejected.sum()) > 50
    assert sum(_CALLS) == int(fast.n_accepted.sum())  # every accepted step went per lane
    assert fast.attrs["gradient_kernel"] == kernel
    for name, var in fast.data_vars.items():
        np.testing.assert_array_equal(slow[name].values, var.values, err_msg=name)
