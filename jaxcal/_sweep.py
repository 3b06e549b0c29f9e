"""Hyperparameter sweeps: a grid of ``lambda_l0`` values fitted side by side in one compiled program."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from ._fit import FitHistory, _check_problem, _default_optimizer, _prepare, _Step
from ._loss import LossKind, check_loss_kind
from ._matrix import TargetMatrix
from ._model import CalibrationWeights

if TYPE_CHECKING:
    import pandas as pd

    from ._holdout import HoldoutSplit
    from ._package import CalibrationPackage


class _SweepStep(_Step):
    """``_Step`` with ``lambda_l0`` an array, so that ``jax.vmap`` can map over it."""

    lambda_l0: Float[Array, ""]


class SweepResult(eqx.Module):
    """One fit per ``lambda_l0`` (leading axis), all with the same ``beta``, key and start."""

    lambda_l0: Float[Array, " n_fits"]
    weights: Float[Array, "n_fits n_records"]
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
    step: _SweepStep, model: CalibrationWeights, opt_state: optax.OptState, epochs: Int[Array, " epochs"]
) -> tuple[CalibrationWeights, Array, FitHistory]:
    def one(lambda_l0: Array) -> tuple[CalibrationWeights, Array, FitHistory]:
        member = eqx.tree_at(lambda s: s.lambda_l0, step, lambda_l0)
        (model_out, _), history = jax.lax.scan(lambda c, x: member(c, x), (model, opt_state), (epochs, None))
        return model_out, model_out.deterministic_weights(), history

    return jax.vmap(one)(step.lambda_l0)


def sweep(
    model: CalibrationWeights,
    matrix: TargetMatrix,
    targets: Any,
    lambda_l0: Sequence[float],
    *,
    key: PRNGKeyArray,
    epochs: int = 100,
    lambda_l2: float = 1e-12,
    learning_rate: float = 0.15,
    optimizer: optax.GradientTransformation | None = None,
    loss: LossKind = "relative",
    target_groups: Any = None,
    normalize_groups: bool = True,
    group_multipliers: dict[int, float] | None = None,
    log_weight_jitter_sd: float = 0.0,
) -> SweepResult:
    """Fit ``model`` once per value of ``lambda_l0``, with ``jax.vmap`` inside one compiled scan.

    Fit ``i`` is :func:`jaxcal.fit` with ``lambda_l0=lambda_l0[i]`` and the other arguments
    as given (same key, so same jitter and gate draws: the fits differ only by the penalty),
    up to float32 summation order. Every value must be positive (the gates stay on). The
    gate temperature ``beta`` is a static field of the model, fixed per compiled program:
    sweep several betas with :func:`sweep_grid`, one program each.
    """
    lambdas = np.asarray(lambda_l0, np.float64)
    if lambdas.ndim != 1 or lambdas.size == 0 or not np.all(np.isfinite(lambdas) & (lambdas > 0)):
        raise ValueError(f"lambda_l0 must be a non-empty list of positive numbers, got {lambda_l0!r}")
    if not model.use_gates:
        raise ValueError("a lambda_l0 sweep needs a model with gates (use_gates=True)")
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if log_weight_jitter_sd < 0 or lambda_l2 < 0:
        raise ValueError("log_weight_jitter_sd and lambda_l2 must not be negative")
    check_loss_kind(loss)
    targets = _check_problem(model, matrix, targets)
    step, model, opt_state = _prepare(
        model, matrix, targets, key=key, optimizer=optimizer or _default_optimizer(float(learning_rate)),
        opt_state=None, log_weight_jitter_sd=log_weight_jitter_sd, loss=loss, target_groups=target_groups,
        normalize_groups=normalize_groups, group_multipliers=group_multipliers,
        lambda_l0=jnp.asarray(lambdas, matrix.values.dtype), lambda_l2=float(lambda_l2), step_type=_SweepStep,
    )  # fmt: skip
    models, weights, history = _run_sweep(step, model, opt_state, jnp.arange(epochs, dtype=jnp.int32))
    return SweepResult(lambda_l0=step.lambda_l0, weights=weights, models=models, history=history, beta=model.beta)


def sweep_grid(
    package: CalibrationPackage,
    lambda_l0: Sequence[float],
    betas: Sequence[float],
    *,
    key: PRNGKeyArray,
    split: HoldoutSplit | None = None,
    init_weights: Any = None,
    init_keep_prob: float = 0.999,
    loss: LossKind = "relative",
    **sweep_kwargs: Any,
) -> tuple[pd.DataFrame, list[SweepResult]]:
    """:func:`sweep` of ``package``'s train targets for each beta; the frontier and the sweeps.

    The frontier has one row per (beta, lambda_l0): ``records_kept``, ``train_loss``,
    ``holdout_loss`` (NaN without ``split``) and ``full_loss``, data losses of the final
    weights as :func:`fit_with_holdout` logs them. Every beta starts from the same model
    (``init_weights``, default the package's or 100, drawn from ``key``).
    """
    import pandas as pd

    from ._holdout import loss_evaluator

    train = np.ones(package.n_targets, bool) if split is None else split.train
    fit_package = package.select_targets(train)
    matrix = fit_package.target_matrix()
    evaluate = loss_evaluator(package, split, loss=loss)
    if init_weights is None:
        init_weights = 100.0 if package.initial_weights is None else package.initial_weights
    init_key, fit_key = jax.random.split(key)
    rows, results = [], []
    for beta in betas:
        model = CalibrationWeights.init(
            package.n_records, key=init_key, init_weights=init_weights, init_keep_prob=init_keep_prob, beta=beta
        )
        result = sweep(model, matrix, fit_package.target_values, lambda_l0, key=fit_key, loss=loss, **sweep_kwargs)
        results.append(result)
        for i, lam in enumerate(lambda_l0):
            full, train_loss, holdout_loss, weight_sum, kept = evaluate(result.weights[i])
            rows.append(
                {
                    "beta": float(beta),
                    "lambda_l0": float(lam),
                    "records_kept": int(kept),
                    "train_loss": float(train_loss),
                    "holdout_loss": float(holdout_loss) if split is not None else float("nan"),
                    "full_loss": float(full),
                    "weight_sum": float(weight_sum),
                }
            )
    return pd.DataFrame(rows), results


def write_frontier(frontier: pd.DataFrame, directory: str | os.PathLike) -> dict[str, str]:
    """``frontier.csv`` and ``frontier.png`` (records kept vs train and held-out loss), atomically."""
    import pathlib

    from matplotlib.figure import Figure

    from ._package import atomic_write

    directory = pathlib.Path(directory)
    paths = {"csv": directory / "frontier.csv", "png": directory / "frontier.png"}
    atomic_write(paths["csv"], lambda f: frontier.to_csv(f, index=False), mode="w")
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.add_subplot()
    for beta, rows in frontier.groupby("beta"):
        rows = rows.sort_values("records_kept")
        line = axes.plot(rows["records_kept"], rows["train_loss"], marker="o", label=f"train, beta {beta:g}")[0]
        if rows["holdout_loss"].notna().any():
            axes.plot(rows["records_kept"], rows["holdout_loss"], marker="x", linestyle="--",
                      color=line.get_color(), label=f"held out, beta {beta:g}")  # fmt: skip
    axes.set_xlabel("records kept")
    axes.set_ylabel("data loss")
    axes.set_yscale("log")
    axes.legend()
    atomic_write(paths["png"], lambda f: figure.savefig(f, format="png", dpi=100))
    return {kind: str(path) for kind, path in paths.items()}
