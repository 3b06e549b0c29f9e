"""Hard-concrete gates (Louizos et al. 2018) as pure functions, exactly as l0-python 0.6.x."""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

LOG_ALPHA_BOUND = 20.0
"""``log_alpha`` is clamped to +-this wherever it is used, as l0-python does."""

UNIFORM_EPS = 1e-6
"""Uniform draws are clamped to [eps, 1 - eps] so that their logit stays finite."""


def clamp(x: Array, lo: float, hi: float) -> Array:
    """``clip`` with torch's gradient: 1 inside [lo, hi] *including* the bounds, 0 outside."""
    return jnp.where(x < lo, lo, jnp.where(x > hi, hi, x))


def _stretch(s: Array, gamma: float, zeta: float) -> Array:
    return clamp(s * (zeta - gamma) + gamma, 0.0, 1.0)


def sample_gates(
    log_alpha: Float[Array, " n"],
    uniform: Float[Array, " n"],
    beta: float,
    gamma: float,
    zeta: float,
) -> Float[Array, " n"]:
    """Stochastic gates from uniform draws ``u``: ``stretch(sigmoid((logit u + la) / beta))``."""
    la = clamp(log_alpha, -LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    u = clamp(uniform, UNIFORM_EPS, 1.0 - UNIFORM_EPS)
    s = jax.nn.sigmoid((jnp.log(u) - jnp.log(1.0 - u) + la) / beta)
    return _stretch(s, gamma, zeta)


def deterministic_gates(log_alpha: Float[Array, " n"], beta: float, gamma: float, zeta: float) -> Float[Array, " n"]:
    """The gates used for final weights: ``stretch(sigmoid(la / beta))``; exact zeros drop records."""
    la = clamp(log_alpha, -LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    return _stretch(jax.nn.sigmoid(la / beta), gamma, zeta)


def open_probability(log_alpha: Float[Array, " n"], beta: float, gamma: float, zeta: float) -> Float[Array, " n"]:
    """Each gate's probability of being open: ``sigmoid(la - beta * log(-gamma / zeta))``."""
    la = clamp(log_alpha, -LOG_ALPHA_BOUND, LOG_ALPHA_BOUND)
    shift = -beta * jnp.log(jnp.asarray(-gamma / zeta, la.dtype))
    return jax.nn.sigmoid(la + shift)


def l0_penalty(log_alpha: Float[Array, " n"], beta: float, gamma: float, zeta: float) -> Float[Array, ""]:
    """Expected number of open gates: the sum of :func:`open_probability`."""
    return jnp.sum(open_probability(log_alpha, beta, gamma, zeta))
