"""``jaxcal info``, ``convert`` and ``validate``: look into, import and check packages."""

from __future__ import annotations

import argparse
import math
import pathlib
from typing import cast

from . import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    info = subparsers.add_parser("info", help="shape, density, targets by level and variable, provenance")
    info.add_argument("path", type=pathlib.Path, help="calibration package")
    info.add_argument(
        "--allow-pickle", action="store_true", help="read a PolicyEngine pickle (runs code: trusted files only)"
    )
    info.set_defaults(run=run_info)

    convert = subparsers.add_parser(
        "convert",
        help="import a PolicyEngine pickle package into jaxcal's safe format",
        description="Convert PolicyEngine's calibration_package.pkl to a jaxcal package (.npz, no pickle), "
        "each column's state_fips derived from its block (else its district), after checking the pickle "
        "against the calibration_package_contract.json beside it, if there is one.",
    )
    convert.add_argument("input", type=pathlib.Path, help="PolicyEngine pickle package (.pkl)")
    convert.add_argument("output", type=pathlib.Path, help="jaxcal package to write (.npz)")
    convert.add_argument(
        "--allow-pickle", action="store_true", help="required: unpickling runs code, so say you trust the file"
    )
    convert.set_defaults(run=run_convert)

    validate = subparsers.add_parser(
        "validate",
        help="PolicyEngine's package report: impossible and hardest targets",
        description="Exit 0 when every target is achievable, 1 for impossible targets or a missing file, "
        "2 when --strict finds targets below the ratio.",
    )
    validate.add_argument("path", type=pathlib.Path, help="calibration package")
    validate.add_argument(
        "--n-hardest", type=int, default=10, metavar="K", help="hardest achievable targets to list (default 10)"
    )
    validate.add_argument(
        "--strict",
        nargs="?",
        const=0.01,
        type=float,
        metavar="RATIO",
        help="fail (exit 2) if an achievable target has row_sum / target below RATIO (default 0.01)",
    )
    validate.add_argument(
        "--allow-pickle", action="store_true", help="read a PolicyEngine pickle (runs code: trusted files only)"
    )
    validate.set_defaults(run=run_validate)


def run_info(args: argparse.Namespace) -> int:
    from ..io import load_package
    from ..runs import provenance_lines

    package = load_package(args.path, allow_pickle=args.allow_pickle)
    cells = package.n_targets * package.n_records
    lines = [
        f"Package: {args.path}",
        f"Matrix:  {package.n_targets:,} targets x {package.n_records:,} columns",
        f"Non-zero: {package.nnz:,} (density: {package.nnz / cells if cells else 0.0:.6f})",
        f"Initial weights: {'yes' if package.initial_weights is not None else 'no (PolicyEngine rule at fit time)'}",
        f"Geography: {', '.join(sorted(package.geography)) or 'none'}",
        *provenance_lines(dict(package.metadata)),
        "",
        "--- Targets by geo level ---",
    ]
    targets = package.targets.assign(domain_variable=package.targets["domain_variable"].fillna("-"))
    for level, count in targets.groupby("geo_level", sort=True).size().items():
        lines.append(f"  {level:<12s} {count:>8,}")
    lines += ["", "--- Targets by variable and geo level ---"]
    for key, count in targets.groupby(["variable", "geo_level"], sort=True).size().items():
        variable, level = cast(tuple[str, str], key)
        lines.append(f"  {variable:<35s} {level:<12s} {count:>8,}")
    print("\n".join(lines))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import numpy as np

    from ..io import import_pickle_package, is_pickle, save_package
    from ..io._files import check_writable

    if not args.input.is_file():
        raise CommandError(f"{args.input} not found")
    if not is_pickle(args.input):
        raise CommandError(f"{args.input} is not a pickle package; jaxcal reads it directly, no conversion needed")
    if not args.allow_pickle:
        raise CommandError(
            f"refusing to unpickle {args.input}: loading a pickle runs whatever code it holds. "
            "If you trust the file, add --allow-pickle; the converted package is then safe to share."
        )
    if args.output.suffix != ".npz":
        raise CommandError(f"the output must be a .npz file, got {args.output}")
    if args.output.is_dir():
        raise CommandError(f"the output {args.output} is a directory; name the .npz file")
    check_writable(args.output.parent)  # before the unpickling, not after
    package = import_pickle_package(args.input)
    path = save_package(package, args.output)
    print(f"wrote {path}: {package.n_targets:,} targets x {package.n_records:,} records, {package.nnz:,} nonzeros")
    if "state_fips" in package.geography:
        source = "block_geoid" if "block_geoid" in package.geography else "cd_geoid"
        print(f"state_fips: {np.unique(package.geography['state_fips']).size} states, from {source}")
    contract = package.metadata.get("stage_contract")
    if contract:
        print(f"matches its stage-2 contract {contract['file']}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from ..io import load_package
    from ..runs import format_validation, validate_package

    if args.n_hardest < 0:
        raise CommandError(f"--n-hardest must not be negative, got {args.n_hardest}")
    if args.strict is not None and not 0 <= args.strict < math.inf:
        raise CommandError(f"--strict must be a finite non-negative ratio, got {args.strict}")
    package = load_package(args.path, allow_pickle=args.allow_pickle)
    result = validate_package(package, n_hardest=args.n_hardest, strict_ratio=args.strict)
    print(format_validation(result, str(args.path)))
    return result.exit_code
