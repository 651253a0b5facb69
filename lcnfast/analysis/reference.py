"""Reference values for limit losses: the best found, the convex function-space minimum and
the global minimum over w (``is_global``), and the Prop. 5.1 test built on them.

Which global minimum ``is_global`` compares with (``global_reference``, in the ``is_global``
attributes and the ``analysis`` JSON):

- ``"image_min"``, given: the caller's ``global_min`` (a float or an
  :class:`~lcnfast.analysis.function_space.ImageMinimum`, computed once per dataset);
- ``"convex_min"``: a filling architecture (image of pi = R^{k_v}) with a convex loss: the
  minimum of the convex function-space loss (:func:`convex_minimum`) is the global minimum;
- ``"image_min"``, computed: any other architecture (two or more even widths, strides) with a
  convex loss: :func:`image_minimum` with its defaults (cost: 48 local trust-region
  minimisations run as one batch, about 0.03-0.1 s for small architectures, once per process
  and dataset: image_minimum keeps its results; or pass ``global_min``);
- ``"none"``: a non-convex loss without ``global_min``: ``is_global`` is NaN (undecided).

``is_global`` is 1.0 where ``limit_loss - loss_global_min <= gap_tol * L(v = 0)``, 0.0 where
not, NaN for non-finite points or without a reference. A limit below the reference by more
than the tolerance means the reference was not the minimum (the multistart missed it): a
RuntimeWarning is issued and the lowest limit is used instead.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ._common import _loss_scale, _var
from .function_space import ImageMinimum, convex_minimum, image_minimum, loss_on_data

F, VT = "flow", "v_tap"


def _check_global_min(global_min):
    if global_min is None:
        return None
    if isinstance(global_min, ImageMinimum):
        return float(global_min.value)
    if isinstance(global_min, bool) or not isinstance(global_min, numbers.Real):
        raise TypeError(f"global_min must be a real number or an ImageMinimum, got {global_min!r}")
    if not math.isfinite(global_min):
        raise ValueError(f"global_min must be finite, got {global_min!r}")
    return float(global_min)


def _lowered(name, ref, loss, finite, gap_abs):
    """``ref``, or the lowest finite limit loss when that is lower by more than ``gap_abs``."""
    best = float(np.min(loss[finite])) if finite.any() else np.nan
    if finite.any() and best < ref - gap_abs:
        warnings.warn(
            f"a point has loss {best!r} below the {name} {ref!r}; using the lower value",
            RuntimeWarning,
            stacklevel=4,
        )
        return best
    return ref


def reference_vars(problem, loss, V, finite, critical, has_common, jac_def, tol, global_min):
    """Variables comparing ``loss`` (K,) (on the data) with the reference values (module
    docstring) and the metadata describing them: ``(vars, meta)``."""
    arch, loss_fn = problem.arch, problem.loss_fn
    gref = _check_global_min(global_min)
    lscale = _loss_scale(problem)
    gap_abs = tol["gap_tol"] * lscale
    best = float(np.min(loss[finite])) if finite.any() else np.nan
    out = {
        "loss_best_found": _var((), best, "lowest limit_loss among these points"),
        "gap_to_best": _var(F, loss - best, "limit_loss - loss_best_found"),
        "reached_best": _var(
            F, finite & (loss - best <= gap_abs), "gap_to_best <= gap_tol * L(v=0)"
        ),
    }
    meta = {"loss_scale": lscale, "filling": arch.filling}
    attains = None
    if loss_fn.convex:
        v_star, _, info = convex_minimum(problem)
        L_star = float(loss_on_data(problem, v_star[None])[0])
        if _lowered("convex solver's minimum", L_star, loss, finite, gap_abs) < L_star:
            L_star = best
            v_star = V[finite][np.argmin(loss[finite])]
        gap = loss - L_star
        attains = finite & (gap <= gap_abs)
        out["loss_convex_min"] = _var(
            (), L_star, "min over v in R^{k_v} of the convex function-space loss (on the data)"
        )
        out["v_convex_min"] = _var(VT, v_star, "a minimiser of the function-space loss")
        out["loss_gap"] = _var(F, gap, "limit_loss - loss_convex_min (the global gap when filling)")
        out["attains_convex_min"] = _var(F, attains, "loss_gap <= gap_tol * L(v=0)")
        meta["convex_solver"] = info
        if all(s == 1 for s in arch.s):
            nonglobal = critical & ~attains
            out["prop51_ok"] = _var(
                F,
                ~(nonglobal & ~has_common),
                "[7, Prop 5.1]: not (critical, not at the convex minimum, and no common root)",
            )
            out["prop51_ok_jac"] = _var(
                F,
                ~(nonglobal & ~jac_def),
                "as prop51_ok with common roots detected by the rank of the Jacobian of pi",
            )
    meta["prop51_applicable"] = bool(loss_fn.convex and all(s == 1 for s in arch.s))
    if gref is not None:
        kind, how = "image_min", "given by the caller (global_min)"
    elif loss_fn.convex and arch.filling:
        kind, how, gref = "convex_min", "filling architecture, convex loss", L_star
    elif loss_fn.convex:
        im = image_minimum(problem, gap_tol=tol["gap_tol"])
        kind, gref = "image_min", im.value
        how = f"image_minimum: {im.n_reached} of {im.n_starts} starts reached it"
        meta["image_min"] = {"n_starts": im.n_starts, "n_reached": im.n_reached}
    else:
        kind, how = "none", "non-convex loss and no global_min given"
    meta["global_reference"] = kind
    meta["global_reference_how"] = how
    if kind == "none":
        is_global = np.full(loss.shape, np.nan)
        gref = np.nan
    else:
        if kind == "image_min":
            gref = _lowered("global minimum over the image of pi", gref, loss, finite, gap_abs)
        is_global = np.where(finite, (loss - gref <= gap_abs).astype(float), np.nan)
    out["loss_global_min"] = _var((), gref, "global minimum of L over w (see global_reference)")
    out["global_gap"] = _var(F, loss - gref, "limit_loss - loss_global_min")
    out["is_global"] = _var(
        F,
        is_global,
        "at the global minimum over w: global_gap <= gap_tol * L(v=0) (1.0 / 0.0; NaN: undecided)",
        global_reference=kind,
    )
    return out, meta
