"""Fitting: full-batch gradient steps, ``lax.scan`` over chunks of epochs inside one jit."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._adam import set_learning_rate, torch_adam
from ._defaults import PE_DEFAULTS
from ._matrix import AbstractTargetMatrix
from ._model import CalibrationWeights
from ._objective import Objective


@final
class FitHistory(eqx.Module):
    """Per-epoch record, evaluated at the parameters each step started from.

    ``l0`` and ``l2`` are the unscaled penalties; ``total`` is the objective the step
    minimised; ``n_active`` counts records with a nonzero deterministic weight. One entry
    per epoch (a scalar inside the step that makes one, a leading fit axis in a sweep).
    """

    data: Float[Array, " *epochs"]
    l0: Float[Array, " *epochs"]
    l2: Float[Array, " *epochs"]
    total: Float[Array, " *epochs"]
    n_active: Int[Array, " *epochs"]


@final
class FitResult(eqx.Module):
    """What :func:`fit` returns; continue a fit with ``fit(result.model, ..., opt_state=
    result.opt_state, start_epoch=result.epochs)`` and the same ``key``."""

    weights: Float[Array, " n_records"]
    """Final weights: ``exp(log_weight) * deterministic gate``."""
    predictions: Float[Array, " n_targets"]
    """``X @ weights``."""
    model: CalibrationWeights
    opt_state: optax.OptState
    history: FitHistory
    epochs: int = eqx.field(static=True)
    """Epochs completed since the fit first started (``start_epoch`` plus this call's)."""

    @property
    def n_active(self) -> int:
        """Records kept (weight > 0)."""
        return int(jnp.sum(self.weights > 0))


@final
class _Step(eqx.Module):
    """One epoch: draw the gates, one gradient step on ``objective``. Static fields fix the
    compiled program; the objective's weights and lambdas are traced.

    In a sharded fit, ``matrix`` is one device's block inside ``shard_map`` and the model
    holds that block's records: the draws come from the device's own stream, and the sums
    over records (penalties, ``n_active``) skip the padding and add up across devices.
    """

    matrix: AbstractTargetMatrix
    targets: Float[Array, " n_targets"]
    objective: Objective
    draw_key: PRNGKeyArray
    optimizer: optax.GradientTransformation = eqx.field(static=True)

    def __call__(
        self, carry: tuple[CalibrationWeights, optax.OptState], epoch_and_uniform: tuple[Array, Array | None]
    ) -> tuple[tuple[CalibrationWeights, optax.OptState], FitHistory]:
        model, opt_state = carry
        epoch, uniform = epoch_and_uniform
        if uniform is None and model.use_gates:
            key = self.matrix.record_key(jax.random.fold_in(self.draw_key, epoch))
            uniform = jax.random.uniform(key, (model.n_records,), model.log_weight.dtype)
        (total, (data, l0, l2)), grads = eqx.filter_value_and_grad(self.objective, has_aux=True)(
            model, self.matrix, self.targets, uniform
        )
        n_active = self.matrix.record_sum(model.kept())
        record = FitHistory(data=data, l0=l0, l2=l2, total=total, n_active=n_active)
        updates, opt_state = self.optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), opt_state), record


def _scan(
    step: _Step,
    uniforms: Float[Array, " chunk n_records"] | None,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    epochs: Int[Array, " chunk"],
) -> tuple[CalibrationWeights, optax.OptState, FitHistory]:
    (model, opt_state), history = jax.lax.scan(lambda c, x: step(c, x), (model, opt_state), (epochs, uniforms))
    return model, opt_state, history


@eqx.filter_jit(donate="all-except-first")
def _run_chunk(
    step: _Step,
    uniforms: Float[Array, " chunk n_records"] | None,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    epochs: Int[Array, " chunk"],
) -> tuple[CalibrationWeights, optax.OptState, FitHistory]:
    """A chunk of epochs as one compiled program, on every device that holds records."""
    return step.matrix.run_blocks(_scan, step, uniforms, model, opt_state, epochs)


@eqx.filter_jit
def _evaluate(
    matrix: AbstractTargetMatrix, model: CalibrationWeights
) -> tuple[Float[Array, " n_records"], Float[Array, " n_targets"]]:
    weights = model.deterministic_weights()
    return weights, matrix.mv(weights)


