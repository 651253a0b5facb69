# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Which limits are global? (`limits` study)
#
# Filling (3,3), non-filling (2,4), (3,2,2), (2,2,2,2) and strided (3,2; s = 2,2)
# architectures, all with k_v = 5, on teacher, Gaussian and fixed targets v* (one without
# real roots, one with double roots). `LCNFAST_QUICK=1` uses the `--quick` size; missing
# flows are run first.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lcnfast import study
from lcnfast.analysis import LABELS

NAME = "limits"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
DATA = Path(os.environ.get("LCNFAST_DATA", study.builtin_specs()[NAME].parents[1] / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)

# %% [markdown]
# ## Fraction at the global minimum per architecture and target
# `is_global` where the analysis decides it, otherwise `reached_best` (the best value found).

# %%
ref = ds.is_global.where(np.isfinite(ds.is_global), ds.reached_best.astype(float))
frac = ref.groupby("cell").mean()
cells = {c.index: c for c in study.load_spec(NAME, quick=QUICK).cells}
for c, f in zip(frac.cell.values, frac.values):
    print(f"{cells[c].labels['architecture']:>24} {cells[c].labels['target']:>20}  {f:.2f}")

# %% [markdown]
# ## Non-global limits: common roots (Prop. 5.1) and their Hessian
# A non-global stride-1 limit must have a common root of two layer polynomials ([7, Prop. 5.1]:
# stride 1 and a convex loss; `prop51_ok` is NaN where it does not apply, here the strided
# architecture). Is it a saddle (escapable) or a strict local minimum modulo the rescaling
# symmetry?

# %%
applies = np.isfinite(ds.prop51_ok)
nonglob = ds.is_critical & (ref == 0) & applies
sub = ds.isel(flow=np.flatnonzero(nonglob.values))
print(len(sub.flow), "non-global critical limits of stride-1 architectures")
if len(sub.flow):
    print("common root:", float(sub.has_common_root.mean()))
    print("labels:", {LABELS[k]: int((sub.label == k).sum()) for k in np.unique(sub.label)})
strided = ds.is_critical & (ref == 0) & ~applies
print(int(strided.sum()), "non-global critical limits of strided architectures (not covered)")

# %% [markdown]
# ## Roots of the limits of one non-global cell, per layer
# Shared roots sit on top of each other; the convex minimum's roots are marked for contrast.

# %%
if len(sub.flow):
    f = sub.isel(flow=0)
    fig, ax = plt.subplots()
    layer = f.root_layer.values
    for l in np.unique(layer[layer > 0]):
        m = layer == l
        ax.scatter(f.root_real.values[m], f.root_imag.values[m], label=f"layer {l}", s=60 - 20 * l)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="Re", ylabel="Im", title=f"cell {int(f.cell)}: roots of the layer polynomials")
    ax.legend()
