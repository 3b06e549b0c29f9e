"""The data loss and its per-target weights, as l0-python computes them."""

from __future__ import annotations

from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

LossKind = Literal["relative", "mse"]


def target_loss_weights(
    n_targets: int,
    target_groups: Any = None,
    *,
    normalize_groups: bool = True,
    group_multipliers: dict[int, float] | None = None,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Per-target weights ``g`` of the data loss, as l0-python computes them.

    Without groups every target weighs 1. With integer ``target_groups`` and
    ``normalize_groups``, a target weighs ``1 / size of its group``, so each group counts
    once; ``group_multipliers`` then scale whole groups. Computed in ``dtype`` as torch does.
    """
    dtype = np.dtype(dtype)
    weights = np.ones(n_targets, dtype)
    if target_groups is None:
        if group_multipliers is not None:
            raise ValueError("group_multipliers requires target_groups")
        return weights
    groups = np.asarray(target_groups)
    if groups.shape != (n_targets,) or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(
            f"target_groups must be {n_targets} integers (one group id per target), "
            f"got shape {groups.shape} and dtype {groups.dtype}"
        )
    if normalize_groups:
        _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
        weights = (1.0 / sizes[inverse]).astype(dtype)
    for group, multiplier in (group_multipliers or {}).items():
        if not (np.isfinite(multiplier) and multiplier >= 0):
            raise ValueError(f"group multipliers must be finite and non-negative, got {multiplier} for group {group}")
        members = groups == group
        if not members.any():
            raise ValueError(f"group_multipliers names group {group}, which no target has")
        weights[members] *= dtype.type(multiplier)
    return weights


def check_loss_kind(kind: str) -> None:
    if kind not in ("relative", "mse"):
        raise ValueError(f"loss must be 'relative' or 'mse', got {kind!r}")


def data_loss(
    predictions: Float[Array, " n_targets"],
    targets: Float[Array, " n_targets"],
    loss_weights: Float[Array, " n_targets"],
    kind: LossKind,
) -> Float[Array, ""]:
    """``sum g * ((t - p) / (t + 1))^2`` (relative) or ``sum g * (t - p)^2`` (mse)."""
    check_loss_kind(kind)
    error = targets - predictions
    if kind == "relative":
        error = error / (targets + 1)
    return jnp.sum(error**2 * loss_weights)
