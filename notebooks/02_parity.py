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
# # Parity with l0-python
#
# jaxcal reimplements l0-python's `SparseCalibrationWeights` (the fitter behind
# PolicyEngine-US's calibration; the semantics are summarised in `docs/guide.md`,
# "Concepts"). Here the same problem is fitted by both:
#
# 1. **Exact draws**: both start from the same parameters and see the same uniform gate
#    draws (we record torch's and inject them with `uniforms=`); the parameters are
#    compared after every Adam step, for `EXACT_STEPS` (100) steps, against stated bounds.
# 2. **Own randomness**: several seeds of each; loss and records-kept trajectories overlaid.
# 3. **Speed**: the same fit timed in both, here.
#
# Both fitters use PE's constant-rate Adam here: parity with it is what this notebook
# shows (the other notebooks fit with the converging `adam-cosine`).
#
# Needs the `parity` extra (`pip install -e ".[parity]"`: torch, l0-python). The tests set
# `JAXCAL_NOTEBOOK_SMALL=1`, which shrinks sections 2 and 3 only: section 1, whose bounds
# the text states, runs at the same settings either way.

# %%
import json
import os
import pathlib
import time
from unittest import mock

SMALL = os.environ.get("JAXCAL_NOTEBOOK_SMALL", "0") == "1"  # the tests set 1: small sizes, short CI
ROOT = next(
    (p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "pyproject.toml").is_file()),
    pathlib.Path.cwd(),
)
OUT = pathlib.Path(os.environ.get("JAXCAL_NOTEBOOK_OUTPUT", ROOT / "storage" / "notebooks" / "parity"))
OUT.mkdir(parents=True, exist_ok=True)

EXACT_STEPS = 100  # Adam steps compared one by one (the same with SMALL)
EXACT_BOUNDS = {"max": 1e-3, "q999": 1e-4}  # tests/test_parity.py's float32 bounds for layout="rows"
EPOCHS = 150 if SMALL else 500  # own-randomness trajectories
SEEDS = 2 if SMALL else 4
EVERY = 5  # epochs between trajectory points
SPEED_EPOCHS = 30 if SMALL else 200

# %matplotlib inline
import jax
import matplotlib.pyplot as plt
import numpy as np
import torch
from l0.calibration import SparseCalibrationWeights

# Off is torch's default; saying so explicitly silences its "Sparse invariant checks are implicitly
# disabled" warning, raised for every sparse tensor l0-python builds.
torch.sparse.check_sparse_tensor_invariants.disable()

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem

# Section 1's problem, whatever SMALL says: the one tests/test_parity.py uses.
exact_problem = policyengine_shaped_problem(
    1200, n_base=300, n_states=3, n_national=30, per_state=12, per_district=8, nonzeros=(8, 5, 4), seed=1
)
# Sections 2 and 3: a bigger problem by default.
problem = exact_problem if SMALL else policyengine_shaped_problem(30_000, n_base=6_000, n_states=8, seed=1)
for name, p in (("exact draws", exact_problem), ("own randomness and speed", problem)):
    print(f"{name}: {p.matrix.shape[0]} targets x {p.matrix.shape[1]} records, {p.matrix.nnz:,} nonzeros")
X, targets = exact_problem.matrix, exact_problem.targets
n = X.shape[1]

# %% [markdown]
# ## 1. Exact draws, step by step
#
# We run l0-python with two spies: one records each `torch.rand_like` draw (the gates'
# uniforms), the other the parameters after each `Adam.step`. torch runs on one thread
# so that its sparse sums have a fixed order; jaxcal uses `layout="rows"`, which adds in
# torch's order. The bounds (those of `tests/test_parity.py`): over all steps and both
# parameters, the largest relative difference at most 1e-3 and the 99.9% quantile at most
# 1e-4.


