"""Take-up re-randomization, bit-compatible with policyengine-us-data.

Each clone of a household draws its own take-up: for a take-up input ``var`` the
household's entities (in dataset order) take ``seeded_rng(var, f"{household_id}:{clone}")
.random(n)``, and take up when ``draw < rate[state]`` (:func:`takes_up`). The seed is
policyengine-us-data's stable string hash (:func:`stable_string_hash`), so the same
(variable, household, clone) gives the same draw there and here. Where the dataset reports
receipt (Medicaid and Marketplace coverage, housing assistance), reporters always take up and
the rest are drawn to make up the rate (:func:`assign_takeup`); voluntary filing is drawn at a
rate by children, wages and age (:func:`files_voluntarily`).

policyengine-us 2.68 carries no take-up rates (they live in policyengine-us-data's
``parameters/take_up``): :data:`TAKEUP_SPECS` holds those values and their sources."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .geography import STATE_CODES

if TYPE_CHECKING:
    from .dataset import EntityStructure

_MASK64 = (1 << 64) - 1
_MIX = 0xFF51AFD7ED558CCD


def stable_string_hash(text: str) -> int:
    """policyengine-core's process-independent string hash (a uint64): a base-31 rolling hash
    of the UTF-8 bytes, then two xor-shift-33 steps around a multiplication by 0xFF51AFD7ED558CCD."""
    return _finish(_roll(0, text))


def seeded_rng(variable: str, salt: str | None = None) -> np.random.Generator:
    """policyengine-us-data's per-variable generator: seeded by the hash of ``variable:salt``."""
    key = variable if salt is None else f"{variable}:{salt}"
    return np.random.default_rng(stable_string_hash(key) % 2**63)


def _roll(h: int, text: str) -> int:
    for byte in text.encode("utf-8"):
        h = (h * 31 + byte) & _MASK64
    return h


def _finish(h: int) -> int:
    h ^= h >> 33
    h = (h * _MIX) & _MASK64
    return h ^ (h >> 33)


@dataclasses.dataclass(frozen=True)
class TakeupSpec:
    """A boolean take-up input of policyengine-us (default True) drawn per entity, and the
    target variable whose amount it gates (policyengine-us-data's ``SIMPLE_TAKEUP_VARS``)."""

    variable: str
    """The target variable it gates (a row of that exact variable is take-up-affected)."""
    takeup_variable: str
    entity: str
    rate: float | Mapping[str, float]
    """One rate, or a rate per two-letter state code."""
    reported: str | None = None
    """The dataset's report of receipt at interview: reporters always take up, and the others
    are drawn to make up the rate (:func:`assign_takeup`)."""
    reported_entity: str | None = None
    """The report's entity, when it is not ``entity`` (a person's report marks its tax unit)."""


