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
# # Sparsity frontier and tiers
#
# How many records does a calibration need? This notebook
#
# 1. fits a parent with **held-out target families**, to convergence,
# 2. runs a **vmapped `lambda_l0` sweep** (one compiled program for the whole grid) and
#    draws the frontier: records kept vs train and held-out loss,
# 3. **derives a child tier** of exactly K records from the parent, refits it to
#    convergence and compares the two.
#
# The fits use `jaxcal.optimizer_named("adam-cosine", epochs=...)`: PE's Adam with its rate
# decaying to 0 over the fit, so that the loss settles (PE's constant-rate Adam does not:
# parity with it is notebook 02's subject, not this one's).
#
# The same steps are the commands `jaxcal fit --holdout-fraction`, `jaxcal sweep`,
# `jaxcal derive` and `jaxcal gates` (see `docs/workflow.md` and `docs/guide.md`).

# %%
import json
import os
import pathlib

SMALL = os.environ.get("JAXCAL_NOTEBOOK_SMALL", "0") == "1"  # the tests set 1: small sizes, short CI
ROOT = next(
    (p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "pyproject.toml").is_file()),
    pathlib.Path.cwd(),
)
OUT = pathlib.Path(os.environ.get("JAXCAL_NOTEBOOK_OUTPUT", ROOT / "storage" / "notebooks" / "tiers"))
OUT.mkdir(parents=True, exist_ok=True)

if SMALL:
    N_RECORDS, SETTINGS = (
        1_500,
        dict(n_base=300, n_states=3, n_national=30, per_state=12, per_district=6, nonzeros=(8, 5, 4)),
    )
    PARENT_EPOCHS, SWEEP_EPOCHS, SEARCH_EPOCHS, REFIT_EPOCHS = 300, 150, 100, 150
else:
    N_RECORDS, SETTINGS = 50_000, dict(n_base=10_000, n_states=20)
    PARENT_EPOCHS, SWEEP_EPOCHS, SEARCH_EPOCHS, REFIT_EPOCHS = 1_000, 500, 300, 400
LAMBDAS = [1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2]
BUDGET = N_RECORDS // 5  # the child tier keeps exactly this many records

# %matplotlib inline
import jax
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import jaxcal
import jaxcal.io
import jaxcal.runs
import jaxcal.workflow
from builders.synthetic_problem import synthetic_package

package = synthetic_package(N_RECORDS, seed=0, **SETTINGS)
print(
    f"{package.n_targets} targets x {package.n_records} records; levels:",
    package.targets["geo_level"].value_counts().to_dict(),
)

# %% [markdown]
# ## 1. A parent fit with held-out families and early stopping
#
# `jaxcal.workflow.holdout_split` holds out whole families (`geo_level x variable x
# domain`), stratified by geography level and measure. `fit_with_holdout` takes the
# objective of *all* the targets and fits its train part (`objective.select(split.train)`);
# every `eval_every` epochs the held-out loss is logged. Its result is the best held-out
# epoch's fit, and with `patience=` it would stop that many epochs after the last
# improvement (early stopping). Here the parent runs all `PARENT_EPOCHS` instead (the rate
# decaying to 0), and a callback keeps the last, converged, weights: the child below is
# refit to convergence too, so that the two compare like for like.
# `jaxcal.runs.holdout_figure` draws the two curves (`write_holdout_log` writes them with
# the log).

# %%
split = jaxcal.workflow.holdout_split(package.targets, fraction=0.2, seed=0)
print(f"held out {int((~split.train).sum())} of {package.n_targets} targets")
key = jax.random.key(0)
init_key, fit_key, sweep_key, tier_key = jax.random.split(key, 4)
parent_model = jaxcal.CalibrationWeights.init(
    package.n_records,
    key=init_key,
    init_weights=jaxcal.io.policyengine_initial_weights(package),
    init_keep_prob=0.999,
    beta=0.35,
)
parent_last = {}  # the callback's copy of the last epoch's weights
parent_objective = jaxcal.Objective.create(package.n_targets, lambda_l0=1e-8, lambda_l2=1e-12)
parent = jaxcal.workflow.fit_with_holdout(
    parent_model,
    package,
    split,
    parent_objective,
    key=fit_key,
    epochs=PARENT_EPOCHS,
    eval_every=10,
    log_weight_jitter_sd=0.05,
    optimizer=jaxcal.optimizer_named("adam-cosine", epochs=PARENT_EPOCHS),
    callback=lambda result, row: parent_last.update(weights=np.asarray(result.weights, np.float64)),
)


