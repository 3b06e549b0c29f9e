"""Artifact gates: pass/fail checks of a run directory, written as one JSON a pipeline can trust.

A run directory is what ``jaxcal fit`` or ``jaxcal derive`` writes: the weights ``.npy``,
``unified_run_config.json`` (its :class:`RunRecord`) and ``unified_diagnostics.csv``. Each
gate is ``pass``, ``fail`` or ``unmeasured`` (the run lacks what the gate needs); the report
has passed only when every gate passed.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..io import atomic_write, json_safe, sha256_file
from ..workflow import weight_health
from ._names import DIAGNOSTICS, RUN_CONFIG
from ._record import RunRecord

SCHEMA_VERSION = 1


def gate_report(
    run_dir: str | os.PathLike,
    *,
    product: str | None = None,
    max_holdout_loss: float | None = None,
    max_mean_error: float | None = None,
    max_records: int | None = None,
    min_ess_ratio: float | None = None,
) -> dict[str, Any]:
    """The gates of ``run_dir`` as a JSON-ready dict.

    Always checked: ``artifacts_intact`` (every file the run config lists has its recorded
    sha256), ``weights_valid`` (finite, non-negative, one per record), ``no_collapse``
    (weight health). Checked when a limit is given: ``holdout_loss`` (the run's best
    held-out loss), ``mean_error`` (mean absolute relative error of the diagnostics, a
    fraction), ``ess_ratio`` (effective sample size over positive records). ``max_records``
    (default: the ``budget`` a derived tier records) gates the records kept.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory not found: {run_dir}")
    record = RunRecord.read(run_dir)
    weights_path = _weights_path(run_dir, record)
    weights = np.load(weights_path, allow_pickle=False) if weights_path else None
    health = weight_health(weights) if weights is not None else None

    gates = {
        "artifacts_intact": _artifacts_gate(run_dir, record.artifacts),
        "weights_valid": _weights_gate(weights, record.n_records),
        "no_collapse": _gate(
            None if health is None else not health["collapse_suspected"],
            "effective sample size is a healthy share of the positive records",
            health,
        ),
    }
    if max_holdout_loss is not None:
        loss = (record.holdout or {}).get("holdout_loss")
        gates["holdout_loss"] = _limit_gate("held-out loss", loss, "<=", max_holdout_loss)
    if max_mean_error is not None:
        gates["mean_error"] = _limit_gate("mean relative error", _mean_error(run_dir, record), "<=", max_mean_error)
    if min_ess_ratio is not None:
        ratio = None if health is None else health["ess_ratio"]
        gates["ess_ratio"] = _limit_gate("effective sample size / positive records", ratio, ">=", min_ess_ratio)
    budget = max_records if max_records is not None else (record.tier or {}).get("budget")
    if budget is not None:
        kept = None if health is None else health["count_positive"]
        gates["records_within_budget"] = _limit_gate("records kept", kept, "<=", budget)

    statuses = [gate["status"] for gate in gates.values()]
    status = "failed" if "fail" in statuses else "incomplete" if "unmeasured" in statuses else "passed"
    files = [p for p in (weights_path, run_dir / RUN_CONFIG, run_dir / DIAGNOSTICS) if p and p.is_file()]
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "product": product or record.product or run_dir.resolve().name,
        "run_dir": str(run_dir),
        "gates": gates,
        "summary": {
            "status": status,
            **{kind: [n for n, g in gates.items() if g["status"] == kind] for kind in ("pass", "fail", "unmeasured")},
        },
        "artifacts": {p.name: sha256_file(p) for p in files},
    }


def write_gate_report(report: dict[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Write ``report`` as indented JSON, atomically."""
    path = pathlib.Path(path)
    text = json.dumps(json_safe(report), indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path


def exit_code(report: dict[str, Any]) -> int:
    """0 passed, 1 failed, 2 incomplete."""
    return {"passed": 0, "failed": 1, "incomplete": 2}[report["summary"]["status"]]


def _gate(passed: bool | None, summary: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    status = "unmeasured" if passed is None else "pass" if passed else "fail"
    return {"status": status, "summary": summary, "metrics": metrics or {}}


def _limit_gate(what: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    if value is None or not np.isfinite(value):
        return _gate(None, f"the run does not record the {what}", {"limit": limit})
    passed = value <= limit if op == "<=" else value >= limit
    return _gate(
        passed,
        f"{what} {value:.6g} {op} {limit:.6g}" if passed else f"{what} {value:.6g} is not {op} {limit:.6g}",
        {"value": value, "limit": limit},
    )


def _weights_path(run_dir: pathlib.Path, record: RunRecord) -> pathlib.Path | None:
    """The run's weights: the record's ``weights_file``, else the directory's one ``*weights*.npy``."""
    if record.weights_file:
        path = run_dir / pathlib.Path(record.weights_file).name
        return path if path.is_file() else None
    candidates = sorted(run_dir.glob("*weights*.npy"))
    return candidates[0] if len(candidates) == 1 else None


def _artifacts_gate(run_dir: pathlib.Path, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Each recorded artifact: ``{file name: sha256}``, ``{name: {"path", "sha256"}}``, or (older
    runs) ``{logical name: sha256}``, which passes when some file of the run has that sha256; a
    digest may be written ``sha256:<hex>``, as PolicyEngine writes it."""
    if not recorded:
        return _gate(None, "the run config lists no artifacts", None)
    on_disk: dict[str, str] | None = None
    problems = {}
    for name, entry in recorded.items():
        digest = str(entry["sha256"] if isinstance(entry, dict) else entry).removeprefix("sha256:")
        path = run_dir / pathlib.Path(entry["path"] if isinstance(entry, dict) else name).name
        if path.is_file():
            if sha256_file(path) != digest:
                problems[name] = f"{path.name}: sha256 differs from the run record"
        elif isinstance(entry, dict):
            problems[name] = f"{path.name}: missing"
        else:
            if on_disk is None:
                on_disk = {sha256_file(p): p.name for p in run_dir.iterdir() if p.is_file()}
            if digest not in on_disk:
                problems[name] = "no file of the run has the recorded sha256 (changed or missing)"
    summary = (
        f"{len(recorded)} artifacts match their sha256"
        if not problems
        else f"{len(problems)} artifacts changed or missing"
    )
    return _gate(not problems, summary, {"checked": len(recorded), "problems": problems})


def _weights_gate(weights: np.ndarray | None, n_records: int | None) -> dict[str, Any]:
    if weights is None:
        return _gate(None, "no weights file found", None)
    finite = np.isfinite(weights)
    metrics = {
        "n_weights": int(weights.size),
        "n_records_expected": n_records,
        "n_not_finite": int((~finite).sum()),
        "n_negative": int((weights[finite] < 0).sum()),
    }
    passed = (
        weights.ndim == 1
        and metrics["n_not_finite"] == 0
        and metrics["n_negative"] == 0
        and (n_records is None or weights.size == n_records)
    )
    return _gate(passed, "weights are finite, non-negative, one per record" if passed else "invalid weights", metrics)


def _mean_error(run_dir: pathlib.Path, record: RunRecord) -> float | None:
    """Mean ``abs_rel_error`` of the diagnostics CSV, else the record's ``mean_error_pct / 100``."""
    path = run_dir / DIAGNOSTICS
    if path.is_file():
        import pandas as pd

        return float(pd.read_csv(path, usecols=["abs_rel_error"])["abs_rel_error"].to_numpy().mean())
    return None if record.mean_error_pct is None else float(record.mean_error_pct) / 100