# policyengine-us-data parameters/take_up/*.yaml (values in force from 2018-2021 on).
_MEDICAID_RATES = {
    "AK": 0.88,
    "AL": 0.92,
    "AR": 0.79,
    "AZ": 0.95,
    "CA": 0.78,
    "CO": 0.99,
    "CT": 0.89,
    "DC": 0.99,
    "DE": 0.86,
    "FL": 0.98,
    "GA": 0.73,
    "HI": 0.88,
    "IA": 0.84,
    "ID": 0.78,
    "IL": 0.85,
    "IN": 0.99,
    "KS": 0.92,
    "KY": 0.87,
    "LA": 0.79,
    "MA": 0.94,
    "MD": 0.95,
    "ME": 0.92,
    "MI": 0.91,
    "MN": 0.89,
    "MO": 0.89,
    "MS": 0.75,
    "MT": 0.83,
    "NC": 0.94,
    "ND": 0.91,
    "NE": 0.79,
    "NH": 0.84,
    "NJ": 0.74,
    "NM": 0.84,
    "NV": 0.93,
    "NY": 0.86,
    "OH": 0.82,
    "OK": 0.77,
    "OR": 0.92,
    "PA": 0.64,
    "RI": 0.94,
    "SC": 0.93,
    "SD": 0.88,
    "TN": 0.92,
    "TX": 0.76,
    "UT": 0.53,
    "VA": 0.82,
    "VT": 0.93,
    "WA": 0.98,
    "WI": 0.91,
    "WV": 0.83,
    "WY": 0.70,
}
VOLUNTARY_FILING = "would_file_taxes_voluntarily"
"""A tax-unit input drawn like take-up, at :data:`VOLUNTARY_FILING_RATES`: it gates no target,
but a tax unit that would not file unasked is eligible for less (:func:`files_voluntarily`)."""
VOLUNTARY_FILING_RATES = {  # IRS SOI, CPS: by children, wages and head age
    "no_children": {
        "zero": {"under_65": 0.2, "age_65_plus": 0.05},
        "low": {"under_65": 0.24, "age_65_plus": 0.04},
        "medium": {"under_65": 0.0, "age_65_plus": 0.0},
        "high": {"under_65": 0.0, "age_65_plus": 0.005},
    },
    "with_children": {
        "zero": {"under_65": 0.5, "age_65_plus": 0.075},
        "low": {"under_65": 0.6, "age_65_plus": 0.06},
        "medium": {"under_65": 0.0, "age_65_plus": 0.0},
        "high": {"under_65": 0.025, "age_65_plus": 0.0037},
    },
}
TAKEUP_SPECS = (  # policyengine-us-data's order, less voluntary filing
    TakeupSpec("snap", "takes_up_snap_if_eligible", "spm_unit", 0.82),  # USDA
    TakeupSpec(
        "aca_ptc",
        "takes_up_aca_if_eligible",
        "tax_unit",
        0.672,  # KFF
        reported="reported_has_subsidized_marketplace_health_coverage_at_interview",
        reported_entity="person",
    ),
    TakeupSpec("dc_property_tax_credit", "takes_up_dc_ptc", "tax_unit", 0.32),  # DC tax expenditure report
    TakeupSpec("head_start", "takes_up_head_start_if_eligible", "person", 0.30),  # NIEER, from 2021-09
    TakeupSpec("early_head_start", "takes_up_early_head_start_if_eligible", "person", 0.09),  # NIEER
    TakeupSpec("ssi", "takes_up_ssi_if_eligible", "person", 0.50),  # Urban Institute
    TakeupSpec(
        "medicaid",
        "takes_up_medicaid_if_eligible",
        "person",
        _MEDICAID_RATES,  # KFF, MACPAC
        reported="has_medicaid_health_coverage_at_interview",
    ),
    TakeupSpec("tanf", "takes_up_tanf_if_eligible", "spm_unit", 0.22),  # HHS ASPE welfare indicators
    TakeupSpec(
        "housing_assistance",
        "takes_up_housing_assistance_if_eligible",
        "spm_unit",
        0.28,  # HUD Worst Case Housing Needs 2025
        reported="receives_housing_assistance",
    ),
)
"""The take-up inputs policyengine-us-data draws for targets. A row is take-up-affected when its variable,
or a constraint's, is exactly a spec's ``variable`` (``medicaid`` dollars are; the
``medicaid_enrolled`` flag is not and keeps the dataset's own take-up, as there)."""
TAKEUP_BY_VARIABLE = {spec.variable: spec for spec in TAKEUP_SPECS}
ELIGIBILITY_INPUTS = tuple(spec.takeup_variable for spec in TAKEUP_SPECS) + (VOLUNTARY_FILING,)
"""The inputs policyengine-us-data sets True before computing eligible amounts: an eligible
SNAP amount assumes SSI and TANF are taken up too."""
ELIGIBLE_ONLY = frozenset({"housing_assistance"})
"""Variables whose non-reporters are drawn among the entities with an eligible amount only."""

