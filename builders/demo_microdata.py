"""Synthetic PolicyEngine-US microdata: households that load in ``policyengine_us``.

The CPS-based datasets cannot be downloaded here, so the demo makes its own households:
plausible ages, household types, employment and self-employment income, Social Security,
interest, rent and disability (and SSA's disability test, which SSI needs), and who would file
a tax return unasked, who would enrol in Medicaid if eligible (at the state's take-up rate,
as PolicyEngine's CPS sets it: a matrix build keeps this flag and draws Medicaid dollars),
spread over the 50 states, DC and their congressional districts at
their ACS 2024 populations (:func:`builders.real_targets.district_populations`). The output is a dict of arrays keyed by PolicyEngine variable names, written as
a time-period H5 (``/<variable>/<year>``), the layout ``policyengine_core``'s
``Dataset.from_file`` reads as ``TIME_PERIOD_ARRAYS``.

Entities: a household holds one or more tax units; married couples share a tax unit and a
marital unit (everyone else is a marital unit alone); children are dependents of their
parents' tax unit; a household of unrelated adults ("shared") gives each adult their own
tax unit, SPM unit and family, every other household is one SPM unit and one family.
Roles are left to the model (the oldest adult heads a tax unit).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from builders.synthetic_problem import DISTRICTS_PER_STATE
from builders.takeup import TAKEUP_BY_VARIABLE, state_rates

# Household types: (name, share of households). Shares follow the ACS household mix.
_TYPES = (
    ("single", 0.19),
    ("single_65", 0.11),
    ("couple", 0.15),
    ("couple_65", 0.13),
    ("couple_kids", 0.17),
    ("single_parent", 0.08),
    ("shared", 0.17),
)
_TOP_WEIGHT = 0.05
"""Design weight of a household with an oversampled top earner, relative to the others."""
_VOLUNTARY_FILING = 0.3
"""Share of tax units that file a return when neither required nor claiming a credit (a stand-in
for state returns, refunds of withholding and habit; it puts filers in SOI's lowest bands)."""
_SINGLE, _SINGLE_65, _COUPLE, _COUPLE_65, _COUPLE_KIDS, _SINGLE_PARENT, _SHARED = range(7)


def district_geoids(states: Sequence[int] | None = None) -> np.ndarray:
    """Every congressional district GEOID (``state_fips * 100 + district``, at-large = 1)."""
    states = sorted(DISTRICTS_PER_STATE) if states is None else list(states)
    unknown = [s for s in states if s not in DISTRICTS_PER_STATE]
    if unknown:
        raise ValueError(f"unknown state FIPS code(s) {unknown}; expected the 50 states and DC (11)")
    return np.array([s * 100 + d for s in states for d in range(1, DISTRICTS_PER_STATE[s] + 1)], np.int32)


def generate_households(
    n_households: int,
    *,
    seed: int = 0,
    states: Sequence[int] | None = None,
    population: float | None = None,
) -> dict[str, np.ndarray]:
    """``n_households`` synthetic households as PolicyEngine input arrays (one per variable).

    Households are spread over the districts of ``states`` (FIPS codes; default all 50 and
    DC) in proportion to their ACS 2024 populations. ``household_weight`` makes the people add
    up to ``population`` (default: those districts' ACS total): equal for all households but
    those of the oversampled top earners. Ids are 0-based and contiguous; persons are ordered
    by household.
    """
    from builders.real_targets import district_populations

    if n_households < 1:
        raise ValueError(f"n_households must be at least 1, got {n_households}")
    districts = district_geoids(states)
    places = district_populations().set_index("cd_geoid")["population"]
    district_weight = places.loc[districts].to_numpy(np.float64)
    population = district_weight.sum() if population is None else population
    if not np.isfinite(population) or population <= 0:
        raise ValueError(f"population must be a positive number, got {population}")
    rng = np.random.default_rng(seed)
    n = n_households

    # Geography: a district per household, its state from the GEOID.
    cd = districts[rng.choice(districts.size, n, p=district_weight / district_weight.sum())]

    # Composition.
    shares = np.array([s for _, s in _TYPES])
    htype = rng.choice(len(_TYPES), n, p=shares / shares.sum())
    n_adults = np.select(
        [np.isin(htype, (_COUPLE, _COUPLE_65, _COUPLE_KIDS)), htype == _SHARED],
        [2, rng.choice([2, 3], n, p=[0.75, 0.25])],
        1,
    )
    n_kids = np.where(
        np.isin(htype, (_COUPLE_KIDS, _SINGLE_PARENT)), rng.choice([1, 2, 3, 4], n, p=[0.40, 0.38, 0.15, 0.07]), 0
    )
    married = np.isin(htype, (_COUPLE, _COUPLE_65, _COUPLE_KIDS))
    size = n_adults + n_kids

    # Persons, grouped by household: adults first (the first is the reference person), then children.
    person_household = np.repeat(np.arange(n), size)
    n_persons = person_household.size
    start = np.concatenate([[0], np.cumsum(size)[:-1]])
    position = np.arange(n_persons) - start[person_household]
    is_adult = position < n_adults[person_household]
    ptype = htype[person_household]

    head_age = np.select(
        [
            htype == _SINGLE,
            np.isin(htype, (_SINGLE_65, _COUPLE_65)),
            htype == _COUPLE,
            htype == _COUPLE_KIDS,
            htype == _SINGLE_PARENT,
        ],
        [
            18 + 46 * rng.beta(0.9, 1.1, n),
            65 + 30 * rng.beta(1.0, 2.0, n),  # 65-95, thinning as ACS 65+ bands do
            22 + 42 * rng.beta(1.8, 1.0, n),
            24 + rng.gamma(3.0, 5.0, n),
            20 + rng.gamma(4.0, 3.5, n),
        ],
        19 + rng.gamma(1.5, 14.0, n),  # shared
    )
    head_age = np.clip(np.round(head_age), 18, 95)
    upper = np.where(np.isin(htype, (_SINGLE, _COUPLE)), 64, 95)
    head_age = np.minimum(head_age, upper)
    hh_head_age = head_age[person_household]
    # The second adult: a spouse near the head's age, or a housemate (an adult child of an older head).
    second_age = np.where(
        married[person_household],
        hh_head_age + np.round(rng.normal(-1.5, 4.0, n_persons)),
        np.where(hh_head_age >= 45, 18 + rng.integers(0, 13, n_persons), hh_head_age + rng.integers(-5, 6, n_persons)),
    )
    kid_age = np.minimum(rng.integers(0, 18, n_persons), np.maximum(hh_head_age - 16, 0))
    age = np.select([position == 0, is_adult], [hh_head_age, np.clip(second_age, 18, 95)], kid_age).astype(np.float32)

    # Entities. Tax units: one per household, except shared households (one per adult).
    tu_per_household = np.where(htype == _SHARED, n_adults, 1)
    tu_start = np.concatenate([[0], np.cumsum(tu_per_household)[:-1]])
    own_unit = (ptype == _SHARED) & is_adult
    person_tax_unit = tu_start[person_household] + np.where(own_unit, position, 0)
    person_spm_unit = person_tax_unit  # shared households split into one SPM unit and family per adult
    person_family = person_tax_unit
    # Marital units: the couple shares the head's; everyone else has their own.
    joins_head = married[person_household] & (position == 1)
    new_unit = ~joins_head
    person_marital_unit = np.cumsum(new_unit) - 1

    # Characteristics.
    is_male = rng.random(n_persons) < 0.49
    is_male = np.where(
        married[person_household] & (position == 1), ~is_male[np.maximum(np.arange(n_persons) - 1, 0)], is_male
    )
    disability_rate = np.select([age < 18, age < 45, age < 65, age < 75], [0.04, 0.06, 0.12, 0.22], 0.40)
    is_disabled = rng.random(n_persons) < disability_rate
    # SSA's disability test (an input in policyengine-us): most people reporting a disability pass it.
    meets_ssi_disability_criteria = is_disabled & (rng.random(n_persons) < 0.6)

    work_rate = np.select(
        [age < 18, age < 25, age < 55, age < 62, age < 65, age < 70], [0.0, 0.60, 0.80, 0.70, 0.50, 0.30], 0.10
    ) * np.where(is_disabled, 0.3, 1.0)
    works = rng.random(n_persons) < work_rate
    wage_scale = np.select([age < 25, age < 65], [0.5, 1.0], 0.6)
    wage = rng.lognormal(np.log(45_000), 0.85, n_persons) * wage_scale
    # The top tail, oversampled: 6% of workers earn $200k-$30M, Pareto with index 1.1 (truncated),
    # so that even a few thousand households reach every SOI AGI band ($10M+ included) with
    # SOI's mean AGI above $1M (about $3M). Like a survey's oversampled stratum, their households
    # get a twentieth of the others' design weight.
    top = rng.random(n_persons) < 0.06
    low, high, index = 200_000, 30_000_000, 1.1
    pareto = low * (1 - rng.random(n_persons) * (1 - (low / high) ** index)) ** (-1 / index)
    wage = np.where(top, pareto, wage)
    employment_income = np.where(works, np.round(wage), 0.0)

    self_employed = is_adult & (rng.random(n_persons) < 0.09)
    se_amount = rng.lognormal(np.log(20_000), 1.1, n_persons)
    se_loss = rng.random(n_persons) < 0.08
    self_employment_income = np.where(
        self_employed, np.round(np.where(se_loss, -rng.lognormal(np.log(5_000), 1.0, n_persons), se_amount)), 0.0
    )

    retirement_rate = np.select([age < 62, age < 65], [0.0, 0.25], 0.93)
    social_security_retirement = np.where(
        rng.random(n_persons) < retirement_rate,
        np.round(12 * np.clip(rng.normal(1_850, 520, n_persons), 300, 4_800)),
        0.0,
    )
    ssdi = is_disabled & (age >= 18) & (age < 65) & (rng.random(n_persons) < 0.45)
    social_security_disability = np.where(
        ssdi, np.round(12 * np.clip(rng.normal(1_450, 380, n_persons), 300, 3_800)), 0.0
    )

    interest_rate = np.where(is_adult, 0.35 + 0.30 * (age >= 65), 0.0)
    taxable_interest_income = np.where(
        rng.random(n_persons) < interest_rate, np.round(rng.lognormal(np.log(250), 1.6, n_persons)), 0.0
    )

    renter_rate = np.select([head_age < 35, head_age < 65], [0.60, 0.33], 0.20)
    annual_rent = np.where(rng.random(n) < renter_rate, np.round(12 * rng.lognormal(np.log(1_300), 0.40, n)), 0.0)
    rent = np.where(position == 0, annual_rent[person_household], 0.0)  # paid by the reference person

    oversampled = np.bincount(person_household, weights=top & works, minlength=n) > 0
    household_weight = np.where(oversampled, _TOP_WEIGHT, 1.0)
    household_weight *= population / household_weight[person_household].sum()

    n_tax_units = int(tu_per_household.sum())
    would_file_taxes_voluntarily = rng.random(n_tax_units) < _VOLUNTARY_FILING
    medicaid_rate = state_rates(TAKEUP_BY_VARIABLE["medicaid"].rate, (cd // 100)[person_household])
    takes_up_medicaid_if_eligible = rng.random(n_persons) < medicaid_rate
    n_marital = int(new_unit.sum())
    f32 = np.float32
    return {
        "person_id": np.arange(n_persons, dtype=np.int32),
        "household_id": np.arange(n, dtype=np.int32),
        "tax_unit_id": np.arange(n_tax_units, dtype=np.int32),
        "spm_unit_id": np.arange(n_tax_units, dtype=np.int32),
        "family_id": np.arange(n_tax_units, dtype=np.int32),
        "marital_unit_id": np.arange(n_marital, dtype=np.int32),
        "person_household_id": person_household.astype(np.int32),
        "person_tax_unit_id": person_tax_unit.astype(np.int32),
        "person_spm_unit_id": person_spm_unit.astype(np.int32),
        "person_family_id": person_family.astype(np.int32),
        "person_marital_unit_id": person_marital_unit.astype(np.int32),
        "household_weight": household_weight.astype(f32),
        "state_fips": (cd // 100).astype(np.int32),
        "congressional_district_geoid": cd.astype(np.int32),
        "age": age,
        "is_male": is_male,
        "is_disabled": is_disabled,
        "meets_ssi_disability_criteria": meets_ssi_disability_criteria,
        "employment_income": employment_income.astype(f32),
        "self_employment_income": self_employment_income.astype(f32),
        "social_security_retirement": social_security_retirement.astype(f32),
        "social_security_disability": social_security_disability.astype(f32),
        "taxable_interest_income": taxable_interest_income.astype(f32),
        "rent": rent.astype(f32),
        "would_file_taxes_voluntarily": would_file_taxes_voluntarily,
        "takes_up_medicaid_if_eligible": takes_up_medicaid_if_eligible,
    }


def write_h5(arrays: Mapping[str, np.ndarray], path: str | os.PathLike, year: int = 2024) -> pathlib.Path:
    """Write ``arrays`` as a PolicyEngine time-period H5 (``/<variable>/<year>``), atomically
    (:func:`builders.dataset.write_dataset_h5`)."""
    from builders.dataset import write_dataset_h5

    return write_dataset_h5(path, arrays, year)


def generate_demo_h5(
    path: str | os.PathLike,
    n_households: int,
    *,
    seed: int = 0,
    year: int = 2024,
    states: Sequence[int] | None = None,
    population: float | None = None,
) -> pathlib.Path:
    """:func:`generate_households` written by :func:`write_h5`; returns the path."""
    arrays = generate_households(n_households, seed=seed, states=states, population=population)
    return write_h5(arrays, path, year)
