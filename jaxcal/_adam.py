"""Adam computed the way ``torch.optim.Adam`` computes it, as an Optax transformation."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int


class TorchAdamState(NamedTuple):
    count: Int[Array, ""]
    mu: optax.Updates
    nu: optax.Updates


def torch_adam(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam with torch's arithmetic, so that jaxcal and l0-python take the same steps.

    ``optax.adam`` is the same algorithm, but it forms the bias corrections ``1 - b**t`` in
    float32 from ``b`` rounded to float32, where ``1 - 0.999`` keeps only four digits: its
    early steps are about 7e-6 too short (relative). torch forms them in float64; here
    ``-expm1(t * log(b))``, with ``log(b)`` taken in float64, gets them to float32 precision.
    The moments update in torch's order: ``mu += (1 - b1) * (g - mu)`` (``lerp``),
    ``nu = nu * b2 + (1 - b2) * g * g``, and the step is
    ``-(lr / bc1) * (mu / (sqrt(nu) / sqrt(bc2) + eps))``.
    """

    def init(params: optax.Params) -> TorchAdamState:
        def zeros() -> optax.Updates:
            return jax.tree.map(jnp.zeros_like, params)

        return TorchAdamState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def update(
        grads: optax.Updates, state: TorchAdamState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, TorchAdamState]:
        del params
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, grads)
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, grads)

        def step(m: Array, v: Array) -> Array:
            t = count.astype(m.dtype)
            bias_correction1 = -jnp.expm1(t * math.log(b1))
            bias_correction2 = -jnp.expm1(t * math.log(b2))
            step_size = learning_rate / bias_correction1
            return -step_size * (m / (jnp.sqrt(v) / jnp.sqrt(bias_correction2) + eps))

        return jax.tree.map(step, mu, nu), TorchAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)
