"""``jaxcal`` commands implemented in builders (registered through the ``jaxcal.commands`` entry point).

Heavy imports (pandas, policyengine_us) happen inside the commands, so ``jaxcal --help``
stays fast.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from .demo_cli import add_demo_build_arguments, register_demo_commands, run_build_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the builders' commands to the ``jaxcal`` parser."""
    build = subparsers.add_parser(
        "build",
        help="build a calibration package from PolicyEngine-US microdata and a target database",
        description="Clone the dataset's households across geography, compute every target's "
        "per-column values with PolicyEngine-US, write the package, then validate it. "
        "The exit code is `jaxcal validate`'s: 1 when some target is impossible.",
    )
    build.add_argument("--dataset", type=pathlib.Path, help="PolicyEngine-US dataset (.h5); required without --demo")
    build.add_argument(
        "--db-path", type=pathlib.Path, help="target database (policy_data.db schema); required without --demo"
    )
    build.add_argument("--n-clones", type=int, default=10, help="copies of each household (default 10)")
    build.add_argument("--seed", type=int, default=42, help="seed of the geography draws (default 42)")
    build.add_argument("--year", type=int, help="target year (default: the dataset's period)")
    build.add_argument("--target-config", type=pathlib.Path, help="target-config YAML (include/exclude rules)")
    build.add_argument(
        "--geography",
        type=pathlib.Path,
        help="CSV of places: cd_geoid, population[, block_geoid] (default: the 436 districts at their ACS 2024 populations)",
    )
    build.add_argument(
        "--skip-takeup-rerandomize",
        action="store_true",
        help="keep the dataset's take-up instead of drawing it per clone",
    )
    build.add_argument(
        "--simulation",
        choices=("auto", "per-clone", "per-state"),
        default="auto",
        help="run PolicyEngine once per clone (model-exact take-up) or once per state "
        "(policyengine-us-data's build_matrix); auto: whichever is fewer runs (default)",
    )
    build.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes that run PolicyEngine, this one included; each takes the next state or clone as it comes free (default 1)",
    )
    build.add_argument(
        "--chunk-dir",
        type=pathlib.Path,
        help="directory to write each PolicyEngine run's results to as it ends (one file per state or clone)",
    )
    build.add_argument(
        "--resume-chunks",
        action="store_true",
        help="read back the runs --chunk-dir holds instead of running them again (a killed build resumes)",
    )
    build.add_argument(
        "--domain-variables",
        type=_names,
        metavar="NAMES",
        help="keep only the targets whose domain_variable is one of these (comma-separated), before --target-config",
    )
    build.add_argument(
        "--hierarchical-domains",
        type=_names,
        metavar="NAMES",
        help="domains (comma-separated) whose district targets are scaled to their state's target "
        "and uprated by the state's factor; their national and state targets of other years are dropped",
    )
    build.add_argument(
        "--county-level",
        action="store_true",
        help="compute aca_ptc and housing_assistance in each county the clones land in, not per state "
        "(policyengine-us-data's --county-level; needs a --geography of blocks)",
    )
    build.add_argument("--package-output", type=pathlib.Path, help="package to write (.npz); required without --demo")
    # The defaults of what only a build from --dataset reads (--demo builds its own package), all
    # but --simulation, which the demo's build takes too.
    dataset_build_defaults = vars(build.parse_args([]))
    del dataset_build_defaults["simulation"]
    add_demo_build_arguments(build)
    build.set_defaults(run=run_build, dataset_build_defaults=dataset_build_defaults)
    register_demo_commands(subparsers)


def _names(text: str) -> list[str]:
    """A comma-separated list of names, as policyengine-us-data splits its domain flags."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def run_build(args: argparse.Namespace) -> int:
    from jaxcal.cli import CommandError, main

    if args.demo:
        given = [d for d, default in args.dataset_build_defaults.items() if getattr(args, d) != default]
        if given:
            flags = ", ".join("--" + d.replace("_", "-") for d in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise CommandError(f"--demo builds the default package; {flags} {verb} only to a build from --dataset", 2)
        return run_build_demo(args)
    missing = [
        flag
        for flag, value in (
            ("--dataset", args.dataset),
            ("--db-path", args.db_path),
            ("--package-output", args.package_output),
        )
        if value is None
    ]
    if missing:
        raise CommandError(f"{', '.join(missing)} required (or --demo for the default package)", 2)
    if args.n_clones < 1:
        raise CommandError("--n-clones must be at least 1", 2)
    if args.workers < 1:
        raise CommandError("--workers must be at least 1", 2)
    if args.resume_chunks and args.chunk_dir is None:
        raise CommandError("--resume-chunks needs --chunk-dir (the directory to resume from)", 2)
    if args.county_level and args.geography is None:
        raise CommandError("--county-level needs --geography: a CSV of blocks (block_geoid holds the county)", 2)
    for what, path in (("dataset", args.dataset), ("target database", args.db_path)):
        if not path.is_file():
            raise CommandError(f"{what} not found: {path}", 2)
    if args.target_config is not None and not args.target_config.is_file():
        raise CommandError(f"target config not found: {args.target_config}", 2)

    from jaxcal.io import save_package

    from .unified_matrix import build_calibration_package

    places = None
    if args.geography is not None:
        import pandas as pd

        places = pd.read_csv(args.geography, dtype={"block_geoid": str})
    package, report = build_calibration_package(
        args.dataset,
        args.db_path,
        n_clones=args.n_clones,
        seed=args.seed,
        year=args.year,
        target_config=args.target_config,
        rerandomize_takeup=not args.skip_takeup_rerandomize,
        places=places,
        simulation=args.simulation,
        workers=args.workers,
        chunk_dir=args.chunk_dir,
        resume_chunks=args.resume_chunks,
        domain_variables=args.domain_variables,
        hierarchical_domains=args.hierarchical_domains,
        county_level=args.county_level,
    )
    path = save_package(package, args.package_output)
    print(
        f"wrote {path}: {package.n_targets} targets x {package.n_records} columns, {package.nnz} nonzeros; "
        f"peak memory {report.peak_memory_mb:.0f} MB",
        file=sys.stderr,
    )
    return main(["validate", str(path)])
