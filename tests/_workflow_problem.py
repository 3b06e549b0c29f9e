"""Small calibration packages with PolicyEngine-like target tables, for the workflow tests."""

import numpy as np
import pandas as pd

import jaxcal
from builders.synthetic_problem import DISTRICTS_PER_STATE, policyengine_shaped_problem


def small_package(n_records=400, *, n_states=2, n_national=20, per_state=8, per_district=6, seed=3, **kwargs):
    """A package over ``policyengine_shaped_problem``: row ``k`` of a block is variable
    ``v{k}_count`` (even ``k``, counts) or ``v{k}_income`` (odd ``k``, amounts)."""
    problem = policyengine_shaped_problem(
        n_records,
        n_base=min(n_records, 200),
        n_states=n_states,
        n_national=n_national,
        per_state=per_state,
        per_district=per_district,
        nonzeros=(6, 4, 3),
        seed=seed,
        **kwargs,
    )
    states = sorted(DISTRICTS_PER_STATE)[:n_states]
    districts = [f"{s:02d}{d + 1:02d}" for s in states for d in range(DISTRICTS_PER_STATE[s])]
    rows = [("national", "US", k) for k in range(n_national)]
    rows += [("state", str(s), k) for s in states for k in range(per_state)]
    rows += [("district", d, k) for d in districts for k in range(per_district)]
    targets = pd.DataFrame(
        {
            "variable": [f"v{k}_count" if k % 2 == 0 else f"v{k}_income" for _, _, k in rows],
            "geo_level": [level for level, _, _ in rows],
            "geographic_id": [geo for _, geo, _ in rows],
            "domain_variable": [None] * len(rows),
            "value": problem.targets.astype(np.float64),
        }
    )
    names = [f"{level}/{geo}/{var}" for (level, geo, _), var in zip(rows, targets["variable"], strict=True)]
    package = jaxcal.io.CalibrationPackage.create(
        problem.matrix, targets, names, geography={"state_fips": problem.state_fips}
    )
    return package, problem
