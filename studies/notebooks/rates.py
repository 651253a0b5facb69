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
# # How fast do gradient flows reach their limits? (Łojasiewicz rates)
#
# Analysis of the `rates` study. At a Morse-Bott minimum (projected Hessian positive
# definite, smallest eigenvalue lambda_min) the flow is linear near its limit:
# ||grad L(t)|| ~ exp(-lambda_min t) and L - L_inf ~ exp(-2 lambda_min t). For l_p (p >= 4)
# at interpolation the loss is flat to order p and L(t) ~ t^(-p/(p-2)). The per-flow fits
# are those of the report (`studies/sections/rates.py`). `LCNFAST_QUICK=1` uses the small
# `--quick` size; the study is run first if its results are missing.

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lcnfast import study

NAME = "rates"
QUICK = os.environ.get("LCNFAST_QUICK") == "1"
ROOT = study.builtin_specs()[NAME].parents[1]
DATA = Path(os.environ.get("LCNFAST_DATA", ROOT / "data"))
out = DATA / (NAME + ("-quick" if QUICK else ""))
study.run_study(NAME, out, quick=QUICK, report=False)  # progress of missing flows
ds = study.load(out)
sec = study.load_sections(NAME)  # the report's own tables (studies/sections/rates.py)
print(ds.sizes["flow"], "flows")

# %% [markdown]
# ## Per-flow fits of the tail
# `rate_g`, `rate_L`: exponential rates of ||grad L|| and L - L_inf; `expo_g`, `expo_L`: power-law
# exponents; `exponential`: the exponential model has the smaller residual.

# %%
rtol = study.read_spec(out).spec["integrator"][0]["rtol"]
fits = sec.per_flow_fits(ds, rtol)
fits["rate_g/lam_min"] = fits["rate_g"] / fits["lam_min"]
print(fits.groupby(["cls", "p"], dropna=False)[["rate_g/lam_min", "expo_L", "exponential"]].median())

# %% [markdown]
# ## The fitted rate against the Hessian's smallest eigenvalue (Morse-Bott limits)

# %%
mb = fits[(ds.label.values == 0) & (fits.cls != "lp interpolation")]
fig, ax = plt.subplots()
ax.loglog(mb.lam_min, mb.rate_g, ".", label="||grad L||")
ax.loglog(mb.lam_min, mb.rate_L / 2, "x", label="(L - L_inf) / 2")
lim = [mb.lam_min.min() / 2, mb.lam_min.max() * 2]
ax.loglog(lim, lim, "k--", lw=0.8)
ax.set(xlabel="lambda_min (projected Hessian at the limit)", ylabel="fitted rate")
ax.legend()

# %% [markdown]
# ## The local exponent of L at interpolation, over time
# -d log L / d log t approaches p/(p-2) (2 for p = 4, 1.5 for p = 6) from below.

# %%
t = ds.time.values
fig, ax = plt.subplots()
for j in np.flatnonzero(fits.cls == "lp interpolation"):
    L = ds.loss.values[j]
    with np.errstate(all="ignore"):
        s = -np.diff(np.log(L)) / np.diff(np.log(t))
    ax.semilogx(t[1:], s, lw=0.7, color="C1" if fits.p[j] == 4 else "C2")
ax.axhline(2, color="C1", ls="--")
ax.axhline(1.5, color="C2", ls="--")
ax.set(ylim=(0, 3), xlabel="t", ylabel="-d log L / d log t")
