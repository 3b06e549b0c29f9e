"""Artifact gates: pass/fail checks of a run directory, written as one JSON a pipeline can trust.

A run directory is what ``jaxcal fit`` or ``jaxcal derive`` writes: the weights ``.npy``,
``unified_run_config.json`` (its :class:`RunRecord`) and ``unified_diagnostics.csv``. Each
gate is ``pass``, ``fail`` or ``unmeasured`` (the run lacks what the gate needs); the report
has passed only when every gate passed.
"""

from __future__ import annotations

import datetime
import json
import math
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
_READ_FIELDS = ("artifacts", "weights_file", "n_records", "holdout", "tier", "product", "mean_error_pct")
"""The run record's fields the gates read: each must have its JSON type."""


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

    A run config that is not a JSON object, or whose fields have the wrong JSON types, is a
    ``ValueError`` naming it; weights, diagnostics or a recorded value that are there but
    unreadable (not an ``.npy`` of real numbers, no ``abs_rel_error`` column, text for a
    number) fail their gate, saying why.
    """
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory not found: {run_dir}")
    record = RunRecord.read(run_dir, checked=_READ_FIELDS)
    weights_path = _weights_path(run_dir, record)
    weights, unreadable = _read_weights(weights_path) if weights_path else (None, None)
    if weights_path is None and record.weights_file:
        unreadable = f"{pathlib.Path(record.weights_file).name}, the run's weights file, is missing or not a file"
    health = weight_health(weights) if weights is not None else None

    gates = {
        "artifacts_intact": _artifacts_gate(run_dir, record.artifacts),
        "weights_valid": _weights_gate(weights, record.n_records, unreadable),
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
        mean = _mean_error(run_dir, record)
        gates["mean_error"] = (
            _gate(False, mean, {"limit": max_mean_error})  # diagnostics that cannot give it: what is wrong
            if isinstance(mean, str)
            else _limit_gate("mean relative error", mean, "<=", max_mean_error)
        )
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


def _limit_gate(what: str, value: Any, op: str, limit: Any) -> dict[str, Any]:
    """``value op limit``; fails (a tampered record) when either is there but not a number."""
    if not _is_number(limit):
        return _gate(False, f"the limit on the {what} is recorded as {limit!r}, not a number", {"limit": limit})
    if value is not None and not _is_number(value):
        return _gate(False, f"the {what} is recorded as {value!r}, not a number", {"value": value, "limit": limit})
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


def _read_weights(path: pathlib.Path) -> tuple[np.ndarray | None, str | None]:
    """The weights ``.npy`` at ``path``, else None and why not: read only once its header declares
    real numbers and the file's size, so that a tampered file fails its gate at no cost."""
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f".npy format version {version}")
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            declared, _, dtype = read_header(f)
            if dtype.kind not in "iuf":
                return None, f"{path.name} holds {dtype}, not real numbers"
            if path.stat().st_size != f.tell() + dtype.itemsize * math.prod(declared):
                return None, f"{path.name} is not the size its header declares"
            f.seek(0)
            return np.lib.format.read_array(f, allow_pickle=False), None
    except (OSError, EOFError, ValueError, SyntaxError) as error:
        return None, f"{path.name} is not a readable .npy ({type(error).__name__}: {error})"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _artifacts_gate(run_dir: pathlib.Path, recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Each recorded artifact: ``{file name: sha256}``, ``{name: {"path", "sha256"}}``, or (older
    runs) ``{logical name: sha256}``, which passes when some file of the run has that sha256; a
    digest may be written ``sha256:<hex>``, as PolicyEngine writes it."""
    if not recorded:
        return _gate(None, "the run config lists no artifacts", None)
    on_disk: dict[str, str] | None = None
    problems = {}
    for name, entry in recorded.items():
        digest, where = (entry.get("sha256"), entry.get("path")) if isinstance(entry, dict) else (entry, name)
        if not (isinstance(digest, str) and isinstance(where, str)):
            problems[name] = f"the run record gives {entry!r}, not a sha256 (or a path and sha256)"
            continue
        digest = digest.removeprefix("sha256:")
        path = run_dir / pathlib.Path(where).name
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


def _weights_gate(weights: np.ndarray | None, n_records: int | None, unreadable: str | None) -> dict[str, Any]:
    if unreadable is not None:
        return _gate(False, unreadable, None)
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


def _mean_error(run_dir: pathlib.Path, record: RunRecord) -> float | str | None:
    """Mean ``abs_rel_error`` of the diagnostics CSV, else the record's ``mean_error_pct / 100``;
    what is wrong with a diagnostics file that cannot give it."""
    path = run_dir / DIAGNOSTICS
    if path.is_file():
        import pandas as pd

        try:
            errors = pd.read_csv(path, usecols=lambda column: column == "abs_rel_error")
        except (OSError, ValueError) as error:  # pandas' parser and empty-file errors, bytes not UTF-8
            return f"{DIAGNOSTICS} is not a readable CSV ({type(error).__name__}: {error})"
        if "abs_rel_error" not in errors:
            return f"{DIAGNOSTICS} has no abs_rel_error column"
        column = errors["abs_rel_error"]
        if column.dtype.kind not in "iuf":  # pandas reads a column of numbers (and blanks) as numbers
            text = [v for v in column.tolist() if not isinstance(v, int | float) or isinstance(v, bool)]
            shown = repr(text[0]) if text else column.dtype
            return f"{DIAGNOSTICS}'s abs_rel_error holds {len(text)} value(s) that are not numbers ({shown})"
        return float(column.to_numpy(np.float64).mean())
    return None if record.mean_error_pct is None else float(record.mean_error_pct) / 100
