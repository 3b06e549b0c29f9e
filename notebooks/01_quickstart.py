# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: build, fit, inspect, export
#
# 1. Build the **default package**: synthetic households calibrated to real US statistics
#    (Census ACS, IRS SOI, USDA, CMS; `docs/default_targets.md`) of six states, cloned across
#    their congressional districts. This is what `jaxcal build --demo` does; it is cached.
# 2. **Fit** it with jaxcal (policyengine-us-data's settings, with Adam's rate decaying
#    so that the loss settles).
# 3. Look at **target errors** by geography level and by variable.
# 4. **Export** a calibrated H5 and load it with `policyengine_us.Microsimulation`.
#
# The first run imports policyengine-us and computes every household's variables: a few
# minutes. Later runs reuse the cached package.

# %%
import json
import os
import pathlib

SMALL = os.environ.get("JAXCAL_NOTEBOOK_SMALL", "0") == "1"  # the tests set 1: small sizes, short CI
ROOT = next(
    (p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "pyproject.toml").is_file()),
    pathlib.Path.cwd(),
)
OUT = pathlib.Path(os.environ.get("JAXCAL_NOTEBOOK_OUTPUT", ROOT / "storage" / "notebooks" / "quickstart"))
OUT.mkdir(parents=True, exist_ok=True)
# Where the default package is built and cached (`jaxcal build --demo` uses storage/demo too).
DEMO_DIR = pathlib.Path(os.environ.get("JAXCAL_NOTEBOOK_DEMO_DIR", ROOT / "storage" / "demo"))

if SMALL:  # two states, a hundred households: the same steps in a fraction of the time
    BUILD = dict(n_households=100, n_clones=1, states=[33, 50])
    EPOCHS = 200
else:  # the default package (`jaxcal build --demo`): 3,000 households x 2 clones, six states
    BUILD = dict()
    EPOCHS = 1_000

# %matplotlib inline
import warnings

# policyengine-us imports huggingface_hub, whose tqdm.auto warns in a kernel without ipywidgets (no bar is shown here).
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxcal
import jaxcal.io
from builders.demo_cli import build_demo_package

# %% [markdown]
# ## 1. Build (or reuse) the default package

# %%
package_path = build_demo_package(DEMO_DIR, **BUILD, log=print)
package = jaxcal.io.load_package(package_path)
print(f"{package.n_targets} targets x {package.n_records} columns, {package.nnz:,} nonzeros")
package.targets.groupby(["geo_level", "variable"]).size().rename("targets").to_frame()

# %% [markdown]
# A package is one `.npz` (`jaxcal.io.load_package`, `save_package`): the sparse matrix `X`
# (targets x columns), the targets table, per-column geography and metadata, with the
# provenance as flat keys (`dataset_sha256`, `db_sha256`, `n_base_records`, ...).
# `jaxcal info` prints the same summary on the command line.

# %%
keys = ("n_clones", "seed", "year", "n_base_records", "dataset_path", "dataset_sha256", "db_path", "db_sha256")
{k: package.metadata[k] for k in keys if k in package.metadata}

# %% [markdown]
# ## 2. Fit
#
# policyengine-us-data's defaults (`jaxcal.PE_DEFAULTS`): beta 0.35, keep probability
# 0.999, log-weight jitter 0.05, `lambda_l0` 1e-8 (the `local` preset,
# `jaxcal.PE_PRESETS["local"]`), `lambda_l2` 1e-12, lr 0.15. The penalties and the loss are
# the `Objective`; starting weights are PolicyEngine's rule
# (`jaxcal.io.policyengine_initial_weights`). One change from PE: the optimizer is
# `jaxcal.optimizer_named("adam-cosine", epochs=EPOCHS)`, PE's Adam with its rate decaying
# from 0.15 to 0 over the fit, so that the loss settles; PE's constant-rate Adam (the
# default of `jaxcal.fit`, exact to PE) keeps taking full steps, and its loss can rise
# again late in the fit. `jaxcal fit --package-path ... --optimizer adam-cosine` does the
# same from the shell and writes the diagnostics files.

# %%
defaults = jaxcal.PE_DEFAULTS
init_key, fit_key = jax.random.split(jax.random.key(42))
initial = jaxcal.io.policyengine_initial_weights(package)
model = jaxcal.CalibrationWeights.init(
    package.n_records, key=init_key, init_weights=initial, init_keep_prob=defaults.init_keep_prob, beta=defaults.beta
)
objective = jaxcal.Objective.create(
    package.n_targets, loss="relative", lambda_l0=jaxcal.PE_PRESETS["local"], lambda_l2=defaults.lambda_l2
)
result = jaxcal.fit(
    model,
    package.target_matrix(),
    package.target_values,
    objective,
    key=fit_key,
    epochs=EPOCHS,
    learning_rate=defaults.learning_rate,
    optimizer=jaxcal.optimizer_named("adam-cosine", epochs=EPOCHS),
    log_weight_jitter_sd=defaults.log_weight_jitter_sd,
)
weights = np.asarray(result.weights, np.float64)
np.save(OUT / "calibration_weights.npy", weights)
print(f"{result.n_active} of {package.n_records} records kept, weight sum {weights.sum():,.0f}")

fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
ax.semilogy(np.asarray(result.history.data), label="data loss")
ax.semilogy(np.asarray(result.history.total), "--", label="objective")
ax.set(xlabel="epoch", ylabel="loss (log scale)", title="Loss during the fit")
ax.legend()
plt.show()

# %% [markdown]
# ## 3. Target errors by geography level and variable
#
# The national level is the sum over the package's states (six by default, two with the
# small settings the tests use), not the US: the demo's national targets are those states' totals.


# %%
def relative_errors(w):
    estimates = package.matrix.astype(np.float64) @ w
    return (estimates - package.target_values) / np.abs(package.target_values)


table = package.targets[["variable", "geo_level", "domain_variable", "value"]].copy()
table["target"] = package.target_names
table["domain_variable"] = table["domain_variable"].fillna("")
table["initial"] = np.abs(relative_errors(np.asarray(initial, np.float64)))
table["fitted"] = np.abs(relative_errors(weights))
# A family: the variable, and its domain when the domain is another variable (AGI bands of AGI are one family).
other_domain = (table["domain_variable"] != "") & (table["domain_variable"] != table["variable"])
table["label"] = table["variable"] + np.where(other_domain, " [" + table["domain_variable"] + "]", "")

by_level = table.groupby("geo_level")[["initial", "fitted"]].median()
by_variable = table.groupby("label")[["initial", "fitted"]].median().sort_values("fitted")

fig, axes = plt.subplots(1, 2, figsize=(14, 5), layout="constrained", gridspec_kw={"width_ratios": [1, 3]})
by_level.plot.bar(ax=axes[0], logy=True, rot=0)
axes[0].set(ylabel="median |relative error|", title="By geography level")
axes[0].legend(title="weights", loc="lower left")
by_variable.plot.barh(ax=axes[1], logx=True)
axes[1].set(xlabel="median |relative error|", ylabel="", title="By variable [domain]")
axes[1].legend(title="weights", loc="upper left", bbox_to_anchor=(1.0, 1.0))
plt.show()
table.sort_values("fitted", ascending=False).head(10)[["target", "geo_level", "value", "initial", "fitted"]]

# %% [markdown]
# ## 4. Export a calibrated H5 and load it with policyengine-us
#
# `export_h5` (the command `jaxcal export PACKAGE WEIGHTS OUT.h5`) writes one household
# per kept column, with its clone's geography, take-up drawn with the build's salts and
# `household_weight` the fitted weight. Weighted sums over the file reproduce `X @ w`: here
# the national age bands, counted over the file's people with numpy.

# %%
from builders.export import export_h5
from builders.h5_check import check_h5

exported = export_h5(package, weights, OUT / "calibrated.h5")
print(exported)
assert check_h5(exported.path) == []  # what `jaxcal check-h5` runs

from policyengine_us import Microsimulation

year = int(package.metadata.get("year", 2024))
sim = Microsimulation(dataset=str(exported.path))
rows = table[(table["geo_level"] == "national") & (table["variable"] == "person_count")]
age = np.asarray(sim.calculate("age", year))
person_weight = np.asarray(sim.calculate("household_weight", year, map_to="person"), np.float64)


def people_aged(name):
    """Weighted people in the band a row's name gives, e.g. ``national/person_count/[age<10,age>=5]``."""
    lo = float(name.split("age>=")[1].rstrip("]").split(",")[0])
    hi = float(name.split("age<")[1].split(",")[0]) if "age<" in name else np.inf
    return float(person_weight[(age >= lo) & (age < hi)].sum())


predicted = package.matrix.astype(np.float64) @ weights
check = pd.DataFrame(
    {
        "band": rows["target"].str.extract(r"\[(.*)\]")[0],
        "target": rows["value"],
        "X @ w": predicted[rows.index],
        "policyengine_us": [people_aged(name) for name in rows["target"]],
    }
)
check["ratio"] = check["policyengine_us"] / check["X @ w"]
households = float(np.asarray(sim.calculate("household_weight", year)).sum())
print(f"household weights in the file: {households:,.0f} (fitted: {weights.sum():,.0f})")
check

# %%
fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
x = np.arange(len(check))
ax.bar(x - 0.27, check["target"] / 1e3, 0.27, label="target")
ax.bar(x, check["X @ w"] / 1e3, 0.27, label="X @ w (package)")
ax.bar(x + 0.27, check["policyengine_us"] / 1e3, 0.27, label="policyengine_us on the H5")
ax.set_xticks(x, check["band"], rotation=90)
ax.set(ylabel="thousand people", title="National age bands: targets, the package's X @ w, the exported H5")
ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
plt.show()

# %%
summary = {
    "n_targets": package.n_targets,
    "n_records": package.n_records,
    "records_kept": int(result.n_active),
    "median_abs_rel_error_initial": float(table["initial"].median()),
    "median_abs_rel_error_fitted": float(table["fitted"].median()),
    "exported_households": exported.n_households,
    "household_weight_sum": households,
    "weight_sum": float(weights.sum()),
    "max_export_ratio_error": float(np.abs(check["ratio"] - 1).max()) if len(check) else None,
}
(OUT / "results.json").write_text(json.dumps(summary, indent=2))
summary
