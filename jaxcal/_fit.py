"""Fitting: full-batch gradient steps, ``lax.scan`` over chunks of epochs inside one jit."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._adam import torch_adam
from ._loss import LossKind, check_loss_kind, data_loss, target_loss_weights
from ._matrix import TargetMatrix
from ._model import CalibrationWeights
from ._sharding import ShardedMatrix, _Block, record_mesh, sharded_mv


class FitHistory(eqx.Module):
    """Per-epoch record, evaluated at the parameters each step started from.

    ``l0`` and ``l2`` are the unscaled penalties; ``total`` is the objective the step
    minimised; ``n_active`` counts records with a nonzero deterministic weight.
    """

    data: Float[Array, " epochs"]
    l0: Float[Array, " epochs"]
    l2: Float[Array, " epochs"]
    total: Float[Array, " epochs"]
    n_active: Int[Array, " epochs"]


class FitResult(eqx.Module):
    """What :func:`fit` returns; continue a fit with ``fit(result.model, ...,
    opt_state=result.opt_state, start_epoch=result.epochs)`` and the same ``key``."""

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


class _Step(eqx.Module):
    """What one epoch needs besides the parameters. Static fields fix the compiled program.

    In a sharded fit, ``matrix`` is one device's block inside ``shard_map`` and the model
    holds that block's records: the draws come from the device's own stream, and the sums
    over records (penalties, ``n_active``) skip the padding and add up across devices.
    """

    matrix: TargetMatrix | ShardedMatrix | _Block
    targets: Float[Array, " n_targets"]
    loss_weights: Float[Array, " n_targets"]
    draw_key: PRNGKeyArray
    optimizer: optax.GradientTransformation = eqx.field(static=True)
    loss: LossKind = eqx.field(static=True)
    lambda_l0: float = eqx.field(static=True)
    lambda_l2: float = eqx.field(static=True)

    def _total(self, model: CalibrationWeights, per_record: Callable[[CalibrationWeights], Array]) -> Array:
        if isinstance(self.matrix, _Block):
            return self.matrix.record_total(model, per_record)
        return per_record(model)

    def objective(self, model: CalibrationWeights, uniform: Array | None) -> tuple[Array, tuple]:
        predictions = self.matrix.mv(model.sample_weights(uniform))
        data = data_loss(predictions, self.targets, self.loss_weights, self.loss)
        l0 = self._total(model, CalibrationWeights.l0_penalty)
        l2 = self._total(model, CalibrationWeights.l2_penalty)
        total = data + self.lambda_l0 * l0
        if self.lambda_l2 > 0:
            total = total + self.lambda_l2 * l2
        return total, (data, l0, l2)

    def __call__(self, carry: tuple, epoch_and_uniform: tuple) -> tuple[tuple, FitHistory]:
        model, opt_state = carry
        epoch, uniform = epoch_and_uniform
        if uniform is None and model.use_gates:
            key = jax.random.fold_in(self.draw_key, epoch)
            if isinstance(self.matrix, _Block):
                key = self.matrix.device_key(key)
            uniform = jax.random.uniform(key, (model.n_records,), model.log_weight.dtype)
        (total, (data, l0, l2)), grads = eqx.filter_value_and_grad(self.objective, has_aux=True)(
            model, uniform
        )
        n_active = self._total(model, CalibrationWeights.n_active)
        record = FitHistory(data=data, l0=l0, l2=l2, total=total, n_active=n_active)
        params = eqx.filter(model, eqx.is_array)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return (eqx.apply_updates(model, updates), opt_state), record


def _scan(
    step: _Step,
    uniforms: Array | None,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    epochs: Int[Array, " chunk"],
) -> tuple[CalibrationWeights, optax.OptState, FitHistory]:
    (model, opt_state), history = jax.lax.scan(lambda c, x: step(c, x), (model, opt_state), (epochs, uniforms))
    return model, opt_state, history


_run_chunk = eqx.filter_jit(_scan, donate="all-except-first")


@eqx.filter_jit(donate="all-except-first")
def _run_sharded_chunk(
    step: _Step,
    uniforms: Array | None,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    epochs: Int[Array, " chunk"],
) -> tuple[CalibrationWeights, optax.OptState, FitHistory]:
    """``_scan`` on every device of ``step.matrix``'s mesh, over its block of records."""
    matrix = step.matrix
    step_specs = eqx.tree_at(lambda s: s.matrix, jax.tree.map(lambda _: PartitionSpec(), step), matrix.block_specs())
    model_specs, opt_specs = matrix.record_specs((model, opt_state))
    uniform_specs = None if uniforms is None else PartitionSpec(None, matrix.axis)

    def local(step: _Step, *args: Any) -> tuple[CalibrationWeights, optax.OptState, FitHistory]:
        return _scan(eqx.tree_at(lambda s: s.matrix, step, step.matrix.local()), *args)

    return jax.shard_map(
        local,
        mesh=matrix.mesh,
        in_specs=(step_specs, uniform_specs, model_specs, opt_specs, PartitionSpec()),
        out_specs=(model_specs, opt_specs, PartitionSpec()),
    )(step, uniforms, model, opt_state, epochs)


