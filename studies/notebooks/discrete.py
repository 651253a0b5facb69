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
# # Gradient descent against the gradient flow (`discrete` study)
#
# Each initial point is run by the flow (method auto) and by gradient descent with seven step
# sizes. `LCNFAST_QUICK=1` uses the `--quick` size; missing flows are run first.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt

from lcnfast import study

NAME = "discrete"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
SPEC = study.builtin_specs()[NAME]
DATA = Path(os.environ.get("LCNFAST_DATA", SPEC.parents[1] / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)

# %% [markdown]
# ## Pair every gradient-descent run with its flow
# The pairing and the outcome classes are those of the report (`studies/sections/discrete.py`).

# %%
sec = study.load_sections(NAME)  # the report's own tables (studies/sections/discrete.py)

pairs = sec.pair_table(ds, study.read_spec(out), out)
print(pairs.groupby("outcome").size())

# %% [markdown]
# ## Edge of stability: where does gradient descent end, in h lambda_max?
# A limit of gradient descent must have h lambda_max <= 2. Runs started with h lambda_max > 2
# at the flow's limit that still converge end on a flatter point of the critical set.

# %%
fig, ax = plt.subplots()
conv = pairs[pairs.converged]
ax.scatter(conv.hl_flow, conv.hl_end, s=8)
ax.axhline(2, color="k", ls="--", lw=0.8)
ax.plot([0, 3], [0, 3], color="grey", lw=0.5)
ax.set(xlabel="h lambda_max at the flow's limit", ylabel="h lambda_max at GD's limit")

# %% [markdown]
# ## Euler's balancedness drift against h

# %%
med = pairs[pairs.converged].groupby("h").drift.median()
fig, ax = plt.subplots()
ax.loglog(med.index, med.values, "o-")
ax.set(xlabel="h", ylabel="median balancedness drift")
