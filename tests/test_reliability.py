"""What a careless user must not lose or be told wrongly (issue "Reliability"), through the installed
command: no command writes over a file it reads, and no fit reports non-finite or diverged weights
as a success. Each refusal is one line, a non-zero exit, and leaves the inputs byte for byte."""

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from test_cli import JAXCAL, SMALL, assert_user_error, jaxcal_cli

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
    from typing import Any, cast

    from jaxcal.runs import FitOutcome

    outcome = FitOutcome(
        result=cast(Any, SimpleNamespace(weights=np.asarray(weights))),
        losses=np.asarray(losses),
        epochs=len(losses),
        holdout=None,
        stopped_by=None,
    )
    failure = outcome.failure()
    assert failure == reason if reason is None else reason in failure


def _fit(package_path, output, *flags):
    jaxcal_cli("fit", "--package-path", package_path, "--output", output, "--quiet", *flags)
    return output


def _rewrite(checkpoint, path, **members):
    """A copy of ``checkpoint`` at ``path`` with some members replaced (None: removed)."""
    with np.load(checkpoint) as npz:
        files = dict(npz.items())
    files |= members
    np.savez(path, **{name: value for name, value in files.items() if value is not None})
    return path


def _record(directory):
    return json.loads((directory / "unified_run_config.json").read_text())


@pytest.fixture(scope="module")
def gated_checkpoint(package, tmp_path_factory):
    """A 3-epoch fit with gates at beta 0.5 and seed 7: its run directory."""
    directory = tmp_path_factory.mktemp("gated")
    path = jaxcal.io.save_package(package, directory / "package.npz")
    _fit(path, directory / "w.npy", "--epochs", 3, "--lambda-l0", 1e-4, "--beta", 0.5, "--seed", 7)
    return directory


@pytest.mark.parametrize(
    "member, phrase",
    [("log_weight", "log_weight holds 1 non-finite"), ("opt_state/0005", "opt_state/0005 (optimizer state) holds")],
)
def test_a_checkpoint_of_non_finite_numbers_is_refused(gated_checkpoint, member, phrase, tmp_path):
    """NaN parameters, or an infinite Adam moment, are a diverged fit's: resuming them would only
    run NaN weights, so the checkpoint is refused before the fit."""
    source = gated_checkpoint / "w.checkpoint.npz"
    with np.load(source) as npz:
        bad = npz[member].copy()
    bad.flat[3] = np.nan if member == "log_weight" else np.inf
    checkpoint = _rewrite(source, tmp_path / "bad.npz", **{member: bad})
    before = _digest(checkpoint)
    args = ["--package-path", gated_checkpoint / "package.npz", "--output", tmp_path / "out" / "w.npy"]
    result = jaxcal_cli("fit", *args, "--resume-from", checkpoint, "--lambda-l0", 1e-4, "--beta", 0.5, check=False)
    assert_user_error(result, "cannot be resumed", phrase)
    assert _digest(checkpoint) == before and not (tmp_path / "out").exists()


def test_a_resume_keeps_and_records_the_checkpoints_beta_and_key(gated_checkpoint, tmp_path):
    """beta is part of the fitted model and the PRNG key is in the checkpoint: a resume asking for
    another beta is refused, a --seed it cannot use is warned about, and the record names the
    beta, seed and key the fit really continued."""
    common = ["--package-path", gated_checkpoint / "package.npz", "--lambda-l0", 1e-4, "--epochs", 2]
    common += ["--resume-from", gated_checkpoint / "w.checkpoint.npz"]
    refused = jaxcal_cli("fit", *common, "--output", tmp_path / "x" / "w.npy", "--beta", 0.9, check=False)
    assert_user_error(refused, "beta 0.5, this run asks for 0.9", "--beta 0.5")
    assert not (tmp_path / "x").exists()
    resumed = jaxcal_cli("fit", *common, "--output", tmp_path / "y" / "w.npy", "--beta", 0.5, "--seed", 8, "--quiet")
    assert "--seed 8 is not used" in resumed.stderr and "(seed 7)" in resumed.stderr
    with np.load(gated_checkpoint / "w.checkpoint.npz") as npz:
        key = npz["key_data"].tolist()
    record = _record(tmp_path / "y")["hyperparameters"]
    assert (record["beta"], record["seed"], record["prng_key"]) == (0.5, 7, key)
    assert _record(tmp_path / "y")["seed"] == 7
    assert jaxcal.io.load_checkpoint(tmp_path / "y" / "w.checkpoint.npz").hyperparameters["seed"] == 7


