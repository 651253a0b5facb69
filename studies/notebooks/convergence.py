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
# # Convergence of gradient flows (Theorems 3.4 and 3.8)
#
# Analysis of the `convergence` study: every loss of Theorem 3.8 and two outside it, on
# stride-1, strided and mixed architectures. This notebook reads the study's results as one
# xarray Dataset (`lcnfast.study.load`) and asks the questions the report answers, so that
# you can ask your own next. `LCNFAST_QUICK=1` uses the small `--quick` size; the study is
# run first if its results are missing (only the missing flows are computed).

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lcnfast import study
from lcnfast.analysis import LABELS

NAME = "convergence"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
DATA = Path(os.environ.get("LCNFAST_DATA", study.builtin_specs()[NAME].parents[1] / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)
print(ds.sizes["flow"], "flows;", "factors:", [f for f in ("architecture", "loss_fn") if f in ds.coords])

# %% [markdown]
# ## Did every flow converge?
# `status` says why each flow stopped; `converged` means ||grad L|| <= grad_tol.

# %%
converged = (ds.status == 0)
print(converged.groupby("loss_fn").mean().to_series())

# %% [markdown]
# ## How far is each end point from its limit?
# `newton_step_final` is the last Newton-like correction at the end point, an estimate of
# ||w(T) - w_inf||. Degenerate limits (l_p with large p near a flat minimum) converge slowly:
# the correction is much larger than the gradient norm there.

# %%
tab = ds[["grad_norm_final", "newton_step_final"]].groupby("loss_fn").median().to_dataframe()
print(tab)

# %% [markdown]
# ## Lemma 3.3: balancedness, relative to the integrator's tolerance

# %%
rtol = 1e-8
drift = ds.balance_drift / (rtol * (1 + ds.w_norm_max**2))
fig, ax = plt.subplots()
for name, d in drift.groupby("loss_fn"):
    ax.hist(np.log10(d.values[d.values > 0]), bins=30, histtype="step", label=str(name))
ax.set(xlabel="log10 drift / (rtol (1 + max ||w||^2))", ylabel="flows")
ax.legend(fontsize=6)

# %% [markdown]
# ## Which limits are reached? (labels of `lcnfast.analysis.classify`)

# %%
for code, name in enumerate(LABELS):
    frac = (ds.label == code).groupby("architecture").mean()
    if frac.max() > 0:
        print(name, frac.to_series().round(3).to_dict())
