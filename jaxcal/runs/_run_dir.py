"""Run directories: what ``fit``, ``derive`` and ``sweep`` leave behind, each with its :class:`RunRecord`.

Every file is written to a temporary file and renamed into place; the record is written last,
with every other file's sha256, so that ``jaxcal gates`` can tell a complete, untouched run.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import CalibrationPackage, atomic_write, file_provenance, json_safe, save_package
from ..workflow import HoldoutFit, error_summary
from ._diagnostics import target_diagnostics
from ._names import (
    CALIBRATION_LOG,
    DIAGNOSTICS,
    FIT_FILES,
    GEOGRAPHY_FILES,
    LOSS_CURVE,
    RUN_CONFIG,
    TIER_FILES,
    TIER_WEIGHTS,
)
from ._plots import write_frontier, write_holdout_log, write_loss_curve
from ._record import RunRecord

if TYPE_CHECKING:
    import pandas as pd

    from ..workflow import HoldoutSplit, TierDerivation
    from ._fit_run import FitOutcome, FitStart
    from ._plan import FitPlan


def writes_outputs() -> bool:
    """Whether this process writes the run's outputs: the first of a multi-process fit does."""
    import jax

    return jax.process_index() == 0


def write_run_dir(plan: FitPlan, begin: FitStart, outcome: FitOutcome, *, elapsed: float) -> RunRecord | None:
    """A fit's run directory, beside ``plan.output``: the weights (float32 ``.npy``),
    ``unified_diagnostics.csv``, ``loss_curve.png``, PolicyEngine's geography files when the
    package has blocks and districts, the held-out log with a split, and the record, which also
    lists the observers' ``calibration_log.csv`` and the checkpoint this run wrote (when it is in
    the directory; a checkpoint an earlier run left there is never this run's). A fit's file that
    an earlier run left and this one did not write (a log, a held-out log) is removed. The record's
    hyperparameters say what the fit really started from (a checkpoint's beta, seed and key).
    In a multi-process fit every process adds its records' share of the estimates and the first
    writes the directory; the others return None."""
    import jax

    directory = plan.output.parent
    weights = np.asarray(outcome.result.weights, np.float32)
    diagnostics = target_diagnostics(begin.package, weights)
    if not writes_outputs():
        return None
    _write_weights(directory, plan.output.name, weights, diagnostics)
    write_loss_curve(directory / LOSS_CURVE, outcome.losses, begin.epoch)
    files = [plan.output.name, DIAGNOSTICS, LOSS_CURVE, *write_geography(directory, begin.package)]
    if outcome.holdout is not None:
        files += _holdout_files(outcome.holdout, directory)
    if plan.log_freq is not None:
        files.append(CALIBRATION_LOG)
    checkpoint = outcome.checkpoint
    if checkpoint is not None and checkpoint.parent == directory:
        files.append(checkpoint.name)
    applied_config = plan.applied_target_config
    excluded = plan.excluded_targets(begin.package.targets)
    record = RunRecord.create(
        "fit",
        directory,
        files,
        problem=begin.package,
        weights=weights,
        diagnostics=diagnostics.loc[~excluded],
        package=str(plan.package_path),
        package_signature=begin.signature,
        inputs=_inputs(package=plan.package_path, target_config=plan.target_config, resume_from=plan.resume_from),
        hyperparameters=plan.record_hyperparameters() | begin.record_hyperparameters(),
        epochs=plan.epochs,
        epochs_total=outcome.epochs,
        device=jax.default_backend() if plan.device == "auto" else plan.device,
        resume_from=_text(plan.resume_from),
        checkpoint_output=_text(checkpoint),
        target_config=_text(applied_config),
        epochs_completed=outcome.epochs,
        final_loss=float(outcome.losses[-1]) if len(outcome.losses) else None,
        weights_file=plan.output.name,
        holdout=None if outcome.holdout is None else outcome.holdout.summary(),
        excluded_from_fit=_excluded_summary(plan, diagnostics, excluded) if excluded.any() else None,
        fail_if=[
            rule.check(begin.package.targets, begin.package.target_names, diagnostics["rel_error"])
            for rule in plan.tolerance_rules()
        ]
        or None,
        elapsed_seconds=elapsed,
    )
    for stale in set(FIT_FILES) - set(files):  # an earlier run's, which would pass for this one's
        (directory / stale).unlink(missing_ok=True)
    record.write(directory)
    return record


