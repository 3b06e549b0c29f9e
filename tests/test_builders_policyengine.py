"""End to end with policyengine-us: a three-household dataset and a target database written
here, ``jaxcal build`` on them, the matrix against values computed by hand, then ``jaxcal fit``.

Marked with the ``policyengine`` xdist group (as every test importing policyengine_us), so
that under ``-n 2 --dist loadgroup`` one worker pays for ``import policyengine_us`` (~20-45 s).
"""

import json

import numpy as np
import pandas as pd
import pytest

from builders.dataset import write_dataset_h5
from builders.takeup import TAKEUP_BY_VARIABLE, seeded_rng
from builders.target_db import TargetDatabaseWriter
from jaxcal.cli import main
from jaxcal.io import load_package

YEAR = 2024
# hh 0 (id 11): an earner of 30 and a child of 5, one tax unit.
# hh 1 (id 22): a pensioner of 70 without income.
# hh 2 (id 33): a couple (40 and 38) filing jointly, and a 19-year-old filing alone.
DATASET = dict(
    person_id=np.array([1, 2, 3, 4, 5, 6]),
    household_id=np.array([11, 22, 33]),
    person_household_id=np.array([11, 11, 22, 33, 33, 33]),
    tax_unit_id=np.array([1, 2, 3, 4]),
    person_tax_unit_id=np.array([1, 1, 2, 3, 3, 4]),
    spm_unit_id=np.array([1, 2, 3]),
    person_spm_unit_id=np.array([1, 1, 2, 3, 3, 3]),
    family_id=np.array([1, 2, 3]),
    person_family_id=np.array([1, 1, 2, 3, 3, 3]),
    marital_unit_id=np.array([1, 2, 3, 4, 5]),
    person_marital_unit_id=np.array([1, 2, 3, 4, 4, 5]),
    age=np.array([30, 5, 70, 40, 38, 19]),
    employment_income=np.array([12_000.0, 0, 0, 50_000, 3_000, 8_000]),
    is_tax_unit_head=np.array([True, False, True, True, False, True]),
    is_tax_unit_spouse=np.array([False, False, False, False, True, False]),
    state_fips=np.array([6, 6, 6]),
)
PERSONS_PER_HOUSEHOLD = np.array([2, 1, 3])
pytestmark = pytest.mark.xdist_group("policyengine")
PLACES = pd.DataFrame({"cd_geoid": [601, 602, 3601], "population": [1.0, 1.0, 2.0]})


