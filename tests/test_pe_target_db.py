"""The target database as policyengine-us-data reads it: its ``target_overview`` view, its best-period
query and its row names, on a database with every operation its ETL writes (``in``, ``!=``,
``ucgid_str``-only strata, several periods, inactive and reform rows)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from builders.target_db import Constraint, TargetDatabaseWriter, read_targets
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
