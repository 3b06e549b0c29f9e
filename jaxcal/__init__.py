"""jaxcal: differentiable survey calibration in JAX.

Find non-negative record weights ``w`` with ``X @ w ~= targets``, optionally sparse through
hard-concrete L0 gates, with l0-python's semantics.
"""

from ._adam import torch_adam as torch_adam
from ._fit import FitHistory as FitHistory
from ._fit import FitResult as FitResult
from ._fit import fit as fit
from ._fixed import Residualization as Residualization
from ._fixed import residualize as residualize
from ._gatereport import gate_report as gate_report
from ._gatereport import write_gate_report as write_gate_report
from ._holdout import HoldoutFit as HoldoutFit
from ._holdout import HoldoutSplit as HoldoutSplit
from ._holdout import fit_with_holdout as fit_with_holdout
from ._holdout import holdout_split as holdout_split
from ._loss import data_loss as data_loss
from ._loss import target_loss_weights as target_loss_weights
from ._matrix import TargetMatrix as TargetMatrix
from ._model import CalibrationWeights as CalibrationWeights
from ._package import CalibrationPackage as CalibrationPackage
from ._package import PackageError as PackageError
from ._package import load_package as load_package
from ._package import save_package as save_package
from ._sharding import ShardedMatrix as ShardedMatrix
from ._sharding import record_mesh as record_mesh
from ._sharding import select_devices as select_devices
from ._sweep import SweepResult as SweepResult
from ._sweep import sweep as sweep
from ._sweep import sweep_grid as sweep_grid
from ._targets import apply_target_config as apply_target_config
from ._targets import load_target_config as load_target_config
from ._targets import policyengine_initial_weights as policyengine_initial_weights
from ._tiers import TierDerivation as TierDerivation
from ._tiers import TierFit as TierFit
from ._tiers import derive_tier as derive_tier
from ._tiers import refit_subset as refit_subset
from ._tiers import select_tier as select_tier

__version__ = "0.1.0"
