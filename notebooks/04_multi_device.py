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
# # Multi-device fits: fake CPU devices here, the same code on a TPU
#
# `jaxcal.fit` can split the records (columns of `X`) over several devices: give it a
# `jaxcal.ShardedMatrix` (`ShardedMatrix.from_scipy(csr, mesh)`, or
# `ShardedMatrix.from_matrix(target_matrix, mesh)`, over `jaxcal.record_mesh(n)`) in place
# of a `TargetMatrix`; every other argument stays the same. Each device holds a block of
# columns with its share of the weights, gradients and Adam state, and a step adds up the
# devices' partial `X @ w` in one all-reduce of `n_targets` floats.
#
# Locally, XLA can pretend the CPU is 8 devices. That must be set **before JAX is
# imported**, which is why the first code cell sets `XLA_FLAGS` (restart the kernel if JAX
# was already imported).
#
# **On a Colab TPU runtime** (see `docs/colab_tpu.md`): choose a TPU runtime, install
# jaxcal without reinstalling JAX (`pip install --no-deps -e ./jaxcal` then
# `pip install equinox optax jaxtyping`), and run this notebook unchanged: the CPU flags
# below only affect the host CPU platform, and `jaxcal.select_devices("all",
# platform="auto")` picks the TPU cores because the TPU is JAX's default backend.
#
# The fits use `jaxcal.optimizer_named("adam-cosine", epochs=EPOCHS)`: PE's Adam with its
# rate decaying to 0 over the fit, so that the loss settles. PE's constant-rate Adam does
# not settle, and its trajectory amplifies float32 rounding; the comparison below shows
# both. The settings here are the ones the tests run (`tests/test_notebooks.py`), and what
# the text claims is computed here and written to `results.json`.

# %%
import os

# Must run before `import jax`: 8 fake CPU devices (harmless on a GPU/TPU runtime).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")

import json
import pathlib
import time

ROOT = next(
    (p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "pyproject.toml").is_file()),
    pathlib.Path.cwd(),
)
OUT = pathlib.Path(os.environ.get("JAXCAL_NOTEBOOK_OUTPUT", ROOT / "storage" / "notebooks" / "multi_device"))
OUT.mkdir(parents=True, exist_ok=True)

# The tests run these settings. On bigger problems the single-vs-sharded difference grows:
# see "How close, and why" below.
N_RECORDS = 4_000  # columns of X
N_STATES = 10
EPOCHS = 200
TIMING_EPOCHS = 100
BOUND = 1e-5  # what the same-draws and gates-off comparisons must meet (tests/test_sharding.py's bound)

# %matplotlib inline
import jax
import matplotlib.pyplot as plt
import numpy as np

import jaxcal
from builders.synthetic_problem import policyengine_shaped_problem

devices = jaxcal.select_devices("all", platform="auto")
print(jax.default_backend(), len(devices), "devices:", devices)

# %% [markdown]
# ## A problem, and the device counts to compare
#
# A PolicyEngine-shaped synthetic problem (national, state and district targets; each
# record touches a few rows of each level). We fit it on 1 device (a `TargetMatrix`) and
# on 2, 4 and 8 (as many as there are; a `ShardedMatrix` over the first n devices, each
# block sent straight to its device).

# %%
problem = policyengine_shaped_problem(N_RECORDS, n_base=min(N_RECORDS, 10_000), n_states=N_STATES, seed=0)
print(f"{problem.matrix.shape[0]} targets x {problem.matrix.shape[1]} records, {problem.matrix.nnz:,} nonzeros")
counts = [n for n in (1, 2, 4, 8) if n <= len(devices)]
print("device counts:", counts)

matrix = jaxcal.TargetMatrix.from_scipy(problem.matrix)
matrices = {1: matrix} | {
    n: jaxcal.ShardedMatrix.from_scipy(problem.matrix, jaxcal.record_mesh(devices[:n])) for n in counts if n > 1
}
for n, m in matrices.items():
    print(f"{n} device{'s' if n > 1 else ''}: {type(m).__name__}" + (f", {m.block} records a block" if n > 1 else ""))