HOLDOUT = ("--all-active-targets", "--holdout-fraction", 0.3, "--lambda-l0", 0, "--early-stopping-patience", 6)


def test_a_held_out_fit_stopped_by_sigterm_resumes_as_the_straight_run(package_path, tmp_path, monkeypatch):
    """The checkpoint carries the held-out log, the best epoch's fit and so the patience count:
    stopped by SIGTERM after the best epoch and resumed, the fit keeps the same best weights and
    stops at the same epoch, with the same held-out log, as the fit that never stopped."""
    from jaxcal.cli import main
    from jaxcal.runs._observers import Progress

    common = [str(a) for a in ("--package-path", package_path, *HOLDOUT, "--log-freq", 2)]
    _fit(package_path, tmp_path / "straight" / "w.npy", *common[2:], "--epochs", 400)
    straight = _record(tmp_path / "straight")["holdout"]
    best, stopped = straight["best_epoch"], straight["stopped_epoch"]
    assert best + 2 < stopped < 400  # room to stop between the best epoch and early stopping

    shown = Progress.chunk_done

    def chunk_done(self, chunk):  # SIGTERM at the best epoch: the run stops after the next chunk
        if chunk.epoch == best:
            signal.raise_signal(signal.SIGTERM)
        shown(self, chunk)

    monkeypatch.setattr(Progress, "chunk_done", chunk_done)
    first = tmp_path / "first" / "w.npy"
    assert main(["fit", *common, "--output", str(first), "--epochs", "400", "--quiet"]) == 130
    checkpoint = first.with_suffix(".checkpoint.npz")
    saved = jaxcal.io.load_checkpoint(checkpoint)
    assert saved.holdout is not None and saved.epochs == best + 2 and saved.holdout.best_epochs == best
    assert [row["epoch"] for row in saved.holdout.log] == list(range(2, best + 3, 2))

    resumed = tmp_path / "resumed" / "w.npy"
    _fit(package_path, resumed, *common[2:], "--epochs", 400 - saved.epochs, "--resume-from", checkpoint)
    np.testing.assert_array_equal(np.load(resumed), np.load(tmp_path / "straight" / "w.npy"))
    record = _record(tmp_path / "resumed")
    assert record["holdout"] == straight and record["epochs_completed"] == stopped
    for name in ("holdout_log.csv", "holdout_log.json"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "straight" / name).read_text()


def test_an_early_stopped_fit_records_its_own_checkpoint(package_path, tmp_path):
    """Without --log-freq a checkpoint is written at the end: early stopping is an end, so the fit
    writes its own and records it, never the one an earlier run left beside the weights (which a
    later --resume-from of the weights would otherwise silently continue)."""
    output = tmp_path / "w.npy"
    _fit(package_path, output, *HOLDOUT, "--epochs", 3)
    stale = _digest(tmp_path / "w.checkpoint.npz")
    _fit(package_path, output, *HOLDOUT, "--epochs", 400)
    record = _record(tmp_path)
    assert record["holdout"]["stop_reason"] == "early_stopping"
    checkpoint = tmp_path / "w.checkpoint.npz"
    assert record["checkpoint_output"] == str(checkpoint)
    assert record["artifacts"]["w.checkpoint.npz"] == f"sha256:{_digest(checkpoint)}" != f"sha256:{stale}"
    saved = jaxcal.io.load_checkpoint(checkpoint)
    assert saved.holdout is not None
    assert (saved.epochs, saved.holdout.best_epochs) == (
        record["holdout"]["stopped_epoch"],
        record["holdout"]["best_epoch"],
    )


