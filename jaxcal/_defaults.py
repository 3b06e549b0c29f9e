"""policyengine-us-data's fit settings, defined once for the library, the CLI and the workflow."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import final


@final
@dataclasses.dataclass(frozen=True)
class FitDefaults:
    """The settings of policyengine-us-data 1.115.4's ``fit_l0_weights`` and its CLI.

    ``CalibrationWeights.init`` keeps l0-python's own defaults (beta 2/3, keep 0.5); these are
    what a PolicyEngine user gets, and what ``jaxcal fit`` uses unless told otherwise. A frozen
    dataclass rather than an ``eqx.Module``: it holds no arrays, and the CLI reads it before JAX loads.
    """

    epochs: int = 100
    beta: float = 0.35
    gamma: float = -0.1
    zeta: float = 1.1
    init_keep_prob: float = 0.999
    log_weight_jitter_sd: float = 0.05
    log_alpha_jitter_sd: float = 0.01
    lambda_l0: float = 1e-8
    lambda_l2: float = 1e-12
    learning_rate: float = 0.15
    init_weight: float = 100.0
    """Every column's starting weight when the package has none (before the district rule)."""


PE_DEFAULTS = FitDefaults()
PE_PRESETS: Mapping[str, float] = MappingProxyType({"local": 1e-8, "national": 1e-4})
"""policyengine-us-data's ``--preset``: its lambda_l0."""
OPTIMIZER_NAMES = ("pe-adam", "adam-cosine")
"""What :func:`jaxcal.optimizer_named` knows: ``"pe-adam"`` (:func:`jaxcal.torch_adam`, PE's fit
exactly) and ``"adam-cosine"`` (the same Adam, its rate decaying to 0 over the fit's epochs);
here, free of JAX, so that the CLI can offer them before the engine loads."""