_DEFAULT_STATE_RATE = 0.8  # policyengine-us-data's rate for a state missing from a table


def state_rates(rate: float | Mapping[str, float], state_fips: np.ndarray) -> np.ndarray:
    """The take-up rate for each entry of ``state_fips``."""
    state_fips = np.asarray(state_fips)
    if not isinstance(rate, Mapping):
        return np.full(state_fips.shape, float(rate))
    by_state = {fips: rate.get(code, _DEFAULT_STATE_RATE) for fips, code in STATE_CODES.items()}
    states, inverse = np.unique(state_fips, return_inverse=True)
    return np.array([by_state.get(int(s), _DEFAULT_STATE_RATE) for s in states])[inverse].reshape(state_fips.shape)


def stable_string_hashes(prefix: str, suffixes: np.ndarray) -> np.ndarray:
    """:func:`stable_string_hash` of ``prefix + suffix`` for every ASCII suffix, as uint64."""
    suffixes = np.asarray(suffixes, dtype=bytes)
    width = max(suffixes.dtype.itemsize, 1)
    codes = np.frombuffer(suffixes.astype(f"S{width}").tobytes(), np.uint8).reshape(-1, width).astype(np.uint64)
    lengths = np.char.str_len(suffixes)
    h = np.full(suffixes.size, _roll(0, prefix), np.uint64)
    for position in range(width):
        h = np.where(position < lengths, h * np.uint64(31) + codes[:, position], h)
    h ^= h >> np.uint64(33)
    h *= np.uint64(_MIX)
    return h ^ (h >> np.uint64(33))


def takeup_draws(
    takeup_variable: str, household_ids: np.ndarray, entity_household: np.ndarray, clone: int
) -> np.ndarray:
    """Uniform draws for one clone's entities: the entities of household ``h`` (positions
    where ``entity_household == h``, in order) take ``seeded_rng(var, f"{household_ids[h]}:{clone}")
    .random(count)``, all households at once (:func:`builders._pcg64.uniforms`)."""
    from ._pcg64 import uniforms

    entity_household = np.asarray(entity_household)
    order = np.argsort(entity_household, kind="stable")
    households, starts, counts = np.unique(entity_household[order], return_index=True, return_counts=True)
    salts = np.char.add(np.asarray(household_ids)[households].astype(np.int64).astype(str), f":{clone}")
    seeds = stable_string_hashes(f"{takeup_variable}:", salts) & np.uint64(2**63 - 1)
    per_household = uniforms(seeds, int(counts.max(initial=0)))
    rank = np.arange(entity_household.size) - np.repeat(starts, counts)
    draws = np.empty(entity_household.size)
    draws[order] = per_household[np.repeat(np.arange(households.size), counts), rank]
    return draws


