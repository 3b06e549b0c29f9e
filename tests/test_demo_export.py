"""X·w consistency: the exported H5, weighted and summed by policyengine_us, equals the matrix product.

A small build (synthetic households in two states, clones, take-up re-randomized) with
rows of every kind: the real targets of those states (:func:`builders.real_targets.state_subset`)
plus test rows, so that there are amounts and counts; person, tax-unit, SPM-unit and household
entities; national, state and district geography on blocks, the build county level; take-up-affected variables (snap, ssi,
medicaid, aca_ptc) and the ``medicaid_enrolled`` flag, which keeps the dataset's take-up; tax-expenditure rows
(``reform_id > 0``). The reference sums are computed here from ``policyengine_us.Microsimulation`` on
the exported file (the expenditures with policyengine-core's ``neutralize_variable`` reform), not with the builders' code.
"""

from __future__ import annotations

import argparse
import csv
import operator
import sqlite3

import numpy as np
import pandas as pd
import pytest

from builders.demo_cli import register_demo_commands
from builders.demo_microdata import generate_demo_h5
from builders.h5_check import check_h5
from builders.real_targets import DATA_DIR, RealTarget, real_targets, state_subset, write_real_target_db

pytestmark = pytest.mark.xdist_group("policyengine")  # one worker imports policyengine_us and builds once

YEAR = 2024
STATES = (33, 50)  # New Hampshire (districts 3301, 3302) and Vermont (at large, 5001)
COUNTIES = {3301: ("33001", "33015"), 3302: ("33011", "33015"), 5001: ("50007", "50023")}
"""Two counties' blocks per district (the build is county level: the export sets each clone's county)."""
EXPENDITURE = "qualified_business_income_deduction"
"""A tax expenditure (``reform_id > 0``) of the nation's and Vermont's: the demo's self-employed have it without itemizing."""
OPS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def _records():
    """The two states' real targets, plus test rows of the variables and entities they lack."""
    extra = [
        ("household_count", ()),
        ("spm_unit_count", (("snap", ">", 0),)),
        ("medicaid_enrolled", ()),
        ("medicaid", (("state_fips", "==", 50),)),
        ("ssi", (("state_fips", "==", 33),)),
        ("person_count", (("ssi", ">", 0),)),
        ("social_security", ()),
        ("aca_ptc", (("state_fips", "==", 33),)),
        ("person_count", (("aca_ptc", ">", 0), ("state_fips", "==", 50))),
        ("person_count", (("congressional_district_geoid", "==", 3301),)),
        ("household_count", (("congressional_district_geoid", "==", 3302),)),
        ("snap", (("congressional_district_geoid", "==", 3302),)),
        ("employment_income", (("age", ">=", 18), ("age", "<", 65), ("state_fips", "==", 50))),
    ]
    test_rows = [RealTarget(v, YEAR, 1.0, c, "test", "test row", "test row") for v, c in extra]
    return state_subset(real_targets(), STATES) + test_rows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from policyengine_us import Microsimulation

    from builders.real_targets import district_populations
    from builders.target_db import read_targets
    from builders.unified_matrix import build_calibration_package
    from jaxcal.io import save_package

    directory = tmp_path_factory.mktemp("xw")
    dataset = generate_demo_h5(directory / "base.h5", 60, seed=11, states=list(STATES))
    db = write_real_target_db(directory / "targets.db", _records())
    _add_expenditure_targets(db, ("United States", "State FIPS 50 (VT)"))
    districts = district_populations()
    districts = districts.loc[(districts["cd_geoid"] // 100).isin(STATES)]
    places = pd.DataFrame(
        [
            {"block_geoid": f"{county}{100 * d + k:06d}{1000 + k:04d}", "cd_geoid": d, "population": p / 2}
            for d, p in zip(districts["cd_geoid"], districts["population"])
            for k, county in enumerate(COUNTIES[d])
        ]
    )
    package, _ = build_calibration_package(
        dataset, db, n_clones=3, seed=1, places=places, simulation="per_clone", county_level=True, log=lambda m: None
    )
    save_package(package, directory / "package.npz")
    rng = np.random.default_rng(0)
    weights = np.where(rng.random(package.n_records) < 0.3, 0.0, rng.uniform(50, 150, package.n_records))
    np.save(directory / "weights.npy", weights)
    output = directory / "calibrated.h5"
    parser = argparse.ArgumentParser(prog="jaxcal")
    register_demo_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["export", str(directory / "package.npz"), str(directory / "weights.npy"), str(output)])
    assert args.run(args) == 0
    _, constraints = read_targets(db, YEAR)
    return package, weights, output, constraints, Microsimulation(dataset=str(output)), directory


def _add_expenditure_targets(db, places) -> None:
    """:data:`EXPENDITURE` as a tax-expenditure target (reform 1) of each of these strata (by their notes)."""
    with sqlite3.connect(db) as connection:
        for notes in places:
            (stratum,) = connection.execute("SELECT stratum_id FROM strata WHERE notes = ?", (notes,)).fetchone()
            connection.execute(
                "INSERT INTO targets (variable, period, stratum_id, reform_id, value, active) VALUES (?, ?, ?, 1, 1e9, 1)",
                (EXPENDITURE, YEAR, stratum),
            )
    connection.close()


def _qualifying(sim, entity: str, constraints) -> np.ndarray:
    """Per ``entity``: whether a member meets every constraint."""
    mask = np.ones(len(sim.calculate("person_id", YEAR)), bool)
    for c in constraints:
        values = np.asarray(sim.calculate(c.variable, YEAR, map_to="person"))
        value = float(c.value) if c.value.lstrip("-").replace(".", "", 1).isdigit() else c.value == "True"
        mask &= OPS[c.operation](values, value)
    return mask if entity == "person" else sim.populations[entity].any(mask)


def _reference_sum(sim, variable: str, constraints) -> float:
    """Sum of ``variable`` times the household weight over the entities with a member meeting every constraint."""
    variables = sim.tax_benefit_system.variables
    entity = variable[: -len("_count")] if variable.endswith("_count") else variables[variable].entity.key
    # The household weight of each entity (map_to would split it among a household's entities).
    person_weight = np.asarray(sim.calculate("household_weight", YEAR, map_to="person"), np.float64)
    weight = person_weight if entity == "person" else sim.populations[entity].value_from_first_person(person_weight)
    amount = 1.0 if variable.endswith("_count") else np.asarray(sim.calculate(variable, YEAR), np.float64)
    return float(np.sum(np.where(_qualifying(sim, entity, constraints), amount, 0.0) * weight))


def _reference_expenditure(sim, repealed, constraints) -> float:
    """The weighted income tax the repeal adds over the households with a member meeting every
    constraint: ``repealed`` is the export under policyengine-core's ``neutralize_variable`` reform."""
    added = [np.asarray(s.calculate("income_tax", YEAR, map_to="household"), np.float64) for s in (repealed, sim)]
    weight = np.asarray(sim.calculate("household_weight", YEAR), np.float64)
    return float(np.sum(np.where(_qualifying(sim, "household", constraints), added[0] - added[1], 0.0) * weight))


def test_exported_file_passes_check_h5(exported):
    _, weights, output, _, _, _ = exported
    assert check_h5(output) == []


def test_export_keeps_positive_weights_with_their_geography(exported):
    package, weights, _, _, sim, _ = exported
    kept = weights > 0
    np.testing.assert_allclose(np.asarray(sim.calculate("household_weight", YEAR)), weights[kept], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sim.calculate("state_fips", YEAR)), package.geography["state_fips"][kept])
    np.testing.assert_array_equal(
        np.asarray(sim.calculate("congressional_district_geoid", YEAR)), package.geography["cd_geoid"][kept]
    )
    np.testing.assert_array_equal(np.asarray(sim.calculate("household_id", YEAR)), np.arange(kept.sum()))
    counties = package.geography["block_geoid"][kept].astype("U5")
    names = {"33001": "BELKNAP_COUNTY_NH", "33011": "HILLSBOROUGH_COUNTY_NH", "33015": "ROCKINGHAM_COUNTY_NH"}
    names |= {"50007": "CHITTENDEN_COUNTY_VT", "50023": "WASHINGTON_COUNTY_VT"}
    assert package.metadata["county_level"] and len(set(counties)) == 5
    county = sim.calculate("county", YEAR)
    np.testing.assert_array_equal(
        np.asarray(county.decode_to_str() if hasattr(county, "decode_to_str") else county), [names[c] for c in counties]
    )


