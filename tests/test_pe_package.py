"""``jaxcal convert`` and ``validate`` on a package written by policyengine-us-data's own code: its
``assign_random_geography`` places the clones, its ``save_calibration_package`` writes the pickle
and its ``write_calibration_package_contract`` the stage-2 contract beside it. The converted
package's ``state_fips`` must be PolicyEngine's, its contract checks must agree with PolicyEngine's
``validate_calibration_package_contract``, and ``jaxcal validate``'s header must be
``format_report``'s, line for line.
"""

from __future__ import annotations

import json
import pickle
import shutil
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import jaxcal.io
import jaxcal.runs
from jaxcal.cli import main

pe = pytest.importorskip("policyengine_us_data")
pytestmark = [pytest.mark.pe_reference, pytest.mark.xdist_group("policyengine")]  # one policyengine_us import

N_BASE, N_CLONES = 40, 3
DISTRICTS = {1: 2, 6: 3, 36: 2, 56: 1}
"""State FIPS -> districts: AL (whose FIPS has a leading zero), CA, NY and WY (at large)."""
POPULATION = {1: 3000, 6: 5000, 36: 4000, 56: 1500}
"""Per block: WY is small, so few clones land there."""
GIT = {"git_commit": "0123456789abcdef0123", "git_branch": "main", "git_dirty": True, "package_version": "1.115.4"}


@pytest.fixture(scope="module")
def pe_package(tmp_path_factory):
    """The pickle, its contract and the payload, as PolicyEngine's stage 2 writes them."""
    from policyengine_us_data.calibration.unified_calibration import compute_initial_weights, save_calibration_package
    from policyengine_us_data.stage_contracts.calibration_package import write_calibration_package_contract
    from policyengine_us_data.utils.manifest import compute_file_checksum

    from builders.demo_microdata import generate_demo_h5

    directory = tmp_path_factory.mktemp("pe")
    geography = _assign_geography(directory)
    dataset = generate_demo_h5(directory / "source_imputed_stratified_extended_cps_2024.h5", N_BASE, seed=3)
    db = directory / "policy_data.db"
    db.write_bytes(b"stands in for the target database the metadata hashes\n")
    targets_df, X_sparse, target_names = _targets(
        np.asarray(geography.state_fips), np.asarray(geography.cd_geoid, dtype=str)
    )
    metadata = {
        "dataset_path": str(dataset),
        "db_path": str(db),
        "n_clones": N_CLONES,
        "n_records": X_sparse.shape[1],
        "base_n_records": N_BASE,
        "seed": 42,
        "created_at": "2026-01-02T03:04:05Z",
        "target_config_path": None,
        "package_scope": "all_active_targets",
        "matrix_builder": "precompute",
        "chunk_size": None,
        "chunk_dir": None,
        **GIT,
        "dataset_sha256": compute_file_checksum(dataset),
        "db_sha256": compute_file_checksum(db),
    }
    payload = {
        "X_sparse": X_sparse,
        "targets_df": targets_df,
        "target_names": target_names,
        "metadata": metadata,
        "initial_weights": compute_initial_weights(X_sparse, targets_df),
        "cd_geoid": geography.cd_geoid,
        "block_geoid": geography.block_geoid,
    }
    path = directory / "calibration_package.pkl"
    save_calibration_package(str(path), **payload)
    contract = write_calibration_package_contract(
        package_path=path,
        dataset_path=dataset,
        db_path=db,
        package=payload,
        parameters={
            "workers": 1,
            "n_clones": N_CLONES,
            "target_config": None,
            "skip_county": True,
            "skip_source_impute": True,
            "skip_takeup_rerandomize": False,
            "chunked_matrix": False,
            "chunk_size": None,
            "parallel_matrix": False,
            "num_matrix_workers": None,
        },
        run_id="run-7",
        completed_at="2026-01-02T03:05:00Z",
    )
    return path, contract, payload, geography


