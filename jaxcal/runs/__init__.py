"""Runs: a fit run from a checked plan to its run directory, what a fit, a derivation or a sweep
leaves behind (one :class:`RunRecord` schema), and the checks of it (PolicyEngine's diagnostics
and package validation, artifact gates, plots). Depends on core, io and workflow.

The names below load on first use, as ``jaxcal``'s do: a :class:`FitPlan` is made and checked
before the engine loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._diagnose_report import DIAGNOSE_FILES as DIAGNOSE_FILES
    from ._diagnose_report import diagnosis_figure as diagnosis_figure
    from ._diagnose_report import format_diagnosis as format_diagnosis
    from ._diagnose_report import write_diagnosis as write_diagnosis
    from ._diagnostics import PackageValidation as PackageValidation
    from ._diagnostics import format_validation as format_validation
    from ._diagnostics import provenance_lines as provenance_lines
    from ._diagnostics import target_diagnostics as target_diagnostics
    from ._diagnostics import validate_package as validate_package
    from ._fit_run import FitOutcome as FitOutcome
    from ._fit_run import FitStart as FitStart
    from ._fit_run import fit_objective as fit_objective
    from ._fit_run import fit_observers as fit_observers
    from ._fit_run import join_processes as join_processes
    from ._fit_run import load_fit_package as load_fit_package
    from ._fit_run import run_fit as run_fit
    from ._fit_run import start as start
    from ._gates import exit_code as exit_code
    from ._gates import gate_report as gate_report
    from ._gates import write_gate_report as write_gate_report
    from ._names import CALIBRATION_LOG as CALIBRATION_LOG
    from ._names import DIAGNOSTICS as DIAGNOSTICS
    from ._names import REPORT as REPORT
    from ._names import RUN_CONFIG as RUN_CONFIG
    from ._observers import MICROCALIBRATE_LOG_COLUMNS as MICROCALIBRATE_LOG_COLUMNS
    from ._observers import PE_LOG_COLUMNS as PE_LOG_COLUMNS
    from ._observers import CalibrationLog as CalibrationLog
    from ._observers import Checkpoints as Checkpoints
    from ._observers import FitChunk as FitChunk
    from ._observers import FitObserver as FitObserver
    from ._observers import Observers as Observers
    from ._observers import Progress as Progress
    from ._plan import DEFAULT_OUTPUT as DEFAULT_OUTPUT
    from ._plan import HYPERPARAMETERS as HYPERPARAMETERS
    from ._plan import LOG_FORMATS as LOG_FORMATS
    from ._plan import PLATFORM_ALIASES as PLATFORM_ALIASES
    from ._plan import PLATFORMS as PLATFORMS
    from ._plan import PROGRESS_EPOCHS as PROGRESS_EPOCHS
    from ._plan import FitPlan as FitPlan
    from ._plan import HoldoutPlan as HoldoutPlan
    from ._plan import ToleranceRule as ToleranceRule
    from ._plan import checkpoint_path_for as checkpoint_path_for
    from ._plan import load_named_set as load_named_set
    from ._plan import resolve_hyperparameters as resolve_hyperparameters
    from ._plots import holdout_figure as holdout_figure
    from ._plots import loss_curve_figure as loss_curve_figure
    from ._plots import write_frontier as write_frontier
    from ._plots import write_holdout_log as write_holdout_log
    from ._plots import write_loss_curve as write_loss_curve
    from ._record import RunRecord as RunRecord
    from ._run_dir import output_paths as output_paths
    from ._run_dir import write_run_dir as write_run_dir
    from ._run_dir import write_sweep_run as write_sweep_run
    from ._run_dir import write_tier_run as write_tier_run
    from ._run_dir import writes_outputs as writes_outputs

_EXPORTS = {
    "DIAGNOSE_FILES": "_diagnose_report",
    "diagnosis_figure": "_diagnose_report",
    "format_diagnosis": "_diagnose_report",
    "write_diagnosis": "_diagnose_report",
    "PackageValidation": "_diagnostics",
    "format_validation": "_diagnostics",
    "provenance_lines": "_diagnostics",
    "target_diagnostics": "_diagnostics",
    "validate_package": "_diagnostics",
    "FitOutcome": "_fit_run",
    "FitStart": "_fit_run",
    "fit_objective": "_fit_run",
    "fit_observers": "_fit_run",
    "join_processes": "_fit_run",
    "load_fit_package": "_fit_run",
    "run_fit": "_fit_run",
    "writes_outputs": "_run_dir",
    "start": "_fit_run",
    "DIAGNOSTICS": "_names",
    "REPORT": "_names",
    "exit_code": "_gates",
    "gate_report": "_gates",
    "write_gate_report": "_gates",
    "CALIBRATION_LOG": "_names",
    "MICROCALIBRATE_LOG_COLUMNS": "_observers",
    "PE_LOG_COLUMNS": "_observers",
    "CalibrationLog": "_observers",
    "Checkpoints": "_observers",
    "FitChunk": "_observers",
    "FitObserver": "_observers",
    "Observers": "_observers",
    "Progress": "_observers",
    "DEFAULT_OUTPUT": "_plan",
    "HYPERPARAMETERS": "_plan",
    "LOG_FORMATS": "_plan",
    "PLATFORM_ALIASES": "_plan",
    "PLATFORMS": "_plan",
    "PROGRESS_EPOCHS": "_plan",
    "FitPlan": "_plan",
    "ToleranceRule": "_plan",
    "HoldoutPlan": "_plan",
    "checkpoint_path_for": "_plan",
    "load_named_set": "_plan",
    "resolve_hyperparameters": "_plan",
    "holdout_figure": "_plots",
    "loss_curve_figure": "_plots",
    "write_frontier": "_plots",
    "write_holdout_log": "_plots",
    "write_loss_curve": "_plots",
    "RUN_CONFIG": "_names",
    "RunRecord": "_record",
    "output_paths": "_run_dir",
    "write_run_dir": "_run_dir",
    "write_sweep_run": "_run_dir",
    "write_tier_run": "_run_dir",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