@pytest.fixture(scope="module")
def comparison(exported):
    """Per row: (name, variable, geo_level, domain_variable, X @ w, PolicyEngine's sum on the export)."""
    from policyengine_core.reforms import Reform
    from policyengine_us import Microsimulation

    package, weights, output, constraints, sim, _ = exported

    class Repeal(Reform):
        def apply(self):
            self.neutralize_variable(EXPENDITURE)

    repealed = Microsimulation(dataset=str(output), reform=Repeal)
    predicted = package.matrix @ weights
    table = package.targets

    def reference(i: int) -> float:
        row_constraints = constraints.get(int(table["stratum_id"][i]), [])
        if table["reform_id"][i] > 0:
            assert table["variable"][i] == EXPENDITURE
            return _reference_expenditure(sim, repealed, row_constraints)
        return _reference_sum(sim, table["variable"][i], row_constraints)

    return [
        (
            package.target_names[i],
            table["variable"][i],
            table["geo_level"][i],
            table["domain_variable"][i],
            float(predicted[i]),
            reference(i),
        )
        for i in range(package.n_targets)
    ]


NOT_PER_RECORD = {"medicaid"}
"""policyengine-us prices Medicaid at the state's spending per weighted enrollee of the file, so
its dollars on the export add up to the state's spending whatever the weights: no matrix row can
be linear in them. The row is built (it draws Medicaid take-up) but not compared."""


