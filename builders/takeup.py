"""Take-up re-randomization, bit-compatible with policyengine-us-data.

Each clone of a household draws its own take-up: for a take-up variable ``var`` the
household's entities (in dataset order) take ``seeded_rng(var, f"{household_id}:{clone}")
.random(n)`` and take up when ``draw < rate[state]``. The seed is policyengine-us-data's
stable string hash (:func:`stable_string_hash`), so the same (variable, household, clone)
gives the same draw there and here.

policyengine-us 2.68 carries no take-up rates (they live in policyengine-us-data's
``parameters/take_up``): :data:`TAKEUP_SPECS` holds those values and their sources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from .geography import STATE_CODES

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
    """A target variable whose amount depends on a take-up input drawn per entity."""

    variable: str
    """The amount or flag targeted (its entity is ``entity``)."""
    takeup_variable: str
    """The boolean input policyengine-us multiplies it by (default True)."""
    entity: str
    rate: float | Mapping[str, float]
    """One rate, or a rate per two-letter state code."""


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
TAKEUP_SPECS = (
    TakeupSpec("snap", "takes_up_snap_if_eligible", "spm_unit", 0.82),  # USDA
    TakeupSpec("tanf", "takes_up_tanf_if_eligible", "spm_unit", 0.22),  # HHS ASPE welfare indicators
    TakeupSpec("ssi", "takes_up_ssi_if_eligible", "person", 0.50),  # Urban Institute
    TakeupSpec("medicaid_enrolled", "takes_up_medicaid_if_eligible", "person", _MEDICAID_RATES),  # KFF, MACPAC
    TakeupSpec("aca_ptc", "takes_up_aca_if_eligible", "tax_unit", 0.672),  # KFF
    TakeupSpec("dc_property_tax_credit", "takes_up_dc_ptc", "tax_unit", 0.32),  # DC tax expenditure report
    TakeupSpec("head_start", "takes_up_head_start_if_eligible", "person", 0.30),  # NIEER, from 2021-09
    TakeupSpec("early_head_start", "takes_up_early_head_start_if_eligible", "person", 0.09),  # NIEER
)
"""The take-up-affected targets; ``medicaid`` dollars are not one (PolicyEngine scales them to
state spending, so a record's value depends on all weights): target ``medicaid_enrolled``."""
TAKEUP_BY_VARIABLE = {spec.variable: spec for spec in TAKEUP_SPECS}
ELIGIBILITY_INPUTS = tuple(spec.takeup_variable for spec in TAKEUP_SPECS) + ("would_file_taxes_voluntarily",)
"""The inputs policyengine-us-data sets True before computing eligible amounts (its
``SIMPLE_TAKEUP_VARS``): an eligible SNAP amount assumes SSI and TANF are taken up too."""

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
    spec: TakeupSpec, household_ids: np.ndarray, entity_household: np.ndarray, clone: int, household_state: np.ndarray
) -> np.ndarray:
    """Whether each entity of one clone takes up: ``draw < rate[state of its household]``."""
    draws = takeup_draws(spec.takeup_variable, household_ids, entity_household, clone)
    return draws < state_rates(spec.rate, np.asarray(household_state)[entity_household])
