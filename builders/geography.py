"""Clones and their geography: which state, congressional district and block each column is in.

Column ``i`` is clone ``i // n_base`` of base record ``i % n_base``. Every column draws a
place (a district, or a census block when a block table is given) from population weights
with one seeded ``numpy.random.Generator``; clone ``k > 0`` of a record redraws, at most 50
rounds, while it lands in a district an earlier clone of that record already has
(policyengine-us-data's ``assign_random_geography``, draw for draw). As its
``run_calibration`` calls it, the households with the top tenth of AGI may draw from weights
leaning to the districts with the most AGI, and some records may be held to a state. A
district's GEOID is ``state_fips * 100 + district number`` (at-large districts are number 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

# Postal codes of the 50 states and DC by FIPS code (parameters and sources key states by code).
STATE_CODES = {
    1: "AL",
    2: "AK",
    4: "AZ",
    5: "AR",
    6: "CA",
    8: "CO",
    9: "CT",
    10: "DE",
    11: "DC",
    12: "FL",
    13: "GA",
    15: "HI",
    16: "ID",
    17: "IL",
    18: "IN",
    19: "IA",
    20: "KS",
    21: "KY",
    22: "LA",
    23: "ME",
    24: "MD",
    25: "MA",
    26: "MI",
    27: "MN",
    28: "MS",
    29: "MO",
    30: "MT",
    31: "NE",
    32: "NV",
    33: "NH",
    34: "NJ",
    35: "NM",
    36: "NY",
    37: "NC",
    38: "ND",
    39: "OH",
    40: "OK",
    41: "OR",
    42: "PA",
    44: "RI",
    45: "SC",
    46: "SD",
    47: "TN",
    48: "TX",
    49: "UT",
    50: "VT",
    51: "VA",
    53: "WA",
    54: "WV",
    55: "WI",
    56: "WY",
}
MAX_REDRAWS = 50
TOP_AGI_PERCENTILE = 90.0
"""Households at or above this percentile of AGI draw their places by district AGI."""


@dataclasses.dataclass(frozen=True)
class GeographyAssignment:
    """Per-column geography; every array has ``n_base * n_clones`` entries."""

    state_fips: np.ndarray
    cd_geoid: np.ndarray
    block_geoid: np.ndarray | None
    n_base: int
    n_clones: int

    @property
    def n_columns(self) -> int:
        return self.n_base * self.n_clones

    @property
    def county_fips(self) -> np.ndarray | None:
        """Each column's 5-digit county FIPS code: its block GEOID's first five digits (None without blocks)."""
        if self.block_geoid is None:
            return None
        return np.asarray(self.block_geoid).astype("U5")

    def as_package_geography(self) -> dict[str, np.ndarray]:
        """The arrays :class:`jaxcal.io.CalibrationPackage` keeps, under its key names."""
        arrays = {"state_fips": self.state_fips, "cd_geoid": self.cd_geoid}
        if self.block_geoid is not None:
            arrays["block_geoid"] = self.block_geoid
        return arrays


def assign_geography(
    n_base: int,
    n_clones: int,
    places: pd.DataFrame,
    seed: int,
    *,
    household_agi: np.ndarray | None = None,
    district_agi: Mapping[int, float] | None = None,
    fixed_states: np.ndarray | None = None,
) -> GeographyAssignment:
    """Draw every clone's place from ``places``: a table with ``cd_geoid`` and ``population``
    columns, and ``block_geoid`` when the places are blocks (then several rows share a district).

    With ``household_agi`` (per base record) and ``district_agi`` (AGI by district GEOID, may be
    empty), the records at or above :data:`TOP_AGI_PERCENTILE` draw with each district's
    population share rescaled to its share of ``district_agi`` (places within a district keep
    their population shares). ``fixed_states`` (per base record, 0 for none) holds every clone
    of a record to a state's places. ``ValueError`` for sizes below 1, a table without those
    columns, negative or all-zero populations, a district GEOID that does not encode a state,
    or per-record inputs of the wrong length or naming a state without places.
    """
    if n_base < 1 or n_clones < 1:
        raise ValueError(f"need at least one base record and one clone, got n_base={n_base}, n_clones={n_clones}")
    missing = [c for c in ("cd_geoid", "population") if c not in places.columns]
    if missing:
        raise ValueError(f"the geography table lacks column(s) {', '.join(missing)}")
    population = places["population"].to_numpy(np.float64)
    if not np.isfinite(population).all() or (population < 0).any() or population.sum() <= 0:
        raise ValueError("geography populations must be finite, non-negative and not all zero")
    districts = places["cd_geoid"].to_numpy().astype(np.int64)
    if (districts < 100).any() or (districts // 100 > 78).any():
        raise ValueError("cd_geoid must be state_fips * 100 + district number")
    probabilities = population / population.sum()
    top, agi_probabilities = None, probabilities
    if household_agi is not None and district_agi is not None:
        household_agi = _per_record(household_agi, n_base, "household_agi").astype(np.float64)
        top = household_agi >= np.percentile(household_agi, TOP_AGI_PERCENTILE)
        agi_probabilities = _agi_probabilities(districts, probabilities, district_agi)
    place_states = districts // 100
    if fixed_states is not None:
        fixed_states = np.nan_to_num(_per_record(fixed_states, n_base, "fixed_states").astype(float)).astype(np.int32)
        absent = sorted(set(fixed_states[fixed_states > 0].tolist()) - set(place_states.tolist()))
        if absent:
            raise ValueError(f"fixed_states names state(s) {absent} with no places in the geography table")
    rng = np.random.default_rng(seed)
    in_state: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}

    def draw_in_state(state: int, size: int, by_agi: bool) -> np.ndarray:
        if (state, by_agi) not in in_state:
            indices = np.flatnonzero(place_states == state)
            p = (agi_probabilities if by_agi else probabilities)[indices]
            if not np.isfinite(p).all() or p.sum() <= 0:
                p = probabilities[indices]
            if not np.isfinite(p).all() or p.sum() <= 0:
                p = np.ones(indices.size)
            in_state[state, by_agi] = indices, p / p.sum()
        indices, p = in_state[state, by_agi]
        return rng.choice(indices, size=size, p=p)

    def draw(size: int, top: np.ndarray | None, fixed: np.ndarray | None) -> np.ndarray:
        """A place for each of ``size`` records (``top`` and ``fixed`` theirs), in PolicyEngine's
        order of draws: each held state's top then other records, then the free top then others."""

        def parts(mask: np.ndarray) -> tuple[tuple[np.ndarray, bool], ...]:
            """``mask`` split into its top records (drawn by AGI) and the others, when AGI counts."""
            return ((mask & top, True), (mask & ~top, False)) if top is not None else ((mask, False),)

        chosen = np.empty(size, np.int64)
        free = np.ones(size, bool)
        for state in np.unique(fixed[fixed > 0]) if fixed is not None else ():
            held = fixed == state
            for part, by_agi in parts(held):
                if part.any():
                    chosen[part] = draw_in_state(int(state), int(part.sum()), by_agi)
            free &= ~held
        for part, by_agi in parts(free):
            if part.any():
                p = agi_probabilities if by_agi else probabilities
                chosen[part] = rng.choice(districts.size, size=int(part.sum()), p=p)
        return chosen

    # held[r, d]: an earlier clone of record r lies in district d (districts numbered 0..n-1), so that
    # checking a clone costs one lookup per record, not one per record and earlier clone.
    district_number = np.unique(districts, return_inverse=True)[1].ravel()
    held = np.zeros((n_base, district_number.max() + 1), bool)
    records = np.arange(n_base)
    chosen = np.empty((n_clones, n_base), np.int64)
    for clone in range(n_clones):
        chosen[clone] = draw(n_base, top, fixed_states)
        for _ in range(MAX_REDRAWS):
            taken = held[records, district_number[chosen[clone]]]
            if not taken.any():
                break
            chosen[clone, taken] = draw(
                int(taken.sum()),
                top[taken] if top is not None else None,
                fixed_states[taken] if fixed_states is not None else None,
            )
        held[records, district_number[chosen[clone]]] = True
    chosen = chosen.ravel()
    cd_geoid = districts[chosen]
    return GeographyAssignment(
        state_fips=(cd_geoid // 100).astype(np.int32),
        cd_geoid=cd_geoid,
        block_geoid=places["block_geoid"].to_numpy().astype(str)[chosen] if "block_geoid" in places else None,
        n_base=n_base,
        n_clones=n_clones,
    )


SYNTHETIC_HOUSEHOLD_IDS = 1_000_000
"""policyengine-us-data numbers its synthetic (Forbes) PUF households from here up."""


def forbes_fixed_states(household_id: np.ndarray | None, forbes_state_fips: np.ndarray | None) -> np.ndarray | None:
    """Per household, the state a synthetic Forbes household stays in (0 for the others), or
    None when the dataset has none: policyengine-us-data's fixed-state overrides, the
    ``fixed_states`` of :func:`assign_geography`."""
    if household_id is None or forbes_state_fips is None or np.shape(household_id) != np.shape(forbes_state_fips):
        return None
    states = np.nan_to_num(np.asarray(forbes_state_fips, float)).astype(np.int32)
    fixed = (states > 0) & (np.asarray(household_id, float) >= SYNTHETIC_HOUSEHOLD_IDS)
    return np.where(fixed, states, 0).astype(np.int32) if fixed.any() else None


def _per_record(values, n_base: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.shape != (n_base,):
        raise ValueError(f"{name} needs one value per base record ({n_base}), got shape {values.shape}")
    return values


def _agi_probabilities(districts: np.ndarray, probabilities: np.ndarray, district_agi: Mapping[int, float]):
    """Place probabilities whose district totals are proportional to ``district_agi`` (negative
    and absent districts 0), each district's places keeping their population shares; the
    population probabilities where no district has AGI."""
    import pandas as pd

    weights = np.maximum([float(district_agi.get(int(d), 0.0)) for d in districts], 0.0)
    if weights.sum() == 0:
        return probabilities
    # pandas' grouped sum, as policyengine-us-data takes it: the same bits of every district's mass.
    district_mass = pd.Series(probabilities, copy=False).groupby(districts).transform("sum").to_numpy()
    leaning = np.divide(
        probabilities * weights, district_mass, out=np.zeros_like(probabilities), where=district_mass > 0
    )
    return probabilities if leaning.sum() == 0 else leaning / leaning.sum()


def districts_from_state_populations(
    state_population: dict[int, float], districts_per_state: dict[int, int]
) -> pd.DataFrame:
    """A district table splitting each state's population evenly over its districts (a
    stand-in where district populations are not at hand)."""
    import pandas as pd

    rows = [
        (state * 100 + number, state_population[state] / count)
        for state, count in sorted(districts_per_state.items())
        if state in state_population
        for number in range(1, count + 1)
    ]
    return pd.DataFrame(rows, columns=["cd_geoid", "population"])