def _mismatches(rows):
    return [
        f"{name}: X@w {xw:,.2f} vs PolicyEngine {reference:,.2f}"
        for name, variable, _, _, xw, reference in rows
        if variable not in NOT_PER_RECORD and not np.isclose(xw, reference, rtol=1e-3, atol=1e-6)
    ]


def test_x_times_w_matches_policyengine_on_the_export(comparison):
    assert _mismatches(comparison) == []
    # Not vacuous: every kind of row is nonzero somewhere.
    nonzero = [row for row in comparison if row[5] != 0]
    kinds = {row[1] for row in nonzero} | {row[3] for row in nonzero if isinstance(row[3], str)}
    assert {
        "person_count",
        "tax_unit_count",
        "spm_unit_count",
        "household_count",
        "adjusted_gross_income",
        "snap",
        "ssi",
        "medicaid_enrolled",
        "aca_ptc",
        "eitc",
        "employment_income",
        "social_security",
        EXPENDITURE,
    } <= kinds
    expenditures = [row for row in comparison if row[0].endswith(f"{EXPENDITURE}_expenditure")]
    assert len(expenditures) == 2 and all(row[5] > 0 for row in expenditures)
    assert {row[2] for row in nonzero} == {"national", "state", "district"}
    # The take-up interactions per-state values miss: aca_ptc (filers get it without take-up) and snap
    # (an SSI non-taker gets more SNAP): the two states' SNAP cost, district snap, the two ACA rows.
    interactions = [row for row in comparison if "aca_ptc" in (row[1], str(row[3])) or row[1] == "snap"]
    assert len(interactions) == 5 and all(row[5] > 0 for row in interactions)


def test_build_ran_per_clone(exported):
    package = exported[0]
    assert package.metadata["simulation"] == "per_clone"  # forced: auto runs 3 clones in 2 states per state
    assert set(package.metadata["takeup_inputs"]) == {
        "takes_up_snap_if_eligible",
        "takes_up_ssi_if_eligible",
        "takes_up_medicaid_if_eligible",
        "takes_up_aca_if_eligible",
    }


def test_export_of_one_state(exported):
    package, weights, _, _, _, directory = exported
    from builders.export import export_h5

    summary = export_h5(package, weights, directory / "nh.h5", states=[33])
    assert summary.n_households == int(((weights > 0) & (package.geography["state_fips"] == 33)).sum())
    assert summary.weight_sum == pytest.approx(weights[package.geography["state_fips"] == 33].sum())
    assert check_h5(summary.path) == []
    with pytest.raises(ValueError, match="nothing to export"):
        export_h5(package, weights, directory / "none.h5", districts=[4801])


def test_demo_build_is_cached(tmp_path, exported, capsys):  # after the module's build: policyengine_us is imported
    from builders.demo_cli import add_demo_build_arguments, build_demo_package, run_build_demo
    from jaxcal.cli import CommandError
    from jaxcal.io import load_package

    path = build_demo_package(tmp_path, n_households=20, n_clones=2, states=[11], log=lambda m: None)
    package = load_package(path)
    assert package.n_records == 40 and set(package.geography["cd_geoid"]) == {1101}
    # DC's real targets: 18 national age bands (DC's total); for the state 18 + 2 SNAP + 1 Medicaid
    # + 10 SOI band counts + 9 band amounts (the band below $1, whose AGI is negative, is left out)
    # + 2 EITC; 18 + 1 SNAP for its one district.
    assert package.n_targets == 18 + 42 + 19
    levels = package.targets["geo_level"].value_counts().to_dict()
    assert levels == {"national": 18, "state": 42, "district": 19}
    assert (package.targets["value"] >= 0).all()
    with open(DATA_DIR / "acs_s0101_state.csv") as f:
        dc = next(row for row in csv.DictReader(f) if row["ucgid"] == "0400000US11")
    national = package.targets[package.targets["geo_level"] == "national"]
    under_5 = national.loc[national["target_name"].str.contains(r"age<5\b"), "original_value"]
    assert under_5.tolist() == [float(dc["0-4"])]  # the "national" row is DC's own
    assert package.metadata["demo_settings"]["states"] == [11]
    modified = path.stat().st_mtime_ns
    # `jaxcal build --demo` with the same settings reuses it.
    parser = argparse.ArgumentParser(prog="jaxcal build")
    add_demo_build_arguments(parser)
    args = parser.parse_args(
        ["--demo", "--demo-dir", str(tmp_path), "--demo-households", "20", "--demo-clones", "2", "--demo-states", "11"]
    )
    assert run_build_demo(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(path) and f"using the cached demo package {path}" in captured.err
    assert path.stat().st_mtime_ns == modified
    with pytest.raises(CommandError, match="--demo-states takes comma-separated FIPS codes"):
        run_build_demo(parser.parse_args(["--demo", "--demo-states", "CA"]))
    with pytest.raises(CommandError, match=r"unknown state FIPS code\(s\) \[72\]"):
        run_build_demo(parser.parse_args(["--demo", "--demo-states", "11,72"]))
