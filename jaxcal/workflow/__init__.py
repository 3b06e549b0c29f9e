"""The Microplex workflow over the engine: held-out target families with early stopping,
parent-to-child tiers, fixed records, and the sparsity frontier. Depends on the core and io."""

from ._diagnose import BoundedLeastSquares as BoundedLeastSquares
from ._diagnose import TargetDiagnosis as TargetDiagnosis
from ._diagnose import diagnose_targets as diagnose_targets
from ._diagnose import hierarchy_gaps as hierarchy_gaps
from ._diagnose import solve_bounded_least_squares as solve_bounded_least_squares
from ._diagnose import starting_weights as starting_weights
from ._fixed import Residualization as Residualization
from ._fixed import residualize as residualize
from ._frontier import sweep_grid as sweep_grid
from ._holdout import FAMILY_COLUMNS as FAMILY_COLUMNS
from ._holdout import LOG_COLUMNS as LOG_COLUMNS
from ._holdout import HoldoutFit as HoldoutFit
from ._holdout import HoldoutSplit as HoldoutSplit
from ._holdout import fit_with_holdout as fit_with_holdout
from ._holdout import holdout_split as holdout_split
from ._holdout import loss_evaluator as loss_evaluator
from ._metrics import error_summary as error_summary
from ._metrics import errors_by_level as errors_by_level
from ._metrics import relative_errors as relative_errors
from ._metrics import weight_health as weight_health
from ._tiers import DEFAULT_LAMBDA_L0 as DEFAULT_LAMBDA_L0
from ._tiers import TierDerivation as TierDerivation
from ._tiers import TierFit as TierFit
from ._tiers import assess as assess
from ._tiers import derive_tier as derive_tier
from ._tiers import refit_subset as refit_subset
from ._tiers import select_tier as select_tier
