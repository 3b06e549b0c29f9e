"""Parent-to-child tiers: keep exactly ``budget`` of a parent's records, then refit them.

The records are ranked by an L0 path: a :func:`jaxcal.sweep` over ``lambda_l0`` started
from the parent's weights on the train targets; the fit whose kept count is the smallest
at or above the budget ranks every record by its gate logit ``log_alpha`` (the higher, the
more likely the gate stays open), ties broken by record id. The child keeps the best
``state_floor`` records of every state and fills the budget from the top of the ranking,
then is refitted with gates off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, Int

from .._defaults import PE_DEFAULTS
from .._fit import FitResult, fit
from .._model import CalibrationWeights
from .._objective import Objective
from .._sweep import sweep
from ..io import CalibrationPackage
from ._holdout import HoldoutFit, HoldoutSplit, fit_with_holdout, loss_evaluator
from ._metrics import error_summary, relative_errors, weight_health

if TYPE_CHECKING:
    from jaxtyping import PRNGKeyArray

DEFAULT_LAMBDA_L0 = tuple(float(x) for x in np.geomspace(1e-4, 1.0, 9))


def select_tier(
    scores: Float[np.ndarray, " n_records"],
    budget: int,
    *,
    states: np.ndarray | None = None,
    state_floor: int = 0,
) -> Int[np.ndarray, " budget"]:
    """Exactly ``budget`` record ids (ascending): the best ``state_floor`` of every state
    (all of a smaller state), then the best of the rest; higher score first, ties by id."""
    scores = np.asarray(scores, np.float64)
    n = scores.size
    if not 0 < budget <= n:
        raise ValueError(f"the budget must lie in [1, {n}] (the parent's records), got {budget}")
    if not np.all(np.isfinite(scores)):
        raise ValueError("record scores must be finite")
    if state_floor < 0:
        raise ValueError(f"state_floor must not be negative, got {state_floor}")
    order = np.lexsort((np.arange(n), -scores))
    chosen = np.zeros(n, bool)
    if state_floor:
        if states is None:
            raise ValueError("a state floor needs the records' states (geography 'state_fips')")
        ordered_states = np.asarray(states)[order]
        for state in np.unique(ordered_states):
            chosen[order[ordered_states == state][:state_floor]] = True
        if chosen.sum() > budget:
            raise ValueError(
                f"a floor of {state_floor} records in each of {np.unique(states).size} states "
                f"needs {int(chosen.sum())} records, more than the budget of {budget}"
            )
    rest = order[~chosen[order]][: budget - int(chosen.sum())]
    chosen[rest] = True
    return np.flatnonzero(chosen)


@final
class TierFit(eqx.Module):
    """A child package and its refitted weights, compared with the parent."""

    child: CalibrationPackage
    selected: Int[np.ndarray, " budget"]
    """The parent's column of each child record."""
    weights: Float[np.ndarray, " budget"]
    refit: FitResult | HoldoutFit
    comparison: dict[str, dict[str, Any]]
    """``parent`` and ``child``: train/held-out/full loss, mean and median relative
    error (percent), effective sample size, records kept."""


def refit_subset(
    package: CalibrationPackage,
    parent_weights: Any,
    selected: Any,
    *,
    key: PRNGKeyArray,
    split: HoldoutSplit | None = None,
    objective: Objective | None = None,
    epochs: int = 200,
    learning_rate: float = PE_DEFAULTS.learning_rate,
    patience: int | None = None,
    min_delta: float = 0.0,
    start_weights: Any = None,
) -> TierFit:
    """Refit the records ``selected`` with gates off (``objective``'s ``lambda_l0`` set to 0;
    default: relative loss, every target weighs 1), on the train targets of ``split`` (with
    early stopping when ``patience`` is given) or on all targets. The fit starts from
    ``start_weights`` (one per selected record), by default their parent weights scaled
    to the parent's total."""
    _check_early_stopping(split, patience)
    parent_weights = np.asarray(parent_weights, np.float64)
    selected = np.asarray(selected)
    child = package.select_records(selected)
    if start_weights is None:
        start = parent_weights[selected]
        if start.sum() <= 0:
            raise ValueError("the selected records all have parent weight 0")
        start_weights = start * parent_weights.sum() / start.sum()
    start = np.asarray(start_weights, np.float64)
    model = CalibrationWeights.init(child.n_records, key=key, init_weights=start, use_gates=False)
    objective = _objective(package, objective)
    no_gates = eqx.tree_at(lambda o: o.lambda_l0, objective, jnp.zeros_like(objective.lambda_l0))
    refit: FitResult | HoldoutFit
    if split is None:
        refit = fit(
            model,
            child.target_matrix(),
            child.target_values,
            no_gates,
            key=key,
            epochs=epochs,
            learning_rate=learning_rate,
        )
    else:
        refit = fit_with_holdout(
            model,
            child,
            split,
            no_gates,
            key=key,
            epochs=epochs,
            learning_rate=learning_rate,
            patience=patience,
            min_delta=min_delta,
        )
    weights = np.asarray(refit.weights, np.float64)
    comparison = {
        "parent": assess(package, parent_weights, split, objective),
        "child": assess(child, weights, split, objective),
    }
    return TierFit(child=child, selected=selected, weights=weights, refit=refit, comparison=comparison)


def _check_early_stopping(split: HoldoutSplit | None, patience: int | None) -> None:
    if patience is not None and split is None:
        raise ValueError("early stopping needs held-out targets (a split)")


