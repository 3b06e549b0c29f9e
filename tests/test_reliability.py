"""What a careless user must not lose or be told wrongly (issue "Reliability"), through the installed
command: no command writes over a file it reads, and no fit reports non-finite or diverged weights
as a success. Each refusal is one line, a non-zero exit, and leaves the inputs byte for byte."""

import hashlib
import shutil

import numpy as np
import pytest
from test_cli import SMALL, assert_user_error, jaxcal_cli

import jaxcal.io
from builders.synthetic_problem import synthetic_package


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def package():
    return synthetic_package(600, **SMALL)


@pytest.fixture
def package_path(package, tmp_path):
    return jaxcal.io.save_package(package, tmp_path / "package.npz")


def test_fit_never_writes_over_its_package_or_target_config(package_path, tmp_path):
    before = _digest(package_path)
    config = tmp_path / "targets.yaml"
    config.write_text("exclude: []\n")
    result = jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        tmp_path / "w.npy",
        "--epochs",
        "2",
        "--checkpoint-output",
        package_path,
        check=False,
    )
    assert_user_error(result, str(package_path), "--package-path")
    # A package named as the checkpoint of --output, and a target config named as the run config.
    beside = tmp_path / "w.checkpoint.npz"
    shutil.copy(package_path, beside)
    result = jaxcal_cli("fit", "--package-path", beside, "--output", tmp_path / "w.npy", "--epochs", "2", check=False)
    assert_user_error(result, "w.checkpoint.npz", "--package-path")
    named = tmp_path / "unified_run_config.json"
    shutil.copy(config, named)
    result = jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        tmp_path / "w.npy",
        "--epochs",
        "2",
        "--target-config",
        named,
        check=False,
    )
    assert_user_error(result, "unified_run_config.json", "--target-config")
    assert _digest(package_path) == before and _digest(beside) == before
    assert named.read_text() == "exclude: []\n" and not (tmp_path / "w.npy").exists()


def test_derive_and_export_never_write_over_their_inputs(package_path, tmp_path):
    run = tmp_path / "parent"
    jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        run / "calibration_weights.npy",
        "--epochs",
        "3",
        "--lambda-l0",
        "0",
        "--quiet",
    )
    weights = run / "calibration_weights.npy"
    before = _digest(weights)
    result = jaxcal_cli(
        "derive",
        "--package",
        package_path,
        "--parent-weights",
        weights,
        "--budget",
        "300",
        "--output",
        run,
        check=False,
    )
    assert_user_error(result, "calibration_weights.npy", "--parent-weights")
    for output in (package_path, weights):
        result = jaxcal_cli("export", package_path, weights, output, check=False)
        assert_user_error(result, output.name)
    assert _digest(weights) == before


def test_a_target_beyond_float32_is_refused_before_the_fit(package, tmp_path):
    huge = package.targets.assign(value=np.where(np.arange(package.n_targets) == 3, 1e300, package.target_values))
    path = jaxcal.io.save_package(
        jaxcal.io.CalibrationPackage.create(package.matrix, huge, package.target_names), tmp_path / "huge.npz"
    )
    result = jaxcal_cli(
        "fit",
        "--package-path",
        path,
        "--output",
        tmp_path / "w.npy",
        "--epochs",
        "2",
        "--all-active-targets",
        check=False,
    )
    assert_user_error(result, "too large for float32", "target 3 is 1e+300")
    assert not (tmp_path / "w.npy").exists()


def test_a_diverged_fit_writes_no_weights(package_path, tmp_path):
    """At learning rate 1000 the log-weights leap far below 0: every weight ends at 0 (100% error
    on every target); the weights are refused, not written as a result."""
    output = tmp_path / "w.npy"
    result = jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        output,
        "--epochs",
        "20",
        "--learning-rate",
        "1000",
        "--lambda-l0",
        "0",
        check=False,
    )
    assert_user_error(result, "the fit failed", "every weight is 0")
    assert not output.exists() and not (tmp_path / "unified_run_config.json").exists()


@pytest.mark.parametrize(
    "weights, losses, reason",
    [
        ([1.0, np.nan, np.inf], [3.0, 2.0], "2 of the 3 weights are not finite"),
        ([0.0, 0.0], [3.0, 2.0], "every weight is 0"),
        ([1.0, 2.0], [3.0, np.nan], "the objective is nan"),
        ([1.0, 2.0], [3.0, 31.0], "the objective rose from 3 to 31"),
        ([1.0, 0.0], [3.0, 29.0], None),
    ],
)
def test_which_outcomes_are_refused(weights, losses, reason):
    from types import SimpleNamespace

    from jaxcal.runs import FitOutcome

    outcome = FitOutcome(
        result=SimpleNamespace(weights=np.asarray(weights)),
        losses=np.asarray(losses),
        epochs=len(losses),
        holdout=None,
        stopped_by=None,
    )
    failure = outcome.failure()
    assert failure == reason if reason is None else reason in failure
