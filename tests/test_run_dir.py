"""A fit's run directory holds one run: what an earlier run wrote there and this one did not is gone."""

import json

import jaxcal.io
from builders.synthetic_problem import synthetic_package
from jaxcal.cli import main

SMALL = dict(n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5)


def test_a_resume_without_a_log_leaves_no_earlier_log(tmp_path):
    path = jaxcal.io.save_package(synthetic_package(600, **SMALL), tmp_path / "package.npz")
    output = tmp_path / "run" / "w.npy"
    fit = ["fit", "--package-path", str(path), "--output", str(output), "--all-active-targets", "--quiet"]
    assert main([*fit, "--epochs", "6", "--log-freq", "3", "--holdout-fraction", "0.2"]) == 0
    written = {p.name for p in output.parent.iterdir()}
    assert {"calibration_log.csv", "holdout_log.csv", "holdout_log.json", "holdout_log.png"} <= written
    assert main([*fit, "--epochs", "4", "--resume-from", str(output), "--holdout-fraction", "0.2"]) == 0
    left = {p.name for p in output.parent.iterdir()}
    assert "calibration_log.csv" not in left and "holdout_log.csv" in left
    record = json.loads((output.parent / "unified_run_config.json").read_text())
    assert set(record["artifacts"]) <= left and "calibration_log.csv" not in record["artifacts"]
    assert main([*fit, "--epochs", "2"]) == 0  # a fresh fit without a split: no held-out log either
    assert not any(p.name.startswith("holdout_log") for p in output.parent.iterdir())
