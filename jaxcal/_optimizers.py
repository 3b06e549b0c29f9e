"""Optimizers by name: policyengine-us-data's Adam, and Adam on a schedule that converges.

PE's fit is full-batch Adam at a constant rate (0.15 in log-weight space): it reaches the
optimum's neighbourhood fast, then its loss spikes and recovers without settling, since
nothing makes its steps shrink. ``"adam-cosine"`` is the same Adam with the rate following a
cosine from ``learning_rate`` down to 0 over the fit's epochs (torch's ``CosineAnnealingLR``;
``optax.cosine_decay_schedule``): the same steps early on, then a loss that settles. See
``benchmarks/convergence.py`` and the "Convergence" section of ``benchmarks/RESULTS.md``.

Every setting is optimizer state (``optax.inject_hyperparams``), so that fits at other
rates or over other epochs reuse the compiled program: ``optimizer_named`` returns, for a
name, transformations that compare equal whatever the settings, and only their ``init``
(which runs outside the compiled fit) differs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, cast, final

import jax.numpy as jnp
import optax
from jaxtyping import Array, ArrayLike, Float, Int

from ._adam import _torch_adam, torch_adam
from ._defaults import OPTIMIZER_NAMES, PE_DEFAULTS


def optimizer_named(
    name: str, *, learning_rate: float | None = None, epochs: int | None = None
) -> optax.GradientTransformation:
    """The optimizer called ``name`` (one of :data:`OPTIMIZER_NAMES`), for ``fit(optimizer=...)``.

    ``learning_rate`` (default PE's 0.15) is the rate of a fresh fit; ``fit(learning_rate=...)``
    still overrides it. ``epochs``, the number of epochs the fit will run, is the schedule's
    horizon: ``"adam-cosine"`` needs it (its rate reaches 0 there and stays; a resumed fit keeps
    the horizon its state holds), ``"pe-adam"`` has no schedule and ignores it. Raises
    ``ValueError`` for an unknown name or a missing or invalid setting.
    """
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZER_NAMES)}")
    rate = PE_DEFAULTS.learning_rate if learning_rate is None else float(learning_rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    settings: dict[str, float] = {"learning_rate": rate}
    if name == "adam-cosine":
        if epochs is None or epochs < 1:
            raise ValueError(f"{name} decays its rate over the fit's epochs: pass epochs >= 1, got {epochs}")
        settings["epochs"] = float(epochs)
    base = _base(name)
    return optax.GradientTransformationExtraArgs(_Init(base.init, tuple(settings.items())), base.update)


@functools.cache
def _base(name: str) -> optax.GradientTransformation:
    """One transformation per name, so that every fit with it reuses one compiled program."""
    if name == "pe-adam":
        return torch_adam(PE_DEFAULTS.learning_rate)
    return _injected_adam_cosine(learning_rate=PE_DEFAULTS.learning_rate, epochs=1.0)


def _adam_cosine(
    learning_rate: Float[Array, ""], epochs: Float[Array, ""], b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """:func:`torch_adam`'s step times ``optax.cosine_decay_schedule`` at the fit's progress
    ``count / epochs`` (a schedule over one unit of progress, so that ``epochs`` can be traced)."""
    decay = optax.cosine_decay_schedule(1.0, 1)

    def factor(count: Int[ArrayLike, ""]) -> Float[ArrayLike, ""]:
        return decay(jnp.asarray(count, epochs.dtype) / epochs)

    return optax.chain(_torch_adam(learning_rate, b1, b2, eps), optax.scale_by_schedule(factor))


_injected_adam_cosine = optax.inject_hyperparams(_adam_cosine, static_args=("b1", "b2", "eps"))


@final
@dataclasses.dataclass(frozen=True)
class _Init:
    """A named optimizer's ``init`` at its settings. The settings are state, not program: they
    are left out of equality, so that optimizers differing only in them share compiled fits."""

    init: Callable[[optax.Params], optax.OptState]
    settings: tuple[tuple[str, float], ...] = dataclasses.field(compare=False)

    def __call__(self, params: optax.Params) -> optax.OptState:
        state = cast(Any, self.init(params))
        hyperparams: Mapping[str, Array] = state.hyperparams
        values = {k: jnp.asarray(v, hyperparams[k].dtype) for k, v in self.settings}
        return state._replace(hyperparams={**hyperparams, **values})
