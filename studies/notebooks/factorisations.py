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
# # Which factorisation of the optimal filter does the flow pick?
#
# Analysis of the `factorisations` study. For stride 1, v's polynomial is the product of the
# layer polynomials, so at the global minimum v* every layer takes a subset of v*'s roots.
# Which subset (the *assignment*), and does it follow the initial roots or the balancedness?
# The per-flow assignments are those of the report (`studies/sections/factorisations.py`).
# `LCNFAST_QUICK=1` uses the small `--quick` size; the study is run first if missing.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lcnfast import study

NAME = "factorisations"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
ROOT = study.builtin_specs()[NAME].parents[1]
DATA = Path(os.environ.get("LCNFAST_DATA", ROOT / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)
sec = study.load_sections(NAME)  # the report's own tables (studies/sections/factorisations.py)
fl = sec.per_flow(ds, study.read_spec(out))
print(len(fl), "flows;", int(fl.is_global.sum()), "at the global minimum")

# %% [markdown]
# ## The assignments of one dataset
# One row per flow: the final assignment (layer of each root of v*, roots ordered by real
# part) and the one nearest to the initial roots.

# %%
first = fl[(fl.architecture == fl.architecture.iloc[0]) & (fl.dataset == 0)]
print(first[["scale", "distribution", "replicate", "final", "nearest_initial"]].to_string())

# %% [markdown]
# ## How often is each assignment picked, per architecture and initialisation?

# %%
counts = fl[fl.is_global].groupby(["architecture", "scale", "distribution"])["final"].value_counts()
print(counts.to_string())

# %% [markdown]
# ## Initial roots and final roots of one flow (Riemann sphere, shown in the plane)

# %%
j = int(first.flow.iloc[0])
cells = {c.index: c for c in study.read_spec(out).cells}
arch = cells[int(ds.cell.values[j])].arch()
w0 = ds.w_init.values[j][np.isfinite(ds.w_init.values[j])]
from lcnfast import roots

z0, rl, _ = roots.layer_roots(arch, w0)
zf = (ds.root_real.values[j] + 1j * ds.root_imag.values[j])[: len(rl)]
fig, ax = plt.subplots()
for layer in np.unique(rl):
    ax.plot(z0[rl == layer].real, z0[rl == layer].imag, "o", mfc="none", color=f"C{layer}",
            label=f"layer {layer}: initial")
    ax.plot(zf[rl == layer].real, zf[rl == layer].imag, "x", color=f"C{layer}",
            label=f"layer {layer}: final")
ax.set(xlabel="Re", ylabel="Im")
ax.legend(fontsize=7)