def _assign_geography(directory):
    """PolicyEngine's ``assign_random_geography`` on a small ``block_cd_distributions.csv.gz`` of
    ours (two blocks a district; WY's at-large district written 5600, which PolicyEngine renumbers 5601)."""
    from policyengine_us_data.calibration import clone_and_assign

    blocks = [
        {
            "block_geoid": f"{state:02d}{district:03d}{100 * district + block:06d}{1000 + block:04d}",
            "cd_geoid": state * 100 + (0 if n == 1 else district),
            "population": POPULATION[state],
        }
        for state, n in DISTRICTS.items()
        for district in range(1, n + 1)
        for block in range(2)
    ]
    pd.DataFrame(blocks).to_csv(directory / "block_cd_distributions.csv.gz", index=False)
    clone_and_assign.load_global_block_distribution.cache_clear()
    try:
        with mock.patch.object(clone_and_assign, "STORAGE_FOLDER", directory):
            return clone_and_assign.assign_random_geography(n_records=N_BASE, n_clones=N_CLONES, seed=5)
    finally:
        clone_and_assign.load_global_block_distribution.cache_clear()


def _targets(state: np.ndarray, cd: np.ndarray):
    """A targets table with PolicyEngine's columns, a matrix and PolicyEngine-style target names:
    national, state and district counts, an age-domain row, and one impossible row."""
    rng = np.random.default_rng(0)
    people = np.tile(rng.integers(1, 6, N_BASE), N_CLONES).astype(np.float32)
    children = np.tile(rng.integers(0, 3, N_BASE), N_CLONES).astype(np.float32)
    rows = [("national", "US", None, "person_count", people, "national/person_count")]
    rows.append(("national", "US", "age", "person_count", children, "national/person_count/[age<18]"))
    rows += [
        ("state", str(s), None, "household_count", (state == s).astype(np.float32), f"state_{s}/household_count")
        for s in DISTRICTS
    ]
    rows += [
        ("district", d, None, "person_count", np.where(cd == d, people, 0), f"cd_{d}/person_count")
        for d in sorted(set(cd))
    ]
    rows.append(("national", "US", "aca_ptc", "tax_unit_count", np.zeros_like(people), "national/tax_unit_count"))
    matrix = sparse.csr_matrix(np.stack([r[4] for r in rows]))
    true_weights = rng.uniform(50, 150, people.size)
    values = matrix @ true_weights
    values[-1] = 1e5
    targets = pd.DataFrame(
        {
            "target_id": np.arange(1, len(rows) + 1),
            "stratum_id": np.arange(1, len(rows) + 1),
            "variable": [r[3] for r in rows],
            "reform_id": 0,
            "value": values,
            "period": 2024,
            "geo_level": [r[0] for r in rows],
            "geographic_id": [r[1] for r in rows],
            "domain_variable": [r[2] for r in rows],
            "original_value": values,
            "uprating_factor": 1.0,
        }
    )
    return targets, matrix, [r[5] for r in rows]


def _pe_states(blocks) -> np.ndarray:
    """What PolicyEngine's ``unified_calibration.main`` writes as ``geography_assignment.npz``'s ``state_fips``."""
    return np.fromiter((int(block[:2]) for block in np.asarray(blocks, dtype=str)), dtype=np.int32)


def _header(report: str) -> list[str]:
    lines = report.splitlines()
    return lines[: lines.index("--- Achievability ---")]


