"""The objective a fit minimises: weighted data loss plus L0 and L2 penalties (l0-python's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

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
    fits many side by side (:func:`jaxcal.sweep`). Only the loss kind is static.
    Create one with :meth:`create`.
    """

    loss_weights: Float[Array, " n_targets"]
    lambda_l0: Float[Array, ""]
    lambda_l2: Float[Array, ""]
    kind: LossKind = eqx.field(static=True, default="relative")

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
            n_targets, target_groups, normalize_groups=normalize_groups, group_multipliers=group_multipliers, dtype=dtype
        )
        return cls(
            loss_weights=jnp.asarray(weights),
            lambda_l0=jnp.asarray(lambda_l0, dtype),
            lambda_l2=jnp.asarray(lambda_l2, dtype),
            kind=loss,
        )

    @property
    def n_targets(self) -> int:
        return int(self.loss_weights.shape[0])

    def data_loss(self, predictions: Float[Array, " n_targets"], targets: Float[Array, " n_targets"]) -> Float[Array, ""]:
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
