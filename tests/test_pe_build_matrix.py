"""``jaxcal build`` (per state) against policyengine-us-data's own ``UnifiedMatrixBuilder.build_matrix``
on the same H5, database and clone geography: the same rows, names, order and nonzeros, values to
float32 rounding, with take-up re-randomization on and off; and its take-up pieces against
policyengine-us-data's functions on random inputs.

The H5 holds 60 synthetic households in California and New York and reports Medicaid and
Marketplace coverage and housing assistance at interview (the anchors of the draws); the
database targets every take-up-affected variable policyengine-us 2.68 computes, the
``medicaid_enrolled`` flag PolicyEngine leaves alone, constraints on drawn amounts, ``in``, a
district, an additive expression and tax expenditures; the expenditures themselves are checked
against policyengine-us-data's real reform simulation on one state (a minute per reform), and
the builds stand :func:`neutralized_expenditures` in for that reform, for their cost. The
county-level builds (``--county-level``) run on blocks in five real counties.
"""

import pathlib
import shutil
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from builders.demo_microdata import generate_households, write_h5
from builders.takeup import (
    TAKEUP_SPECS,
    VOLUNTARY_FILING,
    VOLUNTARY_FILING_RATES,
    assign_takeup,
    files_voluntarily,
    takes_up,
)
from builders.target_db import TargetDatabaseWriter

pytest.importorskip("sqlalchemy")
pe_takeup = pytest.importorskip("policyengine_us_data.utils.takeup")

pytestmark = pytest.mark.pe_reference

YEAR = 2024
N_HOUSEHOLDS, N_CLONES, SEED = 60, 3, 5
DISTRICTS = {6: 3, 36: 2}
TAKEUP_TARGETS = ("snap", "aca_ptc", "medicaid", "ssi", "tanf", "housing_assistance", "head_start", "early_head_start")
"""Every take-up-affected target policyengine-us 2.68 computes (it has no ``dc_property_tax_credit``)."""
EXPENDITURES = ("salt_deduction", "charitable_deduction")
"""Tax-expenditure targets (``reform_id > 0``) of the test database."""


def test_rates_are_policyengines():
    from policyengine_us_data.parameters import load_take_up_rate

    rate_keys = {spec["variable"]: spec["rate_key"] for spec in pe_takeup.SIMPLE_TAKEUP_VARS}
    assert {s.takeup_variable for s in TAKEUP_SPECS} | {VOLUNTARY_FILING} == set(rate_keys)
    for spec in TAKEUP_SPECS:
        assert spec.rate == load_take_up_rate(rate_keys[spec.takeup_variable], YEAR), spec.takeup_variable
        assert pe_takeup.TAKEUP_AFFECTED_TARGETS[spec.variable]["takeup_var"] == spec.takeup_variable
        assert pe_takeup.TAKEUP_AFFECTED_TARGETS[spec.variable]["entity"] == spec.entity
    assert load_take_up_rate("voluntary_filing", YEAR) == VOLUNTARY_FILING_RATES


