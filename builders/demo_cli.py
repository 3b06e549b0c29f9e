"""The demo's ``jaxcal`` commands and the default package build.

:func:`register_demo_commands` adds ``check-h5`` and ``export``; :func:`add_demo_build_arguments`
and :func:`run_build_demo` are what ``jaxcal build --demo`` runs: synthetic households
(:mod:`builders.demo_microdata`), the real targets of a few states (:mod:`builders.real_targets`)
and the builders' matrix build, cached under ``storage/demo/`` and rebuilt only when a setting
or the targets change.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import sys
import time
from collections.abc import Sequence

DEMO_DIR = pathlib.Path("storage") / "demo"
DEMO_STATES = (28, 31, 33, 35, 41, 50)
"""Mississippi, Nebraska, New Hampshire, New Mexico, Oregon and Vermont: 19 districts (an
at-large one among them), poor and rich, Medicaid expansion and not, with few enough districts
that a few thousand households give each a few hundred columns."""
DEMO_SETTINGS = {"n_households": 3_000, "n_clones": 2, "seed": 0, "year": 2024}
"""The default package: a few thousand base households, cloned so every district gets columns."""


def build_demo_package(
    directory: str | pathlib.Path = DEMO_DIR,
    *,
    n_households: int = DEMO_SETTINGS["n_households"],
    n_clones: int = DEMO_SETTINGS["n_clones"],
    seed: int = DEMO_SETTINGS["seed"],
    year: int = DEMO_SETTINGS["year"],
    states: Sequence[int] = DEMO_STATES,
    simulation: str = "auto",
    force: bool = False,
    log=lambda message: print(message, file=sys.stderr),
) -> pathlib.Path:
    """Build (or reuse) the demo package in ``directory``; return the package's path.

    Writes ``households.h5``, ``targets.db`` and ``package.npz`` there. The targets are the real
    ones (:mod:`builders.real_targets`) of ``states`` (FIPS codes) and their districts, whose
    ACS populations place the clones; national-level targets are those states' totals
    (:func:`builders.real_targets.state_subset`). The package is reused when its recorded
    settings and targets match; ``force`` rebuilds. ``simulation`` is
    :func:`builders.unified_matrix.build_calibration_package`'s (default ``auto``: per clone
    for the default 2 clones, exact).
    """
    from builders import policyengine
    from builders.demo_microdata import generate_demo_h5
    from builders.geography import STATE_CODES
    from builders.real_targets import district_populations, real_targets, state_subset, write_real_target_db
    from builders.unified_matrix import build_calibration_package
    from jaxcal.io import CalibrationPackage, load_package, save_package

    directory = pathlib.Path(directory)
    from importlib import metadata as installed

    states = sorted(set(states))
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
    # The AGI of filers below $1 is negative (losses): PolicyEngine's achievable test (row sum > 0),
    # which every error summary applies, would count it impossible, so the demo leaves it out.
    targets = [t for t in state_subset(real_targets(), states) if t.value >= 0]
    fingerprint = hashlib.sha256(
        json.dumps([settings, [dataclasses.astuple(t) for t in targets]], default=str).encode()
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
    codes = " ".join(STATE_CODES[s] for s in states)
    national = "the US" if len(states) == len(STATE_CODES) else f"these {len(states)} states' totals, not the US"
    log(f"demo targets: {len(targets):,} real ones of {codes} (national level: {national})")
    dataset = generate_demo_h5(directory / "households.h5", n_households, seed=seed, year=year, states=states)
    db = write_real_target_db(directory / "targets.db", targets, overwrite=True)
    places = district_populations()
    package, _ = build_calibration_package(
        dataset,
        db,
        n_clones=n_clones,
        seed=seed,
        year=year,
        rerandomize_takeup=True,
        places=places.loc[(places["cd_geoid"] // 100).isin(states)],
        simulation=simulation,
        log=log,
    )
    metadata = dict(package.metadata) | {"demo_settings": settings, "demo_fingerprint": fingerprint}
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
        help="these state FIPS codes, comma-separated (default "
        f"{','.join(map(str, DEMO_STATES))}; 'all' for the 50 states and DC); national-level targets "
        "are their totals",
    )
    parser.add_argument("--force", action="store_true", help="rebuild the demo package even when cached")


def run_build_demo(args: argparse.Namespace) -> int:
    """``jaxcal build --demo``: build or reuse the package, print its path on stdout."""
    from jaxcal.cli import CommandError

    if args.demo_households < 1 or args.demo_clones < 1:
        raise CommandError("--demo-households and --demo-clones must be at least 1", 2)
    from builders.geography import STATE_CODES

    states = DEMO_STATES
    if args.demo_states == "all":
        states = tuple(STATE_CODES)
    elif args.demo_states:
        try:
            states = [int(part) for part in args.demo_states.split(",") if part.strip()]
        except ValueError:
            raise CommandError(f"--demo-states takes comma-separated FIPS codes, got {args.demo_states!r}", 2) from None
        unknown = [s for s in states if s not in STATE_CODES]
        if unknown or not states:
            raise CommandError(f"--demo-states: unknown state FIPS code(s) {unknown or args.demo_states!r}", 2)
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
