"""``jaxcal derive``, ``sweep`` and ``gates``: the Microplex workflow commands."""

from __future__ import annotations

import argparse
import pathlib
import time
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the workflow commands to the ``jaxcal`` parser."""
    derive = subparsers.add_parser(
        "derive",
        help="derive a child tier of exactly K records from a parent's weights, then refit it",
        description="Select exactly --budget records by a budget-constrained L0 path started from the "
        "parent's weights (ties broken by record id, the --state-floor best records of every state kept), "
        "refit them with gates off, and write a run directory that `jaxcal gates` checks.",
    )
    derive.add_argument(
        "--package",
        "--package-path",
        dest="package",
        type=pathlib.Path,
        required=True,
        help="the parent's calibration package (.npz)",
    )
    derive.add_argument("--parent-weights", type=pathlib.Path, required=True, help="the parent's weights (.npy)")
    derive.add_argument("--budget", type=int, required=True, help="records the child keeps, exactly")
    derive.add_argument(
        "--state-floor", type=int, default=0, help="keep at least this many records of every state (default 0)"
    )
    derive.add_argument("--output", type=pathlib.Path, required=True, help="run directory to write")
    derive.add_argument("--product", help="artifact name recorded for gates, e.g. mp-300k")
    derive.add_argument(
        "--lambda-l0",
        type=float,
        nargs="+",
        help="first grid of the L0 path search (default: 9 values from 1e-4 to 1, log-spaced)",
    )
    derive.add_argument("--search-epochs", type=int, default=300, help="epochs of each search fit (default 300)")
    derive.add_argument("--search-rounds", type=int, default=3, help="grid refinements around the budget")
    derive.add_argument("--refit-epochs", type=int, default=200, help="epochs of the child's refit (default 200)")
    derive.add_argument("--beta", type=float, help="gate temperature of the search (default: policyengine-us-data's)")
    derive.add_argument("--learning-rate", type=float, help="Adam learning rate (default: policyengine-us-data's)")
    derive.add_argument("--seed", type=int, default=0, help="seed of the search and refit draws (default 0)")
    _add_target_groups_option(derive)
    _add_holdout_options(derive)
    derive.add_argument(
        "--early-stopping-patience", type=int, help="stop the refit this many epochs after the best held-out loss"
    )
    derive.add_argument("--min-delta", type=float, default=0.0, help="smallest held-out improvement that counts")
    derive.set_defaults(run=run_derive)

    sweep = subparsers.add_parser(
        "sweep",
        help="fit a grid of lambda_l0 (and beta) values in one compiled program; write the frontier",
        description="One vmapped fit per beta over all --lambda-l0 values; writes frontier.csv (records kept "
        "vs train and held-out loss), frontier.png and unified_run_config.json into --output.",
    )
    sweep.add_argument(
        "--package",
        "--package-path",
        dest="package",
        type=pathlib.Path,
        required=True,
        help="calibration package (.npz)",
    )
    sweep.add_argument(
        "--lambda-l0",
        type=float,
        nargs="+",
        required=True,
        help="L0 penalties to fit side by side (one vmapped program)",
    )
    sweep.add_argument(
        "--beta",
        type=float,
        nargs="+",
        help="gate temperatures, one compiled program each (default: policyengine-us-data's)",
    )
    sweep.add_argument("--epochs", type=int, help="epochs per fit (default: policyengine-us-data's)")
    sweep.add_argument("--learning-rate", type=float, help="Adam learning rate (default: policyengine-us-data's)")
    sweep.add_argument(
        "--init-keep-prob", type=float, help="initial gate keep probability (default: policyengine-us-data's)"
    )
    sweep.add_argument("--seed", type=int, default=0, help="seed of the initialisation and gate draws (default 0)")
    sweep.add_argument("--output", type=pathlib.Path, required=True, help="directory to write")
    _add_target_groups_option(sweep)
    _add_holdout_options(sweep)
    sweep.set_defaults(run=run_sweep)

    gates = subparsers.add_parser(
        "gates",
        help="check a run directory against artifact gates; exit 0 only when all pass",
        description="Write an artifact-gate JSON for RUN_DIR. Exit 0 passed, 1 failed, 2 incomplete "
        "(a gate the run cannot measure).",
    )
    gates.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        type=pathlib.Path,
        help="a run directory jaxcal fit or derive wrote (weights, unified_run_config.json, unified_diagnostics.csv)",
    )
    gates.add_argument("--output", type=pathlib.Path, help="report path (default RUN_DIR/artifact_gates.json)")
    gates.add_argument("--product", help="artifact name, e.g. mp-300k (default: the run's, else RUN_DIR's name)")
    gates.add_argument("--max-holdout-loss", type=float, help="fail when the best held-out loss is above this")
    gates.add_argument(
        "--max-mean-error", type=float, help="fail when the mean |relative error| (a fraction) is above this"
    )
    gates.add_argument("--max-records", type=int, help="fail when more records are kept (default: a tier's budget)")
    gates.add_argument(
        "--min-ess-ratio", type=float, help="fail when effective sample size / positive records is below this"
    )
    gates.set_defaults(run=run_gates)


def _add_holdout_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("held-out targets")
    group.add_argument("--holdout-fraction", type=float, help="hold out this share of target families (default: none)")
    group.add_argument("--holdout-seed", type=int, default=0, help="seed of the split (default 0)")
    group.add_argument(
        "--family-columns",
        nargs="+",
        metavar="COLUMN",
        help="target columns that define a family (default: geo_level variable domain_variable)",
    )


def _add_target_groups_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-target-groups",
        dest="target_groups",
        action="store_false",
        help="weigh every target alike in the loss, not policyengine-us-data's target groups (as `jaxcal fit`)",
    )


def _objective(args: argparse.Namespace, package: Any) -> Any:
    """The loss `jaxcal fit` weighs targets with: policyengine-us-data's target groups each
    counting once (the lambdas are the command's), or with ``--no-target-groups`` every target alike."""
    from .._objective import Objective
    from ..io import policyengine_target_groups

    if not args.target_groups:
        return None
    groups = policyengine_target_groups(package.targets)
    return Objective.create(package.n_targets, target_groups=groups, normalize_groups=True)


def _split(args: argparse.Namespace, package: Any) -> Any:
    if args.holdout_fraction is None:
        return None
    from ..workflow import FAMILY_COLUMNS, holdout_split

    return holdout_split(
        package.targets,
        fraction=args.holdout_fraction,
        family_columns=args.family_columns or FAMILY_COLUMNS,
        seed=args.holdout_seed,
    )


def _holdout_settings(args: argparse.Namespace) -> dict[str, Any] | None:
    """The split's settings for the run record's hyperparameters."""
    if args.holdout_fraction is None:
        return None
    return {"fraction": args.holdout_fraction, "seed": args.holdout_seed, "family_columns": args.family_columns}


def _check_run_dir(args: argparse.Namespace, files: tuple[str, ...], inputs: dict[str, pathlib.Path]) -> None:
    """What ``fit`` checks of its outputs before any work, for a run directory ``--output``: its
    seeds, that it writes none of ``inputs``, and that it is (or can be made) a writable directory
    whose ``files`` are not directories."""
    from ..io import check_inputs_spared
    from ..io._files import check_writable
    from ..runs._plan import check_seed

    check_seed(args.seed)
    if args.holdout_fraction is not None:
        check_seed(args.holdout_seed, "--holdout-seed")
    written = [args.output / name for name in files]
    check_inputs_spared(written, inputs)
    check_writable(args.output)
    for path in written:
        if path.is_dir():
            raise ValueError(f"cannot write {path}: it is a directory")


def run_derive(args: argparse.Namespace) -> int:
    import jax
    import numpy as np

    from .._defaults import PE_DEFAULTS
    from ..io import load_package
    from ..io._files import run_dir_lock
    from ..runs import write_tier_run
    from ..runs._names import DERIVE_FILES
    from ..workflow import DEFAULT_LAMBDA_L0, derive_tier

    _check_run_dir(args, DERIVE_FILES, {"--package": args.package, "--parent-weights": args.parent_weights})
    package = load_package(args.package)
    parent_weights = np.load(args.parent_weights, allow_pickle=False)
    settings = {
        "state_floor": args.state_floor,
        "lambda_l0": list(args.lambda_l0 or DEFAULT_LAMBDA_L0),
        "search_epochs": args.search_epochs,
        "search_rounds": args.search_rounds,
        "refit_epochs": args.refit_epochs,
        "beta": PE_DEFAULTS.beta if args.beta is None else args.beta,
        "learning_rate": PE_DEFAULTS.learning_rate if args.learning_rate is None else args.learning_rate,
        "patience": args.early_stopping_patience,
        "min_delta": args.min_delta,
    }
    split = _split(args, package)
    objective = _objective(args, package)
    with run_dir_lock(args.output):  # one run at a time writes a run directory
        derivation = derive_tier(
            package,
            parent_weights,
            args.budget,
            key=jax.random.key(args.seed),
            split=split,
            objective=objective,
            **settings,
        )
        write_tier_run(
            derivation,
            args.output,
            product=args.product,
            package_path=args.package,
            parent_weights_path=args.parent_weights,
            hyperparameters={
                "budget": args.budget,
                **settings,
                "seed": args.seed,
                "target_groups": args.target_groups,
                "holdout": _holdout_settings(args),
            },
        )
    parent, child = derivation.tier.comparison["parent"], derivation.tier.comparison["child"]
    for name in ("records_kept", "train_loss", "holdout_loss", "mean_error_pct", "effective_sample_size"):
        print(f"{name:<22s} parent {_fmt(parent[name]):>12s}   child {_fmt(child[name]):>12s}")
    print(f"wrote {args.output}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    import jax

    from .._defaults import PE_DEFAULTS
    from ..io import load_package
    from ..io._files import run_dir_lock
    from ..runs import write_sweep_run
    from ..runs._names import SWEEP_FILES
    from ..workflow import sweep_grid

    _check_run_dir(args, SWEEP_FILES, {"--package": args.package})
    started = time.perf_counter()
    package = load_package(args.package)
    split = _split(args, package)
    settings = {
        "lambda_l0": args.lambda_l0,
        "beta": args.beta or [PE_DEFAULTS.beta],
        "epochs": PE_DEFAULTS.epochs if args.epochs is None else args.epochs,
        "learning_rate": PE_DEFAULTS.learning_rate if args.learning_rate is None else args.learning_rate,
        "init_keep_prob": PE_DEFAULTS.init_keep_prob if args.init_keep_prob is None else args.init_keep_prob,
    }
    with run_dir_lock(args.output):  # one run at a time writes a run directory
        frontier, _ = sweep_grid(
            package,
            settings["lambda_l0"],
            settings["beta"],
            key=jax.random.key(args.seed),
            split=split,
            objective=_objective(args, package),
            init_keep_prob=settings["init_keep_prob"],
            epochs=settings["epochs"],
            learning_rate=settings["learning_rate"],
        )
        write_sweep_run(
            frontier,
            args.output,
            package=package,
            package_path=args.package,
            split=split,
            hyperparameters=settings
            | {"seed": args.seed, "target_groups": args.target_groups, "holdout": _holdout_settings(args)},
            elapsed=time.perf_counter() - started,
        )
    print(frontier.to_string(index=False))
    print(f"wrote {args.output / 'frontier.csv'}")
    return 0


def run_gates(args: argparse.Namespace) -> int:
    from ..runs import REPORT, exit_code, gate_report, write_gate_report

    report = gate_report(
        args.run_dir,
        product=args.product,
        max_holdout_loss=args.max_holdout_loss,
        max_mean_error=args.max_mean_error,
        max_records=args.max_records,
        min_ess_ratio=args.min_ess_ratio,
    )
    path = write_gate_report(report, args.output or args.run_dir / REPORT)
    for name, gate in report["gates"].items():
        print(f"{gate['status']:<10s} {name:<22s} {gate['summary']}")
    print(f"{report['summary']['status']}: {path}")
    return exit_code(report)


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}"
