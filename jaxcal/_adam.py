"""Adam computed the way ``torch.optim.Adam`` computes it, as an Optax transformation."""

from __future__ import annotations

import math
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int


class TorchAdamState(NamedTuple):
    count: Int[Array, ""]
    mu: optax.Updates
    nu: optax.Updates


def torch_adam(
    learning_rate: float = 0.15, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam with torch's arithmetic, so that jaxcal and l0-python take the same steps.

    The learning rate lives in the optimizer state (``optax.inject_hyperparams``): a fit at
    another rate reuses the compiled program (see :func:`set_learning_rate`).

    ``optax.adam`` is the same algorithm, but it forms the bias corrections ``1 - b**t`` in
    float32 from ``b`` rounded to float32, where ``1 - 0.999`` keeps only four digits: its
    early steps are about 7e-6 too short (relative). torch forms them in float64; here
    ``-expm1(t * log(b))``, with ``log(b)`` taken in float64, gets them to float32 precision.
    The moments update in torch's order: ``mu += (1 - b1) * (g - mu)`` (``lerp``),
    ``nu = nu * b2 + (1 - b2) * g * g``, and the step is
    ``-(lr / bc1) * (mu / (sqrt(nu) / sqrt(bc2) + eps))``.
    """

    return _injected_torch_adam(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


def _torch_adam(learning_rate: Any, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    def init(params: optax.Params) -> TorchAdamState:
        def zeros() -> optax.Updates:
            return jax.tree.map(jnp.zeros_like, params)

        return TorchAdamState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def update(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        del params
        assert isinstance(state, TorchAdamState)
        count = state.count + 1
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * g * g, state.nu, updates)

        def step(m: Array, v: Array) -> Array:
            t = count.astype(m.dtype)
            bias_correction1 = -jnp.expm1(t * math.log(b1))
            bias_correction2 = -jnp.expm1(t * math.log(b2))
            step_size = learning_rate / bias_correction1
            return -step_size * (m / (jnp.sqrt(v) / jnp.sqrt(bias_correction2) + eps))

        return jax.tree.map(step, mu, nu), TorchAdamState(count, mu, nu)

    return optax.GradientTransformation(init, update)


_injected_torch_adam = optax.inject_hyperparams(_torch_adam, static_args=("b1", "b2", "eps"))


def set_learning_rate(opt_state: optax.OptState, learning_rate: float) -> optax.OptState:
    """``opt_state`` of an ``optax.inject_hyperparams`` optimizer (such as :func:`torch_adam`)
    with its learning rate replaced; ``ValueError`` for a state that holds none."""
    hyperparams = getattr(opt_state, "hyperparams", None)
    if not isinstance(hyperparams, dict) or "learning_rate" not in hyperparams:
        raise ValueError("this optimizer's state holds no learning rate (build it with optax.inject_hyperparams)")
    current = hyperparams["learning_rate"]
    rate = jnp.asarray(learning_rate, jnp.result_type(current))
    return cast(Any, opt_state)._replace(hyperparams={**hyperparams, "learning_rate": rate})
