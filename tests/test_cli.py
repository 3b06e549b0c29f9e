"""The installed ``jaxcal`` command, run as a user runs it: a subprocess per call."""

import dataclasses
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import jaxcal
import jaxcal.io
import jaxcal.runs
from builders.synthetic_problem import synthetic_package

JAXCAL = pathlib.Path(sys.executable).parent / "jaxcal"
SMALL = dict(n_base=200, n_states=2, n_national=20, per_state=8, per_district=6, nonzeros=(6, 4, 3), seed=5)


def jaxcal_cli(*args, check=True, cwd=None):
    result = subprocess.run([str(JAXCAL), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"jaxcal {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def assert_user_error(result, *phrases, code=1):
    """One clear line on stderr, the expected exit code, no traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in error_lines[0], error_lines[0]


@pytest.fixture(scope="module")
def package():
    return synthetic_package(600, **SMALL)


@pytest.fixture(scope="module")
def package_path(package, tmp_path_factory):
    return jaxcal.io.save_package(package, tmp_path_factory.mktemp("package") / "package.npz")


def test_package_round_trip_is_exact(package, tmp_path):
    package = jaxcal.io.CalibrationPackage.create(
        package.matrix,
        package.targets,
        package.target_names,
        initial_weights=np.linspace(1, 2, package.n_records),
        geography=dict(package.geography),
        metadata={"seed": 5, "note": "round trip"},
    )
    loaded = jaxcal.io.load_package(jaxcal.io.save_package(package, tmp_path / "p.npz"))
    assert (loaded.matrix != package.matrix).nnz == 0
    assert loaded.matrix.indices.dtype == np.int32 and loaded.matrix.data.dtype == np.float32
    pd.testing.assert_frame_equal(loaded.targets, package.targets)
    assert loaded.targets["domain_variable"].isna().sum() == package.targets["domain_variable"].isna().sum() > 0
    assert loaded.target_names == package.target_names
    np.testing.assert_array_equal(loaded.initial_weights, package.initial_weights)
    for key in ("state_fips", "cd_geoid"):
        np.testing.assert_array_equal(loaded.geography[key], package.geography[key])
    assert dict(loaded.metadata) == dict(package.metadata)
    assert loaded.signature() == package.signature()


def test_pickle_is_refused_without_opt_in_and_converted_with_it(package, tmp_path):
    raw = {
        "X_sparse": package.matrix,
        "targets_df": package.targets,
        "target_names": list(package.target_names),
        "metadata": {"n_clones": 3},
        "initial_weights": np.full(package.n_records, 7.0),
        "cd_geoid": package.geography["cd_geoid"],
        "block_geoid": None,
    }
    pkl = tmp_path / "calibration_package.pkl"
    pkl.write_bytes(pickle.dumps(raw, protocol=pickle.HIGHEST_PROTOCOL))
    for command in (["info", pkl], ["validate", pkl], ["fit", "--package-path", pkl, "--output", tmp_path / "w.npy"]):
        assert_user_error(jaxcal_cli(*command, check=False), "pickle", "jaxcal convert")
    assert_user_error(jaxcal_cli("convert", pkl, tmp_path / "p.npz", check=False), "--allow-pickle")
    assert not (tmp_path / "p.npz").exists() and not (tmp_path / "w.npy").exists()

    printed = jaxcal_cli("convert", pkl, tmp_path / "p.npz", "--allow-pickle").stdout
    assert f"{package.n_targets:,} targets x {package.n_records:,} records" in printed
    converted = jaxcal.io.load_package(tmp_path / "p.npz")
    assert (converted.matrix != package.matrix).nnz == 0
    np.testing.assert_array_equal(converted.initial_weights, 7.0)
    np.testing.assert_array_equal(converted.geography["cd_geoid"], package.geography["cd_geoid"])
    assert converted.metadata["n_clones"] == 3


def test_info_counts_targets_by_level_and_variable(package, package_path):
    printed = jaxcal_cli("info", package_path).stdout
    assert f"Matrix:  {package.n_targets:,} targets x {package.n_records:,} columns" in printed
    levels = package.targets["geo_level"].value_counts()
    for level, count in levels.items():
        assert f"  {level:<12s} {count:>8,}" in printed
    n_district_age = (
        (package.targets["variable"] == "person_count") & (package.targets["geo_level"] == "district")
    ).sum()
    assert f"  {'person_count':<35s} {'district':<12s} {n_district_age:>8,}" in printed


def test_target_config_semantics():
    targets = pd.DataFrame(
        {
            "variable": ["snap", "snap", "snap", "agi", "agi", "pop"],
            "geo_level": ["national", "state", "state", "state", "district", "district"],
            "geographic_id": ["US", "1", "2", "1", "0101", "0101"],
            "domain_variable": [None, None, "snap", "agi", "agi", "age"],
            "value": [1.0] * 6,
        }
    )
    mask = jaxcal.io.target_config_mask
    config = jaxcal.io.check_target_config
    # A rule without domain_variable matches every domain of its variable and level.
    assert mask(targets, config({"include": [{"variable": "snap", "geo_level": "state"}]})).tolist() == [
        0,
        1,
        1,
        0,
        0,
        0,
    ]
    assert mask(targets, config({"exclude": [{"variable": "snap", "domain_variable": "snap"}]})).tolist() == [
        1,
        1,
        0,
        1,
        1,
        1,
    ]
    both = {
        "include": [{"variable": "snap"}, {"variable": "agi"}],
        "exclude": [{"variable": "agi", "geo_level": "district"}],
    }
    assert mask(targets, config(both)).tolist() == [1, 1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="'variable'"):
        config({"include": [{"geo_level": "state"}]})


def test_fit_writes_policyengine_outputs(package, package_path, tmp_path):
    config = tmp_path / "targets.yaml"
    config.write_text("exclude:\n  - variable: v1_income\n    geo_level: state\n")
    output = tmp_path / "run" / "weights.npy"
    result = jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        output,
        "--epochs",
        12,
        "--log-freq",
        5,
        "--target-config",
        config,
        "--lambda-l0",
        1e-4,
        "--seed",
        3,
    )
    assert "mean rel error" in result.stdout and str(output) in result.stdout
    kept = ~((package.targets["variable"] == "v1_income") & (package.targets["geo_level"] == "state")).to_numpy()
    weights = np.load(output)
    assert weights.dtype == np.float32 and weights.shape == (package.n_records,)

    diagnostics = pd.read_csv(output.parent / "unified_diagnostics.csv")
    assert list(diagnostics.columns) == ["target", "true_value", "estimate", "rel_error", "abs_rel_error", "achievable"]
    assert list(diagnostics["target"]) == [n for n, k in zip(package.target_names, kept) if k]
    estimate = package.matrix[kept].astype(np.float64) @ weights.astype(np.float64)
    np.testing.assert_allclose(diagnostics["estimate"], estimate, rtol=1e-12)
    truth = package.target_values[kept]
    np.testing.assert_allclose(diagnostics["rel_error"], (estimate - truth) / np.abs(truth), rtol=1e-9)

    log = pd.read_csv(output.parent / "calibration_log.csv")
    assert list(log.columns) == list(jaxcal.runs.PE_LOG_COLUMNS)
    assert sorted(log["epoch"].unique()) == [5, 10, 12]  # every --log-freq epochs and the last
    final = log[log["epoch"] == 12]
    np.testing.assert_allclose(final["estimate"], estimate, rtol=1e-4)
    np.testing.assert_allclose(final["loss"], ((estimate - truth) / truth) ** 2, rtol=1e-3)

    record = json.loads((output.parent / "unified_run_config.json").read_text())
    assert record["n_targets"] == kept.sum() and record["n_records"] == package.n_records
    assert record["hyperparameters"] == {
        "epochs": 12,
        "beta": 0.35,
        "lambda_l0": 1e-4,
        "lambda_l2": 1e-12,
        "learning_rate": 0.15,
        "target_groups": True,
        "optimizer": "pe-adam",
        "seed": 3,
        "device": "auto",
        "devices": None,
        "pe_compat_adam_restarts": False,
        "all_active_targets": False,
    }
    # policyengine-us-data's keys at its places (test_pe_fit compares them with its main's).
    assert (record["lambda_l0"], record["beta"], record["epochs"], record["epochs_total"], record["seed"]) == (
        1e-4,
        0.35,
        12,
        12,
        3,
    )
    assert (record["weight_format"], record["target_config"], record["device"]) == ("clone_level", str(config), "cpu")
    assert record["checkpoint_output"] == str(output.with_suffix(".checkpoint.npz"))
    assert result.stdout.splitlines()[1].startswith("by level: ")  # the headline's second line
    assert result.stdout.splitlines()[2:] == [
        f"OUTPUT_PATH:{output}",
        f"CHECKPOINT_PATH:{output.with_suffix('.checkpoint.npz')}",
        f"CONFIG_PATH:{output.parent / 'unified_run_config.json'}",
        f"LOG_PATH:{output.parent / 'unified_diagnostics.csv'}",
        f"CAL_LOG_PATH:{output.parent / 'calibration_log.csv'}",
    ]
    assert record["weight_nonzero"] == int((weights > 0).sum())
    assert record["weight_sum"] == pytest.approx(float(weights.astype(np.float64).sum()), rel=1e-9)
    assert record["mean_error_pct"] == pytest.approx(100 * np.abs((estimate - truth) / truth).mean(), rel=1e-6)
    assert record["artifacts"][output.name] == "sha256:" + jaxcal.io.sha256_file(output)
    assert set(record["artifacts"]) == {
        "weights.npy",
        "unified_diagnostics.csv",
        "loss_curve.png",
        "weights.checkpoint.npz",
        "calibration_log.csv",
    }
    assert (output.parent / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(output.parent.glob(".*")), "temporary files left behind"


def test_microcalibrate_log_format(package_path, tmp_path):
    output = tmp_path / "w.npy"
    jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        output,
        "--epochs",
        4,
        "--log-freq",
        2,
        "--log-format",
        "microcalibrate",
        "--quiet",
    )
    header = (tmp_path / "calibration_log.csv").read_text().splitlines()[0]
    assert header == ",epoch,loss,target_name,target,estimate,error,abs_error,rel_abs_error"


def test_policyengine_initial_weights_rule(package):
    """Columns of a district with person_count/age rows start at its population / its column count."""
    weights = jaxcal.io.policyengine_initial_weights(package)
    rows = package.targets.index[
        (package.targets["variable"] == "person_count") & (package.targets["geo_level"] == "district")
    ]
    assert len(rows) > 1
    for row in rows:
        columns = package.matrix[[row]].indices
        np.testing.assert_allclose(weights[columns], package.target_values[row] / columns.size)
    untouched = np.setdiff1d(np.arange(package.n_records), package.matrix[rows].indices)
    np.testing.assert_array_equal(weights[untouched], 100.0)


def test_resume_is_bitwise_exact(package_path, tmp_path):
    """60 epochs, then 40 more from the checkpoint (other chunking), equal 100 straight."""
    common = ("--package-path", package_path, "--lambda-l0", 1e-4, "--quiet")
    jaxcal_cli("fit", *common, "--output", tmp_path / "straight" / "w.npy", "--epochs", 100, "--log-freq", 25)
    jaxcal_cli("fit", *common, "--output", tmp_path / "first" / "w.npy", "--epochs", 60, "--log-freq", 20)
    checkpoint = tmp_path / "first" / "w.checkpoint.npz"
    jaxcal_cli("fit", *common, "--output", tmp_path / "resumed" / "w.npy", "--epochs", 40, "--resume-from", checkpoint)
    jaxcal_cli(
        "fit",
        *common,
        "--output",
        tmp_path / "via_npy" / "w.npy",
        "--epochs",
        40,
        "--resume-from",
        tmp_path / "first" / "w.npy",
    )
    straight = np.load(tmp_path / "straight" / "w.npy")
    assert 0 < (straight > 0).sum() < straight.size  # the gates did something
    np.testing.assert_array_equal(np.load(tmp_path / "resumed" / "w.npy"), straight)
    np.testing.assert_array_equal(np.load(tmp_path / "via_npy" / "w.npy"), straight)
    record = json.loads((tmp_path / "resumed" / "unified_run_config.json").read_text())
    assert record["epochs_completed"] == 100


def test_resume_checks_the_problem_and_warns_on_hyperparameters(package, package_path, tmp_path):
    jaxcal_cli("fit", "--package-path", package_path, "--output", tmp_path / "w.npy", "--epochs", 3, "--quiet")
    checkpoint = tmp_path / "w.checkpoint.npz"
    changed = package.targets.assign(value=package.targets["value"] * 1.01)
    other = jaxcal.io.save_package(
        jaxcal.io.CalibrationPackage.create(package.matrix, changed, package.target_names), tmp_path / "o.npz"
    )
    result = jaxcal_cli(
        "fit", "--package-path", other, "--output", tmp_path / "x" / "w.npy", "--resume-from", checkpoint, check=False
    )
    assert_user_error(result, "another problem", "target_values")
    assert not (tmp_path / "x" / "w.npy").exists()

    warned = jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        tmp_path / "y" / "w.npy",
        "--epochs",
        2,
        "--resume-from",
        checkpoint,
        "--learning-rate",
        0.1,
        "--quiet",
    )
    assert "learning_rate 0.15 -> 0.1" in warned.stderr

    bare = tmp_path / "bare.npy"
    np.save(bare, np.full(package.n_records, 3.0))
    jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        tmp_path / "z" / "w.npy",
        "--epochs",
        0,
        "--resume-from",
        bare,
        "--lambda-l0",
        0,
        "--quiet",
    )
    # A warm start with no epochs gives the weights back: as policyengine-us-data, no log-weight
    # jitter on a warm start (a fresh start draws exp(N(0, 0.05)) factors).
    np.testing.assert_array_equal(np.load(tmp_path / "z" / "w.npy"), np.float32(3.0))


def test_pe_compat_restarts_reproduce_a_fresh_fit_per_chunk(package, package_path, tmp_path):
    output = tmp_path / "w.npy"
    jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        output,
        "--epochs",
        9,
        "--log-freq",
        4,
        "--pe-compat-adam-restarts",
        "--all-active-targets",
        "--lambda-l0",
        1e-4,
        "--seed",
        7,
        "--quiet",
    )
    import jax

    init_key, key = jax.random.split(jax.random.key(7))
    model = jaxcal.CalibrationWeights.init(
        package.n_records,
        key=init_key,
        init_weights=jaxcal.io.policyengine_initial_weights(package),
        init_keep_prob=0.999,
        beta=0.35,
    )
    groups = jaxcal.io.policyengine_target_groups(package.targets)
    matrix = package.target_matrix()
    objective = jaxcal.Objective.create(package.n_targets, lambda_l0=1e-4, target_groups=groups)
    for first, n in ((0, 4), (4, 4), (8, 1)):  # l0-python's fit per chunk: a new Adam; jitter only first
        key_n = jax.random.fold_in(key, first)
        result = jaxcal.fit(
            model,
            matrix,
            package.target_values,
            objective,
            key=key_n,
            epochs=n,
            start_epoch=first,
            log_weight_jitter_sd=0.05 if first == 0 else 0.0,
        )
        model = result.model
    np.testing.assert_array_equal(np.load(output), np.asarray(result.weights))


def test_validate_exit_codes(package, package_path, tmp_path):
    passed = jaxcal_cli("validate", package_path, "--n-hardest", 3)
    assert "RESULT: PASS" in passed.stdout and f"Achievable: {package.n_targets:>6,}" in passed.stdout
    ratios = package.row_sums() / package.target_values
    hardest = np.sort(ratios)[:3]
    assert passed.stdout.count("--- Hardest Achievable Targets (3 lowest ratio) ---") == 1
    assert f"{hardest[0]:>10.3g}" in passed.stdout and "row_sum" in passed.stdout  # a header, 3 significant digits

    strict = jaxcal_cli("validate", package_path, "--strict", float(np.sort(ratios)[4]) + 1e-9, check=False)
    assert strict.returncode == 2 and "RESULT: FAIL (5 targets below ratio" in strict.stdout

    matrix = package.matrix.tolil()
    matrix[[0, 3], :] = 0
    impossible = jaxcal.io.save_package(
        jaxcal.io.CalibrationPackage.create(matrix, package.targets, package.target_names), tmp_path / "i.npz"
    )
    failed = jaxcal_cli("validate", impossible, check=False)
    assert failed.returncode == 1 and "RESULT: FAIL (2 impossible targets)" in failed.stdout
    assert package.target_names[3] in failed.stdout
    assert_user_error(jaxcal_cli("validate", tmp_path / "missing.npz", check=False), "not found")


@pytest.mark.parametrize(
    "case",
    [
        "missing package",
        "corrupt package",
        "wrong array lengths",
        "nan targets",
        "weights of wrong length",
        "unwritable output",
        "unknown preset",
        "negative epochs",
        "config keeps nothing",
    ],
)
def test_bad_input_is_one_line_and_no_output(case, package, package_path, tmp_path):
    output = tmp_path / "out" / "w.npy"
    args = ["fit", "--package-path", package_path, "--output", output, "--epochs", 2]
    phrase = {
        "missing package": "not found",
        "corrupt package": "not a readable jaxcal package",
        "wrong array lengths": "targets",
        "nan targets": "finite",
        "weights of wrong length": f"{package.n_records}",
        "unwritable output": "not writable",
        "unknown preset": "unknown hyperparameter set",
        "negative epochs": "--epochs",
        "config keeps nothing": "keeps none",
    }[case]
    if case == "missing package":
        args[2] = tmp_path / "nope.npz"
    elif case == "corrupt package":
        args[2] = tmp_path / "corrupt.npz"
        args[2].write_bytes(b"PK\x03\x04 not really a zip")
    elif case in ("wrong array lengths", "nan targets"):
        with np.load(package_path) as npz:
            files = dict(npz.items())
        if case == "wrong array lengths":
            files["target_names"] = files["target_names"][:-1]
        else:
            files["targets/value"] = np.where(np.arange(package.n_targets) == 2, np.nan, files["targets/value"])
        args[2] = tmp_path / "bad.npz"
        np.savez(args[2], **files)
    elif case == "weights of wrong length":
        np.save(tmp_path / "short.npy", np.ones(package.n_records - 1))
        args += ["--resume-from", tmp_path / "short.npy"]
    elif case == "unwritable output":
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        output = locked / "w.npy"
        args[4] = output
        if os.geteuid() == 0:  # root writes anywhere: use a path under a regular file instead
            (tmp_path / "file").write_text("")
            output = tmp_path / "file" / "w.npy"
            args[4], phrase = output, "cannot create the output directory"
    elif case == "unknown preset":
        args += ["--hyperparameters", "no-such-set"]
    elif case == "negative epochs":
        args[-1] = -5
    elif case == "config keeps nothing":
        (tmp_path / "none.yaml").write_text("include:\n  - variable: no_such_variable\n")
        args += ["--target-config", tmp_path / "none.yaml"]
    assert_user_error(jaxcal_cli(*args, check=False), phrase)
    assert not output.exists()


def test_named_hyperparameter_sets(package_path, tmp_path):
    jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        tmp_path / "w.npy",
        "--hyperparameters",
        "production-national",
        "--epochs",
        3,
        "--quiet",
    )
    record = json.loads((tmp_path / "unified_run_config.json").read_text())["hyperparameters"]
    assert (record["beta"], record["lambda_l0"], record["lambda_l2"], record["epochs"]) == (0.65, 2e-2, 1e-12, 3)
    jaxcal_cli(
        "fit",
        "--package-path",
        package_path,
        "--output",
        tmp_path / "p" / "w.npy",
        "--preset",
        "national",
        "--epochs",
        1,
        "--quiet",
    )
    assert json.loads((tmp_path / "p" / "unified_run_config.json").read_text())["hyperparameters"]["lambda_l0"] == 1e-4


def test_sigterm_writes_a_checkpoint_that_resumes(package_path, tmp_path):
    output = tmp_path / "w.npy"
    process = subprocess.Popen(
        [
            str(JAXCAL),
            "fit",
            "--package-path",
            str(package_path),
            "--output",
            str(output),
            "--epochs",
            "200000",
            "--log-freq",
            "50",
            "--lambda-l0",
            "1e-4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = tmp_path / "w.checkpoint.npz"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    saved = jaxcal.io.load_checkpoint(checkpoint)
    assert saved.epochs > 0 and saved.epochs % 50 == 0
    assert not output.exists()


def test_holdout_early_stopping_keeps_the_best_epoch(package_path, tmp_path):
    common = (
        "--package-path",
        package_path,
        "--all-active-targets",
        "--holdout-fraction",
        0.3,
        "--lambda-l0",
        0,
        "--log-freq",
        2,
        "--quiet",
    )
    jaxcal_cli("fit", *common, "--output", tmp_path / "es" / "w.npy", "--epochs", 400, "--early-stopping-patience", 6)
    record = json.loads((tmp_path / "es" / "unified_run_config.json").read_text())["holdout"]
    log = pd.read_csv(tmp_path / "es" / "holdout_log.csv")
    assert list(log.columns) == [
        "epoch",
        "objective_train_loss",
        "full_loss",
        "train_loss",
        "holdout_loss",
        "weight_sum",
        "positive_record_count",
    ]
    best = int(log["epoch"][log["holdout_loss"].idxmin()])  # min_delta 0: the first lowest evaluation
    assert record["stop_reason"] == "early_stopping" and record["best_epoch"] == best
    assert record["stopped_epoch"] == best + 6 == int(log["epoch"].iloc[-1]) < 400
    # The weights written are the best epoch's: the same fit stopped there by --epochs.
    jaxcal_cli("fit", *common, "--output", tmp_path / "plain" / "w.npy", "--epochs", best)
    np.testing.assert_array_equal(np.load(tmp_path / "es" / "w.npy"), np.load(tmp_path / "plain" / "w.npy"))
    assert (tmp_path / "es" / "holdout_log.png").read_bytes()[:4] == b"\x89PNG"


def test_devices_split_the_records_and_match_one_device(package_path, tmp_path):
    """Four fake CPU devices; without gates the fit draws nothing, so it matches one device."""
    common = ("fit", "--package-path", package_path, "--lambda-l0", 0, "--epochs", 30, "--quiet")
    jaxcal_cli(*common, "--output", tmp_path / "one" / "w.npy")
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_NUM_CPU_DEVICES": "4"}
    four = subprocess.run(
        [
            str(JAXCAL),
            *map(str, common),
            "--output",
            str(tmp_path / "four" / "w.npy"),
            "--devices",
            "4",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert four.returncode == 0, four.stderr
    one, sharded = np.load(tmp_path / "one" / "w.npy"), np.load(tmp_path / "four" / "w.npy")
    np.testing.assert_allclose(sharded, one, rtol=1e-4)
    assert json.loads((tmp_path / "four" / "unified_run_config.json").read_text())["hyperparameters"]["devices"] == 4
    assert_user_error(
        jaxcal_cli(*common, "--output", tmp_path / "x" / "w.npy", "--devices", 3, check=False), "3 devices"
    )
    if (
        "cuda"
        not in subprocess.run(
            [sys.executable, "-c", "import jax; print(jax.default_backend())"], capture_output=True, text=True
        ).stdout
    ):
        no_gpu = jaxcal_cli(*common, "--output", tmp_path / "x" / "w.npy", "--device", "gpu", check=False)
        assert_user_error(no_gpu, "--device gpu", "no gpu devices")
    assert not (tmp_path / "x").exists()


HEAVY_MODULES = ("jax", "jaxlib", "equinox", "optax", "scipy", "pandas", "matplotlib")


def test_help_imports_no_jax():
    """`jaxcal --help` and every `jaxcal COMMAND --help` stay light: registering a command imports
    nothing heavy (the engine's own commands not even numpy); `python -m jaxcal` is the command."""
    every_help = f"""
import argparse, importlib, sys
from jaxcal.cli import _ENGINE_COMMANDS, build_parser
engine = argparse.ArgumentParser().add_subparsers()
for module in _ENGINE_COMMANDS:
    importlib.import_module(module).register(engine)
for command in engine.choices.values():
    command.format_help()
assert "numpy" not in sys.modules, "the engine's commands import numpy to register"
parser = build_parser()
parser.format_help()
(commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
for command in commands.choices.values():
    command.format_help()
heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
assert not heavy, f"--help imports {{heavy}}"
print(sorted(commands.choices))
"""
    listed = subprocess.run([sys.executable, "-P", "-c", every_help], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {"fit", "info", "convert", "validate", "derive", "sweep", "gates"} <= set(eval(listed.stdout))
    for argv in (["--help"], ["fit", "--help"]):
        shown = subprocess.run([sys.executable, "-m", "jaxcal", *argv], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "usage: jaxcal" in shown.stdout, shown.stderr
    assert "--package-path" in shown.stdout and "--holdout-fraction" in shown.stdout


def test_info_shows_where_the_package_came_from(package, tmp_path, capsys):
    """A package built by `jaxcal build` records its dataset, database and target config as flat
    `{role}_path` / `{role}_sha256` keys: `jaxcal info` shows them."""
    from jaxcal.cli import main

    inputs = {}
    for role in ("dataset", "db", "target_config"):
        (tmp_path / role).write_text(role)
        inputs |= jaxcal.io.file_provenance(role, tmp_path / role)
    built = jaxcal.io.CalibrationPackage.create(
        package.matrix, package.targets, package.target_names, metadata={**inputs, "n_base_records": 200}
    )
    assert main(["info", str(jaxcal.io.save_package(built, tmp_path / "built.npz"))]) == 0
    printed = capsys.readouterr().out
    for label, role in (("Dataset", "dataset"), ("Database", "db"), ("Target config", "target_config")):
        assert f"{label}: {inputs[f'{role}_path']}\n" in printed
    assert f"Dataset SHA: {inputs['dataset_sha256'][:12]}\n" in printed
    assert f"DB SHA: {inputs['db_sha256'][:12]}\n" in printed


def test_fit_derive_and_sweep_write_one_run_record_schema(package_path, tmp_path):
    """`fit`, `derive` and `sweep` each leave a unified_run_config.json with the same keys (the
    RunRecord's), each artifact named by its file in the run directory and hashed."""
    from jaxcal.cli import main

    fit = tmp_path / "fit" / "calibration_weights.npy"
    assert main(["fit", "--package-path", str(package_path), "--output", str(fit), "--epochs", "5", "--quiet"]) == 0
    derive = [
        "derive",
        "--package",
        str(package_path),
        "--parent-weights",
        str(fit),
        "--budget",
        "300",
        "--output",
        str(tmp_path / "derive"),
        "--lambda-l0",
        "1e-6",
        "1e-5",
        "--search-epochs",
        "5",
        "--search-rounds",
        "1",
        "--refit-epochs",
        "5",
        "--product",
        "mp-300",
    ]
    assert main(derive) == 0
    sweep = [
        "sweep",
        "--package",
        str(package_path),
        "--lambda-l0",
        "1e-4",
        "1e-2",
        "--epochs",
        "5",
        "--output",
        str(tmp_path / "sweep"),
    ]
    assert main(sweep) == 0
    schema = {field.name for field in dataclasses.fields(jaxcal.runs.RunRecord)}
    for command in ("fit", "derive", "sweep"):
        record = json.loads((tmp_path / command / "unified_run_config.json").read_text())
        assert set(record) == schema and record["command"] == command
        assert record["inputs"]["package_sha256"] == jaxcal.io.sha256_file(package_path)
        assert record["versions"]["jaxcal"] == record["jaxcal_version"] == jaxcal.__version__
        for name, digest in record["artifacts"].items():
            assert digest == "sha256:" + jaxcal.io.sha256_file(tmp_path / command / name), (command, name)
    derived = jaxcal.runs.RunRecord.read(tmp_path / "derive")
    assert (derived.product, derived.n_records, derived.tier["budget"]) == ("mp-300", 300, 300)
    assert derived.inputs["parent_weights_sha256"] == jaxcal.io.sha256_file(fit)
    swept = jaxcal.runs.RunRecord.read(tmp_path / "sweep")
    assert swept.hyperparameters["lambda_l0"] == [1e-4, 1e-2] and swept.weights_file is None
    assert set(swept.artifacts) == {"frontier.csv", "frontier.png"}


def test_optimizer_adam_cosine_is_the_library_fit_and_resumes_only_as_itself(package, package_path, tmp_path):
    """--optimizer adam-cosine gives jaxcal.fit with jaxcal.optimizer_named("adam-cosine") on the
    same problem, bitwise; its checkpoint resumes only with that optimizer."""
    import jax

    output = tmp_path / "cosine" / "w.npy"
    args = ["fit", "--package-path", package_path, "--all-active-targets", "--epochs", 30, "--lambda-l0", 0]
    jaxcal_cli(*args, "--optimizer", "adam-cosine", "--seed", 4, "--output", output, "--quiet")
    record = json.loads((output.parent / "unified_run_config.json").read_text())
    assert record["hyperparameters"]["optimizer"] == "adam-cosine"

    init_key, key = jax.random.split(jax.random.key(4))
    model = jaxcal.CalibrationWeights.init(
        package.n_records,
        key=init_key,
        init_weights=jaxcal.io.policyengine_initial_weights(package),
        init_keep_prob=0.999,
        beta=0.35,
        use_gates=False,
    )
    groups = jaxcal.io.policyengine_target_groups(package.targets)
    objective = jaxcal.Objective.create(package.n_targets, lambda_l0=0.0, target_groups=groups)
    result = jaxcal.fit(
        model,
        package.target_matrix(),
        package.target_values,
        objective,
        key=key,
        epochs=30,
        optimizer=jaxcal.optimizer_named("adam-cosine", learning_rate=0.15, epochs=30),
        log_weight_jitter_sd=0.05,
        chunk_epochs=10,
    )
    np.testing.assert_array_equal(np.load(output), np.asarray(result.weights))

    resumed = jaxcal_cli(
        *args, "--resume-from", output, "--output", tmp_path / "again" / "w.npy", "--quiet", check=False
    )
    assert_user_error(resumed, "fitted with --optimizer adam-cosine")
    restarts = jaxcal_cli(
        *args,
        "--optimizer",
        "adam-cosine",
        "--log-freq",
        5,
        "--pe-compat-adam-restarts",
        "--output",
        tmp_path / "r.npy",
        check=False,
    )
    assert_user_error(restarts, "needs --optimizer pe-adam")
