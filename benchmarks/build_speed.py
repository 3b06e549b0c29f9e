"""Time ``builders.unified_matrix.build_calibration_package`` on synthetic households.

Writes a dataset of ``--households`` random households (1-4 persons: a head, maybe a
spouse, children) and a target database shaped like PolicyEngine's for ``--states``
(national, state and district age bands, AGI, SNAP, household counts with a SNAP domain,
Medicaid enrollment counts: take-up draws on both amounts and constraints), builds with
``--clones`` clones, and prints the stage timings, peak memory and the two rates that
scale: PolicyEngine seconds per 1,000 households x state, and assembly seconds per 1,000
households x clone. A markdown table goes to stdout.

    python benchmarks/build_speed.py --households 1000 --clones 10 --states 6 36 48
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from builders.dataset import write_dataset_h5
from builders.geography import districts_from_state_populations
from builders.synthetic_problem import DISTRICTS_PER_STATE
from builders.target_db import TargetDatabaseWriter
from builders.unified_matrix import build_calibration_package

YEAR = 2024
AGE_BANDS = [(0, 5), (5, 18), (18, 30), (30, 45), (45, 65), (65, 120)]


def synthetic_households(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` households: a head (20-85), a spouse with probability 1/2, 0-2 children; one tax
    unit, SPM unit and family each; earnings for about 70% of adults."""
    rng = np.random.default_rng(seed)
    spouse = rng.random(n) < 0.5
    children = rng.integers(0, 3, n)
    size = 1 + spouse + children
    household = np.repeat(np.arange(n), size)
    position = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
    is_head, is_spouse = position == 0, (position == 1) & spouse[household]
    adult = is_head | is_spouse
    head_age = rng.integers(20, 86, n)
    adult_age = np.clip(head_age[household] + rng.integers(-5, 6, household.size), 18, 90)
    age = np.where(adult, adult_age, rng.integers(0, 18, household.size))
    earnings = np.where(adult & (rng.random(household.size) < 0.7), rng.lognormal(10.3, 1.0, household.size), 0.0)
    marital_ids = np.unique(household * 4 + np.where(adult, 0, position), return_inverse=True)[1]  # couples share one
    ids = np.arange(n) + 1
    persons = household + 1
    return {
        "person_id": np.arange(household.size) + 1,
        "household_id": ids,
        "person_household_id": persons,
        "tax_unit_id": ids,
        "person_tax_unit_id": persons,
        "spm_unit_id": ids,
        "person_spm_unit_id": persons,
        "family_id": ids,
        "person_family_id": persons,
        "marital_unit_id": np.arange(marital_ids.max() + 1) + 1,
        "person_marital_unit_id": marital_ids + 1,
        "age": age,
        "employment_income": earnings,
        "is_tax_unit_head": is_head,
        "is_tax_unit_spouse": is_spouse,
        "state_fips": np.full(n, 6),
    }


def write_targets(path: pathlib.Path, states: list[int]) -> None:
    """Targets shaped like PolicyEngine's, with arbitrary values (only the matrix is timed)."""
    with TargetDatabaseWriter(path, overwrite=True) as db:
        for low, high in AGE_BANDS:
            db.add_target("person_count", YEAR, 1e6, constraints=[("age", ">=", low), ("age", "<", high)])
        db.add_target("snap", YEAR, 1e9)
        db.add_target("tax_unit_count", YEAR, 1e6, constraints=[("adjusted_gross_income", ">=", 50_000)])
        for state in states:
            place = [("state_fips", "==", state)]
            db.add_target("snap", YEAR, 1e8, constraints=place)
            db.add_target("household_count", YEAR, 1e5, constraints=place + [("snap", ">", 0)])
            db.add_target("person_count", YEAR, 1e5, constraints=place + [("medicaid_enrolled", "==", True)])
            db.add_target("adjusted_gross_income", YEAR, 1e10, constraints=place)
            for number in range(1, DISTRICTS_PER_STATE[state] + 1):
                district = place + [("congressional_district_geoid", "==", state * 100 + number)]
                for low, high in AGE_BANDS:
                    db.add_target(
                        "person_count", YEAR, 1e5, constraints=district + [("age", ">=", low), ("age", "<", high)]
                    )
                db.add_target("adjusted_gross_income", YEAR, 1e9, constraints=district)
                db.add_target("household_count", YEAR, 1e5, constraints=district)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=1000)
    parser.add_argument("--clones", type=int, default=10)
    parser.add_argument("--states", type=int, nargs="+", default=[6, 36, 48])
    parser.add_argument("--skip-takeup-rerandomize", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        dataset = write_dataset_h5(tmp / "synthetic.h5", synthetic_households(args.households), YEAR)
        write_targets(tmp / "targets.db", args.states)
        places = districts_from_state_populations(
            {s: 1.0e6 for s in args.states}, {s: DISTRICTS_PER_STATE[s] for s in args.states}
        )
        started = time.perf_counter()
        package, report = build_calibration_package(
            dataset,
            tmp / "targets.db",
            n_clones=args.clones,
            seed=0,
            places=places,
            rerandomize_takeup=not args.skip_takeup_rerandomize,
        )
        total = time.perf_counter() - started
    stages = report.stages
    per_state = stages["simulate"] / (args.households / 1000 * len(args.states))
    per_clone = stages["assemble"] / (args.households / 1000 * args.clones)
    result = {
        "households": args.households,
        "clones": args.clones,
        "states": args.states,
        "targets": package.n_targets,
        "columns": package.n_records,
        "nonzeros": package.nnz,
        "stages_s": stages,
        "total_s": round(total, 1),
        "peak_memory_mb": round(report.peak_memory_mb),
        "simulate_s_per_1000_households_x_state": round(per_state, 2),
        "assemble_s_per_1000_households_x_clone": round(per_clone, 3),
        "takeup_rerandomized": not args.skip_takeup_rerandomize,
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result), file=sys.stderr)
    print(
        f"| {args.households:,} x {args.clones} clones, {len(args.states)} states | {package.n_targets:,} | "
        f"{package.nnz:,} | {stages['import policyengine_us']:.0f} | {stages['simulate']:.1f} | "
        f"{stages['assemble']:.2f} | {per_state:.1f} | {per_clone:.3f} | {report.peak_memory_mb:,.0f} |"
    )


if __name__ == "__main__":
    main()
