"""`jaxcal gates`: each gate on a hand-made run directory, the JSON and the exit codes."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxcal.cli import main
from jaxcal.io import sha256_file


def _run_dir(path, weights, *, holdout=None, abs_rel_errors=(0.1, 0.3), **config):
    path.mkdir(exist_ok=True)
    np.save(path / "calibration_weights.npy", np.asarray(weights, np.float32))
    errors = np.asarray(abs_rel_errors)
    pd.DataFrame(
        {
            "target": [f"t{i}" for i in range(errors.size)],
            "true_value": 1.0,
            "estimate": 1 + errors,
            "rel_error": errors,
            "abs_rel_error": errors,
            "achievable": True,
        }
    ).to_csv(path / "unified_diagnostics.csv", index=False)
    artifacts = {name: sha256_file(path / name) for name in ("calibration_weights.npy", "unified_diagnostics.csv")}
    record = {"n_records": len(weights), "artifacts": artifacts} | config
    if holdout is not None:
        record["holdout"] = {"holdout_loss": holdout, "best_epoch": 7, "stop_reason": "early_stopping"}
    (path / "unified_run_config.json").write_text(json.dumps(record))
    return path


def _gates(path, *args):
    code = main(["gates", str(path), *args])
    return code, json.loads((path / "artifact_gates.json").read_text())


def test_a_healthy_run_passes(tmp_path, capsys):
    run = _run_dir(tmp_path / "mp-300k", np.linspace(1, 2, 50), holdout=0.04)
    code, report = _gates(run, "--max-holdout-loss", "0.05", "--max-mean-error", "0.25", "--max-records", "50")
    assert code == 0 and report["summary"]["status"] == "passed"
    assert report["schema_version"] == 1 and report["product"] == "mp-300k" and report["generated_at"]
    assert set(report["gates"]) == {
        "artifacts_intact",
        "weights_valid",
        "no_collapse",
        "holdout_loss",
        "mean_error",
        "records_within_budget",
    }
    assert report["gates"]["mean_error"]["metrics"] == {"value": pytest.approx(0.2), "limit": 0.25}
    w = np.linspace(1, 2, 50, dtype=np.float32).astype(np.float64)
    health = report["gates"]["no_collapse"]["metrics"]
    assert health["effective_sample_size"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert report["artifacts"]["calibration_weights.npy"] == sha256_file(run / "calibration_weights.npy")
    assert "passed" in capsys.readouterr().out


def test_each_gate_fails_on_its_own_problem(tmp_path):
    run = _run_dir(tmp_path / "a", np.linspace(1, 2, 50), holdout=0.06)
    code, report = _gates(run, "--max-holdout-loss", "0.05", "--max-mean-error", "0.15", "--max-records", "49")
    assert code == 1 and report["summary"]["status"] == "failed"
    assert report["summary"]["fail"] == ["holdout_loss", "mean_error", "records_within_budget"]

    tampered = _run_dir(tmp_path / "b", np.ones(10))
    np.save(tampered / "calibration_weights.npy", np.full(10, 2.0, np.float32))
    code, report = _gates(tampered)
    assert code == 1 and report["gates"]["artifacts_intact"]["metrics"]["problems"] == {
        "calibration_weights.npy": "calibration_weights.npy: sha256 differs from the run record"
    }

    collapsed = _run_dir(tmp_path / "c", np.r_[1e6, np.full(999, 1e-3)])
    code, report = _gates(collapsed)
    assert code == 1 and report["summary"]["fail"] == ["no_collapse"]

    negative = _run_dir(tmp_path / "d", np.r_[-1.0, np.ones(9)], n_records=11)
    code, report = _gates(negative, "--min-ess-ratio", "0.5")
    assert report["gates"]["weights_valid"]["metrics"] == {
        "n_weights": 10,
        "n_records_expected": 11,
        "n_not_finite": 0,
        "n_negative": 1,
    }
    assert report["gates"]["ess_ratio"]["status"] == "pass"  # 9 ones: ESS 9 of 9 positive


def test_missing_measurements_make_the_report_incomplete(tmp_path):
    run = _run_dir(tmp_path / "run", np.ones(5))
    code, report = _gates(run, "--max-holdout-loss", "1.0", "--product", "mp-3m")
    assert code == 2 and report["summary"] == {
        "status": "incomplete",
        "pass": ["artifacts_intact", "weights_valid", "no_collapse"],
        "fail": [],
        "unmeasured": ["holdout_loss"],
    }
    assert report["product"] == "mp-3m"

    tier = _run_dir(tmp_path / "tier", np.r_[np.ones(4), np.zeros(6)], tier={"budget": 4})
    code, report = _gates(tier)
    assert code == 0 and report["gates"]["records_within_budget"]["metrics"] == {"value": 4, "limit": 4}


def test_artifacts_recorded_by_logical_name(tmp_path):
    """`jaxcal fit` records {"weights": sha256, ...}: a file of the run must carry each digest."""
    run = _run_dir(tmp_path / "run", np.ones(5))
    config = json.loads((run / "unified_run_config.json").read_text())
    config["artifacts"] = {
        "weights": sha256_file(run / "calibration_weights.npy"),
        "diagnostics": {"path": "unified_diagnostics.csv", "sha256": "0" * 64},
    }
    (run / "unified_run_config.json").write_text(json.dumps(config))
    code, report = _gates(run)
    assert code == 1 and report["gates"]["artifacts_intact"]["metrics"]["problems"] == {
        "diagnostics": "unified_diagnostics.csv: sha256 differs from the run record"
    }
    np.save(run / "calibration_weights.npy", np.full(5, 2.0, np.float32))
    code, report = _gates(run)
    assert set(report["gates"]["artifacts_intact"]["metrics"]["problems"]) == {"weights", "diagnostics"}


def test_gates_read_a_jaxcal_fit_run(tmp_path):
    from _workflow_problem import small_package

    import jaxcal.io

    jaxcal.io.save_package(small_package(200)[0], tmp_path / "p.npz")
    run = tmp_path / "mp-200"
    fit = [
        "fit",
        "--package-path",
        str(tmp_path / "p.npz"),
        "--output",
        str(run / "calibration_weights.npy"),
        "--epochs",
        "5",
        "--all-active-targets",
        "--quiet",
    ]
    assert main(fit) == 0
    code, report = _gates(run, "--max-mean-error", "10")
    assert code == 0 and report["summary"]["pass"] == ["artifacts_intact", "weights_valid", "no_collapse", "mean_error"]
    assert report["gates"]["no_collapse"]["metrics"]["n_records"] == 200


def test_a_missing_run_directory_is_a_one_line_error(tmp_path, capsys):
    assert main(["gates", str(tmp_path / "nope")]) == 1
    assert "run directory not found" in capsys.readouterr().err
