"""What ``jaxcal diagnose`` costs: wall time by stage and peak memory, on packages with real conflicts.

Each problem is ``builders.synthetic_problem.synthetic_package`` (PolicyEngine-shaped: national,
state and district blocks) made hierarchical and inconsistent, so that its optimum has conflicts
to find: for the first ``--hierarchy-rows`` rows of each block, every state's row becomes the sum
of its districts' rows and the nation's the sum of the states', and their targets are the
children's sum times a normal 5% error; then 2% of all targets are scaled by a lognormal factor
(sigma 1). Every problem runs in its own process, one after the other, so its peak RSS (building
the package included) is its own. The timed stages are those of ``jaxcal diagnose`` after the
package is loaded: :func:`jaxcal.workflow.diagnose_targets` (the solve, and the rest) and
:func:`jaxcal.runs.write_diagnosis` (two CSVs and the figure).

    python benchmarks/diagnose.py --output benchmarks/RESULTS.md
    python benchmarks/diagnose.py --problem production --output benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

PROBLEMS = {
    # name: (records, settings of synthetic_package)
    "A": (500_000, {"nonzeros": (10, 8, 6)}),
    "C": (200_000, {"n_national": 100, "per_state": 20, "per_district": 8, "nonzeros": (25, 18, 8)}),
    "B": (1_000_000, {}),
    "production": (5_000_000, {"per_district": 40, "nonzeros": (8, 7, 5)}),
}
"""``production`` is PolicyEngine's shape: 20,290 targets x 5,000,000 records, 1e8 nonzeros."""
DEFAULT_PROBLEMS = ("C", "A", "B")


