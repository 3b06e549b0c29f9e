"""The target database as policyengine-us-data reads it: its ``target_overview`` view, its best-period
query and its row names, on a database with every operation its ETL writes (``in``, ``!=``,
``ucgid_str``-only strata, several periods, inactive and reform rows)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from builders.real_targets import aca_ptc_state_factors
from builders.target_db import (
    Constraint,
    TargetDatabaseWriter,
    read_targets,
    reconcile_districts,
    select_domains,
    uprate_targets,
)
from builders.target_rows import plan_target_rows
from builders.target_values import satisfies

pytest.importorskip("sqlalchemy")
matrix_builder = pytest.importorskip("policyengine_us_data.calibration.unified_matrix_builder")

pytestmark = pytest.mark.pe_reference

YEAR = 2024
COLUMNS = ["target_id", "stratum_id", "variable", "reform_id", "value", "period", "geo_level", "geographic_id"]


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "policy_data.db"
    joint = [("filing_status", "in", "JOINT|SURVIVING_SPOUSE"), ("adjusted_gross_income", ">=", "100000")]
    with TargetDatabaseWriter(path) as db:
        db.add_target("person_count", YEAR, 3.4e8)
        db.add_target("person_count", YEAR - 2, 3.3e8, constraints=[("age", "<", "18")])
        db.add_target("person_count", YEAR + 1, 7.5e7, constraints=[("age", "<", "18")])
        db.add_target("person_count", YEAR + 1, 6e7, constraints=[("age", ">=", "65")])
        db.add_target("tax_unit_count", YEAR - 1, 5e7, constraints=joint)
        db.add_target("tax_unit_count", YEAR - 1, 6e6, constraints=[*joint, ("state_fips", "==", "6")])
        db.add_target("snap", YEAR, 1.2e10, constraints=[("state_fips", "==", "36")])
        db.add_target("snap", YEAR, 9e9, constraints=[("state_fips", "!=", "6")])
        db.add_target("household_count", YEAR, 1.3e7, constraints=[("ucgid_str", "==", "0400000US06")])
        db.add_target("household_count", YEAR, 3e5, constraints=[("ucgid_str", "==", "5001800US0601")])
        db.add_target(
            "adjusted_gross_income",
            YEAR,
            4e10,
            constraints=[("state_fips", "==", "6"), ("congressional_district_geoid", "==", "601")],
        )
        db.add_target("medicaid", YEAR, 6e11, constraints=[("medicaid_enrolled", "==", "True")], active=False)
        db.add_target("income_tax", YEAR, 2e11, reform_id=1)
    return path


@pytest.fixture(scope="module")
def policyengine_builder(database, tmp_path_factory):
    """PolicyEngine's builder on a copy (it writes its views into the database it opens)."""
    copy = tmp_path_factory.mktemp("pe") / "policy_data.db"
    shutil.copy(database, copy)
    return matrix_builder.UnifiedMatrixBuilder(db_uri=f"sqlite:///{copy}", time_period=YEAR)


def _text_or_none(column):
    return [None if pd.isna(v) else str(v) for v in column]


def test_targets_are_policyengines_query(database, policyengine_builder):
    expected = policyengine_builder._query_targets({})
    targets, _ = read_targets(database, YEAR)
    assert len(targets) == len(expected) == 11  # the inactive row left out, one period per target
    for column in COLUMNS:
        np.testing.assert_array_equal(targets[column].astype(str), expected[column].astype(str), err_msg=column)
    assert _text_or_none(targets["domain_variable"]) == _text_or_none(expected["domain_variable"])
    by_id = targets.set_index("target_id")
    assert 3 not in by_id.index and by_id.loc[2, "period"] == YEAR - 2  # the latest period <= the year
    assert by_id.loc[4, "period"] == YEAR + 1  # no period <= the year: the earliest after it
    assert (by_id.loc[9, "geo_level"], by_id.loc[9, "geographic_id"]) == ("state", "0400000US06")
    assert (by_id.loc[10, "geo_level"], by_id.loc[10, "geographic_id"]) == ("district", "5001800US0601")
    assert (by_id.loc[8, "geo_level"], by_id.loc[8, "geographic_id"]) == ("state", "6")  # state_fips != 6


