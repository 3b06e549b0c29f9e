"""Builders without PolicyEngine: target database, take-up draws, geography, the per-column
rules and matrix assembly, each against numbers computed by hand here."""

import sqlite3
from contextlib import closing

import numpy as np
import pandas as pd
import pytest

from builders.assembly import assemble_matrix
from builders.dataset import EntityStructure, read_entity_structure, write_dataset_h5
from builders.geography import (
    GeographyAssignment,
    assign_geography,
    districts_from_state_populations,
)
from builders.simulation import StateValues, choose_simulation
from builders.takeup import TAKEUP_BY_VARIABLE, seeded_rng, stable_string_hash, state_rates, takeup_draws
from builders.target_db import (
    Constraint,
    TargetDatabaseWriter,
    connect,
    query_targets,
    target_overview,
    uprate_targets,
)
from builders.target_rows import plan_target_rows, target_name
from builders.target_values import household_values, person_mask, satisfies
from jaxcal.cli import main

# ---------------------------------------------------------------- target database


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "targets.db"
    with TargetDatabaseWriter(path) as w:
        w.add_target("person_count", 2024, 330e6, source="census")  # 1 national
        w.add_target("snap", 2023, 100.0, constraints=[("state_fips", "==", "6")])  # 2 state
        w.add_target("snap", 2022, 90.0, constraints=[("state_fips", "==", 6)])  # 3 older: dropped
        w.add_target("snap", 2024, 999.0, constraints=[("state_fips", "==", 6)], active=False)  # 4 inactive
        w.add_target(
            "person_count",
            2025,
            5.0,
            constraints=[
                ("congressional_district_geoid", "==", 601),
                ("state_fips", "==", 6),
                ("age", "<", 18),
                ("tax_unit_is_filer", "==", 1),
            ],
        )  # 5 district, only later periods
        w.add_target(
            "person_count",
            2026,
            6.0,
            constraints=[
                ("state_fips", "==", 6),
                ("age", "<", 18),
                ("congressional_district_geoid", "==", 601),
                ("tax_unit_is_filer", "==", 1),
            ],
        )  # 6 later still: dropped
        w.add_target("household_count", 2024, 7.0, constraints=[("snap", ">", 0), ("age", ">=", 65)])  # 7
        w.add_target("snap", 2023, 50.0, constraints=[("state_fips", "==", 6)], reform_id=1)  # 8 other reform
    return path


def test_writer_shares_strata_and_writes_the_schema(db):
    with closing(sqlite3.connect(db)) as connection:
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        n_strata = connection.execute("SELECT COUNT(*) FROM strata").fetchone()[0]
        n_constraints = connection.execute("SELECT COUNT(*) FROM stratum_constraints").fetchone()[0]
        columns = [r[1] for r in connection.execute("PRAGMA table_info(targets)")]
    assert {"strata", "stratum_constraints", "targets"} <= tables
    # national, state 6, district 601 (constraint order ignored), snap/age domain: 4 strata
    assert n_strata == 4 and n_constraints == 1 + 4 + 2
    assert columns == [
        "target_id",
        "variable",
        "period",
        "stratum_id",
        "reform_id",
        "value",
        "active",
        "tolerance",
        "source",
        "notes",
    ]


def test_target_overview_derives_geography_and_domain(db):
    overview = _overview(db).set_index("target_id")
    assert overview.loc[1, ["geo_level", "geographic_id"]].tolist() == ["national", "US"]
    assert overview.loc[2, ["geo_level", "geographic_id"]].tolist() == ["state", "6"]
    assert overview.loc[5, ["geo_level", "geographic_id", "domain_variable"]].tolist() == ["district", "601", "age"]
    assert overview.loc[7, "domain_variable"] == "age,snap"
    assert overview.loc[1, "domain_variable"] is None and overview.loc[2, "domain_variable"] is None


def test_query_keeps_active_rows_and_the_best_period(db):
    chosen = _query(db, 2024)
    # snap/state 6: 2023 (latest <= 2024; the 2024 row is inactive); district: the earliest, 2025;
    # the reform row is its own (stratum, variable, reform) key.
    assert chosen["target_id"].tolist() == [1, 2, 5, 7, 8]
    assert _query(db, 2026)["target_id"].tolist() == [1, 2, 6, 7, 8]


