"""Synthetic PolicyEngine-US microdata: structure, speed, and that policyengine_us loads it as written."""

from __future__ import annotations

import time

import numpy as np
import pytest

from builders.demo_microdata import district_geoids, generate_demo_h5, generate_households
from builders.h5_check import check_h5, unknown_variables
from builders.real_targets import read_extract
from builders.synthetic_problem import DISTRICTS_PER_STATE


def _acs_population(level: str) -> dict[str, float]:
    """ACS 2024 S0101 total population by GEO_ID, read from the vendored extract."""
    return {row["ucgid"]: float(row["total"]) for row in read_extract(f"acs_s0101_{level}.csv")}


@pytest.fixture(scope="module")
def big():
    return generate_households(10_000, seed=1)


def test_seeded(big):
    again = generate_households(10_000, seed=1)
    assert big.keys() == again.keys() and all(np.array_equal(big[k], again[k]) for k in big)
    other = generate_households(10_000, seed=2)
    assert not np.array_equal(big["employment_income"], other["employment_income"][: big["employment_income"].size])


def test_fast(tmp_path):
    start = time.perf_counter()
    generate_demo_h5(tmp_path / "d.h5", 10_000, seed=0)
    assert time.perf_counter() - start < 10  # about 1 s here; generous for a loaded CI machine


def test_entities_are_consistent(big):
    person_household = big["person_household_id"]
    assert np.array_equal(big["household_id"], np.arange(10_000))
    assert np.all(np.diff(person_household) >= 0)  # persons grouped by household
    for entity in ("tax_unit", "spm_unit", "family", "marital_unit"):
        links, ids = big[f"person_{entity}_id"], big[f"{entity}_id"]
        assert np.array_equal(np.unique(links), ids)
        # No group spans two households.
        first_household = np.full(ids.size, -1)
        first_household[links] = person_household
        assert np.array_equal(first_household[links], person_household)
    age = big["age"]
    # Every tax unit has an adult to head it; marital units hold one or two adults (couples).
    adults = np.bincount(big["person_tax_unit_id"], weights=age >= 18)
    assert adults.min() >= 1
    size = np.bincount(big["person_marital_unit_id"])
    assert set(np.unique(size)) == {1, 2}
    couples = np.flatnonzero(size == 2)
    assert (age[np.isin(big["person_marital_unit_id"], couples)] >= 18).all()


def test_plausible_population(big):
    age = big["age"]
    weight = big["household_weight"][big["person_household_id"]].astype(np.float64)  # each person's
    n_persons = age.size
    assert weight.sum() == pytest.approx(_acs_population("national")["0100000US"], rel=1e-5)  # 340,110,990
    assert 2.0 < n_persons / 10_000 < 2.8  # people per household (US: 2.5)
    assert 0.18 < (age < 18).mean() < 0.28 and 0.12 < (age >= 65).mean() < 0.24
    wages = (big["employment_income"] * weight).sum()
    assert 7e12 < wages < 14e12  # US wages and salaries about $10.8T
    ss = ((big["social_security_retirement"] + big["social_security_disability"]) * weight).sum()
    assert 0.8e12 < ss < 2e12  # $1.45T
    assert (big["employment_income"][age < 18] == 0).all()
    assert (big["social_security_retirement"][age < 62] == 0).all()
    # The oversampled top tail reaches the highest SOI band with a twentieth of the usual weight.
    income = np.bincount(big["person_household_id"], weights=big["employment_income"] + big["self_employment_income"])
    top = income >= 10_000_000
    assert top.sum() >= 1
    np.testing.assert_allclose(big["household_weight"][top], big["household_weight"].max() * 0.05, rtol=1e-6)


def test_households_follow_real_district_populations():
    # Montana's two districts hold 1.14M people, Delaware's one 1.05M: by House seats Montana would
    # get two thirds of the households, by population about half.
    arrays = generate_households(20_000, seed=4, states=[10, 30])
    districts = _acs_population("district")
    montana = districts["5001900US3001"] + districts["5001900US3002"]
    share = montana / (montana + districts["5001900US1000"])
    assert (arrays["state_fips"] == 30).mean() == pytest.approx(share, abs=0.012)  # 3.4 standard deviations
    states = _acs_population("state")
    weight = arrays["household_weight"][arrays["person_household_id"]].astype(np.float64).sum()
    assert weight == pytest.approx(states["0400000US10"] + states["0400000US30"], rel=1e-5)


