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
# # All-strided architectures: regular limits and distinct limit values
#
# Analysis of the `strided` study. For all-strided architectures the image of pi has dimension
# sum k_i - N + 1; every limit should be a regular point of pi (Jacobian of that rank, no zero
# filter). The image is not convex: how many distinct limit values does a dataset have, and how
# often is the best one reached? `LCNFAST_QUICK=1` uses the small `--quick` size; the study is
# run first if its results are missing.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lcnfast import study

NAME = "strided"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
ROOT = study.builtin_specs()[NAME].parents[1]
DATA = Path(os.environ.get("LCNFAST_DATA", ROOT / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)
sec = study.load_sections(NAME)  # the report's own tables (studies/sections/strided.py)
print(ds.sizes["flow"], "flows")

# %% [markdown]
# ## Rank of the Jacobian of pi at the limits, per architecture

# %%
print(ds.jac_rank.groupby("architecture").min().to_series(), ds.jac_rank.groupby("architecture").max().to_series())

# %% [markdown]
# ## How close to rank-deficient are the limits?
# The singular value of index sum k_i - N + 1 (relative to the largest): far above jac_tol
# means a robustly regular limit.

# %%
fig, ax = plt.subplots()
for i, (arch, sub) in enumerate(ds.groupby("architecture")):
    r = int(sub.jac_rank.max())
    x = np.log10(sub.jac_sv.values[:, r - 1])
    ax.hist(x, bins=np.linspace(-6, 0, 31), histtype="step", label=str(arch))
ax.set(xlabel="log10 sigma_r / sigma_max", ylabel="flows")
ax.legend(fontsize=7)

# %% [markdown]
# ## Distinct limit values per dataset

# %%
tab = sec.per_dataset(ds)
print(tab[["architecture", "loss_fn", "target", "dataset", "n_values", "at_best", "converged"]])