# %%
def torch_fit(n_steps, *, seed, beta, init_weights, init_keep_prob, every=1, threads=1, **fit_settings):
    """l0-python's fit; returns (start parameters, recorded uniforms, parameters every `every` steps)."""
    model = SparseCalibrationWeights(n, beta=beta, init_weights=init_weights, init_keep_prob=init_keep_prob, seed=seed)
    start = (model.log_weight.detach().numpy().copy(), model.log_alpha.detach().numpy().copy())
    uniforms, steps = [], []
    rand_like, adam_step = torch.rand_like, torch.optim.Adam.step

    def recording_rand_like(x, *args, **kwargs):
        u = rand_like(x, *args, **kwargs)
        uniforms.append(u.numpy().copy())
        return u

    def recording_step(self, *args, **kwargs):
        out = adam_step(self, *args, **kwargs)
        if (len(uniforms) % every) == 0:
            steps.append((model.log_weight.detach().numpy().copy(), model.log_alpha.detach().numpy().copy()))
        return out

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        with (
            mock.patch.object(torch, "rand_like", recording_rand_like),
            mock.patch.object(torch.optim.Adam, "step", recording_step),
        ):
            model.fit(X, targets, epochs=n_steps, loss_type="relative", **fit_settings)
    finally:
        torch.set_num_threads(saved)
    return start, uniforms, steps


EXACT = dict(beta=2 / 3, init_keep_prob=0.9, lambda_l0=1e-3, lambda_l2=0.0, lr=0.15)
init_weights = np.random.default_rng(3).uniform(20, 200, n).astype(np.float32)
start, uniforms, torch_steps = torch_fit(
    EXACT_STEPS,
    seed=7,
    beta=EXACT["beta"],
    init_weights=init_weights,
    init_keep_prob=EXACT["init_keep_prob"],
    lambda_l0=EXACT["lambda_l0"],
    lambda_l2=EXACT["lambda_l2"],
    lr=EXACT["lr"],
)

jax_steps = []
exact_objective = jaxcal.Objective.create(
    X.shape[0], loss="relative", lambda_l0=EXACT["lambda_l0"], lambda_l2=EXACT["lambda_l2"]
)
jaxcal.fit(
    jaxcal.CalibrationWeights(jax.numpy.asarray(start[0]), jax.numpy.asarray(start[1]), beta=EXACT["beta"]),
    jaxcal.TargetMatrix.from_scipy(X, layout="rows"),
    targets,
    exact_objective,
    key=jax.random.key(0),
    epochs=EXACT_STEPS,
    learning_rate=EXACT["lr"],
    uniforms=np.stack(uniforms),
    chunk_epochs=1,
    callback=lambda r: jax_steps.append((np.asarray(r.model.log_weight), np.asarray(r.model.log_alpha))),
)


def relative_difference(ours, reference):
    # floored at 1: log_alpha starts near 0, where a ratio would measure only float32 noise
    return np.abs(ours.astype(np.float64) - reference) / np.maximum(np.abs(reference), 1.0)


per_step = {name: {"max": [], "q999": []} for name in ("log_weight", "log_alpha")}
for ours, reference in zip(jax_steps, torch_steps, strict=True):
    for name, a, b in zip(("log_weight", "log_alpha"), ours, reference):
        d = relative_difference(a, b)
        per_step[name]["max"].append(d.max())
        per_step[name]["q999"].append(np.quantile(d, 0.999))
exact_max = max(max(v["max"]) for v in per_step.values())
exact_q999 = max(max(v["q999"]) for v in per_step.values())
moved = float(np.abs(torch_steps[-1][0] - start[0]).max())
print(
    f"{EXACT_STEPS} steps: max relative difference {exact_max:.2e} (bound {EXACT_BOUNDS['max']:g}), "
    f"99.9% quantile {exact_q999:.2e} (bound {EXACT_BOUNDS['q999']:g}); the parameters moved by up to {moved:.2f}"
)
assert exact_max <= EXACT_BOUNDS["max"] and exact_q999 <= EXACT_BOUNDS["q999"]


# %%
def data_loss(log_weight, log_alpha, beta):
    """Data loss of the deterministic weights, in float64 (l0-python's gates and relative loss)."""
    la = np.clip(log_alpha.astype(np.float64), -20, 20)
    gates = np.clip(1 / (1 + np.exp(-la / beta)) * 1.2 - 0.1, 0, 1)
    w = np.exp(log_weight.astype(np.float64)) * gates
    return float(np.sum(((targets - X @ w) / (targets + 1)) ** 2)), int(np.sum(w > 0))


fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
steps = np.arange(1, EXACT_STEPS + 1)
for name, style in (("log_weight", "-"), ("log_alpha", "--")):
    axes[0].semilogy(steps, per_step[name]["max"], style, label=f"{name}: max")
    axes[0].semilogy(steps, per_step[name]["q999"], style, label=f"{name}: 99.9% quantile", alpha=0.6)
axes[0].axhline(EXACT_BOUNDS["max"], color="grey", linestyle=":", label="bound (max)")
axes[0].axhline(EXACT_BOUNDS["q999"], color="grey", linestyle="-.", label="bound (99.9% quantile)")
axes[0].set(xlabel="Adam step", ylabel="relative difference", title="jaxcal vs l0-python, same draws (float32)")
axes[0].legend(fontsize=8)
axes[1].semilogy(
    steps, [data_loss(*s, EXACT["beta"])[0] for s in torch_steps], label="l0-python", linewidth=4, alpha=0.4
)
axes[1].semilogy(steps, [data_loss(*s, EXACT["beta"])[0] for s in jax_steps], "--", label="jaxcal")
axes[1].set(xlabel="Adam step", ylabel="data loss (sum of squared relative errors)", title="The trajectories coincide")
axes[1].legend()
plt.show()

# %% [markdown]
# The remaining differences are float32 rounding (the order of sums; XLA's `exp`/`sigmoid`
# differ from torch's by an ulp on some inputs). `tests/test_parity.py` also runs both in
# float64, where they agree to about 3e-13 at every step.
#
# In float32 the rounding differences grow along the trajectory: constant-rate Adam
# amplifies them, and a gate near its threshold can tip one way in one fitter and the other
# in the other. On this problem both bounds hold over 100 steps with margin (printed
# above; `results.json` keeps the numbers); over 200 steps we measured a max of 1.5e-4 and
# a 99.9% quantile of 5.7e-5. On the bigger problem of sections 2 and 3 (30,000 records),
# they grow faster: the max stays under 1.6e-4 for 70 steps, then one record's `log_alpha`
# departs (1.6e-3 by step 80, 9.4e-3 by step 100), while the 99.9% quantile stays under
# 1e-4 for about 110 steps. So the step-by-step bounds are for short trajectories;
# section 2 compares long ones by their distribution.
#
# ## 2. Own randomness: many seeds of each
#
# Now each fitter draws its own jitter and gates. Individual runs differ, but the
# distribution of loss and records kept must be the same.

# %%
X, targets = problem.matrix, problem.targets  # torch_fit and data_loss fit and score this problem now
n = X.shape[1]
STAT = dict(beta=0.65, init_weights=100.0, init_keep_prob=0.9)
STAT_FIT = dict(lambda_l0=1e-2, lambda_l2=0.0, lr=0.05)  # l0-python's fit arguments
matrix = jaxcal.TargetMatrix.from_scipy(X)
objective = jaxcal.Objective.create(matrix.n_targets, lambda_l0=STAT_FIT["lambda_l0"], lambda_l2=STAT_FIT["lambda_l2"])
trajectories = {"l0-python": [], "jaxcal": []}
for seed in range(SEEDS):
    torch.manual_seed(seed)
    _, _, snapshots = torch_fit(EPOCHS, seed=seed, every=EVERY, threads=torch.get_num_threads(), **STAT, **STAT_FIT)
    trajectories["l0-python"].append([data_loss(*s, STAT["beta"]) for s in snapshots])

    init_key, fit_key = jax.random.split(jax.random.key(seed))
    ours = jaxcal.CalibrationWeights.init(n, key=init_key, **STAT)
    points = []
    jaxcal.fit(
        ours,
        matrix,
        targets,
        objective,
        key=fit_key,
        epochs=EPOCHS,
        log_weight_jitter_sd=0.0,
        learning_rate=STAT_FIT["lr"],
        chunk_epochs=EVERY,
        callback=lambda r: points.append(
            data_loss(np.asarray(r.model.log_weight), np.asarray(r.model.log_alpha), STAT["beta"])
        ),
    )
    trajectories["jaxcal"].append(points)