@eqx.filter_jit
def _evaluate(matrix: TargetMatrix | ShardedMatrix, model: CalibrationWeights) -> tuple[Array, Array]:
    weights = model.deterministic_weights()
    if isinstance(matrix, ShardedMatrix):
        return weights, sharded_mv(matrix, weights)
    return weights, matrix.mv(weights)


def fit(
    model: CalibrationWeights,
    matrix: TargetMatrix | ShardedMatrix,
    targets: Any,
    *,
    key: PRNGKeyArray,
    epochs: int = 100,
    lambda_l0: float = 1e-8,
    lambda_l2: float = 1e-12,
    learning_rate: float = 0.15,
    optimizer: optax.GradientTransformation | None = None,
    loss: LossKind = "relative",
    target_groups: Any = None,
    normalize_groups: bool = True,
    group_multipliers: dict[int, float] | None = None,
    log_weight_jitter_sd: float = 0.0,
    chunk_epochs: int | None = None,
    callback: Callable[[FitResult], bool | None] | None = None,
    opt_state: optax.OptState | None = None,
    start_epoch: int = 0,
    uniforms: Float[Array, "epochs n_records"] | None = None,
    devices: int | str | Sequence[jax.Device] | None = None,
    mesh: Mesh | None = None,
) -> FitResult:
    """Fit calibration weights so that ``matrix @ weights`` matches ``targets``.

    Each epoch is one full-batch step of ``optimizer`` (default: :func:`torch_adam` at
    ``learning_rate``) on ``data + lambda_l0 * L0 + lambda_l2 * L2``, with gates
    sampled afresh. The defaults are policyengine-us-data's ``fit_l0_weights``; see
    ``CalibrationWeights`` for the model's. ``lambda_l0 == 0`` switches the gates off.

    Randomness comes only from ``key``: the log-weight jitter (``log_weight_jitter_sd``,
    applied when ``opt_state`` is None, i.e. on a fresh fit) and the uniform draw of epoch
    ``e``, from ``fold_in(key, e)``; so a fit continued with ``opt_state`` and
    ``start_epoch`` is bitwise the fit that never stopped. ``uniforms`` (epochs x records)
    replaces those draws, for exact comparison with another implementation.

    Epochs run ``chunk_epochs`` at a time (default: all) as one compiled ``lax.scan``;
    after each chunk ``callback(result_so_far)`` may log, save or return True to stop.
    Its ``model`` and ``opt_state`` are donated to the next chunk: copy what you keep.

    With ``devices`` (a count, ``"all"`` or a list; see :func:`select_devices`), a ``mesh``
    (see :func:`record_mesh`) or a :class:`ShardedMatrix`, the records are split into one
    block per device and each step is one compiled program on all of them: parameters,
    gradients and optimizer state stay with their device, and the devices add up their
    partial ``X @ w`` (one ``psum``). Given the same ``uniforms``, or without gates, this is
    the single-device fit up to float32 summation order. The draws otherwise come from one
    stream per device (``fold_in(fold_in(key, e), device)``), so they depend on the device
    count. Optimizer-state arrays with one entry per record are split like the weights.
    The result is gathered onto the mesh's first device.
    """
    matrix = _sharded_matrix(matrix, devices, mesh)
    targets = _check_problem(model, matrix, targets)
    if epochs < 0 or start_epoch < 0:
        raise ValueError(f"epochs and start_epoch must not be negative, got {epochs}, {start_epoch}")
    check_loss_kind(loss)
    if log_weight_jitter_sd < 0:
        raise ValueError(f"log_weight_jitter_sd must not be negative, got {log_weight_jitter_sd}")
    if lambda_l0 < 0 or lambda_l2 < 0:
        raise ValueError(f"penalties must not be negative, got lambda_l0={lambda_l0}, lambda_l2={lambda_l2}")
    if lambda_l0 > 0 and not model.use_gates:
        raise ValueError("lambda_l0 > 0 needs a model with gates (use_gates=True)")
    if lambda_l0 == 0 and model.use_gates:
        model = dataclasses.replace(model, use_gates=False)
    chunk = epochs if chunk_epochs is None else chunk_epochs
    if chunk < 1 and epochs > 0:
        raise ValueError(f"chunk_epochs must be positive, got {chunk_epochs}")
    if uniforms is not None:
        uniforms = jnp.asarray(uniforms, model.log_weight.dtype)
        if uniforms.shape != (epochs, model.n_records):
            raise ValueError(
                f"uniforms must have shape (epochs, n_records) = {(epochs, model.n_records)}, "
                f"got {uniforms.shape}"
            )

    step, model, opt_state = _prepare(
        model, matrix, targets, key=key, optimizer=optimizer or _default_optimizer(float(learning_rate)),
        opt_state=opt_state, log_weight_jitter_sd=log_weight_jitter_sd, loss=loss, target_groups=target_groups,
        normalize_groups=normalize_groups, group_multipliers=group_multipliers, lambda_l0=float(lambda_l0),
        lambda_l2=float(lambda_l2),
    )  # fmt: skip
    run_chunk = _run_chunk
    if isinstance(matrix, ShardedMatrix):
        run_chunk = _run_sharded_chunk
        model, opt_state = matrix.shard((model, opt_state))
        step = eqx.tree_at(lambda s: (s.targets, s.loss_weights, s.draw_key), step, matrix.replicate(
            (step.targets, step.loss_weights, step.draw_key)
        ))
        if uniforms is not None:
            uniforms = matrix.shard(uniforms.T).T
    histories: list[FitHistory] = []
    done = 0
    while done < epochs:
        n = min(chunk, epochs - done)
        first = start_epoch + done
        model, opt_state, history = run_chunk(
            step,
            None if uniforms is None else uniforms[done : done + n],
            model,
            opt_state,
            jnp.arange(first, first + n, dtype=jnp.int32),
        )
        histories.append(history)
        done += n
        if callback is not None and callback(_result(matrix, model, opt_state, histories, start_epoch + done)):
            break
    return _result(matrix, model, opt_state, histories, start_epoch + done)


