"""The objective a fit minimises: weighted data loss plus L0 and L2 penalties (l0-python's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._defaults import PE_DEFAULTS
from ._loss import LossKind, check_loss_kind, data_loss, target_loss_weights

if TYPE_CHECKING:
    from ._matrix import AbstractTargetMatrix
    from ._model import CalibrationWeights


@final
class Objective(eqx.Module):
    """``data + lambda_l0 * L0 + lambda_l2 * L2`` (the L2 term only where ``lambda_l2 > 0``).

    ``data`` is ``sum g * ((t - p) / (t + 1))^2`` (``kind="relative"``) or ``sum g * (t - p)^2``
    (``"mse"``) with per-target weights ``g``; ``L0`` is the expected number of open gates
    and ``L2`` the sum of squared ungated weights. The weights and both lambdas are traced
    arrays: a fit with other values reuses the compiled program, and ``jax.vmap`` over them
    fits many side by side (:func:`jaxcal.sweep`). Only the loss kind is static. The target
    groups are kept so that :meth:`select` can weigh a subset of the targets as a fit of that
    subset would. Create one with :meth:`create`.
    """

    loss_weights: Float[Array, " n_targets"]
    lambda_l0: Float[Array, ""]
    lambda_l2: Float[Array, ""]
    target_groups: Int[Array, " n_targets"] | None = None
    kind: LossKind = eqx.field(static=True, default="relative")
    normalize_groups: bool = eqx.field(static=True, default=True)
    group_multipliers: tuple[tuple[int, float], ...] | None = eqx.field(static=True, default=None)

    @classmethod
    def create(
        cls,
        n_targets: int,
        *,
        loss: LossKind = "relative",
        lambda_l0: float = PE_DEFAULTS.lambda_l0,
        lambda_l2: float = PE_DEFAULTS.lambda_l2,
        target_groups: Any = None,
        normalize_groups: bool = True,
        group_multipliers: dict[int, float] | None = None,
        dtype: Any = jnp.float32,
    ) -> Objective:
        """The objective of ``n_targets`` targets; defaults are policyengine-us-data's.

        Without ``target_groups`` every target weighs 1; with integer groups (one per target)
        and ``normalize_groups``, ``1 / size of its group``, then times ``group_multipliers``
        (see :func:`target_loss_weights`). Raises ``ValueError`` for a negative or
        non-finite lambda or an unknown loss kind.
        """
        check_loss_kind(loss)
        for name, value in (("lambda_l0", lambda_l0), ("lambda_l2", lambda_l2)):
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and non-negative, got {value}")
        weights = target_loss_weights(
            n_targets,
            target_groups,
            normalize_groups=normalize_groups,
            group_multipliers=group_multipliers,
            dtype=dtype,
        )
        return cls(
            loss_weights=jnp.asarray(weights),
            lambda_l0=jnp.asarray(lambda_l0, dtype),
            lambda_l2=jnp.asarray(lambda_l2, dtype),
            target_groups=None if target_groups is None else jnp.asarray(target_groups, jnp.int32),
            kind=loss,
            normalize_groups=normalize_groups,
            group_multipliers=None if group_multipliers is None else tuple(sorted(group_multipliers.items())),
        )

    def select(self, rows: Bool[np.ndarray, " n_targets"], *, keep_length: bool = False) -> Objective:
        """The objective of the targets ``rows`` (a boolean mask), weighed as a fit of only those
        targets weighs them (groups normalised within ``rows``; multipliers of groups left
        without targets dropped). With ``keep_length``, every target stays and those outside
        ``rows`` weigh 0: the data loss of ``rows`` alone, computed on all predictions."""
        rows = np.asarray(rows, bool)
        if rows.shape != (self.n_targets,):
            raise ValueError(f"rows must be a mask of {self.n_targets} targets, got shape {rows.shape}")
        groups = None if self.target_groups is None else np.asarray(self.target_groups)[rows]
        multipliers = dict(self.group_multipliers or ())
        if groups is not None:
            multipliers = {g: m for g, m in multipliers.items() if g in set(groups.tolist())}
        selected = Objective.create(
            int(rows.sum()),
            loss=self.kind,
            lambda_l0=float(self.lambda_l0),
            lambda_l2=float(self.lambda_l2),
            target_groups=groups,
            normalize_groups=self.normalize_groups,
            group_multipliers=multipliers or None,
            dtype=self.loss_weights.dtype,
        )
        if not keep_length:
            return selected
        full = jnp.zeros(self.n_targets, self.loss_weights.dtype).at[np.flatnonzero(rows)].set(selected.loss_weights)
        return eqx.tree_at(
            lambda o: (o.loss_weights, o.target_groups),
            selected,
            (full, self.target_groups),
            is_leaf=lambda x: x is None,
        )

    @property
    def n_targets(self) -> int:
        return int(self.loss_weights.shape[0])

    def data_loss(
        self, predictions: Float[Array, " n_targets"], targets: Float[Array, " n_targets"]
    ) -> Float[Array, ""]:
        return data_loss(predictions, targets, self.loss_weights, self.kind)

    def __call__(
        self,
        model: CalibrationWeights,
        matrix: AbstractTargetMatrix,
        targets: Float[Array, " n_targets"],
        uniform: Float[Array, " n_records"] | None,
    ) -> tuple[Float[Array, ""], tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]]:
        """``(total, (data, l0, l2))`` of ``model``'s weights with gates drawn from ``uniform``;
        the penalties are sums over ``matrix``'s records (all devices' in a sharded fit)."""
        data = self.data_loss(matrix.mv(model.sample_weights(uniform)), targets)
        l0 = matrix.record_sum(model.open_probabilities())
        l2 = matrix.record_sum(model.weight_squares())
        total = data + self.lambda_l0 * l0
        total = total + jnp.where(self.lambda_l2 > 0, self.lambda_l2 * l2, 0)
        return total, (data, l0, l2)