def _objective(package: CalibrationPackage, objective: Objective | None) -> Objective:
    if objective is None:
        return Objective.create(package.n_targets)
    if objective.n_targets != package.n_targets:
        raise ValueError(f"the objective weighs {objective.n_targets} targets but the package has {package.n_targets}")
    return objective


def assess(
    package: CalibrationPackage, weights: Any, split: HoldoutSplit | None, objective: Objective | None = None
) -> dict[str, Any]:
    """Losses, error summary and weight health of ``weights`` on ``package``'s targets."""
    weights = np.asarray(weights, np.float64)
    evaluate = loss_evaluator(package, split, objective)
    full, train, holdout, _, _ = evaluate(np.asarray(weights, np.float32))
    estimates = package.estimate(weights)
    health = weight_health(weights)
    return {
        "train_loss": float(train),
        "holdout_loss": None if split is None else float(holdout),
        "full_loss": float(full),
        **error_summary(relative_errors(estimates, package.target_values)),
        "effective_sample_size": health["effective_sample_size"],
        "records_kept": health["count_positive"],
        "weight_sum": health["total"],
    }


@final
class TierDerivation(eqx.Module):
    """What :func:`derive_tier` returns: the selection, the search behind it and the refit."""

    tier: TierFit
    budget: int
    state_floor: int
    lambda_l0: float
    """The search's fit that ranked the records."""
    search: list[dict[str, float]]
    """Records kept by each ``lambda_l0`` of the search."""
    scores: Float[np.ndarray, " n_records"]
    elapsed_seconds: float


def derive_tier(
    package: CalibrationPackage,
    parent_weights: Any,
    budget: int,
    *,
    key: PRNGKeyArray,
    state_floor: int = 0,
    split: HoldoutSplit | None = None,
    objective: Objective | None = None,
    lambda_l0: Sequence[float] = DEFAULT_LAMBDA_L0,
    search_epochs: int = 300,
    search_rounds: int = 3,
    refit_epochs: int = 200,
    beta: float = PE_DEFAULTS.beta,
    init_keep_prob: float = PE_DEFAULTS.init_keep_prob,
    learning_rate: float = PE_DEFAULTS.learning_rate,
    patience: int | None = None,
    min_delta: float = 0.0,
) -> TierDerivation:
    """A child of exactly ``budget`` records from the parent's ``parent_weights`` (see the module).

    ``objective`` (for every target of ``package``; default: relative loss, every target
    weighs 1) is what both the search, at each ``lambda_l0``, and the refit minimise."""
    started = time.perf_counter()
    parent_weights = np.asarray(parent_weights, np.float64)
    if parent_weights.shape != (package.n_records,) or not np.all(np.isfinite(parent_weights) & (parent_weights >= 0)):
        raise ValueError(f"parent weights must be {package.n_records} finite non-negative numbers")
    states = package.geography.get("state_fips")
    select_tier(np.zeros(package.n_records), budget, states=states, state_floor=state_floor)  # fail before the search
    _check_early_stopping(split, patience)
    search_key, refit_key = jax.random.split(key)
    train = np.ones(package.n_targets, bool) if split is None else split.train
    fit_package = package.select_targets(train)
    objective = _objective(package, objective)
    search_objective = objective.select(train)
    model = CalibrationWeights.init(
        package.n_records, key=search_key, init_weights=parent_weights, init_keep_prob=init_keep_prob, beta=beta
    )
    matrix, targets = fit_package.target_matrix(), fit_package.target_values
    search, best = [], None
    grid = np.asarray(lambda_l0, np.float64)
    for _ in range(search_rounds):
        path = sweep(
            model,
            matrix,
            targets,
            search_objective,
            grid,
            key=search_key,
            epochs=search_epochs,
            learning_rate=learning_rate,
        )
        kept = path.n_active
        search += [{"lambda_l0": float(lam), "records_kept": int(k)} for lam, k in zip(grid, kept, strict=True)]
        for i in np.flatnonzero(kept >= budget):
            if best is None or kept[i] < best[1]:
                best = (float(grid[i]), int(kept[i]), path.models.log_alpha[i], path.weights[i])
        above, below = grid[kept >= budget], grid[kept < budget]
        if (kept == budget).any() or not above.size or not below.size:
            break
        grid = np.geomspace(above.max(), below.min(), grid.size + 2)[1:-1]  # same size: no recompile
    if best is None:
        raise ValueError(
            f"even the smallest lambda_l0 ({min(lambda_l0):g}) keeps fewer than {budget} records; give smaller values"
        )
    chosen_lambda, _, log_alpha, search_weights = best
    scores = np.asarray(log_alpha, np.float64)
    selected = select_tier(scores, budget, states=states, state_floor=state_floor)
    start = np.asarray(search_weights, np.float64)[selected]
    start = np.where(start > 0, start, parent_weights[selected])  # floor records the search dropped
    tier = refit_subset(
        package,
        parent_weights,
        selected,
        key=refit_key,
        split=split,
        objective=objective,
        epochs=refit_epochs,
        learning_rate=learning_rate,
        patience=patience,
        min_delta=min_delta,
        start_weights=start,
    )
    return TierDerivation(
        tier=tier,
        budget=int(budget),
        state_floor=int(state_floor),
        lambda_l0=chosen_lambda,
        search=search,
        scores=scores,
        elapsed_seconds=time.perf_counter() - started,
    )