def test_uprating_by_cpi_for_amounts_and_population_for_counts(db):
    cpi = {2023: 300.0, 2024: 309.0, 2025: 315.0}.__getitem__
    population = {2024: 333.0, 2025: 336.0}.__getitem__
    targets = uprate_targets(_query(db, 2024), 2024, cpi, population).set_index("target_id")
    assert targets.loc[2, "uprating_factor"] == pytest.approx(309 / 300)
    assert targets.loc[2, "value"] == pytest.approx(100 * 309 / 300)
    assert targets.loc[2, "original_value"] == 100.0
    assert targets.loc[5, "value"] == pytest.approx(5 * 333 / 336)  # a count from 2025, uprated back
    assert targets.loc[1, "uprating_factor"] == 1.0 and targets.loc[1, "value"] == 330e6


def _overview(path):
    with closing(connect(path)) as connection:
        return target_overview(connection)


def _query(path, year):
    with closing(connect(path)) as connection:
        return query_targets(connection, year)


def _write_unrelated_table(path):
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("CREATE TABLE other (x)")
        connection.commit()


def test_connect_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        connect(tmp_path / "missing.db")
    empty = tmp_path / "empty.db"
    _write_unrelated_table(empty)
    with pytest.raises(ValueError, match="lacks the table"):
        connect(empty)


def test_writer_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "t.db"
    with pytest.raises(ValueError, match="operation"), TargetDatabaseWriter(path) as w:
        w.add_target("x", 2024, 1.0, constraints=[("age", "=~", 3)])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- take-up


def test_hash_and_rng_match_policyengine_us_data():
    assert stable_string_hash("") == 0
    assert stable_string_hash("a") == 13687460510735501765
    assert stable_string_hash("abc") == 13225512168537572581
    np.testing.assert_allclose(
        seeded_rng("takes_up_snap_if_eligible", "12345:0").random(3), [0.31060535, 0.52008029, 0.75887873], atol=5e-9
    )


def test_draws_follow_entity_order_within_each_household():
    # entities 0 and 3 belong to household 1 (id 7), entities 1 and 2 to household 0 (id 12345)
    draws = takeup_draws("takes_up_snap_if_eligible", np.array([12345, 7]), np.array([1, 0, 0, 1]), clone=0)
    first, second = seeded_rng("takes_up_snap_if_eligible", "7:0").random(2)
    np.testing.assert_allclose(draws, [first, 0.31060535, 0.52008029, second], atol=5e-9)
    other_clone = takeup_draws("takes_up_snap_if_eligible", np.array([12345, 7]), np.array([1, 0, 0, 1]), clone=1)
    assert other_clone[1] == seeded_rng("takes_up_snap_if_eligible", "12345:1").random()


def test_vectorized_generators_equal_numpys_bit_for_bit():
    from builders._pcg64 import uniforms
    from builders.takeup import stable_string_hashes

    seeds = np.concatenate(
        [
            np.random.default_rng(3).integers(0, 2**63, 300, dtype=np.uint64),
            np.array([0, 1, 2**32 - 1, 2**32, 2**63 - 1], np.uint64),
        ]
    )
    expected = np.stack([np.random.default_rng(int(seed)).random(4) for seed in seeds])
    np.testing.assert_array_equal(uniforms(seeds, 4), expected)
    salts = np.array(["", "a", "12345:0", "987654321:17"])
    assert stable_string_hashes("x:", salts).tolist() == [stable_string_hash("x:" + salt) for salt in salts]
    # many households with several entities, in scrambled order, against one generator each
    household_ids = np.random.default_rng(4).integers(1, 10**9, 50)
    entity_household = np.random.default_rng(5).integers(0, 50, 200)
    draws = takeup_draws("takes_up_ssi_if_eligible", household_ids, entity_household, clone=9)
    for h in range(50):
        mine = entity_household == h
        expected = seeded_rng("takes_up_ssi_if_eligible", f"{household_ids[h]}:9").random(int(mine.sum()))
        np.testing.assert_array_equal(draws[mine], expected)