def test_row_names_are_policyengines(database, policyengine_builder):
    targets, constraints = read_targets(database, YEAR)
    rows = plan_target_rows(targets, constraints)
    for _, row in rows.table.iterrows():
        expected = policyengine_builder._make_target_name(
            row["variable"],
            policyengine_builder._get_stratum_constraints(int(row["stratum_id"])),
            int(row["reform_id"]),
        )
        if row["reform_id"] == 0:
            assert row["target_name"] == expected
    names = set(rows.table["target_name"])
    assert "national/tax_unit_count/[adjusted_gross_income>=100000,filing_statusinJOINT|SURVIVING_SPOUSE]" in names
    assert "national/household_count/[ucgid_str==0400000US06]" in names


def test_in_is_policyengines_apply_op():
    from policyengine_us_data.calibration.calibration_utils import apply_op

    status = np.array(["SINGLE", "JOINT", "SURVIVING_SPOUSE", "SEPARATE", "JOINT"])
    constraint = Constraint("filing_status", "in", "JOINT | SURVIVING_SPOUSE")
    np.testing.assert_array_equal(satisfies(status, constraint), apply_op(status, "in", constraint.value))
    np.testing.assert_array_equal(satisfies(status, constraint), [False, True, True, False, True])
    ages = np.array([3.0, 17.0, 40.0])
    np.testing.assert_array_equal(satisfies(ages, Constraint("age", "in", "3|40")), [True, False, True])


CPI = {YEAR - 2: 292.7, YEAR - 1: 304.7, YEAR: 313.7}
POPULATION = {YEAR - 2: 333.3e6, YEAR - 1: 335.9e6, YEAR: 338.6e6}
HIERARCHICAL = ["snap", "aca_ptc", "age"]