def _excluded_summary(plan: FitPlan, diagnostics: pd.DataFrame, excluded: np.ndarray) -> dict[str, Any]:
    """The record's account of the targets left out of the loss: the rules, the targets and their
    errors over the achievable ones."""
    left_out = diagnostics.loc[excluded]
    return {
        "rules": plan.exclusion_rules(),
        "n_targets": int(excluded.sum()),
        "targets": left_out["target"].tolist(),
        **error_summary(left_out.loc[left_out["achievable"], "rel_error"]),
    }


def output_paths(plan: FitPlan, record: RunRecord) -> dict[str, pathlib.Path]:
    """What a fit wrote, under the names policyengine-us-data prints them (``OUTPUT_PATH:...``),
    in its order."""
    directory = plan.output.parent
    written = set(record.artifacts)
    paths = {"OUTPUT_PATH": plan.output}
    if record.checkpoint_output is not None:
        paths["CHECKPOINT_PATH"] = pathlib.Path(record.checkpoint_output)
    for label, name in zip(("GEOGRAPHY_PATH", "BLOCKS_PATH", "GEO_LABELS_PATH"), GEOGRAPHY_FILES):
        if name in written:
            paths[label] = directory / name
    paths |= {"CONFIG_PATH": directory / RUN_CONFIG, "LOG_PATH": directory / DIAGNOSTICS}
    if CALIBRATION_LOG in written:
        paths["CAL_LOG_PATH"] = directory / CALIBRATION_LOG
    return paths


def write_geography(directory: pathlib.Path, package: CalibrationPackage) -> list[str]:
    """policyengine-us-data's geography files of the package's columns, when it has blocks and
    districts: ``geography_assignment.npz`` (block, district, county and state of every column,
    the base records and clones), ``stacked_blocks.npy`` and ``geo_labels.json`` (the districts,
    sorted as text). Returns the names written (none without that geography)."""
    geography = package.geography
    if "block_geoid" not in geography or "cd_geoid" not in geography:
        return []
    blocks = np.asarray(geography["block_geoid"]).astype(str)
    districts = np.asarray(geography["cd_geoid"]).astype(str)
    meta = package.metadata
    n_base = meta.get("n_base_records", meta.get("base_n_records"))
    assignment = {
        "block_geoid": blocks,
        "cd_geoid": districts,
        "county_fips": blocks.astype("U5"),
        "state_fips": np.array([int(block[:2]) for block in blocks], np.int32),
        "n_records": np.array([-1 if n_base is None else int(n_base)]),
        "n_clones": np.array([-1 if meta.get("n_clones") is None else int(meta["n_clones"])]),
    }
    assignment_file, blocks_file, labels_file = GEOGRAPHY_FILES
    atomic_write(directory / assignment_file, lambda f: np.savez_compressed(f, **assignment))
    atomic_write(directory / blocks_file, lambda f: np.save(f, blocks))
    labels = json.dumps(sorted(set(districts.tolist())))
    atomic_write(directory / labels_file, lambda f: f.write(labels), mode="w")
    return list(GEOGRAPHY_FILES)


