"""``jaxcal diagnose``: which targets conflict, which cannot be reached, what each one costs."""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from . import CommandError

DEFAULT_DIAGNOSE_OUTPUT = pathlib.Path("storage/diagnosis")


def register(subparsers: argparse._SubParsersAction) -> None:
    diagnose = subparsers.add_parser(
        "diagnose",
        help="per-target diagnosis: support, order of magnitude, reachability, error and cost at the optimum",
        description="Diagnose every target of a package at the starting weights and at the joint optimum of "
        "min ||(Xw - t)/|t| ||^2 over w >= 0 (the best any non-negative weights can do): targets with a large "
        "error there conflict with the rest. Also compares each national, state and district target with the "
        "sum of its children. Writes target_diagnosis.csv, target_conflicts.csv and target_diagnosis.png into "
        "--output and prints a ranked report.",
    )
    diagnose.add_argument("package", type=pathlib.Path, metavar="PACKAGE", help="calibration package")
    diagnose.add_argument(
        "--weights",
        type=pathlib.Path,
        help="starting weights .npy (default: the package's initial weights, else PolicyEngine's rule)",
    )
    diagnose.add_argument(
        "--output",
        type=pathlib.Path,
        default=DEFAULT_DIAGNOSE_OUTPUT,
        help=f"directory to write (default {DEFAULT_DIAGNOSE_OUTPUT})",
    )
    diagnose.add_argument(
        "--allow-pickle", action="store_true", help="read a PolicyEngine pickle (runs code: trusted files only)"
    )
    diagnose.add_argument("--top", type=int, default=10, metavar="K", help="targets to list per section (default 10)")
    diagnose.add_argument(
        "--gap-tolerance",
        type=float,
        default=0.01,
        metavar="SHARE",
        help="report a hierarchy whose children's sum is off the parent by more than this (default 0.01)",
    )
    diagnose.add_argument(
        "--max-iterations", type=int, default=100, help="Newton steps of the solver at most (default 100)"
    )
    diagnose.add_argument(
        "--tolerance",
        type=float,
        default=1e-3,
        help="stop once no relative error can be further than this from the optimum's (default 1e-3)",
    )
    diagnose.set_defaults(run=run_diagnose)


def run_diagnose(args: argparse.Namespace) -> int:

    from ..io import check_inputs_spared, load_package
    from ..io._files import load_weights
    from ..runs import DIAGNOSE_FILES, format_diagnosis, write_diagnosis
    from ..workflow import diagnose_targets

    if args.top < 0:
        raise CommandError(f"--top must not be negative, got {args.top}")
    if args.max_iterations < 1:
        raise CommandError(f"--max-iterations must be at least 1, got {args.max_iterations}")
    if not args.tolerance > 0:
        raise CommandError(f"--tolerance must be positive, got {args.tolerance}")
    if not args.gap_tolerance >= 0:
        raise CommandError(f"--gap-tolerance must not be negative, got {args.gap_tolerance}")
    if args.output.exists() and not args.output.is_dir():
        raise CommandError(f"--output {args.output} is a file; give a directory")
    check_inputs_spared(
        (args.output / name for name in DIAGNOSE_FILES), {"PACKAGE": args.package, "--weights": args.weights}
    )
    package = load_package(args.package, allow_pickle=args.allow_pickle)
    weights = None if args.weights is None else load_weights(args.weights, package.n_records, flag="--weights")
    started = time.perf_counter()

    def progress(step: int, bound: float) -> None:
        print(
            f"interior point: Newton step {step}, errors within {bound:.1e} of the optimum's "
            f"(stops at {args.tolerance:g}), {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
            flush=True,
        )

    print(
        f"package {args.package}: {package.n_targets:,} targets x {package.n_records:,} records, "
        f"{package.nnz:,} nonzeros; solving for the optimum",
        file=sys.stderr,
        flush=True,
    )
    diagnosis = diagnose_targets(
        package,
        weights,
        gap_tolerance=args.gap_tolerance,
        max_iterations=args.max_iterations,
        tolerance=args.tolerance,
        progress=progress,
    )
    paths = write_diagnosis(diagnosis, args.output)
    print(format_diagnosis(diagnosis, top=args.top, package_path=str(args.package)))
    print()
    for path in paths.values():
        print(f"wrote {path}")
    return 0
