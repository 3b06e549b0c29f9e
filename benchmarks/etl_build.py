"""``jaxcal build`` on PolicyEngine's own target database, built offline by its ETL.

PolicyEngine's ``policy_data.db`` is not distributed; policyengine-us-data's ETL modules build it
from raw Census/CMS/USDA inputs, most of which its wheel caches. This benchmark copies the
installed ``policyengine_us_data`` package into a work directory (the ETL writes into its own
``storage/``; neither the repository nor site-packages is touched), runs ``create_database()``
and the ETL modules that need no network against the copy, writes ``--households`` synthetic
households over the 50 states and DC (:func:`builders.demo_microdata.generate_demo_h5`), and
times ``jaxcal build`` on the two with ``--clones`` clones and PolicyEngine's defaults (every
target, take-up re-randomized). The build's stderr is echoed with elapsed seconds; a markdown
summary (ETL modules, target count, stage seconds, peak memory, package, warnings) goes to
stdout. The work directory is kept, so the package can be read again.

    .venv/bin/python benchmarks/etl_build.py --households 2000 --clones 51
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

from builders.demo_microdata import generate_demo_h5

ETL_MODULES = (
    "create_initial_strata",
    "etl_age",
    "etl_snap",
    "etl_medicaid",
    "etl_national_targets",
    "etl_aca_marketplace",
    "etl_aca_agi_state_targets",
    "etl_pregnancy",
    "etl_tanf",
)
"""Run in this order after ``create_database()``; etl_irs_soi, etl_state_income_tax and
etl_housing_assistance download their inputs, so they are left out."""
JAXCAL = pathlib.Path(sys.executable).with_name("jaxcal")
STAGE = re.compile(r"^(\S[^:]*): ([0-9.]+) s$")
PROGRESS = re.compile(r"^(\S.*\.\.\.|\s+(clone|state) \d+ \(\d+/\d+\): .*)$")
"""A stage's start and the per-clone (per-state) lines, left out of the summary (not the log)."""


def copy_package(workdir: pathlib.Path) -> pathlib.Path:
    """Copy the installed ``policyengine_us_data`` under ``workdir``; returns its database path."""
    source = pathlib.Path(importlib.util.find_spec("policyengine_us_data").submodule_search_locations[0])
    target = workdir / "policyengine_us_data"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "policy_data.db"))
    return target / "storage" / "calibration" / "policy_data.db"


def run_etl(workdir: pathlib.Path, timeout: float) -> list[tuple[str, int, float, str]]:
    """``create_database()`` then each ETL module, in fresh interpreters that import the copy:
    (step, exit code, seconds, last stderr line when it failed)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))}
    create = "from policyengine_us_data.db.create_database_tables import create_database; create_database()"
    steps = [("create_database", ["-c", create])] + [(m, ["-m", f"policyengine_us_data.db.{m}"]) for m in ETL_MODULES]
    results = []
    for name, args in steps:
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
            )
            code, error = done.returncode, done.stderr.strip().splitlines()[-1:] if done.returncode else []
        except subprocess.TimeoutExpired:
            code, error = -1, [f"timed out after {timeout:.0f} s"]
        results.append((name, code, time.perf_counter() - started, error[0] if error else ""))
        print(f"{name}: exit {code}, {results[-1][2]:.1f} s {results[-1][3]}", file=sys.stderr, flush=True)
    return results


def count_targets(db: pathlib.Path) -> tuple[int, int]:
    """(all targets, active baseline targets) in ``db``."""
    with sqlite3.connect(db) as connection:
        (total,) = connection.execute("SELECT COUNT(*) FROM targets").fetchone()
        (active,) = connection.execute("SELECT COUNT(*) FROM targets WHERE active AND reform_id = 0").fetchone()
    return total, active


def timed_build(command: list[str], log_path: pathlib.Path) -> tuple[int, float, float, list[str]]:
    """Run ``command``, echoing its output (stderr and stdout) with elapsed seconds into
    ``log_path``: (exit code, wall seconds, peak resident GB of the child, its output lines)."""
    started = time.perf_counter()
    lines = []
    with (
        log_path.open("w") as log,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process,
    ):
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            stamped = f"[{time.perf_counter() - started:7.1f} s] {lines[-1]}"
            print(stamped, file=sys.stderr, flush=True)
            log.write(stamped + "\n")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - started, usage.ru_maxrss / 2**20, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--households", type=int, default=2000, help="synthetic base households (default 2000)")
    parser.add_argument("--clones", type=int, default=51, help="clones of each household (default 51)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the households (default 0)")
    parser.add_argument("--workdir", type=pathlib.Path, help="empty or new directory (default: a fresh temp dir)")
    parser.add_argument("--etl-timeout", type=float, default=900, help="seconds per ETL module (default 900)")
    args = parser.parse_args()
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="etl_build_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory {workdir}", file=sys.stderr)

    db = copy_package(workdir)
    etl = run_etl(workdir, args.etl_timeout)
    if not db.is_file():
        raise SystemExit(f"the ETL wrote no database at {db}")
    total, active = count_targets(db)
    dataset = generate_demo_h5(workdir / "households.h5", args.households, seed=args.seed)
    package = workdir / "package.npz"
    build = [str(JAXCAL), "build", "--dataset", str(dataset), "--db-path", str(db)]
    build += ["--n-clones", str(args.clones), "--package-output", str(package)]
    code, wall, peak_gb, lines = timed_build(build, workdir / "build.log")
    info = subprocess.run([str(JAXCAL), "info", str(package)], capture_output=True, text=True)

    print(f"## ETL: {total:,} targets, {active:,} active baseline\n")
    print("| step | exit | seconds | error |\n|---|--:|--:|---|")
    for name, step_code, seconds, error in etl:
        print(f"| {name} | {step_code} | {seconds:.1f} | {error} |")
    print(f"\n## `{' '.join(build)}`: exit {code}, {wall:.1f} s wall, peak RSS {peak_gb:.2f} GB\n")
    print("| stage | seconds |\n|---|--:|")
    for match in filter(None, map(STAGE.match, lines)):
        print(f"| {match[1]} | {float(match[2]):.1f} |")
    print("\n```\n" + "\n".join(line for line in lines if not (STAGE.match(line) or PROGRESS.match(line))) + "\n```")
    print(f"\n`jaxcal info` (exit {info.returncode}):\n\n```\n{info.stdout}{info.stderr}```")


if __name__ == "__main__":
    main()