epochs_axis = np.arange(1, EPOCHS // EVERY + 1) * EVERY
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for (name, runs), color in zip(trajectories.items(), ("tab:orange", "tab:blue")):
    runs = np.asarray(runs, np.float64)
    for i, run in enumerate(runs):
        axes[0].semilogy(epochs_axis, run[:, 0], color=color, alpha=0.6, label=name if i == 0 else None)
        axes[1].plot(epochs_axis, run[:, 1], color=color, alpha=0.6, label=name if i == 0 else None)
axes[0].set(xlabel="epoch", ylabel="data loss (deterministic weights)", title=f"Own randomness: {SEEDS} seeds each")
axes[1].set(xlabel="epoch", ylabel="records kept (deterministic gates)", title="Sparsity: records kept by epoch")
axes[0].legend()
axes[1].legend(loc="lower left")
plt.show()

final = {name: np.asarray(runs, np.float64)[:, -1].mean(axis=0) for name, runs in trajectories.items()}
for name, (loss, kept) in final.items():
    print(f"{name:10s} mean final data loss {loss:.4g}, records kept {kept:.0f}")

# %% [markdown]
# ## 3. Speed, measured here
#
# The same fit (own randomness, same settings) for `SPEED_EPOCHS` epochs: l0-python with
# torch's default threads, jaxcal after one call that compiles. On a small problem the
# ratio is modest; it grows with the problem (see `benchmarks/RESULTS.md`).

# %%
model_args = dict(key=jax.random.key(0), epochs=SPEED_EPOCHS, learning_rate=STAT_FIT["lr"])
ours = jaxcal.CalibrationWeights.init(n, key=jax.random.key(1), **STAT)
jax.block_until_ready(jaxcal.fit(ours, matrix, targets, objective, **model_args).weights)  # compile
started = time.perf_counter()
jax.block_until_ready(jaxcal.fit(ours, matrix, targets, objective, **model_args).weights)
jax_ms = (time.perf_counter() - started) / SPEED_EPOCHS * 1e3

reference = SparseCalibrationWeights(n, seed=0, **STAT)
started = time.perf_counter()
reference.fit(X, targets, epochs=SPEED_EPOCHS, loss_type="relative", **STAT_FIT)
torch_ms = (time.perf_counter() - started) / SPEED_EPOCHS * 1e3
speed_ratio = torch_ms / jax_ms
print(f"l0-python {torch_ms:.2f} ms/epoch, jaxcal {jax_ms:.2f} ms/epoch: jaxcal is {speed_ratio:.1f}x faster")

fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
bars = ax.bar(["l0-python (torch)", "jaxcal"], [torch_ms, jax_ms], color=["tab:orange", "tab:blue"])
ax.bar_label(bars, fmt="%.2f ms")
ax.set(
    yscale="log",
    ylabel="ms / epoch (log scale)",
    title=f"Time per epoch: {n:,} records, {X.nnz:,} nonzeros, {jax.default_backend()}",
)
ax.margins(y=0.2)
plt.show()

# %%
summary = {
    "exact_steps": EXACT_STEPS,
    "exact_n_records": exact_problem.matrix.shape[1],
    "exact_bound_max": EXACT_BOUNDS["max"],
    "exact_bound_q999": EXACT_BOUNDS["q999"],
    "exact_max_relative_difference": exact_max,
    "exact_q999_relative_difference": exact_q999,
    "exact_parameters_moved": moved,
    "final_mean": {name: {"data_loss": float(v[0]), "records_kept": float(v[1])} for name, v in final.items()},
    "torch_ms_per_epoch": torch_ms,
    "jaxcal_ms_per_epoch": jax_ms,
    "speed_ratio": speed_ratio,
}
(OUT / "results.json").write_text(json.dumps(summary, indent=2))
summary