def fit(
    model: CalibrationWeights,
    matrix: AbstractTargetMatrix,
    targets: Any,
    objective: Objective,
    *,
    key: PRNGKeyArray,
    epochs: int = PE_DEFAULTS.epochs,
    learning_rate: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    log_weight_jitter_sd: float = 0.0,
    chunk_epochs: int | None = None,
    callback: Callable[[FitResult], bool | None] | None = None,
    opt_state: optax.OptState | None = None,
    start_epoch: int = 0,
    uniforms: Float[Array | np.ndarray, " epochs n_records"] | None = None,
) -> FitResult:
    """Fit calibration weights so that ``matrix @ weights`` matches ``targets``.

    Each epoch is one full-batch step of ``optimizer`` (default :func:`torch_adam`, at
    ``learning_rate``: policyengine-us-data's 0.15 on a fresh fit, the state's own when
    continuing) on ``objective``, with gates sampled afresh. ``objective.lambda_l0 == 0``
    switches the gates off. The rate, the lambdas and the loss weights are traced: a fit
    with other values reuses the compiled program.

    Randomness comes only from ``key``: the log-weight jitter (``log_weight_jitter_sd``,
    applied when ``opt_state`` is None, i.e. on a fresh fit) and the uniform draw of epoch
    ``e``, from ``fold_in(key, e)``; so a fit continued with ``opt_state`` and
    ``start_epoch`` is bitwise the fit that never stopped. ``uniforms`` (epochs x records)
    replaces those draws, for exact comparison with another implementation.

    Epochs run ``chunk_epochs`` at a time (default: all) as one compiled ``lax.scan``;
    after each chunk ``callback(result_so_far)`` may log, save or return True to stop.
    Its ``model`` and ``opt_state`` are donated to the next chunk: copy what you keep.

    With a :class:`ShardedMatrix` the records are split into one block per device and each
    step is one compiled program on all of them: parameters, gradients and the optimizer
    state's per-parameter arrays stay with their device, and the devices add up their
    partial ``X @ w`` (one ``psum``). Given the same ``uniforms``, or without gates, this is
    the single-device fit up to float32 summation order. The draws otherwise come from one
    stream per device (``fold_in(fold_in(key, e), device)``), so they depend on the device
    count. The result is gathered onto the mesh's first device.
    """
    targets = _check_problem(model, matrix, targets, objective)
    if epochs < 0 or start_epoch < 0:
        raise ValueError(f"epochs and start_epoch must not be negative, got {epochs}, {start_epoch}")
    if log_weight_jitter_sd < 0:
        raise ValueError(f"log_weight_jitter_sd must not be negative, got {log_weight_jitter_sd}")
    model = _gates_for(model, objective)
    chunk = epochs if chunk_epochs is None else chunk_epochs
    if chunk < 1 and epochs > 0:
        raise ValueError(f"chunk_epochs must be positive, got {chunk_epochs}")
    draws = None if uniforms is None else jnp.asarray(uniforms, model.log_weight.dtype)
    if draws is not None and draws.shape != (epochs, model.n_records):
        raise ValueError(
            f"uniforms must have shape (epochs, n_records) = {(epochs, model.n_records)}, got {draws.shape}"
        )
    step, model, state = prepare_step(
        model,
        matrix,
        targets,
        objective,
        key=key,
        optimizer=optimizer,
        learning_rate=learning_rate,
        opt_state=opt_state,
        log_weight_jitter_sd=log_weight_jitter_sd,
    )
    model, state, shared, draws = matrix.place_state(
        (model, state, (step.targets, step.objective, step.draw_key), draws), step.optimizer
    )
    step = eqx.tree_at(lambda s: (s.targets, s.objective, s.draw_key), step, shared)
    histories: list[FitHistory] = []
    done = 0
    while done < epochs:
        n = min(chunk, epochs - done)
        first = start_epoch + done
        model, state, history = _run_chunk(
            step,
            None if draws is None else draws[done : done + n],
            model,
            state,
            jnp.arange(first, first + n, dtype=jnp.int32),
        )
        histories.append(history)
        done += n
        if callback is not None and callback(_result(step, model, state, histories, start_epoch + done)):
            break
    return _result(step, model, state, histories, start_epoch + done)


