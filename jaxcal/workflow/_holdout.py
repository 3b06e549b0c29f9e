"""Held-out target families: a seeded split, held-out loss curves, early stopping on them.

A *family* is a set of targets that describe one quantity (by default one
``geo_level x variable x domain_variable``); families are held out whole, so the held-out
loss measures how well the weights reproduce quantities the fit never saw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._defaults import PE_DEFAULTS
from .._fit import FitResult, fit
from .._matrix import TargetMatrix
from .._model import CalibrationWeights
from .._objective import Objective
from ..io._checkpoint import HoldoutState

if TYPE_CHECKING:
    import pandas as pd

    from ..io import CalibrationPackage

FAMILY_COLUMNS = ("geo_level", "variable", "domain_variable")
LOG_COLUMNS = (
    "epoch",
    "objective_train_loss",
    "full_loss",
    "train_loss",
    "holdout_loss",
    "weight_sum",
    "positive_record_count",
)
"""One row per evaluation; see :class:`HoldoutFit`."""


@final
class HoldoutSplit(eqx.Module):
    """Which targets a fit trains on and which it holds out, by whole families."""

    holdout: Bool[np.ndarray, " n_targets"]
    family: Int[np.ndarray, " n_targets"]
    """Index into ``family_names`` of each target."""
    family_names: tuple[str, ...]
    held_out_families: tuple[str, ...]
    seed: int

    @property
    def train(self) -> Bool[np.ndarray, " n_targets"]:
        return ~self.holdout

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary for run records."""
        return {
            "seed": self.seed,
            "n_train_targets": int(self.train.sum()),
            "n_holdout_targets": int(self.holdout.sum()),
            "n_families": len(self.family_names),
            "held_out_families": list(self.held_out_families),
        }


def holdout_split(
    targets: pd.DataFrame,
    *,
    fraction: float = 0.2,
    family_columns: Sequence[str] = FAMILY_COLUMNS,
    strata: Any = None,
    seed: int = 0,
) -> HoldoutSplit:
    """Hold out whole families of targets, stratified, seeded.

    Families are the distinct values of ``family_columns`` (e.g. one column you name).
    Families are stratified by ``strata`` (one label per target, constant within a family).
    By default, when the families include ``geo_level`` and ``variable``, the strata are
    geography level x measure (``count`` for a variable ending in ``_count``, ``amount``
    for the rest, i.e. income and program totals); otherwise there is one stratum. In every
    stratum with at least two families, ``max(1, round(fraction * n))`` of its ``n``
    families, and never all, are held out, drawn with ``numpy.random.default_rng(seed)``;
    so by default at least one family of every geography level and of each measure is held
    out wherever there is one to spare.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the holdout fraction must lie in (0, 1), got {fraction}")
    missing = [c for c in family_columns if c not in targets.columns]
    if missing or not family_columns:
        raise ValueError(f"the targets table lacks family column(s) {', '.join(missing) or '(none given)'}")
    keys = targets[list(family_columns)].astype(object).where(targets[list(family_columns)].notna(), "")
    labels = keys.astype(str).agg("/".join, axis=1).to_numpy()
    family_names, family = np.unique(labels, return_inverse=True)
    if strata is None:
        by_kind = {"geo_level", "variable"} <= set(family_columns)
        strata = _default_strata(targets) if by_kind else np.zeros(len(targets))
    strata = np.asarray(strata).astype(str)
    if strata.shape != (len(targets),):
        raise ValueError(f"strata must give one label per target ({len(targets)}), got shape {strata.shape}")
    family_stratum = np.empty(len(family_names), dtype=object)
    for f, s in zip(family, strata, strict=True):
        if family_stratum[f] is not None and family_stratum[f] != s:
            raise ValueError(f"family {family_names[f]!r} spans strata {family_stratum[f]!r} and {s!r}")
        family_stratum[f] = s

    rng = np.random.default_rng(seed)
    held = []
    for stratum in sorted(set(family_stratum)):
        members = np.flatnonzero(family_stratum == stratum)
        if members.size < 2:
            continue
        k = min(members.size - 1, max(1, round(fraction * members.size)))
        held.extend(rng.choice(members, size=k, replace=False).tolist())
    held = np.sort(np.asarray(held, dtype=np.int64))
    if held.size == 0:
        raise ValueError("no stratum has two families, so none can be held out; name other family columns or strata")
    return HoldoutSplit(
        holdout=np.isin(family, held),
        family=family.astype(np.int64),
        family_names=tuple(str(n) for n in family_names),
        held_out_families=tuple(str(family_names[i]) for i in held),
        seed=int(seed),
    )


def _default_strata(targets: pd.DataFrame) -> np.ndarray:
    measure = np.where(targets["variable"].astype(str).str.endswith("_count"), "count", "amount")
    return targets["geo_level"].astype(str).to_numpy() + "/" + measure


@final
class HoldoutFit(eqx.Module):
    """What :func:`fit_with_holdout` returns.

    ``result`` is the fit as it stood at ``best_epoch`` (lowest held-out loss), so
    ``result.weights`` are the weights to use and ``fit(result.model, ...,
    opt_state=result.opt_state, start_epoch=result.epochs)`` continues from there. ``log``
    has :data:`LOG_COLUMNS`, one row per evaluation: ``epoch`` is the number of epochs done;
    ``objective_train_loss`` the objective the epoch's step minimised (train targets,
    sampled gates, penalties included); the three losses are data losses of the
    deterministic weights on all, train and held-out targets, each set's target groups
    weighted as the fit weighs them.
    """

    result: FitResult
    log: pd.DataFrame
    best_epoch: int
    stopped_epoch: int
    stop_reason: str
    """``early_stopping``, ``epochs_exhausted`` or ``callback``."""
    split: HoldoutSplit
    patience: int | None
    min_delta: float

    @property
    def weights(self) -> Float[Array, " n_records"]:
        return self.result.weights

    def summary(self) -> dict[str, Any]:
        """The run record's ``holdout`` entry: losses at the best epoch, when and why it stopped."""
        best = self.log.loc[self.log["epoch"] == self.best_epoch].iloc[0]
        return {
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "stop_reason": self.stop_reason,
            "patience": self.patience,
            "min_delta": self.min_delta,
            "train_loss": float(best["train_loss"]),
            "holdout_loss": float(best["holdout_loss"]),
            "full_loss": float(best["full_loss"]),
            **self.split.to_dict(),
        }