def write_tier_run(
    derivation: TierDerivation,
    directory: str | os.PathLike,
    *,
    product: str | None = None,
    package_path: str | os.PathLike | None = None,
    parent_weights_path: str | os.PathLike | None = None,
    hyperparameters: dict[str, Any] | None = None,
) -> RunRecord:
    """A derived tier's run directory: ``calibration_weights.npy`` (the child's),
    ``child_columns.npy`` (their parent columns), ``child_package.npz``,
    ``unified_diagnostics.csv``, ``tier_report.json``, the held-out log when there was a split,
    and the record."""
    directory = pathlib.Path(directory)
    tier = derivation.tier
    weights = tier.weights.astype(np.float32)
    diagnostics = target_diagnostics(tier.child, weights)
    _write_weights(directory, TIER_WEIGHTS, weights, diagnostics)
    columns_file, package_file, report_file = TIER_FILES
    atomic_write(directory / columns_file, lambda f: np.save(f, tier.selected.astype(np.int64)))
    save_package(tier.child, directory / package_file)
    settings = {"budget": derivation.budget, "state_floor": derivation.state_floor, "lambda_l0": derivation.lambda_l0}
    report = settings | {"search": derivation.search, **tier.comparison}
    atomic_write(directory / report_file, lambda f: f.write(json.dumps(json_safe(report), indent=2)), mode="w")
    files = [TIER_WEIGHTS, columns_file, package_file, DIAGNOSTICS, report_file]
    refit = tier.refit
    if isinstance(refit, HoldoutFit):
        files += _holdout_files(refit, directory)
        epochs, final_loss = refit.stopped_epoch, float(refit.log["objective_train_loss"].iloc[-1])
    else:
        epochs, final_loss = refit.epochs, float(refit.history.total[-1]) if refit.epochs else None
    record = RunRecord.create(
        "derive",
        directory,
        files,
        problem=tier.child,
        weights=weights,
        diagnostics=diagnostics,
        product=product,
        package=_text(package_path),
        inputs=_inputs(package=package_path, parent_weights=parent_weights_path),
        hyperparameters=hyperparameters or {},
        package_signature=tier.child.signature(),
        epochs_completed=epochs,
        final_loss=final_loss,
        weights_file=TIER_WEIGHTS,
        tier=settings,
        holdout=refit.summary() if isinstance(refit, HoldoutFit) else None,
        elapsed_seconds=derivation.elapsed_seconds,
    )
    record.write(directory)
    return record


def write_sweep_run(
    frontier: pd.DataFrame,
    directory: str | os.PathLike,
    *,
    package: CalibrationPackage,
    package_path: str | os.PathLike | None = None,
    split: HoldoutSplit | None = None,
    hyperparameters: dict[str, Any] | None = None,
    elapsed: float | None = None,
) -> RunRecord:
    """A sweep's run directory: ``frontier.csv``, ``frontier.png`` and the record (no weights: a
    sweep keeps one fit per grid point)."""
    directory = pathlib.Path(directory)
    files = [pathlib.Path(path).name for path in write_frontier(frontier, directory).values()]
    record = RunRecord.create(
        "sweep",
        directory,
        files,
        problem=package,
        package=_text(package_path),
        inputs=_inputs(package=package_path),
        hyperparameters=hyperparameters or {},
        package_signature=package.signature(),
        epochs_completed=(hyperparameters or {}).get("epochs"),
        holdout=None if split is None else split.to_dict(),
        elapsed_seconds=elapsed,
    )
    record.write(directory)
    return record


def _write_weights(directory: pathlib.Path, name: str, weights: np.ndarray, diagnostics: pd.DataFrame) -> None:
    """The weights ``.npy`` and ``unified_diagnostics.csv``."""
    atomic_write(directory / name, lambda f: np.save(f, weights))
    atomic_write(directory / DIAGNOSTICS, lambda f: diagnostics.to_csv(f, index=False), mode="w")


def _holdout_files(holdout: HoldoutFit, directory: pathlib.Path) -> list[str]:
    return [pathlib.Path(path).name for path in write_holdout_log(holdout, directory).values()]


def _text(path: str | os.PathLike | None) -> str | None:
    return None if path is None else str(path)


def _inputs(**paths: str | os.PathLike | None) -> dict[str, Any]:
    """The provenance of each input file, by role."""
    inputs: dict[str, Any] = {}
    for role, path in paths.items():
        inputs |= file_provenance(role, path)
    return inputs
