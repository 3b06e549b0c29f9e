"""Synthetic calibration problems shaped like PolicyEngine-US's, for tests, benchmarks and the demo.

Columns are base records cloned across geography (column i is clone ``i // n_base`` of
record ``i % n_base``), each clone placed in a congressional district. Rows are national
targets, then ``per_state`` targets for every state, then ``per_district`` for every
district. A record is nonzero in a fixed subset of national rows and of the rows of its
clone's state and district (about 50 nonzeros a column with the defaults), with counts
(small integers) in even-numbered rows of a block and dollar amounts in odd ones.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse

# Congressional districts per state after the 2020 apportionment, by state FIPS code
# (DC's delegate counted as one district, as PolicyEngine does): 436 districts.
DISTRICTS_PER_STATE = {
    1: 7,
    2: 1,
    4: 9,
    5: 4,
    6: 52,
    8: 8,
    9: 5,
    10: 1,
    11: 1,
    12: 28,
    13: 14,
    15: 2,
    16: 2,
    17: 17,
    18: 9,
    19: 4,
    20: 4,
    21: 6,
    22: 6,
    23: 2,
    24: 8,
    25: 9,
    26: 13,
    27: 8,
    28: 4,
    29: 8,
    30: 2,
    31: 3,
    32: 4,
    33: 2,
    34: 12,
    35: 3,
    36: 26,
    37: 14,
    38: 1,
    39: 15,
    40: 5,
    41: 6,
    42: 17,
    44: 2,
    45: 7,
    46: 1,
    47: 9,
    48: 38,
    49: 4,
    50: 1,
    51: 11,
    53: 10,
    54: 2,
    55: 8,
    56: 1,
}

SIZES = {"small": 100_000, "mp-300k": 300_000, "mp-3m": 3_000_000}
"""Column counts of the named benchmark tiers."""


@dataclasses.dataclass(frozen=True)
class SyntheticProblem:
    matrix: sparse.csr_array
    """Targets x records, float32, int32 indices."""
    targets: np.ndarray
    """``matrix @ true_weights`` with 2% multiplicative noise: nearly, not exactly, reachable."""
    target_groups: np.ndarray
    """Family of each target: (geography level, row within the level's block)."""
    true_weights: np.ndarray
    state_fips: np.ndarray
    """State of each column."""
    cd_geoid: np.ndarray
    """Congressional district of each column, as PolicyEngine's GEOID text (state FIPS + district)."""


def policyengine_shaped_problem(
    n_records: int,
    *,
    n_base: int = 10_000,
    n_states: int = 51,
    n_national: int = 300,
    per_state: int = 50,
    per_district: int = 30,
    nonzeros: tuple[int, int, int] = (20, 18, 12),
    seed: int = 0,
) -> SyntheticProblem:
    """A problem with ``n_records`` columns over the first ``n_states`` states.

    ``nonzeros`` gives how many national, state and district rows each record touches.
    """
    rng = np.random.default_rng(seed)
    n_base = min(n_base, n_records)
    states = np.array(sorted(DISTRICTS_PER_STATE)[:n_states])
    district_state = np.repeat(np.arange(n_states), [DISTRICTS_PER_STATE[s] for s in states])
    n_districts = district_state.size
    k_national, k_state, k_district = nonzeros
    for level, k, n in (
        ("national", k_national, n_national),
        ("state", k_state, per_state),
        ("district", k_district, per_district),
    ):
        if not 0 <= k <= n:
            raise ValueError(
                f"a record cannot touch {k} of the {n} {level} rows: lower nonzeros or raise the rows per level"
            )

    # What each base record looks like: which rows of each block it touches and its values.
    def pick(k: int, n: int) -> np.ndarray:
        return np.argsort(rng.random((n_base, n)), axis=1)[:, :k].astype(np.int32)

    local = [pick(k_national, n_national), pick(k_state, per_state), pick(k_district, per_district)]
    local_rows = np.concatenate(local, axis=1)
    is_count = local_rows % 2 == 0
    counts = rng.integers(1, 5, local_rows.shape)
    amounts = rng.lognormal(9.0, 1.5, local_rows.shape)
    base_values = np.where(is_count, counts, amounts).astype(np.float32)

    # Clones: each column lives in a district, hence a state.
    base = np.arange(n_records) % n_base
    district = rng.integers(0, n_districts, n_records)
    state = district_state[district]
    state_start = n_national + state * per_state
    district_start = n_national + n_states * per_state + district * per_district
    offsets = np.concatenate(
        [
            np.zeros((n_records, k_national), np.int32),
            np.broadcast_to(state_start[:, None], (n_records, k_state)),
            np.broadcast_to(district_start[:, None], (n_records, k_district)),
        ],
        axis=1,
    )
    rows = (local_rows[base] + offsets).ravel().astype(np.int32)
    cols = np.repeat(np.arange(n_records, dtype=np.int32), local_rows.shape[1])
    n_targets = n_national + n_states * per_state + n_districts * per_district
    matrix = sparse.coo_array((base_values[base].ravel(), (rows, cols)), shape=(n_targets, n_records)).tocsr()

    true_weights = rng.uniform(50, 150, n_records).astype(np.float32)
    targets = (matrix @ true_weights) * (1 + 0.02 * rng.standard_normal(n_targets))
    group_of_row = np.concatenate(
        [
            np.arange(n_national) // 10,
            n_national // 10 + np.tile(np.arange(per_state), n_states),
            n_national // 10 + per_state + np.tile(np.arange(per_district), n_districts),
        ]
    )
    return SyntheticProblem(
        matrix=matrix,
        targets=targets.astype(np.float32),
        target_groups=group_of_row,
        true_weights=true_weights,
        state_fips=states[state],
        cd_geoid=np.array(_district_geoids(states))[district],
    )


def synthetic_package(n_records: int, **problem_settings):
    """:func:`policyengine_shaped_problem` as a ``jaxcal.io.CalibrationPackage``, with a
    PolicyEngine-like targets table: row ``k`` of a block is ``person_count`` in domain
    ``age`` (``k`` = 0), ``v{k}_count`` (other even ``k``: counts) or ``v{k}_income`` (odd
    ``k``: amounts), at geography level national, state or district. District
    ``person_count``/``age`` rows make PolicyEngine's initial-weight rule apply.
    """
    import pandas as pd

    from jaxcal.io import CalibrationPackage

    problem = policyengine_shaped_problem(n_records, **problem_settings)
    settings = {"n_states": 51, "n_national": 300, "per_state": 50, "per_district": 30} | problem_settings
    states = sorted(DISTRICTS_PER_STATE)[: settings["n_states"]]
    rows = [("national", "US", k) for k in range(settings["n_national"])]
    rows += [("state", str(s), k) for s in states for k in range(settings["per_state"])]
    rows += [("district", d, k) for d in _district_geoids(states) for k in range(settings["per_district"])]
    targets = pd.DataFrame(
        {
            "variable": [_variable(k) for _, _, k in rows],
            "geo_level": [level for level, _, _ in rows],
            "geographic_id": [geo for _, geo, _ in rows],
            "domain_variable": ["age" if k == 0 else None for _, _, k in rows],
            "value": problem.targets.astype(np.float64),
        }
    )
    names = [f"{level}/{geo}/{_variable(k)}" + ("[age]" if k == 0 else "") for level, geo, k in rows]
    return CalibrationPackage.create(
        problem.matrix,
        targets,
        names,
        geography={"state_fips": problem.state_fips, "cd_geoid": problem.cd_geoid},
        metadata={
            "source": "builders.synthetic_problem",
            "n_base_records": min(problem_settings.get("n_base", 10_000), n_records),
        }
        | {k: v for k, v in problem_settings.items() if isinstance(v, (int, float))},
    )


def _variable(k: int) -> str:
    if k == 0:
        return "person_count"
    return f"v{k}_count" if k % 2 == 0 else f"v{k}_income"


def _district_geoids(states) -> list[str]:
    return [f"{s:02d}{d + 1:02d}" for s in states for d in range(DISTRICTS_PER_STATE[s])]


def main() -> None:
    import argparse
    import time

    from jaxcal.io import save_package

    parser = argparse.ArgumentParser(description="Write a synthetic PolicyEngine-shaped calibration package.")
    parser.add_argument("output", help="package path (.npz)")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    package = synthetic_package(args.records, seed=args.seed)
    path = save_package(package, args.output)
    print(
        f"wrote {path}: {package.n_targets:,} targets x {package.n_records:,} records, "
        f"{package.nnz:,} nonzeros ({time.perf_counter() - start:.1f}s)"
    )


if __name__ == "__main__":
    main()