@final
class _Evaluator(eqx.Module):
    matrix: TargetMatrix
    targets: Float[Array, " n_targets"]
    objectives: tuple[Objective, Objective, Objective]
    """All, train and held-out targets' data losses, each on every prediction."""

    @eqx.filter_jit
    def __call__(self, weights: Float[Array | np.ndarray, " n_records"]) -> tuple[Array, ...]:
        weights = jnp.asarray(weights)
        predictions = self.matrix.mv(weights)
        losses = (objective.data_loss(predictions, self.targets) for objective in self.objectives)
        return (*losses, jnp.sum(weights), jnp.sum(weights > 0))


def loss_evaluator(
    package: CalibrationPackage, split: HoldoutSplit | None, objective: Objective | None = None
) -> Callable[[Array | np.ndarray], tuple[Array, ...]]:
    """``evaluate(weights) -> (full_loss, train_loss, holdout_loss, weight_sum, positive_count)``,
    one compiled function; each loss weighs its own targets as a fit of only them would
    (:meth:`Objective.select`; default objective: every target weighs 1, relative loss).
    Without ``split`` every target is a train target and the held-out loss is 0."""
    objective = objective if objective is not None else Objective.create(package.n_targets)
    if objective.n_targets != package.n_targets:
        raise ValueError(f"the objective weighs {objective.n_targets} targets but the package has {package.n_targets}")
    holdout = np.zeros(package.n_targets, bool) if split is None else split.holdout
    return _Evaluator(
        matrix=package.target_matrix(),
        targets=jnp.asarray(package.target_values, jnp.float32),
        objectives=(
            objective.select(np.ones(package.n_targets, bool), keep_length=True),
            objective.select(~holdout, keep_length=True),
            objective.select(holdout, keep_length=True),
        ),
    )