def test_state_rates():
    np.testing.assert_array_equal(state_rates(0.82, np.array([6, 36])), [0.82, 0.82])
    medicaid = TAKEUP_BY_VARIABLE["medicaid"].rate
    np.testing.assert_array_equal(state_rates(medicaid, np.array([6, 49, 6, 72])), [0.78, 0.53, 0.78, 0.8])


# ---------------------------------------------------------------- geography


def test_geography_layout_and_first_clone_draw():
    places = pd.DataFrame({"cd_geoid": [601, 602, 3601, 3602], "population": [1.0, 3.0, 2.0, 2.0]})
    geo = assign_geography(5, 3, places, seed=7)
    expected_first = np.array([601, 602, 3601, 3602])[
        np.random.default_rng(7).choice(4, 5, p=[1 / 8, 3 / 8, 2 / 8, 2 / 8])
    ]
    np.testing.assert_array_equal(geo.cd_geoid[:5], expected_first)
    np.testing.assert_array_equal(geo.state_fips, geo.cd_geoid // 100)
    assert geo.block_geoid is None and geo.n_columns == 15
    by_record = geo.cd_geoid.reshape(3, 5)
    assert all(len(set(by_record[:, r])) == 3 for r in range(5))  # clones of a record: distinct districts
    np.testing.assert_array_equal(assign_geography(5, 3, places, seed=7).cd_geoid, geo.cd_geoid)


def test_geography_gives_up_redrawing_after_fifty_rounds():
    geo = assign_geography(4, 3, pd.DataFrame({"cd_geoid": [1101], "population": [1.0]}), seed=0)
    assert (geo.cd_geoid == 1101).all()


def test_geography_with_blocks():
    blocks = pd.DataFrame(
        {
            "block_geoid": ["060010001001000", "060010001001001", "360010001001000"],
            "cd_geoid": [601, 601, 3601],
            "population": [1.0, 0.0, 1.0],
        }
    )
    geo = assign_geography(50, 2, blocks, seed=1)
    assert set(geo.block_geoid) == {"060010001001000", "360010001001000"}
    np.testing.assert_array_equal(geo.cd_geoid, np.where(geo.block_geoid == "060010001001000", 601, 3601))


def test_geography_errors():
    with pytest.raises(ValueError, match="population"):
        assign_geography(2, 1, pd.DataFrame({"cd_geoid": [601]}), seed=0)
    with pytest.raises(ValueError, match="not all zero"):
        assign_geography(2, 1, pd.DataFrame({"cd_geoid": [601], "population": [0.0]}), seed=0)
    table = districts_from_state_populations({6: 90.0, 11: 7.0}, {6: 3, 11: 1})
    assert table["cd_geoid"].tolist() == [601, 602, 603, 1101]
    assert table["population"].tolist() == [30.0, 30.0, 30.0, 7.0]


# ---------------------------------------------------------------- rules per column

# Two households. hh0: persons 0 (30) and 1 (5), one tax unit, one SPM unit.
# hh1: persons 2 (70) and 3 (40), tax units 1 and 2, one SPM unit.
STRUCTURE = EntityStructure(
    household_ids=np.array([104, 114]),
    person_household=np.array([0, 0, 1, 1]),
    person_entity={
        "person": np.arange(4),
        "household": np.array([0, 0, 1, 1]),
        "tax_unit": np.array([0, 0, 1, 2]),
        "spm_unit": np.array([0, 0, 1, 1]),
    },
    entity_household={
        "person": np.array([0, 0, 1, 1]),
        "household": np.array([0, 1]),
        "tax_unit": np.array([0, 1, 1]),
        "spm_unit": np.array([0, 1]),
    },
)
AGE = np.array([30, 5, 70, 40], np.float32)


def _household(constraints, entity, amounts=None):
    mask = person_mask({"age": AGE}, constraints, 4)
    s = STRUCTURE
    return household_values(mask, s.person_entity[entity], s.entity_household[entity], 2, amounts)


def test_constraint_operations_and_value_parsing():
    ages = np.array([17, 18, 19], np.float32)
    results = {op: satisfies(ages, Constraint("age", op, "18")).tolist() for op in ("==", "!=", ">", ">=", "<", "<=")}
    assert results == {
        "==": [False, True, False],
        "!=": [True, False, True],
        ">": [False, False, True],
        ">=": [False, True, True],
        "<": [True, False, False],
        "<=": [True, True, False],
    }
    assert satisfies(np.array([0.0, 1.0], np.float32), Constraint("flag", "==", "True")).tolist() == [False, True]
    assert satisfies(np.array([2.5, 3.0]), Constraint("x", ">", "2.75")).tolist() == [False, True]
    assert satisfies(np.array(["SINGLE", "JOINT"]), Constraint("filing_status", "==", "JOINT")).tolist() == [
        False,
        True,
    ]
    with pytest.raises(ValueError, match="numeric"):
        satisfies(AGE, Constraint("age", "==", "old"))


def test_counts_per_entity():
    minors = [Constraint("age", "<", "18")]
    assert _household(minors, "household").tolist() == [1, 0]  # any qualifying person
    assert _household([Constraint("age", ">=", "18")], "person").tolist() == [1, 2]  # qualifying persons
    assert _household([Constraint("age", ">=", "18")], "tax_unit").tolist() == [1, 2]  # qualifying tax units
    assert _household([Constraint("age", ">=", "18")], "spm_unit").tolist() == [1, 1]  # each SPM unit once
    assert _household([], "tax_unit").tolist() == [1, 2]


def test_amounts_are_filtered_at_their_entity():
    seniors = [Constraint("age", ">=", "65")]
    # tax-unit AGI [5, 7, 11]: only tax unit 1 (the 70-year-old's) qualifies, not the whole household
    assert _household(seniors, "tax_unit", np.array([5.0, 7.0, 11.0])).tolist() == [0, 7]
    # an SPM amount counts once when any member qualifies
    assert _household(seniors, "spm_unit", np.array([100.0, 30.0])).tolist() == [0, 30]
    # person amounts: qualifying persons only; household amounts: when any member qualifies
    assert _household([Constraint("age", "<", "35")], "person", np.array([10.0, 1.0, 3.0, 40.0])).tolist() == [11, 0]
    assert _household([Constraint("age", "<", "18")], "household", np.array([1000.0, 2000.0])).tolist() == [1000, 0]
    assert _household([], "person", np.array([10.0, 1.0, 3.0, 40.0])).tolist() == [11, 43]


# ---------------------------------------------------------------- assembly

STATE_VALUES = StateValues(
    states=np.array([6, 36]),
    amounts={
        "employment_income": np.array([[10.0, 0, 0, 40]] * 2),
        "snap": np.array([[100.0, 20], [150, 30]]),
        "adjusted_gross_income": np.array([[5.0, 7, 11]] * 2),
    },
    person_values={
        "age": np.stack([AGE, AGE]),
        "snap": np.array([[100.0, 100, 20, 20], [150, 150, 30, 30]], np.float32),
    },
    eligible={"snap": np.array([[200.0, 50], [300, 60]])},
    entities={
        "employment_income": "person",
        "snap": "spm_unit",
        "adjusted_gross_income": "tax_unit",
        "age": "person",
        "person_count": "person",
        "household_count": "household",
    },
)
# columns: (clone 0, hh0) in CA-1, (0, hh1) in NY-1, (1, hh0) in NY-2, (1, hh1) in CA-2
GEOGRAPHY = GeographyAssignment(
    state_fips=np.array([6, 36, 36, 6]),
    cd_geoid=np.array([601, 3601, 3602, 602]),
    block_geoid=None,
    n_base=2,
    n_clones=2,
)


def _rows(specs):
    """Target rows from (variable, geo_level, geographic_id, constraints)."""
    table = pd.DataFrame(
        {
            "variable": [s[0] for s in specs],
            "geo_level": [s[1] for s in specs],
            "geographic_id": [s[2] for s in specs],
            "stratum_id": range(len(specs)),
            "reform_id": 0,
            "target_id": range(len(specs)),
        }
    )
    constraints = {i: [Constraint(*c) for c in s[3]] for i, s in enumerate(specs)}
    return plan_target_rows(table, constraints)


def _dense(rows, takeup):
    r, c, v = assemble_matrix(rows, GEOGRAPHY, STRUCTURE, STATE_VALUES, rerandomize_takeup=takeup)
    dense = np.zeros((len(rows.table), 4))
    np.add.at(dense, (r, c), v)
    assert (v != 0).all()
    return dense


def test_matrix_by_hand_without_takeup():
    rows = _rows(
        [
            ("person_count", "national", "US", [("age", "<", "18")]),
            ("household_count", "state", "6", [("state_fips", "==", "6"), ("age", ">=", "65")]),
            (
                "employment_income",
                "district",
                "3601",
                [("congressional_district_geoid", "==", "3601"), ("age", ">=", "18")],
            ),
            ("snap", "state", "36", [("state_fips", "==", "36")]),
            ("adjusted_gross_income", "national", "US", [("age", ">=", "65")]),
        ]
    )
    assert rows.table["target_name"].tolist() == [
        "national/adjusted_gross_income/[age>=65]",
        "national/person_count/[age<18]",
        "state_6/household_count/[age>=65]",
        "state_36/snap",
        "cd_3601/employment_income/[age>=18]",
    ]
    np.testing.assert_array_equal(
        _dense(rows, takeup=False),
        [
            [0, 7, 0, 7],  # AGI of the 70-year-old's tax unit only, wherever hh1 lies
            [1, 0, 1, 0],  # the child of hh0, in both clones
            [0, 0, 0, 1],  # CA columns: hh0 (clone 0) has no senior, hh1 (clone 1) has one
            [0, 30, 150, 0],  # NY columns: hh1's SPM unit 30 (clone 0), hh0's 150 (clone 1)
            [0, 40, 0, 0],  # district 3601: hh1 clone 0, the adult with earnings
        ],
    )


def test_matrix_by_hand_with_takeup_draws():
    rows = _rows([("snap", "national", "US", []), ("household_count", "national", "US", [("snap", ">", "0")])])
    rate = TAKEUP_BY_VARIABLE["snap"].rate
    takes = {
        (h, c): seeded_rng("takes_up_snap_if_eligible", f"{h}:{c}").random() < rate for h in (104, 114) for c in (0, 1)
    }
    assert takes == {(104, 0): True, (104, 1): False, (114, 0): False, (114, 1): True}  # draws .557 .964 .864 .059
    # eligible SNAP: column state CA -> [200, 50], NY -> [300, 60] per SPM unit (one per household)
    snap = [200 * takes[104, 0], 60 * takes[114, 0], 300 * takes[104, 1], 50 * takes[114, 1]]
    dense = _dense(rows, takeup=True)
    np.testing.assert_array_equal(dense, [np.array(snap) > 0, snap])
    # without re-randomization: the dataset's take-up
    np.testing.assert_array_equal(_dense(rows, takeup=False), [[1, 1, 1, 1], [100, 30, 150, 20]])


def test_target_name_follows_policyengine():
    constraints = [
        Constraint("congressional_district_geoid", "==", "601"),
        Constraint("state_fips", "==", "6"),
        Constraint("age", "<", "18"),
        Constraint("tax_unit_is_filer", "==", "1"),
    ]
    assert target_name("person_count", constraints) == "cd_601/state_6/person_count/[age<18,tax_unit_is_filer==1]"
    assert target_name("snap", []) == "national/snap"


# ---------------------------------------------------------------- dataset files and command errors


def test_dataset_round_trip_and_errors(tmp_path):
    arrays = (
        {
            "person_id": np.array([1, 2, 3]),
            "household_id": np.array([10, 20]),
            "person_household_id": np.array([20, 10, 20]),
        }
        | {f"{e}_id": np.array([10, 20]) for e in ("tax_unit", "spm_unit", "family", "marital_unit")}
        | {f"person_{e}_id": np.array([20, 10, 20]) for e in ("tax_unit", "spm_unit", "family", "marital_unit")}
    )
    path = write_dataset_h5(tmp_path / "d.h5", arrays, 2024)
    structure = read_entity_structure(path)
    assert structure.person_household.tolist() == [1, 0, 1]
    assert structure.entity_household["tax_unit"].tolist() == [0, 1]
    broken = dict(arrays, person_spm_unit_id=np.array([10, 10, 20]))  # an SPM unit across two households
    with pytest.raises(ValueError, match="exactly one household"):
        read_entity_structure(write_dataset_h5(tmp_path / "b.h5", broken, 2024))
    with pytest.raises(ValueError, match="spm_unit_id"):
        write_dataset_h5(tmp_path / "c.h5", {k: v for k, v in arrays.items() if k != "spm_unit_id"}, 2024)


def test_build_command_reports_bad_input_in_one_line(tmp_path, db, capsys):
    missing = tmp_path / "none.h5"
    assert (
        main(["build", "--dataset", str(missing), "--db-path", str(db), "--package-output", str(tmp_path / "p")]) == 2
    )
    assert "dataset not found" in capsys.readouterr().err
    no_ids = tmp_path / "no_ids.h5"
    write_dataset_h5(tmp_path / "full.h5", {"person_id": [1]} | {k: [1] for k in _ID_ARRAYS}, 2024)
    import h5py

    with h5py.File(no_ids, "w") as h5:
        h5.create_group("person_id").create_dataset("2024", data=[1])
    assert main(["build", "--dataset", str(no_ids), "--db-path", str(db), "--package-output", str(tmp_path / "p")]) == 1
    assert "lacks the array(s) household_id" in capsys.readouterr().err
    empty_db = tmp_path / "empty.db"
    _write_unrelated_table(empty_db)
    args = ["build", "--dataset", str(tmp_path / "full.h5"), "--package-output", str(tmp_path / "p")]
    assert main(args + ["--db-path", str(empty_db)]) == 1
    assert "lacks the table(s) strata" in capsys.readouterr().err
    config = tmp_path / "config.yaml"
    config.write_text("include:\n  - variable: nothing_like_this\n")
    assert main(args + ["--db-path", str(db), "--target-config", str(config)]) == 1
    assert "keeps none" in capsys.readouterr().err
    assert not (tmp_path / "p.npz").exists()
    assert main(["build", "--demo", "--county-level", "--n-clones", "3", "--demo-dir", str(tmp_path / "d")]) == 2
    assert "--n-clones, --county-level apply only to a build from --dataset" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


_ID_ARRAYS = [f"{e}_id" for e in ("household", "tax_unit", "spm_unit", "family", "marital_unit")] + [
    f"person_{e}_id" for e in ("household", "tax_unit", "spm_unit", "family", "marital_unit")
]


def test_matrix_per_clone_takes_each_clone_row():
    """Per-clone values (row c = clone c, take-up already in the amounts): no draws, no state lookup."""
    values = StateValues(
        states=np.array([6, 36]),
        amounts={"snap": np.array([[100.0, 20], [150, 30]])},
        person_values={"age": np.stack([AGE, AGE])},
        eligible={},
        entities=STATE_VALUES.entities,
        per_clone=True,
    )
    rows = _rows(
        [
            ("snap", "national", "US", []),
            ("snap", "state", "36", [("state_fips", "==", "36")]),
            ("person_count", "district", "3602", [("congressional_district_geoid", "==", "3602"), ("age", "<", "18")]),
        ]
    )
    for takeup in (True, False):
        r, c, v = assemble_matrix(rows, GEOGRAPHY, STRUCTURE, values, rerandomize_takeup=takeup)
        dense = np.zeros((3, 4))
        np.add.at(dense, (r, c), v)
        # columns (clone 0, hh0) CA, (0, hh1) NY, (1, hh0) NY-2, (1, hh1) CA: each clone's own amounts
        np.testing.assert_array_equal(dense, [[100, 20, 150, 30], [0, 20, 150, 0], [0, 0, 1, 0]])
    with pytest.raises(ValueError, match="3 clones, the geography 2"):
        bad = StateValues(
            states=values.states,
            amounts={"snap": np.zeros((3, 2))},
            person_values={},
            eligible={},
            entities=values.entities,
            per_clone=True,
        )
        assemble_matrix(rows, GEOGRAPHY, STRUCTURE, bad)


def test_choose_simulation():
    assert choose_simulation("auto", 2, 51) == "per_clone"
    assert choose_simulation("auto", 2, 2) == "per_clone"
    assert choose_simulation("auto", 3, 2) == "per_state"
    assert choose_simulation("per-state", 1, 51) == "per_state"
    assert choose_simulation("per_clone", 100, 2) == "per_clone"
    with pytest.raises(ValueError, match="simulation must be one of"):
        choose_simulation("per_county", 1, 1)
