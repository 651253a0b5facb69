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
# # Escape from small initialisation (`init_scale` study)
#
# Flows started at scale sigma near the saddle w = 0: the time until the loss first falls
# below half the loss of the zero network (`t_below`, recorded by the integrator), against
# the linearised prediction for N = 2 and a power law for N >= 3. `LCNFAST_QUICK=1` uses the
# `--quick` size; missing flows are run first.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from lcnfast import study

NAME = "init_scale"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
SPEC = study.builtin_specs()[NAME]
DATA = Path(os.environ.get("LCNFAST_DATA", SPEC.parents[1] / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)
sec = study.load_sections(NAME)  # the report's own tables (studies/sections/init_scale.py)

# %% [markdown]
# ## Escape time against sigma, per architecture
# `t_below` has one column per event level (`loss_level`, fractions of L(v=0)).

# %%
t_esc = ds.t_below.sel(loss_level=0.5)
fig, ax = plt.subplots()
for arch in dict.fromkeys(ds.architecture.values):
    sub = t_esc.where(ds.architecture == arch, drop=True)
    med = sub.groupby("init_scale").median()
    ax.loglog(med.init_scale, med, "o-", label=str(arch))
ax.set(xlabel="sigma", ylabel="median t_esc")
ax.legend(fontsize=7)

# %% [markdown]
# ## N = 2: the linearised prediction
# slope of t_esc against log(1/sigma) should be 1 / sigma_max(M), M the Hankel matrix of
# grad_v L(0).

# %%
for r in sec._groups(ds, out):
    if r["N"] == 2:
        print(r["architecture"], r["distribution"], "slope * sigma_max =", round(r["fit"], 3))

# %% [markdown]
# ## Do small initialisations end at repeated roots?

# %%
common = ds.has_common_root.astype(float)
print(common.groupby("init_scale").mean().to_series())