def _error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def _write_pickle(path, payload):
    path.write_bytes(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return path


def test_convert_derives_policyengine_states_and_records_the_contract(pe_package, tmp_path, capsys):
    path, contract, payload, geography = pe_package
    assert main(["convert", str(path), str(tmp_path / "p.npz"), "--allow-pickle"]) == 0
    assert f"{len(DISTRICTS)} states, from block_geoid" in capsys.readouterr().out
    converted = jaxcal.io.load_package(tmp_path / "p.npz")

    states = converted.geography["state_fips"]
    assert np.issubdtype(states.dtype, np.integer)
    np.testing.assert_array_equal(states, _pe_states(payload["block_geoid"]))
    np.testing.assert_array_equal(states, geography.state_fips)  # clone_and_assign's own
    assert set(np.unique(states)) == set(DISTRICTS) and (states == 1).any()  # AL: the leading zero
    np.testing.assert_array_equal(converted.geography["block_geoid"], payload["block_geoid"])
    np.testing.assert_array_equal(converted.geography["cd_geoid"], payload["cd_geoid"])

    facts = converted.metadata["stage_contract"]
    assert facts["fingerprint"] == contract.fingerprint.value
    assert facts["package_sha256"] == f"sha256:{jaxcal.io.sha256_file(path)}"
    assert facts["package_size_bytes"] == path.stat().st_size
    assert (facts["run_id"], facts["stage_id"]) == ("run-7", "2_build_calibration_package")
    assert (
        facts["canonical_geography_sha256"] == contract.metadata["geography_assignment"]["canonical_geography_sha256"]
    )
    assert facts["inputs"]["policy_data_db"] == f"sha256:{jaxcal.io.sha256_file(payload['metadata']['db_path'])}"
    assert converted.metadata["base_n_records"] == N_BASE and converted.metadata["git_commit"] == GIT["git_commit"]

    direct = jaxcal.io.load_package(path, allow_pickle=True)  # the same import, without the .npz
    np.testing.assert_array_equal(direct.geography["state_fips"], states)
    assert direct.metadata["stage_contract"] == facts


def test_states_from_districts_without_blocks(pe_package, tmp_path):
    """A package without blocks: the state is PolicyEngine's district GEOID // 100."""
    _, _, payload, geography = pe_package
    pkl = _write_pickle(tmp_path / "no_blocks.pkl", payload | {"block_geoid": None})
    package = jaxcal.io.import_pickle_package(pkl)
    np.testing.assert_array_equal(package.geography["state_fips"], geography.state_fips)
    assert "block_geoid" not in package.geography and "stage_contract" not in package.metadata
    assert (np.asarray(payload["cd_geoid"], dtype=str) == "5601").any()  # PE's renumbered at-large district


def test_blocks_and_districts_that_disagree_are_refused(pe_package, tmp_path, capsys):
    _, _, payload, _ = pe_package
    blocks = np.asarray(payload["block_geoid"], dtype=str).copy()
    moved = int(np.flatnonzero(np.char.startswith(blocks, "06"))[0])
    blocks[moved] = "36" + blocks[moved][2:]
    pkl = _write_pickle(tmp_path / "moved.pkl", payload | {"block_geoid": blocks})
    assert main(["convert", str(pkl), str(tmp_path / "p.npz"), "--allow-pickle"]) == 1
    error = _error_line(capsys)
    assert "block_geoid and cd_geoid place 1 column(s) in different states" in error
    assert f"first column {moved}: block {blocks[moved]} in state 36" in error
    assert not (tmp_path / "p.npz").exists()
    with pytest.raises(jaxcal.io.PackageError, match="different states"):
        jaxcal.io.load_package(pkl, allow_pickle=True)

    stripped = np.char.lstrip(np.asarray(payload["block_geoid"], dtype=str), "0")  # as an integer column holds them
    short = _write_pickle(tmp_path / "short.pkl", payload | {"block_geoid": stripped})
    first = stripped[np.char.str_len(stripped) != 15][0]
    with pytest.raises(jaxcal.io.PackageError, match=f"15-digit census block GEOIDs, got '{first}'"):
        jaxcal.io.import_pickle_package(short)


def test_contract_checks_agree_with_policyengine(pe_package, tmp_path, capsys):
    """PolicyEngine's validate accepts the pristine pair and jaxcal too; each tampering is refused
    by both, jaxcal naming what differs on one line."""
    from policyengine_us_data.stage_contracts.calibration_package import (
        CALIBRATION_PACKAGE_CONTRACT_FILENAME,
        validate_persisted_calibration_package_contract,
    )

    path, _, payload, _ = pe_package
    assert jaxcal.io.STAGE_CONTRACT_FILENAME == CALIBRATION_PACKAGE_CONTRACT_FILENAME
    pristine = json.loads(path.with_name(CALIBRATION_PACKAGE_CONTRACT_FILENAME).read_text())
    validate_persisted_calibration_package_contract(package_path=path)
    assert jaxcal.io.check_stage_contract(path, payload) is not None

    def tampered(name, contract, package=None):
        """Convert a copy of the pickle (``package`` re-pickled, if given) beside ``contract``."""
        directory = tmp_path / name
        directory.mkdir()
        pkl = directory / "calibration_package.pkl"
        if package is None:
            shutil.copyfile(path, pkl)
        else:
            _write_pickle(pkl, package)
        (directory / CALIBRATION_PACKAGE_CONTRACT_FILENAME).write_text(json.dumps(contract))
        with pytest.raises(ValueError):
            validate_persisted_calibration_package_contract(package_path=pkl)
        assert main(["convert", str(pkl), str(directory / "p.npz"), "--allow-pickle"]) == 1
        assert not (directory / "p.npz").exists()
        return _error_line(capsys)

    def edit(section, key, value):
        contract = json.loads(json.dumps(pristine))
        contract["metadata"][section][key] = value
        return contract

    error = tampered("nnz", edit("package_summary", "matrix_nnz", payload["X_sparse"].nnz + 1))
    assert "calibration_package_contract.json does not describe this package" in error
    assert (
        f"package_summary.matrix_nnz: contract {payload['X_sparse'].nnz + 1}, package {payload['X_sparse'].nnz}"
        in error
    )
    assert "package.sha256" not in error  # the pickle is byte-identical: only the summary differs

    n_targets, n_columns = payload["X_sparse"].shape
    error = tampered("shape", edit("package_summary", "matrix_shape", [n_targets, n_columns + 3]))
    assert (
        f"package_summary.matrix_shape: contract [{n_targets}, {n_columns + 3}], package [{n_targets}, {n_columns}]"
        in error
    )

    error = tampered("geography", edit("geography_assignment", "cd_geoid_sha256", "sha256:" + "0" * 64))
    assert 'geography_assignment.cd_geoid_sha256: contract "sha256:0000' in error

    changed = payload | {"targets_df": payload["targets_df"].assign(value=payload["targets_df"]["value"] * 2)}
    error = tampered("repickled", pristine, changed)
    assert 'package.sha256: contract "sha256:' in error and "package.size_bytes" in error


def test_converted_package_works_with_derive_state_floor_and_export(pe_package, tmp_path, capsys):
    """The commands that work by state accept a converted package; without state_fips they refused it."""
    from builders.h5_check import read_h5_arrays

    path, _, _, geography = pe_package
    npz = tmp_path / "p.npz"
    assert main(["convert", str(path), str(npz), "--allow-pickle"]) == 0
    package = jaxcal.io.load_package(npz)
    states = package.geography["state_fips"]
    weights = np.random.default_rng(1).uniform(50, 150, package.n_records)
    weights[::4] = 0.0
    np.save(tmp_path / "w.npy", weights)

    def derive(package_path, output):
        args = ["derive", "--package", str(package_path), "--parent-weights", str(tmp_path / "w.npy")]
        args += ["--budget", str(budget), "--state-floor", str(floor), "--output", str(tmp_path / output)]
        return main(
            [
                *args,
                "--lambda-l0",
                "1e-6",
                "1e-5",
                "--search-epochs",
                "5",
                "--search-rounds",
                "1",
                "--refit-epochs",
                "5",
            ]
        )

    budget, floor = 24, 4
    wyoming = int((states == 56).sum())
    assert floor <= wyoming and wyoming * budget / package.n_records < floor  # only the floor keeps 4 of them
    assert derive(npz, "derive") == 0
    child = np.load(tmp_path / "derive" / "child_columns.npy")
    assert child.size == budget
    assert all((states[child] == s).sum() >= floor for s in DISTRICTS), np.unique(states[child], return_counts=True)

    stateless = jaxcal.io.CalibrationPackage.create(
        package.matrix,
        package.targets,
        package.target_names,
        geography={k: v for k, v in package.geography.items() if k != "state_fips"},
        metadata=package.metadata,
    )
    capsys.readouterr()
    assert derive(jaxcal.io.save_package(stateless, tmp_path / "stateless.npz"), "refused") == 1
    assert "state_fips" in _error_line(capsys)

    assert main(["export", str(npz), str(tmp_path / "w.npy"), str(tmp_path / "out.h5")]) == 0
    (exported,) = read_h5_arrays(tmp_path / "out.h5").values()
    kept = np.flatnonzero(weights > 0)
    np.testing.assert_array_equal(exported["state_fips"], np.asarray(geography.state_fips)[kept])
    np.testing.assert_array_equal(
        exported["congressional_district_geoid"], np.asarray(geography.cd_geoid).astype(np.int64)[kept]
    )
    np.testing.assert_allclose(exported["household_weight"], weights[kept], rtol=1e-6)


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"git_branch": None, "git_commit": "fedcba9876543210", "git_dirty": False, "package_version": None},
        {"git_commit": None, "git_branch": "release", "n_clones": 0, "seed": None},
        {"created_at": None, "dataset_path": "", "n_records": None, "seed": 0, "db_sha256": None},
    ],
    ids=["as-built", "no-branch", "no-commit", "sparse"],
)
def test_validate_header_is_policyengines(pe_package, metadata):
    """``format_validation``'s header equals ``format_report``'s for the same payload, whatever
    PolicyEngine's provenance keys hold; so do the achievability lines."""
    from policyengine_us_data.calibration.validate_package import format_report
    from policyengine_us_data.calibration.validate_package import validate_package as pe_validate

    _, _, payload, _ = pe_package
    payload = payload | {"metadata": payload["metadata"] | metadata}
    package = jaxcal.io.CalibrationPackage.create(
        payload["X_sparse"], payload["targets_df"], payload["target_names"], metadata=payload["metadata"]
    )
    expected = format_report(pe_validate(payload), package_path="calibration_package.pkl").splitlines()
    report = jaxcal.runs.format_validation(jaxcal.runs.validate_package(package), "calibration_package.pkl")
    assert _header(report) == expected[: expected.index("--- Achievability ---")]
    start = expected.index("--- Achievability ---")
    assert report.splitlines()[len(_header(report)) :][:3] == expected[start : start + 3]


def test_validate_cli_header_on_a_converted_package(pe_package, tmp_path, capsys):
    """The converted package's extra metadata (the import, the contract) stays out of the header,
    which names the Git commit, version and records as PolicyEngine does."""
    from policyengine_us_data.calibration.validate_package import format_report
    from policyengine_us_data.calibration.validate_package import validate_package as pe_validate

    path, _, payload, _ = pe_package
    npz = tmp_path / "p.npz"
    assert main(["convert", str(path), str(npz), "--allow-pickle"]) == 0
    capsys.readouterr()
    assert main(["validate", str(npz)]) == 1  # the impossible row
    header = _header(capsys.readouterr().out)
    expected = format_report(pe_validate(payload), package_path=str(npz)).splitlines()
    assert header == expected[: expected.index("--- Achievability ---")]
    assert f"Git: main @ {GIT['git_commit'][:8]} (DIRTY)" in header and "Version: 1.115.4" in header
    assert f"Clones: {N_CLONES}, Records: {N_BASE * N_CLONES:,}, Seed: 42" in header
