"""Hostile or careless inputs (issue "Reliability"), through the command: malformed packages, a zip
bomb, a billion-laughs YAML, H5 files with dangling links or a huge declared dataset, database
paths with URI characters, pickled metadata JSON cannot hold. Each is one line on stderr and a
non-zero exit, or a correct result, at a bounded cost in memory."""

import datetime
import json
import pickle
import sqlite3
import tracemalloc
import zipfile
from contextlib import closing

import h5py
import numpy as np
import pytest
from test_cli import SMALL

import jaxcal.io
from builders.dataset import write_dataset_h5
from builders.demo_microdata import generate_households, write_h5
from builders.synthetic_problem import synthetic_package
from builders.target_db import TargetDatabaseWriter
from jaxcal.cli import main
from jaxcal.workflow import weight_health


@pytest.fixture(scope="module")
def package():
    return synthetic_package(600, **SMALL)


@pytest.fixture(scope="module")
def package_path(package, tmp_path_factory):
    return jaxcal.io.save_package(package, tmp_path_factory.mktemp("package") / "package.npz")


@pytest.fixture(scope="module")
def members(package_path):
    with np.load(package_path) as npz:
        return dict(npz.items())


def refused(capsys, argv, *phrases):
    """``jaxcal ARGV`` exits non-zero with exactly one error line on stderr, its last, ``jaxcal
    COMMAND: error: ...`` holding each of ``phrases`` (before it only progress, as ``build``
    prints); returns what it printed on stdout."""
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert code != 0 and errors == lines[-1:] and errors[0].startswith(f"jaxcal {argv[0]}: error: "), err
    assert "Traceback" not in err
    for phrase in phrases:
        assert phrase in errors[0], errors[0]
    return out


def peak_bytes(call):
    """``call()`` and the most memory Python and numpy held during it."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_row(members, n_records):
    """A package of one target over ``n_records`` columns, three nonzeros: a few KB."""
    one = {k: v[:1] for k, v in members.items() if k.startswith(("targets/", "targets_missing/", "target_names"))}
    return (
        members
        | one
        | {
            "matrix_shape": np.array([1, n_records], np.int64),
            "matrix_indptr": np.array([0, 3], np.int32),
            "matrix_indices": np.array([0, 5, 9], np.int32),
            "matrix_data": np.ones(3, np.float32),
        }
    )


def _without_geography(members):
    return {k: v for k, v in members.items() if not k.startswith("geography/")}


MALFORMED = {
    "no format_version": (
        lambda m: {k: v for k, v in m.items() if k != "format_version"},
        "'format_version' is missing",
    ),
    "vector format_version": (
        lambda m: m | {"format_version": np.array([1, 1])},
        "'format_version' must have shape ()",
    ),
    "missing-value mask of the wrong length": (
        lambda m: m | {"targets_missing/variable": np.zeros(3, bool)},
        "'targets_missing/variable' must have shape (84,), as the matrix has 84 targets, got (3,)",
    ),
    "metadata a list": (lambda m: m | {"metadata": np.array("[1, 2]")}, "metadata must be a JSON object, got list"),
    "metadata a number": (lambda m: m | {"metadata": np.array("3")}, "metadata must be a JSON object, got int"),
    "fractional indices": (
        lambda m: m | {"matrix_indices": m["matrix_indices"] + 0.5},
        "'matrix_indices' must hold integers, got float64",
    ),
    "bool indices": (
        lambda m: m | {"matrix_indices": m["matrix_indices"].astype(bool)},
        "'matrix_indices' must hold integers, got bool",
    ),
    "string indices": (
        lambda m: m | {"matrix_indices": m["matrix_indices"].astype(str)},
        "'matrix_indices' must hold integers, got <U",
    ),
    "complex values": (
        lambda m: m | {"matrix_data": m["matrix_data"].astype(np.complex64)},
        "'matrix_data' must hold real numbers, got complex64",
    ),
    "complex targets": (
        lambda m: m | {"targets/value": m["targets/value"].astype(complex)},
        "'targets/value' must hold numbers or text, got complex128",
    ),
    "text wider than a name": (
        lambda m: m | {"target_names": m["target_names"].astype("<U5000")},
        "'target_names' holds text of 5,000 characters",
    ),
    "shape 1 x 3e9": (
        lambda m: _without_geography(_one_row(m, 3_000_000_000)),
        "the matrix shape 1 x 3000000000 exceeds the engine's int32 indices",
    ),
    "more nonzeros than cells": (
        lambda m: _without_geography(_one_row(m, 2)) | {"matrix_indptr": np.array([0, 3], np.int32)},
        "declares 3 nonzeros in 1 x 2 cells",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_package_is_one_line(case, members, tmp_path, capsys):
    damage, phrase = MALFORMED[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **damage(members))
    _, peak = peak_bytes(lambda: refused(capsys, ["info", path], str(path), phrase))
    assert peak < 20 << 20  # the 1 x 3e9 package once allocated 22 GiB before it was refused


def test_a_member_longer_than_its_header_is_refused(members, tmp_path, capsys):
    """The archive's declared size must be the one the ``.npy`` header implies, so that what is
    decompressed is bounded by the package's shape."""
    path = tmp_path / "long.npz"
    np.savez(path, **members)
    with zipfile.ZipFile(path) as archive:
        entries = {info.filename: archive.read(info) for info in archive.infolist()}
    entries["matrix_data.npy"] += bytes(4096)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    refused(capsys, ["validate", path], "'matrix_data' is", "not the size its header declares")


