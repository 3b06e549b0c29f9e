"""The real target database (builders/real_targets.py): >= 10,000 real targets in PolicyEngine's
schema from the vendored extracts, spot-checked against the policyengine-us-data wheel's raw
files when the wheel is installed, and the vendored extracts reproducible from it byte for byte."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import pathlib
import shutil
import sqlite3

import numpy as np
import pytest

from builders import real_targets as rt
from builders.geography import assign_geography
from builders.synthetic_problem import DISTRICTS_PER_STATE
from builders.target_db import read_targets, target_overview

HAVE_WHEEL = importlib.util.find_spec(rt.WHEEL_PACKAGE) is not None


@pytest.fixture(scope="module")
def database(tmp_path_factory) -> pathlib.Path:
    return rt.write_real_target_db(tmp_path_factory.mktemp("real") / "targets.db")


@pytest.fixture(scope="module")
def overview(database):
    connection = sqlite3.connect(database)
    try:
        return target_overview(connection)
    finally:
        connection.close()


@pytest.fixture(scope="module")
def raw() -> pathlib.Path:
    return rt.wheel_root()


def _by_constraints(overview, database) -> dict[frozenset, list[tuple[str, float]]]:
    """``{constraint set: [(variable, value), ...]}`` over the database."""
    connection = sqlite3.connect(database)
    try:
        constraints: dict[int, set] = {}
        for sid, variable, operation, value in connection.execute(
            "SELECT stratum_id, constraint_variable, operation, value FROM stratum_constraints"
        ):
            constraints.setdefault(sid, set()).add((variable, operation, value))
    finally:
        connection.close()
    out: dict[frozenset, list[tuple[str, float]]] = {}
    for sid, variable, value in zip(overview["stratum_id"], overview["variable"], overview["value"]):
        out.setdefault(frozenset(constraints.get(int(sid), ())), []).append((variable, float(value)))
    return out


@pytest.fixture(scope="module")
def lookup(overview, database):
    table = _by_constraints(overview, database)

    def value(variable: str, *constraints: tuple[str, str, object]) -> float:
        key = frozenset((v, o, str(x)) for v, o, x in constraints)
        found = [x for var, x in table.get(key, []) if var == variable]
        assert len(found) == 1, f"{variable} {sorted(key)}: {found}"
        return found[0]

    return value


def _age(lo: int, hi: int | None) -> list[tuple[str, str, object]]:
    return [("age", ">=", lo)] + ([("age", "<", hi)] if hi is not None else [])


def test_database_holds_over_10000_real_targets_at_three_levels(overview):
    counts = overview.groupby("geo_level").size().to_dict()
    assert len(overview) >= 10_000
    assert counts == {"national": 56, "state": 2193, "district": 8284}
    assert overview["source"].notna().all() and overview["notes"].notna().all()
    assert overview["notes"].str.contains(f"{rt.WHEEL} ").all()
    assert overview["value"].notna().all()
    district_age = overview[(overview.geo_level == "district") & (overview.domain_variable == "age")]
    assert len(district_age) == 436 * 18
    assert district_age["geographic_id"].nunique() == 436


def test_read_targets_reads_it(database):
    targets, constraints = read_targets(database, 2024)
    assert len(targets) == 10_533  # every stratum has one period per variable
    assert set(targets["geo_level"]) == {"national", "state", "district"}
    assert all(int(s) in constraints for s in targets["stratum_id"])


def test_strata_follow_policyengine(database, overview):
    connection = sqlite3.connect(database)
    try:
        parents = dict(connection.execute("SELECT stratum_id, parent_stratum_id FROM strata"))
        geographic = {
            (v, int(x)): sid
            for sid, v, x in connection.execute(
                "SELECT stratum_id, constraint_variable, value FROM stratum_constraints WHERE stratum_id IN"
                " (SELECT stratum_id FROM stratum_constraints GROUP BY stratum_id HAVING COUNT(*) = 1)"
                " AND constraint_variable IN ('state_fips', 'congressional_district_geoid')"
            )
        }
        districts = sorted(x for v, x in geographic if v == "congressional_district_geoid")
    finally:
        connection.close()
    assert len(districts) == 436
    # PolicyEngine's GEOID: state_fips * 100 + number; at-large (AK 00) and DC (98) are number 1.
    assert {101, 201, 1101, 5001, 5601, 652} <= set(districts)
    assert {d // 100: 0 for d in districts}.keys() == DISTRICTS_PER_STATE.keys()
    for state in DISTRICTS_PER_STATE:
        assert sum(d // 100 == state for d in districts) == DISTRICTS_PER_STATE[state]
    # Each district sits under its state, each state under the nation.
    nation = parents[geographic["state_fips", 6]]
    assert parents[nation] is None
    assert parents[geographic["congressional_district_geoid", 612]] == geographic["state_fips", 6]
    # Every target's stratum hangs under its geography.
    ca_age = overview[(overview.geographic_id == "612") & (overview.domain_variable == "age")]
    assert {parents[int(s)] for s in ca_age["stratum_id"]} == {geographic["congressional_district_geoid", 612]}


def test_agi_and_program_domains(lookup):
    filer = ("tax_unit_is_filer", "==", 1)
    ca = ("state_fips", "==", 6)
    band = [("adjusted_gross_income", ">=", 50000), ("adjusted_gross_income", "<", 75000)]
    assert lookup("tax_unit_count", ca, filer, *band) == 2_688_170
    assert lookup("adjusted_gross_income", ca, filer, *band) == 165_590_850_000
    top = [("adjusted_gross_income", ">=", 1000000)]
    assert lookup("tax_unit_count", ca, filer, *top) == 128_900
    assert lookup("tax_unit_count", ca, filer, ("adjusted_gross_income", "<", 1)) == 338_630
    assert lookup("tax_unit_count", filer, ("adjusted_gross_income", ">=", 10000000)) == 30_382
    assert lookup("household_count", ("congressional_district_geoid", "==", 101), ("snap", ">", 0)) == 34_742
    assert lookup("snap", ("state_fips", "==", 1), ("snap", ">", 0)) == 1_733_693_703
    assert lookup("person_count", ("state_fips", "==", 2), ("medicaid_enrolled", "==", True)) == 232_106
    assert lookup("eitc", ("state_fips", "==", 56)) == 72_587_000
    assert lookup("tax_unit_count", ("state_fips", "==", 56), ("eitc", ">", 0)) == 32_550


def test_sum_of_a_states_district_age_bands_equals_the_states(overview):
    age = overview[overview.domain_variable == "age"].copy()
    age["state"] = [
        int(g) // 100 if level == "district" else int(g) if level == "state" else 0
        for g, level in zip(age.geographic_id, age.geo_level)
    ]
    districts = age[age.geo_level == "district"].groupby("state")["value"].sum()
    states = age[age.geo_level == "state"].groupby("state")["value"].sum()
    # ACS controls its district estimates to the state's: the 18 bands add up exactly, in every state.
    assert (districts == states).all(), (districts - states)[districts != states]
    national = age.loc[age.geo_level == "national", "value"].sum()
    assert states.sum() == national  # and the states add up to the nation


def test_extracts_match_the_manifest():
    manifest = rt.verify_extracts()
    assert manifest["wheel"] == rt.WHEEL and manifest["version"] == "1.115.4"
    names = sorted(p.name for p in rt.DATA_DIR.iterdir())
    assert names == sorted(rt.VENDORED_FILES)
    for name, entry in manifest["extracts"].items():
        data = (rt.DATA_DIR / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert data.count(b"\n") - 1 == entry["rows"]
        assert entry["source"] in manifest["sources"]
    assert sum((rt.DATA_DIR / n).stat().st_size for n in rt.VENDORED_FILES) < 200_000


def test_an_edited_extract_is_refused(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(rt.DATA_DIR, data)
    path = data / "snap_state.csv"
    path.write_text(path.read_text().replace("376038.6667", "376038.6668"))
    with pytest.raises(ValueError, match="snap_state.csv .*differ"):
        rt.write_real_target_db(tmp_path / "t.db", data_dir=data)
    assert not (tmp_path / "t.db").exists()


def test_district_populations_drive_assign_geography():
    places = rt.district_populations()
    assert list(places.columns) == ["cd_geoid", "population"] and len(places) == 436
    assert places["cd_geoid"].is_unique
    national = float(rt.read_extract("acs_s0101_national.csv")[0]["total"])
    assert national == 340_110_990
    assert abs(places["population"].sum() / national - 1) < 0.001
    states = rt.state_populations()
    assert len(states) == 51
    # Real populations: Montana's two districts hold ~570k each, Delaware's one ~1.05M.
    by_geoid = dict(zip(places["cd_geoid"], places["population"]))
    assert 1.7 < by_geoid[1001] / by_geoid[3001] < 2.0
    geo = assign_geography(20_000, 3, places, seed=0)
    shares = np.bincount(geo.state_fips, minlength=57)[list(states)] / geo.n_columns
    expected = np.array(list(states.values())) / sum(states.values())
    assert np.abs(shares - expected).max() < 0.004  # California 11.5%, drawn 60,000 times
    assert set(np.unique(geo.cd_geoid)) <= set(places["cd_geoid"])


def test_state_subset_holds_only_what_those_states_reach():
    targets = rt.real_targets()
    subset = rt.state_subset(targets, [50, 28])  # Vermont (at large) and Mississippi (4 districts)
    levels = rt.summary(subset)
    assert {level: sum(series.values()) for level, series in levels.items()} == {
        "national": 18,  # the age bands only: no state file splits SOI's Table 1.1 bands
        "state": 2 * (18 + 2 + 1 + 20 + 2),  # age, SNAP households and cost, Medicaid, SOI AGI, EITC
        "district": 5 * (18 + 1),  # age, SNAP households
    }
    assert {t.geography[0][2] // (100 if t.geo_level == "district" else 1) for t in subset if t.geography} == {28, 50}
    # The national rows are the two states' own ACS rows added up, read here from the extract.
    with open(rt.DATA_DIR / "acs_s0101_state.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["ucgid"] in ("0400000US28", "0400000US50")]
    national = {t.constraints: t.value for t in subset if t.geo_level == "national"}
    assert national[(("age", ">=", 85),)] == sum(float(r["85+"]) for r in rows)
    assert national[(("age", ">=", 20), ("age", "<", 25))] == sum(float(r["20-24"]) for r in rows)
    assert all("not the US" in t.notes for t in subset if t.geo_level == "national")
    assert rt.state_subset(targets, rt.STATE_FIPS.values()) == targets  # all 51: the nation's rows
    with pytest.raises(ValueError, match=r"unknown state FIPS code\(s\) \[72\]"):
        rt.state_subset(targets, [6, 72])


def test_acs_state_totals_agree_with_population_by_state():
    """The ACS 2024 state totals against the other state series the wheel ships (2023 estimates)."""
    census = {rt.STATE_FIPS[r["state"]]: float(r["population"]) for r in rt.read_extract("population_by_state.csv")}
    acs = rt.state_populations()
    assert census.keys() == acs.keys()
    growth = [acs[s] / census[s] for s in acs]
    assert min(growth) > 0.99 and max(growth) < 1.04


# --- against the wheel's raw files ----------------------------------------------------------------


def _acs(raw: pathlib.Path, name: str) -> dict[str, dict[str, str]]:
    header, *rows = json.loads((raw / rt._RAW / name).read_text())
    return {row[0]: dict(zip(header, row)) for row in rows}


@pytest.mark.pe_reference
@pytest.mark.skipif(not HAVE_WHEEL, reason=f"{rt.WHEEL} is not installed")
def test_district_and_national_age_bands_equal_the_json(raw, lookup):
    district = _acs(raw, "acs_S0101_district_2024.json")
    # California's 12th district (5001900US0612), 25 to 29 years: S0101_C01_007E.
    assert lookup("person_count", ("congressional_district_geoid", "==", 612), *_age(25, 30)) == float(
        district["5001900US0612"]["S0101_C01_007E"]
    )
    # Alaska at large (district 00 -> GEOID 201), 85 and over: S0101_C01_019E.
    assert lookup("person_count", ("congressional_district_geoid", "==", 201), *_age(85, None)) == float(
        district["5001900US0200"]["S0101_C01_019E"]
    )
    national = _acs(raw, "acs_S0101_national_2024.json")["0100000US"]
    bands = [lookup("person_count", *_age(lo, hi)) for _, lo, hi in rt.AGE_BANDS]
    assert sum(bands) == float(national["S0101_C01_001E"])
    state = _acs(raw, "acs_S0101_state_2024.json")["0400000US48"]
    assert lookup("person_count", ("state_fips", "==", 48), *_age(0, 5)) == float(state["S0101_C01_002E"])
    snap = _acs(raw, "acs_S2201_district_2024.json")
    assert lookup("household_count", ("congressional_district_geoid", "==", 1101), ("snap", ">", 0)) == float(
        snap["5001900US1198"]["S2201_C03_001E"]
    )


@pytest.mark.pe_reference
@pytest.mark.skipif(not HAVE_WHEEL, reason=f"{rt.WHEEL} is not installed")
def test_agi_bands_match_agi_state_csv(raw, lookup):
    with open(raw / rt._TARGETS / "agi_state.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1020
    for row in rows:
        lo, hi = float(row["AGI_LOWER_BOUND"]), float(row["AGI_UPPER_BOUND"])
        band = ([("adjusted_gross_income", ">=", int(lo))] if np.isfinite(lo) else []) + (
            [("adjusted_gross_income", "<", int(hi))] if np.isfinite(hi) else []
        )
        variable = "tax_unit_count" if row["IS_COUNT"] == "1" else "adjusted_gross_income"
        state = ("state_fips", "==", int(row["GEO_ID"][-2:]))
        assert lookup(variable, state, ("tax_unit_is_filer", "==", 1), *band) == float(row["VALUE"])


@pytest.mark.pe_reference
@pytest.mark.skipif(not HAVE_WHEEL, reason=f"{rt.WHEEL} is not installed")
def test_state_programs_match_their_csvs(raw, lookup):
    with open(raw / rt._TARGETS / "snap_state.csv", newline="") as f:
        for row in csv.DictReader(f):
            state = ("state_fips", "==", int(row["GEO_ID"][-2:]))
            assert lookup("household_count", state, ("snap", ">", 0)) == float(row["Households"])
            assert lookup("snap", state, ("snap", ">", 0)) == float(row["Cost"])
    with open(raw / rt._TARGETS / "eitc_state.csv", newline="") as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            assert lookup("eitc", ("state_fips", "==", int(row["GEO_ID"][-2:]))) == float(row["Amount"])


@pytest.mark.pe_reference
@pytest.mark.skipif(not HAVE_WHEEL, reason=f"{rt.WHEEL} is not installed")
def test_regenerating_from_the_wheel_gives_identical_extracts(tmp_path):
    if rt.wheel_version() != rt.load_manifest()["version"]:
        pytest.skip(f"installed {rt.WHEEL} {rt.wheel_version()} is not the manifest's")
    rt.regenerate(tmp_path)
    for name in rt.VENDORED_FILES:
        assert (tmp_path / name).read_bytes() == (rt.DATA_DIR / name).read_bytes(), name
    manifest = rt.load_manifest()
    for path, entry in manifest["sources"].items():
        assert hashlib.sha256((rt.wheel_root() / path).read_bytes()).hexdigest() == entry["sha256"], path