def test_build_matches_hand_computation_then_fits(tmp_path, capsys):
    dataset = write_dataset_h5(tmp_path / "tiny.h5", DATASET, YEAR)
    db = tmp_path / "targets.db"
    with TargetDatabaseWriter(db) as w:
        w.add_target("person_count", YEAR, 6_000.0)
        w.add_target("person_count", YEAR, 1_000.0, constraints=[("age", "<", 18)])
        w.add_target("tax_unit_count", YEAR, 4_000.0, constraints=[("age", ">=", 18), ("age", "<", 65)])
        w.add_target("adjusted_gross_income", YEAR, 2e7, constraints=[("age", "<", 30)])
        w.add_target("snap", YEAR - 2, 1e6)  # uprated by CPI-U from 2022
        w.add_target("household_count", YEAR, 900.0, constraints=[("state_fips", "==", 6), ("age", ">=", 65)])
        w.add_target(
            "employment_income",
            YEAR,
            3e7,
            constraints=[("state_fips", "==", 6), ("congressional_district_geoid", "==", 601)],
        )
        w.add_target("no_such_variable", YEAR, 1.0)
        w.add_target("employment_income + age", YEAR, 5e6, constraints=[("age", ">=", 18)])  # PE's additive form
    places = tmp_path / "places.csv"
    PLACES.to_csv(places, index=False)
    output = tmp_path / "package.npz"
    code = main(
        [
            "build",
            "--dataset",
            str(dataset),
            "--db-path",
            str(db),
            "--n-clones",
            "2",
            "--seed",
            "3",
            "--geography",
            str(places),
            "--package-output",
            str(output),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, err  # validate's verdict: the unknown variable's row is impossible
    assert "no_such_variable" in err and "simulate:" in err
    assert "national/no_such_variable" in out

    package = load_package(output)
    targets = package.targets
    assert list(package.target_names) == [
        "national/adjusted_gross_income/[age<30]",
        "national/employment_income + age/[age>=18]",
        "national/no_such_variable",
        "national/person_count",
        "national/person_count/[age<18]",
        "national/snap",
        "national/tax_unit_count/[age<65,age>=18]",
        "state_6/household_count/[age>=65]",
        "cd_601/state_6/employment_income",
    ]
    snap = targets.iloc[5]
    assert snap["original_value"] == 1e6 and snap["period"] == YEAR - 2
    np.testing.assert_allclose(snap["uprating_factor"], 309.794 / 281.148, rtol=1e-6)  # policyengine-us CPI-U

    state, district = package.geography["state_fips"], package.geography["cd_geoid"]
    np.testing.assert_array_equal(state, district // 100)
    household = np.tile(np.arange(3), 2)
    expected = np.zeros((9, 6))
    expected[0] = np.array([12_000.0, 0, 8_000])[household]  # tax units with someone under 30: hh0's, the 19-year-old's
    expected[1] = np.array([12_000.0 + 30, 70, 61_000 + 40 + 38 + 19])[household]  # adults' earnings plus ages
    expected[3] = PERSONS_PER_HOUSEHOLD[household]
    expected[4] = household == 0  # the child
    expected[5] = _snap_after_takeup(dataset, state, household)
    expected[6] = np.array([1, 0, 2])[household]  # working-age tax units: the couple's counts once, the 19-year-old's
    expected[7] = (household == 1) & (state == 6)
    expected[8] = np.where(district == 601, np.array([12_000.0, 0, 61_000])[household], 0)
    np.testing.assert_allclose(package.matrix.toarray(), expected, rtol=1e-6)
    assert package.nnz == np.count_nonzero(expected)
    metadata = package.metadata
    assert metadata["n_clones"] == 2 and metadata["n_base_records"] == 3 and metadata["seed"] == 3
    assert metadata["dataset_path"] == str(dataset.resolve()) and metadata["db_path"] == str(db.resolve())
    assert len(metadata["dataset_sha256"]) == 64 and metadata["target_config_path"] is None
    assert metadata["simulation"] == "per_clone"  # auto: 2 clones, 2 states
    # Per state (policyengine-us-data's way) gives the same matrix here: nothing else drawn touches SNAP.
    per_state = tmp_path / "per_state.npz"
    assert (
        main(
            [
                "build",
                "--dataset",
                str(dataset),
                "--db-path",
                str(db),
                "--n-clones",
                "2",
                "--seed",
                "3",
                "--geography",
                str(places),
                "--package-output",
                str(per_state),
                "--simulation",
                "per-state",
            ]
        )
        == 1
    )
    capsys.readouterr()
    again = load_package(per_state)
    assert again.metadata["simulation"] == "per_state"
    np.testing.assert_allclose(again.matrix.toarray(), expected, rtol=1e-6)
    assert metadata["unknown_variables"] == ["no_such_variable"]
    np.testing.assert_array_equal(package.initial_weights, np.full(6, 100.0))

    weights = tmp_path / "fit" / "w.npy"
    assert main(["fit", "--package-path", str(output), "--epochs", "5", "--output", str(weights), "--quiet"]) == 0
    fitted = np.load(weights)
    assert fitted.shape == (6,) and np.isfinite(fitted).all()
    json.dumps(metadata)  # provenance stays JSON

    mixed = tmp_path / "mixed.db"
    with TargetDatabaseWriter(mixed) as w:
        w.add_target("employment_income+adjusted_gross_income", YEAR, 1.0)  # a person and a tax-unit variable
    args = ["build", "--dataset", str(dataset), "--db-path", str(mixed), "--n-clones", "1", "--geography", str(places)]
    assert main([*args, "--package-output", str(tmp_path / "mixed.npz")]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        error.startswith("jaxcal build: error:") and "adds variables of different entities (person, tax_unit)" in error
    )
    assert not (tmp_path / "mixed.npz").exists()


def _snap_after_takeup(dataset, column_state, household):
    """SNAP per column computed independently: ``snap_if_takes_up`` of the column's state times
    policyengine-us-data's draw (one SPM unit per household here) below the 82% rate."""
    from policyengine_us import Simulation

    simulation = Simulation(dataset=str(dataset))
    eligible = {}
    for state in np.unique(column_state):
        simulation.set_input("state_fips", YEAR, np.full(3, state))
        simulation.branches.clear()
        simulation.drop_computed_arrays()
        eligible[state] = np.asarray(simulation.calculate("snap_if_takes_up", YEAR))
    assert any(e.sum() > 0 for e in eligible.values())  # the test exercises real SNAP amounts
    ids = DATASET["household_id"]
    rate = TAKEUP_BY_VARIABLE["snap"].rate
    return np.array(
        [
            eligible[column_state[c]][h]
            * (seeded_rng("takes_up_snap_if_eligible", f"{ids[h]}:{c // 3}").random() < rate)
            for c, h in enumerate(household)
        ]
    )
