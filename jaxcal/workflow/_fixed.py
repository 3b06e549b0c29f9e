"""Fixed records (e.g. a top-tail spine of very rich households): calibrate the rest around them.

The fixed records keep the weights they are given. Their contribution ``X_fixed @ w_fixed``
is subtracted from every additive target (clamped at 0, and every clamp reported), the other
records are calibrated to those residuals, and :meth:`Residualization.combine` puts the
fixed records back with their weights.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import numpy as np
from jaxtyping import Bool, Float, Int

from ..io import CalibrationPackage, atomic_write

if TYPE_CHECKING:
    import pandas as pd


@final
class Residualization(eqx.Module):
    """The free records' problem and how each target was residualized."""

    package: CalibrationPackage
    """The free records (in parent order) with residual target values: fit this."""
    free_columns: Int[np.ndarray, " n_free"]
    fixed_columns: Int[np.ndarray, " n_fixed"]
    fixed_weights: Float[np.ndarray, " n_fixed"]
    report: pd.DataFrame
    """Per target: ``target, original, fixed_contribution, residual, additive, clamped``."""

    @property
    def clamped(self) -> pd.DataFrame:
        """The targets whose fixed contribution exceeded them, so their residual was set to 0."""
        return self.report.loc[self.report["clamped"].to_numpy()]

    def combine(self, free_weights: Any) -> Float[np.ndarray, " n_records"]:
        """Weights for every parent record: ``free_weights`` (one per free record) and the fixed weights."""
        free_weights = np.asarray(free_weights, np.float64)
        if free_weights.shape != self.free_columns.shape:
            raise ValueError(f"expected {self.free_columns.size} free weights, got shape {free_weights.shape}")
        weights = np.zeros(self.free_columns.size + self.fixed_columns.size)
        weights[self.free_columns] = free_weights
        weights[self.fixed_columns] = self.fixed_weights
        return weights

    def write_report(self, path: str | os.PathLike) -> None:
        """The per-target report as CSV, atomically."""
        atomic_write(path, lambda f: self.report.to_csv(f, index=False), mode="w")


def residualize(
    package: CalibrationPackage,
    fixed_columns: Any,
    fixed_weights: Any,
    *,
    additive: Bool[np.ndarray, " n_targets"] | None = None,
) -> Residualization:
    """Subtract the fixed records' contribution from the ``additive`` targets (default: all).

    A non-additive target (a mean, a ratio) keeps its value; its fixed contribution is
    reported but not subtracted. Contributions are computed in float64.
    """
    columns = np.asarray(fixed_columns)
    weights = np.asarray(fixed_weights, np.float64)
    if columns.ndim != 1 or not np.issubdtype(columns.dtype, np.integer):
        raise ValueError("fixed_columns must be a list of column indices")
    if columns.size == 0 or columns.min() < 0 or columns.max() >= package.n_records:
        raise ValueError(f"fixed_columns must be non-empty and lie in [0, {package.n_records})")
    if np.unique(columns).size != columns.size:
        raise ValueError("fixed_columns must not repeat a column")
    if weights.shape != columns.shape or not np.all(np.isfinite(weights) & (weights >= 0)):
        raise ValueError(f"fixed_weights must be {columns.size} finite non-negative numbers")
    additive = np.ones(package.n_targets, bool) if additive is None else np.asarray(additive, bool)
    if additive.shape != (package.n_targets,):
        raise ValueError(f"additive must have one entry per target ({package.n_targets})")
    import pandas as pd

    original = package.target_values
    contribution = package.matrix[:, columns].astype(np.float64) @ weights
    difference = original - contribution
    clamped = additive & (difference < 0)
    residual = np.where(additive, np.maximum(difference, 0.0), original)
    free = np.setdiff1d(np.arange(package.n_records), columns)
    rest = package.select_records(free)
    rest = eqx.tree_at(
        lambda p: (p.targets, p.metadata),
        rest,
        (
            rest.targets.assign(value=residual),
            dict(rest.metadata) | {"fixed_records": int(columns.size), "clamped_targets": int(clamped.sum())},
        ),
    )
    report = pd.DataFrame(
        {
            "target": package.target_names,
            "original": original,
            "fixed_contribution": contribution,
            "residual": residual,
            "additive": additive,
            "clamped": clamped,
        }
    )
    order = np.argsort(columns)
    return Residualization(
        package=rest,
        free_columns=free,
        fixed_columns=columns[order],
        fixed_weights=weights[order],
        report=report,
    )