@pytest.fixture(scope="module")
def domain_database(tmp_path_factory):
    """Domains at every level, periods before the year, districts of states with and without a
    state row, districts summing to 0, a reform row first among its state's, ages in bands."""
    path = tmp_path_factory.mktemp("domains") / "policy_data.db"
    snap, aca = ("snap", ">", "0"), ("aca_ptc", ">", "0")

    def at(place: int, *constraints):
        state = ("state_fips", "==", str(place if place < 100 else place // 100))
        district = [("congressional_district_geoid", "==", str(place))] if place >= 100 else []
        return [state, *district, *constraints]

    with TargetDatabaseWriter(path) as db:
        db.add_target("household_count", YEAR - 1, 2.2e7, constraints=[snap])  # national, another year: dropped
        db.add_target("snap", YEAR, 1e11, constraints=[snap])  # national, this year: kept
        db.add_target("household_count", YEAR - 1, 3.1e6, constraints=at(6, snap), reform_id=1)  # first in state 6
        db.add_target("household_count", YEAR - 1, 3e6, constraints=at(6, snap))
        db.add_target("household_count", YEAR, 2.9e6, constraints=at(36, snap))
        for district, value in ((601, 1.1e5), (602, 2.3e5), (3601, 1.4e5), (3602, 1.6e5), (4801, 9e4)):
            db.add_target(
                "household_count", YEAR - 1 if district < 3600 else YEAR, value, constraints=at(district, snap)
            )
        db.add_target("household_count", YEAR, 5e4, constraints=[("ucgid_str", "==", "5001800US0603"), snap])
        db.add_target("snap", YEAR, 9e9, constraints=at(36, snap))
        for district in (3601, 3602):
            db.add_target("snap", YEAR, 0.0, constraints=at(district, snap))  # sum 0: left alone
        for variable, value in (("aca_ptc", 1e10), ("tax_unit_count", 1e6), ("person_count", 2e6)):
            db.add_target(variable, YEAR - 2, value, constraints=at(6, aca))
            for district, share in ((601, 0.3), (602, 0.5)):
                db.add_target(variable, YEAR - 2, value * share, constraints=at(district, aca))
        db.add_target("aca_ptc", YEAR, 4e9, constraints=at(36, aca))
        db.add_target("aca_ptc", YEAR, 1e9, constraints=at(3601, aca))
        for low, high, value in ((0, 18, 9e6), (18, 65, 2.4e7)):  # one state total for all bands: PE's rule
            band = [("age", ">=", str(low)), ("age", "<", str(high))]
            db.add_target("person_count", YEAR - 1, value, constraints=at(6, *band))
            for district, share in ((601, 0.26), (602, 0.27)):
                db.add_target("person_count", YEAR - 1, value * share, constraints=at(district, *band))
        db.add_target("person_count", YEAR, 1.5e6, constraints=at(6, ("medicaid_enrolled", "==", "True")))
        db.add_target("person_count", YEAR, 4e5, constraints=at(601, ("medicaid_enrolled", "==", "True")))
    return path


def _policyengine_uprated(database, tmp_path, target_filter):
    """``build_matrix``'s first steps: the query, then uprating by CPI and population."""
    from types import SimpleNamespace

    copy = tmp_path / "policy_data.db"
    shutil.copy(database, copy)
    builder = matrix_builder.UnifiedMatrixBuilder(db_uri=f"sqlite:///{copy}", time_period=YEAR)
    parameters = SimpleNamespace(
        gov=SimpleNamespace(bls=SimpleNamespace(cpi=SimpleNamespace(cpi_u=CPI.__getitem__))),
        calibration=SimpleNamespace(
            gov=SimpleNamespace(census=SimpleNamespace(populations=SimpleNamespace(total=POPULATION.__getitem__)))
        ),
    )
    factors = builder._calculate_uprating_factors(parameters)
    targets = builder._query_targets(target_filter)
    targets["original_value"] = targets["value"].copy()
    targets["uprating_factor"] = [
        builder._get_uprating_info(v, p, factors)[0] for v, p in zip(targets["variable"], targets["period"])
    ]
    targets["value"] = targets["original_value"] * targets["uprating_factor"]
    return builder, targets, factors


def _jaxcal_uprated(database):
    targets, constraints = read_targets(database, YEAR)
    return uprate_targets(plan_target_rows(targets, constraints).table, YEAR, CPI.__getitem__, POPULATION.__getitem__)


def test_domain_variables_are_policyengines_filter(domain_database, tmp_path):
    _, expected, _ = _policyengine_uprated(domain_database, tmp_path, {"domain_variables": ["snap", "aca_ptc"]})
    targets, _ = read_targets(domain_database, YEAR)
    selected = select_domains(targets, ["snap", "aca_ptc"])
    assert selected["target_id"].tolist() == expected["target_id"].tolist()
    assert set(selected["domain_variable"]) == {"snap", "aca_ptc"} and len(selected) == 25


def test_hierarchical_uprating_is_policyengines(domain_database, tmp_path):
    builder, expected, factors = _policyengine_uprated(domain_database, tmp_path, {})
    expected = builder._apply_hierarchical_uprating(expected, HIERARCHICAL, factors).set_index("target_id")
    ours = reconcile_districts(
        _jaxcal_uprated(domain_database),
        HIERARCHICAL,
        YEAR,
        lambda domain: aca_ptc_state_factors(YEAR) if domain == "aca_ptc" else None,
    ).set_index("target_id")
    assert sorted(ours.index) == sorted(expected.index)
    ours = ours.loc[expected.index]
    for column in ("value", "hif", "state_uprating_factor"):
        np.testing.assert_array_equal(ours[column].to_numpy(float), expected[column].to_numpy(float), err_msg=column)
    # What it did, by hand: the dropped rows, state 6's SNAP districts scaled by its first row (the
    # reform one) and uprated one year by population, the ACA districts by the 2024 multipliers, the bands pooled.
    assert {1, 3, 4} - set(ours.index) == {1, 3, 4} and 2 in ours.index
    snap_6 = ours.loc[(ours["variable"] == "household_count") & ours["geographic_id"].isin(["601", "602"])]
    np.testing.assert_allclose(snap_6["hif"], 3.1e6 / 3.4e5)
    np.testing.assert_allclose(
        snap_6["value"], snap_6["original_value"] * 3.1e6 / 3.4e5 * POPULATION[YEAR] / POPULATION[YEAR - 1]
    )
    aca_6 = ours.loc[(ours["variable"] == "aca_ptc") & (ours["geo_level"] == "district")]
    assert aca_6.loc[aca_6["geographic_id"] == "601", "state_uprating_factor"].item() == pytest.approx(
        1.0554375137756227 * 1.1459694989106755  # vol_mult * val_mult, California 2022-2024
    )
    ages = ours.loc[(ours["domain_variable"] == "age") & (ours["geo_level"] == "district")]
    np.testing.assert_allclose(ages["hif"], 9e6 / ((9e6 + 2.4e7) * 0.53))
    untouched = ours.loc[ours["hif"].isna() & (ours["geo_level"] == "district")]
    assert {"4801", "5001800US0603"} <= set(untouched["geographic_id"])
    assert (untouched["value"] == untouched["original_value"] * untouched["uprating_factor"]).all()