def _prepare(
    model: CalibrationWeights,
    matrix: TargetMatrix | ShardedMatrix,
    targets: Array,
    *,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation,
    opt_state: optax.OptState | None,
    log_weight_jitter_sd: float,
    loss: LossKind,
    target_groups: Any,
    normalize_groups: bool,
    group_multipliers: dict[int, float] | None,
    lambda_l0: Any,
    lambda_l2: float,
    step_type: type[_Step] = _Step,
) -> tuple[_Step, CalibrationWeights, optax.OptState]:
    """The step and starting state of a fit: ``key`` splits into the jitter key and the draw
    key; a fresh fit (``opt_state`` None) jitters ``log_weight`` and starts the optimizer."""
    jitter_key, draw_key = jax.random.split(key)
    # Fresh buffers: the chunks donate theirs, and the caller's model stays usable.
    model = jax.tree.map(jnp.copy, model)
    if opt_state is None:
        if log_weight_jitter_sd > 0:
            noise = jax.random.normal(jitter_key, model.log_weight.shape, model.log_weight.dtype)
            model = eqx.tree_at(lambda m: m.log_weight, model, model.log_weight + noise * log_weight_jitter_sd)
        opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
    else:
        opt_state = jax.tree.map(jnp.copy, opt_state)
    loss_weights = target_loss_weights(
        matrix.n_targets, target_groups, normalize_groups=normalize_groups,
        group_multipliers=group_multipliers, dtype=matrix.values.dtype,
    )  # fmt: skip
    step = step_type(
        matrix=matrix, targets=targets, loss_weights=jnp.asarray(loss_weights), draw_key=draw_key,
        optimizer=optimizer, loss=loss, lambda_l0=lambda_l0, lambda_l2=lambda_l2,
    )  # fmt: skip
    return step, model, opt_state


