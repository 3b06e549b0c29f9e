"""Clones and their geography: which state, congressional district and block each column is in.

Column ``i`` is clone ``i // n_base`` of base record ``i % n_base``. Every column draws a
place (a district, or a census block when a block table is given) from population weights
with one seeded ``numpy.random.Generator``; clone ``k > 0`` of a record redraws, at most 50
rounds, while it lands in a district an earlier clone of that record already has
(policyengine-us-data's ``assign_random_geography``). A district's GEOID is
``state_fips * 100 + district number`` (at-large districts are number 1).
"""

from __future__ import annotations

import dataclasses
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

    def as_package_geography(self) -> dict[str, np.ndarray]:
        """The arrays :class:`jaxcal.io.CalibrationPackage` keeps, under its key names."""
        arrays = {"state_fips": self.state_fips, "cd_geoid": self.cd_geoid}
        if self.block_geoid is not None:
            arrays["block_geoid"] = self.block_geoid
        return arrays


def assign_geography(n_base: int, n_clones: int, places: pd.DataFrame, seed: int) -> GeographyAssignment:
    """Draw every clone's place from ``places``: a table with ``cd_geoid`` and ``population``
    columns, and ``block_geoid`` when the places are blocks (then several rows share a district).

    ``ValueError`` for sizes below 1, a table without those columns, negative or all-zero
    populations, or a district GEOID that does not encode a state.
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
    rng = np.random.default_rng(seed)

    def draw(size: int) -> np.ndarray:
        return rng.choice(districts.size, size=size, p=probabilities)

    # held[r, d]: an earlier clone of record r lies in district d (districts numbered 0..n-1), so that
    # checking a clone costs one lookup per record, not one per record and earlier clone.
    district_number = np.unique(districts, return_inverse=True)[1].ravel()
    held = np.zeros((n_base, district_number.max() + 1), bool)
    records = np.arange(n_base)
    chosen = np.empty((n_clones, n_base), np.int64)
    for clone in range(n_clones):
        chosen[clone] = draw(n_base)
        for _ in range(MAX_REDRAWS):
            taken = held[records, district_number[chosen[clone]]]
            if not taken.any():
                break
            chosen[clone, taken] = draw(int(taken.sum()))
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
