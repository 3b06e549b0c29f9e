"""The run directory of a derived tier, which ``jaxcal gates`` checks."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from ..io import atomic_write, json_safe, save_package, sha256_file
from ..workflow import HoldoutFit, TierDerivation, weight_health
from ._diagnostics import target_diagnostics
from ._gates import RUN_CONFIG
from ._plots import write_holdout_log


def write_tier_run(
    derivation: TierDerivation,
    directory: str | os.PathLike,
    *,
    product: str | None = None,
    inputs: dict[str, str] | None = None,
) -> pathlib.Path:
    """Write a run directory ``jaxcal gates`` reads: ``calibration_weights.npy`` (the child's),
    ``child_columns.npy`` (their parent columns), ``child_package.npz``,
    ``unified_diagnostics.csv``, ``tier_report.json``, the held-out log when there was a
    split, and ``unified_run_config.json`` with every artifact's sha256. Returns the config path."""
    directory = pathlib.Path(directory)
    tier = derivation.tier
    weights = tier.weights.astype(np.float32)
    atomic_write(directory / "calibration_weights.npy", lambda f: np.save(f, weights))
    atomic_write(directory / "child_columns.npy", lambda f: np.save(f, tier.selected.astype(np.int64)))
    save_package(tier.child, directory / "child_package.npz")
    diagnostics = target_diagnostics(tier.child, weights)
    atomic_write(directory / "unified_diagnostics.csv", lambda f: diagnostics.to_csv(f, index=False), mode="w")
    report = {
        "budget": derivation.budget,
        "state_floor": derivation.state_floor,
        "lambda_l0": derivation.lambda_l0,
        "search": derivation.search,
        **tier.comparison,
    }
    atomic_write(directory / "tier_report.json", lambda f: f.write(json.dumps(json_safe(report), indent=2)), mode="w")
    artifacts = ["calibration_weights.npy", "child_columns.npy", "child_package.npz", "unified_diagnostics.csv", "tier_report.json"]
    holdout = None
    if isinstance(tier.refit, HoldoutFit):
        artifacts += [pathlib.Path(p).name for p in write_holdout_log(tier.refit, directory).values()]
        holdout = tier.refit.summary()
    child = tier.comparison["child"]
    config = {
        "command": "derive",
        "product": product,
        "inputs": inputs or {},
        "n_targets": tier.child.n_targets,
        "n_records": tier.child.n_records,
        "weight_sum": float(weights.sum(dtype=np.float64)),
        "weight_nonzero": int((weights > 0).sum()),
        "mean_error_pct": child["mean_error_pct"],
        "elapsed_seconds": derivation.elapsed_seconds,
        "weight_health": weight_health(weights),
        "tier": {k: report[k] for k in ("budget", "state_floor", "lambda_l0")},
        "holdout": holdout,
        "weights_file": "calibration_weights.npy",
        "artifacts": {name: sha256_file(directory / name) for name in artifacts},
        "versions": _versions(),
    }
    path = directory / RUN_CONFIG
    atomic_write(path, lambda f: f.write(json.dumps(json_safe(config), indent=2, allow_nan=False)), mode="w")
    return path


def _versions() -> dict[str, str]:
    from importlib import metadata

    return {name: metadata.version(name) for name in ("jaxcal", "jax", "equinox", "optax")}