def test_geography(big):
    assert set(np.unique(big["congressional_district_geoid"])) == set(district_geoids())  # all 436 districts
    assert np.array_equal(big["state_fips"], big["congressional_district_geoid"] // 100)
    few = generate_households(200, seed=0, states=[2, 11, 36])
    assert set(np.unique(few["state_fips"])) == {2, 11, 36}
    assert few["congressional_district_geoid"].max() <= 3600 + DISTRICTS_PER_STATE[36]
    with pytest.raises(ValueError, match=r"unknown state FIPS code\(s\) \[3\]"):
        generate_households(10, states=[3])
    with pytest.raises(ValueError, match="n_households must be at least 1"):
        generate_households(0)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A tiny dataset and the policyengine_us Simulation over it (one model import for the module)."""
    from policyengine_us import Simulation

    path = generate_demo_h5(tmp_path_factory.mktemp("demo") / "demo.h5", 40, seed=3, states=[6, 36, 56])
    return generate_households(40, seed=3, states=[6, 36, 56]), path, Simulation(dataset=str(path))


@pytest.mark.xdist_group("policyengine")  # with the other policyengine_us tests: one import
def test_policyengine_loads_what_was_written(loaded):
    arrays, _, sim = loaded
    n_persons = arrays["person_id"].size
    assert sim.calculate("household_count", 2024).sum() == 40
    assert sim.calculate("person_count", 2024).sum() == n_persons
    assert sim.calculate("tax_unit_count", 2024).size == arrays["tax_unit_id"].size
    assert sim.calculate("spm_unit_count", 2024).size == arrays["spm_unit_id"].size
    for variable in ("employment_income", "self_employment_income", "taxable_interest_income", "rent", "age"):
        np.testing.assert_allclose(sim.calculate(variable, 2024), arrays[variable], rtol=1e-6)
    np.testing.assert_allclose(
        sim.calculate("social_security", 2024).sum(),
        arrays["social_security_retirement"].sum() + arrays["social_security_disability"].sum(),
        rtol=1e-6,
    )
    codes = {6: "CA", 36: "NY", 56: "WY"}
    assert list(sim.calculate("state_code", 2024).decode_to_str()) == [codes[s] for s in arrays["state_fips"]]
    np.testing.assert_array_equal(
        sim.calculate("congressional_district_geoid", 2024), arrays["congressional_district_geoid"]
    )
    states = _acs_population("state")
    population = sum(states[f"0400000US{s:02d}"] for s in codes)
    np.testing.assert_allclose(sim.calculate("person_weight", 2024).sum(), population, rtol=1e-6)


@pytest.mark.xdist_group("policyengine")  # with the other policyengine_us tests: one import
def test_policyengine_reads_the_family_structure(loaded):
    arrays, _, sim = loaded
    n_couples = int((np.bincount(arrays["person_marital_unit_id"]) == 2).sum())
    assert sim.calculate("is_tax_unit_head", 2024).sum() == arrays["tax_unit_id"].size
    assert sim.calculate("is_tax_unit_spouse", 2024).sum() == n_couples
    filing = sim.calculate("filing_status", 2024).decode_to_str()
    assert (filing == "JOINT").sum() == n_couples
    dependents = sim.calculate("is_tax_unit_dependent", 2024)
    np.testing.assert_array_equal(dependents, arrays["age"] < 18)
    # Programs compute: finite, non-negative, and someone among 40 households gets SNAP or Medicaid.
    snap = sim.calculate("snap", 2024)
    medicaid = sim.calculate("medicaid_enrolled", 2024)
    assert np.isfinite(snap).all() and (snap >= 0).all() and (snap.sum() > 0 or medicaid.any())


@pytest.mark.xdist_group("policyengine")  # with the other policyengine_us tests: one import
def test_check_h5_agrees_with_the_model(loaded):
    _, path, sim = loaded
    entities = {name: variable.entity.key for name, variable in sim.tax_benefit_system.variables.items()}
    assert check_h5(path, entities) == []
    assert unknown_variables(path, entities) == []
