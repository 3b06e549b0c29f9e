"""The calibration weights: a positive weight and a hard-concrete gate per record."""

from __future__ import annotations

from typing import Any, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._gates import deterministic_gates, open_probability, sample_gates

_LOG_EPS = 1e-8
_KEEP_PROB_EPS = 1e-6


@final
class CalibrationWeights(eqx.Module):
    """l0-python's ``SparseCalibrationWeights`` as an immutable module.

    ``weight_i = exp(log_weight_i) * gate_i`` with a hard-concrete gate of temperature
    ``beta`` stretched to ``(gamma, zeta)``; with ``use_gates=False`` just ``exp(log_weight)``.
    Create one with :meth:`init`.
    """

    log_weight: Float[Array, " n_records"]
    log_alpha: Float[Array, " n_records"]
    beta: float = eqx.field(static=True, default=2 / 3)
    gamma: float = eqx.field(static=True, default=-0.1)
    zeta: float = eqx.field(static=True, default=1.1)
    use_gates: bool = eqx.field(static=True, default=True)

    @classmethod
    def init(
        cls,
        n_records: int,
        *,
        key: PRNGKeyArray,
        init_weights: float | Any = 1.0,
        init_keep_prob: float | Any = 0.5,
        log_alpha_jitter_sd: float = 0.01,
        beta: float = 2 / 3,
        gamma: float = -0.1,
        zeta: float = 1.1,
        use_gates: bool = True,
    ) -> CalibrationWeights:
        """l0-python's initialisation.

        ``log_weight = log(init_weights + 1e-8)``; ``log_alpha = logit(init_keep_prob) +
        N(0, log_alpha_jitter_sd)`` drawn from ``key``. ``init_weights`` and
        ``init_keep_prob`` are scalars or arrays of length ``n_records``; an array of keep
        probabilities is clipped to [1e-6, 1 - 1e-6].
        """
        if n_records < 0:
            raise ValueError(f"n_records must not be negative, got {n_records}")
        if not (beta > 0 and gamma < 0 < 1 < zeta):
            raise ValueError(f"need beta > 0 and gamma < 0 < 1 < zeta, got beta={beta}, gamma={gamma}, zeta={zeta}")
        weights = _per_record("init_weights", init_weights, n_records)
        if np.any(weights < 0) or not np.all(np.isfinite(weights)):
            raise ValueError("init_weights must be finite and non-negative")
        if log_alpha_jitter_sd < 0:
            raise ValueError(f"log_alpha_jitter_sd must not be negative, got {log_alpha_jitter_sd}")
        keep = _per_record("init_keep_prob", init_keep_prob, n_records)
        if np.ndim(init_keep_prob) == 0 and not 0 < float(init_keep_prob) < 1:
            raise ValueError(f"init_keep_prob must lie in (0, 1), got {init_keep_prob}")
        if np.isnan(keep).any():
            raise ValueError("init_keep_prob must not contain NaN")
        if np.ndim(init_keep_prob) != 0:
            keep = np.clip(keep, np.float32(_KEEP_PROB_EPS), np.float32(1 - _KEEP_PROB_EPS))
        log_weight = jnp.log(jnp.asarray(weights) + jnp.float32(_LOG_EPS))
        keep = jnp.asarray(keep)
        log_alpha = jnp.log(keep / (1 - keep))
        if log_alpha_jitter_sd > 0:
            log_alpha = log_alpha + jax.random.normal(key, (n_records,)) * log_alpha_jitter_sd
        return cls(log_weight, log_alpha, beta=beta, gamma=gamma, zeta=zeta, use_gates=use_gates)

    @property
    def n_records(self) -> int:
        return int(self.log_weight.shape[0])

    def sample_weights(self, uniform: Float[Array, " n_records"] | None) -> Float[Array, " n_records"]:
        """Training weights: positive weights times gates sampled from uniform draws (None
        without gates)."""
        if not self.use_gates:
            return jnp.exp(self.log_weight)
        if uniform is None:
            raise ValueError("a model with gates needs uniform draws")
        gates = sample_gates(self.log_alpha, uniform, self.beta, self.gamma, self.zeta)
        return jnp.exp(self.log_weight) * gates

    def deterministic_weights(self) -> Float[Array, " n_records"]:
        """Final weights: positive weights times deterministic gates (exact zeros drop records)."""
        if not self.use_gates:
            return jnp.exp(self.log_weight)
        return jnp.exp(self.log_weight) * self.deterministic_gates()

    def deterministic_gates(self) -> Float[Array, " n_records"]:
        return deterministic_gates(self.log_alpha, self.beta, self.gamma, self.zeta)

    def open_probabilities(self) -> Float[Array, " n_records"]:
        """Each record's probability of an open gate (0 without gates): the L0 penalty's terms."""
        if not self.use_gates:
            return jnp.zeros_like(self.log_alpha)
        return open_probability(self.log_alpha, self.beta, self.gamma, self.zeta)

    def weight_squares(self) -> Float[Array, " n_records"]:
        """``exp(log_weight)^2``, on the ungated weights: the L2 penalty's terms."""
        return jnp.exp(self.log_weight) ** 2

    def kept(self) -> Bool[Array, " n_records"]:
        """Records whose final weight is not zero."""
        if not self.use_gates:
            return jnp.ones(self.log_weight.shape, bool)
        return self.deterministic_gates() > 0

    def l0_penalty(self) -> Float[Array, ""]:
        """Expected number of records kept (0 without gates)."""
        return jnp.sum(self.open_probabilities())

    def l2_penalty(self) -> Float[Array, ""]:
        """``sum exp(log_weight)^2``, on the ungated weights."""
        return jnp.sum(self.weight_squares())

    def n_active(self) -> Int[Array, ""]:
        """Records whose final weight is not zero."""
        return jnp.sum(self.kept(), dtype=jnp.int32)


def _per_record(name: str, value: Any, n_records: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(n_records, array, dtype=np.float32)
    if array.shape != (n_records,):
        raise ValueError(f"{name} must be a scalar or have shape ({n_records},), got {array.shape}")
    return array.astype(np.float32)