@functools.cache
def _default_optimizer(learning_rate: float) -> optax.GradientTransformation:
    """One optimizer object per rate, so that repeated fits reuse the compiled program."""
    return torch_adam(learning_rate)


def _sharded_matrix(
    matrix: TargetMatrix | ShardedMatrix, devices: int | str | Sequence[jax.Device] | None, mesh: Mesh | None
) -> TargetMatrix | ShardedMatrix:
    """The matrix split over ``devices`` or ``mesh`` when either is given."""
    if devices is not None and mesh is not None:
        raise ValueError("give devices or mesh, not both")
    if devices is not None:
        mesh = record_mesh(devices)
    if isinstance(matrix, ShardedMatrix):
        if mesh is not None and mesh != matrix.mesh:
            raise ValueError("the ShardedMatrix is split over another mesh than the one given")
        return matrix
    if mesh is None or not isinstance(matrix, TargetMatrix):
        return matrix
    return ShardedMatrix.from_matrix(matrix, mesh)


def _result(
    matrix: TargetMatrix | ShardedMatrix,
    model: CalibrationWeights,
    opt_state: optax.OptState,
    histories: list[FitHistory],
    epochs: int,
) -> FitResult:
    weights, predictions = _evaluate(matrix, model)
    if histories:
        history = jax.tree.map(lambda *parts: jnp.concatenate(parts), *histories)
    else:
        empty = jnp.zeros(0, jnp.float32)
        history = FitHistory(empty, empty, empty, empty, jnp.zeros(0, jnp.int32))
    if isinstance(matrix, ShardedMatrix):
        weights, model, opt_state = matrix.unshard((weights, model, opt_state))
        predictions, history = jax.device_put((predictions, history), weights.device)
    return FitResult(
        weights=weights,
        predictions=predictions,
        model=model,
        opt_state=opt_state,
        history=history,
        epochs=epochs,
    )


def _check_problem(model: CalibrationWeights, matrix: TargetMatrix | ShardedMatrix, targets: Any) -> Array:
    if not isinstance(matrix, (TargetMatrix, ShardedMatrix)):
        raise ValueError(
            f"matrix must be a jaxcal.TargetMatrix (see TargetMatrix.from_scipy / from_bcoo), "
            f"got {type(matrix).__name__}"
        )
    if model.n_records != matrix.n_records:
        raise ValueError(
            f"the model has {model.n_records} records but the matrix has {matrix.n_records} columns"
        )
    try:
        targets = np.asarray(targets, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"targets must be numbers: {error}") from None
    if targets.shape != (matrix.n_targets,):
        raise ValueError(f"targets must have shape ({matrix.n_targets},), got {targets.shape}")
    if not np.all(np.isfinite(targets)):
        raise ValueError(f"targets must be finite: {int((~np.isfinite(targets)).sum())} are not")
    return jnp.asarray(targets, matrix.values.dtype)
