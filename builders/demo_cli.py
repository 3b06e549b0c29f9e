"""The demo's ``jaxcal`` commands and the default package build.

:func:`register_demo_commands` adds ``check-h5`` and ``export``; :func:`add_demo_build_arguments`
and :func:`run_build_demo` are what ``jaxcal build --demo`` runs: synthetic households
(:mod:`builders.demo_microdata`), real targets (:mod:`builders.demo_targets`) and the
builders' matrix build, cached under ``storage/demo/`` and rebuilt only when a setting or
the targets change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import sys
import time

DEMO_DIR = pathlib.Path("storage") / "demo"
DEMO_SETTINGS = {"n_households": 2_000, "n_clones": 2, "seed": 0, "year": 2024}
"""The default package: a few thousand base households cloned so every district gets columns."""


def build_demo_package(
    directory: str | pathlib.Path = DEMO_DIR,
    *,
    n_households: int = DEMO_SETTINGS["n_households"],
    n_clones: int = DEMO_SETTINGS["n_clones"],
    seed: int = DEMO_SETTINGS["seed"],
    year: int = DEMO_SETTINGS["year"],
    states: list[int] | None = None,
    simulation: str = "auto",
    force: bool = False,
    log=lambda message: print(message, file=sys.stderr),
) -> pathlib.Path:
    """Build (or reuse) the demo package in ``directory``; return the package's path.

    Writes ``households.h5``, ``targets.db`` and ``package.npz`` there. The package is reused
    when its recorded settings and targets match; ``force`` rebuilds. ``states`` (FIPS codes)
    limits households, districts and state targets to those states (for quick tests); the
    national targets stay US totals, which the households of a few states cannot reach.
    Districts are drawn with equal populations (:func:`builders.geography.equal_population_districts`,
    i.e. states in proportion to House seats), not from policyengine-us's state populations,
    which are scrambled (docs/default_targets.md). ``simulation`` is
    :func:`builders.unified_matrix.build_calibration_package`'s (default ``auto``: per clone
    for the default 2 clones, exact).
    """
    from builders import policyengine
    from builders.demo_microdata import generate_demo_h5
    from builders.demo_targets import demo_targets, write_target_db
    from builders.geography import equal_population_districts
    from builders.unified_matrix import build_calibration_package
    from jaxcal.io import CalibrationPackage, load_package, save_package

    directory = pathlib.Path(directory)
    from importlib import metadata as installed

    settings = {
        "n_households": n_households,
        "n_clones": n_clones,
        "seed": seed,
        "year": year,
        "states": states,
        "simulation": simulation,
        "policyengine_us": policyengine.package_version(),
        "jaxcal": installed.version("jaxcal"),
    }
    targets = demo_targets(year)
    if states is not None:
        records = tuple(
            r for r in targets.records if not any(c[0] == "state_fips" and c[2] not in states for c in r.constraints)
        )
        targets = dataclasses.replace(targets, records=records)
    fingerprint = hashlib.sha256(
        json.dumps([settings, [dataclasses.astuple(r) for r in targets.records]], default=str).encode()
    ).hexdigest()
    package_path = directory / "package.npz"
    if package_path.is_file() and not force:
        try:
            cached = load_package(package_path)
            dataset = pathlib.Path(cached.metadata.get("dataset_path") or "")
            if cached.metadata.get("demo_fingerprint") == fingerprint and dataset.is_file():
                log(f"using the cached demo package {package_path}")
                return package_path
        except ValueError:
            pass  # unreadable: rebuild
    started = time.perf_counter()
    dataset = generate_demo_h5(directory / "households.h5", n_households, seed=seed, year=year, states=states)
    db = write_target_db(targets, directory / "targets.db", overwrite=True)
    package, _ = build_calibration_package(
        dataset,
        db,
        n_clones=n_clones,
        seed=seed,
        year=year,
        rerandomize_takeup=True,
        places=equal_population_districts(states),
        simulation=simulation,
        log=log,
    )
    metadata = dict(package.metadata) | {
        "demo_settings": settings,
        "demo_fingerprint": fingerprint,
        "demo_excluded_series": [e.series for e in targets.excluded],
    }
    package = CalibrationPackage(
        matrix=package.matrix,
        targets=package.targets,
        target_names=package.target_names,
        initial_weights=package.initial_weights,
        geography=package.geography,
        metadata=metadata,
    )
    save_package(package, package_path)
    log(
        f"built {package_path}: {package.n_targets} targets x {package.n_records} columns in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return package_path


def add_demo_build_arguments(parser: argparse.ArgumentParser) -> None:
    """``--demo`` and its settings, for the ``build`` command's parser."""
    parser.add_argument(
        "--demo", action="store_true", help="build (or reuse) the default package: synthetic households, real targets"
    )
    parser.add_argument("--demo-dir", type=pathlib.Path, default=DEMO_DIR, help=f"where (default {DEMO_DIR})")
    parser.add_argument(
        "--demo-households",
        type=int,
        default=DEMO_SETTINGS["n_households"],
        help=f"base households (default {DEMO_SETTINGS['n_households']})",
    )
    parser.add_argument(
        "--demo-clones",
        type=int,
        default=DEMO_SETTINGS["n_clones"],
        help=f"clones of each household (default {DEMO_SETTINGS['n_clones']})",
    )
    parser.add_argument(
        "--demo-states",
        help="only these state FIPS codes, comma-separated (default all 50 and DC); "
        "national targets stay US totals, out of reach of a few states",
    )
    parser.add_argument("--force", action="store_true", help="rebuild the demo package even when cached")


def run_build_demo(args: argparse.Namespace) -> int:
    """``jaxcal build --demo``: build or reuse the package, print its path on stdout."""
    from jaxcal.cli import CommandError

    if args.demo_households < 1 or args.demo_clones < 1:
        raise CommandError("--demo-households and --demo-clones must be at least 1", 2)
    states = None
    if args.demo_states:
        try:
            states = [int(part) for part in args.demo_states.split(",") if part.strip()]
        except ValueError:
            raise CommandError(f"--demo-states takes comma-separated FIPS codes, got {args.demo_states!r}", 2) from None
    path = build_demo_package(
        args.demo_dir,
        n_households=args.demo_households,
        n_clones=args.demo_clones,
        states=states,
        simulation=getattr(args, "simulation", "auto").replace("-", "_"),
        force=args.force,
    )
    print(path)
    return 0


def register_demo_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check-h5`` and ``export`` to the ``jaxcal`` parser."""
    from builders.export import register_export
    from builders.h5_check import register_check_h5

    register_check_h5(subparsers)
    register_export(subparsers)