def settled(log, epochs):
    """How much the train loss changed over the fit's last tenth of epochs, relative to its last value."""
    tenth = log[log["epoch"] >= epochs * 0.9]["train_loss"]
    return float(abs(tenth.iloc[0] - tenth.iloc[-1]) / tenth.iloc[-1])


parent_settled = settled(parent.log, PARENT_EPOCHS)
print(parent.summary() | {"held_out_families": "..."})
print(f"parent: train loss changed by {parent_settled:.1e} of itself over the last tenth of its epochs")
jaxcal.runs.holdout_figure(parent, title="Parent fit: train and held-out data loss")

# %% [markdown]
# ## 2. The sparsity frontier: a vmapped `lambda_l0` sweep
#
# `jaxcal.workflow.sweep_grid` fits every `lambda_l0` at once (`jaxcal.sweep`: `jax.vmap`
# over the objective's traced `lambda_l0` inside one compiled scan; same key, so the fits
# differ only by the penalty), on the train targets, and reports each fit's records kept
# and train / held-out / full loss. (`jaxcal.runs.write_frontier` writes the table and a
# figure, as `jaxcal sweep` does.)

# %%
objective = jaxcal.Objective.create(package.n_targets)  # relative loss, every target weighs 1
frontier, sweeps = jaxcal.workflow.sweep_grid(
    package,
    LAMBDAS,
    [0.35],
    key=sweep_key,
    split=split,
    objective=objective,
    epochs=SWEEP_EPOCHS,
    optimizer=jaxcal.optimizer_named("adam-cosine", epochs=SWEEP_EPOCHS),
)
frontier

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
axes[0].plot(frontier["records_kept"], frontier["train_loss"], "o-", label="train targets")
axes[0].plot(frontier["records_kept"], frontier["holdout_loss"], "s--", label="held-out targets")
for i, row in enumerate(frontier.itertuples()):  # labels alternate above and below: neighbours can nearly coincide
    axes[0].annotate(
        f"{row.lambda_l0:.0e}",
        (row.records_kept, row.train_loss),
        textcoords="offset points",
        xytext=(4, 6 if i % 2 else -11),
        fontsize=7,
    )
axes[0].set(
    yscale="log",
    xlabel="records kept",
    ylabel="data loss (log scale)",
    title="Sparsity frontier (points labelled by lambda_l0)",
)
axes[0].margins(x=0.08)  # room for the labels at the ends
axes[0].grid(alpha=0.3)
axes[0].legend()
history = sweeps[0].history
for i, lam in enumerate(LAMBDAS):
    axes[1].plot(np.asarray(history.n_active[i]), label=f"{lam:.0e}")
axes[1].set(xlabel="epoch", ylabel="records kept (sampled gates)", title="Records kept during each fit of the sweep")
axes[1].legend(title="lambda_l0", fontsize=7, loc="lower left")
plt.show()

# %% [markdown]
# ## 3. A child tier of exactly K records
#
# `jaxcal.workflow.derive_tier` searches a budget-constrained L0 path from the parent's
# weights (a vmapped sweep, refined around the budget), ranks records by gate logit and
# keeps exactly `BUDGET` (with a per-state floor). It would then refit them with PE's
# constant-rate Adam (it takes no optimizer; with early stopping on the held-out targets,
# as this notebook ran it before, that refit stopped after a few epochs, far from
# converged), so here we take only its selection
# (`refit_epochs=1`) and refit the `BUDGET` records ourselves: gates off (`lambda_l0` 0),
# on the train targets, with `adam-cosine` for all `REFIT_EPOCHS` epochs, no early stopping.
# `fit_with_holdout` still logs the held-out loss every 10 epochs; its result is the best
# held-out epoch's fit, and the callback keeps the last (converged) one.

# %%
parent_weights = parent_last["weights"]  # converged (the last epoch), not the best held-out epoch
derivation = jaxcal.workflow.derive_tier(
    package,
    parent_weights,
    BUDGET,
    key=tier_key,
    state_floor=10,
    split=split,
    objective=objective,
    search_epochs=SEARCH_EPOCHS,
    refit_epochs=1,  # the selection only: the refit is below
)
child = derivation.tier.child
print(f"child: {child.n_records} records (lambda_l0 {derivation.lambda_l0:g} ranked them)")