# %% [markdown]
# ## Sharded vs single device, with the same gate draws
#
# With gates on, each device normally draws its own uniforms (so a fit depends on the
# device count). To compare exactly we inject the same draws with `uniforms=`: then each
# step of the sharded fit is the single-device step up to float32 summation order (the
# all-reduce adds the devices' partial sums in another order), and the question is how much
# 200 Adam steps amplify that rounding. We measure it as the largest difference of a
# record's final weight, relative to the largest weight: `max |w_n - w_1| / max |w_1|`.

# %%
init_key, fit_key = jax.random.split(jax.random.key(0))
model = jaxcal.CalibrationWeights.init(
    problem.matrix.shape[1], key=init_key, init_weights=100.0, init_keep_prob=0.999, beta=0.35
)
objective = jaxcal.Objective.create(matrix.n_targets, lambda_l0=1e-6, lambda_l2=1e-12)
uniforms = np.random.default_rng(0).uniform(size=(EPOCHS, problem.matrix.shape[1])).astype(np.float32)
optimizer = jaxcal.optimizer_named("adam-cosine", epochs=EPOCHS)
settings = dict(epochs=EPOCHS, learning_rate=0.15, optimizer=optimizer, uniforms=uniforms)


def relative_difference(weights, reference):
    reference = np.asarray(reference, np.float64)
    return float(np.abs(np.asarray(weights, np.float64) - reference).max() / np.abs(reference).max())


results = {n: jaxcal.fit(model, m, problem.targets, objective, key=fit_key, **settings) for n, m in matrices.items()}

single = np.asarray(results[1].weights, np.float64)
differences = {n: relative_difference(r.weights, single) for n, r in results.items()}
for n, d in differences.items():
    print(f"{n} devices: max |w - w_single| / max|w_single| = {d:.2e}, records kept {results[n].n_active}")
most = max(results)

