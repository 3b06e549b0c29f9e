"""More hostile or careless inputs (issue "Reliability"), through the command: target databases
PolicyEngine's schema rules out, tampered run directories given to ``gates``, a checkpoint resumed
on another device count, a zip bomb in a checkpoint. Each is one line on stderr and a non-zero
exit (or a failing gate, or a correct result), inputs unchanged and no stray files."""

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import zipfile
from contextlib import closing

import numpy as np
import pandas as pd
import pytest
from test_cli import JAXCAL, SMALL, jaxcal_cli
from test_reliability_inputs import peak_bytes, refused

import jaxcal.io
from builders.dataset import write_dataset_h5
from builders.synthetic_problem import synthetic_package
from builders.target_db import TargetDatabaseWriter, read_targets
from jaxcal.cli import main


def snapshot(directory):
    """Every file under ``directory``: its path relative to it and its sha256."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# ---------------------------------------------------------------- target databases

LOOSE_TABLES = {
    "stratum_constraints": "stratum_id, constraint_variable, operation, value, notes",
    "targets": "target_id INTEGER PRIMARY KEY, variable, period, stratum_id, reform_id, value, active, tolerance, "
    "source, notes",
}
"""The tables without their types or NOT NULL: columns that store what they are given, as a
hand-made or damaged database may."""


def _loosen(connection, table):
    connection.executescript(
        f"ALTER TABLE {table} RENAME TO old_{table}; CREATE TABLE {table} ({LOOSE_TABLES[table]});"
        f"INSERT INTO {table} SELECT * FROM old_{table}; DROP TABLE old_{table};"
    )


def _without_operation(connection):
    connection.executescript(
        "ALTER TABLE stratum_constraints RENAME TO old; CREATE TABLE stratum_constraints (stratum_id INTEGER, "
        "constraint_variable TEXT, value TEXT, notes TEXT); INSERT INTO stratum_constraints SELECT stratum_id, "
        "constraint_variable, value, notes FROM old; DROP TABLE old;"
    )


def _targets_a_broken_view(connection):
    """``targets`` a view over a table since dropped: it fails only when read."""
    connection.executescript(
        "ALTER TABLE targets RENAME TO real_targets; CREATE TABLE helper (x);"
        "CREATE VIEW targets AS SELECT real_targets.* FROM real_targets JOIN helper; DROP TABLE helper;"
    )


def _sql(*statements, loosen=()):
    def damage(connection):
        for table in loosen:
            _loosen(connection, table)
        for statement in statements:
            connection.execute(statement)

    return damage


BROKEN_DATABASES = {
    "stratum_constraints without operation": (
        _without_operation,
        ["the stratum_constraints table lacks column(s) operation"],
    ),
    "a NULL stratum id in stratum_constraints": (
        _sql("UPDATE stratum_constraints SET stratum_id = NULL", loosen=["stratum_constraints"]),
        ["the stratum_constraints table's stratum_id must be a whole number, got NULL"],
    ),
    "a NULL constraint value": (
        _sql("UPDATE stratum_constraints SET value = NULL", loosen=["stratum_constraints"]),
        ["the stratum_constraints table's value must be text, got NULL"],
    ),
    "a NULL stratum id in targets": (
        _sql("UPDATE targets SET stratum_id = NULL WHERE target_id = 2", loosen=["targets"]),
        ["the targets table's stratum_id must be a whole number, got NULL", "target_id 2"],
    ),
    "a NULL target value": (
        _sql("UPDATE targets SET value = NULL WHERE target_id = 2", loosen=["targets"]),
        ["the targets table's value is NULL for 1 active target(s) (target_id 2)"],
    ),
    "a text value": (
        _sql("UPDATE targets SET value = 'lots' WHERE target_id = 2", loosen=["targets"]),
        ["the targets table's value must be a number or NULL, got 'lots'"],
    ),
    "a period 'abc'": (
        _sql("UPDATE targets SET period = 'abc' WHERE target_id = 2", loosen=["targets"]),
        ["the targets table's period must be a whole number, got 'abc'", "target_id 2"],
    ),
    "a fractional period": (
        _sql("UPDATE targets SET period = 2023.5 WHERE target_id = 2", loosen=["targets"]),
        ["the targets table's period must be a whole number, got 2023.5"],
    ),
    "a NULL active": (
        _sql("UPDATE targets SET active = NULL WHERE target_id = 2", loosen=["targets"]),
        ["the targets table's active must be 0 or 1"],
    ),
    "targets a broken view": (_targets_a_broken_view, ["its targets view cannot be read", "no such table"]),
}


@pytest.fixture
def database(tmp_path):
    """A target database of three targets (the third an older period, dropped), a dataset, and a
    target config keeping none of them: ``build`` then stops, after reading the targets, before
    PolicyEngine is imported."""
    db = tmp_path / "targets.db"
    with TargetDatabaseWriter(db) as writer:
        writer.add_target("person_count", 2024, 330e6, source="census")
        writer.add_target("snap", 2023, 100.0, constraints=[("state_fips", "==", "6")])
        writer.add_target("snap", 2022, 90.0, constraints=[("state_fips", "==", "6")])
    ids = [f"{e}_id" for e in ("household", "tax_unit", "spm_unit", "family", "marital_unit")]
    arrays = {"person_id": [1]} | {k: [1] for k in ids + ["person_" + k for k in ids]}
    dataset = write_dataset_h5(tmp_path / "d.h5", arrays, 2024)
    config = tmp_path / "config.yaml"
    config.write_text("include:\n  - variable: nothing_like_this\n")
    argv = ["build", "--dataset", dataset, "--target-config", config, "--package-output", tmp_path / "p"]
    return db, argv + ["--db-path", db]


def _damage(db, damage):
    with closing(sqlite3.connect(db)) as connection:
        damage(connection)
        connection.commit()


@pytest.mark.parametrize("case", BROKEN_DATABASES)
def test_a_database_outside_policyengines_schema_is_one_line(case, database, tmp_path, capsys):
    db, argv = database
    damage, phrases = BROKEN_DATABASES[case]
    _damage(db, damage)
    before = snapshot(tmp_path)
    refused(capsys, argv, f"target database {db}", *phrases)
    assert snapshot(tmp_path) == before  # the database as it was, no package, nothing else


def test_a_text_period_is_read_as_the_year_it_spells(database, tmp_path, capsys):
    """A ``period`` column without INTEGER affinity stores ``'2024'`` as text: it is the year 2024
    (as SQLite's INTEGER column would store it), so the latest period per target is still chosen."""
    db, argv = database
    _damage(db, _sql("UPDATE targets SET period = CAST(period AS TEXT)", loosen=["targets"]))
    with closing(sqlite3.connect(db)) as connection:
        assert {type(p) for (p,) in connection.execute("SELECT period FROM targets")} == {str}
    targets, _ = read_targets(db, 2024)
    assert targets["period"].tolist() == [2024, 2023] and targets["target_id"].tolist() == [1, 2]
    before = snapshot(tmp_path)
    refused(capsys, argv, "keeps none of the package's 2 targets")  # read: both targets, stopped by the config
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- gates on tampered run directories


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A package and a fit's run directory (5 epochs), written once."""
    directory = tmp_path_factory.mktemp("fitted")
    package = jaxcal.io.save_package(synthetic_package(600, **SMALL), directory / "package.npz")
    argv = ["fit", "--package-path", package, "--output", directory / "run" / "weights.npy"]
    assert main([str(a) for a in [*argv, "--epochs", 5, "--quiet", "--all-active-targets"]]) == 0
    return directory


def _config(**fields):
    def tamper(run):
        path = run / "unified_run_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | fields))

    return tamper


def _raw_config(text):
    return lambda run: (run / "unified_run_config.json").write_text(text)


def _diagnostics(change):
    def tamper(run):
        path = run / "unified_diagnostics.csv"
        change(pd.read_csv(path)).to_csv(path, index=False)

    return tamper


UNREADABLE_RUN_CONFIGS = {
    "not JSON": (_raw_config("{not json"), ["is not a readable run config", "JSONDecodeError"]),
    "a JSON list": (_raw_config("[1, 2]"), ["must hold a JSON object, got an array"]),
    "100000 nested lists": (_raw_config("[" * 100_000 + "]" * 100_000), ["is not a readable run config", "Recursion"]),
    "artifacts a list": (_config(artifacts=["weights.npy"]), ["artifacts must be a JSON object, got an array"]),
    "n_records a string": (_config(n_records="600"), ["n_records must be a whole number, got text ('600')"]),
    "holdout a number": (_config(holdout=3), ["holdout must be a JSON object, got a number (3)"]),
    "weights_file a number": (_config(weights_file=5), ["weights_file must be text"]),
}


@pytest.mark.parametrize("case", UNREADABLE_RUN_CONFIGS)
def test_gates_on_an_unreadable_run_config_is_one_line(case, fitted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(fitted / "run", run)
    tamper, phrases = UNREADABLE_RUN_CONFIGS[case]
    tamper(run)
    before = snapshot(tmp_path)
    refused(capsys, ["gates", run, "--max-holdout-loss", 1], "unified_run_config.json", *phrases)
    assert snapshot(tmp_path) == before  # no report, the run as it was


def _weights(write):
    def tamper(run):
        (run / "weights.npy").unlink()
        write(run / "weights.npy")

    return tamper


FAILING_GATES = {
    "an artifact entry that is no sha256": (_config(artifacts={"weights.npy": 5}), "artifacts_intact", "1 artifacts"),
    "an artifact entry without its sha256": (
        _config(artifacts={"weights.npy": {"path": 3}}),
        "artifacts_intact",
        "1 artifacts changed or missing",
    ),
    "a held-out loss that is text": (
        _config(holdout={"holdout_loss": "low"}),
        "holdout_loss",
        "held-out loss is recorded as 'low', not a number",
    ),
    "a tier budget that is text": (
        _config(tier={"budget": "many"}),
        "records_within_budget",
        "the limit on the records kept is recorded as 'many', not a number",
    ),
    "diagnostics without abs_rel_error": (
        _diagnostics(lambda d: d.drop(columns=["abs_rel_error"])),
        "mean_error",
        "unified_diagnostics.csv has no abs_rel_error column",
    ),
    "diagnostics with text for numbers": (
        _diagnostics(lambda d: d.assign(abs_rel_error="abc")),
        "mean_error",
        "abs_rel_error holds 84 value(s) that are not numbers ('abc')",
    ),
    "empty diagnostics": (
        lambda run: (run / "unified_diagnostics.csv").write_text(""),
        "mean_error",
        "unified_diagnostics.csv is not a readable CSV",
    ),
    "weights missing": (
        lambda run: (run / "weights.npy").unlink(),
        "weights_valid",
        "weights.npy, the run's weights file, is missing",
    ),
    "weights not an .npy": (
        _weights(lambda path: path.write_text("0.5\n0.5\n")),
        "weights_valid",
        "weights.npy is not a readable .npy",
    ),
    "weights an .npz": (
        _config(weights_file="weights.checkpoint.npz"),
        "weights_valid",
        "weights.checkpoint.npz is not a readable .npy",
    ),
    "weights of strings": (
        _weights(lambda path: np.save(path, np.array(["a", "b"]))),
        "weights_valid",
        "weights.npy holds <U1, not real numbers",
    ),
    "weights of a structured dtype": (
        _weights(lambda path: np.save(path, np.zeros(600, [("w", "f8")]))),
        "weights_valid",
        "not real numbers",
    ),
    "weights longer than their header": (
        _weights(lambda path: path.write_bytes(_npy(np.ones(600)) + b"\0" * 8)),
        "weights_valid",
        "weights.npy is not the size its header declares",
    ),
}


def _npy(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("case", FAILING_GATES)
def test_gates_on_a_tampered_run_fails_the_gate_that_cannot_be_measured(case, fitted, tmp_path, capsys):
    """A run config of the right shape whose entries, weights or diagnostics are tampered with: the
    gate they feed fails, saying why; exit 1, the report written where asked, nothing else."""
    run = tmp_path / "run"
    shutil.copytree(fitted / "run", run)
    tamper, gate, phrase = FAILING_GATES[case]
    tamper(run)
    before = snapshot(run)
    report = tmp_path / "report.json"
    argv = ["gates", run, "--output", report, "--max-holdout-loss", 1, "--max-mean-error", 0.5]
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err and "error:" not in err, err
    saved = json.loads(report.read_text())
    assert saved["summary"]["status"] == "failed" and saved["gates"][gate]["status"] == "fail", saved["gates"][gate]
    summary = saved["gates"][gate]["summary"]
    problems = json.dumps(saved["gates"][gate]["metrics"])
    assert phrase in summary or phrase in problems, (summary, problems)
    assert f"fail       {gate}" in out
    assert snapshot(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "run"]


# ---------------------------------------------------------------- a checkpoint on another device count


def test_a_two_device_checkpoint_resumes_on_one_device_with_a_warning(fitted, tmp_path):
    """Sharding the records changes only the order of the sums: a checkpoint of a 2-device fit
    resumes on 1 device, saying so in one warning line, and the run record keeps the count the
    checkpoint was fitted on; a resume on the same count says nothing of devices."""
    common = ["fit", "--package-path", fitted / "package.npz", "--epochs", 3, "--quiet", "--all-active-targets"]
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_NUM_CPU_DEVICES": "2"}
    two = subprocess.run(
        [
            str(JAXCAL),
            *map(str, common),
            "--output",
            str(tmp_path / "two" / "w.npy"),
            "--devices",
            "2",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    checkpoint = tmp_path / "two" / "w.checkpoint.npz"
    assert jaxcal.io.load_checkpoint(checkpoint).hyperparameters["n_devices"] == 2
    before = snapshot(tmp_path / "two")

    one = jaxcal_cli(*common, "--output", tmp_path / "one" / "w.npy", "--resume-from", checkpoint)
    lines = [line for line in one.stderr.splitlines() if "device" in line]
    assert len(lines) == 1 and "fitted on 2 devices, on 1" in lines[0], one.stderr
    assert "Traceback" not in one.stderr and "error:" not in one.stderr
    record = json.loads((tmp_path / "one" / "unified_run_config.json").read_text())
    assert record["hyperparameters"]["checkpoint_devices"] == 2 and record["epochs_total"] == 6
    assert jaxcal.io.load_checkpoint(tmp_path / "one" / "w.checkpoint.npz").hyperparameters["n_devices"] == 1
    assert snapshot(tmp_path / "two") == before

    again = jaxcal_cli(*common, "--output", tmp_path / "again" / "w.npy", "--resume-from", tmp_path / "one" / "w.npy")
    assert "device" not in again.stderr, again.stderr
    assert json.loads((tmp_path / "again" / "unified_run_config.json").read_text())["epochs_total"] == 9


# ---------------------------------------------------------------- a zip bomb in a checkpoint


def test_a_zip_bomb_in_an_unused_checkpoint_member_is_never_decompressed(fitted, tmp_path, capsys):
    """256 MiB of zeros in about 250 KB, in a member no checkpoint has: the resume reads only the
    checkpoint's own members, each once its header fits, and never this one."""
    source = fitted / "run" / "weights.checkpoint.npz"
    bomb = tmp_path / "bomb.checkpoint.npz"
    bomb.write_bytes(source.read_bytes())
    with (
        zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("junk.npy", "w", force_zip64=True) as f,
    ):
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (1 << 28,)})
        for _ in range(16):
            f.write(bytes(1 << 24))
    assert bomb.stat().st_size < source.stat().st_size + (1 << 20)
    common = ["fit", "--package-path", fitted / "package.npz", "--epochs", 1, "--quiet", "--all-active-targets"]
    common = [str(a) for a in common]
    assert main([*common, "--output", str(tmp_path / "warm" / "w.npy"), "--resume-from", str(source)]) == 0
    before = snapshot(tmp_path)
    output = tmp_path / "out" / "w.npy"
    code, peak = peak_bytes(lambda: main([*common, "--output", str(output), "--resume-from", str(bomb)]))
    assert code == 0 and peak < 32 << 20, peak
    assert jaxcal.io.load_checkpoint(bomb).epochs == 5
    capsys.readouterr()
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out/")} == before  # the inputs as they were
    assert jaxcal.io.load_checkpoint(output.with_suffix(".checkpoint.npz")).epochs == 6