def hierarchical_package(n_records: int, settings: dict, *, hierarchy_rows: int, seed: int = 0):
    """The synthetic package with its first ``hierarchy_rows`` rows of each block nested and the
    targets made to conflict (see the module docstring)."""
    import pandas as pd
    from scipy import sparse

    from builders.synthetic_problem import synthetic_package
    from jaxcal.io import CalibrationPackage

    package = synthetic_package(n_records, seed=seed, **settings)
    rng = np.random.default_rng(seed + 1)
    targets = package.targets
    matrix = sparse.csr_array(package.matrix, dtype=np.float64)
    values = targets["value"].to_numpy(np.float64).copy()
    level = targets["geo_level"].to_numpy()
    geo = targets["geographic_id"].astype(str).to_numpy()
    variable = targets["variable"].to_numpy()
    row_of = {(lv, g, v): i for i, (lv, g, v) in enumerate(zip(level, geo, variable))}
    national = [v for lv, v in zip(level, variable) if lv == "national"]
    children: dict[int, list[int]] = {}  # a nested row and the rows it becomes the sum of
    for v in national[:hierarchy_rows]:
        states = []
        for (lv, g, var), i in row_of.items():
            state = row_of.get(("state", str(int(g) // 100), v)) if lv == "district" and var == v else None
            if state is not None:
                children.setdefault(state, []).append(i)
                states.append(state)
        children[row_of[("national", "US", v)]] = sorted(set(states))
    # States first (their children are districts), then the nation over the states just made.
    for stage in ("state", "national"):
        rows = [row for row in children if level[row] == stage]
        select = sparse.eye_array(len(values), format="lil")
        for row in rows:
            select[row, row] = 0.0
            select[row, children[row]] = 1.0
            values[row] = values[children[row]].sum() * (1 + 0.05 * rng.standard_normal())
        matrix = sparse.csr_array(sparse.csr_array(select) @ matrix)
    scaled = rng.random(len(values)) < 0.02
    values[scaled] *= rng.lognormal(0.0, 1.0, scaled.sum())
    table = targets.assign(value=values)
    return CalibrationPackage.create(
        sparse.csr_array(matrix, dtype=np.float32),
        pd.DataFrame(table),
        package.target_names,
        geography=package.geography,
        metadata=package.metadata,
    )


def run_one(name: str, hierarchy_rows: int) -> dict:
    """Build problem ``name``, diagnose it and write the files; the numbers, as a dict."""
    from jaxcal.runs import write_diagnosis
    from jaxcal.workflow import diagnose_targets

    n_records, settings = PROBLEMS[name]
    start = time.perf_counter()
    package = hierarchical_package(n_records, settings, hierarchy_rows=hierarchy_rows)
    built = time.perf_counter() - start
    counts = np.diff(package.matrix.tocsc().indptr).astype(np.float64)
    start = time.perf_counter()
    steps: list[float] = []

    def progress(step: int, bound: float) -> None:
        steps.append(time.perf_counter() - start)
        print(f"{name}: step {step}, bound {bound:.1e}, {steps[-1]:.0f}s", file=sys.stderr, flush=True)

    diagnosis = diagnose_targets(package, progress=progress)
    diagnosed = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        write_diagnosis(diagnosis, directory)
        written = time.perf_counter() - start
    optimum = diagnosis.optimum
    return {
        "problem": name,
        "n_targets": package.n_targets,
        "n_records": package.n_records,
        "nnz": package.nnz,
        "sum_nnz_squared": float(counts @ counts),
        "build_s": built,
        "first_step_s": steps[0] if steps else None,
        "solver": optimum.method,
        "iterations": optimum.iterations,
        "converged": bool(optimum.converged),
        "accuracy": float(optimum.accuracy),
        "solve_s": optimum.seconds,
        "diagnose_s": diagnosed,
        "write_s": written,
        "objective_start": diagnosis.start_objective,
        "objective_optimum": diagnosis.optimum_objective,
        "conflicts": int(len(diagnosis.conflicts())),
        "impossible": int(len(diagnosis.impossible())),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def markdown(results: list[dict], command: str) -> str:
    import jax
    import scipy

    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"## Target diagnosis, {when}",
        "",
        f"`{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"scipy {scipy.__version__}, jax {jax.__version__}. Problems: benchmarks/diagnose.py's docstring. "
        "`diagnose` is `jaxcal.workflow.diagnose_targets` (the solve included), `write` the two CSVs "
        "and the figure; peak RSS includes building the package.",
        "",
        "| problem | targets x records | nonzeros | sum nnz_j^2 | solver | steps | accuracy bound | solve | "
        "diagnose | write | peak RSS | objective start -> optimum | conflicting groups |",
        "|---|---|--:|--:|---|--:|--:|--:|--:|--:|--:|---|--:|",
    ]
    for r in results:
        lines.append(
            f"| {r['problem']} | {r['n_targets']:,} x {r['n_records']:,} | {r['nnz'] / 1e6:.1f}M | "
            f"{r['sum_nnz_squared']:.2g} | {r['solver']}{'' if r['converged'] else ' (not converged)'} | "
            f"{r['iterations']} | {r['accuracy']:.1e} | {r['solve_s']:.0f} s | {r['diagnose_s']:.0f} s | "
            f"{r['write_s']:.1f} s | {r['peak_rss_gb']:.1f} GB | {r['objective_start']:.4g} -> "
            f"{r['objective_optimum']:.4g} | {r['conflicts']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", action="append", choices=sorted(PROBLEMS), help="default: C, A, B")
    parser.add_argument("--hierarchy-rows", type=int, default=5, help="rows of each block nested (default 5)")
    parser.add_argument("--output", help="append the markdown section to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one problem, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.hierarchy_rows)))
        return
    results = []
    for name in args.problem or DEFAULT_PROBLEMS:
        command = [sys.executable, __file__, "--one", name, "--hierarchy-rows", str(args.hierarchy_rows)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # its progress on stderr
        if done.returncode:
            sys.exit(f"problem {name} failed (exit {done.returncode})")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    shown = "python benchmarks/diagnose.py " + shlex.join(sys.argv[1:])
    section = markdown(results, shown.strip())
    print(section)
    if args.output:
        with open(args.output, "a") as f:
            f.write("\n" + section)


if __name__ == "__main__":
    main()
