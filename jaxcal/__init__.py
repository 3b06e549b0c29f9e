"""jaxcal: differentiable survey calibration in JAX.

Find non-negative record weights ``w`` with ``X @ w ~= targets``, optionally sparse through
hard-concrete L0 gates, with l0-python's semantics. This is the engine core (pure JAX);
``jaxcal.io`` reads and writes packages and checkpoints, ``jaxcal.workflow`` holds held-out
targets, tiers and fixed records, ``jaxcal.runs`` the run records and reports, and
``jaxcal.cli`` the ``jaxcal`` command.

The names below load on first use, so that ``import jaxcal`` (and ``jaxcal --help``) does not
pay for JAX until it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from ._adam import set_learning_rate as set_learning_rate
    from ._adam import torch_adam as torch_adam
    from ._defaults import OPTIMIZER_NAMES as OPTIMIZER_NAMES
    from ._defaults import PE_DEFAULTS as PE_DEFAULTS
    from ._defaults import PE_PRESETS as PE_PRESETS
    from ._defaults import FitDefaults as FitDefaults
    from ._fit import FitHistory as FitHistory
    from ._fit import FitResult as FitResult
    from ._fit import fit as fit
    from ._loss import data_loss as data_loss
    from ._loss import target_loss_weights as target_loss_weights
    from ._matrix import AbstractTargetMatrix as AbstractTargetMatrix
    from ._matrix import TargetMatrix as TargetMatrix
    from ._model import CalibrationWeights as CalibrationWeights
    from ._objective import Objective as Objective
    from ._optimizers import optimizer_named as optimizer_named
    from ._sharding import ShardedMatrix as ShardedMatrix
    from ._sharding import process_records as process_records
    from ._sharding import record_mesh as record_mesh
    from ._sharding import select_devices as select_devices
    from ._sweep import SweepResult as SweepResult
    from ._sweep import sweep as sweep

__version__ = "0.1.0"

_EXPORTS = {
    "set_learning_rate": "_adam",
    "torch_adam": "_adam",
    "PE_DEFAULTS": "_defaults",
    "PE_PRESETS": "_defaults",
    "FitDefaults": "_defaults",
    "FitHistory": "_fit",
    "FitResult": "_fit",
    "fit": "_fit",
    "data_loss": "_loss",
    "target_loss_weights": "_loss",
    "AbstractTargetMatrix": "_matrix",
    "TargetMatrix": "_matrix",
    "CalibrationWeights": "_model",
    "Objective": "_objective",
    "OPTIMIZER_NAMES": "_defaults",
    "optimizer_named": "_optimizers",
    "ShardedMatrix": "_sharding",
    "process_records": "_sharding",
    "record_mesh": "_sharding",
    "select_devices": "_sharding",
    "SweepResult": "_sweep",
    "sweep": "_sweep",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