def test_a_zip_bomb_in_an_unused_member_is_never_decompressed(package_path, tmp_path, capsys):
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(package_path.read_bytes())
    with (
        zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("junk.npy", "w", force_zip64=True) as f,
    ):  # 256 MiB of zeros in about 250 KB
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (1 << 28,)})
        for _ in range(16):
            f.write(bytes(1 << 24))
    assert bomb.stat().st_size < 2 * package_path.stat().st_size + (1 << 20)
    assert main(["info", str(package_path)]) == 0  # imports done before the measure
    code, peak = peak_bytes(lambda: main(["info", str(bomb)]))
    assert code == 0 and peak < 32 << 20, peak
    capsys.readouterr()


@pytest.mark.parametrize("flag", ["--target-config", "--presets-file"])
def test_a_billion_laughs_yaml_is_refused(package_path, tmp_path, capsys, flag):
    """Nine lines of YAML aliases expand to 9**9 strings: aliases are refused before any expansion,
    in a target config and in a presets file alike."""
    top = "include:\n  - variable:" if flag == "--target-config" else "laughs:\n  epochs:"
    lines = [f"{top} &a0 [" + ", ".join(["lol"] * 9) + "]"]
    lines += [f"  - variable: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    if flag == "--presets-file":
        lines[1:] = [f"  beta{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    config = tmp_path / "laughs.yaml"
    config.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out" / "w.npy"
    argv = ["fit", "--package-path", package_path, "--output", output, "--epochs", 1, flag, config]
    if flag == "--presets-file":
        argv += ["--hyperparameters", "laughs"]
    _, peak = peak_bytes(lambda: refused(capsys, argv, "laughs.yaml is not valid YAML", "found the alias *a0"))
    assert peak < 64 << 20 and not output.exists()


# ---------------------------------------------------------------- check-h5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_h5(generate_households(30, seed=5, states=[6, 11]), tmp_path_factory.mktemp("h5") / "good.h5")


def _replace(h5, name, value):
    del h5[name]
    h5[name] = value


H5_DAMAGE = {
    "dangling soft link": (
        lambda h5: h5.__setitem__("ghost", h5py.SoftLink("/nowhere")),
        "/ghost is a link to nothing",
    ),
    "dangling soft link in a period": (
        lambda h5: h5["household_weight"].__setitem__("2025", h5py.SoftLink("/nowhere")),
        "/household_weight/2025 is a link to nothing (/nowhere)",
    ),
    "dangling external link": (
        lambda h5: h5.__setitem__("elsewhere", h5py.ExternalLink("missing.h5", "/x")),
        "/elsewhere is a link to nothing (missing.h5:/x)",
    ),
    "2**34 entries declared": (
        lambda h5: h5.create_group("huge").create_dataset("2024", shape=(2**34,), dtype="i1"),
        "/huge/2024 declares 17,179,869,184 entries",
    ),
    "empty person_id": (
        lambda h5: _replace(h5, "person_id/2024", np.zeros(0, np.int64)),
        "person_id is empty: the file has no person records",
    ),
    "scalar person_id": (
        lambda h5: _replace(h5, "person_id/2024", np.int64(3)),
        "person_id must be a one-dimensional integer array, got int64 of shape ()",
    ),
}


@pytest.mark.parametrize("case", H5_DAMAGE)
def test_check_h5_names_a_broken_file_in_one_line(case, dataset, tmp_path, capsys):
    damage, problem = H5_DAMAGE[case]
    path = tmp_path / "bad.h5"
    path.write_bytes(dataset.read_bytes())
    with h5py.File(path, "a") as h5:
        damage(h5)
    out, peak = peak_bytes(lambda: refused(capsys, ["check-h5", path], "some files failed the check"))
    assert f"{path}: FAILED" in out and problem in out, out
    assert peak < 64 << 20
    if case == "scalar person_id":
        assert "persons" not in out  # the links are not measured against a count there is none of


# ---------------------------------------------------------------- build, convert, run files


def test_a_database_path_with_uri_characters_opens_that_file(tmp_path, capsys):
    """``t#1?x%41.db`` is the database read, not ``t`` (where an unescaped URI ends at ``#``)."""
    db = tmp_path / "t#1?x%41.db"
    with TargetDatabaseWriter(db) as writer:
        writer.add_target("person_count", 2024, 330e6, source="census")
    with closing(sqlite3.connect(tmp_path / "t")) as decoy:
        decoy.execute("CREATE TABLE other (x)")
        decoy.commit()
    ids = [f"{e}_id" for e in ("household", "tax_unit", "spm_unit", "family", "marital_unit")]
    dataset = write_dataset_h5(
        tmp_path / "d.h5", {"person_id": [1]} | {k: [1] for k in ids + ["person_" + k for k in ids]}, 2024
    )
    config = tmp_path / "config.yaml"
    config.write_text("include:\n  - variable: nothing_like_this\n")
    argv = ["build", "--dataset", dataset, "--db-path", db, "--target-config", config]
    refused(capsys, [*argv, "--package-output", tmp_path / "p"], "keeps none")  # read that database's targets
    assert not (tmp_path / "p.npz").exists()


def test_convert_keeps_pickled_dates_and_sets_as_json(package, tmp_path, capsys):
    created = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    payload = {
        "X_sparse": package.matrix,
        "targets_df": package.targets,
        "target_names": list(package.target_names),
        "metadata": {"created": created, "day": created.date(), "states": {"6", "11"}, "clones": frozenset({3})},
    }
    pkl = tmp_path / "calibration_package.pkl"
    pkl.write_bytes(pickle.dumps(payload))
    assert main(["convert", str(pkl), str(tmp_path / "p.npz"), "--allow-pickle"]) == 0, capsys.readouterr().err
    metadata = jaxcal.io.load_package(tmp_path / "p.npz").metadata
    assert metadata["created"] == "2026-01-02T03:04:05+00:00" and metadata["day"] == "2026-01-02"
    assert metadata["states"] == ["11", "6"] and metadata["clones"] == [3]  # sets as lists, in a fixed order


def _strict_json(path):
    """``path`` parsed as JSON proper: a bare NaN or Infinity is an error."""

    def refuse(constant):
        raise AssertionError(f"{path.name} holds a bare {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_run_files_hold_null_not_bare_nan(members, tmp_path, capsys):
    """A package whose metadata says NaN and Infinity (an older writer's) gives run files of JSON
    proper: the non-finite numbers become null."""
    path = tmp_path / "nan.npz"
    np.savez(path, **members | {"metadata": np.array('{"n_clones": NaN, "seed": Infinity}')})
    output = tmp_path / "run"
    argv = ["fit", "--package-path", path, "--output", output / "w.npy", "--epochs", 2, "--quiet"]
    argv += ["--all-active-targets", "--holdout-fraction", 0.3, "--lambda-l0", 0, "--log-freq", 1]
    assert main([str(arg) for arg in argv]) == 0, capsys.readouterr().err
    files = sorted(output.glob("*.json"))
    assert len(files) >= 2  # the run config and the held-out log
    for file in files:
        _strict_json(file)
    assert _strict_json(output / "unified_run_config.json")["n_clones"] is None


def test_a_tiny_weight_is_kept_as_policyengine_counts_it():
    """PolicyEngine's ``weight_nonzero`` counts every weight above 0; jaxcal keeps that rule for
    its records-kept count and reports the tiny ones apart."""
    health = weight_health(np.array([1e-8, 0.0, 5.0, 2.0]))
    assert health["count_positive"] == 3 and health["tiny_share"] == pytest.approx(1 / 3)


def test_a_dataset_that_fails_its_check_never_takes_the_name(tmp_path):
    """What `jaxcal export` relies on: the H5 is checked before it is renamed into place, so a
    failing one leaves neither the file nor a temporary beside it, and an older file is kept."""
    households = generate_households(20, seed=3, states=[6])
    good = write_h5(households, tmp_path / "out.h5")
    before = good.read_bytes()

    def refuse(written):
        assert written != good and written.parent == good.parent  # the temporary, not the name
        raise RuntimeError("the export fails check-h5")

    with h5py.File(good, "r") as h5:
        arrays = {name: np.asarray(group["2024"]) for name, group in h5.items()}
    with pytest.raises(RuntimeError, match="fails check-h5"):
        write_dataset_h5(good, arrays, 2024, verify=refuse)
    assert good.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


@pytest.mark.parametrize("command", ["convert", "export"])
def test_an_output_that_cannot_be_written_is_refused_before_the_work(command, package, package_path, tmp_path, capsys):
    """convert and export check their output's directory up front, as fit, derive and sweep do:
    an output under a file, or a directory as the output, is one line before unpickling or exporting."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    if command == "convert":
        pkl = tmp_path / "calibration_package.pkl"
        pkl.write_bytes(pickle.dumps({"X_sparse": package.matrix, "targets_df": package.targets}))
        argv = ["convert", pkl, "--allow-pickle"]
        outputs = [blocker / "p.npz", tmp_path]
    else:
        weights = tmp_path / "w.npy"
        np.save(weights, np.ones(package.n_records))
        argv = ["export", package_path, weights]
        outputs = [blocker / "out.h5", tmp_path]
    for output, phrase in zip(outputs, ["a-file is not a directory", "is a directory"]):
        if command == "convert" and output == tmp_path:
            output = tmp_path / "dir.npz"
            output.mkdir()
        refused(capsys, [*argv, output], phrase)
    assert blocker.read_text() == "not a directory"


def test_a_full_disk_is_one_line_and_leaves_no_file(package_path, tmp_path, capsys, monkeypatch):
    """No space left while the weights are written (the disk's failure, planted at the sync before
    the rename): one line that says so, and neither the weights nor a temporary are left."""
    import errno
    import os

    from jaxcal.io import _files

    def full(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f.name)

    monkeypatch.setattr(_files, "sync", full)
    output = tmp_path / "run" / "w.npy"
    argv = ["fit", "--package-path", package_path, "--output", output, "--epochs", 2, "--all-active-targets", "--quiet"]
    refused(capsys, argv, "No space left on device while writing", "no file was left half-written; free some space")
    assert not output.exists() and not [p for p in output.parent.iterdir() if p.name.endswith(".tmp")]