def takes_up(
    spec: TakeupSpec,
    household_ids: np.ndarray,
    entity_household: np.ndarray,
    clone: int,
    household_state: np.ndarray,
    reported: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Whether each entity of one clone takes up: its draw against its household's state rate,
    anchored on ``reported`` recipients (:func:`assign_takeup`, grouped by state when the rate
    is a state table). The entities are a whole clone's, as the anchoring counts them."""
    draws = takeup_draws(spec.takeup_variable, household_ids, entity_household, clone)
    entity_state = np.asarray(household_state)[entity_household]
    groups = entity_state if isinstance(spec.rate, Mapping) else None
    return assign_takeup(draws, state_rates(spec.rate, entity_state), reported, groups, eligible)


def files_voluntarily(
    household_ids: np.ndarray, tax_unit_household: np.ndarray, clone: int, filing_inputs: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Whether each tax unit of one clone would file unasked: its draw against
    :func:`voluntary_filing_rates` of ``filing_inputs`` (:data:`FILING_INPUTS`)."""
    draws = takeup_draws(VOLUNTARY_FILING, household_ids, tax_unit_household, clone)
    return draws < voluntary_filing_rates(*(filing_inputs[name] for name in FILING_INPUTS))


FILING_INPUTS = ("tax_unit_child_dependents", "tax_unit_wage_income", "age_head")
"""The tax-unit inputs of the voluntary-filing rate, from the dataset's own simulation."""


def assign_takeup(
    draws: np.ndarray,
    rates: np.ndarray,
    reported: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
) -> np.ndarray:
    """Who takes up, from uniform ``draws`` and per-entity ``rates``: ``draw < rate`` among the
    ``eligible`` (default all). With ``reported`` recipients, reporters always take up and the
    others are drawn at the rate that makes the group's takers ``int(rate * eligible count)``
    (reporters count as eligible), within each of ``groups`` (one group when None, which then
    needs one rate). policyengine-us-data's ``assign_takeup_with_reported_anchors``."""
    draws, rates = np.asarray(draws, np.float64), np.asarray(rates, np.float64)
    eligible = np.ones(draws.shape, bool) if eligible is None else np.asarray(eligible, bool)
    if reported is None:
        return eligible & (draws < rates)
    reported = np.asarray(reported, bool)
    eligible = eligible | reported
    takes = reported.copy()
    if groups is None:
        if np.unique(rates).size > 1:
            raise ValueError("rates that vary by entity need groups")
        groups = np.zeros(draws.shape, np.int8)
    for group in np.unique(groups):
        members = groups == group
        group_rates = np.unique(rates[members])
        if group_rates.size != 1:
            raise ValueError(f"take-up group {group} has several rates")
        wanted = int(group_rates[0] * int(np.count_nonzero(members & eligible)))
        needed = max(0, wanted - int(np.count_nonzero(reported[members])))
        drawn = members & eligible & ~reported
        n_drawn = int(np.count_nonzero(drawn))
        takes[drawn] = draws[drawn] < (needed / n_drawn if n_drawn else 0)
    return takes


def voluntary_filing_rates(child_dependents: np.ndarray, wage_income: np.ndarray, age_head: np.ndarray) -> np.ndarray:
    """Each tax unit's voluntary-filing rate (float32, as policyengine-us-data compares it):
    by children (any), wages (0, under 15k, under 30k, more) and head age (65 and over)."""
    children = np.where(np.asarray(child_dependents) > 0, "with_children", "no_children")
    wages = np.asarray(wage_income, np.float32)
    band = np.select([wages <= 0, wages < 15_000, wages < 30_000], ["zero", "low", "medium"], default="high")
    age = np.where(np.asarray(age_head) >= 65, "age_65_plus", "under_65")
    return np.array([VOLUNTARY_FILING_RATES[c][w][a] for c, w, a in zip(children, band, age)], np.float32)


REPORTS = tuple(spec.reported for spec in TAKEUP_SPECS if spec.reported)
"""The dataset arrays that report receipt (:attr:`TakeupSpec.reported`)."""


def reported_takeup(arrays: Mapping[str, np.ndarray], structure: EntityStructure, source: str) -> dict[str, np.ndarray]:
    """The reports of receipt among a dataset's ``arrays`` (those of :data:`REPORTS` it holds),
    per take-up input at its entity: a tax unit reports Marketplace coverage when any member
    does. ``source`` names the dataset in the error for a report of the wrong length."""
    anchors = {}
    for spec in TAKEUP_SPECS:
        if spec.reported is None or spec.reported not in arrays:
            continue
        reported = np.asarray(arrays[spec.reported]).astype(bool).ravel()
        entity = spec.reported_entity or spec.entity
        if reported.size != structure.entity_household[entity].size:
            raise ValueError(f"dataset {source}: {spec.reported} has {reported.size} entries, not one per {entity}")
        if entity != spec.entity:  # persons' reports mark their entity
            marked = np.zeros(structure.entity_household[spec.entity].size, bool)
            marked[structure.person_entity[spec.entity][reported]] = True
            reported = marked
        anchors[spec.takeup_variable] = reported
    return anchors
