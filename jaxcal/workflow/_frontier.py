"""The sparsity frontier: records kept against train and held-out loss over a grid of penalties."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from .._defaults import PE_DEFAULTS
from .._model import CalibrationWeights
from .._objective import Objective
from .._sweep import SweepResult, sweep
from ._holdout import HoldoutSplit, loss_evaluator

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import PRNGKeyArray

    from ..io import CalibrationPackage


def sweep_grid(
    package: CalibrationPackage,
    lambda_l0: Sequence[float],
    betas: Sequence[float],
    *,
    key: PRNGKeyArray,
    split: HoldoutSplit | None = None,
    objective: Objective | None = None,
    init_weights: Any = None,
    init_keep_prob: float = PE_DEFAULTS.init_keep_prob,
    **sweep_kwargs: Any,
) -> tuple[pd.DataFrame, list[SweepResult]]:
    """:func:`jaxcal.sweep` of ``package``'s train targets for each beta; the frontier and the sweeps.

    ``objective`` is for every target of ``package`` (default: relative loss, every target
    weighs 1); each fit minimises its train targets' part at each ``lambda_l0``. The frontier
    has one row per (beta, lambda_l0): ``records_kept``, ``train_loss``, ``holdout_loss``
    (NaN without ``split``) and ``full_loss``, data losses of the final weights as
    :func:`fit_with_holdout` logs them. Every beta starts from the same model
    (``init_weights``, default the package's or 100, drawn from ``key``).
    """
    import pandas as pd

    objective = objective if objective is not None else Objective.create(package.n_targets)
    train = np.ones(package.n_targets, bool) if split is None else split.train
    fit_package = package.select_targets(train)
    matrix = fit_package.target_matrix()
    evaluate = loss_evaluator(package, split, objective)
    if init_weights is None:
        init_weights = PE_DEFAULTS.init_weight if package.initial_weights is None else package.initial_weights
    init_key, fit_key = jax.random.split(key)
    rows, results = [], []
    for beta in betas:
        model = CalibrationWeights.init(
            package.n_records, key=init_key, init_weights=init_weights, init_keep_prob=init_keep_prob, beta=beta
        )
        result = sweep(
            model, matrix, fit_package.target_values, objective.select(train), lambda_l0, key=fit_key, **sweep_kwargs
        )
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
