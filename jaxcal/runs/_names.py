"""The files a run directory holds, by name: one list for the writers, the readers and the check
that no run writes over one of its own inputs. Imports nothing, so a plan can use it before JAX."""

RUN_CONFIG = "unified_run_config.json"
DIAGNOSTICS = "unified_diagnostics.csv"
CALIBRATION_LOG = "calibration_log.csv"
LOSS_CURVE = "loss_curve.png"
REPORT = "artifact_gates.json"
TIER_WEIGHTS = "calibration_weights.npy"
HOLDOUT_LOG = "holdout_log"
"""Stem of the held-out log's ``.json``, ``.csv`` and ``.png``."""
FRONTIER = "frontier"
"""Stem of a sweep's ``.csv`` and ``.png``."""
TIER_FILES = ("child_columns.npy", "child_package.npz", "tier_report.json")
GEOGRAPHY_FILES = ("geography_assignment.npz", "stacked_blocks.npy", "geo_labels.json")
"""policyengine-us-data's geography files beside the weights: every column's block, district,
county and state; the blocks alone; the sorted district GEOIDs."""

FIT_FILES = (RUN_CONFIG, DIAGNOSTICS, CALIBRATION_LOG, LOSS_CURVE, *GEOGRAPHY_FILES) + tuple(
    f"{HOLDOUT_LOG}.{kind}" for kind in ("json", "csv", "png")
)
"""What a fit writes beside its weights (and its checkpoint)."""
DERIVE_FILES = (TIER_WEIGHTS, RUN_CONFIG, DIAGNOSTICS, *TIER_FILES) + FIT_FILES[-3:]
SWEEP_FILES = (RUN_CONFIG, f"{FRONTIER}.csv", f"{FRONTIER}.png")
