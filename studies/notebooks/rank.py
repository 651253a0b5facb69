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
# # The rank hypothesis (`rank` study)
#
# Theorem 3.4 assumes X X^T of full rank. Here X X^T is full rank, rank-deficient with the
# window Gram A positive definite, or A is singular / nearly singular. `LCNFAST_QUICK=1`
# uses the `--quick` size; missing flows are run first.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lcnfast import study

NAME = "rank"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
DATA = Path(os.environ.get("LCNFAST_DATA", study.builtin_specs()[NAME].parents[1] / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)

# %% [markdown]
# ## Convergence by rank condition
# `xxt_full_rank` and `gram_pd` are stored per flow by the study (lcnfast.analysis.rank_report).

# %%
conv = ds.status == 0
for full in (True, False):
    for pd_ in (True, False):
        sel = (ds.xxt_full_rank == full) & (ds.gram_pd == pd_)
        if int(sel.sum()):
            print(f"X X^T full rank={full!s:5} A p.d.={pd_!s:5}: "
                  f"{int(conv[sel].sum())}/{int(sel.sum())} converged")

# %% [markdown]
# ## The direction the data cannot see
# For each dataset, the eigenvector u of the smallest eigenvalue of A; how much of the final
# filter v lies along it, against lambda_min(A).

# %%
rows = []
for c, d in sorted({(int(a), int(b)) for a, b in zip(ds.cell.values, ds.dataset.values)}):
    A = study.load_problem(out, c, d).A
    ev, U = np.linalg.eigh(A)
    sel = (ds.cell.values == c) & (ds.dataset.values == d)
    v = ds.v_final.values[sel, : A.shape[0]]
    comp = np.abs(v @ U[:, 0]) / np.linalg.norm(v, axis=1)
    rows += [(max(ev[0] / ev[-1], 1e-18), x) for x in comp]
lam, comp = np.array(rows).T
fig, ax = plt.subplots()
ax.scatter(lam, comp, s=8)
ax.set(xscale="log", xlabel="lambda_min(A) / lambda_max(A)", ylabel="|u^T v| / ||v||")

# %% [markdown]
# ## ||w(t)|| along the flows with a singular A

# %%
sing = ds.gram_pd.values == 0
w = ds.w.values[sing]
norms = np.sqrt(np.nansum(w**2, axis=2))
norms[~np.isfinite(w).any(axis=2)] = np.nan
fig, ax = plt.subplots()
ax.plot(ds.time.values[1:], norms[:, 1:].T, color="C0", alpha=0.3)
ax.set(xscale="log", xlabel="t", ylabel="||w(t)||", title="A singular")