@pytest.mark.parametrize("seed", range(6))
def test_anchored_takeup_is_policyengines(seed):
    """Draws, rates (one or per state), reporters and eligibility masks at random: the same decisions."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 200))
    draws = rng.random(n)
    groups = rng.choice([6, 36, 48], n)
    by_state = bool(seed % 2)
    rates = np.select([groups == 6, groups == 36], [0.78, 0.86], 0.76) if by_state else np.full(n, 0.672)
    reported = rng.random(n) < rng.uniform(0, 0.9) if seed % 3 else None
    eligible = rng.random(n) < 0.7 if seed >= 3 else None
    keys = groups if by_state else None
    expected = pe_takeup.assign_takeup_with_reported_anchors(draws, rates, reported, keys, eligible)
    np.testing.assert_array_equal(assign_takeup(draws, rates, reported, keys, eligible), expected)


@pytest.mark.parametrize("variable", ["medicaid", "aca_ptc", "housing_assistance", "snap"])
def test_a_clones_takeup_is_policyengines(variable):
    """:func:`takes_up` for one clone's entities: ``compute_block_takeup_for_entities`` on their
    blocks, household ids and clone, with reporters and (housing) an eligibility mask."""
    spec = next(s for s in TAKEUP_SPECS if s.variable == variable)
    rng = np.random.default_rng(len(variable))
    household_ids = rng.choice(10_000, 40, replace=False)
    entity_household = np.sort(rng.integers(0, 40, 90))
    household_state = rng.choice([6, 36], 40)
    blocks = np.array([f"{s:02d}0010001001001" for s in household_state[entity_household]])
    reported = rng.random(90) < 0.25
    eligible = rng.random(90) < 0.6 if variable == "housing_assistance" else None
    expected = pe_takeup.compute_block_takeup_for_entities(
        spec.takeup_variable,
        spec.rate if not isinstance(spec.rate, dict) else dict(spec.rate),
        blocks,
        household_ids[entity_household],
        np.full(90, 4),
        reported_mask=reported,
        eligible_mask=eligible,
    )
    decisions = takes_up(spec, household_ids, entity_household, 4, household_state, reported, eligible)
    np.testing.assert_array_equal(decisions, expected)
    unanchored = takes_up(spec, household_ids, entity_household, 4, household_state, None, eligible)
    assert (decisions != unanchored).any()  # the reporters moved some decisions


def test_voluntary_filing_is_policyengines():
    rng = np.random.default_rng(3)
    household_ids = rng.choice(10_000, 50, replace=False)
    tax_unit_household = np.sort(rng.integers(0, 50, 80))
    inputs = {
        "tax_unit_child_dependents": rng.integers(0, 3, 80),
        "tax_unit_wage_income": rng.choice([0.0, 9_000.0, 15_000.0, 29_999.5, 30_000.0, 80_000.0], 80),
        "age_head": rng.integers(18, 90, 80),
    }
    expected = pe_takeup.compute_voluntary_filing_takeup_for_tax_units(
        VOLUNTARY_FILING_RATES,
        np.full(80, "060010001001001"),
        household_ids[tax_unit_household],
        np.full(80, 2),
        **inputs,
    )
    np.testing.assert_array_equal(files_voluntarily(household_ids, tax_unit_household, 2, inputs), expected)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The H5, the database and the block table, in a fresh directory."""
    directory = tmp_path_factory.mktemp("pe_build")
    arrays = generate_households(N_HOUSEHOLDS, seed=4, states=list(DISTRICTS))
    rng = np.random.default_rng(9)
    arrays["has_medicaid_health_coverage_at_interview"] = rng.random(arrays["person_id"].size) < 0.3
    arrays["reported_has_subsidized_marketplace_health_coverage_at_interview"] = (
        rng.random(arrays["person_id"].size) < 0.1
    )
    arrays["receives_housing_assistance"] = rng.random(arrays["spm_unit_id"].size) < 0.2
    # Enough gifts and property tax for the higher earners to itemize: the expenditures are not all 0.
    wages = arrays["employment_income"]
    arrays["charitable_cash_donations"] = np.where(wages > 60_000, 0.06 * wages, 0.0).astype(np.float32)
    arrays["real_estate_taxes"] = np.where(wages > 60_000, 0.09 * wages, 0.0).astype(np.float32)
    # The last three households are synthetic Forbes ones (ids from 1,000,000), held to a state.
    forbes = np.arange(N_HOUSEHOLDS - 3, N_HOUSEHOLDS)
    assert (arrays["household_id"][forbes] == forbes).all()
    arrays["household_id"][forbes] += 1_000_000
    arrays["person_household_id"][np.isin(arrays["person_household_id"], forbes)] += 1_000_000
    arrays["forbes_state_fips"] = np.zeros(N_HOUSEHOLDS, np.int32)
    arrays["forbes_state_fips"][forbes] = [36, 6, 36]
    dataset = write_h5(arrays, directory / "base.h5", YEAR)
    database = directory / "policy_data.db"
    state = lambda fips: [("state_fips", "==", str(fips))]  # noqa: E731
    with TargetDatabaseWriter(database) as db:
        db.add_target("person_count", YEAR, 3.4e8)
        for variable in (*TAKEUP_TARGETS, "medicaid_enrolled", "income_tax", "eitc"):
            db.add_target(variable, YEAR, 1e9)
            for fips in DISTRICTS:
                db.add_target(variable, YEAR, 1e8, constraints=state(fips))
        db.add_target("person_count", YEAR, 1e7, constraints=[("medicaid_enrolled", "==", "True")])
        db.add_target("person_count", YEAR, 1e7, constraints=[("medicaid", ">", "0")])
        db.add_target("household_count", YEAR, 1e7, constraints=[("snap", ">", "0")])
        db.add_target("spm_unit_count", YEAR, 1e7, constraints=[("snap", ">", "0"), *state(6)])
        db.add_target("tax_unit_count", YEAR, 1e7, constraints=[("aca_ptc", ">", "0")])
        filer_band = [("tax_unit_is_filer", "==", "1"), ("adjusted_gross_income", ">=", "0")]
        db.add_target("tax_unit_count", YEAR, 1e7, constraints=[*filer_band, ("adjusted_gross_income", "<", "25000")])
        db.add_target("adjusted_gross_income", YEAR, 1e7, constraints=[("tax_unit_is_filer", "==", "1")])
        db.add_target("tax_unit_count", YEAR, 1e7, constraints=[("filing_status", "in", "JOINT|SURVIVING_SPOUSE")])
        # With draws, PolicyEngine's clones read a voluntary-filing constraint from their own draws.
        db.add_target("tax_unit_count", YEAR, 1e7, constraints=[("would_file_taxes_voluntarily", "==", "True")])
        db.add_target("snap", YEAR, 1e7, constraints=[*state(6), ("congressional_district_geoid", "==", "601")])
        for district, agi in ((601, 4e10), (602, 1e9), (3601, 9e10)):  # lean the top-AGI households' draws
            place = [*state(district // 100), ("congressional_district_geoid", "==", str(district))]
            db.add_target("adjusted_gross_income", YEAR, agi, constraints=place)
        db.add_target("employment_income+self_employment_income", YEAR, 1e7)
        for reform_id, variable in enumerate(EXPENDITURES, start=1):  # tax expenditures, beside the deduction itself
            db.add_target(variable, YEAR, 1e10, reform_id=reform_id)
            db.add_target(variable, YEAR, 3e10)
        db.add_target(
            "salt_deduction", YEAR, 1e9, constraints=[*state(36), ("tax_unit_is_filer", "==", "1")], reform_id=1
        )
    blocks = _write_blocks(
        directory,
        DISTRICTS,
        lambda fips, district: [
            (
                f"{fips:02d}{2 * district - 1 + b // 2:03d}{1000 + 10 * district + b:06d}{1001 + b:04d}",
                1000 + 300 * b + 50 * district,
            )
            for b in range(3)
        ],
    )
    return directory, dataset, database, blocks


def _write_blocks(directory, districts, blocks_in):
    """Write the block table policyengine-us-data reads (``block_cd_distributions.csv.gz``):
    ``blocks_in(fips, district)`` gives each district's ``(block_geoid, population)`` pairs."""
    blocks = pd.DataFrame(
        [
            {"block_geoid": geoid, "cd_geoid": fips * 100 + district, "population": population}
            for fips, n_districts in districts.items()
            for district in range(1, n_districts + 1)
            for geoid, population in blocks_in(fips, district)
        ]
    )
    blocks.to_csv(directory / "block_cd_distributions.csv.gz", index=False)
    return blocks


def neutralized_expenditures(dataset_path, time_period, state, n_hh, reform_vars, baseline_income_tax):
    """policyengine-us-data's ``_compute_reform_household_values`` with each variable set to 0
    as an input, not neutralized by a reform (whose tax-benefit system takes a minute to build
    per state and variable): :func:`test_expenditures_are_policyengines_reform_simulation`
    shows the two agree."""
    from policyengine_us import Microsimulation

    found = {}
    for variable in reform_vars:
        simulation = Microsimulation(dataset=dataset_path)
        simulation.set_input("state_fips", time_period, np.full(n_hh, state, dtype=np.int32))
        entity = simulation.tax_benefit_system.variables[variable].entity.key
        size = simulation.calculate(f"{entity}_id", time_period).size
        simulation.set_input(variable, time_period, np.zeros(size, np.float32))
        income_tax = simulation.calculate("income_tax", time_period, map_to="household").values.astype(np.float32)
        found[variable] = income_tax - baseline_income_tax
    return found


@pytest.mark.filterwarnings("ignore:Accessing .values on a MicroSeries:UserWarning")
def test_expenditures_are_policyengines_reform_simulation(inputs):
    """The per-state expenditure of ``salt_deduction`` in New York: jaxcal's (the variable held at
    0 in a second simulation) equals policyengine-us-data's, which runs its ``Neutralize_`` reform."""
    from policyengine_us_data.calibration import unified_matrix_builder as pe_builder

    from builders.policyengine import load_simulation
    from builders.simulation import compute_state_values

    _, dataset, _, _ = inputs
    _, pe_values = pe_builder._compute_single_state(
        dataset_path=str(dataset),
        time_period=YEAR,
        state=36,
        n_hh=N_HOUSEHOLDS,
        target_vars=[],
        constraint_vars=[],
        variable_entity_map={},
        reform_vars=["salt_deduction"],
        rerandomize_takeup=False,
        affected_targets={},
    )
    expected = pe_values["reform_hh"]["salt_deduction"]
    values = compute_state_values(
        load_simulation(dataset), YEAR, [36], [], [], expenditure_variables=["salt_deduction"]
    )
    np.testing.assert_array_equal(values.expenditures["salt_deduction"][0], expected)
    assert np.count_nonzero(expected > 0) >= 5  # repealing the deduction raised some households' tax
    from policyengine_us import Microsimulation

    simulation = Microsimulation(dataset=str(dataset))
    simulation.set_input("state_fips", YEAR, np.full(N_HOUSEHOLDS, 36, dtype=np.int32))
    baseline = simulation.calculate("income_tax", YEAR, map_to="household").values.astype(np.float32)
    stand_in = neutralized_expenditures(str(dataset), YEAR, 36, N_HOUSEHOLDS, ["salt_deduction"], baseline)
    np.testing.assert_array_equal(stand_in["salt_deduction"], expected)


def _policyengine_geography(directory: pathlib.Path, **arguments):
    """policyengine-us-data's ``assign_random_geography(**arguments)`` on the block table in
    ``directory``."""
    from policyengine_us_data.calibration import clone_and_assign

    clone_and_assign.load_global_block_distribution.cache_clear()
    try:
        with mock.patch.object(clone_and_assign, "STORAGE_FOLDER", directory):
            return clone_and_assign.assign_random_geography(**arguments)
    finally:
        clone_and_assign.load_global_block_distribution.cache_clear()


@pytest.mark.parametrize("agi", ["none", "district", "no-district-rows"])
@pytest.mark.parametrize("fixed", [False, True], ids=["free", "fixed"])
def test_geography_is_policyengines(tmp_path, agi, fixed):
    """``assign_geography`` against ``assign_random_geography`` on a random block table, as
    ``run_calibration`` calls it (household AGI, district AGI targets, Forbes households held to
    their state) and as plain: the same block for every clone, draw for draw."""
    from builders.geography import assign_geography

    rng = np.random.default_rng(len(agi) + fixed)
    n_records, n_clones, n_districts = 300, 4, {6: 4, 36: 3, 11: 1}
    blocks = _write_blocks(
        tmp_path,
        n_districts,
        lambda fips, d: [
            (f"{fips:02d}{d:03d}{100000 + 10 * d + b:06d}{1000 + b:04d}", float(rng.integers(0, 5000)))
            for b in range(int(rng.integers(1, 6)))
        ],
    )
    household_agi = rng.lognormal(10.5, 1.4, n_records) if agi != "none" else None
    district_agi = {601: 9e9, 602: 1e9, 3601: 5e10, 3603: -1.0, 1101: 2e9} if agi == "district" else {}
    fixed_states = np.where(rng.random(n_records) < 0.2, rng.choice([6, 36, 11], n_records), 0) if fixed else None
    expected = _policyengine_geography(
        tmp_path,
        n_records=n_records,
        n_clones=n_clones,
        seed=11,
        household_agi=household_agi,
        cd_agi_targets=None if agi == "none" else {str(k): v for k, v in district_agi.items()},
        fixed_state_fips=fixed_states,
    )
    geography = assign_geography(
        n_records,
        n_clones,
        blocks,
        11,
        household_agi=household_agi,
        district_agi=None if agi == "none" else district_agi,
        fixed_states=fixed_states,
    )
    np.testing.assert_array_equal(geography.block_geoid, expected.block_geoid)
    np.testing.assert_array_equal(geography.cd_geoid, expected.cd_geoid.astype(int))
    if fixed:
        held = np.tile(fixed_states, n_clones) > 0
        np.testing.assert_array_equal(geography.state_fips[held], np.tile(fixed_states, n_clones)[held])
    if agi == "district":  # the top tenth leans to New York's first district
        top = np.tile(household_agi >= np.percentile(household_agi, 90), n_clones)
        assert (geography.cd_geoid[top] == 3601).mean() > (geography.cd_geoid[~top] == 3601).mean() + 0.2


def _policyengine_build(
    directory: pathlib.Path,
    dataset,
    database,
    rerandomize_takeup: bool,
    hierarchical=None,
    county_level=False,
    n_clones=N_CLONES,
):
    """``build_matrix`` as policyengine-us-data's CLI calls it (state-level unless
    ``county_level``, one worker) on a copy of the database, with its own
    ``assign_random_geography`` on the block table in ``directory`` as ``run_calibration`` calls
    it (household AGI, district AGI targets, Forbes households' states) and
    :func:`neutralized_expenditures` for its reform simulations."""
    from policyengine_us import Microsimulation
    from policyengine_us_data.calibration import unified_matrix_builder as pe_builder
    from policyengine_us_data.calibration.unified_calibration import _extract_forbes_state_fips_overrides
    from policyengine_us_data.calibration.unified_matrix_builder import UnifiedMatrixBuilder

    copy = directory / f"{database.stem}_pe_{rerandomize_takeup}.db"
    shutil.copy(database, copy)
    builder = UnifiedMatrixBuilder(db_uri=f"sqlite:///{copy}", time_period=YEAR, dataset_path=str(dataset))
    simulation = Microsimulation(dataset=str(dataset))
    geography = _policyengine_geography(
        directory,
        n_records=N_HOUSEHOLDS,
        n_clones=n_clones,
        seed=SEED,
        household_agi=simulation.calculate("adjusted_gross_income", map_to="household").values.astype(np.float64),
        cd_agi_targets=builder.get_district_agi_targets(),
        fixed_state_fips=_extract_forbes_state_fips_overrides(simulation.dataset.load_dataset(), YEAR, N_HOUSEHOLDS),
    )
    with mock.patch.object(pe_builder, "_compute_reform_household_values", neutralized_expenditures):
        targets, matrix, names = builder.build_matrix(
            geography,
            simulation,
            rerandomize_takeup=rerandomize_takeup,
            county_level=county_level,
            hierarchical_domains=hierarchical,
        )
    return geography, targets, sparse.csr_matrix(matrix), names


def _assert_same_rows(package, pe_targets, pe_matrix, pe_names):
    """The same rows, names and order, the same nonzeros, values to float32 rounding."""
    assert list(package.target_names) == list(pe_names)
    np.testing.assert_allclose(package.targets["value"], pe_targets["value"], rtol=1e-12)
    matrix = sparse.csr_matrix(package.matrix)
    assert matrix.nnz == pe_matrix.nnz
    np.testing.assert_array_equal(matrix.indptr, pe_matrix.indptr)
    np.testing.assert_array_equal(matrix.indices, pe_matrix.indices)
    np.testing.assert_allclose(matrix.data, pe_matrix.data, rtol=1e-6)


def _jaxcal_build(dataset, database, blocks, rerandomize_takeup: bool, hierarchical=None, **options):
    from builders.unified_matrix import build_calibration_package

    package, _ = build_calibration_package(
        dataset,
        database,
        n_clones=options.pop("n_clones", N_CLONES),
        seed=SEED,
        places=blocks,
        simulation="per_state",
        rerandomize_takeup=rerandomize_takeup,
        hierarchical_domains=hierarchical,
        log=lambda message: None,
        **options,
    )
    return package


@pytest.mark.filterwarnings("ignore:Accessing .values on a MicroSeries:UserWarning")  # policyengine-us-data's own
@pytest.mark.parametrize("rerandomize_takeup", [True], ids=["takeup"])  # without: on the ETL database below
def test_build_is_policyengines_build_matrix(inputs, rerandomize_takeup):
    directory, dataset, database, blocks = inputs
    geography, pe_targets, pe_matrix, pe_names = _policyengine_build(directory, dataset, database, rerandomize_takeup)
    package = _jaxcal_build(dataset, database, blocks, rerandomize_takeup)
    np.testing.assert_array_equal(package.geography["cd_geoid"], np.asarray(geography.cd_geoid).astype(int))
    np.testing.assert_array_equal(package.geography["block_geoid"], np.asarray(geography.block_geoid))
    _assert_same_rows(package, pe_targets, pe_matrix, pe_names)
    if rerandomize_takeup:  # the anchors were there to matter: the H5's reports reached the draws
        from builders.dataset import read_entity_structure, read_period_arrays
        from builders.takeup import REPORTS, reported_takeup

        arrays = read_period_arrays(dataset, REPORTS, YEAR)
        reported = reported_takeup(arrays, read_entity_structure(dataset), str(dataset))
        assert {name: int(flags.sum()) > 0 for name, flags in reported.items()} == {
            "takes_up_aca_if_eligible": True,
            "takes_up_medicaid_if_eligible": True,
            "takes_up_housing_assistance_if_eligible": True,
        }


ETL_STEPS = (
    "create_initial_strata",
    "etl_age",
    "etl_snap",
    "etl_medicaid",
    "etl_national_targets",
    "etl_aca_marketplace",
    "etl_aca_agi_state_targets",
    "etl_tanf",
)
"""policyengine-us-data's ETL, after ``create_database()``, that runs offline on the inputs its
wheel caches (``etl_irs_soi``, ``etl_state_income_tax``, ``etl_housing_assistance`` and
``etl_pregnancy`` download theirs; ``etl_tanf`` falls back to its cached ACF table)."""


@pytest.fixture(scope="module")
def etl_database(inputs, tmp_path_factory):
    """PolicyEngine's ``policy_data.db`` as its ETL writes it, in a temporary copy of the wheel's
    ``storage/`` (the installed package is left alone), cut to the test H5's places: the nation,
    California and New York and the block table's five districts."""
    import contextlib
    import importlib
    import sqlite3
    import sys
    from importlib.util import find_spec

    import requests

    storage = tmp_path_factory.mktemp("pe_etl") / "storage"
    wheel = pathlib.Path(next(iter(find_spec("policyengine_us_data").submodule_search_locations)))
    shutil.copytree(wheel / "storage", storage, ignore=shutil.ignore_patterns("__pycache__", "policy_data.db"))
    database = storage / "calibration" / "policy_data.db"
    create = importlib.import_module("policyengine_us_data.db.create_database_tables")
    steps = [importlib.import_module(f"policyengine_us_data.db.{step}") for step in ETL_STEPS]
    raw_cache = importlib.import_module("policyengine_us_data.utils.raw_cache")
    offline = requests.exceptions.ConnectionError("no network in the test")
    with contextlib.ExitStack() as stack:
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith("policyengine_us_data") and hasattr(module, "STORAGE_FOLDER"):
                stack.enter_context(mock.patch.object(module, "STORAGE_FOLDER", storage))
        stack.enter_context(mock.patch.object(raw_cache, "RAW_INPUTS_DIR", storage / "calibration" / "raw_inputs"))
        stack.enter_context(mock.patch.object(steps[ETL_STEPS.index("etl_tanf")], "_acf_get", side_effect=offline))
        create.create_database(f"sqlite:///{database}")
        for name, step in zip(ETL_STEPS, steps):
            with mock.patch.object(sys, "argv", [name]):
                step.main()
    _, _, _, blocks = inputs
    districts = {str(d) for d in blocks["cd_geoid"]}
    states = {str(d // 100) for d in blocks["cd_geoid"]}
    with contextlib.closing(sqlite3.connect(database)) as connection, connection:
        kept = [("national", "US"), *(("state", s) for s in states), *(("district", d) for d in districts)]
        placed = [
            (level, place)
            for level, place in connection.execute("SELECT DISTINCT geo_level, geographic_id FROM target_overview")
        ]
        assert set(kept) <= set(placed), sorted(set(kept) - set(placed))
        connection.execute("CREATE TEMP TABLE kept (geo_level TEXT, geographic_id TEXT)")
        connection.executemany("INSERT INTO kept VALUES (?, ?)", kept)
        connection.execute(
            "DELETE FROM targets WHERE target_id NOT IN (SELECT target_id FROM target_overview"
            " JOIN kept USING (geo_level, geographic_id))"
        )
    return database


@pytest.mark.filterwarnings("ignore:Accessing .values on a MicroSeries:UserWarning")  # policyengine-us-data's own
@pytest.mark.parametrize(
    ("rerandomize_takeup", "hierarchical"),
    [(True, None), (False, ["snap", "age"])],
    ids=["takeup", "no-takeup-hierarchical"],
)
def test_build_on_policyengines_etl_database_is_build_matrix(inputs, etl_database, rerandomize_takeup, hierarchical):
    """PolicyEngine's own targets (ages, SNAP, Medicaid, national totals and tax expenditures,
    the Marketplace, ACA by AGI, TANF; additive expressions among them): ``jaxcal build`` and
    ``build_matrix`` give the same rows on them, and with ``--hierarchical-domains`` the same
    districts reconciled to their states."""
    import sqlite3
    from contextlib import closing

    directory, dataset, _, blocks = inputs
    with closing(sqlite3.connect(etl_database)) as connection:
        (n_targets,) = connection.execute("SELECT COUNT(*) FROM targets WHERE active").fetchone()
        operations = {op for (op,) in connection.execute("SELECT DISTINCT operation FROM stratum_constraints")}
    assert n_targets > 200 and {"==", ">", "<", ">="} <= operations
    _, pe_targets, pe_matrix, pe_names = _policyengine_build(
        directory, dataset, etl_database, rerandomize_takeup, hierarchical
    )
    package = _jaxcal_build(dataset, etl_database, blocks, rerandomize_takeup, hierarchical)
    _assert_same_rows(package, pe_targets, pe_matrix, pe_names)
    if hierarchical:
        assert package.metadata["hierarchical_domains"] == hierarchical
        reconciled = pe_targets["hif"].notna().to_numpy()
        assert reconciled.sum() >= 50 and (pe_targets.loc[reconciled, "hif"] != 1).any()
        for column in ("hif", "state_uprating_factor"):
            np.testing.assert_array_equal(package.targets[column], pe_targets[column].to_numpy(float))
    assert any("+" in name for name in pe_names) and any(name.endswith("_expenditure") for name in pe_names)


COUNTIES = {6: ("06001", "06037"), 36: ("36047", "36061", "36081")}
"""The county test's counties: Alameda and Los Angeles (last in its state: policyengine-us-data
keeps Los Angeles' ZIP code set for the counties after it), Kings, New York and Queens."""


def _census_county_file(fips_codes) -> bytes:
    """The Census ``national_county2020.txt`` rows of ``fips_codes`` (policyengine-us-data downloads
    the file to map FIPS codes to the model's counties), written from policyengine-us's county table."""
    from policyengine_us.tools.geography.county_helpers import load_county_fips_dataset

    table = load_county_fips_dataset().set_index("county_fips").loc[list(fips_codes)]
    lines = ["STATE|STATEFP|COUNTYFP|COUNTYNS|COUNTYNAME|CLASSFP|FUNCSTAT"]
    lines += [f"{row.state}|{fips[:2]}|{fips[2:]}|00000000|{row.county_name}|H1|A" for fips, row in table.iterrows()]
    return "\n".join(lines).encode()


@pytest.mark.filterwarnings("ignore:Accessing .values on a MicroSeries:UserWarning")  # policyengine-us-data's own
@pytest.mark.parametrize(
    ("rerandomize_takeup", "variables"),
    [(False, ("aca_ptc", "housing_assistance")), (True, ("housing_assistance", "snap"))],
    ids=["no-takeup", "takeup"],
)
def test_county_level_build_is_policyengines_build_matrix(inputs, tmp_path, rerandomize_takeup, variables):
    """``--county-level``: ``aca_ptc`` and ``housing_assistance`` computed in each county the
    clones land in (one run per county, ``county`` set) give ``build_matrix(county_level=True)``'s
    rows, on blocks in five real counties. (With take-up drawn, policyengine-us-data's county
    values lack the nonfiling amounts its draws read, so it cannot build ``aca_ptc`` then;
    jaxcal computes them per county too.)"""
    from policyengine_us_data.calibration import block_assignment

    _, dataset, _, _ = inputs
    blocks = _write_blocks(
        tmp_path,
        DISTRICTS,
        lambda fips, district: [
            (f"{county}{1000 + 10 * district + b:06d}{1001 + b:04d}", 1000 + 300 * b + 50 * district)
            for b, county in enumerate(COUNTIES[fips] * 2)
        ],
    )
    database = tmp_path / "policy_data.db"
    with TargetDatabaseWriter(database) as db:
        for variable in variables:
            db.add_target(variable, YEAR, 1e9)
            for fips in DISTRICTS:
                db.add_target(variable, YEAR, 1e8, constraints=[("state_fips", "==", str(fips))])
            db.add_target(variable, YEAR, 1e7, constraints=[("congressional_district_geoid", "==", "601")])
            db.add_target("household_count", YEAR, 1e6, constraints=[(variable, ">", "0")])
    census = mock.Mock(content=_census_county_file(sorted({c for cs in COUNTIES.values() for c in cs})))
    block_assignment._build_county_fips_to_enum.cache_clear()
    try:
        with mock.patch.object(block_assignment.requests, "get", return_value=census):
            _, pe_targets, pe_matrix, pe_names = _policyengine_build(
                tmp_path, dataset, database, rerandomize_takeup, county_level=True, n_clones=6
            )
    finally:
        block_assignment._build_county_fips_to_enum.cache_clear()
    package = _jaxcal_build(dataset, database, blocks, rerandomize_takeup, county_level=True, n_clones=6)
    assert package.metadata["county_level"] is True
    _assert_same_rows(package, pe_targets, pe_matrix, pe_names)
    if not rerandomize_takeup:  # the counties mattered: a household's aca_ptc differs between two counties of a state
        targets = package.targets
        row = np.flatnonzero((targets["variable"] == "aca_ptc") & (targets["geo_level"] == "national"))[0]
        amounts = pe_matrix[row].toarray().reshape(6, N_HOUSEHOLDS)
        county = package.geography["block_geoid"].astype("U5").reshape(6, N_HOUSEHOLDS)
        by_county = [dict(zip(county[:, h], amounts[:, h])) for h in range(N_HOUSEHOLDS)]
        differing = [
            h
            for h, found in enumerate(by_county)
            if any(a != b and x[:2] == y[:2] for x, a in found.items() for y, b in found.items())
        ]
        assert len(differing) >= 3, differing


def test_county_names_are_policyengines():
    """``county_names`` (policyengine-us's county table) against policyengine-us-data's
    ``get_county_enum_index_from_fips`` (the Census county file, here written from that table)
    for every county: the same ``County`` member, ``UNKNOWN`` for a code neither knows."""
    from policyengine_us.tools.geography.county_helpers import load_county_fips_dataset
    from policyengine_us.variables.household.demographic.geographic.county.county_enum import County
    from policyengine_us_data.calibration import block_assignment

    from builders.policyengine import county_names

    codes = [*load_county_fips_dataset()["county_fips"], "06002", "99999"]
    census = mock.Mock(content=_census_county_file(codes[:-2]))
    block_assignment._build_county_fips_to_enum.cache_clear()
    try:
        with mock.patch.object(block_assignment.requests, "get", return_value=census):
            expected = {
                code: County._member_names_[block_assignment.get_county_enum_index_from_fips(code)] for code in codes
            }
    finally:
        block_assignment._build_county_fips_to_enum.cache_clear()
    names = county_names(codes)
    assert names == expected
    assert sum(name != "UNKNOWN" for name in names.values()) > 3100 and names["06037"] == "LOS_ANGELES_COUNTY_CA"