@final
class HoldoutProgress:
    """A held-out fit's evaluations so far and its best one, which :func:`fit_with_holdout` updates
    before each ``callback``: what a checkpoint keeps (:meth:`state`) and what a resumed fit
    starts from (:meth:`resumed`), so that the resumed fit keeps the best weights and stops
    where the fit that never stopped would."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.best: FitResult | None = None
        """The fit at the best evaluation (lowest held-out loss)."""
        self.best_loss = math.inf
        self.stopping = False
        """Whether early stopping ends the fit after the latest evaluation."""
        self._saved: tuple[CalibrationWeights, Any, int] | None = None

    @classmethod
    def resumed(
        cls, rows: Sequence[Mapping[str, float]], best_model: CalibrationWeights, best_opt_state: Any, best_epochs: int
    ) -> HoldoutProgress:
        """The progress a checkpoint kept: its log rows (:data:`LOG_COLUMNS`), and the best
        evaluation's parameters, optimizer state and epochs (one of the rows' epochs)."""
        progress = cls()
        progress.rows = [dict(row) for row in rows]
        progress.best_loss = next(row["holdout_loss"] for row in progress.rows if row["epoch"] == best_epochs)
        progress._saved = (best_model, best_opt_state, best_epochs)
        return progress

    def state(self) -> HoldoutState | None:
        """This progress as a checkpoint holds it (None until an evaluation has a finite loss)."""
        if self.best is None:
            return None
        return HoldoutState(
            log=tuple(self.rows),
            best_model=self.best.model,
            best_opt_state_leaves=tuple(np.asarray(leaf) for leaf in jax.tree.leaves(self.best.opt_state)),
            best_epochs=self.best.epochs,
        )


def fit_with_holdout(
    model: CalibrationWeights,
    package: CalibrationPackage,
    split: HoldoutSplit,
    objective: Objective,
    *,
    key: Array,
    epochs: int = PE_DEFAULTS.epochs,
    eval_every: int = 1,
    patience: int | None = None,
    min_delta: float = 0.0,
    callback: Callable[[FitResult, dict[str, float]], bool | None] | None = None,
    progress: HoldoutProgress | None = None,
    **fit_kwargs: Any,
) -> HoldoutFit:
    """:func:`jaxcal.fit` on the train targets of ``package``, watching the held-out ones.

    Every ``eval_every`` epochs the losses are logged (see :class:`HoldoutFit`). With
    ``patience``, the fit stops once ``patience`` epochs have passed since the last
    evaluation that lowered the best held-out loss by more than ``min_delta``; the result is
    that evaluation's fit. ``objective`` is for every target of ``package``; the fit uses
    its train targets' part (:meth:`Objective.select`); ``fit_kwargs`` (optimizer, rate,
    ``opt_state``, ``start_epoch``, ...) go to :func:`jaxcal.fit` unchanged.
    ``callback(result, log_row)`` (the fit so far on the train targets, and the
    evaluation just logged) may return True to stop; copy what it keeps of ``result``.
    ``progress`` (updated in place before each callback) continues a checkpoint's
    (:meth:`HoldoutProgress.resumed`, with the checkpoint's ``opt_state`` and ``start_epoch``).
    """
    import pandas as pd

    if eval_every < 1:
        raise ValueError(f"eval_every must be positive, got {eval_every}")
    if patience is not None and patience < 1:
        raise ValueError(f"patience must be positive, got {patience}")
    if min_delta < 0:
        raise ValueError(f"min_delta must not be negative, got {min_delta}")
    if split.holdout.shape != (package.n_targets,):
        raise ValueError(f"the split covers {split.holdout.size} targets but the package has {package.n_targets}")
    if not split.train.any() or not split.holdout.any():
        raise ValueError("the split needs at least one train and one held-out target")
    evaluator = loss_evaluator(package, split, objective)
    train = split.train
    problem = (package.select_targets(train).target_matrix(), package.target_values[train], objective.select(train))
    progress = HoldoutProgress() if progress is None else progress
    if progress._saved is not None:  # the best fit again, from its parameters: 0 epochs
        best_model, best_opt_state, best_epochs = progress._saved
        resumed = fit_kwargs | {"opt_state": best_opt_state, "start_epoch": best_epochs}
        progress.best, progress._saved = fit(best_model, *problem, key=key, epochs=0, **resumed), None
    reason = "epochs_exhausted"

    def watch(result: FitResult) -> bool:
        nonlocal reason
        full, train_loss, holdout_loss, weight_sum, positive = evaluator(result.weights)
        row = {
            "epoch": result.epochs,
            "objective_train_loss": float(result.history.total[-1]),
            "full_loss": float(full),
            "train_loss": float(train_loss),
            "holdout_loss": float(holdout_loss),
            "weight_sum": float(weight_sum),
            "positive_record_count": int(positive),
        }
        progress.rows.append(row)
        if row["holdout_loss"] < progress.best_loss - min_delta:
            progress.best_loss = row["holdout_loss"]
            progress.best = jax.tree.map(jnp.copy, result)  # its model and opt_state are donated next
        best = progress.best
        progress.stopping = patience is not None and best is not None and result.epochs - best.epochs >= patience
        asked = callback is not None and bool(callback(result, row))
        if progress.stopping or asked:
            reason = "early_stopping" if progress.stopping else "callback"
        return progress.stopping or asked

    last = fit(model, *problem, key=key, epochs=epochs, chunk_epochs=eval_every, callback=watch, **fit_kwargs)
    if progress.best is None:
        raise ValueError("the fit ran no epochs, or every held-out loss was NaN")
    return HoldoutFit(
        result=progress.best,
        log=pd.DataFrame(progress.rows, columns=list(LOG_COLUMNS)),
        best_epoch=progress.best.epochs,
        stopped_epoch=last.epochs,
        stop_reason=reason,
        split=split,
        patience=patience,
        min_delta=float(min_delta),
    )
