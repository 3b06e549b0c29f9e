"""Runs: what a fit, a derivation or a sweep leaves behind, and the checks of it (PolicyEngine's
diagnostics and package validation, artifact gates, plots). Depends on core, io and workflow."""

from ._diagnostics import PackageValidation as PackageValidation
from ._diagnostics import format_validation as format_validation
from ._diagnostics import provenance_lines as provenance_lines
from ._diagnostics import target_diagnostics as target_diagnostics
from ._diagnostics import validate_package as validate_package
from ._gates import DIAGNOSTICS as DIAGNOSTICS
from ._gates import REPORT as REPORT
from ._gates import RUN_CONFIG as RUN_CONFIG
from ._gates import exit_code as exit_code
from ._gates import gate_report as gate_report
from ._gates import write_gate_report as write_gate_report
from ._plots import holdout_figure as holdout_figure
from ._plots import loss_curve_figure as loss_curve_figure
from ._plots import write_frontier as write_frontier
from ._plots import write_holdout_log as write_holdout_log
from ._plots import write_loss_curve as write_loss_curve
from ._tier_run import write_tier_run as write_tier_run