start = parent_weights[derivation.tier.selected]
start = start * parent_weights.sum() / start.sum()  # the parent's weights, scaled to its total
child_model = jaxcal.CalibrationWeights.init(child.n_records, key=tier_key, init_weights=start, use_gates=False)
last = {}


def keep_last(result, row):
    last["weights"], last["epoch"] = np.asarray(result.weights, np.float64), row["epoch"]


refit = jaxcal.workflow.fit_with_holdout(
    child_model,
    child,
    split,
    jaxcal.Objective.create(package.n_targets, lambda_l0=0.0),  # `objective` with the gates off
    key=tier_key,
    epochs=REFIT_EPOCHS,
    eval_every=10,
    optimizer=jaxcal.optimizer_named("adam-cosine", epochs=REFIT_EPOCHS),
    callback=keep_last,
)
child_weights = last["weights"]
child_settled = settled(refit.log, REFIT_EPOCHS)
print(
    f"child refit: {last['epoch']} epochs, train loss {refit.log['train_loss'].iloc[-1]:.4g} "
    f"(changed by {child_settled:.1e} of itself over the last tenth), best held-out epoch {refit.best_epoch}"
)
comparison = {
    "parent": jaxcal.workflow.assess(package, parent_weights, split, objective),
    "child": jaxcal.workflow.assess(child, child_weights, split, objective),
    "child at its best held-out epoch": jaxcal.workflow.assess(child, refit.weights, split, objective),
}
pd.DataFrame(comparison).T

# %% [markdown]
# Both fits ran every epoch with the same optimizer and settled (their train loss changed
# by under 1% of itself over their last tenth of epochs, printed above; `results.json`
# keeps the numbers), so the table compares converged parent and child on the same
# targets: the train columns say how well each fits what it was fitted to, the held-out
# ones how well that carries over to families neither saw. The third row, the child at its
# best held-out epoch, is what early stopping on the held-out families would have kept.


# %%
def abs_relative_errors(pkg, weights):
    estimates = pkg.matrix.astype(np.float64) @ np.asarray(weights, np.float64)
    return np.abs(estimates - pkg.target_values) / np.abs(pkg.target_values)


errors = pd.DataFrame(
    {
        "geo_level": np.concatenate([package.targets["geo_level"]] * 2),
        "held_out": np.concatenate([~split.train] * 2),
        "fit": ["parent"] * package.n_targets + [f"child ({BUDGET} records)"] * package.n_targets,
        "abs_rel_error": np.concatenate(
            [abs_relative_errors(package, parent_weights), abs_relative_errors(child, child_weights)]
        ),
    }
)
table = errors.groupby(["geo_level", "held_out", "fit"])["abs_rel_error"].median().unstack("fit")
table = table[["parent", f"child ({BUDGET} records)"]]
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
table.plot.bar(ax=axes[0], logy=True, rot=0)
axes[0].set(
    xlabel="geography level, train or held-out targets",
    ylabel="median |relative error| (log scale)",
    title="Parent vs child: target errors by level",
)
axes[0].set_xticklabels([f"{level}\n{'held out' if h else 'train'}" for level, h in table.index], fontsize=8)
search = pd.DataFrame(derivation.search)
axes[1].loglog(search["lambda_l0"], search["records_kept"], "o")
axes[1].axhline(BUDGET, color="grey", linestyle=":", label=f"budget {BUDGET}")
axes[1].set(xlabel="lambda_l0", ylabel="records kept", title="The search's L0 path: records kept by lambda_l0")
axes[1].legend()
plt.show()

# %% [markdown]
# The child's refit logged its own held-out curve (no early stopping: it runs every epoch,
# the rate decaying to 0):

# %%
jaxcal.runs.holdout_figure(refit, title=f"Child refit ({BUDGET} records, gates off, adam-cosine)")

# %%
summary = {
    "n_records": package.n_records,
    "parent": parent.summary() | {"held_out_families": None, "last_tenth_relative_change": parent_settled},
    "frontier": frontier.to_dict(orient="records"),
    "budget": BUDGET,
    "child_records": int(child.n_records),
    "child_positive_weights": int((child_weights > 0).sum()),
    "child_refit": {
        "epochs": int(last["epoch"]),
        "refit_epochs": REFIT_EPOCHS,
        "best_holdout_epoch": int(refit.best_epoch),
        "last_tenth_relative_change": child_settled,
    },
    "comparison": comparison,
}
(OUT / "results.json").write_text(json.dumps(summary, indent=2, default=float))
{k: summary[k] for k in ("budget", "child_records", "child_positive_weights")}