def prepare_step(
    model: CalibrationWeights,
    matrix: AbstractTargetMatrix,
    targets: Array,
    objective: Objective,
    *,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation | None,
    learning_rate: float | None,
    opt_state: optax.OptState | None,
    log_weight_jitter_sd: float,
) -> tuple[_Step, CalibrationWeights, optax.OptState]:
    """The step and starting state of a fit (shared by :func:`fit` and :func:`jaxcal.sweep`):
    ``key`` splits into the jitter key and the draw key; a fresh fit (``opt_state`` None)
    jitters ``log_weight`` and starts the optimizer."""
    if learning_rate is not None and not (np.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if optimizer is None:
        optimizer = _default_optimizer()
        if opt_state is None and learning_rate is None:
            learning_rate = PE_DEFAULTS.learning_rate
    jitter_key, draw_key = jax.random.split(key)
    # Fresh buffers: the chunks donate theirs, and the caller's model stays usable.
    model = jax.tree.map(jnp.copy, model)
    if opt_state is None:
        if log_weight_jitter_sd > 0:
            noise = jax.random.normal(jitter_key, model.log_weight.shape, model.log_weight.dtype)
            model = eqx.tree_at(lambda m: m.log_weight, model, model.log_weight + noise * log_weight_jitter_sd)
        state = optimizer.init(eqx.filter(model, eqx.is_array))
    else:
        state = jax.tree.map(jnp.copy, opt_state)
    if learning_rate is not None:
        state = set_learning_rate(state, learning_rate)
    step = _Step(matrix=matrix, targets=targets, objective=objective, draw_key=draw_key, optimizer=optimizer)
    return step, model, state


@functools.cache
def _default_optimizer() -> optax.GradientTransformation:
    """One optimizer object, so that every fit reuses the compiled program (the rate is state)."""
    return torch_adam(PE_DEFAULTS.learning_rate)


def _gates_for(model: CalibrationWeights, objective: Objective) -> CalibrationWeights:
    """The model with its gates off when ``lambda_l0`` is 0 (no fake sparsity machinery)."""
    lambda_l0 = float(objective.lambda_l0)
    if lambda_l0 > 0 and not model.use_gates:
        raise ValueError("lambda_l0 > 0 needs a model with gates (use_gates=True)")
    if lambda_l0 == 0 and model.use_gates:
        return dataclasses.replace(model, use_gates=False)
    return model


def _result(
    step: _Step,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    histories: list[FitHistory],
    epochs: int,
) -> FitResult:
    weights, predictions = _evaluate(step.matrix, model)
    if histories:
        history = jax.tree.map(lambda *parts: jnp.concatenate(parts), *histories)
    else:
        empty = jnp.zeros(0, step.matrix.dtype)
        history = FitHistory(empty, empty, empty, empty, jnp.zeros(0, jnp.int32))
    weights, model, opt_state, (predictions, history) = step.matrix.gather_state(
        (weights, model, opt_state, (predictions, history)), step.optimizer
    )
    return FitResult(
        weights=weights, predictions=predictions, model=model, opt_state=opt_state, history=history, epochs=epochs
    )


def _check_problem(
    model: CalibrationWeights, matrix: AbstractTargetMatrix, targets: Any, objective: Objective
) -> Float[Array, " n_targets"]:
    if not isinstance(matrix, AbstractTargetMatrix):
        raise ValueError(
            f"matrix must be a jaxcal.TargetMatrix or ShardedMatrix (see TargetMatrix.from_scipy / from_bcoo), "
            f"got {type(matrix).__name__}"
        )
    if not isinstance(objective, Objective):
        raise ValueError(f"objective must be a jaxcal.Objective (see Objective.create), got {type(objective).__name__}")
    if model.n_records != matrix.n_records:
        raise ValueError(f"the model has {model.n_records} records but the matrix has {matrix.n_records} columns")
    try:
        targets = np.asarray(targets, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"targets must be numbers: {error}") from None
    if targets.shape != (matrix.n_targets,):
        raise ValueError(f"targets must have shape ({matrix.n_targets},), got {targets.shape}")
    if not np.all(np.isfinite(targets)):
        raise ValueError(f"targets must be finite: {int((~np.isfinite(targets)).sum())} are not")
    beyond = ~np.isfinite(targets.astype(matrix.dtype))
    if beyond.any():
        first = int(np.flatnonzero(beyond)[0])
        raise ValueError(
            f"{int(beyond.sum())} targets are too large for {matrix.dtype} (target {first} is {targets[first]:g})"
        )
    if objective.n_targets != matrix.n_targets:
        raise ValueError(
            f"the objective weighs {objective.n_targets} targets but the matrix has {matrix.n_targets} rows"
        )
    if objective.loss_weights.dtype != matrix.dtype:
        raise ValueError(
            f"the objective computes in {objective.loss_weights.dtype} but the matrix in {matrix.dtype}: "
            f"create it with Objective.create(..., dtype={matrix.dtype})"
        )
    for name in ("lambda_l0", "lambda_l2"):
        value = float(getattr(objective, name))
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and non-negative, got {value}")
    return jnp.asarray(targets, matrix.dtype)