def test_a_fit_of_no_epochs_writes_its_own_checkpoint(gated_checkpoint, tmp_path):
    """--epochs 0 runs no chunk, yet its weights get their own checkpoint (where it started), not
    the earlier run's left beside them."""
    shutil.copy(gated_checkpoint / "w.checkpoint.npz", tmp_path / "w.checkpoint.npz")
    _fit(gated_checkpoint / "package.npz", tmp_path / "w.npy", "--epochs", 0, "--lambda-l0", 1e-4)
    record = _record(tmp_path)
    assert record["artifacts"]["w.checkpoint.npz"] == f"sha256:{_digest(tmp_path / 'w.checkpoint.npz')}"
    assert jaxcal.io.load_checkpoint(tmp_path / "w.checkpoint.npz").epochs == 0 == record["epochs_completed"]


def test_two_fits_into_one_directory_do_not_interleave(package_path, tmp_path):
    """A fit holds its output directory: a second fit into it is refused (one line, nothing
    written) while the first runs; the first, stopped, leaves its own whole log and no temporary
    file."""
    output = tmp_path / "w.npy"
    args = ["fit", "--package-path", package_path, "--output", output, "--log-freq", 20, "--lambda-l0", 1e-4]
    first = subprocess.Popen([str(JAXCAL), *map(str, args), "--epochs", "200000"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "w.checkpoint.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        second = jaxcal_cli(*args, "--epochs", 2, "--checkpoint-output", tmp_path / "other.npz", check=False)
        assert_user_error(second, "another jaxcal run is writing to", str(tmp_path))
        assert not (tmp_path / "other.npz").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr
    log = pd.read_csv(tmp_path / "calibration_log.csv")
    epochs = log["epoch"].to_numpy()
    assert len(log) == len(set(epochs)) * log["target_name"].nunique() and (epochs % 20 == 0).all()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_temporary_names_are_each_writers_own(package, tmp_path):
    from jaxcal.runs import CalibrationLog

    logs = [CalibrationLog(tmp_path / "calibration_log.csv", package) for _ in range(2)]
    assert logs[0].partial != logs[1].partial and logs[0].partial.exists() and logs[1].partial.exists()
    for log in logs:
        log.close(completed=False)
    jaxcal.io.atomic_write(tmp_path / "a.txt", lambda f: f.write("whole"), mode="w")
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"] and (tmp_path / "a.txt").read_text() == "whole"


def test_a_run_directory_is_held_by_one_run(tmp_path, monkeypatch):
    import errno
    import fcntl

    from jaxcal.io._files import run_dir_lock

    held = pytest.raises(ValueError, match="another jaxcal run is writing to")
    with run_dir_lock(tmp_path / "run"), held, run_dir_lock(tmp_path / "run"):
        pass
    with run_dir_lock(tmp_path / "run"):  # released
        pass

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.warns(UserWarning, match="cannot lock"), run_dir_lock(tmp_path / "run"):
        pass
    assert list((tmp_path / "run").iterdir()) == []


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    """A bug (here planted: gates' report raises) is one line naming the exception, and --debug
    adds the traceback."""
    planted = (
        "import sys, jaxcal.runs\n"
        "def broken(*args, **kwargs):\n"
        "    raise AttributeError('planted')\n"
        "jaxcal.runs.gate_report = broken\n"
        "from jaxcal.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )

    def run(*args):
        return subprocess.run([sys.executable, "-c", planted, *args], capture_output=True, text=True, timeout=300)

    plain = run("gates", str(tmp_path))
    assert_user_error(plain, "AttributeError: planted", "(run with --debug for the traceback)")
    debug = run("--debug", "gates", str(tmp_path))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("jaxcal gates: error: AttributeError: planted")


@pytest.mark.parametrize(
    "case",
    [
        "seed 2**63",
        "negative seed",
        "weights of strings",
        "structured weights",
        "output is a directory",
        "output under a file",
        "signature is a list",
        "presets value is text",
        "presets value is null",
        "presets value is a list",
        "presets top level is a list",
        "validate --strict nan",
        "sweep output under a file",
        "derive seed 2**63",
        "epochs past the history bound",
    ],
)
def test_mistakes_are_one_line_before_any_work(case, gated_checkpoint, tmp_path):
    package_path = gated_checkpoint / "package.npz"
    output = tmp_path / "out" / "w.npy"
    args = ["fit", "--package-path", package_path, "--output", output, "--epochs", 2]
    inputs = [package_path]
    presets = {
        "presets value is text": "fast:\n  lambda_l0: 1e-4\n",
        "presets value is null": "fast:\n  beta: null\n",
        "presets value is a list": "fast:\n  epochs: [1, 2]\n",
        "presets top level is a list": "- fast\n",
    }
    if case in presets:
        inputs.append(tmp_path / "presets.yaml")
        inputs[-1].write_text(presets[case])
        args += ["--presets-file", inputs[-1], "--hyperparameters", "fast"]
    phrase = {
        "seed 2**63": "--seed must be a whole number from 0 to 2**32 - 1",
        "negative seed": "--seed must be a whole number",
        "weights of strings": "must hold 600 numbers (weights), got <U",
        "structured weights": "must hold 600 numbers (weights), got [(",
        "output is a directory": "is a directory",
        "output under a file": "is not a directory",
        "signature is a list": "signature must be a JSON object, got list",
        "presets value is text": "lambda_l0 of set 'fast' in",
        "presets value is null": "beta of set 'fast'",
        "presets value is a list": "epochs of set 'fast'",
        "presets top level is a list": "must map set names to settings, got a list",
        "validate --strict nan": "--strict must be a finite non-negative ratio",
        "sweep output under a file": "is not a directory",
        "derive seed 2**63": "--seed must be a whole number",
        "epochs past the history bound": "more than one run keeps a loss history for (100,000,000",
    }[case]
    if case == "seed 2**63":
        args += ["--seed", 2**63]
    elif case == "epochs past the history bound":
        args[-1] = 10**8 + 1
    elif case == "negative seed":
        args += ["--seed", -1]
    elif case in ("weights of strings", "structured weights"):
        n = 600
        weights = np.full(n, "1.0") if case == "weights of strings" else np.zeros(n, [("w", "f8"), ("i", "i4")])
        inputs.append(tmp_path / "weights.npy")
        np.save(inputs[-1], weights)
        args += ["--resume-from", inputs[-1]]
    elif case == "output is a directory":
        output.mkdir(parents=True)
        args[4] = output
    elif case in ("output under a file", "sweep output under a file"):
        (tmp_path / "out").write_text("a file")
        inputs.append(tmp_path / "out")
    elif case == "signature is a list":
        inputs.append(_rewrite(gated_checkpoint / "w.checkpoint.npz", tmp_path / "c.npz", signature=np.array("[1]")))
        args += ["--resume-from", inputs[-1], "--lambda-l0", 1e-4, "--beta", 0.5]
    elif case == "validate --strict nan":
        args = ["validate", package_path, "--strict", "nan"]
    elif case == "sweep output under a file":
        args = ["sweep", "--package", package_path, "--lambda-l0", 1e-4, "--output", tmp_path / "out" / "sweep"]
    elif case == "derive seed 2**63":
        args = ["derive", "--package", package_path, "--parent-weights", gated_checkpoint / "w.npy"]
        args += ["--budget", 100, "--output", tmp_path / "derive", "--seed", 2**63]
    before = [_digest(path) for path in inputs]
    assert_user_error(jaxcal_cli(*args, check=False), phrase)
    assert [_digest(path) for path in inputs] == before
    assert not output.is_file() and not (tmp_path / "derive").exists()
    if output.is_dir():
        assert list(output.iterdir()) == []