# The same comparison with PE's constant-rate Adam (the default optimizer of jaxcal.fit).
pe_settings = dict(epochs=EPOCHS, learning_rate=0.15, uniforms=uniforms)
pe_results = {
    n: jaxcal.fit(model, matrices[n], problem.targets, objective, key=fit_key, **pe_settings) for n in (1, most)
}
pe_same_draws = relative_difference(pe_results[most].weights, pe_results[1].weights)
print(f"PE's Adam, {most} devices vs 1: {pe_same_draws:.2e}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for n, r in results.items():
    axes[0].plot(
        np.asarray(r.history.data), label=f"{n} device{'s' if n > 1 else ''}", linestyle="-" if n == 1 else "--"
    )
axes[0].plot(np.asarray(pe_results[1].history.data), color="grey", alpha=0.6, label="PE's constant-rate Adam, 1 device")
axes[0].set(
    yscale="log",
    xlabel="epoch",
    ylabel="data loss (sampled gates)",
    title="Same draws (adam-cosine): the curves coincide",
)
axes[0].legend(fontsize=8)
axes[1].loglog(np.maximum(single, 1e-3), np.maximum(np.asarray(results[most].weights), 1e-3), ".", markersize=2)
span = [max(single.min(), 1e-3), single.max()]
axes[1].plot(span, span, color="grey", linestyle=":", linewidth=1, label="equal weights")
axes[1].set(
    xlabel="weight, 1 device (households represented)",
    ylabel=f"weight, {most} devices (households represented)",
    title=f"Final weights of each record: {most} devices vs 1",
)
axes[1].legend(loc="upper left")
plt.show()

# %% [markdown]
# ## Draws from the key: the result depends on the device count
#
# Without `uniforms=`, each device draws its own stream (`fold_in(fold_in(key, epoch),
# device)`), so 1 and 8 devices give different (equally valid) fits, each reproducible
# bitwise from run to run. With an objective whose `lambda_l0` is 0 (gates off) there are
# no draws and the device count only changes the summation order. Here the sharded matrix
# is made from the single-device one with `ShardedMatrix.from_matrix`.

# %%
no_gates = jaxcal.Objective.create(matrix.n_targets, lambda_l0=0.0)
spread = jaxcal.ShardedMatrix.from_matrix(matrix, jaxcal.record_mesh(devices[:most]))
plain = dict(epochs=EPOCHS, learning_rate=0.15)
plain_single = jaxcal.fit(model, matrix, problem.targets, no_gates, key=fit_key, optimizer=optimizer, **plain)
plain_sharded = jaxcal.fit(model, spread, problem.targets, no_gates, key=fit_key, optimizer=optimizer, **plain)
gates_off_difference = relative_difference(plain_sharded.weights, plain_single.weights)
print(f"gates off, {most} devices vs 1: relative difference {gates_off_difference:.2e}")
pe_gates_off = relative_difference(
    jaxcal.fit(model, spread, problem.targets, no_gates, key=fit_key, **plain).weights,
    jaxcal.fit(model, matrix, problem.targets, no_gates, key=fit_key, **plain).weights,
)
print(f"gates off, PE's Adam, {most} devices vs 1: relative difference {pe_gates_off:.2e}")

keyed = {
    n: jaxcal.fit(model, matrices[n], problem.targets, objective, key=fit_key, optimizer=optimizer, **plain)
    for n in (1, most)
}
print({n: r.n_active for n, r in keyed.items()}, "records kept with draws from the key")

# %% [markdown]
# ## How close, and why
#
# With `adam-cosine`, both comparisons above (same draws, gates off) stay under `BOUND`
# (1e-5) here; `results.json` records the numbers. With PE's constant-rate Adam the same
# fits end further apart (printed above): its steps never shrink, and Adam divides each
# gradient by its running scale, so a record whose gradient is nearly 0 (float32 rounding
# of a sum) still takes a step of up to the full rate, and the 1-device and sharded
# trajectories drift apart. The decaying rate of `adam-cosine` ends that drift.
#
# The difference grows with the problem: rounding errors of longer sums, and more nearly
# flat directions (these problems have more records than targets, so the optimum is not
# unique and where a fit ends depends on its path). Measured on this machine with the
# same code, 200 epochs of `adam-cosine` (same draws / gates off, 8 devices vs 1): 20,000
# records and 20 states 1.6e-5 / 6.5e-6; 50,000 records and 51 states 1.6e-4 / 3.6e-5;
# 200,000 records and 51 states 1.8e-3 / 1.3e-3 (PE's Adam there: 8.6e-2 / 6.0e-3). So
# on big problems the sharded and single-device fits are equally good fits (same loss
# curve), not the same weights to 1e-5.
#
# ## Time per epoch
#
# On fake CPU devices the "devices" share the same cores, so this shows the overhead of
# the sharded program, not a speed-up; on a multi-chip TPU or several GPUs the blocks run
# in parallel. The first call compiles; the second, timed, reuses the program.

# %%
timing = {}
for n, target in matrices.items():
    timed = jaxcal.optimizer_named("adam-cosine", epochs=TIMING_EPOCHS)  # the same program: its settings are state
    run = lambda: jaxcal.fit(
        model, target, problem.targets, objective, key=fit_key, epochs=TIMING_EPOCHS, optimizer=timed
    )
    jax.block_until_ready(run().weights)  # compile
    start = time.perf_counter()
    jax.block_until_ready(run().weights)
    timing[n] = (time.perf_counter() - start) / TIMING_EPOCHS * 1e3
    print(f"{n} devices: {timing[n]:.2f} ms/epoch")

fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
bars = ax.bar([str(n) for n in timing], list(timing.values()))
ax.bar_label(bars, fmt="%.2f")
ax.set(
    xlabel="devices",
    ylabel="ms / epoch",
    title=f"Time per epoch by device count ({jax.default_backend()}, {N_RECORDS:,} records)",
)
ax.margins(y=0.15)
plt.show()

# %%
summary = {
    "backend": jax.default_backend(),
    "n_devices": len(devices),
    "device_counts": counts,
    "n_records": N_RECORDS,
    "epochs": EPOCHS,
    "optimizer": "adam-cosine",
    "bound": BOUND,
    "max_relative_difference_same_draws": max(differences.values()),
    "relative_difference_gates_off": gates_off_difference,
    "pe_adam_relative_difference_same_draws": pe_same_draws,
    "pe_adam_relative_difference_gates_off": pe_gates_off,
    "ms_per_epoch": timing,
}
(OUT / "results.json").write_text(json.dumps(summary, indent=2))
summary
