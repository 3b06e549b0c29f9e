"""Hyperparameter sweeps: fits that differ only in traced values, side by side with ``jax.vmap``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._defaults import PE_DEFAULTS
from ._fit import FitHistory, _check_problem, _gates_for, _Step, prepare_step
from ._matrix import TargetMatrix
from ._model import CalibrationWeights
from ._objective import Objective


@final
class SweepResult(eqx.Module):
    """One fit per ``lambda_l0`` (leading axis), all with the same ``beta``, key and start."""

    lambda_l0: Float[Array, " n_fits"]
    weights: Float[Array, " n_fits n_records"]
    models: CalibrationWeights
    """The final parameters, each array with a leading ``n_fits`` axis."""
    history: FitHistory
    """Per-epoch records, ``n_fits x epochs``."""
    beta: float = eqx.field(static=True)

    @property
    def n_active(self) -> Int[np.ndarray, " n_fits"]:
        """Records kept by each fit."""
        return np.asarray(jnp.sum(self.weights > 0, axis=1))


@eqx.filter_jit
def _run_sweep(
    step: _Step,
    lambda_l0: Float[Array, " n_fits"],
    model: CalibrationWeights,
    opt_state: optax.OptState,
    epochs: Int[Array, " epochs"],
) -> tuple[CalibrationWeights, Float[Array, " n_fits n_records"], FitHistory]:
    def one(lambda_l0: Float[Array, ""]) -> tuple[CalibrationWeights, Array, FitHistory]:
        member = eqx.tree_at(lambda s: s.objective.lambda_l0, step, lambda_l0)
        (model_out, _), history = jax.lax.scan(lambda c, x: member(c, x), (model, opt_state), (epochs, None))
        return model_out, model_out.deterministic_weights(), history

    return jax.vmap(one)(lambda_l0)


def sweep(
    model: CalibrationWeights,
    matrix: TargetMatrix,
    targets: Any,
    objective: Objective,
    lambda_l0: Sequence[float] | np.ndarray,
    *,
    key: PRNGKeyArray,
    epochs: int = PE_DEFAULTS.epochs,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    log_weight_jitter_sd: float = 0.0,
) -> SweepResult:
    """Fit ``model`` once per value of ``lambda_l0``: ``jax.vmap`` over ``objective``'s traced
    ``lambda_l0``, inside one compiled scan.

    Fit ``i`` is :func:`jaxcal.fit` with ``objective`` at ``lambda_l0[i]`` and the other
    arguments as given (same key, so same jitter and gate draws: the fits differ only by the
    penalty), up to float32 summation order. Every value must be positive (the gates stay
    on). The gate temperature ``beta`` is a static field of the model, fixed per compiled
    program: sweep several betas with :func:`jaxcal.workflow.sweep_grid`, one program each.
    """
    lambdas = np.asarray(lambda_l0, np.float64)
    if lambdas.ndim != 1 or lambdas.size == 0 or not np.all(np.isfinite(lambdas) & (lambdas > 0)):
        raise ValueError(f"lambda_l0 must be a non-empty list of positive numbers, got {lambda_l0!r}")
    if not model.use_gates:
        raise ValueError("a lambda_l0 sweep needs a model with gates (use_gates=True)")
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if log_weight_jitter_sd < 0:
        raise ValueError(f"log_weight_jitter_sd must not be negative, got {log_weight_jitter_sd}")
    objective = eqx.tree_at(lambda o: o.lambda_l0, objective, jnp.asarray(lambdas[0], matrix.dtype))
    targets = _check_problem(model, matrix, targets, objective)
    model = _gates_for(model, objective)
    step, model, opt_state = prepare_step(
        model,
        matrix,
        targets,
        objective,
        key=key,
        optimizer=optimizer,
        learning_rate=learning_rate,
        opt_state=None,
        log_weight_jitter_sd=log_weight_jitter_sd,
    )
    grid = jnp.asarray(lambdas, matrix.dtype)
    models, weights, history = _run_sweep(step, grid, model, opt_state, jnp.arange(epochs, dtype=jnp.int32))
    return SweepResult(lambda_l0=grid, weights=weights, models=models, history=history, beta=model.beta)
